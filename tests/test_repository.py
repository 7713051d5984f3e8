"""Repository format core on a real LocalBackend: round trips, dedup, key model, listing,
prune, rotating verify, bounded memory. Damage and crash tests: test_repository_damage.py."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time

import pytest
from fastcdc.fastcdc_cy import fastcdc_cy
from hypothesis import given, settings
from hypothesis import strategies as st

from crmmaint.crypto import (
    PassphraseIdentity,
    X25519Identity,
    X25519Recipient,
    new_write_key,
)
from crmmaint.errors import CryptoError, IntegrityError, LockError, RepositoryError, WrongKeyError
from crmmaint.repository import ChunkerParams, Repository
from crmmaint.repository.backends.local import LocalBackend
from crmmaint.repository.chunker import iter_chunks
from crmmaint.repository.format import IndexEntry, decode_index, encode_index
from crmmaint.repository.lock import break_locks, read_locks
from crmmaint.repository.retention import RetentionPolicy

SMALL_CHUNKS = ChunkerParams(16 << 10, 64 << 10, 256 << 10)
_ALPHABET = bytes.maketrans(bytes(range(256)), (b"0123456789\tabcdefghij,klmnop\n" * 9)[:256])


def dump_like(size: int, seed: int = 0) -> bytes:
    """Compressible, non-repeating text quickly (random bytes mapped onto a small alphabet)."""
    return random.Random(seed).randbytes(size).translate(_ALPHABET)


class Pipe(io.RawIOBase):
    """A reader that returns short, irregular reads like a pipe from pg_dump."""

    def __init__(self, data: bytes, seed: int = 1) -> None:
        self._data, self._pos, self._rnd = memoryview(data), 0, random.Random(seed)

    def read(self, n: int = -1) -> bytes:
        take = min(n if n >= 0 else len(self._data), self._rnd.randint(1, 300_000))
        out = bytes(self._data[self._pos : self._pos + take])
        self._pos += len(out)
        return out


@pytest.fixture
def write_key() -> bytes:
    return new_write_key()


@pytest.fixture
def identity() -> X25519Identity:
    return X25519Identity.generate()


@pytest.fixture
def repo(tmp_path, write_key) -> Repository:
    return Repository.init(
        LocalBackend(tmp_path / "repo"), write_key, chunker=SMALL_CHUNKS, pack_size=1 << 20
    )


def backup(repo, identity, streams: dict[str, bytes], *, source="crm", facts=None, meta=None):
    with repo.session(
        source=source, kind="postgresql", host="db1", recipients=[identity.recipient()], meta=meta
    ) as session:
        infos = [session.add_stream(name, io.BytesIO(data)) for name, data in streams.items()]
        session.set_facts(facts or {"tables": {"customers": 3}})
        return session.commit(), infos


def restore(repo, backup_id, name, identities) -> bytes:
    return b"".join(repo.read_stream(backup_id, name, identities))


# --- pure format ------------------------------------------------------------------------------


def test_chunk_boundaries_do_not_depend_on_read_sizes():
    data = dump_like(3 << 20)
    expected = [
        data[c.offset : c.offset + c.length]
        for c in fastcdc_cy(
            data, SMALL_CHUNKS.min_size, SMALL_CHUNKS.avg_size, SMALL_CHUNKS.max_size
        )
    ]
    assert list(iter_chunks(Pipe(data), SMALL_CHUNKS)) == expected
    assert list(iter_chunks(io.BytesIO(data), SMALL_CHUNKS)) == expected
    assert list(iter_chunks(io.BytesIO(b""), SMALL_CHUNKS)) == []


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 3),
    st.integers(1, 400_000),
    st.sampled_from([(64, 256, 1024), (1 << 10, 4 << 10, 16 << 10), (4 << 10, 8 << 10, 64 << 10)]),
    st.integers(0, 2**32),
)
def test_chunks_equal_whole_buffer_chunking_for_any_data_and_reads(kind, size, sizes, seed):
    # block_size=1: blocks of 2 * max_size, so most chunks cross a block boundary at least once
    """Only the chunk at a block's end is carried over: the cuts are those of one whole pass."""
    rnd = random.Random(seed)
    if kind == 0:
        data = rnd.randbytes(size)
    elif kind == 1:
        data = bytes(size)  # no content cut ever: every chunk is max_size
    else:
        data = dump_like(size)[:size]
    params = ChunkerParams(*sizes)
    expected = [
        data[c.offset : c.offset + c.length]
        for c in fastcdc_cy(data, params.min_size, params.avg_size, params.max_size)
    ]
    assert [bytes(c) for c in iter_chunks(Pipe(data, seed), params, block_size=1)] == expected
    assert [bytes(c) for c in iter_chunks(io.BytesIO(data), params)] == expected


