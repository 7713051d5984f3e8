"""Restore drills: ``drill`` (rehearse restores now) and ``drills`` (when each was proven).

``drill`` runs the task ``drill.restore`` as a one-step playbook, like ``backup`` and
``restore``: journaled, listed by ``history``, and ``--check`` changes nothing. ``drills``
reads the drills back from the journal (docs/drills.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from invoke import Collection

from crmmaint.cli.common import (
    OVERRIDE_HELP,
    REPO_HELP,
    command,
    execute_adhoc,
    helps,
    honour_blackout,
    local_time,
    maybe_inventory,
    open_inventory,
    open_journal,
    typed_here,
)
from crmmaint.errors import ConfigError
from crmmaint.inventory import Inventory
from crmmaint.playbook.run import AdhocStep
from crmmaint.reporting.console import print_table, write_json
from crmmaint.reporting.drill_report import drill_row
from crmmaint.units import format_duration, format_elapsed, parse_duration, plural

#: What ``drill SOURCE`` may name besides one database or file set.
_EVERY = "all"


@command(
    help=helps(
        source="what to drill: NAME, database:NAME or fileset:NAME, a group, or all "
        "(default: every database and file set)",
        backup="backup id (one source only), or latest (default)",
        target="name of the scratch copy (one source only; default crmdrill_<source>_<time>_<random>)",
        rto="recovery time objective, e.g. 45m: a drill taking longer is a warning "
        "(default: the inventory's drills: entry)",
        keep="keep the scratch copy for inspection (remove it yourself)",
        repository=REPO_HELP,
        identity="identity file to decrypt with (default: the repository's)",
        check="check the keys and say what would be drilled where; restore nothing",
        timeout="give up on each source after this long, e.g. 2h (default 4h)",
        override=OVERRIDE_HELP,
    ),
    positional=["source"],
    iterable=["source"],
    audit="drill",
)
def drill(
    c: Any,
    source: list[str],
    inventory: str | None = None,
    backup: str = "latest",
    target: str | None = None,
    rto: str | None = None,
    keep: bool = False,
    repository: str | None = None,
    identity: str | None = None,
    check: bool = False,
    timeout: str | None = None,
    override: str | None = None,
    json: bool = False,
    debug: bool = False,
) -> None:
    """Rehearse restores: restore backups into scratch copies, check them, time them, remove them.

    Runs as a one-step playbook (task `drill.restore`): journaled, listed by `drills` and
    `history`; a backup whose drill passed every check is marked drilled (prune keeps it)."""
    params: dict[str, Any] = {"backup": backup, "keep": keep}
    if rto is not None:
        params["rto"] = _duration("--rto", rto, most=366 * 86400)
    seconds = _duration("--timeout", timeout, most=7 * 86400) if timeout is not None else 4 * 3600
    inv = open_inventory(c, inventory)
    honour_blackout(c, inv, "drill", override=override, check=check)
    selectors = _selectors(inv, [s for names in source for s in names.split(",")])
    count = sum(len(inv.resolve(kind, names)) for kind, names in selectors.items())
    for flag, value, default in (("--backup", backup, "latest"), ("--target", target, None)):
        if value != default and count != 1:
            raise ConfigError(
                f"{flag} names one backup or copy, but {count} sources are drilled",
                hint="name one source, e.g. `crmmaint drill database:crm " + flag + " …`",
            )
    if target is not None:
        kind, names = next(iter(selectors.items()))
        (one,) = inv.resolve(kind, names)
        params["target"] = typed_here(inv, kind, one.name, target)
    if repository:
        params["repository"] = inv.repository(repository).name
    if identity:
        params["identity"] = identity
    step = AdhocStep(
        "drill", "drill.restore", selectors, params, on_failure="continue", timeout=seconds
    )
    execute_adhoc(c, inv, "drill", [step], check=check, json=json)


def _selectors(inv: Inventory, names: list[str]) -> dict[str, list[str]]:
    """The step's targets for ``drill``'s SOURCE words: ``database:NAME``, ``fileset:NAME``,
    a plain name or group of either (refused when it names both), ``all``; none: every
    database and file set. Raises ``ConfigError`` naming what is unknown."""
    names = [n.strip() for n in names if n.strip()]
    selectors: dict[str, list[str]] = {}
    if not names or _EVERY in names:
        if inv.databases:
            selectors["database"] = [_EVERY]
        if inv.filesets:
            selectors["fileset"] = [_EVERY]
        if not selectors:
            raise ConfigError(
                "nothing to drill", hint="the inventory has no databases or file sets"
            )
        return selectors
    for name in names:
        kind, _, bare = name.rpartition(":")
        if kind and kind not in ("database", "fileset"):
            raise ConfigError(
                f"unknown source {name!r}", hint="write NAME, database:NAME or fileset:NAME"
            )
        kinds = [kind] if kind else [k for k in ("database", "fileset") if _names(inv, k, bare)]
        if not kinds or (kind and not _names(inv, kind, bare)):
            raise ConfigError(
                f"no database or file set {name!r} in the inventory",
                hint=f"databases: {', '.join(inv.databases) or 'none'}; "
                f"file sets: {', '.join(inv.filesets) or 'none'}",
            )
        if len(kinds) > 1:
            raise ConfigError(
                f"{name!r} names a database and a file set",
                hint=f"write database:{bare} or fileset:{bare}",
            )
        selectors.setdefault(kinds[0], []).append(bare)
    return selectors


def _names(inv: Inventory, kind: str, name: str) -> bool:
    """Whether ``name`` is a ``kind`` (database, fileset) or a group of them."""
    try:
        return bool(inv.resolve(kind, [name]))
    except ConfigError:
        return False


def _duration(flag: str, value: str, *, most: float) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None  # the message gives examples
    if not 0 < seconds <= most:
        raise ConfigError(
            f"{flag} {value!r} is out of range",
            hint=f"more than 0, at most {format_duration(most)}",
        )
    return seconds


@command(
    help=helps(
        since="only drills since this long ago, e.g. 90d (default: all)",
        limit="how many drills, newest first (default 20)",
    )
)
def drills(
    c: Any,
    inventory: str | None = None,
    since: str | None = None,
    limit: int = 20,
    json: bool = False,
    debug: bool = False,
) -> None:
    """List restore drills from the journal: when, which backup, where, result, time to restore."""
    after = time.time() - _duration("--since", since, most=100 * 366 * 86400) if since else None
    inv = maybe_inventory(c, inventory)
    with open_journal(c, inv) as journal:
        found = journal.task_results("drill.restore", since=after, limit=limit + 1)
        where = journal.path
    rows = [drill_row(r) for r in found[:limit]]
    if len(found) > limit:
        import sys

        print(
            f"crmmaint: the newest {plural(limit, 'drill')} shown; more are in the journal "
            "(--limit N shows more)",
            file=sys.stderr,
        )
    if json:
        write_json(rows)
        return
    if not rows:
        import sys

        period = f" in the last {since}" if since else ""
        print(f"crmmaint: no drills{period} in the journal {where}", file=sys.stderr)
    print_table(
        [
            {
                **row,
                "backup": row["backup"] or "-",
                "when": local_time(row["started"]),
                "restore": _shown_seconds(row["restore_seconds"]),
                "total": _shown_seconds(row["drill_seconds"]),
                "rto": format_duration(row["rto"]) if row["rto"] else "-",
            }
            for row in rows
        ],
        ["when", "source", "backup", "on", "status", "restore", "total", "rto", "run"],
        title="drills",
        droppable=["on", "rto", "run", "restore"],
    )


def _shown_seconds(value: float | None) -> str:
    return format_elapsed(value) if value is not None else "-"


@command(
    name="drill-report",
    help=helps(
        since="only drills since this long ago, e.g. 90d (default: all)",
        output="write the report to FILE: .html (one self-contained page) or .md; "
        "default: Markdown on stdout",
    ),
)
def drill_report(
    c: Any,
    inventory: str | None = None,
    since: str | None = None,
    output: str | None = None,
    debug: bool = False,
) -> None:
    """Write the restore drill report for a period: every drill, its checks and phase times."""
    from crmmaint.reporting.drill_report import FORMATS, render

    fmt = "md"
    if output is not None:
        fmt = FORMATS.get(Path(output).suffix.lower(), "")
        if not fmt:
            raise ConfigError(
                f"--output {output!r}: the report is written as .html or .md",
                hint="e.g. --output drills-2026Q4.html",
            )
    after = time.time() - _duration("--since", since, most=100 * 366 * 86400) if since else None
    inv = maybe_inventory(c, inventory)
    with open_journal(c, inv) as journal:
        rows = [drill_row(r) for r in journal.task_results("drill.restore", since=after)]
    text = render(rows, fmt, since=after)
    if output is None:
        print(text, end="")
        return
    _write_whole(Path(output), text)
    print(f"drill report: {output} ({len(rows)} drills)")


def _write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file renamed into place)."""
    import tempfile

    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"--output {path}: no folder {folder}", hint="create it first")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        from crmmaint.errors import os_reason

        raise ConfigError(f"--output {path}: cannot write it: {os_reason(exc)}") from None


def register(ns: Collection) -> None:
    """Add these commands to the CLI collection: ``drill``, ``drill report`` and ``drills``."""
    ns.add_task(drill)
    ns.add_task(drill_report)
    ns.add_task(drills)
