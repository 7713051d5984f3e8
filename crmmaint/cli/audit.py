"""The audit trail: ``audit`` lists who changed what, where, with which flags, and how it
ended (``crmmaint.audit``); ``audit --verify`` checks its hash chain."""

from __future__ import annotations

import sys
import time
from typing import Any

from invoke import Collection, Exit

from crmmaint.audit import audit_entries
from crmmaint.cli.common import command, helps, local_time, maybe_inventory, open_journal
from crmmaint.errors import ConfigError
from crmmaint.reporting.console import print_table, visible, write_json
from crmmaint.units import parse_duration

#: Exit code of ``audit --verify`` when the chain is broken: an integrity failure (README).
TAMPERED = 9


@command(
    help=helps(
        since="only what started since this long ago, e.g. 30d (default: everything)",
        verify="check that no entry was changed or taken out (exit 9 if one was)",
    )
)
def audit(
    c: Any,
    inventory: str | None = None,
    since: str | None = None,
    verify: bool = False,
    json: bool = False,
    debug: bool = False,
) -> None:
    """List the audit trail: each command that changed something, who ran it, and its outcome.

    Oldest first. Dry runs (`--check`) are not in it; see docs/audit.md."""
    after = None
    if since is not None:
        try:
            seconds = parse_duration(since)
        except ValueError as exc:
            raise ConfigError(f"--since: {exc}") from None
        if not 0 < seconds <= 100 * 366 * 86400:
            raise ConfigError(f"--since {since!r} is out of range", hint="e.g. 30d, 12h, 1w")
        after = time.time() - seconds
    inv = maybe_inventory(c, inventory)
    with open_journal(c, inv) as journal:
        if verify:  # one pass over the table: the listing is not needed
            problems = journal.verify_audit()
            _say_verified(problems, journal.audit_rows_checked, json)
            return
        entries = audit_entries(journal, since=after)
        where = journal.path
    if json:
        write_json(entries)
        return
    if not entries:
        period = f" in the last {since}" if since else ""
        print(f"crmmaint: no audit entries{period} in the journal {where}", file=sys.stderr)
        return
    print_table(
        [_row(entry) for entry in entries],
        ["when", "user", "command", "targets", "flags", "outcome"],
        title="audit",
        status_column=None,
        droppable=["flags", "targets"],
    )


def _row(entry: dict[str, Any]) -> dict[str, str]:
    """One entry as the table shows it: who with sudo and SSH origin, flags as typed."""
    user = entry["user"] or "?"
    if entry["sudo_user"]:
        user += f" (sudo by {entry['sudo_user']})"
    elif entry["login_user"]:
        user += f" (login {entry['login_user']})"
    if entry["ssh_client"]:
        user += f" via ssh from {entry['ssh_client']}"
    flags = " ".join(
        f"--{name.rstrip('_').replace('_', '-')}"
        + (
            ""
            if value is True
            else f" {','.join(map(str, value)) if isinstance(value, list) else value}"
        )
        for name, value in entry["flags"].items()
        if value is not False
    )
    outcome = str(entry["outcome"])
    if entry["exit_code"] not in (None, 0):
        outcome += f" ({entry['exit_code']})"
    if entry["run_id"]:
        outcome += f", run {entry['run_id']}"
    if entry["detail"]:
        outcome += f": {entry['detail']}"
    targets = ", ".join(entry["targets"])
    if entry["remote_users"]:
        targets += " as " + ", ".join(f"{u}@{h}" for h, u in entry["remote_users"].items())
    return {
        "when": local_time(entry["at"]),
        "user": visible(user),
        "command": entry["command"],
        "targets": visible(targets) or "-",
        "flags": visible(flags) or "-",
        "outcome": visible(outcome),
    }


def _say_verified(problems: list[str], count: int, json: bool) -> None:
    if json:
        write_json({"intact": not problems, "rows": count, "problems": problems})
    else:
        for line in problems:
            print(line)
        if not problems:
            print(f"audit trail intact: {count} rows, each chained to the one before")
    if problems:
        raise Exit(
            f"crmmaint: error: the audit trail was changed ({len(problems)} problems)",
            code=TAMPERED,
        )


def register(ns: Collection) -> None:
    """Add the command to the CLI collection."""
    ns.add_task(audit)
