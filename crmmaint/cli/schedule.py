"""Maintenance windows: ``windows`` (the next slot of each and the blackouts ahead)."""

from __future__ import annotations

import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from invoke import Collection, Exit

from crmmaint.cli.common import command, helps, open_inventory
from crmmaint.errors import ConfigError, CrmMaintError
from crmmaint.journal import current_user
from crmmaint.reporting.console import print_table, visible, write_json
from crmmaint.units import format_duration

#: How far ahead ``windows`` lists blackouts (seconds): a quarter.
BLACKOUT_HORIZON = 92 * 86400.0


def _when(moment: datetime | None, tz: Any) -> str:
    return "-" if moment is None else f"{moment.astimezone(tz):%Y-%m-%d %H:%M %Z}"


@command(help=helps())
def windows(
    c: Any,
    inventory: str | None = None,
    json: bool = False,
    debug: bool = False,
) -> None:
    """The next slot of each maintenance window, and the blackouts of the next 92 days.

    Exit 3 when a window's playbook would not load (the problem column says why)."""
    from crmmaint.schedule import calendar
    from crmmaint.schedule.plan import schedule_of

    inv = open_inventory(c, inventory)
    plan = schedule_of(inv)
    now = datetime.now(UTC)
    rows = []
    for window in plan.windows:
        slot = calendar.current_slot(window, now) or calendar.next_slot(window, now)
        blocked = plan.blackout_at(slot)
        rows.append(
            {
                "window": window.name,
                "playbook": window.playbook,
                "every": window.every,
                "next": _when(slot, plan.tz),
                "next_iso": slot.astimezone(plan.tz).isoformat(),
                "open_now": slot <= now,
                "length_seconds": window.length,
                "ends": _when(calendar.window_end(window, slot), plan.tz),
                "catch_up": window.catch_up,
                "blackout": blocked.name if blocked else None,
                "problem": _playbook_problem(window.playbook, inv),
            }
        )
    ahead = [
        {
            "blackout": b.name,
            "from": _when(b.start, plan.tz),
            "until": _when(b.end, plan.tz),
            "from_iso": b.start.astimezone(plan.tz).isoformat(),
            "until_iso": b.end.astimezone(plan.tz).isoformat(),
            "now": b.start <= now < b.end,
        }
        for b in calendar.blackouts_ahead(plan.blackouts, now, BLACKOUT_HORIZON)
    ]
    if json:
        write_json({"timezone": str(plan.tz), "windows": rows, "blackouts": ahead})
        if any(row["problem"] for row in rows):
            raise Exit(code=ConfigError.exit_code)
        return
    if not rows:
        print(
            f"crmmaint: {visible(inv.path)} has no schedule: windows (see docs/scheduler.md)",
            file=sys.stderr,
        )
    else:
        shown = [
            {
                **row,
                "open now": "yes" if row["open_now"] else "",
                "length": format_duration(row["length_seconds"]),
                "blackout": row["blackout"] or "",
                "problem": row["problem"] or "",
            }
            for row in rows
        ]
        columns = ["window", "playbook", "next", "open now", "length", "catch_up", "blackout"]
        if any(row["problem"] for row in rows):
            columns.append("problem")
        print_table(shown, columns, title=f"windows ({plan.tz})")
    if ahead:
        print_table(
            [{**b, "now": "yes" if b["now"] else ""} for b in ahead],
            ["blackout", "from", "until", "now"],
            title="blackouts ahead",
        )
    elif rows:
        print("no blackout in the next 92 days")
    if any(row["problem"] for row in rows):
        raise Exit(code=ConfigError.exit_code)


def _playbook_problem(playbook: str, inv: Any) -> str | None:
    """Why a window's playbook would not load (so the night it is due is not the first time
    anyone hears of it), or ``None``."""
    from crmmaint.playbook import load_playbook

    try:
        load_playbook(_playbook_path(playbook, inv), inv)
    except CrmMaintError as exc:
        return str(exc)
    return None


