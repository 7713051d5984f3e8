"""Damage and crashes: tampered or truncated packs, interrupted and SIGKILLed backups, prune
interrupted at every write. After each, verify must pass (or name the damaged object), the
next backup must succeed and never dedup against a deleted chunk."""

from __future__ import annotations

import io
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmmaint.crypto import X25519Identity, new_write_key
from crmmaint.errors import CryptoError, IntegrityError, RepositoryError
from crmmaint.repository import ChunkerParams, Repository
from crmmaint.repository.backends.local import LocalBackend
from crmmaint.repository.index import load_segment
from crmmaint.repository.retention import RetentionPolicy

SMALL_CHUNKS = ChunkerParams(16 << 10, 64 << 10, 256 << 10)
_ALPHABET = bytes.maketrans(bytes(range(256)), (b"0123456789\tabcdefghij,klmnop\n" * 9)[:256])
REPO_ROOT = Path(__file__).resolve().parents[1]


def dump_like(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size).translate(_ALPHABET)


def backup(repo, identity, streams, *, source="crm"):
    with repo.session(
        source=source, kind="postgresql", host="db1", recipients=[identity.recipient()]
    ) as session:
        for name, data in streams.items():
            session.add_stream(name, io.BytesIO(data))
        return session.commit()


def restore(repo, backup_id, name, identities) -> bytes:
    return b"".join(repo.read_stream(backup_id, name, identities))


def packs(root: Path) -> list[Path]:
    return sorted(p for p in (root / "data").rglob("*") if p.is_file())


