"""Reading backups: decrypting manifests and facts, and streaming a stream's plaintext back.

Every data key a backup needs is unwrapped before anything is returned, so a wrong identity
fails before a restore writes a byte. Chunks are fetched by a small thread pool with ranged
reads (adjacent chunks of one pack coalesced), authenticated, decompressed, their keyed hash
rechecked, and yielded strictly in order; the first bad chunk raises ``IntegrityError``.
"""

from __future__ import annotations

import bisect
import collections
import hmac
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zstandard

from crmmaint.crypto import Identity, chunk_id, open_sealed, unwrap_data_key
from crmmaint.errors import IntegrityError, ObjectNotFound, RepositoryError
from crmmaint.repository.format import (
    CHUNK_ID_LEN,
    PAYLOAD_RAW,
    PAYLOAD_ZSTD,
    IndexEntry,
    key_name,
    manifest_name,
    open_json,
    pack_name,
)
from crmmaint.repository.session import StreamInfo

if TYPE_CHECKING:
    from crmmaint.repository.repository import BackupInfo, Repository

logger = logging.getLogger(__name__)

READ_THREADS = 4
#: Reads in flight while restoring, each at most COALESCE_BYTES of stored data: with text
#: expanding ~3x on decompression this bounds a restore to roughly 50-70 MB of buffers.
PREFETCH_READS = 4
COALESCE_BYTES = 4 << 20
#: Chunks at the ends of recent range reads kept decoded (at most 2 MiB each): the COPY blocks
#: and gaps of a schema with hundreds of small tables share chunks, and each would otherwise
#: fetch, decrypt and decompress the same chunk again.
EDGE_CACHE_CHUNKS = 6
_VERIFY_HINT = "run `crmmaint verify --read-data` to find every damaged object"


@dataclass
class Manifest:
    """A decrypted manifest: the listing info, the drill facts and per-stream details."""

    info: BackupInfo
    facts: dict[str, Any]
    streams: list[StreamInfo] = field(default_factory=list)

    def stream(self, name: str) -> StreamInfo:
        for stream in self.streams:
            if stream.name == name:
                return stream
        raise RepositoryError(
            f"backup {self.info.id} has no stream {name!r}; it has: "
            + (", ".join(s.name for s in self.streams) or "none")
        )


def unwrap_keys(
    repo: Repository, key_ids: Sequence[str], identities: Sequence[Identity], backup_id: str
) -> dict[bytes, bytes]:
    """Data key for every key id, or WrongKeyError / ObjectNotFound naming the keys object.

    A key unwrapped once with the same identities (the very objects) is not unwrapped again:
    a restore asks for its keys twice (to fail early on a wrong identity, then to read), and
    a passphrase costs an scrypt run each time."""
    keys: dict[bytes, bytes] = {}
    held = tuple(identities)
    for hex_id in key_ids:
        kid = bytes.fromhex(hex_id)
        known = repo.unwrapped.get(kid)
        if (
            known is not None
            and len(known[0]) == len(held)
            and all(a is b for a, b in zip(known[0], held, strict=True))
        ):
            keys[kid] = known[1]
            continue
        name = key_name(kid)
        try:
            blob = repo.backend.load(name)
        except ObjectNotFound:
            raise ObjectNotFound(
                f"backup {backup_id} needs key object {name}, which is missing from {repo.backend.url}",
                hint=_VERIFY_HINT,
            ) from None
        record = open_json(repo.keys.metadata_key, name, blob)
        keys[kid] = unwrap_data_key(
            record["stanzas"], list(identities), name=f"backup {backup_id} ({name})"
        )
        repo.unwrapped[kid] = (held, keys[kid])
    return keys


def load_manifest(repo: Repository, backup_id: str, identities: Sequence[Identity]) -> Manifest:
    """Decrypt a manifest's facts (older backups: also stream hashes); WrongKeyError if no
    identity fits."""
    meta = repo.load_manifest_meta(backup_id)
    own = meta["key_id"]
    data_key = unwrap_keys(repo, [own], identities, backup_id)[bytes.fromhex(own)]
    name = manifest_name(backup_id)
    secret_blob = bytes.fromhex(meta["secret"])
    secret = json.loads(open_sealed(data_key, secret_blob, aad=f"{name}#facts".encode(), name=name))
    drilled = repo.backend.exists(f"drills/{backup_id}")
    hashes = secret.get("streams", {})
    streams = [
        StreamInfo(
            s["name"],
            s["size"],
            s["chunks"],
            s["new_chunks"],
            s["stored_bytes"],
            hashes.get(s["name"], {}).get("sha256"),
        )
        for s in meta["streams"]
    ]
    return Manifest(repo.info_from_manifest(meta, drilled=drilled), secret["facts"], streams)


@dataclass(frozen=True)
class _Read:
    """One ranged read: consecutive chunks of one pack."""

    pack_id: bytes
    offset: int
    length: int
    chunks: list[tuple[bytes, IndexEntry]]


