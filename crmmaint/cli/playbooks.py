"""Checking what crmmaint is given: ``playbook check``, ``playbook list``, ``inventory check``."""

from __future__ import annotations

import os
import sys
from typing import Any

from invoke import Collection, Exit

from crmmaint.cli.common import _config_get, command, helps, open_inventory
from crmmaint.errors import ConfigError
from crmmaint.inventory import Inventory, describe
from crmmaint.reporting.console import print_table, write_json


@command(
    name="check",
    help=helps(file="playbook file to validate (more: --file FILE, repeatable)"),
    positional=["file"],
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


@command(
    name="check",
    help=helps(
        connect="also reach every host, database, cache and repository, changing nothing, and"
        " say which fail and why (exit 0 when all are ok)"
    ),
)
def inventory_check(
    c: Any,
    inventory: str | None = None,
    connect: bool = False,
    json: bool = False,
    debug: bool = False,
) -> None:
    """Validate the inventory and print what it describes (no secrets); with --connect, reach it."""
    inv = open_inventory(c, inventory)
    if connect:
        _inventory_connect(c, inv, json=json)
        return
    summary = describe(inv)
    if json:
        write_json(summary)
        return
    print(f"{inv.path}: valid")
    for section in ("hosts", "databases", "caches", "filesets", "repositories"):
        names = ", ".join(summary[section]) or "none"
        print(f"  {section}: {names}")
    if "schedule" in summary:
        schedule = summary["schedule"]
        windows = ", ".join(schedule["windows"]) or "none"
        zone = schedule["timezone"] or "this machine's time zone"
        print(
            f"  schedule: windows {windows} ({zone}), {schedule['blackouts']} blackout(s)"
            " (`crmmaint windows` shows the next slots)"
        )


def _inventory_connect(c: Any, inv: Inventory, *, json: bool) -> None:
    """``inventory check --connect``: one line per item; exit with ``reachability.exit_code``."""
    from crmmaint.reachability import exit_code, reach_all

    results = reach_all(inv, workers=int(_config_get(c, "forks") or 10))
    if json:
        write_json([r.as_dict() for r in results])
    else:
        print_table(
            [r.as_dict() for r in results],
            ["kind", "name", "status", "detail"],
            title=f"{inv.path}: {sum(r.ok for r in results)} of {len(results)} items answered",
        )
    failed = [r for r in results if not r.ok]
    code = exit_code(results)
    if failed and not json:
        for r in failed:
            if r.hint:
                print(f"crmmaint: {r.kind} {r.name}: {r.hint}", file=sys.stderr)
        print(
            f"crmmaint: error: {len(failed)} of {len(results)} items failed (exit {code})",
            file=sys.stderr,
        )
    if code:
        raise Exit(code=code)


def register(ns: Collection) -> None:
    """Add these command groups to the CLI collection."""
    ns.add_collection(Collection("playbook", playbook_check, playbook_list))
    ns.add_collection(Collection("inventory", inventory_check))
