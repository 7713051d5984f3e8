"""The scheduler, blackouts and windows as users run them: the inventory's ``schedule:``
section (refused at its line when wrong), ``crmmaint run`` refused during a blackout unless
``--override`` (recorded), ``crmmaint windows``, ``crmmaint scheduler --once --at`` (time is
injected: no test sleeps for a window), catch-up after downtime, two schedulers against one
file repository never overlapping, a stale lock taken over, and SIGTERM during a step.

The playbooks here are ``shell.command`` steps on the local host that append a line to a
file when they start and when they end, so overlap is read from the file, not guessed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from clirun import BIN, run_cli

from crmmaint.errors import InventoryError
from crmmaint.inventory import load_inventory

BERLIN = ZoneInfo("Europe/Berlin")


def estate(root: Path, schedule: dict, *, seconds: float = 0.0, repository: bool = True) -> Path:
    """An inventory with the local host, ``schedule`` and a playbook ``book.yml`` whose one
    step writes ``start <pid>`` and ``end <pid>`` lines to ``log.txt`` around ``seconds``
    of sleep. Returns the inventory's path."""
    root.mkdir(parents=True, exist_ok=True)
    log = root / "log.txt"
    line = f"echo start $$ >> {log}; sleep {seconds}; echo end $$ >> {log}"
    (root / "book.yml").write_text(
        yaml.safe_dump(
            {
                "name": "book",
                "steps": [
                    {
                        "name": "work",
                        "task": "shell.command",
                        "hosts": "all",
                        "with": {"commands": [line], "timeout": "5m"},
                    },
                ],
            }
        )
    )
    doc: dict[str, Any] = {
        "settings": {"journal": "journal.sqlite"},
        "hosts": {"local": {"connection": "local"}},
        "schedule": schedule,
    }
    if repository:
        (root / "repo").mkdir(exist_ok=True)
        doc["repositories"] = {"main": {"url": str(root / "repo")}}
    path = root / "inventory.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def nightly(at: str = "02:00", **extra: Any) -> dict:
    return {
        "timezone": "Europe/Berlin",
        "windows": {"nightly": {"playbook": "book.yml", "every": "daily", "at": at,
                                "length": "3h", **extra}},
    }  # fmt: skip


def open_now(**extra: Any) -> dict:
    """A schedule whose window opened a minute ago (real runs happen at the real time)."""
    return nightly((datetime.now(BERLIN) - timedelta(minutes=1)).strftime("%H:%M"), **extra)


def scheduler(inv: Path, at: datetime | None = None, *flags: str) -> Any:
    """``crmmaint scheduler --once --json``; ``at``: evaluated then (with --check only)."""
    when = ["--at", at.isoformat(), "--check"] if at is not None else []
    done = subprocess.run(
        [str(BIN / "crmmaint"), "scheduler", "--once", *when, "--json", "-i", str(inv), *flags],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done


def outcomes(done: Any) -> list[dict]:
    return json.loads(done.stdout[done.stdout.index("[") :]) if "[" in done.stdout else []


def lines(inv: Path) -> list[str]:
    log = inv.parent / "log.txt"
    return log.read_text().split("\n")[:-1] if log.exists() else []


# --- the schedule: section ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "says"),
    [
        ({"timezone": "Mars/Olympus"}, "is not a time zone name"),
        ({"windows": {"daily": {"at": "25:00", "length": "3h"}}}, "is not a time of day"),
        ({"windows": {"daily": {"at": "02:00"}}}, "give the window's length"),
        ({"windows": {"daily": {"at": "02:00", "length": "8d"}}}, "from 1m to 7d"),
        ({"windows": {"daily": {"at": "02:00", "length": "1ms"}}}, "from 1m to 7d"),
        ({"windows": {"": {"every": "daily", "at": "02:00", "length": "1h"}}}, "a name of"),
        ({"windows": {"weekly": {"at": "02:00", "length": "1h"}}}, "say which day"),
        ({"windows": {"weekly": {"at": "02:00", "length": "1h", "on": "funday"}}}, "funday"),
        ({"windows": {"monthly": {"at": "02:00", "length": "1h", "day": 32}}}, "from 1 to 31"),
        ({"windows": {"quarterly": {"at": "02:00", "length": "1h", "month": 4}}}, "from 1 to 3"),
        ({"windows": {"daily": {"at": "02:00", "length": "1h", "on": "monday"}}}, "takes no"),
        ({"windows": {"extra": {"at": "02:00", "length": "1h"}}}, "say how often"),
        ({"catch_up": "sometimes"}, "sometimes"),
        ({"blackouts": [{"name": "x", "from": "2026-12-28", "to": "2026-12-01"}]}, "not after"),
        ({"blackouts": [{"name": "x", "on": "9999-12-31"}]}, "outside the years"),
        (
            {
                "blackouts": [
                    {"name": "x", "from": "2026-12-10T18:00+01:00", "to": "2026-12-11T06:00"}
                ]
            },
            "with an offset, or neither",
        ),
        ({"windows": {"daily": {"at": "23:00", "length": "25h"}}}, "overlap the next day"),
        ({"windows": {"daily": {"at": 230, "length": "3h"}}}, "a number, not a time"),
        ({"windows": {"daily": {"at": "02:00", "length": None}}}, "is not a length"),
        ({"blackouts": [{"on": "2026-12-28"}]}, "give it a name"),
        ({"blackouts": [{"name": "x", "on": "soon"}]}, "not a date"),
        ({"lock": {"repository": "nope"}}, "does not have"),
    ],
)
def test_a_bad_schedule_is_refused_at_its_line(tmp_path: Path, schedule: dict, says: str) -> None:
    path = estate(tmp_path, schedule)
    with pytest.raises(InventoryError, match=says) as err:
        load_inventory(path)
    assert "inventory.yml:" in str(err.value)


