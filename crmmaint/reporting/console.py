"""User-facing output writers: rich tables and live status on a TTY, plain lines otherwise, JSON.

The runner calls a ``Reporter``; these writers turn its callbacks into what a sysadmin reads. No
writer prints anything a task did not put in its result, so secrets cannot leak through here.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    DownloadColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.progress import Task as ProgressTask
from rich.table import Table
from rich.text import Text

from crmmaint.results import Status
from crmmaint.units import format_countdown, format_duration, metric_value

STATUS_STYLE = {
    "ok": "green",
    "changed": "yellow",
    "warning": "bold yellow",
    "failed": "bold red",
    "skipped": "dim",
}


def is_tty(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stdout) is a terminal."""
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def make_console(stream: TextIO | None = None) -> Console:
    """The rich console every writer prints through: styled on a terminal, plain text
    otherwise (no escape codes in a pipe, a file or a cron mail). On a terminal, colour
    follows rich's reading of the environment: ``NO_COLOR`` set and not empty turns colour
    off (https://no-color.org); bold and italic stay, as that convention allows."""
    stream = stream or sys.stdout
    tty = is_tty(stream)
    return Console(
        file=stream,
        force_terminal=tty,
        # None: rich reads NO_COLOR; a False here would override it.
        no_color=None if tty else True,
        highlight=False,
        soft_wrap=not tty,
    )


def _label(target: Any) -> str:
    return getattr(target, "label", None) or str(target)


def _status(result: Any) -> str:
    return str(getattr(result, "status", result))


class _CountdownColumn(ProgressColumn):
    """Time left until a task's ``until`` field (a ``time.monotonic()`` instant); rich redraws
    it several times a second, so a waiting retry counts down with no further calls."""

    def render(self, task: ProgressTask) -> Text:
        until = task.fields.get("until")
        if until is None:
            return Text("")
        return Text(f"starts in {format_countdown(until - time.monotonic())}", style="yellow")


class _UnlessWaiting(ProgressColumn):
    """A byte-progress column that stays blank on a countdown row."""

    def __init__(self, column: ProgressColumn) -> None:
        super().__init__()
        self.column = column

    def render(self, task: ProgressTask) -> Any:
        return Text("") if "until" in task.fields else self.column.render(task)


class ConsoleReporter:
    """Live status line per target and a summary table at the end.

    On a TTY: rich styling; otherwise one plain line per event, easy to grep and to log.
    """

    def __init__(
        self, stream: TextIO | None = None, *, verbose: bool = False, check: bool = False
    ) -> None:
        self.stream = stream or sys.stdout
        self.check = check
        self.console = make_console(self.stream)
        self.tty = is_tty(self.stream)
        self.verbose = verbose
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._progress: Progress | None = None
        self._bars: dict[tuple[str, ...], TaskID] = {}

    def _print(self, text: str) -> None:
        with self._lock:
            self.console.print(text)

    def _live(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("  {task.description}"),
                _UnlessWaiting(DownloadColumn()),
                _UnlessWaiting(TransferSpeedColumn()),
                _UnlessWaiting(TimeElapsedColumn()),
                _CountdownColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
        return self._progress

    def on_progress(self, step: Any, target: Any, done: int, total: int | None) -> None:
        """Bytes moved by a long task: a live bar with throughput on a TTY, nothing otherwise."""
        if not self.tty:
            return
        self._finish_bar(step, target, "retry")
        live = self._live()
        key = (step.name, _label(target))
        if key not in self._bars:
            self._bars[key] = live.add_task(f"{step.name} {_label(target)}", total=total)
        live.update(self._bars[key], completed=done, total=total)

    def on_retry(
        self,
        step: Any,
        target: Any,
        result: Any,
        attempt: int,
        attempts: int,
        delay: float,
    ) -> None:
        """A failed attempt and the wait before the next: one line, and a countdown on a TTY."""
        message = getattr(result, "message", "")
        when = f"retrying in {format_duration(delay)}, attempt {attempt} of {attempts}"
        if self.tty:
            self._print(f"  [yellow]retry[/yellow]    {_label(target)}: {message}; {when}")
            live = self._live()
            self._finish_bar(step, target, "retry")
            self._bars[(step.name, _label(target), "retry")] = live.add_task(
                f"{step.name} {_label(target)}: attempt {attempt} of {attempts}",
                total=None,
                until=time.monotonic() + delay,
            )
        else:
            self._print(f"  retry    {step.name} {_label(target)}: {message}; {when}")

    def _finish_bar(self, step: Any, target: Any, *kind: str) -> None:
        bar = self._bars.pop((step.name, _label(target), *kind), None)
        if bar is not None and self._progress is not None:
            self._progress.remove_task(bar)
            if not self._bars:
                self._progress.stop()
                self._progress = None

    def on_run_start(self, playbook: Any, planned: Sequence[Any]) -> None:
        name = getattr(playbook, "name", "playbook")
        mode = " (check mode: nothing will be changed)" if self.check else ""
        self._print(f"[bold]run[/bold] {name}: {len(planned)} steps{mode}")

    def on_step_start(self, step: Any, targets: Sequence[Any]) -> None:
        self._print(f"[bold]step[/bold] {step.name} ({step.task}) on {len(targets)} target(s)")

    def on_target_start(self, step: Any, target: Any) -> None:
        if self.verbose:
            self._print(f"  … {_label(target)}")

    def on_result(
        self, step: Any, target: Any, result: Any, duration: float, attempts: int
    ) -> None:
        self._finish_bar(step, target)
        self._finish_bar(step, target, "retry")
        status = _status(result)
        style = STATUS_STYLE.get(status, "")
        retry = f" after {attempts} attempts" if attempts > 1 else ""
        message = getattr(result, "message", "")
        self._print(
            f"  [{style}]{status:<8}[/{style}] {_label(target)}: {message} ({duration:.1f}s{retry})"
            if self.tty
            else f"  {status:<8} {step.name} {_label(target)}: {message} ({duration:.1f}s{retry})"
        )

    def on_step_skipped(self, step: Any, reason: str) -> None:
        self._print(f"  [dim]skipped  {step.name}: {reason}[/dim]")

    def on_run_end(self, summary: Any) -> None:
        if self.tty:
            print_summary(summary, self.console)
        else:
            self._print(_totals(summary))


def print_summary(summary: Any, console: Console) -> None:
    """The end-of-run table: one row per (step, target), then totals and the exit code."""
    table = Table(
        title=f"run {summary.run_id}" if getattr(summary, "run_id", None) else "run summary"
    )
    for col in ("step", "target", "status", "message", "time"):
        table.add_column(col, overflow="fold")
    for row in summary.results:
        status = _status(row.result)
        style = STATUS_STYLE.get(status, "")
        table.add_row(
            row.step,
            row.target,
            f"[{style}]{status}[/{style}]",
            row.result.message,
            f"{row.duration:.1f}s",
        )
    console.print(table)
    console.print(_totals(summary))


def _totals(summary: Any) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in summary.counts.items() if n)
    return f"{counts or 'nothing ran'} in {summary.duration:.1f}s; exit code {summary.exit_code}"


