"""Running playbooks and reading the journal: ``run``, ``history``, ``show``."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

from invoke import Collection

from crmmaint.cli.common import (
    command,
    execute,
    helps,
    honour_blackout,
    local_time,
    maybe_inventory,
    open_inventory,
    open_journal,
    parse_int,
    split_list,
)
from crmmaint.errors import ConfigError
from crmmaint.reporting.console import print_table, write_json
from crmmaint.units import format_clock


@command(
    help=helps(
        playbook="a playbook file, or the name of a shipped one: daily, weekly, monthly, quarterly, yearly",
        check="report what would be done; change nothing anywhere",
        limit="only targets on these hosts or groups (comma-separated)",
        tags="only steps with any of these tags (comma-separated)",
        step="only these steps (comma-separated names)",
        forks="how many targets run in parallel (default 10)",
        verbose="print a line when each target starts",
        until="the run's deadline: HH:MM (the next such time) or 2026-12-02T05:30; no step"
        " starts after it and long work that would not fit is skipped",
        for_="the run's deadline as a length from now (3h, 90m); default: the playbook's"
        " window length",
        override='run during a blackout of the schedule anyway, saying why ("hotfix 4711");'
        " recorded in the audit trail with who",
    ),
    positional=["playbook"],
    audit="run",
)
def run(
    c: Any,
    playbook: str,
    inventory: str | None = None,
    check: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    step: str | None = None,
    forks: int = 0,
    json: bool = False,
    verbose: bool = False,
    until: str | None = None,
    for_: str | None = None,
    override: str | None = None,
    debug: bool = False,
) -> None:
    """Run a playbook against the inventory (exit 0 ok, 1 warnings, 2 failures, 11 blackout).

    Exit 3 for a bad inventory, playbook or flag; a blackout of the schedule refuses the run
    (exit 11) unless `--override "reason"`, which is recorded in the audit trail."""
    from crmmaint.playbook import load_playbook
    from crmmaint.schedule.windows import run_deadline

    inv = open_inventory(c, inventory)
    book = load_playbook(playbook, inv)
    honour_blackout(c, inv, f"playbook {book.name}", override=override, check=check, command="run")
    try:
        ends_at, why = run_deadline(
            datetime.now().astimezone(), until=until, length=for_, window_length=book.window_length
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if ends_at is not None and not json:
        print(
            f"crmmaint: this run ends at {ends_at.astimezone():%Y-%m-%d} {format_clock(ends_at)}"
            f" ({why}): no step starts after it",
            file=sys.stderr,
        )
    execute(
        c,
        inv,
        book,
        check=check,
        limit=split_list(limit),
        tags=split_list(tags),
        steps=split_list(step),
        forks=forks,
        json=json,
        verbose=verbose,
        ends_at=ends_at,
    )


@command(help=helps(limit="how many runs (default 20)", playbook="only runs of this playbook"))
def history(
    c: Any,
    inventory: str | None = None,
    limit: int = 20,
    playbook: str | None = None,
    json: bool = False,
    debug: bool = False,
) -> None:
    """List recent runs from the journal."""
    inv = maybe_inventory(c, inventory)
    with open_journal(c, inv) as journal:
        runs = journal.runs(limit=limit, playbook=playbook)
        where = journal.path
    if json:
        write_json(runs)
        return
    if not runs:  # say which journal was read: an empty listing alone looks like a fault
        what = f"no runs of {playbook}" if playbook else "no runs"
        print(f"crmmaint: {what} in the journal {where}", file=sys.stderr)
    rows = [
        {
            "run": r["id"],
            "playbook": r["playbook"],
            "started": local_time(r["started"]),
            "duration": f"{(r['finished'] or r['started']) - r['started']:.1f}s"
            if r["finished"]
            else "running",
            "status": r["status"] or "-",
            "check": "yes" if r["check_mode"] else "",
            "user": r["user"],
        }
        for r in runs
    ]
    print_table(
        rows, ["run", "playbook", "started", "duration", "status", "check", "user"], title="history"
    )


@command(help=helps(run_id="run number, or 'last'"), positional=["run_id"])
def show(
    c: Any,
    run_id: str,
    inventory: str | None = None,
    json: bool = False,
    debug: bool = False,
) -> None:
    """Show one run from the journal: every step and target with its result."""
    wanted = None if run_id == "last" else parse_int(run_id, "run id")
    inv = maybe_inventory(c, inventory)
    with open_journal(c, inv) as journal:
        rid = journal.last_run_id() if wanted is None else wanted
        run_doc = journal.run(rid) if rid is not None else None
    if run_doc is None:
        raise ConfigError(f"no run {run_id} in the journal", hint="see `crmmaint history`")
    if json:
        write_json(run_doc)
        return
    print(
        f"run {run_doc['id']}: {run_doc['playbook']} started {local_time(run_doc['started'])}"
        f" by {run_doc['user']} on {run_doc['machine']}: {run_doc['status'] or 'unfinished'}"
        f"{' (check mode)' if run_doc['check_mode'] else ''}"
    )
    rows = [
        {
            "step": r["step"],
            "task": r["task"],
            "target": r["target"],
            "status": r["status"],
            "message": r["message"],
            "time": f"{r['duration']:.1f}s",
        }
        for r in run_doc["results"]
    ]
    print_table(rows, ["step", "task", "target", "status", "message", "time"])


def register(ns: Collection) -> None:
    """Add these commands to the CLI collection."""
    ns.add_task(run)
    ns.add_task(history)
    ns.add_task(show)