def test_an_unquoted_clock_time_reads_as_written(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yml"
    path.write_text(
        "hosts: {local: {connection: local}}\n"
        "schedule:\n  windows:\n    daily: {at: 12:30, length: 3h}\n"  # YAML 1.1: 750
    )
    window = load_inventory(path).schedule.windows[0]
    assert (window.at.hour, window.at.minute) == (12, 30)


# --- blackouts and manual runs ------------------------------------------------------------


def test_a_blackout_refuses_a_manual_run_unless_overridden(tmp_path: Path) -> None:
    today = datetime.now(BERLIN).date()
    inv = estate(tmp_path, {**nightly(), "blackouts": [{"name": "close", "on": str(today)}]})
    refused = run_cli("run", str(tmp_path / "book.yml"), "-i", str(inv))
    assert refused.returncode == 11, refused.stderr
    assert "blackout 'close' is in force until" in refused.stderr
    assert '--override "reason"' in refused.stderr and lines(inv) == []
    checked = run_cli("run", str(tmp_path / "book.yml"), "--check", "-i", str(inv))
    assert checked.returncode == 0 and lines(inv) == []  # check mode changes nothing
    empty = run_cli("run", str(tmp_path / "book.yml"), "--override", " ", "-i", str(inv))
    assert empty.returncode == 3 and "--override" in empty.stderr and lines(inv) == []
    done = run_cli("run", str(tmp_path / "book.yml"), "--override", "hotfix 4711", "-i", str(inv))
    assert done.returncode == 0, done.stderr
    assert "blackout 'close' overridden by" in done.stderr and len(lines(inv)) == 2
    audit = json.loads(run_cli("audit", "--json", "-i", str(inv)).stdout)
    override = [e for e in audit if e["command"] == "override"]
    assert len(override) == 1 and "hotfix 4711" in override[0]["detail"]
    assert override[0]["user"]
    assert [e["outcome"] for e in audit if e["command"] == "run"] == ["refused", "ok"]


def test_windows_lists_the_next_slots_and_the_blackouts_ahead(tmp_path: Path) -> None:
    soon = datetime.now(BERLIN).date() + timedelta(days=3)
    inv = estate(
        tmp_path,
        {
            **nightly(),
            "blackouts": [
                {"name": "freeze", "on": str(soon)},
                {"name": "long ago", "from": "2020-01-01", "to": "2020-01-02"},
            ],
        },
    )
    done = run_cli("windows", "--json", "-i", str(inv))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["timezone"] == "Europe/Berlin"
    [row] = doc["windows"]
    assert row["window"] == "nightly" and row["playbook"] == "book.yml"
    assert row["next"].endswith(("02:00 CET", "02:00 CEST"))
    assert [b["blackout"] for b in doc["blackouts"]] == ["freeze"]
    plain = run_cli("windows", "-i", str(inv)).stdout
    assert "nightly" in plain and "freeze" in plain


# --- the scheduler ------------------------------------------------------------------------


def night(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=BERLIN)


def test_once_runs_exactly_what_is_due(tmp_path: Path) -> None:
    inv = estate(tmp_path, open_now())
    due = scheduler(inv)
    assert due.returncode == 0, due.stderr
    [run] = outcomes(due)
    assert run["action"] == "run" and run["exit_code"] == 0 and run["run"] is not None
    assert len(lines(inv)) == 2
    again = scheduler(inv)  # the same window: already run
    assert outcomes(again) == [] and len(lines(inv)) == 2
    # what another moment would run, said and not run (--at goes with --check only)
    tomorrow = datetime.now(BERLIN) + timedelta(days=1)
    checked = scheduler(inv, tomorrow)
    assert [(o["action"], o["note"]) for o in outcomes(checked)] == [("run", "check mode: not run")]
    assert len(lines(inv)) == 2
    before = scheduler(inv, tomorrow - timedelta(hours=2))
    assert outcomes(before) == []
    refused = run_cli("scheduler", "--once", "--at", tomorrow.isoformat(), "-i", str(inv))
    assert refused.returncode == 3 and "--at goes with --once --check" in refused.stderr
    audit = json.loads(run_cli("audit", "--json", "-i", str(inv)).stdout)
    scheduled = [e for e in audit if e["command"] == "run"]
    assert len(scheduled) == 1 and scheduled[0]["flags"]["scheduled"] == "nightly"
    assert scheduled[0]["run_id"] == run["run"]


def in_process(inv: Path) -> Any:
    """The scheduler of ``inv`` in this process, its coordination in the repository and its
    runs real (``run_playbook`` into the journal), for ticks at injected times."""
    from crmmaint.journal import Journal
    from crmmaint.playbook import load_playbook
    from crmmaint.playbook.run import run_playbook
    from crmmaint.repository.configured import backend_for
    from crmmaint.schedule.scheduler import RepositoryCoordination, Scheduler

    inventory = load_inventory(inv)
    journal = Journal(inv.parent / "journal.sqlite")
    backend = backend_for(inventory.repository(None))
    backend.open()
    book = load_playbook(str(inv.parent / "book.yml"), inventory)

    def run_window(window: Any, ends: datetime | None) -> tuple[int | None, int]:
        summary = run_playbook(book, inventory, journal, ends_at=None)
        return summary.run_id, summary.exit_code

    return Scheduler(inventory, journal, RepositoryCoordination(backend, "test"), run_window)


@pytest.mark.parametrize("policy", ["run-once", "skip"])
def test_missed_windows_are_caught_up_by_policy(tmp_path: Path, policy: str) -> None:
    inv = estate(tmp_path, nightly(catch_up=policy))
    sched = in_process(inv)
    [first] = [o for o in sched.tick(night(2, 2, 5)) if o.run_id is not None]
    assert first.decision.action == "run" and len(lines(inv)) == 2
    # down from the 2nd 05:00 to the 5th 12:00: the 3rd, 4th and 5th windows missed
    later = [o for o in sched.tick(night(5, 12, 0)) if o.note != "starting"]
    [decision] = [o.decision for o in later]
    assert "missed 3 slots" in decision.reason
    if policy == "run-once":
        assert decision.action == "catch-up" and later[0].exit_code == 0
        assert len(lines(inv)) == 4
    else:
        assert decision.action == "skip" and len(lines(inv)) == 2
    # dealt with: the next tick neither runs it again nor counts the misses again
    assert [o for o in sched.tick(night(5, 12, 1)) if o.decision.action != "wait"] == []
    kept = sched.journal.state_get("scheduler:decisions")
    assert {d["action"] for d in kept} == {"run", "catch-up" if policy == "run-once" else "skip"}
    # a scheduler on another machine (its own journal) knows from the repository
    other = in_process(inv)
    other.journal = type(sched.journal)(tmp_path / "other.sqlite")
    assert [o for o in other.tick(night(5, 12, 2)) if o.decision.action != "wait"] == []


def test_a_blackout_blocks_the_scheduler(tmp_path: Path) -> None:
    inv = estate(tmp_path, {**nightly(), "blackouts": [{"name": "close", "on": "2026-12-02"}]})
    done = scheduler(inv, night(2, 2, 5))
    [decision] = outcomes(done)
    assert decision["action"] == "blocked" and "close" in decision["reason"]
    assert lines(inv) == []
    sched = in_process(inv)
    [blocked] = sched.tick(night(2, 2, 5))
    assert blocked.decision.action == "blocked" and lines(inv) == []
    kept = len(sched.journal.state_get("scheduler:decisions"))
    [again] = sched.tick(night(2, 2, 6))
    assert again.decision.action == "blocked"
    assert len(sched.journal.state_get("scheduler:decisions")) == kept  # said once


@pytest.mark.parametrize("repository", [True, False], ids=["repository", "beside-inventory"])
def test_two_schedulers_never_overlap(tmp_path: Path, repository: bool) -> None:
    """Two windows open at once; a second scheduler (another journal, as on another
    machine) starts while the first runs the first window: it finds the first window run
    (the last start is in the shared store) and the estate locked for the second. Without
    a repository the store is a directory beside the inventory: the same on one machine."""
    schedule = open_now()
    schedule["windows"]["second"] = {**schedule["windows"]["nightly"]}
    inv = estate(tmp_path, schedule, seconds=3, repository=repository)
    command = [str(BIN / "crmmaint"), "scheduler", "--once", "--json", "-i", str(inv)]

    def start(i: int) -> subprocess.Popen[str]:
        env = {**os.environ, "CRMMAINT_JOURNAL": str(tmp_path / f"journal{i}.sqlite")}
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )

    first = start(1)
    deadline = time.monotonic() + 60
    while not lines(inv):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = start(2)
    (out1, err1), (out2, err2) = first.communicate(timeout=120), second.communicate(timeout=120)
    assert "Traceback" not in err1 + err2, err1 + err2
    assert [line.split()[0] for line in lines(inv)] == ["start", "end", "start", "end"]
    ran = [o for o in json.loads(out1[out1.index("[") :]) if o["run"] is not None]
    assert sorted(o["window"] for o in ran) == ["nightly", "second"]
    refused = json.loads(out2[out2.index("[") :])
    assert [(o["window"], o["note"].split(":")[0]) for o in refused] == [("second", "not run")]
    assert "another scheduler holds the estate's lock" in refused[0]["note"]
    assert second.returncode == 0