def test_index_segment_round_trip():
    entries = {
        os.urandom(32): IndexEntry(os.urandom(32), off, 100 + off, 400, os.urandom(16))
        for off in range(0, 5000, 500)
    }
    packs = {e.pack_id: 10_000 for e in entries.values()}
    assert decode_index(encode_index(entries, packs), "index/x") == (entries, packs)


def test_invalid_chunker_params_refused():
    with pytest.raises(RepositoryError):
        ChunkerParams(1 << 20, 1 << 10, 4 << 20)


# --- init / open ------------------------------------------------------------------------------


def test_config_is_plain_json_without_secrets(repo, tmp_path, write_key):
    config = json.loads((tmp_path / "repo" / "config").read_text())
    assert config["format"] == "crmmaint-repository" and config["version"] == 1
    assert config["chunker"] == {"algorithm": "fastcdc", **SMALL_CHUNKS.to_json()}
    assert config["compression"] == {"algorithm": "zstd", "level": 2}
    assert config["aead"] == "aes-256-gcm"
    assert write_key.hex() not in json.dumps(config)


def test_init_refuses_existing_repository(repo, tmp_path, write_key):
    with pytest.raises(RepositoryError, match="already exists"):
        Repository.init(LocalBackend(tmp_path / "repo"), write_key)


@pytest.mark.parametrize("level", [0, 20, -8, "3", True])
def test_init_rejects_compression_levels_outside_zstd_range(tmp_path, write_key, level):
    with pytest.raises(RepositoryError, match="compression level"):
        Repository.init(LocalBackend(tmp_path / "r"), write_key, compression_level=level)
    assert not (tmp_path / "r" / "config").exists()


def test_inventory_compression_sets_the_default_and_overrides_it_per_writer(tmp_path, identity):
    from crmmaint.inventory import RepositorySettings
    from crmmaint.repository.configured import init_repository, open_repository

    cfg = RepositorySettings(
        name="r", url=f"file://{tmp_path / 'r'}", write_key=str(tmp_path / "w.key")
    )
    cfg.compression = 19
    init_repository(cfg)
    stored = {}
    for level in (19, -7):
        rnd = random.Random(level)  # the same kind of text, nothing to dedup between them
        words = [rnd.randbytes(rnd.randint(3, 9)).hex().encode() for _ in range(500)]
        data = b" ".join(rnd.choices(words, k=400_000))
        cfg.compression = level
        with open_repository(cfg) as repo:
            assert repo.config["compression"]["level"] == 19  # the repository's default
            assert repo.compression_level == level
            info, _ = backup(repo, identity, {f"dump-{level}": data}, source=f"s{level}")
            stored[level] = info.stored_bytes
            assert restore(repo, info.id, f"dump-{level}", [identity]) == data
    assert stored[19] < stored[-7] < len(data)


def test_open_without_config_hints_repo_init(tmp_path, write_key):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepositoryError) as err:
        Repository.open(LocalBackend(tmp_path / "empty"), write_key)
    assert "crmmaint repo init" in str(err.value)


def test_wrong_write_key_is_a_clear_crypto_error(repo, tmp_path):
    with pytest.raises(CryptoError, match="write key does not match repository URL"):
        Repository.open(LocalBackend(tmp_path / "repo"), new_write_key())


