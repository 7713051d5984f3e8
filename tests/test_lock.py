"""Repository locks: sharing, blocking, timeouts, stale takeover, heartbeats, unlock.

A contract suite: the protocol runs on every real backend (local directory, S3 on moto's
server, SFTP on a real sshd); tests that need a second process or an injected race use the
local backend.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_backends import MAKERS

from crmmaint.errors import LockError
from crmmaint.processes import pid_namespace
from crmmaint.repository.backends.base import Backend
from crmmaint.repository.backends.local import LocalBackend
from crmmaint.repository.lock import (
    LOCKS_PREFIX,
    MAX_HEARTBEAT_INTERVAL,
    REMOVED_SUFFIX,
    SCHEDULER_LOCKS_PREFIX,
    STALE_HEARTBEATS,
    RepositoryLock,
    break_locks,
    read_locks,
)

HOST = socket.gethostname()
PIDNS = pid_namespace()


@pytest.fixture(params=["local", "s3", "sftp"])
def backend(request, tmp_path) -> Iterator[Backend]:
    """Every real backend: the lock protocol must hold on each (a contract suite)."""
    tmp_path.chmod(0o755)  # the sshd user must reach it
    b, missing = MAKERS[request.param](request, tmp_path)
    missing.close()
    b.create()
    b.open()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def local_backend(tmp_path) -> LocalBackend:
    b = LocalBackend(tmp_path / "repo")
    b.create()
    b.open()
    return b


def lock(backend, exclusive: bool, **kwargs) -> RepositoryLock:
    kwargs = {"timeout": 0.0, "heartbeat": 0.5, **kwargs}
    return RepositoryLock(backend, exclusive=exclusive, **kwargs)


def foreign_lock(backend, prefix: str = LOCKS_PREFIX, **fields) -> str:
    """Store a lock object as another process would (in ``prefix``); returns its name."""
    now = time.time()
    record = {
        "id": uuid.uuid4().hex[:16],
        "exclusive": True,
        "state": "held",
        "host": "db1.example",
        "pid": 4242,
        "owner": "prune crm",
        "user": "backup",
        "created": now,
        "acquired": now,
        "heartbeat": now,
        "heartbeat_interval": 0.5,
        "pid_namespace": PIDNS,
        **fields,
    }
    name = prefix + record["id"]
    backend.store(name, json.dumps(record).encode())
    return name


def lock_names(backend) -> list[str]:
    """Names of the lock objects (not the removal marks ``locks/<id>.removed``)."""
    return [o.name for o in backend.list(LOCKS_PREFIX) if not o.name.endswith(REMOVED_SUFFIX)]


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(child.stdout)


def acquire_in_thread(lk: RepositoryLock) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            lk.acquire()
            outcome["held"] = True
        except Exception as exc:  # reported to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# --- sharing and blocking ---------------------------------------------------------------------


def test_lock_object_content_and_release(backend):
    with lock(backend, True, owner="prune crm") as held:
        assert held.held
        [name] = lock_names(backend)
        assert name == f"locks/{held.id}"
        record = json.loads(backend.load(name))
        assert record["id"] == held.id and record["exclusive"] is True
        assert record["state"] == "held" and record["owner"] == "prune crm"
        assert (record["host"], record["pid"]) == (HOST, os.getpid())
        assert record["user"] and record["created"] <= record["acquired"] <= record["heartbeat"]
        assert record["pid_namespace"] == PIDNS
    assert not held.held
    assert lock_names(backend) == []
    held.release()  # idempotent
    held.release()


def test_shared_locks_coexist(backend):
    with lock(backend, False) as first, lock(backend, False) as second:
        assert first.held and second.held
        assert sorted(lock_names(backend)) == sorted([first.name, second.name])


@pytest.mark.parametrize(("holder_exclusive", "waiter_exclusive"), [(False, True), (True, False)])
def test_conflicting_lock_waits_until_release(backend, holder_exclusive, waiter_exclusive):
    holder = lock(backend, holder_exclusive).acquire()
    waiter = lock(backend, waiter_exclusive, timeout=5.0)
    thread, outcome = acquire_in_thread(waiter)
    time.sleep(0.3)
    assert thread.is_alive() and not outcome
    # Between its attempts the waiter keeps no object (on a slow backend an attempt's pending
    # object is visible for a moment, so look for a moment between attempts).
    assert eventually(lambda: lock_names(backend) == [holder.name], within=3.0)
    assert thread.is_alive() and not outcome
    holder.release()
    thread.join(5)
    assert "error" not in outcome and waiter.held
    waiter.release()


def test_timeout_names_the_holder_and_what_to_do(backend):
    holder = lock(backend, True, owner="backup crm").acquire()
    try:
        waiter = lock(backend, False, timeout=0.2)
        with pytest.raises(LockError) as err:
            waiter.acquire()
        text = str(err.value)
        assert backend.url in text and "backup crm" in text
        assert f"pid {os.getpid()} on {HOST}" in text and "exclusive" in text
        assert "since 20" in text and "UTC" in text
        assert "crmmaint repo unlock" in err.value.hint and "wait" in err.value.hint
        assert err.value.exit_code == 7
        assert not waiter.held and lock_names(backend) == [holder.name]
    finally:
        holder.release()


def test_a_long_wait_is_announced_once(backend, caplog, monkeypatch):
    monkeypatch.setattr("crmmaint.repository.lock.ANNOUNCE_WAIT", 0.2)
    caplog.set_level(logging.WARNING, logger="crmmaint.repository.lock")
    holder = lock(backend, True, owner="prune").acquire()
    try:
        with pytest.raises(LockError):
            lock(backend, False, timeout=1.0).acquire()
    finally:
        holder.release()
    waits = [r.getMessage() for r in caplog.records if "waiting for the shared lock" in r.message]
    assert len(waits) == 1, waits
    assert backend.url in waits[0] and "prune" in waits[0] and "giving up in" in waits[0]


def test_acquiring_twice_is_a_programming_error(backend):
    with lock(backend, False) as held, pytest.raises(RuntimeError, match="already held"):
        held.acquire()


def test_reacquire_after_release_uses_a_new_object(backend):
    lk = lock(backend, True)
    with lk:
        first = lk.id
    with lk:
        assert lk.id != first and lock_names(backend) == [lk.name]


# --- racing exclusives --------------------------------------------------------------------------


def test_older_pending_racer_wins(backend):
    # Another process is half-way through acquiring, and started first: we back off.
    foreign_lock(backend, state="pending", created=time.time() - 1, acquired=None)
    with pytest.raises(LockError, match="still acquiring"):
        lock(backend, True, timeout=0.1).acquire()


def test_younger_pending_racer_loses(backend):
    # A racer that started after us will see us and back off, so we do not wait for it.
    foreign_lock(backend, state="pending", created=time.time() + 60, acquired=None)
    with lock(backend, True) as held:
        assert held.held


def test_exclusive_locks_exclude_each_other_under_contention(backend):
    inside, seen, done, errors = [0], set(), [], []
    guard = threading.Lock()

    def worker(exclusive: bool) -> None:
        try:
            for _ in range(4):
                # Generous timeout: this test is about exclusion, not about waiting times.
                with lock(backend, exclusive, timeout=60.0, heartbeat=5.0):
                    with guard:
                        inside[0] += 1 if exclusive else 100
                        seen.add(inside[0])
                    time.sleep(0.005)
                    with guard:
                        inside[0] -= 1 if exclusive else 100
            done.append(exclusive)
        except Exception as exc:  # reported to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i % 3 != 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors and len(done) == 6
    # Never two exclusives at once, never an exclusive beside a shared one.
    assert 1 in seen and 100 in seen
    assert all(n == 1 or n % 100 == 0 for n in seen), seen
    assert lock_names(backend) == []


# --- stale locks ----------------------------------------------------------------------------


def test_lock_with_old_heartbeat_is_taken_over(backend, caplog):
    stale = foreign_lock(backend, heartbeat=time.time() - 10, heartbeat_interval=0.5)
    caplog.set_level(logging.WARNING, logger="crmmaint.repository.lock")
    with lock(backend, True, heartbeat=0.5) as held:  # limit 5 * 0.5 s
        assert lock_names(backend) == [held.name]
    assert stale.removeprefix(LOCKS_PREFIX) in caplog.text
    assert "prune crm" in caplog.text and "pid 4242 on db1.example" in caplog.text
    assert "no heartbeat for 10s" in caplog.text


def test_fresh_lock_on_another_host_is_respected(backend):
    # pid 4242 may be dead here, but it is not our host: only the heartbeat can tell.
    foreign_lock(backend, pid=dead_pid(), heartbeat=time.time() - 1)
    with pytest.raises(LockError, match=r"db1\.example"):
        lock(backend, True, timeout=0.1).acquire()


def test_explicit_stale_after_wins_over_the_holders_interval(backend):
    foreign_lock(backend, heartbeat=time.time() - 3, heartbeat_interval=10)
    with pytest.raises(LockError):
        lock(backend, True).acquire()  # 5 * max(0.5, 10) s: still fresh
    with lock(backend, True, stale_after=2.0) as held:
        assert held.held


def test_dead_pid_on_this_host_is_taken_over_at_once(backend, caplog):
    foreign_lock(backend, host=HOST, pid=dead_pid())
    caplog.set_level(logging.WARNING, logger="crmmaint.repository.lock")
    with lock(backend, False, timeout=0.0) as held:
        assert held.held
    assert "no longer runs on" in caplog.text


def test_same_hostname_in_another_pid_namespace_is_judged_by_heartbeat_only(backend):
    # A container sharing the host's name cannot see our pids, nor we its.
    foreign_lock(backend, host=HOST, pid=dead_pid(), pid_namespace="pid:[1]")
    with pytest.raises(LockError, match="pid "):
        lock(backend, True).acquire()


def test_unreadable_lock_object_blocks_until_unlock(backend):
    backend.store("locks/garbage", b"{not json")
    with pytest.raises(LockError, match="unreadable lock object locks/garbage"):
        lock(backend, False).acquire()
    assert break_locks(backend) == [
        {"id": "garbage", "unreadable": True, "namespace": "repository", "object": "locks/garbage"}
    ]
    with lock(backend, False) as held:
        assert held.held


@pytest.mark.parametrize("content", [b"garbage{{{", b"{}", b"[1,2]", b'{"id": "x"}', b"\xff\xfe"])
def test_unreadable_scheduler_lock_is_removed_by_unlock(backend, content):
    """A planted object in the scheduler's namespace blocks every scheduler, whose message
    says to run `crmmaint repo unlock`; that removes it, saying it was the scheduler's."""
    name = SCHEDULER_LOCKS_PREFIX + "garbage{{{"
    backend.store(name, content)
    scheduler = lock(backend, True, prefix=SCHEDULER_LOCKS_PREFIX, owner="scheduler")
    with pytest.raises(LockError, match="scheduler lock in repository") as err:
        scheduler.acquire()
    assert f"unreadable lock object {name}" in str(err.value)
    assert "crmmaint repo unlock" in err.value.hint
    with lock(backend, True) as repository_lock:  # the repository's own locks are apart
        assert repository_lock.held
    foreign_lock(backend, owner="backup crm", exclusive=False)
    removed = break_locks(backend)
    assert sorted((r["namespace"], r["object"], bool(r.get("unreadable"))) for r in removed) == [
        ("repository", removed[0]["object"], False),
        ("scheduler", name, True),
    ]
    assert read_locks(backend, SCHEDULER_LOCKS_PREFIX) == [] and read_locks(backend) == []
    with scheduler:
        assert scheduler.held


