"""Repository object names, byte layouts and codecs (specified in docs/format.md).

Everything here is pure: it turns plain data into the bytes stored in a backend and back.
Metadata objects are JSON sealed under the metadata key with the object name as AAD; chunks
are sealed under a per-backup data key with the chunk id as AAD; index segments are binary.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import struct
from dataclasses import asdict, dataclass
from typing import Any

import zstandard

from crmmaint.crypto import open_sealed, seal
from crmmaint.errors import IntegrityError, RepositoryError

FORMAT_NAME = "crmmaint-repository"
FORMAT_VERSION = 1

CONFIG = "config"
DATA_DIR = "data/"
INDEX_DIR = "index/"
KEYS_DIR = "keys/"
BACKUPS_DIR = "backups/"
DRILLS_DIR = "drills/"
#: One sealed record per backup prune removed: a missing manifest is then told apart from one
#: the storage lost, deleted or rolled back.
PRUNED_DIR = "pruned/"
#: Where ``repo repair`` moves damaged objects (``damaged/backups/<id>``): never listed or pruned.
DAMAGED_DIR = "damaged/"
VERIFY_CURSOR = "state/verify-cursor"

CHUNK_ID_LEN = 32
KEY_ID_LEN = 16
PACK_ID_LEN = 32

#: First byte of a chunk's plaintext inside its sealed blob: how the payload is encoded.
PAYLOAD_RAW = 0
PAYLOAD_ZSTD = 1

WRITE_KEY_CHECK_LABEL = b"crmmaint write-key check v1:"
INDEX_AAD = b"crmmaint index v1"
INDEX_MAGIC = b"CMIX\x01"
#: A pack ends with its own index (the "trailer"), so a lost segment can be rebuilt from it:
#: sealed(metadata key, index body with a zero pack id, aad) || u32 sealed length || magic.
PACK_TRAILER_AAD = b"crmmaint pack trailer v1"
PACK_TRAILER_MAGIC = b"CMPT"
PACK_TRAILER_END = struct.Struct("<I4s")
_NO_PACK = bytes(32)
_COUNT = struct.Struct("<I")
_PACK_REC = struct.Struct(f"<{PACK_ID_LEN}sQ")
_CHUNK_REC = struct.Struct(f"<{CHUNK_ID_LEN}sIIIII")


@dataclass(frozen=True)
class ChunkerParams:
    """FastCDC sizes in bytes: chunks are cut at content-defined points within [min, max]."""

    min_size: int = 128 << 10
    avg_size: int = 512 << 10
    max_size: int = 2 << 20

    def __post_init__(self) -> None:
        if not 64 <= self.min_size <= self.avg_size <= self.max_size or self.avg_size < 256:
            raise RepositoryError(
                f"invalid chunker sizes {self}: need 64 <= min <= avg <= max and avg >= 256"
            )
        if self.max_size > 64 << 20:
            raise RepositoryError(f"chunk max_size {self.max_size} exceeds 64 MiB")

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class IndexEntry:
    """Where one chunk lives: pack, byte range of its sealed blob, plaintext length, key."""

    pack_id: bytes
    offset: int
    length: int
    raw_length: int
    key_id: bytes


# --- names -------------------------------------------------------------------------------------


def pack_name(pack_id: bytes) -> str:
    """``data/<first 2 hex>/<64 hex>``; the pack id is the SHA-256 of the pack bytes."""
    hexid = pack_id.hex()
    return f"{DATA_DIR}{hexid[:2]}/{hexid}"


def pack_id_from_name(name: str) -> bytes | None:
    """The pack id of a ``data/`` object name, or None for a name that is not a pack."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "data" or len(parts[2]) != 2 * PACK_ID_LEN:
        return None
    try:
        pack_id = bytes.fromhex(parts[2])
    except ValueError:
        return None
    return pack_id if parts[1] == parts[2][:2] else None


def index_name(segment_id: bytes) -> str:
    return f"{INDEX_DIR}{segment_id.hex()}"


def key_name(key_id: bytes) -> str:
    return f"{KEYS_DIR}{key_id.hex()}"


def source_name(kind: str, name: str) -> str:
    """How a source is named in the repository: ``database:crm``, ``fileset:attachments``
    (``kind`` is the inventory section's target kind, ``name`` its entry)."""
    return f"{kind}:{name}"


def manifest_name(backup_id: str) -> str:
    return f"{BACKUPS_DIR}{backup_id}"


def drill_name(backup_id: str) -> str:
    return f"{DRILLS_DIR}{backup_id}"