# --- round trips ------------------------------------------------------------------------------


def test_round_trip_several_streams_and_facts(repo, tmp_path, write_key, identity):
    streams = {
        "schema.sql": b"CREATE TABLE t (id int);\n",
        "empty": b"",
        "data": dump_like(3 << 20),
    }
    facts = {"tables": {"t": {"rows": 3}}, "schema_fingerprint": "abc"}
    info, infos = backup(repo, identity, streams, facts=facts, meta={"pg_version": "16"})
    assert info.streams == list(streams) and info.size == sum(map(len, streams.values()))
    assert info.meta == {"pg_version": "16"} and not info.drilled
    for si, (name, data) in zip(infos, streams.items(), strict=True):
        assert (si.name, si.size, si.sha256) == (name, len(data), None)
    assert infos[1].chunks == 0 and infos[2].new_chunks == infos[2].chunks > 10

    reopened = Repository.open(LocalBackend(tmp_path / "repo"), write_key)
    manifest = reopened.manifest(info.id, [identity])
    assert manifest.facts == facts
    assert [(s.name, s.size, s.chunks) for s in manifest.streams] == [
        (s.name, s.size, s.chunks) for s in infos
    ]
    for name, data in streams.items():
        assert restore(reopened, info.id, name, [identity]) == data
    assert reopened.verify(read_data=True, identities=[identity]).ok


def test_round_trip_50mb_default_chunker_from_a_pipe(tmp_path, write_key, identity):
    repo = Repository.init(LocalBackend(tmp_path / "big"), write_key)
    data = dump_like(50 << 20, seed=7)
    seen: list[int] = []
    with repo.session(
        source="crm", kind="postgresql", host="db1", recipients=[identity.recipient()]
    ) as session:
        si = session.add_stream("dump", Pipe(data), progress=seen.append)
        info = session.commit()
    assert si.size == len(data) and seen[-1] == len(data) and seen == sorted(seen)
    assert 25 <= si.chunks <= 100  # ~1 MiB average
    assert si.stored_bytes < len(data)  # compressed
    sha = hashlib.sha256()
    for piece in repo.read_stream(info.id, "dump", [identity]):
        sha.update(piece)
    assert sha.hexdigest() == hashlib.sha256(data).hexdigest()


def test_passphrase_identity_round_trip(repo):
    ident = PassphraseIdentity(b"correct horse")
    info, _ = backup(repo, ident, {"a": b"hello" * 1000})
    assert restore(repo, info.id, "a", [ident]) == b"hello" * 1000
    with pytest.raises(WrongKeyError):
        repo.manifest(info.id, [PassphraseIdentity(b"wrong horse")])


def test_session_without_commit_records_nothing(repo, identity):
    with repo.session(source="crm", kind="pg", host="h", recipients=[identity.recipient()]) as s:
        s.add_stream("a", io.BytesIO(dump_like(2 << 20)))
    assert repo.backups() == []
    report = repo.verify()
    assert report.ok and report.orphan_packs == 0  # a clean abort removes its packs


def test_a_session_whose_lock_was_taken_away_does_not_commit(repo, identity):
    """`repo unlock` (or a stale takeover) removes the lock between two heartbeats: the commit
    asks the backend, refuses, and the backup never exists."""
    with repo.session(source="crm", kind="pg", host="h", recipients=[identity.recipient()]) as s:
        s.add_stream("a", io.BytesIO(dump_like(2 << 20)))
        assert len(break_locks(repo.backend, force=True)) == 1
        with pytest.raises(LockError, match="was removed while held"):
            s.commit()
    assert repo.backups() == []


def test_commit_refreshes_its_lock_right_before_the_manifest(repo, identity):
    with repo.session(source="crm", kind="pg", host="h", recipients=[identity.recipient()]) as s:
        s.add_stream("a", io.BytesIO(dump_like(1 << 20)))
        (held,) = read_locks(repo.backend)
        time.sleep(0.05)
        s.commit()
        (after,) = read_locks(repo.backend)
    assert after.heartbeat > held.heartbeat


