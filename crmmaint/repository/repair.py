"""Repair what the write key can mend: keep damage where it is, so every intact backup stays
listable, prunable and restorable.

Under the exclusive lock, ``repair`` authenticates every manifest, index segment, key object and
drill record, then plans:

- a damaged manifest, index segment, key object or drill record is **moved aside** to
  ``damaged/<its name>`` (kept, never listed, never pruned: material for a manual recovery);
- packs that no intact segment indexes are indexed again from their trailers (each pack
  ends with its own index, sealed under the metadata key), into one new segment;
- a backup that still cannot be restored (a chunk in no intact segment nor trailered pack, a
  data key whose object is damaged or missing) is moved aside too, with the reason;
- leftovers of killed writers are removed (``Backend.remove_stale_temp``).

Without ``apply`` nothing changes (the default in the CLI: a dry run). Data that only moved-aside
backups referenced is freed by the next prune.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crmmaint.errors import IntegrityError, ObjectNotFound
from crmmaint.repository.format import (
    CHUNK_ID_LEN,
    DAMAGED_DIR,
    DATA_DIR,
    DRILLS_DIR,
    KEYS_DIR,
    IndexEntry,
    drill_name,
    manifest_name,
    open_json,
    pack_id_from_name,
)
from crmmaint.repository.gc import LEFTOVER_CLOCK_MARGIN
from crmmaint.repository.index import ChunkIndex, read_pack_trailer, write_segment

if TYPE_CHECKING:
    from crmmaint.repository.repository import Repository

logger = logging.getLogger(__name__)


@dataclass
class RepairReport:
    """What repair found and did (or, without ``applied``, would do)."""

    applied: bool
    #: object name -> why it is moved aside (damaged objects, then unrestorable backups)
    move_aside: dict[str, str] = field(default_factory=dict)
    #: ids of the backups among ``move_aside``
    backups_moved: list[str] = field(default_factory=list)
    leftovers_removed: int = 0
    #: chunks indexed again from the trailers of packs no intact segment indexes
    chunks_recovered: int = 0
    #: unindexed packs that could not help: written before packs had trailers, or damaged
    packs_unrecoverable: list[str] = field(default_factory=list)
    #: index entries dropped because their key object is damaged or missing
    chunks_dropped: int = 0

    @property
    def clean(self) -> bool:
        """Nothing to move aside, index again or drop."""
        return not (self.move_aside or self.chunks_recovered or self.chunks_dropped)


def repair(repo: Repository, *, apply: bool) -> RepairReport:
    """Find damage and (with ``apply``) move it aside; see the module docstring.

    Raises ``LockError`` while another process holds the repository, ``BackendError`` when the
    storage fails; never raises for the damage it finds.
    """
    report = RepairReport(applied=apply)
    with repo.lock(exclusive=True, purpose="repair") as lock:
        intact = repo.backups()
        for backup_id, why in sorted(repo.damaged_manifests.items()):
            _plan(report, manifest_name(backup_id), f"damaged manifest: {why}", backup_id)
        index = ChunkIndex()
        index.refresh(repo.backend, repo.keys.metadata_key)
        for name, why in sorted(index.damaged.items()):
            _plan(report, name, f"damaged index segment: {why}")
        loaded = set(index.segments)
        keys = _key_objects(repo, report)
        recovered, sizes = _from_trailers(repo, index, keys, report)
        index.merge(recovered, sizes)  # what the rebuilt segment will index
        # Chunks under a key object that is damaged or gone cannot be read: a backup must not
        # deduplicate against them, so the index is rewritten without them.
        unkeyed = {c for c, e in index.entries.items() if e.key_id.hex() not in keys}
        report.chunks_dropped = len(unkeyed)
        if apply and unkeyed:
            kept = {c: e for c, e in index.entries.items() if c not in unkeyed}
            packs = {e.pack_id for e in kept.values()}
            name = write_segment(
                repo.backend,
                repo.keys.metadata_key,
                kept,
                {p: s for p, s in index.pack_sizes.items() if p in packs},
                algorithm=repo.aead,
            )
            for old in sorted(loaded - {name}):
                repo.backend.delete(old)
            logger.warning(
                "repair: index rewritten as %s without %d chunk(s) under damaged or missing keys",
                name,
                len(unkeyed),
            )
        elif apply and recovered:
            name = write_segment(
                repo.backend, repo.keys.metadata_key, recovered, sizes, algorithm=repo.aead
            )
            logger.warning(
                "repair: rebuilt index segment %s from %d pack trailer(s): %d chunk(s)",
                name,
                len(sizes),
                len(recovered),
            )
        for info in sorted(repo.backend.list(DRILLS_DIR), key=lambda i: i.name):
            try:
                open_json(repo.keys.metadata_key, info.name, repo.backend.load(info.name))
            except IntegrityError as exc:
                _plan(report, info.name, f"damaged drill record: {exc.message}")
        for backup in intact:
            why = _unrestorable(repo, backup.id, index, keys)
            if why is not None:
                _plan(report, manifest_name(backup.id), why, backup.id)
                if repo.backend.exists(drill_name(backup.id)):
                    _plan(
                        report, drill_name(backup.id), f"drill record of moved backup {backup.id}"
                    )
        if apply:
            for name in report.move_aside:
                try:
                    repo.backend.move(name, DAMAGED_DIR + name)
                except ObjectNotFound:
                    continue
                logger.warning("repair: moved %s aside to %s%s", name, DAMAGED_DIR, name)
            report.leftovers_removed = repo.backend.remove_stale_temp(
                lock.acquired_at - LEFTOVER_CLOCK_MARGIN
            )
            repo.index = ChunkIndex()
            repo.damaged_manifests.clear()
    return report


def _from_trailers(
    repo: Repository, index: ChunkIndex, keys: set[str], report: RepairReport
) -> tuple[dict[bytes, IndexEntry], dict[bytes, int]]:
    """Index entries for the packs no intact segment indexes, read from their trailers (each
    pack's bytes checked against its name first), for chunks under a key in ``keys`` (hex ids
    of intact key objects): a chunk under a lost key cannot be read. Returns (entries, pack
    sizes)."""
    entries: dict[bytes, IndexEntry] = {}
    sizes: dict[bytes, int] = {}
    for info in sorted(repo.backend.list(DATA_DIR), key=lambda i: i.name):
        pack_id = pack_id_from_name(info.name)
        if pack_id is None or pack_id in index.pack_sizes:
            continue
        try:
            found = read_pack_trailer(repo.backend, repo.keys.metadata_key, info.name, info.size)
        except IntegrityError:
            found = None
        if found is None or hashlib.sha256(repo.backend.load(info.name)).digest() != pack_id:
            report.packs_unrecoverable.append(info.name)
            continue
        usable = {c: e for c, e in found.items() if e.key_id.hex() in keys}
        for cid, entry in usable.items():
            entries.setdefault(cid, entry)
        if usable:
            sizes[pack_id] = info.size
    report.chunks_recovered = len(entries)
    return entries, sizes


def _plan(report: RepairReport, name: str, why: str, backup_id: str | None = None) -> None:
    if name in report.move_aside:
        return
    report.move_aside[name] = why
    if backup_id is not None:
        report.backups_moved.append(backup_id)


def _key_objects(repo: Repository, report: RepairReport) -> set[str]:
    """Key ids (hex) whose objects authenticate; damaged ones are planned for moving aside."""
    intact: set[str] = set()
    for info in sorted(repo.backend.list(KEYS_DIR), key=lambda i: i.name):
        hex_id = info.name[len(KEYS_DIR) :]
        try:
            record = open_json(repo.keys.metadata_key, info.name, repo.backend.load(info.name))
        except IntegrityError as exc:
            _plan(report, info.name, f"damaged key object: {exc.message}")
            continue
        if record.get("key_id") == hex_id:
            intact.add(hex_id)
        else:
            _plan(report, info.name, "key object does not name itself")
    return intact


def _unrestorable(
    repo: Repository, backup_id: str, index: ChunkIndex, keys: set[str]
) -> str | None:
    """Why a backup with an intact manifest cannot be restored any more, or None."""
    try:
        manifest = repo.load_manifest_meta(backup_id)
    except ObjectNotFound:
        return None  # removed meanwhile
    if missing := sorted(set(manifest["key_ids"]) - keys):
        return f"unrestorable: its data key object keys/{missing[0]} is damaged or missing"
    for stream in manifest["streams"]:
        raw = bytes.fromhex(stream["ids"])
        for i in range(0, len(raw), CHUNK_ID_LEN):
            cid = raw[i : i + CHUNK_ID_LEN]
            entry = index.entries.get(cid)
            if entry is None:
                return (
                    f"unrestorable: stream {stream['name']} chunk {cid.hex()} is in no intact "
                    "index segment"
                )
            if entry.key_id.hex() not in keys:
                return (
                    f"unrestorable: stream {stream['name']} chunk {cid.hex()} is encrypted "
                    f"under keys/{entry.key_id.hex()}, which is damaged or missing"
                )
    return None
