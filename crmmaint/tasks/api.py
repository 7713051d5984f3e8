"""The task API: task modules declare their tasks with ``@task`` and get a ``TaskContext``.

It lives below the tasks (playbooks and the runner import it, never the other way round), and
``load_task_modules`` imports the shipped task modules explicitly. A declaration gives the task's name (``health.host``), the kinds of target it accepts, a typed
parameter schema and whether it honours check mode (every task must). Playbook validation reads
the schema to reject unknown or mistyped parameters before anything runs.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from crmmaint.assertions import parse_assertions
from crmmaint.units import (
    format_clock,
    format_elapsed,
    format_size,
    parse_duration,
    parse_percent,
    parse_share,
    parse_size,
    plural,
)

if TYPE_CHECKING:
    from crmmaint.inventory import Inventory, Target
    from crmmaint.journal import Journal
    from crmmaint.results import TaskResult
    from crmmaint.transport.base import Transport

#: Parameter types: Python types, or names of parse helpers for units.
_PARSERS: dict[str, Callable[[Any], Any]] = {
    "duration": parse_duration,
    "size": parse_size,
    "percent": parse_percent,
    "share": parse_share,
    "assertions": parse_assertions,
}


@dataclass(frozen=True)
class Param:
    """One parameter of a task. ``type`` is str/int/float/bool/list/dict or duration/size/percent/share
    (a percentage more than 0)/assertions (``crmmaint.assertions.parse_assertions``).

    ``check``: an optional test of the converted value that raises ``ValueError`` saying what
    is wrong (a key pattern, a URL, a range); it runs in ``convert``, so the playbook loader
    refuses a bad value at its file and line, before anything runs."""

    type: type | str
    default: Any = None
    required: bool = False
    help: str = ""
    choices: tuple[Any, ...] | None = None
    item_type: type | None = None
    check: Callable[[Any], None] | None = None

    def convert(self, value: Any) -> Any:
        """Check and convert a playbook value; ``ValueError`` says what is expected."""
        value = self._convert(value)
        if self.check is not None:
            self.check(value)
        return value

    def _convert(self, value: Any) -> Any:
        if isinstance(self.type, str):
            return _PARSERS[self.type](value)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is list and isinstance(value, str):
            value = [value]
        if isinstance(value, bool) and self.type is not bool:
            raise ValueError(f"expected {self.type.__name__}, got true/false")
        if not isinstance(value, self.type):
            raise ValueError(
                f"expected {self.type.__name__}, got {type(value).__name__} ({value!r:.40})"
            )
        if self.item_type is not None and isinstance(value, list):
            bad = [v for v in value if not isinstance(v, self.item_type)]
            if bad:
                raise ValueError(
                    f"expected a list of {self.item_type.__name__}, got {bad[0]!r:.40}"
                )
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(map(str, self.choices))}, got {value!r}")
        return value

    @property
    def type_name(self) -> str:
        return self.type if isinstance(self.type, str) else self.type.__name__


def positive(value: float | None) -> None:
    """A ``Param(check=…)`` for a count, a threshold or a timeout: above 0 (a count: at
    least 1); ``None`` (not set) passes."""
    if value is not None and value <= 0:
        raise ValueError(f"expected a value above 0, got {value:g}")


#: The ``repository`` parameter of every task that reads or writes backups.
REPOSITORY_PARAM = Param(
    str, help="repository name from the inventory (default: the default repository)"
)


@dataclass
class TaskContext:
    """Everything a task function gets: its target, validated parameters and the run's services."""

    target: Target
    inventory: Inventory
    params: dict[str, Any]
    check: bool
    journal: Journal | None
    run_id: int | None
    step: str
    transport_for: Callable[[Any], Transport]
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("crmmaint.tasks"))
    #: ``time.monotonic()`` at which the step's ``timeout`` expires; ``None``: no timeout.
    deadline: float | None = None
    #: Called with (bytes done, bytes expected or None, whether that total is an estimate)
    #: by long tasks, through a ``ByteMeter``; the reporter shows it.
    on_progress: Callable[[int, int | None, bool], None] | None = None
    #: What the task has learned so far (a drill's backup and scratch copy): the runner keeps
    #: it in the details of a result that ends in an error, a timeout or an interrupt.
    known: dict[str, Any] = field(default_factory=dict)
    #: The run's deadline (``--until``, ``--for``, the playbook's ``window: {length: …}``):
    #: ``time.monotonic()`` at which the window ends, and the same moment as a wall-clock
    #: time for messages; ``None``: the run has no end. Unlike the step's ``deadline`` it kills
    #: nothing: tasks start no work that would not end before it (``fits``).
    run_deadline: float | None = None
    run_ends: datetime | None = None

    def progress(self, done: int, total: int | None = None, *, estimated: bool = False) -> None:
        """Report how far a long task is (bytes), unthrottled: prefer ``meter``."""
        if self.on_progress is not None:
            self.on_progress(done, total, estimated)

    def meter(self, total: int | None = None, *, estimated: bool = False) -> ByteMeter:
        """A ``ByteMeter`` for one long transfer of this task: ``total`` bytes expected (``None``
        or 0: unknown), ``estimated`` when that total is a guess (the previous backup's size)."""
        return ByteMeter(self.on_progress, total, estimated=estimated)

    def time_left(self, cap: float | None = None) -> float | None:
        """Seconds until the step timeout, at most ``cap``: the ``timeout=`` to give transports.

        The runner cannot kill a hung task thread, so a task bounds its own commands with this.
        """
        if self.deadline is None:
            return cap
        left = max(0.001, self.deadline - time.monotonic())
        return left if cap is None else min(cap, left)

    def run_time_left(self) -> float | None:
        """Seconds until the run's deadline or the step's timeout, whichever comes first (0 when
        passed); ``None`` when neither is set."""
        ends = [d for d in (self.deadline, self.run_deadline) if d is not None]
        if not ends:
            return None
        return max(0.0, min(ends) - time.monotonic())

    def wont_fit(self, what: str, estimate: Estimate, *, after: float = 0.0) -> str | None:
        """Why work estimated at ``estimate`` would not end before the run's deadline or the
        step's timeout (a warning that says what, how long and by when), or ``None`` when it
        fits or nothing bounds the run. ``FIT_MARGIN`` of the time left is kept in reserve.
        ``after``: seconds of work that would come first (check mode, which runs nothing,
        adds up the estimates of what it would run, and so skips what a run would)."""
        left = self.run_time_left()
        if left is not None:
            left = max(0.0, left - after)
        if left is None or estimate.seconds <= left * (1 - FIT_MARGIN):
            return None
        if self.run_deadline is not None and (
            self.deadline is None or self.run_deadline <= self.deadline
        ):
            by = "the run's window ends"
            if self.run_ends is not None:
                by += f" at {format_clock(self.run_ends)}"
        else:
            by = "the step's timeout ends"
        return (
            f"{what} skipped: it would take about {format_elapsed(estimate.seconds)}"
            f" ({estimate.basis}) and {by} in {format_elapsed(left)}"
            f" ({FIT_MARGIN:.0%} of that kept in reserve)"
        )

    def estimate(self, operation: str, size: int, default_rate: float) -> Estimate:
        """How long ``operation`` (``"reindex:public.deals_pkey"``, or a task-wide name) on
        ``size`` bytes of this target will take: at the slowest rate of its last
        ``ESTIMATE_RUNS`` recorded runs (``record_duration``, kept in the journal), else at the
        slowest rate recorded for any operation of the same kind (the text before ``:``) on
        this target, else at ``default_rate`` bytes per second (the caller's documented guess)."""
        kind = operation.split(":", 1)[0]
        for key, what in ((operation, "its"), (kind, f"{kind} on this target:")):
            rates = self.state_get(f"rate:{key}") or []
            if rates:
                rate = min(rates)
                return Estimate(
                    size / rate if rate > 0 else 0.0,
                    f"{format_size(size)} at {format_size(rate)}/s, the slowest of"
                    f" {what} last {plural(len(rates), 'run')}",
                )
        return Estimate(
            size / default_rate,
            f"{format_size(size)} at an assumed {format_size(default_rate)}/s, no past run",
        )

    def record_duration(self, operation: str, size: int, seconds: float) -> None:
        """Remember that ``operation`` took ``seconds`` on ``size`` bytes (for ``estimate``:
        under the operation and under its kind; not in check mode, and not for work too small
        or quick to say anything about a rate)."""
        if size < MIN_MEASURED_SIZE or seconds < MIN_MEASURED_SECONDS:
            return
        rate = size / seconds
        for key in {operation, operation.split(":", 1)[0]}:
            rates = list(self.state_get(f"rate:{key}") or [])
            self.state_set(f"rate:{key}", [*rates, rate][-ESTIMATE_RUNS:])

    def read_only_details(self, **details: Any) -> dict[str, Any]:
        """The ``details`` of a task that only reads: ``read_only`` and ``check_mode`` set (it
        ran the same in check mode), plus ``details``."""
        return {"read_only": True, "check_mode": self.check, **details}

    @property
    def transport(self) -> Transport:
        """The transport of the host that owns the target (pooled for the run)."""
        return self.transport_for(self.target.host)

    def state_get(self, key: str, default: Any = None) -> Any:
        """Per-target state remembered across runs (log offsets, rotation cursors)."""
        if self.journal is None:
            return default
        return self.journal.state_get(self._state_key(key), default)

    def state_set(self, key: str, value: Any) -> None:
        if self.journal is not None and not self.check:
            self.journal.state_set(self._state_key(key), value)

    def _state_key(self, key: str) -> str:
        return f"{self.target.kind}:{self.target.name}:{key}"