def test_unlock_keeps_a_live_scheduler_lock_here_unless_forced(backend):
    scheduler = lock(backend, True, prefix=SCHEDULER_LOCKS_PREFIX).acquire()
    try:
        with pytest.raises(LockError, match="kept 1 lock"):
            break_locks(backend)
        [removed] = break_locks(backend, force=True)
        assert removed["namespace"] == "scheduler" and removed["id"] == scheduler.id
    finally:
        scheduler.release()


HOUR = 3600.0


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        # an interval beyond the cap is judged by the cap: 5 x 10 minutes without a heartbeat
        (
            {
                "heartbeat_interval": 1e308,
                "heartbeat": -(STALE_HEARTBEATS * MAX_HEARTBEAT_INTERVAL + 60),
            },
            "no heartbeat for",
        ),
        ({"heartbeat_interval": float("inf")}, "not a valid time"),
        ({"heartbeat_interval": float("nan")}, "not a valid time"),
        ({"heartbeat_interval": -1.0}, "not a valid time"),
        ({"heartbeat": float("nan")}, "not a valid time"),
        ({"heartbeat": float("inf")}, "not a valid time"),
        ({"heartbeat": -1e308}, "not a valid time"),
        ({"created": float("-inf")}, "not a valid time"),
        ({"heartbeat": HOUR}, "in the future"),  # an hour ahead of our clock
        ({"pid": 10**30, "host": HOST}, "no process id"),
        ({"pid": -1, "host": HOST}, "no process id"),
    ],
)
def test_implausible_lock_records_are_stale(backend, caplog, fields, why):
    """A planted record cannot make a lock that is never stale."""
    now = time.time()
    relative = {k: now + v for k, v in fields.items() if k in ("heartbeat",) and abs(v) < 1e6}
    for prefix in (LOCKS_PREFIX, SCHEDULER_LOCKS_PREFIX):
        foreign_lock(backend, prefix, **{**fields, **relative})
        caplog.set_level(logging.WARNING, logger="crmmaint.repository.lock")
        with lock(backend, True, prefix=prefix) as held:
            assert held.held
        assert why in caplog.text
        caplog.clear()


