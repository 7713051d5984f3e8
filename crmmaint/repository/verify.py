"""Verify a repository: metadata consistency, pack hashes, and (with identities) every chunk.

Metadata mode reads only metadata, and authenticates every object the write key can: index
segments, manifests, key objects and drill records (AEAD under the metadata key, the object's
name bound in); every manifest's chunks are indexed, every indexed pack exists with its recorded
size, every key object a manifest or chunk needs exists. ``read_data``
downloads packs and compares SHA-256 of their bytes with their id (write key suffices); with
identities it also decrypts, decompresses and rechecks every chunk. ``subset_percent`` checks a
rotating slice of packs, resuming after the last pack checked (cursor kept in the repository).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crmmaint.crypto import Identity
from crmmaint.errors import CrmMaintError, ObjectNotFound, WrongKeyError
from crmmaint.repository.format import (
    BACKUPS_DIR,
    CHUNK_ID_LEN,
    DAMAGED_DIR,
    DATA_DIR,
    DRILLS_DIR,
    INDEX_DIR,
    KEYS_DIR,
    PRUNED_DIR,
    VERIFY_CURSOR,
    IndexEntry,
    key_name,
    manifest_name,
    open_json,
    pack_id_from_name,
    pack_name,
    pruned_name,
    seal_json,
)
from crmmaint.repository.index import ChunkIndex, load_segment
from crmmaint.repository.reader import ChunkOpener, unwrap_keys
from crmmaint.units import plural

if TYPE_CHECKING:
    from crmmaint.repository.repository import Repository

logger = logging.getLogger(__name__)

READ_THREADS = 2
#: Problems listed per kind before the rest are only counted, so a report stays readable.
MAX_CHUNK_PROBLEMS_PER_PACK = 5


@dataclass(frozen=True)
class VerifyProblem:
    """One damaged or missing object, named as stored (``data/3f/3f0c…``, ``backups/…``)."""

    object: str
    message: str

    def __str__(self) -> str:
        return f"{self.object}: {self.message}"


@dataclass
class VerifyReport:
    """What was checked and what is wrong; ``ok`` when no problem was found."""

    problems: list[VerifyProblem] = field(default_factory=list)
    backups: int = 0
    index_segments: int = 0
    key_objects: int = 0
    packs: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    chunks: int = 0
    chunks_checked: int = 0
    orphan_packs: int = 0
    subset: tuple[int, int] | None = None  # packs read this run, packs in repository
    packs_checked: list[str] = field(default_factory=list)  # names of the packs read

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, obj: str, message: str) -> None:
        # The task's result says it (once); the log has it for --debug.
        logger.info("verify: %s: %s", obj, message)
        self.problems.append(VerifyProblem(obj, message))


def verify(
    repo: Repository,
    *,
    read_data: bool = False,
    subset_percent: float | None = None,
    identities: Sequence[Identity] | None = None,
    progress: Callable[[int, int], None] | None = None,
    expected_backups: Iterable[str] = (),
) -> VerifyReport:
    """Run the checks described in the module docstring; never raises for damage it finds.

    ``expected_backups``: ids known to have been committed (the journal's record of backups
    into this repository); each must be listed, pruned (a ``pruned/`` record) or moved aside by
    repair, else it is reported missing."""
    report = VerifyReport()
    backend = repo.backend
    stored_packs: dict[bytes, int] = {}
    for info in backend.list(DATA_DIR):
        pack_id = pack_id_from_name(info.name)
        if pack_id is None:
            report.add(info.name, "unexpected object in data/ (not a pack name)")
        else:
            stored_packs[pack_id] = info.size
    index = _check_index(repo, report)
    _check_packs(index, stored_packs, report)
    key_objects = _check_key_objects(repo, report)
    _check_drill_records(repo, report)
    referenced, previous = _check_manifests(repo, index, key_objects, report)
    _check_chain(repo, previous, set(expected_backups), report)
    # A chunk no backup references (left by a repair, freed by the next prune) needs no key.
    needed = {index.entries[c].key_id for c in referenced if c in index.entries}
    for kid in sorted(needed):
        if key_name(kid) not in key_objects:
            report.add(key_name(kid), "missing: chunks of listed backups are encrypted under it")
    if read_data or identities:
        _read_packs(repo, index, stored_packs, report, subset_percent, identities, progress)
    logger.info(
        "verify: %d backups, %d packs (%d read), %d problems",
        report.backups,
        report.packs,
        report.packs_read,
        len(report.problems),
    )
    return report


def _check_index(repo: Repository, report: VerifyReport) -> ChunkIndex:
    index = ChunkIndex()
    for info in sorted(repo.backend.list(INDEX_DIR), key=lambda i: i.name):
        try:
            entries, packs = load_segment(repo.backend, repo.keys.metadata_key, info.name)
        except CrmMaintError as exc:
            report.add(info.name, f"unreadable index segment: {exc.message}")
            continue
        index.merge(entries, packs)
        index.segments.add(info.name)
    report.index_segments = len(index.segments)
    report.chunks = len(index.entries)
    return index


def _opened(
    repo: Repository, prefix: str, what: str, report: VerifyReport
) -> Iterator[tuple[str, Any]]:
    """Each object under ``prefix`` authenticated and decoded under the metadata key (its name
    is the associated data), in name order; one that fails is reported as an unreadable
    ``what`` and skipped."""
    for info in sorted(repo.backend.list(prefix), key=lambda i: i.name):
        try:
            record = open_json(repo.keys.metadata_key, info.name, repo.backend.load(info.name))
        except CrmMaintError as exc:
            report.add(info.name, f"unreadable {what}: {exc.message}")
            continue
        yield info.name, record


def _check_key_objects(repo: Repository, report: VerifyReport) -> set[str]:
    """Authenticate every ``keys/`` object and check that it names itself; returns the names of
    all that exist (a damaged one is reported here, not again as missing)."""
    present = {info.name for info in repo.backend.list(KEYS_DIR)}
    for name, record in _opened(repo, KEYS_DIR, "key object", report):
        if f"{KEYS_DIR}{record.get('key_id')}" != name or not record.get("stanzas"):
            report.add(name, "key object does not name itself, or wraps the key for nobody")
        else:
            report.key_objects += 1
    return present


def _check_drill_records(repo: Repository, report: VerifyReport) -> None:
    """Authenticate every ``drills/`` record (what `backups list` shows as drilled)."""
    for name, record in _opened(repo, DRILLS_DIR, "drill record", report):
        if f"{DRILLS_DIR}{record.get('backup_id')}" != name:
            report.add(name, "drill record names another backup")


def _check_packs(index: ChunkIndex, stored: dict[bytes, int], report: VerifyReport) -> None:
    report.packs = len(index.pack_sizes)
    for pack_id, size in sorted(index.pack_sizes.items()):
        have = stored.get(pack_id)
        if have is None:
            report.add(pack_name(pack_id), "missing: the index references this pack")
        elif have != size:
            report.add(pack_name(pack_id), f"size {have} bytes, index records {size}")
    for entry in index.entries.values():
        if entry.pack_id not in index.pack_sizes:
            report.add(pack_name(entry.pack_id), "referenced by a chunk but not in the pack table")
            break
    report.orphan_packs = len(set(stored) - set(index.pack_sizes))


def _check_chain(
    repo: Repository, previous: dict[str, str], expected: set[str], report: VerifyReport
) -> None:
    """A backup a later manifest names (``previous``) or the journal recorded must still be
    listed, or accounted for: pruned (an authenticated ``pruned/`` record) or moved aside."""
    listed = set(repo.backup_ids())
    pruned = {
        record.get("backup_id")
        for name, record in _opened(repo, PRUNED_DIR, "prune record", report)
        if name == pruned_name(str(record.get("backup_id")))
    }
    aside = {info.name.rsplit("/", 1)[-1] for info in repo.backend.list(DAMAGED_DIR + BACKUPS_DIR)}
    accounted = listed | pruned | aside
    for later, backup_id in sorted(previous.items()):
        if backup_id not in accounted:
            report.add(
                manifest_name(backup_id),
                f"missing: backup {later} follows it, and no prune removed it (lost, deleted "
                "or rolled back by the storage?)",
            )
            accounted.add(backup_id)
    for backup_id in sorted(expected - accounted):
        report.add(
            manifest_name(backup_id),
            "missing: the journal records this backup, and no prune removed it (lost, deleted "
            "or rolled back by the storage?)",
        )


def _check_manifests(
    repo: Repository, index: ChunkIndex, key_objects: set[str], report: VerifyReport
) -> tuple[set[bytes], dict[str, str]]:
    """Authenticate every manifest and check what it lists; returns every chunk id listed, and
    each backup's predecessor in the chain (id -> previous id)."""
    referenced: set[bytes] = set()
    previous: dict[str, str] = {}
    for name, manifest in _opened(repo, BACKUPS_DIR, "manifest", report):
        report.backups += 1
        if manifest.get("previous"):
            previous[str(manifest.get("id"))] = str(manifest["previous"])
        for hex_id in manifest["key_ids"]:
            if f"{KEYS_DIR}{hex_id}" not in key_objects:
                report.add(f"{KEYS_DIR}{hex_id}", f"missing: backup {manifest['id']} needs it")
        for stream in manifest["streams"]:
            raw = bytes.fromhex(stream["ids"])
            referenced.update(raw[i : i + CHUNK_ID_LEN] for i in range(0, len(raw), CHUNK_ID_LEN))
            missing = [
                raw[i : i + CHUNK_ID_LEN].hex()
                for i in range(0, len(raw), CHUNK_ID_LEN)
                if raw[i : i + CHUNK_ID_LEN] not in index.entries
            ]
            if missing:
                report.add(
                    name,
                    f"stream {stream['name']}: {plural(len(missing), 'chunk')} not in the index, "
                    f"first {missing[0]}",
                )
    return referenced, previous