def test_a_stale_lock_is_taken_over(tmp_path: Path) -> None:
    inv = estate(tmp_path, open_now())
    lock_dir = tmp_path / "repo" / "scheduler" / "lock"
    lock_dir.mkdir(parents=True)
    stale = {
        "id": "0000stale", "exclusive": True, "state": "held", "host": "gone.example",
        "pid": 1, "user": "root", "created": time.time() - 3600,
        "acquired": time.time() - 3600, "heartbeat": time.time() - 3600,
        "heartbeat_interval": 30.0, "owner": "scheduler root@gone",
    }  # fmt: skip
    (lock_dir / "0000stale").write_text(json.dumps(stale))
    done = scheduler(inv)
    assert done.returncode == 0, done.stderr
    assert len(lines(inv)) == 2
    assert "took over stale repository lock" in done.stderr


def test_without_a_repository_the_lock_is_a_local_file(tmp_path: Path) -> None:
    inv = estate(tmp_path, open_now(), repository=False)
    done = scheduler(inv)
    assert done.returncode == 0 and "this machine only" in done.stderr
    assert len(lines(inv)) == 2


def test_sigterm_after_one_run_and_during_the_next_ends_the_scheduler(tmp_path: Path) -> None:
    """A quick window runs first, then a slow one: SIGTERM during the second step ends it
    (the first run's end must not have left signals held), frees the lock, exits 130."""
    schedule = open_now()
    schedule["windows"]["slow"] = {**schedule["windows"]["nightly"], "playbook": "slow.yml"}
    inv = estate(tmp_path, schedule)
    log = tmp_path / "log.txt"
    (tmp_path / "slow.yml").write_text(
        yaml.safe_dump(
            {
                "name": "slow",
                "steps": [
                    {
                        "name": "long work",
                        "task": "shell.command",
                        "hosts": "all",
                        "with": {"commands": [f"echo slow $$ >> {log}; sleep 60"]},
                    },
                ],
            }
        )
    )
    proc = subprocess.Popen(
        [str(BIN / "crmmaint"), "scheduler", "--interval", "1", "-i", str(inv)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not any(line.startswith("slow") for line in lines(inv)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the slow run never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "scheduler: run slow:" in err and "interrupted" in err
    assert lines(inv)[-1].startswith("slow")  # the step was cut, not finished
    history = json.loads(run_cli("history", "--json", "-i", str(inv)).stdout)
    assert [r["status"] for r in history[:2]] == ["interrupted", "ok"]
    # the lock is free: a tick now is not refused by it (both windows already ran)
    after = scheduler(inv)
    assert all("another scheduler" not in o["note"] for o in outcomes(after))


@pytest.mark.parametrize("command", [["backup"], ["prune", "--keep-last", "3"], ["drill"]])
def test_a_blackout_refuses_the_one_step_commands_too(tmp_path: Path, command: list[str]) -> None:
    today = datetime.now(BERLIN).date()
    inv = estate(tmp_path, {**nightly(), "blackouts": [{"name": "freeze", "on": str(today)}]})
    refused = run_cli(*command, "-i", str(inv))
    assert refused.returncode == 11, refused.stderr
    assert "blackout 'freeze' is in force until" in refused.stderr
    assert f": {command[0]} does not run" in refused.stderr
    checked = run_cli(*command, "--check", "-i", str(inv))
    assert checked.returncode != 11, checked.stderr
    overridden = run_cli(*command, "--override", "restore test for the auditor", "-i", str(inv))
    assert overridden.returncode != 11 and "Traceback" not in overridden.stderr
    assert "blackout 'freeze' overridden by" in overridden.stderr
    audit = json.loads(run_cli("audit", "--json", "-i", str(inv)).stdout)
    [override] = [e for e in audit if e["command"] == "override"]
    assert override["flags"]["command"] == command[0]
    assert "restore test for the auditor" in override["detail"]


def test_windows_names_a_playbook_that_would_not_load(tmp_path: Path) -> None:
    schedule = nightly()
    schedule["windows"]["broken"] = {"playbook": "missing.yml", "every": "daily",
                                     "at": "03:00", "length": "1h"}  # fmt: skip
    inv = estate(tmp_path, schedule)
    done = run_cli("windows", "--json", "-i", str(inv))
    assert done.returncode == 3, done.stderr
    rows = {r["window"]: r for r in json.loads(done.stdout)["windows"]}
    assert rows["nightly"]["problem"] is None and rows["nightly"]["length_seconds"] == 10800
    assert "missing.yml" in rows["broken"]["problem"]
    assert isinstance(rows["nightly"]["open_now"], bool)


def test_a_refusal_names_the_end_of_back_to_back_blackouts(tmp_path: Path) -> None:
    today = datetime.now(BERLIN).date()
    blackouts = [
        {"name": "close", "on": str(today)},
        {"name": "audit", "from": str(today + timedelta(days=1)), "to": str(today + timedelta(days=3))},
    ]  # fmt: skip
    inv = estate(tmp_path, {**nightly(), "blackouts": blackouts})
    refused = run_cli("run", str(tmp_path / "book.yml"), "-i", str(inv))
    assert refused.returncode == 11
    assert f"until {today + timedelta(days=4)} 00:00" in refused.stderr


def test_a_damaged_last_start_is_ignored_not_fatal(tmp_path: Path) -> None:
    inv = estate(tmp_path, open_now())
    last = tmp_path / "repo" / "scheduler" / "last"
    last.mkdir(parents=True)
    name = hashlib.sha256(b"nightly").hexdigest()
    huge = '{"started": 1' + "0" * 400 + "}"
    planted_records = [
        '{"started": 1e20}',
        '{"started": "soon"}',
        "garbage",
        '{"started": 9e9}',
        huge,
    ]
    for planted in planted_records:
        (last / name).write_text(planted)
        done = scheduler(
            inv,
            datetime.now(BERLIN),
        )
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert [o["action"] for o in outcomes(done)] == ["run"], planted


def test_a_blackout_starting_mid_run_ends_it_there_and_edits_are_read_each_tick(
    tmp_path: Path,
) -> None:
    inv = estate(tmp_path, nightly())
    sched = in_process(inv)
    deadlines: list[datetime | None] = []
    run = sched.run_window

    def recording(window: Any, ends: datetime | None) -> tuple[int | None, int]:
        deadlines.append(ends)
        return run(window, ends)

    sched.run_window = recording
    sched.refresh = lambda: load_inventory(inv)
    doc = yaml.safe_load(inv.read_text())
    doc["schedule"]["blackouts"] = [
        {"name": "freeze", "from": "2026-12-02T03:00", "to": "2026-12-02T09:00"},
        {"name": "close", "on": "2026-12-03"},
    ]
    inv.write_text(yaml.safe_dump(doc))  # edited after the scheduler started
    sched.tick(night(2, 2, 5))
    assert deadlines == [night(2, 3, 0)]  # the window's end would be 05:00
    [blocked] = [o for o in sched.tick(night(3, 2, 5))]
    assert blocked.decision.action == "blocked" and "close" in blocked.decision.reason


def test_a_secret_in_a_blackout_name_is_not_repeated(tmp_path: Path) -> None:
    today = datetime.now(BERLIN).date()
    name = "freeze password=hunter2"
    inv = estate(tmp_path, {**open_now(), "blackouts": [{"name": name, "on": str(today)}]})
    refused = run_cli("run", str(tmp_path / "book.yml"), "-i", str(inv))
    assert refused.returncode == 11 and "hunter2" not in refused.stderr
    assert "freeze password=***" in refused.stderr
    done = scheduler(inv)
    assert "hunter2" not in done.stdout + done.stderr
    assert b"hunter2" not in (tmp_path / "journal.sqlite").read_bytes()


def test_two_inventories_in_one_folder_keep_their_own_last_starts(tmp_path: Path) -> None:
    inv = estate(tmp_path, open_now(), repository=False)
    other = tmp_path / "staging.yml"
    other.write_text(inv.read_text().replace("journal.sqlite", "staging.sqlite"))
    assert [o["action"] for o in outcomes(scheduler(other))] == ["run"]
    assert [o["action"] for o in outcomes(scheduler(inv))] == ["run"]
    assert len(lines(inv)) == 4


def test_a_nested_planted_lock_is_held_not_fatal(tmp_path: Path) -> None:
    inv = estate(tmp_path, open_now())
    lock_dir = tmp_path / "repo" / "scheduler" / "lock"
    lock_dir.mkdir(parents=True)
    (lock_dir / "x").write_text("[" * 3000)
    done = scheduler(inv)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    [held] = outcomes(done)
    assert held["note"].startswith("not run") and "unreadable lock object" in held["note"]
    assert lines(inv) == []


def test_a_scheduled_run_keeps_its_audit_end_while_others_read_the_journal(
    tmp_path: Path,
) -> None:
    """Another process opening the journal during a scheduled run (``history``) must not
    cost the run its audit end row (a descriptor closed on the database file dropped the
    scheduler's SQLite locks)."""
    inv = estate(tmp_path, open_now(), seconds=4, repository=False)
    proc = subprocess.Popen(
        [str(BIN / "crmmaint"), "scheduler", "--once", "-i", str(inv)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not lines(inv):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    for _ in range(3):
        assert run_cli("history", "-i", str(inv)).returncode == 0
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "could not record" not in err and "disk I/O error" not in err, err
    audit = json.loads(run_cli("audit", "--json", "-i", str(inv)).stdout)
    [scheduled] = [e for e in audit if e["command"] == "run"]
    assert scheduled["outcome"] == "ok" and scheduled["run_id"], scheduled


def test_inventory_check_summarises_the_schedule(tmp_path: Path) -> None:
    inv = estate(tmp_path, {**nightly(), "blackouts": [{"name": "x", "on": "2026-12-15"}]})
    done = run_cli("inventory", "check", "-i", str(inv))
    assert done.returncode == 0, done.stderr
    assert "schedule: windows nightly (Europe/Berlin), 1 blackout(s)" in done.stdout
    doc = json.loads(run_cli("inventory", "check", "--json", "-i", str(inv)).stdout)
    assert doc["schedule"]["windows"] == {"nightly": {"playbook": "book.yml", "every": "daily"}}