def pruned_name(backup_id: str) -> str:
    return f"{PRUNED_DIR}{backup_id}"


def new_backup_id(now: float) -> str:
    """Sortable id: UTC time to the microsecond, then 8 random hex digits."""
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-{os.urandom(4).hex()}"


def check_backup_id(backup_id: str) -> str:
    """Backup ids come from users too: refuse anything that is not a plain id."""
    if not backup_id or "/" in backup_id or backup_id.startswith(".") or len(backup_id) > 100:
        raise RepositoryError(f"invalid backup id {backup_id!r}", hint="see `crmmaint backups`")
    return backup_id


def utc_iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- config ------------------------------------------------------------------------------------


def write_key_check(metadata_key: bytes, repo_id: str) -> str:
    """HMAC-SHA256 that lets ``open`` tell a wrong write key from a corrupt repository."""
    return hmac.new(metadata_key, WRITE_KEY_CHECK_LABEL + repo_id.encode(), "sha256").hexdigest()


CONFIG_MAC_LABEL = b"crmmaint config v1:"
#: Smallest chunk a repository may ask for: smaller chunks, one per pack, would let whoever
#: stores the repository see each chunk's size.
MIN_CHUNK_FLOOR = 16 << 10
MIN_PACK_SIZE = 1 << 20
MAX_PACK_SIZE = 1 << 30


def config_mac(metadata_key: bytes, config: dict[str, Any]) -> str:
    """HMAC-SHA256 (metadata key) of the whole config but its ``mac``, as canonical JSON: the
    plaintext config cannot be changed by whoever stores the repository without notice."""
    body = {k: v for k, v in config.items() if k != "mac"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(metadata_key, CONFIG_MAC_LABEL + canonical, "sha256").hexdigest()


def check_config_values(config: dict[str, Any], url: str) -> None:
    """Every field within the range crmmaint writes; RepositoryError naming the first that is
    not (a hostile or damaged config: tiny chunks or packs, a huge zstd level, unknown AEAD)."""
    from crmmaint.crypto import ALGORITHMS

    def bad(field: str, value: Any, want: str) -> RepositoryError:
        return RepositoryError(
            f"repository config at {url}: {field} = {value!r} is outside {want}; refusing it",
            hint="the config was changed by someone other than crmmaint: restore it from a copy",
        )

    chunker = config.get("chunker")
    if not isinstance(chunker, dict):
        raise bad("chunker", chunker, "a chunker table")
    sizes = [chunker.get(k) for k in ("min_size", "avg_size", "max_size")]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in sizes) or not (
        MIN_CHUNK_FLOOR <= sizes[0] <= sizes[1] <= sizes[2] <= 64 << 20
    ):
        raise bad("chunker", chunker, f"{MIN_CHUNK_FLOOR} <= min <= avg <= max <= 64 MiB")
    level = (config.get("compression") or {}).get("level")
    if isinstance(level, bool) or not isinstance(level, int) or not (-7 <= level <= 19 and level):
        raise bad("compression.level", level, "1..19 or -7..-1")
    pack = config.get("pack_size")
    if (
        isinstance(pack, bool)
        or not isinstance(pack, int)
        or not (MIN_PACK_SIZE <= pack <= MAX_PACK_SIZE)
    ):
        raise bad("pack_size", pack, "1 MiB .. 1 GiB")
    if config.get("aead") not in ALGORITHMS:
        raise bad("aead", config.get("aead"), ", ".join(ALGORITHMS))


def encode_config(config: dict[str, Any]) -> bytes:
    return json.dumps(config, indent=2, sort_keys=True).encode() + b"\n"


def decode_config(data: bytes, url: str) -> dict[str, Any]:
    try:
        config = json.loads(data)
    except ValueError as exc:
        raise RepositoryError(f"repository config at {url} is not valid JSON") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise RepositoryError(f"{url} is not a crmmaint repository (config has no format name)")
    if config.get("version") != FORMAT_VERSION:
        raise RepositoryError(
            f"repository {url} has format version {config.get('version')!r}; "
            f"this crmmaint reads version {FORMAT_VERSION}",
            hint="upgrade crmmaint",
        )
    return config


# --- sealed metadata ---------------------------------------------------------------------------


def seal_json(key: bytes, name: str, value: Any, *, algorithm: str) -> bytes:
    """JSON, zstd-compressed, sealed with the object name as AAD (so objects cannot be swapped)."""
    raw = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    return seal(
        key, zstandard.ZstdCompressor(level=3).compress(raw), aad=name.encode(), algorithm=algorithm
    )


