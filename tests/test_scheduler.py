"""The scheduler, blackouts and windows as users run them: the inventory's ``schedule:``
section (refused at its line when wrong), ``crmmaint run`` refused during a blackout unless
``--override`` (recorded), ``crmmaint windows``, ``crmmaint scheduler --once --at`` (time is
injected: no test sleeps for a window), catch-up after downtime, two schedulers against one
file repository never overlapping, a stale lock taken over, and SIGTERM during a step.

The playbooks here are ``shell.command`` steps on the local host that append a line to a
file when they start and when they end, so overlap is read from the file, not guessed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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


def nightly(**extra: Any) -> dict:
    return {
        "timezone": "Europe/Berlin",
        "windows": {"nightly": {"playbook": "book.yml", "every": "daily", "at": "02:00",
                                "length": "3h", **extra}},
    }  # fmt: skip


def scheduler(inv: Path, at: datetime, *flags: str, env: dict | None = None) -> Any:
    done = subprocess.run(
        [str(BIN / "crmmaint"), "scheduler", "--once", "--at", at.isoformat(), "--json",
         "-i", str(inv), *flags],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
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
        ({"windows": {"daily": {"at": "02:00", "length": "8d"}}}, "at most 7d"),
        ({"windows": {"weekly": {"at": "02:00", "length": "1h"}}}, "say which day"),
        ({"windows": {"weekly": {"at": "02:00", "length": "1h", "on": "funday"}}}, "funday"),
        ({"windows": {"monthly": {"at": "02:00", "length": "1h", "day": 32}}}, "from 1 to 31"),
        ({"windows": {"quarterly": {"at": "02:00", "length": "1h", "month": 4}}}, "from 1 to 3"),
        ({"windows": {"daily": {"at": "02:00", "length": "1h", "on": "monday"}}}, "takes no"),
        ({"windows": {"extra": {"at": "02:00", "length": "1h"}}}, "say how often"),
        ({"catch_up": "sometimes"}, "sometimes"),
        ({"blackouts": [{"name": "x", "from": "2026-12-28", "to": "2026-12-01"}]}, "before"),
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
    inv = estate(tmp_path, nightly())
    early = scheduler(inv, night(2, 1, 30))
    assert early.returncode == 0 and outcomes(early) == [] and lines(inv) == []
    due = scheduler(inv, night(2, 2, 5))
    assert due.returncode == 0, due.stderr
    [run] = [o for o in outcomes(due) if o["run"] is not None]
    assert run["action"] == "run" and run["exit_code"] == 0
    assert len(lines(inv)) == 2
    again = scheduler(inv, night(2, 2, 30))  # same window: already run
    assert outcomes(again) == [] and len(lines(inv)) == 2
    checked = scheduler(inv, night(3, 2, 5), "--check")
    assert [o["note"] for o in outcomes(checked)] == ["check mode: not run"]
    assert len(lines(inv)) == 2
    audit = json.loads(run_cli("audit", "--json", "-i", str(inv)).stdout)
    scheduled = [e for e in audit if e["command"] == "run"]
    assert len(scheduled) == 1 and scheduled[0]["flags"]["scheduled"] == "nightly"
    assert scheduled[0]["run_id"] == run["run"]


@pytest.mark.parametrize("policy", ["run-once", "skip"])
def test_missed_windows_are_caught_up_by_policy(tmp_path: Path, policy: str) -> None:
    inv = estate(tmp_path, nightly(catch_up=policy))
    assert outcomes(scheduler(inv, night(2, 2, 5)))[0]["action"] == "run"
    # down from the 2nd 05:00 to the 5th 12:00: the 3rd, 4th and 5th windows missed
    after = scheduler(inv, night(5, 12, 0))
    [decision] = [o for o in outcomes(after) if o["note"] != "starting"]
    if policy == "run-once":
        assert decision["action"] == "catch-up" and decision["exit_code"] == 0
        assert "missed 3 slots" in decision["reason"] and len(lines(inv)) == 4
    else:
        assert decision["action"] == "skip" and "missed 3 slots" in decision["reason"]
        assert len(lines(inv)) == 2
    journal_decisions = json.loads(
        subprocess.run(
            ["sqlite3", str(tmp_path / "journal.sqlite"),
             "SELECT value FROM state WHERE key = 'scheduler:decisions'"],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    assert {d["action"] for d in journal_decisions} >= {
        "run",
        "catch-up" if policy == "run-once" else "skip",
    }


def test_a_blackout_blocks_the_scheduler(tmp_path: Path) -> None:
    inv = estate(tmp_path, {**nightly(), "blackouts": [{"name": "close", "on": "2026-12-02"}]})
    done = scheduler(inv, night(2, 2, 5))
    [decision] = outcomes(done)
    assert decision["action"] == "blocked" and "close" in decision["reason"]
    assert lines(inv) == []


def test_two_schedulers_never_overlap(tmp_path: Path) -> None:
    """Two windows open at once; a second scheduler (another journal, as on another
    machine) starts while the first runs the first window: it finds the first window run
    (the last start is in the repository) and the estate locked for the second."""
    schedule = nightly()
    schedule["windows"]["second"] = {**schedule["windows"]["nightly"]}
    inv = estate(tmp_path, schedule, seconds=3)
    at = night(2, 2, 5).isoformat()
    command = [str(BIN / "crmmaint"), "scheduler", "--once", "--at", at, "--json", "-i", str(inv)]

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
    inv = estate(tmp_path, nightly())
    lock_dir = tmp_path / "repo" / "scheduler" / "lock"
    lock_dir.mkdir(parents=True)
    stale = {
        "id": "0000stale", "exclusive": True, "state": "held", "host": "gone.example",
        "pid": 1, "user": "root", "created": time.time() - 3600,
        "acquired": time.time() - 3600, "heartbeat": time.time() - 3600,
        "heartbeat_interval": 30.0, "owner": "scheduler root@gone",
    }  # fmt: skip
    (lock_dir / "0000stale").write_text(json.dumps(stale))
    done = scheduler(inv, night(2, 2, 5))
    assert done.returncode == 0, done.stderr
    assert len(lines(inv)) == 2
    assert "took over stale repository lock" in done.stderr


def test_without_a_repository_the_lock_is_a_local_file(tmp_path: Path) -> None:
    inv = estate(tmp_path, nightly(), repository=False)
    done = scheduler(inv, night(2, 2, 5))
    assert done.returncode == 0 and "this machine only" in done.stderr
    assert len(lines(inv)) == 2


def test_sigterm_during_a_step_ends_the_run_and_frees_the_lock(tmp_path: Path) -> None:
    now = datetime.now(BERLIN)
    opened = (now - timedelta(minutes=1)).strftime("%H:%M")
    schedule = nightly()
    schedule["windows"]["nightly"]["at"] = opened
    inv = estate(tmp_path, schedule, seconds=60)
    proc = subprocess.Popen(
        [str(BIN / "crmmaint"), "scheduler", "--interval", "1", "-i", str(inv)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not lines(inv):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the scheduled run never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert lines(inv)[-1].startswith("start")  # the step was cut, not finished
    history = json.loads(run_cli("history", "--json", "-i", str(inv)).stdout)
    assert history[0]["status"] == "interrupted"
    # the lock is free: a tick now is not refused by it (the window already ran)
    after = scheduler(inv, datetime.now(BERLIN))
    assert all("another scheduler" not in o["note"] for o in outcomes(after))
    assert sys.executable  # the same interpreter ran every command