def _plan_reads(ids: list[bytes], entries: list[IndexEntry]) -> Iterator[_Read]:
    group: list[tuple[bytes, IndexEntry]] = []
    for cid, entry in zip(ids, entries, strict=True):
        if group:
            last = group[-1][1]
            start = group[0][1].offset
            if (
                entry.pack_id != last.pack_id
                or entry.offset != last.offset + last.length
                or entry.offset + entry.length - start > COALESCE_BYTES
            ):
                yield _Read(last.pack_id, start, last.offset + last.length - start, group)
                group = []
        group.append((cid, entry))
    if group:
        first, last = group[0][1], group[-1][1]
        yield _Read(first.pack_id, first.offset, last.offset + last.length - first.offset, group)


class ChunkOpener:
    """Authenticate, decompress and recheck chunks; safe to share between threads."""

    def __init__(self, chunk_id_key: bytes, data_keys: dict[bytes, bytes]) -> None:
        self.chunk_id_key = chunk_id_key
        self.data_keys = data_keys
        self._local = threading.local()

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        dec = getattr(self._local, "zstd", None)
        if dec is None:
            dec = self._local.zstd = zstandard.ZstdDecompressor()
        return dec

    def open(self, cid: bytes, entry: IndexEntry, blob: bytes | memoryview) -> bytes:
        """Plaintext of one sealed chunk, or IntegrityError naming its pack and id."""
        where = f"{pack_name(entry.pack_id)} chunk {cid.hex()}"
        payload = open_sealed(self.data_keys[entry.key_id], blob, aad=cid, name=where)
        try:
            if payload[:1] == bytes((PAYLOAD_ZSTD,)):
                data = self._decompressor().decompress(
                    memoryview(payload)[1:], max_output_size=entry.raw_length
                )
            elif payload[:1] == bytes((PAYLOAD_RAW,)):
                data = payload[1:]
            else:
                raise ValueError("unknown payload type")
        except (ValueError, zstandard.ZstdError) as exc:
            raise IntegrityError(f"{where} authenticated but does not decode: {exc}") from exc
        if len(data) != entry.raw_length or not hmac.compare_digest(
            chunk_id(self.chunk_id_key, data), cid
        ):
            raise IntegrityError(
                f"{where}: plaintext does not match its chunk id (wrong chunk or bad index)",
                hint=_VERIFY_HINT,
            )
        return data


class _EdgeCache:
    """The plaintext of the last few chunks that began or ended a range read (thread-safe)."""

    def __init__(self, capacity: int) -> None:
        self._items: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, cid: bytes) -> bytes | None:
        with self._lock:
            data = self._items.get(cid)
            if data is not None:
                self._items.move_to_end(cid)
                self.hits += 1
            return data

    def __contains__(self, cid: bytes) -> bool:
        with self._lock:
            return cid in self._items

    def put(self, cid: bytes, data: bytes) -> None:
        with self._lock:
            self._items[cid] = data
            self._items.move_to_end(cid)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)


def _split_edges(reads: list[_Read], cache: _EdgeCache) -> list[_Read]:
    """Give a cached first or last chunk a read of its own, so the others need no refetch."""

    def alone(read: _Read, at: int) -> list[_Read]:
        cid, entry = read.chunks[at]
        single = _Read(read.pack_id, entry.offset, entry.length, [(cid, entry)])
        rest = read.chunks[1:] if at == 0 else read.chunks[:-1]
        first, last = rest[0][1], rest[-1][1]
        other = _Read(read.pack_id, first.offset, last.offset + last.length - first.offset, rest)
        return [single, other] if at == 0 else [other, single]

    if reads and len(reads[0].chunks) > 1 and reads[0].chunks[0][0] in cache:
        reads[:1] = alone(reads[0], 0)
    if reads and len(reads[-1].chunks) > 1 and reads[-1].chunks[-1][0] in cache:
        reads[-1:] = alone(reads[-1], -1)
    return reads


class StreamRanges:
    """One stored stream with keys and index checked once; reads any byte range of it.

    ``read(start, end)`` yields the plaintext of ``[start, end)``: only the chunks overlapping
    the range are fetched (each authenticated and rechecked as for a whole stream), the first
    and last trimmed. Several ranges may be read at once from different threads, which is how a
    restore loads tables in parallel (docs/engines.md).
    """

    def __init__(
        self, repo: Repository, opener: ChunkOpener, ids: list[bytes], entries: list[IndexEntry]
    ) -> None:
        self.repo, self.opener, self.ids, self.entries = repo, opener, ids, entries
        self.offsets = [0]
        for entry in entries:
            self.offsets.append(self.offsets[-1] + entry.raw_length)
        self.size = self.offsets[-1]
        self.edges = _EdgeCache(EDGE_CACHE_CHUNKS)

    def read(
        self, start: int = 0, end: int | None = None, *, what: str = "", prefetch: int = 0
    ) -> Iterator[bytes]:
        """Plaintext of ``[start, end)``; ``prefetch`` reads in flight (default
        ``PREFETCH_READS``; parallel readers take fewer each, to keep memory bounded)."""
        end = self.size if end is None else end
        if not 0 <= start <= end <= self.size:
            raise RepositoryError(f"byte range {start}-{end} is outside the stream ({self.size})")
        first = bisect.bisect_right(self.offsets, start) - 1
        last = bisect.bisect_left(self.offsets, end)  # chunks [first, last) cover the range
        if start == end:
            return iter(())
        reads = list(_plan_reads(self.ids[first:last], self.entries[first:last]))
        edges = None
        if start > 0 or end < self.size:  # a part: its end chunks may be another part's too
            edges = (self.edges, {self.ids[first], self.ids[last - 1]})
            reads = _split_edges(reads, self.edges)
        return _stream(
            self.repo,
            self.opener,
            reads,
            what,
            end - start,
            skip=start - self.offsets[first],
            prefetch=prefetch or PREFETCH_READS,
            edges=edges,
        )