def open_json(key: bytes, name: str, blob: bytes) -> Any:
    """Inverse of ``seal_json``; IntegrityError naming the object on any tamper."""
    plain = open_sealed(key, blob, aad=name.encode(), name=name)
    try:
        return json.loads(zstandard.ZstdDecompressor().decompress(plain))
    except (ValueError, zstandard.ZstdError) as exc:
        raise IntegrityError(f"object {name} authenticated but does not decode") from exc


# --- index segments ----------------------------------------------------------------------------


def encode_index(entries: dict[bytes, IndexEntry], pack_sizes: dict[bytes, int]) -> bytes:
    """Binary segment: key table, pack table (id, size), then one record per chunk."""
    key_ids = sorted({e.key_id for e in entries.values()})
    key_pos = {k: i for i, k in enumerate(key_ids)}
    pack_ids = sorted(pack_sizes)
    pack_pos = {p: i for i, p in enumerate(pack_ids)}
    out = [INDEX_MAGIC, _COUNT.pack(len(key_ids)), *key_ids, _COUNT.pack(len(pack_ids))]
    out += [_PACK_REC.pack(p, pack_sizes[p]) for p in pack_ids]
    out.append(_COUNT.pack(len(entries)))
    out += [
        _CHUNK_REC.pack(
            cid, pack_pos[e.pack_id], e.offset, e.length, e.raw_length, key_pos[e.key_id]
        )
        for cid, e in sorted(entries.items())
    ]
    return b"".join(out)


def decode_index(data: bytes, name: str) -> tuple[dict[bytes, IndexEntry], dict[bytes, int]]:
    """Inverse of ``encode_index``; IntegrityError naming the segment if malformed."""
    try:
        if not data.startswith(INDEX_MAGIC):
            raise ValueError("bad magic")
        pos = len(INDEX_MAGIC)
        (n_keys,) = _COUNT.unpack_from(data, pos)
        pos += _COUNT.size
        key_ids = [data[pos + i * KEY_ID_LEN : pos + (i + 1) * KEY_ID_LEN] for i in range(n_keys)]
        pos += n_keys * KEY_ID_LEN
        (n_packs,) = _COUNT.unpack_from(data, pos)
        pos += _COUNT.size
        end = pos + n_packs * _PACK_REC.size
        packs = dict(_PACK_REC.iter_unpack(data[pos:end]))
        pos = end
        (n_chunks,) = _COUNT.unpack_from(data, pos)
        pos += _COUNT.size
        end = pos + n_chunks * _CHUNK_REC.size
        if end != len(data):
            raise ValueError("length mismatch")
        pack_ids = list(packs)
        entries = {
            cid: IndexEntry(pack_ids[p], off, length, raw, key_ids[k])
            for cid, p, off, length, raw, k in _CHUNK_REC.iter_unpack(data[pos:end])
        }
    except (ValueError, IndexError, struct.error) as exc:
        raise IntegrityError(f"index segment {name} is malformed: {exc}") from exc
    return entries, packs


def encode_pack_trailer(
    metadata_key: bytes, chunks: dict[bytes, IndexEntry], *, algorithm: str
) -> bytes:
    """The trailer that ends a pack: its chunks (pack id ignored: a pack cannot hold its own
    hash) as an index body sealed under the metadata key, then its length and the magic."""
    body = encode_index(
        {
            cid: IndexEntry(_NO_PACK, e.offset, e.length, e.raw_length, e.key_id)
            for cid, e in chunks.items()
        },
        {_NO_PACK: 0},
    )
    sealed = seal(metadata_key, body, aad=PACK_TRAILER_AAD, algorithm=algorithm)
    return sealed + PACK_TRAILER_END.pack(len(sealed), PACK_TRAILER_MAGIC)


def decode_pack_trailer(
    metadata_key: bytes, sealed: bytes, pack_id: bytes, name: str
) -> dict[bytes, IndexEntry]:
    """The chunks a trailer lists, located in pack ``pack_id``; IntegrityError naming the pack
    if the trailer fails authentication or decoding."""
    plain = open_sealed(metadata_key, sealed, aad=PACK_TRAILER_AAD, name=f"{name} (trailer)")
    entries, _ = decode_index(plain, f"{name} (trailer)")
    return {
        cid: IndexEntry(pack_id, e.offset, e.length, e.raw_length, e.key_id)
        for cid, e in entries.items()
    }


def segment_id(sealed: bytes) -> bytes:
    """Index segments are named by the SHA-256 of their stored bytes."""
    return hashlib.sha256(sealed).digest()