def _select_packs(
    repo: Repository, pack_ids: list[bytes], subset_percent: float | None
) -> list[bytes]:
    """All packs, or the next ``subset_percent`` of them after the stored cursor (wrapping)."""
    if subset_percent is None or not pack_ids:
        return pack_ids
    count = min(len(pack_ids), max(1, math.ceil(len(pack_ids) * subset_percent / 100)))
    cursor = b""
    try:
        state = open_json(repo.keys.metadata_key, VERIFY_CURSOR, repo.backend.load(VERIFY_CURSOR))
        cursor = bytes.fromhex(state["last_pack"])
    except (ObjectNotFound, CrmMaintError, KeyError, ValueError) as exc:
        logger.debug("verify: no usable cursor (%s); starting at the first pack", exc)
    start = next((i for i, p in enumerate(pack_ids) if p > cursor), 0)
    chosen = [pack_ids[(start + i) % len(pack_ids)] for i in range(count)]
    state = {"last_pack": chosen[-1].hex()}
    repo.backend.store(
        VERIFY_CURSOR, seal_json(repo.keys.metadata_key, VERIFY_CURSOR, state, algorithm=repo.aead)
    )
    return chosen


def _read_packs(
    repo: Repository,
    index: ChunkIndex,
    stored: dict[bytes, int],
    report: VerifyReport,
    subset_percent: float | None,
    identities: Sequence[Identity] | None,
    progress: Callable[[int, int], None] | None,
) -> None:
    by_pack: dict[bytes, list[tuple[bytes, IndexEntry]]] = collections.defaultdict(list)
    for cid, entry in index.entries.items():
        by_pack[entry.pack_id].append((cid, entry))
    opener = None
    if identities:
        data_keys: dict[bytes, bytes] = {}
        for kid in sorted({e.key_id for e in index.entries.values()}):
            try:
                data_keys.update(unwrap_keys(repo, [kid.hex()], identities, "verify"))
            except WrongKeyError:
                report.add(key_name(kid), "no identity given can decrypt it; its chunks unchecked")
            except CrmMaintError as exc:
                report.add(key_name(kid), f"unreadable: {exc.message}")
        opener = ChunkOpener(repo.keys.chunk_id_key, data_keys)
    present = sorted(p for p in index.pack_sizes if p in stored)
    chosen = _select_packs(repo, present, subset_percent)
    if subset_percent is not None:
        report.subset = (len(chosen), len(present))
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="crmmaint-verify") as pool:
        window: collections.deque[Future[tuple[list[tuple[str, str]], int]]]
        window = collections.deque()
        done = 0
        for pack_id in chosen:
            window.append(pool.submit(_check_pack, repo, pack_id, by_pack[pack_id], opener))
            if len(window) > READ_THREADS:
                done = _collect(window.popleft(), report, done, len(chosen), progress)
        while window:
            done = _collect(window.popleft(), report, done, len(chosen), progress)
    report.packs_read = len(chosen)
    report.packs_checked = [pack_name(p) for p in chosen]
    report.bytes_read = sum(stored[p] for p in chosen)


