"""``crmmaint demo``: build the embedded demo estate and run playbooks on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from invoke import Collection, Exit

from crmmaint.cli.common import command, helps, program_name, split_list


@command(
    help=helps(
        dir="where the demo estate lives (default .demo)",
        rows="rows in the generated CRM database (default 200000)",
        playbooks="playbooks to run, comma-separated (default daily,weekly,quarterly)",
    )
)
def demo(
    c: Any,
    dir: str = ".demo",
    rows: int = 200_000,
    playbooks: str = "daily,weekly,quarterly",
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


def register(ns: Collection) -> None:
    """Add the command to the CLI collection."""
    ns.add_task(demo)