def test_a_capped_interval_still_waits_for_a_live_slow_holder(backend):
    """Under the cap, the holder's own interval counts: 5 x 500 s is not over after 2000 s."""
    foreign_lock(backend, heartbeat_interval=500.0, heartbeat=time.time() - 2000)
    with pytest.raises(LockError, match="pid 4242"):
        lock(backend, True).acquire()


def test_unlock_copes_with_a_record_naming_an_impossible_pid_here(backend):
    foreign_lock(backend, host=HOST, pid=10**30)
    [removed] = break_locks(backend)
    assert removed["pid"] == 10**30 and removed["namespace"] == "repository"


CHILD = """
import sys, time
sys.path.insert(0, sys.argv[2])
from crmmaint.repository.backends.local import LocalBackend
from crmmaint.repository.lock import RepositoryLock
lk = RepositoryLock(LocalBackend(sys.argv[1]), exclusive=True, owner="killed", heartbeat=0.2)
lk.acquire()
print(lk.id, flush=True)
time.sleep(60)
"""


def test_lock_of_a_killed_process_is_taken_over(local_backend, caplog):
    backend = local_backend
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(backend.root), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        child_id = child.stdout.readline().strip()
        assert child_id, "child did not acquire the lock"
        with pytest.raises(LockError, match="killed"):
            lock(backend, True).acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        child.stdout.close()
    assert lock_names(backend) == [LOCKS_PREFIX + child_id]  # SIGKILL left it behind
    caplog.set_level(logging.WARNING, logger="crmmaint.repository.lock")
    with lock(backend, True) as held:
        assert lock_names(backend) == [held.name]
    assert child_id in caplog.text and f"process {child.pid} no longer runs" in caplog.text