class ByteMeter:
    """Counts the bytes of one long transfer and passes them on to ``report`` (``(done,
    total, estimated)``) at most once per ``interval`` seconds, so a task may count every chunk:
    a call costs a lock and a clock read, memory stays a few integers. Thread-safe (a parallel
    restore reads its byte ranges on several threads).

    An exact ``total`` caps what is reported (ranges read twice at their seams do not push a
    restore past 100%); an estimated one is reported as given and the reporter grows it.
    """

    def __init__(
        self,
        report: Callable[[int, int | None, bool], None] | None,
        total: int | None = None,
        *,
        estimated: bool = False,
        interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.report = report
        self.total = total or None  # an empty previous backup is no estimate
        self.estimated = estimated and self.total is not None
        self.interval = interval
        self.done = 0
        self._clock = clock
        self._next = float("-inf")
        self._sent: int | None = None
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        """``n`` more bytes moved."""
        with self._lock:
            due = self._moved(self.done + n)
        if due is not None:
            self._send(due)

    def set(self, done: int) -> None:
        """``done`` bytes moved so far (for callers that count themselves)."""
        with self._lock:
            due = self._moved(done)
        if due is not None:
            self._send(due)

    def flush(self) -> None:
        """Report the count now, whatever the time (the transfer is over: the bar shows all
        of it while the task finishes)."""
        with self._lock:
            self._next = float("-inf")
            due = self._moved(self.done)
        if due is not None:
            self._send(due)

    def _moved(self, done: int) -> int | None:
        """Record ``done``; the count to report now, or ``None`` when it is not yet time (an
        exact total, once reached, is reported at once)."""
        self.done = done
        if self.report is None:
            return None
        now = self._clock()
        shown = done if self.total is None or self.estimated else min(done, self.total)
        reached = shown == self.total and self._sent != shown
        if now < self._next and not reached:
            return None
        self._next = now + self.interval
        self._sent = shown
        return shown

    def _send(self, done: int) -> None:
        # Outside the lock: the other reading threads do not wait for the reporter.
        if self.report is not None:
            self.report(done, self.total, self.estimated)


@dataclass(frozen=True)
class Estimate:
    """How long a piece of work should take (``seconds``) and what that figure rests on
    (``basis``, said in a skip warning: past runs, or the size at an assumed rate)."""

    seconds: float
    basis: str


#: Share of the time left that ``TaskContext.wont_fit`` keeps in reserve (estimates err).
FIT_MARGIN = 0.1
#: Past runs an estimate looks at (their slowest rate: the estimate errs long).
ESTIMATE_RUNS = 5
#: Work below these sizes (bytes) and times (seconds) says little of a rate: not recorded.
MIN_MEASURED_SIZE = 1 << 20
MIN_MEASURED_SECONDS = 0.5


TaskFunc = Callable[[TaskContext], "TaskResult"]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    func: TaskFunc
    targets: tuple[str, ...]
    params: dict[str, Param]
    check_mode: bool
    help: str

    def validate_params(self, given: dict[str, Any]) -> dict[str, Any]:
        """Apply defaults and convert; raises ``KeyError``/``ValueError`` (callers add the place)."""
        unknown = set(given) - set(self.params)
        if unknown:
            raise KeyError(sorted(unknown)[0])
        out: dict[str, Any] = {}
        for name, param in self.params.items():
            if name in given and given[name] is not None:
                try:
                    out[name] = param.convert(given[name])
                except ValueError as exc:
                    raise ValueError(f"parameter {name!r}: {exc}") from exc
            elif param.required:
                raise ValueError(
                    f"parameter {name!r} is required ({param.help or param.type_name})"
                )
            else:
                out[name] = param.default
        return out


REGISTRY: dict[str, TaskSpec] = {}


def task(
    name: str,
    *,
    targets: tuple[str, ...] | str,
    params: dict[str, Param] | None = None,
    check_mode: bool = True,
    help: str = "",
) -> Callable[[TaskFunc], TaskFunc]:
    """Register a task function under ``name`` (``module.verb``)."""
    kinds = (targets,) if isinstance(targets, str) else tuple(targets)

    def decorate(func: TaskFunc) -> TaskFunc:
        if name in REGISTRY and REGISTRY[name].func is not func:
            raise RuntimeError(f"task {name!r} registered twice")
        if not check_mode:
            raise RuntimeError(f"task {name!r}: every task must support check mode")
        REGISTRY[name] = TaskSpec(
            name=name,
            func=func,
            targets=kinds,
            params=dict(params or {}),
            check_mode=check_mode,
            help=help or _first_line(func.__doc__),
        )
        return func

    return decorate


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def load_task_modules() -> dict[str, TaskSpec]:
    """Import every shipped task module (each ``crmmaint/tasks/*.py`` but this one) so their
    ``@task`` declarations register; returns the registry. Idempotent."""
    import crmmaint.tasks as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name != "api":
            importlib.import_module(f"{package.__name__}.{info.name}")
    return REGISTRY


def get_task(name: str) -> TaskSpec | None:
    load_task_modules()
    return REGISTRY.get(name)
