"""User-facing output writers: rich tables and live status on a TTY, plain lines otherwise, JSON.

The runner calls a ``Reporter``; these writers turn its callbacks into what a sysadmin reads. No
writer prints anything a task did not put in its result, so secrets cannot leak through here.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Task as ProgressTask
from rich.table import Column, Table
from rich.text import Text

from crmmaint.results import NOT_STARTED, Status
from crmmaint.units import format_countdown, format_duration, format_size, metric_value, plural

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


def _without_target(message: str, target: Any) -> str:
    """A result's message without a leading ``TARGET: `` the line already shows (errors name
    their host or database themselves: ``local: command … did not finish``)."""
    for name in {_label(target), getattr(target, "name", None)}:
        if name and message.startswith(f"{name}: "):
            return message[len(name) + 2 :]
    return message


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
        super().__init__(table_column=column.get_table_column())
        self.column = column

    def render(self, task: ProgressTask) -> Any:
        return Text("") if "until" in task.fields else self.column.render(task)


class _BytesColumn(ProgressColumn):
    """``146 MiB / 1.2 GiB`` (or just the bytes done without a total), in the IEC units every
    other size crmmaint prints uses (rich's own columns count in decimal MB)."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: ProgressTask) -> Text:
        done = format_size(max(task.completed, 0))
        return Text(done if task.total is None else f"{done} / {format_size(task.total)}")


class _SpeedColumn(ProgressColumn):
    """Throughput in IEC units per second (``48.2 MiB/s``): rich's recent rate, else (a transfer
    too short for two samples) the average since the start; blank before any time has passed."""

    def render(self, task: ProgressTask) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None and task.elapsed:
            speed = task.completed / task.elapsed
        return Text("" if speed is None else f"{format_size(speed)}/s", style="progress.data.speed")


class _EstimateColumn(ProgressColumn):
    """``estimated`` after the byte counts when the total is a guess (the last backup's size)."""

    def render(self, task: ProgressTask) -> Text:
        return Text("estimated" if task.fields.get("estimated") else "", style="dim")


class _TimeColumn(ProgressColumn):
    """Time left when the total is known (``0:01:12 left``), time elapsed otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self._left = TimeRemainingColumn()
        self._elapsed = TimeElapsedColumn()

    def render(self, task: ProgressTask) -> Text:
        if task.total is None:
            return self._elapsed.render(task)
        text = self._left.render(task)
        text.append(" left", style="dim")
        return text


#: A piped run prints a transfer's progress at most once per this many seconds, and nothing
#: for a transfer that ends sooner: a cron mail or a log gets a line per half minute of a long
#: backup, restore or drill (proof that it moves), never a line per chunk.
PLAIN_PROGRESS_EVERY = 30.0


def grown_total(done: int, total: int) -> int:
    """The total a bar shows for an estimated transfer that has moved ``done`` bytes against
    an estimate (or earlier grown total) of ``total``: ``total`` until ``done`` passes it,
    then ``done`` plus a tenth, so a dump bigger than its estimate keeps a moving bar and an
    ETA instead of a full bar stuck at zero. Never below ``done`` nor ``total``."""
    if done <= total:
        return total
    return done + max(done // 10, 1)


def progress_line(label: str, done: int, total: int | None, estimated: bool, seconds: float) -> str:
    """The plain line a piped run prints for a transfer ``seconds`` into it: bytes moved, of
    how many (``about`` for an estimate, and no share or ETA once the estimate is passed), the
    average rate and the time left at that rate."""
    rate = done / seconds if seconds > 0 else 0.0
    text = format_size(done)
    if total and estimated and done >= total:
        text += f", past the estimated {format_size(total)}"
    elif total:
        text += f" of {'about ' if estimated else ''}{format_size(total)} ({done / total:.0%})"
    text += f", {format_size(rate)}/s"
    if total and rate > 0 and done < total:
        text += f", about {format_countdown((total - done) / rate)} left"
    return f"  progress {label}: {text}"


@dataclass
class _Transfer:
    """What a reporter keeps of one target's transfer: when it started, when a piped run
    prints its next line, and the total its bar shows (an estimate, grown once passed)."""

    started: float
    next_line: float
    shown: int | None = None


class ConsoleReporter:
    """Live status line per target and a summary table at the end.

    On a TTY: rich styling; otherwise one plain line per event, easy to grep and to log.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        verbose: bool = False,
        check: bool = False,
        plain_progress: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``plain_progress``: when not on a TTY, print a long transfer's progress every
        ``PLAIN_PROGRESS_EVERY`` seconds (else nothing); ``clock``: seconds, for those lines."""
        self.stream = stream or sys.stdout
        self.check = check
        self.console = make_console(self.stream)
        self.tty = is_tty(self.stream)
        self.verbose = verbose
        # Reentrant: progress comes from task threads and draws under it, printing a line
        # (which takes it again); an interrupted run's ``close`` comes from the main thread.
        self._lock = threading.RLock()
        self._started = time.monotonic()
        self._progress: Progress | None = None
        self._bars: dict[tuple[str, ...], TaskID] = {}
        self.plain_progress = plain_progress
        self._clock = clock
        self._transfers: dict[tuple[str, str], _Transfer] = {}
        # Targets whose result is in: a task thread the step's timeout abandoned may still
        # report bytes, which must not bring a bar back.
        self._ended: set[tuple[str, str]] = set()
        self._closed = False

    def _print(self, text: str) -> None:
        with self._lock:
            self.console.print(text)

    def _live(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("  {task.description}"),
                _UnlessWaiting(BarColumn(bar_width=24)),
                _UnlessWaiting(_BytesColumn()),
                _EstimateColumn(),
                _UnlessWaiting(_SpeedColumn()),
                _UnlessWaiting(_TimeColumn()),
                _CountdownColumn(),
                console=self.console,
                transient=True,
                # What goes to a terminal meanwhile (log warnings on stderr) is printed above
                # the bar; a stream that is not a terminal keeps its own output.
                redirect_stdout=is_tty(sys.stdout),
                redirect_stderr=is_tty(sys.stderr),
            )
            self._progress.start()
        return self._progress

    def on_progress(
        self, step: Any, target: Any, done: int, total: int | None, estimated: bool = False
    ) -> None:
        """Bytes moved by a long task: on a TTY a live bar with total, throughput and time
        left (an estimated total is marked so and grows when passed, ``grown_total``);
        otherwise a ``progress_line`` every ``PLAIN_PROGRESS_EVERY`` seconds, or nothing."""
        with self._lock:
            if not self._closed:
                self._show_progress(step, target, done, total, estimated)

    def _show_progress(
        self, step: Any, target: Any, done: int, total: int | None, estimated: bool
    ) -> None:
        key = (step.name, _label(target))
        if key in self._ended:
            return
        now = self._clock()
        transfer = self._transfers.get(key)
        if transfer is None:
            transfer = _Transfer(started=now, next_line=now + PLAIN_PROGRESS_EVERY)
            self._transfers[key] = transfer
        if total is not None and estimated:
            transfer.shown = grown_total(done, max(total, transfer.shown or 0))
        else:
            transfer.shown = total
        if not self.tty:
            if self.plain_progress and now >= transfer.next_line:
                transfer.next_line = now + PLAIN_PROGRESS_EVERY
                label = f"{step.name} {_label(target)}"
                self._print(progress_line(label, done, total, estimated, now - transfer.started))
            return
        self._finish_bar(step, target, "retry")
        live = self._live()
        if key not in self._bars:
            self._bars[key] = live.add_task(
                f"{step.name} {_label(target)}",
                total=transfer.shown,
                completed=done,
                estimated=estimated,
            )
            live.refresh()  # drawn now, even if the transfer ends before the next redraw
        live.update(self._bars[key], completed=done, total=transfer.shown)

    def close(self) -> None:
        """Take any live bar off the terminal (and give the cursor back) for good: progress
        reported later (by a task thread still winding down) is not shown. Idempotent; for an
        interrupted run too, which ends without ``on_run_end``."""
        with self._lock:
            self._closed = True
            self._stop_bars()

    def _stop_bars(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None
            self._bars.clear()
            self._transfers.clear()

    def _end_transfer(self, step: Any, target: Any) -> None:
        """The attempt that moved bytes for ``target`` is over: its bar goes."""
        self._transfers.pop((step.name, _label(target)), None)
        self._finish_bar(step, target)

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
        self._end_transfer(step, target)  # the next attempt starts its own
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
        name = shown(getattr(playbook, "name", "playbook"))
        mode = " (check mode: nothing will be changed)" if self.check else ""
        self._print(f"[bold]run[/bold] {name}: {plural(len(planned), 'step')}{mode}")

    def on_step_start(self, step: Any, targets: Sequence[Any]) -> None:
        self._print(
            f"[bold]step[/bold] {shown(step.name)} ({shown(step.task)}) on {plural(len(targets), 'target')}"
        )

    def on_target_start(self, step: Any, target: Any) -> None:
        self._ended.discard((step.name, _label(target)))
        if self.verbose:
            self._print(f"  … {shown(_label(target))}")

    def on_result(
        self, step: Any, target: Any, result: Any, duration: float, attempts: int
    ) -> None:
        self._ended.add((step.name, _label(target)))
        self._end_transfer(step, target)
        self._finish_bar(step, target, "retry")
        status = _status(result)
        style = STATUS_STYLE.get(status, "")
        retry = f" after {attempts} attempts" if attempts > 1 else ""
        message = shown(_without_target(getattr(result, "message", ""), target))
        label, name = shown(_label(target)), shown(step.name)
        self._print(
            f"  [{style}]{status:<8}[/{style}] {label}: {message} ({duration:.1f}s{retry})"
            if self.tty
            else f"  {status:<8} {name} {label}: {message} ({duration:.1f}s{retry})"
        )

    def on_step_skipped(self, step: Any, reason: str) -> None:
        if reason.startswith(NOT_STARTED):  # the run's window ended before it: a warning
            style = STATUS_STYLE["warning"]
            self._print(f"  [{style}]warning[/{style}]  {shown(step.name)}: {shown(reason)}")
            return
        self._print(f"  [dim]skipped  {shown(step.name)}: {shown(reason)}[/dim]")

    def on_run_end(self, summary: Any) -> None:
        self._stop_bars()
        if self.tty:
            print_summary(summary, self.console)
        else:
            self._print(_totals(summary))


class TransferProgressReporter(ConsoleReporter):
    """Only the live bars of long transfers, on a TTY (stderr by default), nothing else and
    nothing when not a TTY: what ``crmmaint restore`` shows while it works. Its stdout stays
    the result line or the one JSON document, and its error the one ``crmmaint: error:``
    line, printed after the bar is gone."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream or sys.stderr, plain_progress=False)

    def on_run_start(self, playbook: Any, planned: Sequence[Any]) -> None: ...
    def on_step_start(self, step: Any, targets: Sequence[Any]) -> None: ...
    def on_step_skipped(self, step: Any, reason: str) -> None: ...

    def on_retry(self, step: Any, target: Any, *args: Any) -> None:
        self._end_transfer(step, target)

    def on_result(
        self, step: Any, target: Any, result: Any, duration: float, attempts: int
    ) -> None:
        self._ended.add((step.name, _label(target)))
        self._end_transfer(step, target)

    def on_run_end(self, summary: Any) -> None:
        self._stop_bars()


def print_summary(summary: Any, console: Console) -> None:
    """The end-of-run table on a terminal: one row per (step, target) with its status and
    time, then totals and the exit code. Messages are not repeated: each was said on its
    result line (a failure said twice is read as two)."""
    table = Table(
        title=f"run {summary.run_id}" if getattr(summary, "run_id", None) else "run summary",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col in ("step", "target", "status", "time"):
        table.add_column(col, overflow="fold")
    for row in summary.results:
        status = _status(row.result)
        style = STATUS_STYLE.get(status, "")
        table.add_row(
            shown(row.step),
            shown(row.target),
            f"[{style}]{status}[/{style}]",
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
    droppable: Sequence[str] = (),
) -> None:
    """A listing as a table on a TTY or tab-separated plain lines otherwise (every column).

    On a TTY, the columns in ``droppable`` are left out, in that order, while the table
    would be wider than the terminal (``backups list`` on 80 columns keeps ids and sources
    whole and leaves out host, new bytes, dedup and duration); what still does not fit
    wraps at spaces, or is folded."""
    rows = list(rows)
    stream = stream or sys.stdout
    if not is_tty(stream):
        stream.write("\t".join(columns) + "\n")
        for row in rows:
            stream.write("\t".join(tsv_cell(_cell(row.get(c))) for c in columns) + "\n")
        return
    console = make_console(stream)
    columns = list(columns)

    def width(col: str, *, wrapped: bool = False) -> int:
        """The column's width on one line, or (``wrapped``) at its longest word."""
        cells = [_cell(row.get(col)) for row in rows]
        words = [w for cell in cells for w in cell.split()] if wrapped else cells
        return max([len(col), *map(len, words)]) + 3

    def fits(cols: list[str]) -> bool:  # names whole, the others wrapped
        return sum(width(c, wrapped=c not in _WHOLE) for c in cols) <= console.width

    for col in droppable:
        if sum(width(c) for c in columns) <= console.width:
            break
        if col in columns and not fits(columns):
            columns.remove(col)
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    # A backup id is copied whole into `restore ID`, a source name read as one word: kept on
    # one line where the terminal leaves the other columns some room (they wrap at spaces);
    # folded on a very narrow one.
    whole = [c for c in columns if c in _WHOLE]
    room = fits(columns)
    for col in columns:
        table.add_column(
            col,
            overflow="fold",
            no_wrap=room and col in whole,
            min_width=width(col, wrapped=True) - 3 if room else None,  # wrap at spaces
        )
    for row in rows:
        cells = []
        for col in columns:
            text = escape(visible(_cell(row.get(col)), newlines=True))
            if col == status_column and text in STATUS_STYLE:
                text = f"[{STATUS_STYLE[text]}]{text}[/{STATUS_STYLE[text]}]"
            cells.append(text)
        table.add_row(*cells)
    console.print(table)


#: Columns of names a reader copies or reads as one word (a backup id into `restore ID`):
#: kept on one line where the terminal leaves the others room to wrap at spaces.
_WHOLE = frozenset({"id", "backup", "source", "target", "task"})

#: TSV's own characters, escaped as in PostgreSQL's COPY text format, so one row stays
#: one line and one cell one field whatever a name or message holds.
_TSV_ESCAPES = {ord("\\"): "\\\\", ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}


def visible(text: str, *, newlines: bool = False) -> str:
    """``text`` with control and format characters (a newline unless ``newlines``, an escape
    sequence, U+202E that turns a line around) shown as ``\\xNN`` / ``\\uNNNN``, for a
    terminal or a log."""
    if text.isprintable():
        return text
    return "".join(
        ch
        if ch.isprintable() or ch == " " or (newlines and ch == "\n")
        else f"\\x{ord(ch):02x}"
        if ord(ch) < 0x100
        else f"\\u{ord(ch):04x}"
        for ch in text
    )


def shown(value: Any) -> str:
    """Text from outside (a name, a log line in a message, a server's error) for a line the
    console prints: control characters shown as escapes (a log line's ESC[2J must not clear
    the operator's screen), and rich's markup brackets taken literally."""
    return escape(visible(str(value)))


def tsv_cell(text: str) -> str:
    """One TSV field: backslash, tab, newline and carriage return escaped (``\\t`` …), any
    other control or format character shown by ``visible``."""
    return visible(text.translate(_TSV_ESCAPES))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def status_of(text: str) -> Status:
    return Status(text)