# --- heartbeat, lost locks, unlock -----------------------------------------------------------


def eventually(predicate, within: float = 5.0) -> bool:
    """Poll ``predicate`` until true or ``within`` seconds pass (loaded CI machines are slow)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_heartbeat_refreshes_the_lock_object(backend):
    with lock(backend, True, heartbeat=0.1) as held:
        first = json.loads(backend.load(held.name))
        assert eventually(
            lambda: json.loads(backend.load(held.name))["heartbeat"] > first["heartbeat"] + 0.15
        )
        second = json.loads(backend.load(held.name))
        assert {k: v for k, v in second.items() if k != "heartbeat"} == {
            k: v for k, v in first.items() if k != "heartbeat"
        }
    time.sleep(0.15)
    assert lock_names(backend) == []  # the stopped heartbeat did not write it back


def test_lost_lock_is_noticed(backend, caplog):
    with lock(backend, True, heartbeat=0.05) as held:
        held.check()
        [removed] = break_locks(backend, force=True)
        assert removed["id"] == held.id and removed["exclusive"] is True
        assert eventually(lambda: not held.held)
        with pytest.raises(LockError, match="was removed while held"):
            held.check()
        assert lock_names(backend) == []  # the heartbeat did not resurrect it
    assert "no longer holds the lock" in caplog.text
    with pytest.raises(LockError, match="not held"):
        held.check()


def test_break_locks_removes_everything_and_reports_it(backend):
    foreign_lock(backend, owner="verify crm", exclusive=False)
    shared = lock(backend, False).acquire()
    try:
        removed = break_locks(backend, force=True)
        assert sorted(r["owner"] or "" for r in removed) == ["", "verify crm"]
        assert {r["id"] for r in removed} >= {shared.id}
        assert lock_names(backend) == [] and read_locks(backend) == []
        assert break_locks(backend) == []
    finally:
        shared.release()  # its object is gone already: release stays quiet


def test_unlock_keeps_the_lock_of_a_process_running_here(backend):
    """`repo unlock` without --force: a lock whose process runs on this host stays (exit 7,
    naming it); the others go. (A stopped backup's lock was removed, and the backup failed.)"""
    foreign_lock(backend, owner="verify crm", exclusive=False)
    held = lock(backend, False).acquire()
    try:
        with pytest.raises(LockError, match=r"kept 1 lock.*removed 1 other") as err:
            break_locks(backend)
        assert "--force" in err.value.hint
        assert [info.id for info in read_locks(backend)] == [held.id]
        held.check()
    finally:
        held.release()


def test_bad_arguments():
    with pytest.raises(ValueError, match="heartbeat"):
        RepositoryLock(LocalBackend("/nonexistent"), exclusive=True, heartbeat=0)
    with pytest.raises(ValueError, match="stale_after"):
        RepositoryLock(LocalBackend("/nonexistent"), exclusive=True, heartbeat=5, stale_after=1)


class RacingBackend(LocalBackend):
    """Lets another holder's lock appear between our first listing and our ``held`` write."""

    racer: str | None = None

    def store(self, name: str, data: bytes) -> None:
        if self.racer is None and json.loads(data).get("state") == "held":
            self.racer = foreign_lock(LocalBackend(self.root), owner="racer")
        super().store(name, data)


def test_holder_that_appears_between_the_two_phases_wins(tmp_path):
    backend = RacingBackend(tmp_path / "repo")
    backend.create()
    backend.open()
    with pytest.raises(LockError, match="racer"):
        lock(backend, True).acquire()
    assert lock_names(backend) == [backend.racer]


# --- the scheduler's lock from the command line -----------------------------------------------


def test_repo_unlock_frees_schedulers_from_a_planted_lock_object(tmp_path):
    """An unreadable object in ``scheduler/lock/`` stops every scheduler, which says to run
    `crmmaint repo unlock`; that removes it, saying it was the scheduler's; the next tick runs."""
    from datetime import UTC, datetime, timedelta

    from clirun import run_cli, run_here
    from estates import sqlite_estate

    root = sqlite_estate(tmp_path, customers=5)
    (root / "book.yml").write_text(
        "name: book\nsteps:\n  - name: work\n    task: shell.command\n"
        "    with: {commands: ['true']}\n    hosts: all\n"
    )
    opened = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%H:%M")
    with (root / "inventory.yml").open("a") as inv_file:
        inv_file.write(
            f"schedule:\n  timezone: UTC\n  windows:\n    nightly: {{playbook: book.yml, "
            f"every: daily, at: '{opened}', length: 3h}}\n"
        )
    inv = str(root / "inventory.yml")
    for args in (
        ("keys", "generate", "--output", str(root / "keys" / "ops.key")),
        ("repo", "init"),
    ):
        assert run_here(*args, "-i", inv, cwd=root).returncode == 0
    planted = root / "repo" / "scheduler" / "lock" / "garbage{{{"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(b"garbage{{{")

    blocked = run_cli("scheduler", "--once", "--json", "-i", inv, cwd=root)
    assert "Traceback" not in blocked.stderr, blocked.stderr
    said = blocked.stdout + blocked.stderr
    assert "another scheduler holds the estate's lock" in said, said
    assert "unreadable lock object scheduler/lock/garbage{{{" in said, said
    assert "crmmaint repo unlock" in said, said

    unlocked = run_cli("repo", "unlock", "-i", inv, cwd=root)
    assert unlocked.returncode == 0, unlocked.stderr
    assert "removed unreadable scheduler lock scheduler/lock/garbage{{{" in unlocked.stdout
    assert "1 lock removed" in unlocked.stdout and not planted.exists()

    ran = run_cli("scheduler", "--once", "--json", "-i", inv, cwd=root)
    assert ran.returncode == 0, ran.stderr
    [outcome] = json.loads(ran.stdout[ran.stdout.index("[") :])
    assert outcome["action"] == "run" and outcome["exit_code"] == 0, outcome