# --- dedup ------------------------------------------------------------------------------------


def test_second_identical_backup_stores_nothing_new(repo, identity):
    data = dump_like(4 << 20)
    first, _ = backup(repo, identity, {"dump": data})
    second, (si,) = backup(repo, identity, {"dump": data})
    assert first.stored_bytes > 0 and second.stored_bytes == 0 and si.new_chunks == 0
    assert second.dedup_ratio == 1.0 and first.dedup_ratio == 0.0
    assert set(first.key_ids) <= set(second.key_ids)  # reused chunks stay under the old key
    assert restore(repo, second.id, "dump", [identity]) == data


def test_dedup_across_sources(repo, identity):
    data = dump_like(2 << 20)
    backup(repo, identity, {"dump": data}, source="crm-prod")
    other, _ = backup(repo, identity, {"copy": data}, source="crm-staging")
    assert other.stored_bytes == 0
    assert [b.source for b in repo.backups("crm-staging")] == ["crm-staging"]


def test_clustered_one_percent_change_stores_little(repo, identity):
    data = dump_like(8 << 20)
    first, _ = backup(repo, identity, {"dump": data})
    at = len(data) // 2
    changed = data[:at] + dump_like(len(data) // 100, seed=99) + data[at + len(data) // 100 :]
    second, _ = backup(repo, identity, {"dump": changed})
    assert second.stored_bytes < 0.06 * first.stored_bytes
    assert restore(repo, second.id, "dump", [identity]) == changed


# --- key model --------------------------------------------------------------------------------


def test_wrong_identity_fails_before_any_data(repo, identity):
    info, _ = backup(repo, identity, {"dump": dump_like(1 << 20)})
    stranger = X25519Identity.generate()
    with pytest.raises(WrongKeyError):
        repo.manifest(info.id, [stranger])
    with pytest.raises(WrongKeyError):
        repo.read_stream(info.id, "dump", [stranger])  # raised by the call, not on iteration
    with pytest.raises(WrongKeyError):
        repo.read_stream(info.id, "dump", [])


def test_write_key_holder_backs_up_lists_prunes_but_cannot_restore(tmp_path, write_key):
    """A backup host: write key + recipient public key string, no identity."""
    owner = X25519Identity.generate()
    public = X25519Recipient.from_string(owner.recipient().to_string())
    Repository.init(LocalBackend(tmp_path / "r"), write_key, chunker=SMALL_CHUNKS)
    host = Repository.open(LocalBackend(tmp_path / "r"), write_key)
    ids = []
    for i in range(3):
        with host.session(source="crm", kind="pg", host="h", recipients=[public]) as s:
            s.add_stream("dump", io.BytesIO(dump_like(1 << 20, seed=i)))
            s.set_facts({"rows": i})
            ids.append(s.commit().id)
    assert [b.id for b in host.backups()] == ids
    report = host.prune(RetentionPolicy(keep_last=1), now=time.time(), dry_run=False)
    assert sorted(report.remove) == ids[:2] and [b.id for b in host.backups()] == ids[2:]
    assert host.verify(read_data=True).ok
    for attempt in ([], [X25519Identity.generate()], [PassphraseIdentity(b"guess")]):
        with pytest.raises(WrongKeyError):
            host.read_stream(ids[2], "dump", attempt)
        with pytest.raises(WrongKeyError):
            host.manifest(ids[2], attempt)
    assert restore(host, ids[2], "dump", [owner]) == dump_like(1 << 20, seed=2)


def test_stored_objects_reveal_no_plaintext(repo, tmp_path, identity):
    secret = b"customer-email-alice@example.com;" * 2000
    backup(repo, identity, {"dump": secret}, facts={"marker": "SECRET-FACT"})
    for path in (tmp_path / "repo").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert b"alice@example.com" not in blob and b"SECRET-FACT" not in blob


# --- drills, prune, verify --------------------------------------------------------------------


def test_mark_drilled_and_prune_keeps_newest_and_drilled(repo, identity):
    ids = [backup(repo, identity, {"dump": dump_like(1 << 20, seed=i)})[0].id for i in range(4)]
    other = backup(repo, identity, {"dump": dump_like(1 << 20, seed=9)}, source="erp")[0].id
    repo.mark_drilled(ids[1], {"ok": True, "tables": 3})
    assert [b.drilled for b in repo.backups("crm")] == [False, True, False, False]
    dry = repo.prune(RetentionPolicy(keep_last=1), now=time.time(), dry_run=True)
    assert sorted(dry.remove) == sorted([ids[0], ids[2]])
    assert len(repo.backups()) == 5  # dry run changed nothing
    report = repo.prune(RetentionPolicy(keep_last=1), now=time.time(), dry_run=False)
    assert sorted(report.remove) == sorted([ids[0], ids[2]])
    assert [b.id for b in repo.backups()] == [ids[1], ids[3], other]
    assert report.packs_deleted > 0 and report.keys_deleted == 2
    assert repo.verify(read_data=True, identities=[identity]).ok
    for backup_id, seed in ((ids[1], 1), (ids[3], 3), (other, 9)):
        assert restore(repo, backup_id, "dump", [identity]) == dump_like(1 << 20, seed=seed)
    assert repo.drill_result(ids[1])["result"] == {"ok": True, "tables": 3}


def test_prune_removes_what_killed_writers_left_in_tmp(repo, identity, tmp_path):
    backup(repo, identity, {"dump": dump_like(1 << 20)})
    temp = tmp_path / "repo" / ".tmp"
    old, young = temp / "killed-prune.tmp", temp / "live-writer.tmp"
    for leftover in (old, young):
        leftover.write_bytes(b"part of a pack")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    dry = repo.prune(RetentionPolicy(keep_last=1), now=time.time(), dry_run=True)
    assert dry.leftovers_removed == 0 and old.exists()  # a dry run removes nothing
    report = repo.prune(RetentionPolicy(keep_last=1), now=time.time(), dry_run=False)
    assert report.leftovers_removed == 1
    assert not old.exists() and young.exists()  # younger than the lock margin: kept
    assert repo.verify(read_data=True).ok


def test_a_restore_holding_its_shared_lock_makes_prune_wait(repo, identity):
    """A reader holds a shared lock; prune (exclusive) waits for it instead of deleting the
    packs being read, then removes the backup once the reader is done."""
    first = backup(repo, identity, {"dump": dump_like(3 << 20, seed=1)})[0].id
    backup(repo, identity, {"dump": dump_like(3 << 20, seed=2)})
    read: list[bytes] = []
    pruned: dict = {}
    with repo.lock(exclusive=False, purpose=f"restore {first}"):
        chunks = repo.read_stream(first, "dump", [identity])
        read.append(next(chunks))

        def run_prune() -> None:
            pruned["report"] = repo.prune(
                RetentionPolicy(keep_last=1), now=time.time(), dry_run=False
            )

        pruner = threading.Thread(target=run_prune)
        pruner.start()
        time.sleep(1.0)
        assert "report" not in pruned and pruner.is_alive()  # waiting for our lock
        read.extend(chunks)  # the rest, while prune waits
    pruner.join(30)
    assert b"".join(read) == dump_like(3 << 20, seed=1)
    assert pruned["report"].remove == [first]
    assert [b.id for b in repo.backups()] != [first] and len(repo.backups()) == 1


def test_prune_repacks_sparse_packs_and_keeps_shared_chunks(repo, identity):
    base = dump_like(3 << 19)  # one pack
    first, _ = backup(repo, identity, {"dump": base})
    changed = base[: 400 << 10] + dump_like(3 << 19, seed=5)  # keeps ~25% of that pack
    second, _ = backup(repo, identity, {"dump": changed})
    report = repo.prune(RetentionPolicy(keep_last=1), now=time.time(), dry_run=False)
    assert report.remove == [first.id]
    assert report.packs_repacked >= 1 and report.packs_written >= 1
    assert repo.verify(read_data=True, identities=[identity]).ok
    assert restore(repo, second.id, "dump", [identity]) == changed
    again, _ = backup(repo, identity, {"dump": changed})
    assert again.stored_bytes == 0  # dedup still sees every live chunk after repacking


def test_verify_metadata_names_missing_objects(repo, tmp_path, identity):
    info, _ = backup(repo, identity, {"dump": dump_like(2 << 20)})
    root = tmp_path / "repo"
    pack = sorted((root / "data").rglob("*"))[-1]
    pack.unlink()
    (root / "keys" / info.key_ids[0]).unlink()
    problems = {p.object for p in repo.verify().problems}
    assert f"data/{pack.parent.name}/{pack.name}" in problems
    assert f"keys/{info.key_ids[0]}" in problems


def test_subset_verify_rotates_over_every_pack(repo, identity):
    backup(repo, identity, {"dump": dump_like(10 << 20)})
    packs = {
        f"data/{p.parent.name}/{p.name}"
        for p in (repo.backend.root / "data").rglob("*")
        if p.is_file()
    }
    assert len(packs) >= 5
    seen: list[str] = []
    runs = 0
    while set(seen) != packs:
        report = repo.verify(read_data=True, subset_percent=25)
        assert report.ok and report.subset == (len(report.packs_checked), len(packs))
        seen += report.packs_checked
        runs += 1
        assert runs <= 4
    first_pass = seen[: len(packs)]
    assert len(set(first_pass)) == len(packs)  # every pack read once before any is read twice


# --- memory -----------------------------------------------------------------------------------

_RSS_SCRIPT = r"""
import random, sys
from crmmaint.crypto import X25519Identity, new_write_key
from crmmaint.repository import Repository
from crmmaint.repository.backends.local import LocalBackend
TABLE = bytes.maketrans(bytes(range(256)), (b"0123456789\tabcdefghij,klmnop\n" * 9)[:256])
class Gen:
    def __init__(self, total):
        self.left, self.rnd = total, random.Random(3)
    def read(self, n):
        n = min(n, self.left); self.left -= n
        return self.rnd.randbytes(n).translate(TABLE)
repo = Repository.init(LocalBackend(sys.argv[1]), new_write_key())
with repo.session(source="s", kind="k", host="h",
                  recipients=[X25519Identity.generate().recipient()]) as s:
    s.add_stream("dump", Gen(int(sys.argv[2]) << 20)); s.commit()
# VmHWM, not getrusage: ru_maxrss survives fork+exec, so it would report the parent's peak.
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(int(hwm) // 1024)
"""


def test_peak_rss_is_bounded_whatever_the_stream_size(tmp_path):
    """Memory must not grow with the stream: 200 MiB through a default-sized repository."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / "r"), "200"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert int(out.stdout.strip()) < 150, out.stdout


def test_stream_ranges_read_any_byte_range(repo, identity):
    """Ranges (parallel restores) equal slices of the stream, across chunk boundaries."""
    data = dump_like(1 << 20, seed=5)
    info, _ = backup(repo, identity, {"dump": data})
    ranges = repo.stream_ranges(info.id, "dump", [identity])
    assert ranges.size == len(data) and len(ranges.ids) > 4
    rnd = random.Random(7)
    edges = ranges.offsets[1:4]
    spans = [(0, len(data)), (0, 0), (len(data), len(data)), (edges[0], edges[1])]
    spans += [(edges[0] - 1, edges[0] + 1), (edges[1] + 3, edges[2] - 3)]
    for _ in range(20):
        a, b = sorted(rnd.randrange(len(data) + 1) for _ in range(2))
        spans.append((a, b))
    for a, b in spans:
        assert b"".join(ranges.read(a, b, prefetch=1)) == data[a:b], (a, b)
    with pytest.raises(RepositoryError, match="outside the stream"):
        list(ranges.read(5, len(data) + 1))


def test_adjacent_small_ranges_decode_each_shared_chunk_once(repo, identity, tmp_path):
    """Hundreds of small tables: consecutive ranges share end chunks, which are decoded once;
    a chunk damaged on disk is still refused, never served from the cache."""
    data = dump_like(1 << 20, seed=6)
    info, _ = backup(repo, identity, {"dump": data})
    ranges = repo.stream_ranges(info.id, "dump", [identity])
    cuts = sorted(random.Random(3).sample(range(1, len(data)), 300))
    spans = list(itertools.pairwise([0, *cuts, len(data)]))
    loads = []
    load = repo.backend.load
    repo.backend.load = lambda *a, **k: loads.append(a) or load(*a, **k)
    try:
        assert b"".join(b"".join(ranges.read(a, b, prefetch=2)) for a, b in spans) == data
    finally:
        repo.backend.load = load
    # 301 ranges over 19 chunks: each chunk is fetched once (without the cache: ~320 fetches)
    assert len(loads) <= len(ranges.ids) + 2 and ranges.edges.hits >= len(spans) - len(ranges.ids)

    for pack in (tmp_path / "repo" / "data").rglob("*"):
        if pack.is_file():
            raw = bytearray(pack.read_bytes())
            raw[len(raw) // 3] ^= 0x40
            pack.write_bytes(bytes(raw))
    fresh = repo.stream_ranges(info.id, "dump", [identity])
    with pytest.raises(IntegrityError):
        for a, b in spans:
            b"".join(fresh.read(a, b))


def test_a_restore_unwraps_each_data_key_once(repo, identity, monkeypatch):
    """manifest() then stream_ranges() (what restore does) unwrap once; other identities
    are checked afresh, so a cached key never answers for an identity that cannot unwrap it."""
    import crmmaint.repository.reader as reader

    info, _ = backup(repo, identity, {"dump": dump_like(1 << 16)})
    calls = []
    unwrap = reader.unwrap_data_key
    monkeypatch.setattr(
        reader, "unwrap_data_key", lambda *a, **k: calls.append(1) or unwrap(*a, **k)
    )
    identities = [identity]
    repo.manifest(info.id, identities)
    assert b"".join(repo.stream_ranges(info.id, "dump", identities).read()) == dump_like(1 << 16)
    assert len(calls) == 1
    with pytest.raises(WrongKeyError):
        repo.manifest(info.id, [X25519Identity.generate()])
    assert len(calls) == 2


def test_an_independent_reader_opens_a_stored_chunk_as_format_md_says(repo, identity, tmp_path):
    """Decrypt one stored chunk with only `cryptography`, zstd and docs/format.md: the blob is
    AEAD-sealed under its backup's data key with the chunk id as associated data, so a blob
    moved to another id's place fails; the payload decompresses to the bytes whose HMAC is
    the id."""
    import hmac

    import zstandard
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from crmmaint.repository.reader import unwrap_keys

    data = dump_like(1 << 20, seed=5)
    info, _ = backup(repo, identity, {"dump": data})
    index = repo.refresh_index()
    keys = unwrap_keys(repo, info.key_ids, [identity], info.id)
    manifest = repo.load_manifest_meta(info.id)
    ids = bytes.fromhex(manifest["streams"][0]["ids"])
    first, second = ids[:32], ids[32:64]
    entry = index.get(first)
    pack = (tmp_path / "repo" / "data" / entry.pack_id.hex()[:2] / entry.pack_id.hex()).read_bytes()
    blob = pack[entry.offset : entry.offset + entry.length]
    assert blob[0] == 1  # aes-256-gcm
    nonce, sealed = blob[1:13], blob[13:]
    cipher = AESGCM(keys[entry.key_id])
    payload = cipher.decrypt(nonce, sealed, b"\x01" + first)
    chunk = zstandard.ZstdDecompressor().decompress(payload[1:]) if payload[0] == 1 else payload[1:]
    assert data.startswith(chunk) and len(chunk) == entry.raw_length
    assert hmac.digest(repo.keys.chunk_id_key, chunk, "sha256") == first
    for wrong in (b"\x01", b"\x01" + second, first):  # no id, another id, no algorithm byte
        with pytest.raises(InvalidTag):
            cipher.decrypt(nonce, sealed, wrong)