@command(
    help=helps(
        once="evaluate what is due now, run it, and exit (for cron, systemd timers, tests)",
        check="say what would run and record the decisions; run nothing",
        at="with --once: evaluate at this moment (2026-12-02T02:05, local unless it has an"
        " offset) instead of now, e.g. to see what a night would run (with --check)",
        forks="how many targets a playbook runs in parallel (default 10)",
        interval="seconds between evaluations when running on (default 30)",
    )
)
def scheduler(
    c: Any,
    inventory: str | None = None,
    once: bool = False,
    check: bool = False,
    at: str | None = None,
    forks: int = 0,
    interval: float = 30.0,
    json: bool = False,
    debug: bool = False,
) -> None:
    """Run the playbooks in their maintenance windows (exit 130 on SIGTERM or SIGINT)."""
    from crmmaint.cli.common import _run_reported, open_journal
    from crmmaint.interrupts import HOLD_AFTER_RUN
    from crmmaint.playbook import load_playbook
    from crmmaint.reporting.console import ConsoleReporter
    from crmmaint.schedule.scheduler import RepositoryCoordination, Scheduler

    # This process runs playbook after playbook: a signal after one has finished must still
    # stop it (the one-command default holds signals back once its run is over).
    HOLD_AFTER_RUN.clear()
    inv = open_inventory(c, inventory)
    if inv.schedule is None or not inv.schedule.windows:
        raise ConfigError(
            f"{inv.path} has no schedule: windows, so the scheduler would never run anything",
            hint="add a schedule: section with windows (docs/scheduler.md)",
        )
    if at is not None and not (once and check):
        raise ConfigError(
            "--at goes with --once --check: it shows what would run at that moment; real runs"
            " happen at the real time",
            hint=f"crmmaint scheduler --once --check --at {at}",
        )
    now = _moment(at, inv) if at else None
    if json and not once:
        raise ConfigError("--json goes with --once (a scheduler that runs on logs lines)")
    if not 1 <= interval <= 3600:
        raise ConfigError(f"--interval {interval:g}: give 1 to 3600 seconds")

    def playbooks(inventory: Any) -> dict[str, Any]:
        assert inventory.schedule is not None
        return {
            w.name: load_playbook(_playbook_path(w.playbook, inventory), inventory)
            for w in inventory.schedule.windows
        }

    # What the runs read: the inventory and its windows' playbooks, read again each tick.
    current = {"inventory": inv, "books": playbooks(inv)}

    def refresh() -> Any:
        again = open_inventory(c, inventory)
        if again.schedule is None or not again.schedule.windows:
            raise ConfigError(f"{again.path} has no schedule: windows any more")
        current.update(inventory=again, books=playbooks(again))
        return again

    with open_journal(c, inv) as journal:
        owner = f"scheduler {current_user()}@{socket.gethostname()}"
        coordination: Any
        if inv.repositories:
            from crmmaint.repository.configured import backend_for

            name = inv.schedule.lock_repository
            backend = backend_for(inv.repository(name))
            backend.open()
            coordination = RepositoryCoordination(backend, owner)
        else:  # a directory beside the inventory: one lock for every journal of it here
            from crmmaint.repository.backends import open_backend

            here = Path(inv.path).resolve()
            beside = here.parent / ".crmmaint-scheduler" / here.name  # one per inventory
            beside.mkdir(mode=0o700, parents=True, exist_ok=True)
            backend = open_backend(str(beside))
            backend.open()
            coordination = RepositoryCoordination(backend, owner)
            coordination.where = f"{beside} (this machine only: the inventory has no repository)"
        print(
            f"crmmaint: scheduler: overlap lock in {visible(coordination.where)}", file=sys.stderr
        )

        def run_window(window: Any, ends: datetime | None) -> tuple[int | None, int]:
            """One scheduled run, in the audit trail as a ``run`` of its own (the scheduler
            is a long-running command: each playbook it runs is a change of its own)."""
            from crmmaint.audit import audited

            # --json: one document at the end (the decisions, with each run's id), no more
            reporter = None if json else ConsoleReporter(verbose=False)
            ending = f"{ends:%Y-%m-%dT%H:%M%z}" if ends else None
            with audited(
                journal.path,
                "run",
                argv=[*sys.argv, f"(window {window.name})"],
                flags={"scheduled": window.name, "playbook": window.playbook, "until": ending},
            ) as trail:
                trail.inventory, trail.inventory_read = current["inventory"], True
                summary = _run_reported(
                    c, current["inventory"], current["books"][window.name], reporter,
                    footer=not json, forks=forks, ends_at=ends,
                )  # fmt: skip
                trail.run_id, trail.exit_code = summary.run_id, summary.exit_code
            return summary.run_id, summary.exit_code

        def say(line: str) -> None:
            if not once:  # --once says its decisions at the end, as one listing
                print(visible(f"{datetime.now().astimezone():%Y-%m-%d %H:%M:%S} {line}"),
                      file=sys.stderr, flush=True)  # fmt: skip

        sched = Scheduler(
            inv, journal, coordination, run_window, check=check, say=say,
            refresh=None if once else refresh,
        )  # fmt: skip
        if once:
            outcomes = sched.tick(now)
            _say(outcomes, json)
            codes = [o.exit_code for o in outcomes if o.exit_code]
            if codes:
                raise Exit(code=max(codes))
            return
        sched.serve(interval)


def _playbook_path(playbook: str, inv: Any) -> str:
    """A window's playbook: a path relative to the inventory's folder when a file is there,
    else as given (a shipped playbook's name, an absolute path)."""
    beside = Path(inv.path).parent / playbook
    return str(beside) if not Path(playbook).is_absolute() and beside.is_file() else playbook


def _moment(text: str, inv: Any) -> datetime:
    """``--at``: a date and time, in the schedule's time zone unless it carries an offset;
    years 2000 to 2999 (beyond, the calendar has nothing to say)."""
    from crmmaint.schedule.plan import schedule_of

    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--at {text!r} is not a date and time: write 2026-12-02T02:05") from None
    if not 2000 <= moment.year <= 2999:
        raise ConfigError(f"--at {text}: give a moment from the year 2000 to 2999")
    return moment.replace(tzinfo=schedule_of(inv).tz) if moment.tzinfo is None else moment


def _say(outcomes: list[Any], json: bool) -> None:
    rows = [
        {
            "window": o.decision.window.name,
            "action": o.decision.action,
            "reason": o.decision.reason,
            "note": o.note,
            "run": o.run_id,
            "exit_code": o.exit_code,
            "repeated": o.repeated,
        }
        for o in outcomes
    ]
    if json:
        write_json(rows)
        return
    rows = [row for row in rows if not row["repeated"]]  # said by an earlier evaluation
    for row in rows:
        note = f" ({row['note']})" if row["note"] else ""
        print(visible(f"scheduler: {row['action']} {row['window']}: {row['reason']}{note}"))
    if not rows:
        print("scheduler: nothing due")


def register(ns: Collection) -> None:
    """Add these commands to the CLI collection."""
    ns.add_task(windows)
    ns.add_task(scheduler)