def _collect(
    fut: Future[tuple[list[tuple[str, str]], int]],
    report: VerifyReport,
    done: int,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> int:
    problems, checked = fut.result()
    for obj, message in problems:
        report.add(obj, message)
    report.chunks_checked += checked
    if progress:
        progress(done + 1, total)
    return done + 1


def _check_pack(
    repo: Repository,
    pack_id: bytes,
    chunks: list[tuple[bytes, IndexEntry]],
    opener: ChunkOpener | None,
) -> tuple[list[tuple[str, str]], int]:
    """Hash one pack and, with an opener, open each of its chunks; returns problems found."""
    name = pack_name(pack_id)
    try:
        data = repo.backend.load(name)
    except CrmMaintError as exc:
        return [(name, f"cannot read: {exc.message}")], 0
    problems: list[tuple[str, str]] = []
    if hashlib.sha256(data).digest() != pack_id:
        problems.append((name, "SHA-256 of the pack does not match its id: damaged or truncated"))
    if opener is None:
        return problems, 0
    checked = bad = 0
    view = memoryview(data)
    for cid, entry in sorted(chunks, key=lambda c: c[1].offset):
        if entry.key_id not in opener.data_keys:
            continue
        checked += 1
        try:
            opener.open(cid, entry, view[entry.offset : entry.offset + entry.length])
        except CrmMaintError as exc:
            bad += 1
            if bad <= MAX_CHUNK_PROBLEMS_PER_PACK:
                problems.append((name, f"chunk {cid.hex()}: {exc.message}"))
    if bad > MAX_CHUNK_PROBLEMS_PER_PACK:
        problems.append((name, f"{bad - MAX_CHUNK_PROBLEMS_PER_PACK} more damaged chunks"))
    return problems, checked
