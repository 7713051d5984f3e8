"""Run plain shell commands on hosts: ad-hoc checks a playbook needs that no task covers.

Each command is a shell line run with ``sh -c`` on the target's host, in order; the first
failure stops the rest. The output is kept in the result's details. crmmaint cannot know
whether a command changes something, so in check mode nothing runs and the result lists the
commands that would.
"""

from __future__ import annotations

import logging
from typing import Any

from crmmaint.errors import CrmMaintError
from crmmaint.results import TaskResult
from crmmaint.tasks.api import Param, TaskContext, task
from crmmaint.transport.base import CommandResult, short
from crmmaint.units import plural

log = logging.getLogger(__name__)

#: Output kept per command in the result's details (its tail).
OUTPUT_LIMIT = 4096


def _tail(data: bytes) -> str:
    return data[-OUTPUT_LIMIT:].decode("utf-8", "replace")


def _run(ctx: TaskContext, line: str) -> tuple[CommandResult, bytes]:
    """Run one line, streaming its output and keeping only its tail: any amount of output
    is read (and waited for), none of it held beyond ``OUTPUT_LIMIT`` bytes."""
    timeout = ctx.time_left(ctx.params["timeout"])
    with ctx.transport.start(line, stdout="stream") as proc:
        if timeout is not None:
            proc.set_timeout(timeout)
        proc.close_stdin()
        tail = b""
        while chunk := proc.read(1 << 16):
            tail = (tail + chunk)[-OUTPUT_LIMIT:]
        return proc.wait(timeout=timeout), tail


@task(
    "shell.command",
    targets="hosts",
    params={
        "commands": Param(list, required=True, item_type=str, help="shell lines to run in order"),
        "timeout": Param("duration", 60.0, help="seconds each command may take"),
    },
)
def command(ctx: TaskContext) -> TaskResult:
    """Run shell commands on a host in order; fail on the first non-zero exit."""
    commands: list[str] = ctx.params["commands"]
    if ctx.check:
        return TaskResult.ok(
            f"would run {plural(len(commands), 'command')}: {short('; '.join(commands))}",
            details={"check_mode": True, "commands": commands},
        )
    ran: list[dict[str, Any]] = []
    duration = 0.0
    for line in commands:
        try:
            res, stdout = _run(ctx, line)
        except CrmMaintError as exc:
            ran.append({"command": line, "error": exc.message})
            return TaskResult.from_error(
                exc, f"{ctx.target.name}: {short(line)!r}", details={"commands": ran}
            )
        duration += res.duration
        ran.append(
            {
                "command": line,
                "exit_status": res.exit_status,
                "stdout": _tail(stdout),
                "stderr": _tail(res.stderr),
            }
        )
        if not res.ok:
            return TaskResult.failed(
                f"{ctx.target.name}: {short(line)!r} exited {res.exit_status}: "
                f"{res.stderr_tail() or 'no output'}",
                metrics={"commands_run": len(ran), "duration_s": round(duration, 3)},
                details={"commands": ran},
            )
    return TaskResult.ok(
        f"{plural(len(ran), 'command')} ok",
        metrics={"commands_run": len(ran), "duration_s": round(duration, 3)},
        details={"commands": ran},
    )
