"""A write session: one backup's streams chunked, deduplicated, compressed, sealed and packed.

Pipeline per stream: the caller's thread reads and cuts chunks (FastCDC); a worker pool computes
each chunk id, skips chunks the repository already has, and zstd-compresses and seals the rest;
the caller's thread appends sealed chunks to the open pack in stream order; one uploader thread
stores full packs. At most ``INFLIGHT_PER_WORKER * workers`` chunks and two packs (one filling,
one uploading) are in memory. ``commit`` writes keys, index segment, then the manifest last.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zstandard

from crmmaint.crypto import Recipient, chunk_id, new_data_key, seal, wrap_data_key
from crmmaint.errors import IntegrityError, ObjectNotFound, RepositoryError
from crmmaint.repository.chunker import Readable, iter_chunks
from crmmaint.repository.format import (
    KEY_ID_LEN,
    PAYLOAD_RAW,
    PAYLOAD_ZSTD,
    IndexEntry,
    encode_pack_trailer,
    key_name,
    manifest_name,
    new_backup_id,
    open_json,
    pack_name,
    seal_json,
    utc_iso,
)
from crmmaint.repository.index import write_segment

if TYPE_CHECKING:
    from crmmaint.repository.lock import RepositoryLock
    from crmmaint.repository.repository import BackupInfo, Repository

logger = logging.getLogger(__name__)

INFLIGHT_PER_WORKER = 3
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _fix_mmap_threshold() -> None:
    """Tune glibc for our many 0.1-2 MiB buffers: fast, and flat in memory.

    With glibc's dynamic mmap threshold, chunk and pack buffers land in per-thread arenas that
    fragment, and RSS grows with the stream. A small fixed threshold (128 KiB) keeps RSS flat but
    maps and faults in every buffer afresh: ~6 s of system time per GB. A 64 MiB threshold with
    two arenas reuses heap memory and stays flat: 400 MB -> 102 MB, 1.6 GB -> 113 MB peak RSS,
    30% faster (docs/performance.md). (A 256 MiB trim threshold saved ~0.3 s of system time per
    GB but kept ~4 MB more resident: not worth it under a 150 MB budget.)
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)
        libc.mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


@dataclass(frozen=True)
class StreamInfo:
    """One stored stream: plaintext size, chunk counts, new bytes written.

    ``sha256`` (hex of the whole plaintext) is only known for backups written by earlier
    versions: every chunk is authenticated and its id re-checked on read, so a whole-stream hash
    added nothing but ~0.8 CPU-s per GB to every backup.
    """

    name: str
    size: int
    chunks: int
    new_chunks: int
    stored_bytes: int
    sha256: str | None = None


@dataclass
class _Stream:
    info: StreamInfo
    chunk_ids: list[bytes]


@dataclass
class _OpenPack:
    parts: list[bytes] = field(default_factory=list)
    chunks: list[tuple[bytes, int, int, int]] = field(default_factory=list)  # id, off, len, raw
    size: int = 0


class _PartsReader:
    """A file-like view over a list of byte strings, so a pack is never joined in memory."""

    def __init__(self, parts: list[bytes]) -> None:
        self._parts = collections.deque(parts)

    def read(self, n: int = -1) -> bytes:
        if not self._parts:
            return b""
        if n < 0:
            data = b"".join(self._parts)
            self._parts.clear()
            return data
        head = self._parts.popleft()
        if len(head) > n:
            self._parts.appendleft(head[n:])
            return head[:n]
        return head


def store_pack(
    repo: Repository, parts: list[bytes], size: int, chunks: dict[bytes, IndexEntry]
) -> tuple[bytes, dict[bytes, IndexEntry], int]:
    """Store sealed chunks back to back, then the pack's trailer (its own index of ``chunks``,
    offsets within ``parts``), as one pack named by its SHA-256.

    Returns the pack id, the chunks' index entries in that pack, and the stored size in bytes.
    """
    trailer = encode_pack_trailer(repo.keys.metadata_key, chunks, algorithm=repo.aead)
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part)
    sha.update(trailer)
    pack_id = sha.digest()
    total = size + len(trailer)
    reader = _PartsReader([*parts, trailer])
    repo.backend.store_file(pack_name(pack_id), reader, total)  # type: ignore[arg-type]
    entries = {
        cid: IndexEntry(pack_id, e.offset, e.length, e.raw_length, e.key_id)
        for cid, e in chunks.items()
    }
    return pack_id, entries, total


