"""The chunk index: which chunk lives in which pack, merged from every ``index/`` segment.

Segments are immutable; a write session adds one, prune replaces them all by one consolidated
segment. Loading is incremental: segments already merged are not read again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from crmmaint.crypto import open_sealed, seal
from crmmaint.errors import IntegrityError, RepositoryError
from crmmaint.repository.backends.base import Backend
from crmmaint.repository.format import (
    INDEX_AAD,
    INDEX_DIR,
    PACK_TRAILER_END,
    PACK_TRAILER_MAGIC,
    IndexEntry,
    decode_index,
    decode_pack_trailer,
    encode_index,
    index_name,
    segment_id,
)

logger = logging.getLogger(__name__)


@dataclass
class ChunkIndex:
    """In-memory merge of index segments: chunk id -> entry, pack id -> size."""

    entries: dict[bytes, IndexEntry] = field(default_factory=dict)
    pack_sizes: dict[bytes, int] = field(default_factory=dict)
    segments: set[str] = field(default_factory=set)
    #: segments that failed authentication or decoding: name -> why. Their chunks are simply
    #: not indexed: a backup stores them again, a restore that needs them names the segment.
    damaged: dict[str, str] = field(default_factory=dict)

    def __contains__(self, chunk_id: bytes) -> bool:
        return chunk_id in self.entries

    def get(self, chunk_id: bytes) -> IndexEntry | None:
        return self.entries.get(chunk_id)

    def merge(self, entries: dict[bytes, IndexEntry], pack_sizes: dict[bytes, int]) -> None:
        """Add entries; a chunk already indexed keeps its first location."""
        for cid, entry in entries.items():
            self.entries.setdefault(cid, entry)
        self.pack_sizes.update(pack_sizes)

    def refresh(self, backend: Backend, metadata_key: bytes) -> None:
        """Merge segments written since the last refresh; forget segments that were removed."""
        names = {info.name for info in backend.list(INDEX_DIR)}
        if self.segments - names:
            self.entries.clear()
            self.pack_sizes.clear()
            self.segments.clear()
        self.damaged = {name: why for name, why in self.damaged.items() if name in names}
        for name in sorted(names - self.segments - set(self.damaged)):
            try:
                entries, packs = load_segment(backend, metadata_key, name)
            except (IntegrityError, RepositoryError) as exc:
                self.damaged[name] = exc.message
                logger.warning(
                    "index segment %s is damaged (%s): its chunks are left out of the index; "
                    "`crmmaint repo repair` moves it aside",
                    name,
                    exc.message,
                )
                continue
            self.merge(entries, packs)
            self.segments.add(name)
        logger.debug("index: %d chunks in %d packs", len(self.entries), len(self.pack_sizes))


def load_segment(
    backend: Backend, metadata_key: bytes, name: str
) -> tuple[dict[bytes, IndexEntry], dict[bytes, int]]:
    """Read, authenticate and decode one segment; IntegrityError if its bytes are not the ones
    its name (their SHA-256) promises (a segment copied under another name) or fail."""
    blob = backend.load(name)
    if segment_id(blob).hex() != name[len(INDEX_DIR) :]:
        raise IntegrityError(f"index segment {name} does not match its name (SHA-256)")
    plain = open_sealed(metadata_key, blob, aad=INDEX_AAD, name=name)
    return decode_index(plain, name)


def read_pack_trailer(
    backend: Backend, metadata_key: bytes, name: str, size: int
) -> dict[bytes, IndexEntry] | None:
    """The chunks a pack's trailer lists (its own index), located in that pack; None for a
    pack written before packs had trailers. IntegrityError if the trailer fails."""
    if size < PACK_TRAILER_END.size:
        return None
    length, magic = PACK_TRAILER_END.unpack(backend.load(name, size - PACK_TRAILER_END.size))
    if magic != PACK_TRAILER_MAGIC or length > size - PACK_TRAILER_END.size:
        return None
    sealed = backend.load(name, size - PACK_TRAILER_END.size - length, length)
    pack_id = bytes.fromhex(name.rsplit("/", 1)[-1])
    return decode_pack_trailer(metadata_key, sealed, pack_id, name)


def write_segment(
    backend: Backend,
    metadata_key: bytes,
    entries: dict[bytes, IndexEntry],
    pack_sizes: dict[bytes, int],
    *,
    algorithm: str,
) -> str:
    """Seal and store a segment named by the hash of its bytes; returns its name."""
    sealed = seal(
        metadata_key, encode_index(entries, pack_sizes), aad=INDEX_AAD, algorithm=algorithm
    )
    name = index_name(segment_id(sealed))
    backend.store(name, sealed)
    return name