def object_name(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


# --- tampering --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("tamper") / "repo"
    key, ident = new_write_key(), X25519Identity.generate()
    repo = Repository.init(LocalBackend(root), key, chunker=SMALL_CHUNKS, pack_size=1 << 20)
    streams = {"a": dump_like(1 << 20, seed=1), "b": dump_like(1 << 20, seed=2)}
    info = backup(repo, ident, streams)
    return root, key, ident, info.id, streams


def _read_until_error(repo, backup_id, name, data, identities) -> bool:
    """Read a stream; every byte yielded must be right. True if it raised IntegrityError."""
    got = bytearray()
    try:
        for piece in repo.read_stream(backup_id, name, identities):
            got += piece
            assert data.startswith(got), "wrong data was yielded"
    except IntegrityError as exc:
        assert "data/" in str(exc) and "chunk" in str(exc)
        return True
    assert bytes(got) == data
    return False


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(which=st.integers(0, 100), where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_flipped_byte_is_named_by_verify_and_refused_by_read(damaged_repo, which, where, bit):
    root, key, ident, backup_id, streams = damaged_repo
    pack = packs(root)[which % len(packs(root))]
    original = pack.read_bytes()
    pos = int(where * len(original))
    pack.write_bytes(original[:pos] + bytes([original[pos] ^ (1 << bit)]) + original[pos + 1 :])
    try:
        repo = Repository.open(LocalBackend(root), key)
        report = repo.verify(read_data=True)
        assert not report.ok and {p.object for p in report.problems} == {object_name(root, pack)}
        with_keys = repo.verify(read_data=True, identities=[ident])
        in_trailer = pos >= _blobs_end(repo, pack)  # the pack's own index: the data is intact
        assert in_trailer or any("chunk" in p.message for p in with_keys.problems)
        raised = [_read_until_error(repo, backup_id, n, d, [ident]) for n, d in streams.items()]
        assert any(raised) or in_trailer
    finally:
        pack.write_bytes(original)


def _blobs_end(repo, pack: Path) -> int:
    """Where a pack's last chunk ends: the trailer (its own index) follows."""
    return max(
        e.offset + e.length
        for e in repo.refresh_index().entries.values()
        if e.pack_id.hex() == pack.name
    )


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(which=st.integers(0, 100), keep=st.floats(0, 1, exclude_max=True))
def test_truncated_pack_is_named_and_refused(damaged_repo, which, keep):
    root, key, ident, backup_id, streams = damaged_repo
    pack = packs(root)[which % len(packs(root))]
    original = pack.read_bytes()
    kept = int(keep * len(original))
    pack.write_bytes(original[:kept])
    try:
        repo = Repository.open(LocalBackend(root), key)
        assert object_name(root, pack) in {p.object for p in repo.verify().problems}
        assert object_name(root, pack) in {p.object for p in repo.verify(read_data=True).problems}
        raised = [_read_until_error(repo, backup_id, n, d, [ident]) for n, d in streams.items()]
        assert any(raised) or kept >= _blobs_end(repo, pack)  # only the trailer was cut
    finally:
        pack.write_bytes(original)


def test_tampered_manifest_and_index_are_named(tmp_path):
    key, ident = new_write_key(), X25519Identity.generate()
    root = tmp_path / "repo"
    repo = Repository.init(LocalBackend(root), key, chunker=SMALL_CHUNKS, pack_size=1 << 20)
    info = backup(repo, ident, {"a": dump_like(300_000)})
    for obj in (f"backups/{info.id}", next((root / "index").iterdir()).relative_to(root)):
        path = root / obj
        blob = bytearray(path.read_bytes())
        blob[40] ^= 1
        path.write_bytes(bytes(blob))
        assert str(obj) in {p.object for p in repo.verify().problems}
        blob[40] ^= 1
        path.write_bytes(bytes(blob))
    assert repo.verify().ok


@pytest.fixture(scope="module")
def metadata_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("metadata") / "repo"
    key, ident = new_write_key(), X25519Identity.generate()
    repo = Repository.init(LocalBackend(root), key, chunker=SMALL_CHUNKS, pack_size=1 << 20)
    first = backup(repo, ident, {"a": dump_like(300_000, seed=1)})
    backup(repo, ident, {"a": dump_like(300_000, seed=2)})
    repo.mark_drilled(first.id, {"ok": True})
    objects = sorted(
        p.relative_to(root).as_posix()
        for folder in ("keys", "backups", "index", "drills")
        for p in (root / folder).iterdir()
    )
    return root, key, objects


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(which=st.integers(0, 1000), where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_damaged_metadata_object_is_named_by_a_verify_without_identity(
    metadata_repo, which, where, bit
):
    """Key objects, manifests, index segments and drill records are all authenticated by the
    write key alone: a flipped byte in any of them is named by `verify` (no --decrypt)."""
    root, key, objects = metadata_repo
    assert {o.split("/")[0] for o in objects} == {"keys", "backups", "index", "drills"}
    name = objects[which % len(objects)]
    path = root / name
    original = path.read_bytes()
    pos = int(where * len(original))
    path.write_bytes(original[:pos] + bytes([original[pos] ^ (1 << bit)]) + original[pos + 1 :])
    try:
        repo = Repository.open(LocalBackend(root), key)
        assert name in {p.object for p in repo.verify().problems}
        assert name in {p.object for p in repo.verify(read_data=True).problems}
    finally:
        path.write_bytes(original)
    assert Repository.open(LocalBackend(root), key).verify().ok


# --- interrupted backups ----------------------------------------------------------------------


class FailingReader:
    """Yields data, then fails like a dropped SSH connection."""

    def __init__(self, data: bytes, fail_after: int) -> None:
        self.data, self.pos, self.fail_after = data, 0, fail_after

    def read(self, n: int) -> bytes:
        if self.pos >= self.fail_after:
            raise OSError("connection reset by peer")
        out = self.data[self.pos : self.pos + min(n, 200_000)]
        self.pos += len(out)
        return out


def test_exception_mid_stream_leaves_no_backup(tmp_path):
    key, ident = new_write_key(), X25519Identity.generate()
    repo = Repository.init(
        LocalBackend(tmp_path / "r"), key, chunker=SMALL_CHUNKS, pack_size=1 << 20
    )
    data = dump_like(6 << 20)
    with (
        pytest.raises(OSError, match="connection reset"),
        repo.session(source="crm", kind="pg", host="h", recipients=[ident.recipient()]) as s,
    ):
        s.add_stream("dump", FailingReader(data, 4 << 20))
    assert repo.backups() == []
    report = repo.verify(read_data=True)
    assert report.ok and report.orphan_packs == 0  # the failed session removed its packs
    info = backup(repo, ident, {"dump": data})
    assert restore(repo, info.id, "dump", [ident]) == data


_SLOW_BACKUP = r"""
import random, sys, time
from crmmaint.crypto import X25519Recipient
from crmmaint.repository import Repository
from crmmaint.repository.backends.local import LocalBackend
TABLE = bytes.maketrans(bytes(range(256)), (b"0123456789\tabcdefghij,klmnop\n" * 9)[:256])
class Slow:
    rnd = random.Random(5)
    def read(self, n):
        time.sleep(0.01)
        return self.rnd.randbytes(min(n, 256 << 10)).translate(TABLE)
repo = Repository.open(LocalBackend(sys.argv[1]), bytes.fromhex(sys.argv[2]))
with repo.session(source="crm", kind="pg", host="h",
                  recipients=[X25519Recipient.from_string(sys.argv[3])]) as s:
    s.add_stream("dump", Slow())  # endless: killed from outside
"""


def test_sigkill_mid_backup_leaves_no_backup_and_next_backup_works(tmp_path):
    key, ident = new_write_key(), X25519Identity.generate()
    root = tmp_path / "r"
    repo = Repository.init(LocalBackend(root), key, chunker=SMALL_CHUNKS, pack_size=1 << 20)
    earlier = backup(repo, ident, {"dump": dump_like(2 << 20, seed=8)})
    before = len(packs(root))
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_BACKUP, str(root), key.hex(), ident.recipient().to_string()],
        cwd=REPO_ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while len(packs(root)) < before + 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    repo = Repository.open(LocalBackend(root), key)
    assert [b.id for b in repo.backups()] == [earlier.id]
    report = repo.verify(read_data=True, identities=[ident])
    assert report.ok and report.orphan_packs >= 2
    data = dump_like(3 << 20, seed=9)
    info = backup(repo, ident, {"dump": data})  # the dead process's lock is taken over
    assert restore(repo, info.id, "dump", [ident]) == data
    repo.prune(RetentionPolicy(keep_last=5), now=time.time(), dry_run=False)
    report = repo.verify(read_data=True, identities=[ident])
    assert report.ok and report.orphan_packs == 0


# --- interrupted prune ------------------------------------------------------------------------


class Crash(BaseException):
    """Stands in for the process dying: not an Exception, so no handler swallows it."""


class CrashingBackend(LocalBackend):
    """Counts mutating operations and raises ``Crash`` instead of performing the n-th."""

    def __init__(self, root, crash_at: int | None) -> None:
        super().__init__(root)
        self.crash_at, self.ops = crash_at, 0

    def _op(self) -> None:
        self.ops += 1
        if self.ops == self.crash_at:
            raise Crash()

    def store(self, name, data):
        self._op()
        super().store(name, data)

    def store_file(self, name, fileobj, size=None):
        self._op()
        super().store_file(name, fileobj, size)

    def delete(self, name):
        self._op()
        super().delete(name)

    def move(self, src, dst):
        self._op()
        super().move(src, dst)


@pytest.fixture(scope="module")
def prune_template(tmp_path_factory):
    """Five backups sharing data (so prune deletes, repacks and keeps packs), one drilled."""
    root = tmp_path_factory.mktemp("prune") / "template"
    key, ident = new_write_key(), X25519Identity.generate()
    repo = Repository.init(LocalBackend(root), key, chunker=SMALL_CHUNKS, pack_size=1 << 20)
    base = dump_like(1 << 20, seed=20)
    datas = [base[: (i * 200) << 10] + dump_like(600 << 10, seed=30 + i) for i in range(5)]
    ids = [backup(repo, ident, {"dump": d}).id for d in datas]
    repo.mark_drilled(ids[1], {"ok": True})
    return root, key, ident, ids, datas


POLICY = RetentionPolicy(keep_last=2)


def _check_after_crash(root: Path, key: bytes, ident, ids, datas, *, clear_locks: bool) -> None:
    if clear_locks:  # our in-process "crash" left a live pid's lock; a dead one is taken over
        for lock in (root / "locks").glob("*"):
            lock.unlink()
    repo = Repository.open(LocalBackend(root), key)
    assert repo.verify(read_data=True, identities=[ident]).ok
    listed = {b.id for b in repo.backups()}
    assert {ids[1], ids[3], ids[4]} <= listed
    for backup_id in listed:
        assert restore(repo, backup_id, "dump", [ident]) == datas[ids.index(backup_id)]
    # Back up data of removed backups again: dedup must only reuse chunks that still exist.
    again = backup(repo, ident, {"dump": datas[0] + datas[2]})
    assert restore(repo, again.id, "dump", [ident]) == datas[0] + datas[2]
    repo.prune(POLICY, now=time.time(), dry_run=False)
    report = repo.verify(read_data=True, identities=[ident])
    assert report.ok and report.orphan_packs == 0


def test_prune_interrupted_at_every_write_leaves_a_sound_repository(prune_template, tmp_path):
    template, key, ident, ids, datas = prune_template
    probe = CrashingBackend(tmp_path / "probe", None)
    shutil.copytree(template, probe.root)
    report = Repository.open(probe, key).prune(POLICY, now=time.time(), dry_run=False)
    assert sorted(report.remove) == sorted([ids[0], ids[2]]) and report.packs_repacked >= 1
    total = probe.ops
    assert total >= 10
    for crash_at in range(1, total + 1):
        root = tmp_path / f"crash{crash_at}"
        shutil.copytree(template, root)
        with pytest.raises(Crash):
            Repository.open(CrashingBackend(root, crash_at), key).prune(
                POLICY, now=time.time(), dry_run=False
            )
        _check_after_crash(root, key, ident, ids, datas, clear_locks=True)
        shutil.rmtree(root)


_KILLED_PRUNE = r"""
import os, signal, sys, time
from crmmaint.repository import Repository
from crmmaint.repository.backends.local import LocalBackend
from crmmaint.repository.retention import RetentionPolicy
class Dying(LocalBackend):
    ops = 0
    def _op(self):
        Dying.ops += 1
        if Dying.ops == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
    def store(self, name, data): self._op(); super().store(name, data)
    def store_file(self, name, f, size=None): self._op(); super().store_file(name, f, size)
    def delete(self, name): self._op(); super().delete(name)
repo = Repository.open(Dying(sys.argv[1]), bytes.fromhex(sys.argv[2]))
repo.prune(RetentionPolicy(keep_last=2), now=time.time(), dry_run=False)
"""


@pytest.mark.parametrize("crash_at", [4, 9, 14])
def test_prune_sigkilled_leaves_a_sound_repository(prune_template, tmp_path, crash_at):
    template, key, ident, ids, datas = prune_template
    root = tmp_path / "repo"
    shutil.copytree(template, root)
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_PRUNE, str(root), key.hex(), str(crash_at)],
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL
    _check_after_crash(root, key, ident, ids, datas, clear_locks=False)


# --- damage stays where it is; repair moves it aside --------------------------------------------


def flip(path: Path, at: int = 40) -> None:
    blob = bytearray(path.read_bytes())
    blob[at % len(blob)] ^= 1
    path.write_bytes(bytes(blob))


@pytest.fixture
def three_backups(tmp_path):
    """Three backups of one source and one of another, each with its own new chunks."""
    key, ident = new_write_key(), X25519Identity.generate()
    root = tmp_path / "repo"
    repo = Repository.init(LocalBackend(root), key, chunker=SMALL_CHUNKS, pack_size=1 << 20)
    data = {i: dump_like(400_000, seed=i) for i in range(4)}
    ids = [backup(repo, ident, {"dump": data[i]}).id for i in range(3)]
    ids.append(backup(repo, ident, {"dump": data[3]}, source="erp").id)
    return root, key, ident, ids, data


def test_a_damaged_manifest_costs_only_its_backup(three_backups):
    root, key, ident, ids, data = three_backups
    flip(root / "backups" / ids[1])
    repo = Repository.open(LocalBackend(root), key)
    assert [b.id for b in repo.backups()] == [ids[0], ids[2], ids[3]]
    assert set(repo.damaged_manifests) == {ids[1]}
    for i in (0, 2, 3):
        assert restore(repo, ids[i], "dump", [ident]) == data[i]
    with pytest.raises(RepositoryError, match=r"refusing to prune.*repair"):
        repo.prune(RetentionPolicy(keep_last=1), now=time.time(), dry_run=False)
    dry = repo.repair(apply=False)
    assert list(dry.move_aside) == [f"backups/{ids[1]}"] and dry.backups_moved == [ids[1]]
    assert (root / "backups" / ids[1]).exists()  # a dry run changes nothing
    done = repo.repair(apply=True)
    assert done.applied and (root / "damaged" / "backups" / ids[1]).exists()
    assert repo.repair(apply=False).clean
    assert repo.verify(read_data=True).ok
    report = repo.prune(RetentionPolicy(keep_last=1), now=time.time(), dry_run=False)
    assert sorted(report.remove) == [ids[0]]
    assert restore(repo, ids[2], "dump", [ident]) == data[2]
    assert (root / "damaged" / "backups" / ids[1]).exists()  # never pruned


def test_a_damaged_index_segment_costs_only_the_backups_that_need_it(three_backups):
    root, key, ident, ids, data = three_backups
    segments = sorted((root / "index").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert len(segments) == 4  # one per backup, in commit order
    flip(segments[1])
    repo = Repository.open(LocalBackend(root), key)
    assert len(repo.backups()) == 4  # listing needs no index
    assert restore(repo, ids[0], "dump", [ident]) == data[0]
    with pytest.raises(IntegrityError, match=f"damaged index segment: index/{segments[1].name}"):
        restore(repo, ids[1], "dump", [ident])
    plan = repo.repair(apply=False)
    assert list(plan.move_aside) == [f"index/{segments[1].name}"]  # the backup is recoverable
    assert plan.chunks_recovered > 0 and plan.packs_unrecoverable == []
    assert len(list((root / "index").iterdir())) == 4  # a dry run writes nothing
    repo.repair(apply=True)
    repo = Repository.open(LocalBackend(root), key)
    assert [b.id for b in repo.backups()] == ids
    assert restore(repo, ids[1], "dump", [ident]) == data[1]  # indexed again from its packs
    assert repo.verify(read_data=True, identities=[ident]).ok
    assert repo.repair(apply=False).clean


def test_a_lost_segment_whose_pack_is_damaged_too_moves_its_backup_aside(three_backups):
    root, key, ident, ids, data = three_backups
    segments = sorted((root / "index").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    repo = Repository.open(LocalBackend(root), key)
    (pack_id,) = {e.pack_id for e in repo.refresh_index().entries.values()} - {
        e.pack_id
        for seg in segments[:1] + segments[2:]
        for e in load_segment(repo.backend, repo.keys.metadata_key, f"index/{seg.name}")[0].values()
    }
    flip(segments[1])
    flip(root / "data" / pack_id.hex()[:2] / pack_id.hex(), at=100)
    repo = Repository.open(LocalBackend(root), key)
    plan = repo.repair(apply=True)
    assert plan.packs_unrecoverable == [f"data/{pack_id.hex()[:2]}/{pack_id.hex()}"]
    assert "is in no intact index segment" in plan.move_aside[f"backups/{ids[1]}"]
    repo = Repository.open(LocalBackend(root), key)
    assert [b.id for b in repo.backups()] == [ids[0], ids[2], ids[3]]
    assert repo.verify(identities=[ident]).ok
    again = backup(repo, ident, {"dump": data[1]})  # the lost chunks are stored anew
    assert restore(repo, again.id, "dump", [ident]) == data[1]


def test_a_damaged_key_object_is_moved_aside_with_the_backups_it_encrypts(three_backups):
    root, key, ident, ids, data = three_backups
    assert restore(Repository.open(LocalBackend(root), key), ids[0], "dump", [ident]) == data[0]
    repo = Repository.open(LocalBackend(root), key)
    manifest = repo.load_manifest_meta(ids[2])
    flip(root / "keys" / manifest["key_id"])
    assert f"keys/{manifest['key_id']}" in {p.object for p in repo.verify().problems}
    plan = repo.repair(apply=True)
    assert f"keys/{manifest['key_id']}" in plan.move_aside and plan.backups_moved == [ids[2]]
    repo = Repository.open(LocalBackend(root), key)
    assert [b.id for b in repo.backups()] == [ids[0], ids[1], ids[3]]
    assert repo.verify().ok
    repo.prune(RetentionPolicy(keep_last=5), now=time.time(), dry_run=False)
    assert repo.verify(read_data=True, identities=[ident]).ok
    assert restore(repo, ids[1], "dump", [ident]) == data[1]


def test_a_backup_interrupted_at_every_write_lists_only_whole_backups(tmp_path):
    """Crash at each store/delete a backup makes (packs, key, index segment, lock refreshes,
    manifest): a listed backup is always whole (it restores, verify passes), because its
    manifest is written last; an unlisted one leaves nothing a later backup trips over."""
    key, ident = new_write_key(), X25519Identity.generate()
    template = tmp_path / "template"
    repo = Repository.init(LocalBackend(template), key, chunker=SMALL_CHUNKS, pack_size=1 << 20)
    old = dump_like(1 << 20, seed=40)
    kept = backup(repo, ident, {"dump": old}).id
    new = old[: 512 << 10] + dump_like(3 << 20, seed=41)  # shares chunks, needs several packs
    probe = CrashingBackend(tmp_path / "probe", None)
    shutil.copytree(template, probe.root)
    backup(Repository.open(probe, key), ident, {"dump": new})
    total = probe.ops
    assert total >= 6
    for crash_at in range(1, total + 1):
        root = tmp_path / f"crash{crash_at}"
        shutil.copytree(template, root)
        with pytest.raises(Crash):
            backup(Repository.open(CrashingBackend(root, crash_at), key), ident, {"dump": new})
        for lock in (root / "locks").glob("*"):
            lock.unlink()
        after = Repository.open(LocalBackend(root), key)
        listed = [b.id for b in after.backups()]
        assert listed[0] == kept and len(listed) <= 2, crash_at
        for backup_id in listed:
            expected = old if backup_id == kept else new
            assert restore(after, backup_id, "dump", [ident]) == expected, crash_at
        assert after.verify(read_data=True, identities=[ident]).ok, crash_at
        again = backup(after, ident, {"dump": new})
        assert restore(after, again.id, "dump", [ident]) == new
        shutil.rmtree(root)


def test_prune_refuses_to_copy_a_damaged_pack(prune_template, tmp_path):
    """Repacking copies blobs verbatim: from a pack whose bytes no longer match its hash it
    would copy damage into a fresh pack with a valid hash. Prune refuses, and removes nothing."""
    template, key, _ident, ids, _datas = prune_template
    root = tmp_path / "damaged"
    shutil.copytree(template, root)
    for pack in packs(root):
        flip(pack, at=len(pack.read_bytes()) // 2)
    repo = Repository.open(LocalBackend(root), key)
    with pytest.raises(RepositoryError, match="does not match its hash; refusing to repack"):
        repo.prune(POLICY, now=time.time(), dry_run=False)
    assert sorted(b.id for b in repo.backups()) == sorted(ids)  # no manifest removed


def test_no_backup_is_committed_on_top_of_a_damaged_key(three_backups):
    """A new backup that would reuse chunks under a damaged key object refuses to commit
    (instead of being listed and unrestorable); after repair it stores them again."""
    root, key, ident, ids, data = three_backups
    repo = Repository.open(LocalBackend(root), key)
    first_key = repo.load_manifest_meta(ids[0])["key_id"]
    flip(root / "keys" / first_key)
    with pytest.raises(RepositoryError, match=f"keys/{first_key}, which is damaged or missing"):
        backup(repo, ident, {"dump": data[0]})  # all of it already stored, under the bad key
    assert len(repo.backups()) == 4  # nothing committed
    report = repo.repair(apply=True)
    assert report.chunks_dropped > 0 and f"backups/{ids[0]}" in report.move_aside
    again = backup(Repository.open(LocalBackend(root), key), ident, {"dump": data[0]})
    repo = Repository.open(LocalBackend(root), key)
    assert restore(repo, again.id, "dump", [ident]) == data[0]
    for i in (1, 2, 3):
        assert restore(repo, ids[i], "dump", [ident]) == data[i]
    assert repo.verify(read_data=True, identities=[ident]).ok
    assert repo.repair(apply=False).clean


# --- the plaintext config ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "refused"),
    [
        ({"pack_size": 1}, "pack_size = 1 is outside"),
        ({"pack_size": 1 << 40}, "pack_size"),
        ({"chunker": {"algorithm": "fastcdc", "min_size": 64, "avg_size": 256, "max_size": 1024}},
         "chunker"),
        ({"chunker": {"algorithm": "fastcdc", "min_size": 1 << 20, "avg_size": 1 << 30,
                      "max_size": 1 << 40}}, "chunker"),
        ({"compression": {"algorithm": "zstd", "level": 22}}, "compression.level = 22"),
        ({"compression": {"algorithm": "zstd", "level": "2"}}, "compression.level"),
        ({"aead": "rot13"}, "aead = 'rot13'"),
        ({"compression": {"algorithm": "zstd", "level": 3}}, "failed authentication"),
        ({"chunker": {"algorithm": "fastcdc", "min_size": 16384, "avg_size": 65536,
                      "max_size": 262144}}, "failed authentication"),
    ],
)  # fmt: skip
def test_a_config_edited_by_the_storage_provider_is_refused(tmp_path, edit, refused):
    """The config is plaintext: out-of-range values are refused before anything else, and any
    change crmmaint did not make fails its MAC, even one within range."""
    import json

    key = new_write_key()
    root = tmp_path / "repo"
    Repository.init(LocalBackend(root), key, pack_size=2 << 20)
    config = json.loads((root / "config").read_text())
    (root / "config").write_text(json.dumps({**config, **edit}))
    with pytest.raises((RepositoryError, IntegrityError), match=refused):
        Repository.open(LocalBackend(root), key)


def test_a_config_without_its_mac_is_refused_until_the_operator_upgrades_it(tmp_path):
    """A stripped MAC is no way around it: the operator alone authenticates an older config,
    once, after the values were checked."""
    import json

    key = new_write_key()
    root = tmp_path / "repo"
    Repository.init(LocalBackend(root), key)
    config = json.loads((root / "config").read_text())
    del config["mac"]
    (root / "config").write_text(json.dumps({**config, "pack_size": 2 << 20}))
    with pytest.raises(IntegrityError, match="carries no MAC"):
        Repository.open(LocalBackend(root), key)
    with pytest.raises(CryptoError):
        Repository.authenticate_config(LocalBackend(root), new_write_key())
    assert Repository.authenticate_config(LocalBackend(root), key) is True
    assert Repository.open(LocalBackend(root), key).pack_size == 2 << 20
    assert Repository.authenticate_config(LocalBackend(root), key) is False
    (root / "config").write_text(json.dumps({**config, "pack_size": 1}))
    with pytest.raises(RepositoryError, match="pack_size"):
        Repository.authenticate_config(LocalBackend(root), key)