class JsonReporter:
    """Prints nothing while running and one JSON document at the end."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def on_run_start(self, playbook: Any, planned: Sequence[Any]) -> None: ...
    def on_step_start(self, step: Any, targets: Sequence[Any]) -> None: ...
    def on_target_start(self, step: Any, target: Any) -> None: ...
    def on_result(
        self, step: Any, target: Any, result: Any, duration: float, attempts: int
    ) -> None: ...
    def on_step_skipped(self, step: Any, reason: str) -> None: ...
    def on_retry(self, *args: Any) -> None: ...

    def on_run_end(self, summary: Any) -> None:
        doc = {
            "run_id": summary.run_id,
            "status": str(summary.status),
            "exit_code": summary.exit_code,
            "duration": round(summary.duration, 3),
            "counts": {str(k): v for k, v in summary.counts.items()},
            "results": [
                {
                    "step": r.step,
                    "task": r.task,
                    "target": r.target,
                    "status": _status(r.result),
                    "message": r.result.message,
                    "metrics": {k: metric_value(v) for k, v in r.result.metrics.items()},
                    "details": r.result.details,
                    "duration": round(r.duration, 3),
                    "attempts": r.attempts,
                }
                for r in summary.results
            ],
        }
        write_json(doc, self.stream)


def write_json(doc: Any, stream: TextIO | None = None) -> None:
    (stream or sys.stdout).write(json.dumps(doc, indent=2, default=str, sort_keys=False) + "\n")


def print_table(
    rows: Iterable[dict[str, Any]],
    columns: Sequence[str],
    *,
    title: str | None = None,
    stream: TextIO | None = None,
    status_column: str | None = "status",
) -> None:
    """A listing as a table on a TTY or tab-separated plain lines otherwise."""
    rows = list(rows)
    stream = stream or sys.stdout
    if not is_tty(stream):
        stream.write("\t".join(columns) + "\n")
        for row in rows:
            stream.write("\t".join(_cell(row.get(c)) for c in columns) + "\n")
        return
    console = make_console(stream)
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        cells = []
        for col in columns:
            text = _cell(row.get(col))
            if col == status_column and text in STATUS_STYLE:
                text = f"[{STATUS_STYLE[text]}]{text}[/{STATUS_STYLE[text]}]"
            cells.append(text)
        table.add_row(*cells)
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def status_of(text: str) -> Status:
    return Status(text)
