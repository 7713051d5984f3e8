"""Prune: remove backups the retention policy drops, then every object only they needed.

Order (each step leaves a repository that verifies and that a backup can safely dedup against;
the argument is in docs/format.md):

1. repack: copy the live chunks of packs less than half referenced into new packs (a pack that
   fails its hash stops prune before anything is removed);
2. delete the manifests (then drill records) of removed backups;
3. write one consolidated index segment of the chunks kept backups still reference;
4. delete every other index segment;
5. delete packs no index segment references (emptied, repacked, orphans of killed sessions);
6. delete key objects no kept backup or indexed chunk needs.

Runs under the exclusive repository lock, so no write session is open meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crmmaint.errors import ObjectNotFound, RepositoryError
from crmmaint.repository.format import (
    CHUNK_ID_LEN,
    DATA_DIR,
    DRILLS_DIR,
    INDEX_DIR,
    KEY_ID_LEN,
    KEYS_DIR,
    IndexEntry,
    drill_name,
    manifest_name,
    pack_id_from_name,
    pack_name,
    pruned_name,
    seal_json,
)
from crmmaint.repository.index import ChunkIndex, write_segment
from crmmaint.repository.retention import BackupRef, Verdict, plan_prune
from crmmaint.repository.session import store_pack
from crmmaint.units import plural

if TYPE_CHECKING:
    from crmmaint.repository.repository import BackupInfo, Repository
    from crmmaint.repository.retention import RetentionPolicy

logger = logging.getLogger(__name__)

#: A pack whose referenced bytes fall below this fraction of its size is rewritten.
REPACK_BELOW = 0.5
#: Seconds before our lock below which a leftover counts as a killed writer's: room for a
#: storage server whose clock runs ahead of ours.
LEFTOVER_CLOCK_MARGIN = 300.0


@dataclass
class PruneReport:
    """What prune removed (or, with ``dry_run``, would remove) and why each backup stays."""

    dry_run: bool
    keep: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)
    #: every backup, kept or removed, with the reasons that keep it (``plan_prune``'s order)
    verdicts: list[Verdict] = field(default_factory=list)
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    bytes_freed: int = 0
    keys_deleted: int = 0
    index_segments_replaced: int = 0
    #: temp files and unfinished uploads of killed writers removed (backend.remove_stale_temp)
    leftovers_removed: int = 0


@dataclass
class _Plan:
    live: dict[bytes, IndexEntry]
    delete_packs: set[bytes]
    repack: list[bytes]
    needed_keys: set[bytes]
    stored_packs: dict[bytes, int]


def _protected(backups: list[BackupInfo]) -> set[str]:
    """Newest backup and newest drilled backup of each source: never removed."""
    newest: dict[str, BackupInfo] = {}
    drilled: dict[str, BackupInfo] = {}
    for b in backups:
        if b.source not in newest or (b.time, b.id) > (newest[b.source].time, newest[b.source].id):
            newest[b.source] = b
        if b.drilled and (
            b.source not in drilled
            or (b.time, b.id) > (drilled[b.source].time, drilled[b.source].id)
        ):
            drilled[b.source] = b
    return {b.id for b in newest.values()} | {b.id for b in drilled.values()}


def prune(repo: Repository, policy: RetentionPolicy, *, now: float, dry_run: bool) -> PruneReport:
    """Apply ``policy`` at time ``now``; with ``dry_run`` only report. See the module docstring."""
    # A dry run writes nothing: a shared lock (backups may go on), as `prune --check` should
    # not wait behind them; the real prune holds the repository alone.
    with repo.lock(exclusive=not dry_run, purpose="prune --check" if dry_run else "prune") as lock:
        backups = repo.backups()
        repo.refresh_index()
        if damage := repo.damage():
            name, why = next(iter(sorted(damage.items())))
            raise RepositoryError(
                f"{plural(len(damage), 'damaged object')} in {repo.backend.url}, first {name}: {why}; "
                "refusing to prune (it could delete the data they describe)",
                hint="run `crmmaint repo repair` to see what it would move aside, then "
                "`crmmaint repo repair --apply`",
            )
        decision = plan_prune(
            [BackupRef(b.id, b.source, b.time, b.drilled) for b in backups], policy, now
        )
        protected = _protected(backups)
        remove = [i for i in decision.remove if i not in protected]
        report = PruneReport(dry_run, keep=list(decision.keep), remove=remove)
        report.reasons = dict(decision.reasons)
        rescued = set(decision.remove) & protected
        for backup_id in rescued:
            report.keep.append(backup_id)
            report.reasons[backup_id] = ["newest or newest drilled of its source"]
        report.verdicts = [
            Verdict(v.backup, True, tuple(report.reasons[v.backup.id]))
            if v.backup.id in rescued
            else v
            for v in decision.verdicts
        ]
        kept = [b for b in backups if b.id not in set(remove)]
        plan = _plan(repo, kept)
        report.packs_deleted = len(plan.delete_packs) + len(plan.repack)
        report.packs_repacked = len(plan.repack)
        report.bytes_freed = sum(plan.stored_packs.get(p, 0) for p in plan.delete_packs)
        if dry_run:
            return report
        # Held exclusively: no writer is at work, so what is older than our lock (less a
        # margin for clocks that disagree) was left by a killed one.
        report.leftovers_removed = repo.backend.remove_stale_temp(
            lock.acquired_at - LEFTOVER_CLOCK_MARGIN
        )
        _execute(repo, remove, plan, report)
        return report


def _plan(repo: Repository, kept: list[BackupInfo]) -> _Plan:
    """Live chunks (referenced by kept backups), packs to delete or repack, keys still needed."""
    index = ChunkIndex()
    index.refresh(repo.backend, repo.keys.metadata_key)
    repo.index = index
    live: dict[bytes, IndexEntry] = {}
    needed_keys: set[bytes] = set()
    for backup in kept:
        manifest = repo.load_manifest_meta(backup.id)
        needed_keys.update(bytes.fromhex(k) for k in manifest["key_ids"])
        for stream in manifest["streams"]:
            raw = bytes.fromhex(stream["ids"])
            for i in range(0, len(raw), CHUNK_ID_LEN):
                cid = raw[i : i + CHUNK_ID_LEN]
                entry = index.get(cid)
                if entry is None:
                    raise RepositoryError(
                        f"backup {backup.id} references chunk {cid.hex()} missing from the index; "
                        "refusing to prune a damaged repository",
                        hint="run `crmmaint verify` and repair before pruning",
                    )
                live[cid] = entry
    stored = {}
    for info in repo.backend.list(DATA_DIR):
        pack_id = pack_id_from_name(info.name)
        if pack_id is not None:
            stored[pack_id] = info.size
    used: dict[bytes, int] = dict.fromkeys(stored, 0)
    for entry in live.values():
        used[entry.pack_id] = used.get(entry.pack_id, 0) + entry.length
    delete = {p for p in stored if used.get(p, 0) == 0}
    repack = sorted(p for p, n in used.items() if p in stored and 0 < n < REPACK_BELOW * stored[p])
    needed_keys.update(e.key_id for e in live.values())
    return _Plan(live, delete, repack, needed_keys, stored)


def _execute(repo: Repository, remove: list[str], plan: _Plan, report: PruneReport) -> None:
    backend = repo.backend
    # 1: repack first: it only adds packs, and a pack that fails its hash stops prune before
    # anything was removed (orphan packs of an interrupted repack are freed by the next prune).
    report.packs_written = _repack(repo, plan)
    for backup_id in remove:  # 2: the record first, so a removed backup is never "missing"
        name = pruned_name(backup_id)
        record = {"backup_id": backup_id, "pruned": time.time()}
        backend.store(name, seal_json(repo.keys.metadata_key, name, record, algorithm=repo.aead))
        backend.delete(manifest_name(backup_id))
        _delete_quietly(repo, drill_name(backup_id))
        logger.info("prune: removed backup %s", backup_id)
    old_segments = sorted(info.name for info in backend.list(INDEX_DIR))
    live_packs = {e.pack_id for e in plan.live.values()}
    sizes = {p: s for p, s in plan.stored_packs.items() if p in live_packs}
    new_segment = None
    if plan.live:  # 3
        new_segment = write_segment(
            backend, repo.keys.metadata_key, plan.live, sizes, algorithm=repo.aead
        )
    for name in old_segments:  # 4
        if name != new_segment:
            _delete_quietly(repo, name)
    report.index_segments_replaced = len(old_segments)
    for pack_id in sorted(set(plan.stored_packs) - live_packs):  # 5
        _delete_quietly(repo, pack_name(pack_id))
    for info in list(backend.list(KEYS_DIR)):  # 6
        try:
            kid = bytes.fromhex(info.name[len(KEYS_DIR) :])
        except ValueError:
            continue
        if len(kid) == KEY_ID_LEN and kid not in plan.needed_keys:
            _delete_quietly(repo, info.name)
            report.keys_deleted += 1
    manifests = set(repo.backup_ids())
    for info in list(backend.list(DRILLS_DIR)):
        if info.name[len(DRILLS_DIR) :] not in manifests:
            _delete_quietly(repo, info.name)
    repo.index = ChunkIndex()
    repo.refresh_index()
    logger.info(
        "prune: %d backups removed, %d packs deleted (%d repacked), %d bytes freed",
        len(remove),
        report.packs_deleted,
        report.packs_repacked,
        report.bytes_freed,
    )


def _repack(repo: Repository, plan: _Plan) -> int:
    """Copy live sealed chunks (verbatim: same key, same AAD) out of sparse packs into new packs."""
    written = 0
    parts: list[bytes] = []
    moved: list[tuple[bytes, int, IndexEntry]] = []
    size = 0

    def flush() -> None:
        nonlocal parts, moved, size, written
        if not parts:
            return
        chunks = {
            cid: IndexEntry(b"", offset, old.length, old.raw_length, old.key_id)
            for cid, offset, old in moved
        }
        pack_id, entries, stored = store_pack(repo, parts, size, chunks)
        plan.stored_packs[pack_id] = stored
        plan.live.update(entries)
        written += 1
        parts, moved, size = [], [], 0

    by_pack: dict[bytes, list[tuple[bytes, IndexEntry]]] = {p: [] for p in plan.repack}
    for cid, entry in plan.live.items():
        if entry.pack_id in by_pack:
            by_pack[entry.pack_id].append((cid, entry))
    for pack_id in plan.repack:
        raw = repo.backend.load(pack_name(pack_id))
        if hashlib.sha256(raw).digest() != pack_id:  # never copy damage into a fresh pack
            raise RepositoryError(
                f"{pack_name(pack_id)} does not match its hash; refusing to repack it",
                hint="run `crmmaint verify --read-data` and repair before pruning",
            )
        data = memoryview(raw)
        for cid, entry in sorted(by_pack[pack_id], key=lambda c: c[1].offset):
            blob = bytes(data[entry.offset : entry.offset + entry.length])
            moved.append((cid, size, entry))
            parts.append(blob)
            size += len(blob)
            if size >= repo.pack_size:
                flush()
        data.release()
    flush()
    return written


def _delete_quietly(repo: Repository, name: str) -> None:
    """Delete an object that may already be gone (a previous prune was interrupted)."""
    with contextlib.suppress(ObjectNotFound):
        repo.backend.delete(name)