class WriteSession:
    """Context manager for one backup; see the module docstring. Leaving without commit aborts."""

    def __init__(
        self,
        repo: Repository,
        *,
        source: str,
        kind: str,
        host: str,
        recipients: list[Recipient],
        meta: dict[str, Any] | None = None,
    ) -> None:
        if not source or "/" in source:
            raise RepositoryError(f"invalid backup source name {source!r}: no '/' allowed")
        self.repo = repo
        self.source, self.kind, self.host = source, kind, host
        self.meta = dict(meta or {})
        self._data_key = new_data_key()
        self._key_id = os.urandom(KEY_ID_LEN)
        self._stanzas = wrap_data_key(self._data_key, recipients)
        self._facts: dict[str, Any] = {}
        self._streams: list[_Stream] = []
        self._claimed: set[bytes] = set()
        self._claim_lock = threading.Lock()
        self._new_entries: dict[bytes, IndexEntry] = {}
        self._new_packs: dict[bytes, int] = {}
        self._pack = _OpenPack()
        self._uploads: list[Future[None]] = []
        self._upload_slot = threading.Semaphore(1)
        self._local = threading.local()
        self._lock: RepositoryLock | None = None
        self._workers: ThreadPoolExecutor | None = None
        self._uploader: ThreadPoolExecutor | None = None
        self._started = 0.0
        self._state = "new"
        self._segment: str | None = None  # this session's index segment, once stored

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> WriteSession:
        _fix_mmap_threshold()
        lock = self.repo.lock(exclusive=False, purpose=f"backup {self.source}")
        lock.acquire()
        self._lock = lock
        try:
            self.repo.refresh_index()
            workers = max(2, os.cpu_count() or 2)
            self._workers = ThreadPoolExecutor(workers, thread_name_prefix="crmmaint-seal")
            self._uploader = ThreadPoolExecutor(1, thread_name_prefix="crmmaint-upload")
            self._inflight = INFLIGHT_PER_WORKER * workers
        except BaseException:
            lock.release()
            raise
        self._started = time.time()
        self._state = "open"
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if self._state in ("open", "failed"):
                self.abort()
        finally:
            self._shutdown()
            if self._lock is not None:
                self._lock.release()

    def _shutdown(self) -> None:
        for pool in (self._workers, self._uploader):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Drop the session: nothing is listed; packs already stored are removed (best effort).

        Once this session's index segment is stored, its packs stay: another backup may
        already deduplicate against the chunks it indexes, and an index entry whose pack is
        gone would make that backup unrestorable. No manifest references them; prune frees them.
        """
        self._state = "aborted"
        self._pack = _OpenPack()
        for fut in self._uploads:
            fut.exception()
        if self._segment is not None:
            logger.info(
                "backup session for %s aborted after its index segment %s was stored; its "
                "packs stay until prune frees them",
                self.source,
                self._segment,
            )
            return
        for pack_id in list(self._new_packs):
            try:
                self.repo.backend.delete(pack_name(pack_id))
            except Exception as exc:  # an orphan pack is harmless: prune's gc removes it
                logger.warning("could not remove orphan pack %s: %s", pack_name(pack_id), exc)
        logger.info("backup session for %s aborted; no backup was recorded", self.source)

    def _check_open(self) -> None:
        if self._state != "open":
            raise RepositoryError(
                f"write session for {self.source} is {self._state}: use it inside `with repo.session(...)`"
            )

    # --- streams ------------------------------------------------------------------------------

    def add_stream(
        self, name: str, reader: Readable, *, progress: Callable[[int], None] | None = None
    ) -> StreamInfo:
        """Store one stream read to EOF; ``progress`` gets the plaintext bytes read so far."""
        self._check_open()
        if not name or any(s.info.name == name for s in self._streams):
            raise RepositoryError(f"stream name {name!r} is empty or already used in this backup")
        assert self._workers
        ids: list[bytes] = []
        window: collections.deque[Future[tuple[bytes, int, bytes | None]]] = collections.deque()
        size = new_chunks = stored = 0
        try:
            for chunk in iter_chunks(reader, self.repo.chunker):
                window.append(self._workers.submit(self._seal_chunk, chunk))
                while len(window) >= self._inflight:
                    n, s = self._take(window.popleft(), ids)
                    size, new_chunks, stored = size + n, new_chunks + (s > 0), stored + s
                    if progress:
                        progress(size)
            while window:
                n, s = self._take(window.popleft(), ids)
                size, new_chunks, stored = size + n, new_chunks + (s > 0), stored + s
                if progress:
                    progress(size)
        except BaseException:
            for work in window:
                work.cancel()
            self._state = "failed"
            raise
        info = StreamInfo(name, size, len(ids), new_chunks, stored)
        self._streams.append(_Stream(info, ids))
        logger.info(
            "stream %s/%s: %d bytes, %d chunks (%d new, %d bytes stored)",
            self.source,
            name,
            size,
            len(ids),
            new_chunks,
            stored,
        )
        return info

    def _check_reused_packs(self, pack_ids: set[bytes]) -> None:
        """The packs holding the chunks this backup reuses must exist with the size the index
        records: an index segment the storage replayed after prune deleted its packs would
        otherwise make a backup that lists and cannot be restored. One stat per pack."""
        for pack_id in sorted(pack_ids):
            info = self.repo.backend.info(pack_name(pack_id))
            expected = self.repo.index.pack_sizes.get(pack_id)
            if info is None or (expected is not None and info.size != expected):
                raise RepositoryError(
                    f"this backup reuses chunks of {pack_name(pack_id)}, which is "
                    f"{'missing' if info is None else 'not the size the index records'}; "
                    "nothing was committed",
                    hint="run `crmmaint verify` and `crmmaint repo repair`, then back up again",
                )

    def _check_older_keys(self, key_ids: set[bytes]) -> None:
        """The key objects of older backups whose chunks this one reuses must be intact: a
        backup deduplicated against chunks under a damaged or missing key would be committed,
        listed and unrestorable. RepositoryError (not retried) naming the key otherwise."""
        for kid in sorted(key_ids):
            name = key_name(kid)
            try:
                record = open_json(self.repo.keys.metadata_key, name, self.repo.backend.load(name))
                if record.get("key_id") == kid.hex():
                    continue
                why = "does not name itself"
            except (IntegrityError, ObjectNotFound) as exc:
                why = exc.message
            raise RepositoryError(
                f"this backup reuses chunks encrypted under {name}, which is damaged or missing "
                f"({why}); nothing was committed",
                hint="run `crmmaint repo repair --apply` (it drops those chunks from the index, "
                "so the next backup stores them again), then back up again",
            )

    def _compressor(self) -> zstandard.ZstdCompressor:
        comp = getattr(self._local, "zstd", None)
        if comp is None:
            comp = self._local.zstd = zstandard.ZstdCompressor(level=self.repo.compression_level)
        return comp

    def _seal_chunk(self, chunk: memoryview) -> tuple[bytes, int, bytes | None]:
        """Worker: chunk id, and the sealed blob unless the repository or session has it."""
        cid = chunk_id(self.repo.keys.chunk_id_key, chunk)
        if cid in self.repo.index:
            return cid, len(chunk), None
        with self._claim_lock:
            if cid in self._claimed:
                return cid, len(chunk), None
            self._claimed.add(cid)
        packed = self._compressor().compress(chunk)
        if len(packed) < len(chunk):
            payload = bytes((PAYLOAD_ZSTD,)) + packed
        else:
            payload = bytes((PAYLOAD_RAW,)) + chunk
        return cid, len(chunk), seal(self._data_key, payload, aad=cid, algorithm=self.repo.aead)

    def _take(
        self, work: Future[tuple[bytes, int, bytes | None]], ids: list[bytes]
    ) -> tuple[int, int]:
        """Caller's thread, in stream order: record the chunk and append a new one to the pack."""
        cid, raw_len, sealed = work.result()
        ids.append(cid)
        if sealed is None:
            return raw_len, 0
        pack = self._pack
        pack.chunks.append((cid, pack.size, len(sealed), raw_len))
        pack.parts.append(sealed)
        pack.size += len(sealed)
        if pack.size >= self.repo.pack_size:
            self._flush_pack()
        return raw_len, len(sealed)

    # --- packs --------------------------------------------------------------------------------

    def _flush_pack(self) -> None:
        """Hand the open pack to the uploader; blocks while the previous pack is still uploading."""
        pack, self._pack = self._pack, _OpenPack()
        if not pack.parts:
            return
        self._raise_upload_errors()
        assert self._uploader
        self._upload_slot.acquire()
        try:
            self._uploads.append(self._uploader.submit(self._upload, pack))
        except BaseException:
            self._upload_slot.release()
            raise

    def _upload(self, pack: _OpenPack) -> None:
        try:
            chunks = {
                cid: IndexEntry(b"", off, length, raw, self._key_id)
                for cid, off, length, raw in pack.chunks
            }
            pack_id, entries, size = store_pack(self.repo, pack.parts, pack.size, chunks)
            with self._claim_lock:
                self._new_entries.update(entries)
                self._new_packs[pack_id] = size
            logger.debug(
                "stored pack %s (%d bytes, %d chunks)", pack_name(pack_id), size, len(entries)
            )
        finally:
            pack.parts.clear()
            self._upload_slot.release()

    def _raise_upload_errors(self) -> None:
        for fut in self._uploads:
            if fut.done() and fut.exception() is not None:
                self._state = "failed"
                raise fut.exception()  # type: ignore[misc]

    def _wait_uploads(self) -> None:
        for fut in self._uploads:
            fut.result()

    # --- commit -------------------------------------------------------------------------------

    def set_facts(self, facts: dict[str, Any]) -> None:
        """What a drill must find (tables, row counts, checksums); encrypted under the data key."""
        self._check_open()
        self._facts = dict(facts)

    def commit(self) -> BackupInfo:
        """Store packs, keys, index segment, then the manifest: only now does the backup exist."""
        self._check_open()
        try:
            self._flush_pack()
            self._wait_uploads()
        except BaseException:
            self._state = "failed"
            raise
        repo = self.repo
        now = time.time()
        backup_id = new_backup_id(self._started)
        key_ids = {self._key_id}
        reused_packs: set[bytes] = set()
        for stream in self._streams:
            for cid in stream.chunk_ids:
                entry = self._new_entries.get(cid)
                if entry is None:
                    entry = repo.index.get(cid)
                    if entry is None:
                        raise RepositoryError(f"internal error: chunk {cid.hex()} has no location")
                    reused_packs.add(entry.pack_id)
                key_ids.add(entry.key_id)
        self._check_reused_packs(reused_packs - set(self._new_packs))
        meta_key, aead = repo.keys.metadata_key, repo.aead
        kname = key_name(self._key_id)
        repo.backend.store(
            kname,
            seal_json(
                meta_key,
                kname,
                {"key_id": self._key_id.hex(), "stanzas": self._stanzas, "created": utc_iso(now)},
                algorithm=aead,
            ),
        )
        if self._new_entries:
            segment = write_segment(
                repo.backend, meta_key, self._new_entries, self._new_packs, algorithm=aead
            )
            self._segment = segment
            repo.index.merge(self._new_entries, self._new_packs)
            repo.index.segments.add(segment)
        size = sum(s.info.size for s in self._streams)
        new_raw = sum(
            self._new_entries[cid].raw_length
            for cid in {c for s in self._streams for c in s.chunk_ids}
            if cid in self._new_entries
        )
        stored = sum(self._new_packs.values())
        secret = {"facts": self._facts}
        mname = manifest_name(backup_id)
        listed = repo.backup_ids()  # ids sort by time: the newest committed before this one
        manifest = {
            "format": "crmmaint-manifest",
            "version": 1,
            "id": backup_id,
            "source": self.source,
            "kind": self.kind,
            "host": self.host,
            "time": self._started,
            "duration": now - self._started,
            "size": size,
            "stored_bytes": stored,
            "dedup_ratio": (1.0 - new_raw / size) if size else 1.0,
            "meta": self.meta,
            "key_id": self._key_id.hex(),
            "key_ids": sorted(k.hex() for k in key_ids),
            # A chain through the repository: verify finds a backup the storage lost, deleted
            # or rolled back by a later manifest that names it (prune leaves a record).
            "previous": listed[-1] if listed else None,
            "streams": [
                {
                    "name": s.info.name,
                    "size": s.info.size,
                    "chunks": s.info.chunks,
                    "new_chunks": s.info.new_chunks,
                    "stored_bytes": s.info.stored_bytes,
                    "ids": b"".join(s.chunk_ids).hex(),
                }
                for s in self._streams
            ],
            "secret": seal(
                self._data_key,
                json.dumps(secret, sort_keys=True).encode(),
                aad=f"{mname}#facts".encode(),
                algorithm=aead,
            ).hex(),
        }
        self._check_older_keys(key_ids - {self._key_id})
        assert self._lock is not None
        self._lock.check()  # a lost lock means prune may have run: do not commit
        repo.backend.store(mname, seal_json(meta_key, mname, manifest, algorithm=aead))
        self._state = "committed"
        info = repo.info_from_manifest(manifest, drilled=False)
        logger.info(
            "backup %s of %s committed: %d bytes, %d stored, %.1fs",
            backup_id,
            self.source,
            size,
            stored,
            info.duration,
        )
        return info
