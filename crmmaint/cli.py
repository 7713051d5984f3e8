"""The command line: one invoke Collection, used by ``tasks.py`` and the ``crmmaint`` program.

Thin by design: parse flags, call the library, print through the writers in
``crmmaint.reporting``. Every command translates ``CrmMaintError`` into a one-line message and the
error's exit code (no traceback unless ``--debug``), so ``invoke`` and ``crmmaint`` behave alike.
``crmmaint playbook check`` is accepted as well as invoke's ``crmmaint playbook.check``.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke import Collection, Exit, Program

from crmmaint import __version__
from crmmaint.cli_backup import register as register_backup_commands
from crmmaint.cli_common import (
    CrmConfig,
    _config_get,
    command,
    execute,
    helps,
    open_inventory,
    open_journal,
    program_name,
    split_list,
)
from crmmaint.errors import ConfigError
from crmmaint.inventory import Inventory, describe
from crmmaint.reporting.console import (
    print_table,
    write_json,
)


@command(
    help=helps(
        playbook="a playbook file, or the name of a shipped one: daily, weekly, monthly, quarterly, yearly",
        check="report what would be done; change nothing anywhere",
        limit="only targets on these hosts or groups (comma-separated)",
        tags="only steps with any of these tags (comma-separated)",
        step="only these steps (comma-separated names)",
        forks="how many targets run in parallel (default 10)",
        verbose="print a line when each target starts",
    ),
    positional=["playbook"],
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
    debug: bool = False,
) -> None:
    """Run a playbook against the inventory. Exit 0 ok, 1 warnings, 2 failures, 3 bad config."""
    from crmmaint.playbook import load_playbook

    inv = open_inventory(c, inventory)
    book = load_playbook(playbook, inv)
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
    )


@command(
    name="check",
    help=helps(file="playbook files to validate (repeatable)"),
    iterable=["file"],
)
def playbook_check(
    c: Any, file: list[str], inventory: str | None = None, json: bool = False, debug: bool = False
) -> None:
    """Validate playbooks without running them (against the inventory when one is given)."""
    from crmmaint.playbook import check_playbook

    if not file:
        raise ConfigError("no playbook given", hint="crmmaint playbook check FILE...")
    inv = None
    if inventory or _config_get(c, "inventory") or os.environ.get("CRMMAINT_INVENTORY"):
        inv = open_inventory(c, inventory)
    checked = []
    for path in file:
        problems = [str(p) for p in check_playbook(path, inv)]
        checked.append({"playbook": path, "valid": not problems, "problems": problems})
    if json:
        write_json(checked)
    else:
        for row in checked:
            if row["valid"]:
                print(f"{row['playbook']}: valid")
            for problem in row["problems"]:
                print(f"crmmaint: error: {problem}", file=sys.stderr)
    if not all(row["valid"] for row in checked):
        raise Exit(code=ConfigError.exit_code)


@command(name="list", help=helps())
def playbook_list(c: Any, json: bool = False, debug: bool = False) -> None:
    """List the shipped playbooks."""
    from crmmaint.playbook import load_playbook, shipped_playbooks

    rows = []
    for path in shipped_playbooks():
        book = load_playbook(str(path), None)
        rows.append(
            {"name": path.stem, "window": book.window, "steps": len(book.steps), "path": str(path)}
        )
    if json:
        write_json(rows)
    else:
        print_table(rows, ["name", "window", "steps", "path"], title="shipped playbooks")


@command(name="check", help=helps())
def inventory_check(
    c: Any, inventory: str | None = None, json: bool = False, debug: bool = False
) -> None:
    """Validate the inventory and print what it describes (no secrets)."""
    inv = open_inventory(c, inventory)
    summary = describe(inv)
    if json:
        write_json(summary)
        return
    print(f"{inv.path}: valid")
    for section in ("hosts", "databases", "caches", "filesets", "repositories"):
        names = ", ".join(summary[section]) or "none"
        print(f"  {section}: {names}")


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
    inv = _maybe_inventory(c, inventory)
    with open_journal(c, inv) as journal:
        runs = journal.runs(limit=limit, playbook=playbook)
    if json:
        write_json(runs)
        return
    rows = [
        {
            "run": r["id"],
            "playbook": r["playbook"],
            "started": _when(r["started"]),
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
    inv = _maybe_inventory(c, inventory)
    with open_journal(c, inv) as journal:
        rid = journal.last_run_id() if run_id == "last" else _int(run_id, "run id")
        run_doc = journal.run(rid) if rid is not None else None
    if run_doc is None:
        raise ConfigError(f"no run {run_id} in the journal", hint="see `crmmaint history`")
    if json:
        write_json(run_doc)
        return
    print(
        f"run {run_doc['id']}: {run_doc['playbook']} started {_when(run_doc['started'])}"
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


@command(
    help=helps(
        dir="where the demo estate lives (default .demo)",
        rows="rows in the generated CRM database (default 200000)",
        playbooks="playbooks to run, comma-separated (default daily,weekly)",
    )
)
def demo(
    c: Any,
    dir: str = ".demo",
    rows: int = 200_000,
    playbooks: str = "daily,weekly",
    debug: bool = False,
) -> None:
    """Build the embedded demo estate (SQLite CRM, local repository, generated key) and run it."""
    from crmmaint.demo import run_demo

    # Warnings are findings the demo is meant to show, not a failed demo: it exits 0 for them.
    code = run_demo(
        Path(dir), rows=rows, playbooks=split_list(playbooks) or ["daily"], program=program_name()
    )
    if code:
        raise Exit(code=code)


def _maybe_inventory(c: Any, given: str | None) -> Inventory | None:
    try:
        return open_inventory(c, given)
    except ConfigError:
        if given:
            raise
        return None


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{what} must be a number, not {text!r}") from None


def _when(ts: float | None) -> str:
    from datetime import datetime

    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


# --- the collection ----------------------------------------------------------------------


def build_collection() -> Collection:
    ns = Collection()
    ns.add_task(run)
    ns.add_task(history)
    ns.add_task(show)
    ns.add_task(demo)
    ns.add_collection(Collection("playbook", playbook_check, playbook_list))
    ns.add_collection(Collection("inventory", inventory_check))
    for extra in _extra_collections():
        extra(ns)
    ns.configure({"inventory": None, "journal": None, "forks": 10})
    return ns


def _extra_collections() -> list[Callable[[Collection], None]]:
    """Command groups defined in sibling modules (backup, keys, repo) register here."""
    return [register_backup_commands]


ns = build_collection()

#: Commands invoked as ``crmmaint GROUP VERB`` and their variadic positional flag.
_VARIADIC = {"playbook.check": "--file"}
#: Commands whose single positional may be left out, and what it then means.
_OPTIONAL_POSITIONAL = {"show": "last"}
_VALUE_FLAGS = {"-i", "--inventory", "--file", "--limit", "--tags", "--step", "--forks", "--dir"}
_CORE_VALUE_FLAGS = {"-f", "--config", "-T", "--command-timeout", "--hide", "-r", "--search-root"}


def normalize_argv(argv: list[str]) -> list[str]:
    """Accept ``GROUP VERB`` for invoke's ``GROUP.VERB``, ``--debug`` anywhere, and several files
    after ``playbook check``."""
    args = list(argv)
    i = 1
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in _CORE_VALUE_FLAGS else 1
    # ``-d`` is invoke's core debug flag only before the command: after it, it is the command's
    # own short flag (``backup -d NAME`` is ``--database``).
    if "--debug" in args[1:] or "-d" in args[1:i]:
        os.environ["CRMMAINT_DEBUG"] = "1"
    if (
        i + 1 < len(args)
        and args[i] in ns.collections
        and args[i + 1] in ns.collections[args[i]].tasks
    ):
        args[i : i + 2] = [f"{args[i]}.{args[i + 1]}"]
    if i < len(args) and args[i] in _VARIADIC:
        flag = _VARIADIC[args[i]]
        rest, out, j = args[i + 1 :], [], 0
        while j < len(rest):
            tok = rest[j]
            if tok.startswith("-"):
                out.append(tok)
                if (
                    j + 1 < len(rest)
                    and not rest[j + 1].startswith("-")
                    and tok in ("-i", "--inventory", "--file")
                ):
                    out.append(rest[j + 1])
                    j += 1
            else:
                out += [flag, tok]
            j += 1
        args[i + 1 :] = out
    if i < len(args) and args[i] in _OPTIONAL_POSITIONAL and not _has_positional(args[i + 1 :]):
        args.append(_OPTIONAL_POSITIONAL[args[i]])
    return args


def _has_positional(rest: list[str]) -> bool:
    j = 0
    while j < len(rest):
        if rest[j].startswith("-"):
            j += 2 if rest[j] in _VALUE_FLAGS and "=" not in rest[j] else 1
            continue
        return True
    return False


program = Program(
    name="crmmaint",
    binary="crmmaint",
    namespace=ns,
    version=__version__,
    config_class=CrmConfig,
)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``crmmaint`` console script.

    A flag value of the wrong type (``--jobs abc``) fails in invoke's parser, before any
    command's own error handling: it becomes a one-line configuration error (exit 3).
    """
    # A service manager stops crmmaint with SIGTERM: end like an interrupt (exit 130), so the
    # journal records the run as ended and the commands it started are killed.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        program.run(normalize_argv(list(argv) if argv is not None else sys.argv))
    except ValueError as exc:
        found = re.search(r"invalid literal for (\w+)\(\) with base 10: (.*)$", str(exc))
        what = f"a whole number was expected, got {found.group(2)}" if found else str(exc)
        print(
            f"crmmaint: error: {what} (see `crmmaint --help COMMAND` for each flag's value)",
            file=sys.stderr,
        )
        sys.exit(ConfigError.exit_code)