def stream_ranges(
    repo: Repository, backup_id: str, name: str, identities: Sequence[Identity]
) -> StreamRanges:
    """Check keys and index up front (WrongKeyError, ObjectNotFound) for one stream."""
    meta = repo.load_manifest_meta(backup_id)
    stream = next((s for s in meta["streams"] if s["name"] == name), None)
    if stream is None:
        raise RepositoryError(
            f"backup {backup_id} has no stream {name!r}; it has: "
            + (", ".join(s["name"] for s in meta["streams"]) or "none")
        )
    data_keys = unwrap_keys(repo, meta["key_ids"], identities, backup_id)
    raw_ids = bytes.fromhex(stream["ids"])
    ids = [raw_ids[i : i + CHUNK_ID_LEN] for i in range(0, len(raw_ids), CHUNK_ID_LEN)]
    index = repo.refresh_index()
    entries = []
    for cid in ids:
        entry = index.get(cid)
        if entry is None and index.damaged:
            raise IntegrityError(
                f"backup {backup_id} stream {name}: chunk {cid.hex()} is not in the index "
                f"(damaged index segment: {', '.join(sorted(index.damaged))})",
                hint="run `crmmaint repo repair --apply`: it indexes the chunks again from "
                "the packs, or tells which backups the damage costs",
            )
        if entry is None:
            raise ObjectNotFound(
                f"backup {backup_id} stream {name}: chunk {cid.hex()} is not in the index",
                hint=_VERIFY_HINT,
            )
        if entry.key_id not in data_keys:
            data_keys.update(unwrap_keys(repo, [entry.key_id.hex()], identities, backup_id))
        entries.append(entry)
    ranges = StreamRanges(repo, ChunkOpener(repo.keys.chunk_id_key, data_keys), ids, entries)
    if ranges.size != stream["size"]:
        raise IntegrityError(
            f"backup {backup_id} stream {name}: chunks add up to {ranges.size} bytes, "
            f"manifest says {stream['size']}",
            hint=_VERIFY_HINT,
        )
    return ranges


def read_stream(
    repo: Repository, backup_id: str, name: str, identities: Sequence[Identity]
) -> Iterator[bytes]:
    """Check keys and index up front, then return a generator of the stream's plaintext."""
    return stream_ranges(repo, backup_id, name, identities).read(what=f"{backup_id}/{name}")


def _fetch(
    repo: Repository,
    opener: ChunkOpener,
    read: _Read,
    edges: tuple[_EdgeCache, set[bytes]] | None = None,
) -> list[bytes]:
    if edges is not None and len(read.chunks) == 1:
        cached = edges[0].get(read.chunks[0][0])
        if cached is not None:
            return [cached]
    blob = memoryview(repo.backend.load(pack_name(read.pack_id), read.offset, read.length))
    out = []
    for cid, entry in read.chunks:
        start = entry.offset - read.offset
        data = opener.open(cid, entry, blob[start : start + entry.length])
        if edges is not None and cid in edges[1]:
            edges[0].put(cid, data)
        out.append(data)
    return out


def _stream(
    repo: Repository,
    opener: ChunkOpener,
    reads: list[_Read],
    what: str,
    size: int,
    *,
    skip: int = 0,
    prefetch: int = PREFETCH_READS,
    edges: tuple[_EdgeCache, set[bytes]] | None = None,
) -> Iterator[bytes]:
    """Yield ``size`` bytes of the chunks of ``reads`` after the first ``skip`` bytes."""
    done = 0
    with ThreadPoolExecutor(
        min(READ_THREADS, prefetch), thread_name_prefix="crmmaint-read"
    ) as pool:
        window: collections.deque[Future[list[bytes]]] = collections.deque()
        pending = iter(reads)
        try:
            for read in pending:
                window.append(pool.submit(_fetch, repo, opener, read, edges))
                if len(window) >= prefetch:
                    break
            while window and done < size:
                chunks = window.popleft().result()
                nxt = next(pending, None)
                if nxt is not None:
                    window.append(pool.submit(_fetch, repo, opener, nxt, edges))
                for data in chunks:
                    if skip:
                        if skip >= len(data):
                            skip -= len(data)
                            continue
                        data, skip = data[skip:], 0
                    if done + len(data) > size:
                        data = data[: size - done]
                    done += len(data)
                    if data:
                        yield data
        finally:
            for fut in window:
                fut.cancel()
    if done != size:
        raise IntegrityError(f"stream {what}: read {done} bytes, manifest says {size}")
