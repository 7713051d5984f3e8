"""The runner: execute a planned playbook, step by step, targets in parallel, into the journal.

Orchestration lives here once: a bounded thread pool per step (``forks``), a timeout and retries
with exponential backoff per target, ``on_failure`` between steps, one pooled transport per host
for the whole run (a ``crmmaint.transport.pool.TransportPool``), and every result to the journal
and the ``Reporter``. Tasks only return a ``TaskResult``; an exception becomes a FAILED result,
never a crashed run.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from crmmaint.errors import (
    INTERNAL_ERROR_EXIT,
    OUTPUT_LOSS_SAID,
    ConfigError,
    CrmMaintError,
    OutputWriteError,
    os_reason,
)
from crmmaint.interrupts import (
    HOLD_AFTER_RUN,
    STOPPING,
    HeldInterrupts,
    hold_interrupts,
    release_interrupts,
)
from crmmaint.inventory import Host, Inventory, Target
from crmmaint.playbook.model import Playbook, Step
from crmmaint.playbook.planner import PlannedStep
from crmmaint.results import NOT_STARTED, Status, TaskResult, worst
from crmmaint.tasks.api import TaskContext
from crmmaint.transport.base import CLEANUP_GRACE, DeadlineTransport, Transport

# Transport selection and per-run pooling live in crmmaint.transport.pool; the names stay
# importable from here.
from crmmaint.transport.pool import TransportFactory as TransportFactory
from crmmaint.transport.pool import TransportPool
from crmmaint.transport.pool import default_transport_factory as default_transport_factory
from crmmaint.units import format_clock

if TYPE_CHECKING:
    from crmmaint.journal import Journal

log = logging.getLogger(__name__)

#: Longest wait between two attempts, however many retries a step has.
MAX_RETRY_DELAY = 600.0

#: How long a task whose commands were killed may take to begin removing what it made (its
#: cleanup then has ``CLEANUP_GRACE``); one that has not by then is not waited for.
NOTICE_GRACE = 2.0

#: Why an attempt's commands are killed, in log lines and refusals.
TIMED_OUT = "its step timed out"
INTERRUPTED_RUN = "the run was interrupted"


class RunInterrupted(KeyboardInterrupt):
    """A run ended by Ctrl-C or SIGTERM, saying what it cut short.

    ``step``: the step under way; ``targets``: labels of its targets that had not finished;
    ``run_id``: the journal's run (recorded as interrupted), ``None`` without a journal.
    """

    def __init__(self, step: str, targets: list[str]) -> None:
        super().__init__(step)
        self.step = step
        self.targets = targets
        self.run_id: int | None = None

    def describe(self) -> str:
        """One line for the operator, e.g. ``step 'backup databases' cut short on crm@db1``."""
        where = f" on {', '.join(self.targets)}" if self.targets else ""
        journaled = f"; run {self.run_id} is journaled as interrupted" if self.run_id else ""
        return f"step {self.step!r} cut short{where}{journaled}"


# --- reporting -------------------------------------------------------------------------------


class Reporter:
    """What the runner tells its audience; this base does nothing, writers override what they need.

    The runner serialises the calls (never two at once), though some come from worker threads.
    """

    def on_run_start(self, playbook: Playbook, planned: Sequence[PlannedStep]) -> None:
        """Before the first step."""

    def on_step_start(self, step: Step, targets: Sequence[Target]) -> None:
        """A step that runs is about to start on ``targets``."""

    def on_target_start(self, step: Step, target: Target) -> None:
        """A worker picked up ``target`` (first attempt)."""

    def on_result(
        self, step: Step, target: Target, result: TaskResult, duration: float, attempts: int
    ) -> None:
        """The final result of one target, after retries."""

    def on_retry(
        self,
        step: Step,
        target: Target,
        result: TaskResult,
        attempt: int,
        attempts: int,
        delay: float,
    ) -> None:
        """An attempt failed with ``result``; attempt number ``attempt`` of ``attempts`` starts
        in ``delay`` seconds (the run is silent meanwhile unless a writer says so)."""

    def on_step_skipped(self, step: Step, reason: str) -> None:
        """A step does not run (``when``, ``--limit``, or an earlier failure)."""

    def on_progress(
        self, step: Step, target: Target, done: int, total: int | None, estimated: bool
    ) -> None:
        """A long task on ``target`` moved ``done`` bytes of ``total`` (``None``: unknown;
        ``estimated``: a guess that may be exceeded); called a few times a second at most."""

    def on_run_end(self, summary: RunSummary) -> None:
        """After the last step, with the journal already updated."""


class MultiReporter(Reporter):
    """Sends every callback to several reporters in turn (console and JSON, say)."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def on_run_start(self, playbook: Playbook, planned: Sequence[PlannedStep]) -> None:
        for reporter in self.reporters:
            reporter.on_run_start(playbook, planned)

    def on_step_start(self, step: Step, targets: Sequence[Target]) -> None:
        for reporter in self.reporters:
            reporter.on_step_start(step, targets)

    def on_target_start(self, step: Step, target: Target) -> None:
        for reporter in self.reporters:
            reporter.on_target_start(step, target)

    def on_result(
        self, step: Step, target: Target, result: TaskResult, duration: float, attempts: int
    ) -> None:
        for reporter in self.reporters:
            reporter.on_result(step, target, result, duration, attempts)

    def on_retry(
        self,
        step: Step,
        target: Target,
        result: TaskResult,
        attempt: int,
        attempts: int,
        delay: float,
    ) -> None:
        for reporter in self.reporters:
            reporter.on_retry(step, target, result, attempt, attempts, delay)

    def on_step_skipped(self, step: Step, reason: str) -> None:
        for reporter in self.reporters:
            reporter.on_step_skipped(step, reason)

    def on_progress(
        self, step: Step, target: Target, done: int, total: int | None, estimated: bool
    ) -> None:
        for reporter in self.reporters:  # optional: a writer that shows no progress lacks it
            if (method := getattr(reporter, "on_progress", None)) is not None:
                method(step, target, done, total, estimated)

    def on_run_end(self, summary: RunSummary) -> None:
        for reporter in self.reporters:
            reporter.on_run_end(summary)


class _SerialReporter:
    """Calls the real reporter under a lock; a failing reporter is logged, not fatal. When the
    reader of its output goes away (``crmmaint run daily | head -1``) it is told nothing more,
    and the run goes on to its end and its journal row (a maintenance run is not abandoned
    halfway because nobody reads its report)."""

    def __init__(self, reporter: Any) -> None:
        self._reporter = reporter
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, name: str, *args: Any) -> None:
        method = getattr(self._reporter, name, None)
        if method is None:
            return
        with self._lock:
            if self._closed:
                return
            try:
                method(*args)
            except (BrokenPipeError, SystemExit):  # rich ends with SystemExit on a closed pipe
                self._closed = True
                log.info("the output's reader went away; the run goes on without a report")
            except OutputWriteError as exc:  # `> /dev/full`: said once, without a traceback
                self._closed = True
                OUTPUT_LOSS_SAID.set()
                log.warning(
                    "the output cannot be written (%s); the run goes on without a report",
                    os_reason(exc.errno_error),
                )
            except Exception:
                log.warning(
                    "reporter %s.%s failed", type(self._reporter).__name__, name, exc_info=True
                )


# --- results ---------------------------------------------------------------------------------


@dataclass
class TargetResult:
    """The outcome of one step on one target, as journaled (``target`` is its label)."""

    step: str
    task: str
    target: str
    kind: str
    host: str | None
    result: TaskResult
    started: float
    duration: float
    attempts: int

    @property
    def status(self) -> Status:
        return self.result.status


@dataclass
class RunSummary:
    """Everything a run produced; ``exit_code`` is what the CLI exits with."""

    run_id: int | None
    playbook: str
    status: Status
    results: list[TargetResult]
    duration: float
    check: bool = False
    stopped_after: str | None = None
    #: The run is a command acting on one target (``crmmaint restore``, ``verify`` …): its
    #: failure's own code is the exit code (``exit_code``).
    one_target: bool = False

    @property
    def counts(self) -> dict[Status, int]:
        """How many results have each status (every status present, zeros included)."""
        out = {status: 0 for status in Status}
        for row in self.results:
            out[row.status] += 1
        return out

    @property
    def exit_code(self) -> int:
        """0: ok, changed or skipped; 1: warnings; 2: failures. A command's run
        (``one_target``: backup, verify, prune, restore) whose failed targets share one
        documented code (``exit_code`` in each failed result's details: 4 transport, 5
        database, 6 repository, 7 lock, 8 keys, 9 integrity) exits with it, as
        ``inventory check --connect`` does (``reachability.exit_code``); failures of
        different kinds are 2. ``run`` keeps 2 for any failure."""
        if self.status == Status.FAILED:
            if not self.one_target:
                return 2
            codes = {
                int(row.result.details.get("exit_code") or 2)
                for row in self.results
                if row.kind != "step" and row.status == "failed"
            }
            return codes.pop() if len(codes) == 1 else 2  # none: 2 as well
        if self.status == Status.WARNING:
            return 1
        return 0


# --- the runner ------------------------------------------------------------------------------


class Runner:
    """Runs planned steps in order; each step's targets in parallel, at most ``forks`` at once."""

    def __init__(
        self,
        inventory: Inventory,
        journal: Journal | None,
        *,
        forks: int = 10,
        check: bool = False,
        transport_factory: TransportFactory | None = None,
        reporter: Reporter | Any | None = None,
        argv: list[str] | None = None,
        one_target: bool = False,
        ends_at: datetime | None = None,
    ) -> None:
        if forks < 1:
            raise ConfigError(f"forks must be at least 1, not {forks}")
        self.inventory = inventory
        self.journal = journal
        self.forks = forks
        self.check = check
        self.transport_factory = transport_factory
        self.argv = argv
        self.one_target = one_target
        #: When the run's window ends (``--until``, ``--for``, the playbook's window length):
        #: no step or target starts after it, and tasks fit their work before it.
        self.ends_at = ends_at
        self._run_deadline: float | None = None
        self._report = _SerialReporter(reporter if reporter is not None else Reporter())
        self._abort = threading.Event()
        #: What each attempt's task has learned so far (``TaskContext.known``), by (step,
        #: target): kept in the result of an attempt that an interrupt cut short.
        self._known: dict[tuple[str, str], dict[str, Any]] = {}
        #: transports of the attempts under way: an interrupt kills what they started
        self._attempts: set[_AttemptTransports] = set()
        self._attempts_lock = threading.Lock()
        self._run_id: int | None = None
        self._transports: TransportPool | None = None

    def run(self, playbook: Playbook, planned: Sequence[PlannedStep]) -> RunSummary:
        """Execute ``planned`` (from ``plan``); returns the summary, raises only on interrupt."""
        started = time.monotonic()
        self._abort.clear()
        STOPPING.clear()
        self._transports = TransportPool(self.transport_factory)
        self._run_id = None
        self._run_deadline = None
        if self.ends_at is not None:
            left = (self.ends_at - datetime.now(self.ends_at.tzinfo)).total_seconds()
            self._run_deadline = started + left
        results: list[TargetResult] = []
        stopped_after: str | None = None
        # Ctrl-C and SIGTERM wait while the run is entered in the journal: from the row on,
        # they end the run inside the try below, which records it as interrupted (an
        # interrupt just after the row was written left a run "running" for ever).
        deferred = _defer_interrupts()
        try:
            self._run_id = self._start(playbook)
            _resume_interrupts(deferred)  # one that came meanwhile is raised here
            log.info(
                "run %s: playbook %s, %d step(s)%s",
                self._run_id,
                playbook.name,
                len(planned),
                " in check mode" if self.check else "",
            )
            self._report("on_run_start", playbook, planned)
            for item in planned:
                if stopped_after is not None:
                    reason = f"stopped after failure of step {stopped_after!r}"
                    results.append(self._skip(item, reason))
                elif item.skip_reason is not None:
                    results.append(self._skip(item, item.skip_reason))
                elif self._window_ended():  # a warning: work the window was for did not run
                    results.append(self._skip(item, self._window_ended(), warn=True))
                else:
                    step_results = self._run_step(item)
                    results.extend(step_results)
                    failed = any(r.status == Status.FAILED for r in step_results)
                    if failed and item.step.on_failure == "stop":
                        log.info("step %s failed; stopping (on_failure: stop)", item.name)
                        stopped_after = item.name
            summary = RunSummary(
                run_id=self._run_id,
                playbook=playbook.name,
                status=worst([r.status for r in results]),
                results=results,
                duration=time.monotonic() - started,
                check=self.check,
                stopped_after=stopped_after,
                one_target=self.one_target,
            )
            # Finished: from here the run's outcome stands (``HOLD_AFTER_RUN``).
            finished = _defer_interrupts()
            if self.journal is not None and self._run_id is not None:
                self.journal.finish_run(self._run_id, summary.status)
        except BaseException as exc:
            _resume_interrupts(deferred)
            self._abort.set()
            STOPPING.set()  # waits that are not commands (a lock) end too
            if isinstance(exc, RunInterrupted):
                exc.run_id = self._run_id
            if self.journal is not None and self._run_id is not None:
                from crmmaint.journal import INTERRUPTED

                ended = INTERRUPTED if isinstance(exc, KeyboardInterrupt) else Status.FAILED
                self.journal.finish_run(self._run_id, ended)
            raise
        finally:
            self._transports.close_all()
        if not HOLD_AFTER_RUN.is_set():
            _resume_interrupts(finished)
        log.info("run %s finished: %s in %.1fs", self._run_id, summary.status, summary.duration)
        self._report("on_run_end", summary)
        return summary

    def _window_ended(self) -> str | None:
        """Why nothing more starts (the run's deadline has passed), or ``None``."""
        if self._run_deadline is None or time.monotonic() < self._run_deadline:
            return None
        assert self.ends_at is not None
        return f"the run's window ended at {format_clock(self.ends_at)}"

    def _start(self, playbook: Playbook) -> int | None:
        """The run's row in the journal (``None`` without one)."""
        if self.journal is None:
            return None
        return self.journal.start_run(
            playbook.name,
            window=playbook.window,
            inventory=self.inventory.path,
            check=self.check,
            argv=self.argv,
        )

    # --- steps -----------------------------------------------------------------------------

    def _skip(self, item: PlannedStep, reason: str, *, warn: bool = False) -> TargetResult:
        """A step that does not run: one journal row for the step, not one per target
        (``warn``: a warning, as for a step the run's window ended before)."""
        log.info("step %s skipped: %s", item.name, reason)
        details = {"targets": [t.label for t in item.targets], "not_started": True}
        result = (
            TaskResult.warning(NOT_STARTED + reason, details=details)
            if warn
            else TaskResult.skipped(reason, details={"targets": details["targets"]})
        )
        row = TargetResult(
            step=item.name,
            task=item.step.task,
            target="-",
            kind="step",
            host=None,
            result=result,
            started=time.time(),
            duration=0.0,
            attempts=0,
        )
        self._record(row)
        self._report("on_step_skipped", item.step, result.message)
        return row

    def _run_step(self, item: PlannedStep) -> list[TargetResult]:
        step, targets = item.step, item.targets
        log.info("step %s (%s) on %d target(s)", step.name, step.task, len(targets))
        self._report("on_step_start", step, targets)
        done: dict[int, TargetResult] = {}
        workers = min(self.forks, len(targets)) or 1
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crmmaint-fork")
        futures: dict[Future[TargetResult], int] = {}
        began = time.time()
        try:
            for index, target in enumerate(targets):
                futures[executor.submit(self._run_target, step, target)] = index
            for future in as_completed(futures):
                index = futures[future]
                row = future.result()  # _run_target never raises
                done[index] = row
                self._record(row)
                self._report(
                    "on_result", step, targets[index], row.result, row.duration, row.attempts
                )
        except BaseException as exc:
            self._abort.set()
            STOPPING.set()  # waits that are not commands (a lock) end too
            killed = self._kill_attempts(INTERRUPTED_RUN)
            if killed:
                log.warning("interrupted: killed %d command(s) the step had started", killed)
            executor.shutdown(wait=False, cancel_futures=True)
            self._await_cleanup([f for f in futures if not f.done()])
            # A target that finished its work while the interrupt came in (a restore that had
            # loaded its copy) is journaled with its own result, not as cut short; a failure
            # then is the kill's doing, and the target was cut short.
            for future, index in futures.items():
                if index in done or not future.done() or future.cancelled():
                    continue
                row = future.result()
                if row.result.status != Status.FAILED:
                    done[index] = row
                    self._record(row)
            cut_short = [t for i, t in enumerate(targets) if i not in done]
            for target in cut_short:  # the journal says which targets the interrupt cut short
                known = self._known.get((step.name, target.label))
                self._record(_interrupted(step, target, began, known))
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, RunInterrupted):
                raise RunInterrupted(step.name, [t.label for t in cut_short]) from exc
            raise
        executor.shutdown(wait=True)
        return [done[i] for i in range(len(targets))]

    def _kill_attempts(self, reason: str, *, cleanup: bool = False) -> int:
        """Kill the commands of every attempt under way (``cleanup``: their cleanups' too)."""
        with self._attempts_lock:
            attempts = list(self._attempts)
        return sum(views.kill_all(reason, cleanup=cleanup) for views in attempts)

    def _await_cleanup(self, pending: list[Future[TargetResult]]) -> None:
        """After an interrupt killed their commands, give the attempts still under way up to
        ``CLEANUP_GRACE`` to remove what they made (a half-loaded restore target) before the
        run ends (``_await``); a second interrupt stops their cleanup at once."""
        if not pending:
            return
        log.warning(
            "interrupted: waiting up to %s for %d task(s) to remove what they made "
            "(interrupt again to stop now)",
            _seconds(CLEANUP_GRACE),
            len(pending),
        )

        def cleaning() -> bool:
            with self._attempts_lock:
                return any(views.cleaning for views in self._attempts)

        try:
            _await(lambda: not wait(pending, timeout=_POLL).not_done, cleaning)
        except KeyboardInterrupt:
            log.warning("interrupted again: stopping the cleanup")
        if any(not f.done() for f in pending):
            self._kill_attempts("the run was interrupted and its cleanup stopped", cleanup=True)

    def _record(self, row: TargetResult) -> None:
        if self.journal is None or self._run_id is None:
            return
        self.journal.record(
            self._run_id,
            step=row.step,
            task=row.task,
            target_kind=row.kind,
            target=row.target,
            host=row.host,
            result=row.result,
            started=row.started,
            duration=row.duration,
            attempts=row.attempts,
        )

    # --- one target ------------------------------------------------------------------------

    def _run_target(self, step: Step, target: Target) -> TargetResult:
        """All attempts on one target; returns the last result (never raises)."""
        started, clock = time.time(), time.monotonic()
        self._report("on_target_start", step, target)
        attempts = 0
        ended = self._window_ended()
        if ended is not None:  # a target queued behind others when the window closed
            result = TaskResult.warning(NOT_STARTED + ended, details={"not_started": True})
        while ended is None:
            attempts += 1
            result, timed_out = self._attempt(step, target)
            if (
                result.status != Status.FAILED
                or not result.retryable  # the same again cannot succeed: say so at once
                or timed_out  # the abandoned attempt may still be running: never overlap it
                or attempts > step.retries
                or self._abort.is_set()
            ):
                break
            delay = retry_delay(step, attempts)
            log.info(
                "%s on %s failed (attempt %d of %d): %s; retrying in %.1fs",
                step.name,
                target.label,
                attempts,
                step.retries + 1,
                result.message,
                delay,
            )
            self._report("on_retry", step, target, result, attempts + 1, step.retries + 1, delay)
            if self._abort.wait(delay):
                break
        duration = time.monotonic() - clock
        log.info(  # the reporter and the journal carry the result: no second line on the console
            "%s on %s: %s %s",
            step.name,
            target.label,
            result.status,
            result.message,
        )
        return TargetResult(
            step=step.name,
            task=step.task,
            target=target.label,
            kind=target.kind,
            host=target.host.name,
            result=result,
            started=started,
            duration=duration,
            attempts=attempts,
        )

    def _attempt(self, step: Step, target: Target) -> tuple[TaskResult, bool]:
        """One call of the task, bounded by the step's timeout; ``(result, timed_out)``."""
        if self.check and not step.spec.check_mode:
            return TaskResult.skipped("task does not support check mode"), False
        assert self._transports is not None
        deadline = time.monotonic() + step.timeout if step.timeout is not None else None
        views = _AttemptTransports(self._transports.get, deadline)
        with self._attempts_lock:
            self._attempts.add(views)
        try:
            return self._attempt_with(step, target, views, deadline)
        finally:
            with self._attempts_lock:
                self._attempts.discard(views)

    def _attempt_with(
        self, step: Step, target: Target, views: _AttemptTransports, deadline: float | None
    ) -> tuple[TaskResult, bool]:
        ctx = TaskContext(
            target=target,
            inventory=self.inventory,
            params=copy.deepcopy(step.params),
            check=self.check,
            journal=self.journal,
            run_id=self._run_id,
            step=step.name,
            transport_for=views.get,
            deadline=deadline,
            run_deadline=self._run_deadline,
            run_ends=self.ends_at,
            on_progress=lambda done, total, estimated=False: self._report(
                "on_progress", step, target, done, total, estimated
            ),
        )
        self._known[(step.name, target.label)] = ctx.known
        if step.timeout is None:
            return _call(step, ctx), False
        outcome: list[TaskResult] = []
        finished = threading.Event()

        def work() -> None:
            try:
                outcome.append(_call(step, ctx))
            finally:
                finished.set()

        worker = threading.Thread(
            target=work,
            name=f"crmmaint-task-{step.name}-{target.label}",
            daemon=True,  # a hung task must not keep the process alive after the run
        )
        worker.start()
        # Watch the deadline and the run: an interrupt ends the wait (the step's thread kills
        # the attempt's commands, this one waits for the task's cleanup like a timeout's).
        while not finished.wait(_POLL) and not self._abort.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
        if finished.is_set():
            return (outcome[0], False) if outcome else (_no_result(), False)
        reason = INTERRUPTED_RUN if self._abort.is_set() else TIMED_OUT
        killed = views.kill_all(reason)
        # What the task made (a half-loaded restore target, its load role) is removed by its
        # own cleanup once its commands fail: give that its time (``for_cleanup``).
        cleaned = _await(lambda: finished.wait(_POLL), lambda: views.cleaning)
        if not cleaned:
            views.kill_all(f"{reason} and its cleanup ran out of time", cleanup=True)
        elif outcome and outcome[0].status != Status.FAILED:
            return outcome[0], False  # it finished its work before the kill reached it
        said = (
            "interrupted"
            if reason == INTERRUPTED_RUN
            else f"timed out after {_seconds(step.timeout)}"
        )
        log.debug(  # the failed result below is what the user reads
            "%s on %s %s; %d command(s) it started killed, %s",
            step.name,
            target.label,
            said,
            killed,
            "it has ended" if cleaned else "its thread abandoned",
        )
        if reason == INTERRUPTED_RUN:
            return _interrupted(step, target, time.time(), ctx.known).result, True
        return TaskResult.failed(said, details={**ctx.known, "timeout": step.timeout}), True


#: How often a step's thread looks at an attempt's deadline and the run's interrupt.
_POLL = 0.1


def _await(done: Callable[[], bool], cleaning: Callable[[], bool]) -> bool:
    """Wait until ``done()`` (which may block up to ``_POLL``) after an attempt's commands
    were killed: ``NOTICE_GRACE`` for the task to notice, up to ``CLEANUP_GRACE`` once it is
    ``cleaning()`` (removing what it made). Whether it was done in time."""
    started = time.monotonic()
    while not done():
        waited = time.monotonic() - started
        if waited >= CLEANUP_GRACE or (waited >= NOTICE_GRACE and not cleaning()):
            return False
    return True


def _no_result() -> TaskResult:
    return TaskResult.failed("internal error: the task ended without a result")


class _AttemptTransports:
    """The transports one attempt uses: views of the run's pooled ones whose commands end at
    the step's deadline, and which the runner can kill when the attempt times out."""

    def __init__(self, pooled: Callable[[Host], Transport], deadline: float | None) -> None:
        self._pooled = pooled
        self._deadline = deadline
        self._views: dict[str, DeadlineTransport] = {}
        self._lock = threading.Lock()

    def get(self, host: Host) -> Transport:
        with self._lock:
            view = self._views.get(host.name)
            if view is None:
                view = self._views[host.name] = DeadlineTransport(
                    self._pooled(host), self._deadline
                )
            return view

    @property
    def cleaning(self) -> bool:
        """Whether the attempt is removing what it made (``Transport.for_cleanup``)."""
        with self._lock:
            views = list(self._views.values())
        return any(view.cleaning for view in views)

    def kill_all(self, reason: str, *, cleanup: bool = False) -> int:
        """Kill the attempt's commands (``cleanup``: its cleanups' too), saying ``reason``."""
        with self._lock:
            views = list(self._views.values())
        return sum(view.kill_all(reason, cleanup=cleanup) for view in views)


def _defer_interrupts() -> HeldInterrupts | None:
    """Hold Ctrl-C and SIGTERM back (``hold_interrupts``); returns what to give back to
    ``_resume_interrupts``, ``None`` where signals cannot be held (not the main thread)."""
    return hold_interrupts()


def _resume_interrupts(held: HeldInterrupts | None) -> None:
    """Let held signals through again (a pending one is acted on now); idempotent."""
    release_interrupts(held)


def _interrupted(
    step: Step, target: Target, began: float, known: dict[str, Any] | None = None
) -> TargetResult:
    """The journal row of a target an interrupt (Ctrl-C, SIGTERM) cut short; ``began``: when
    its step started (unix time), so the row says how long it had run; ``known``: what its
    task had learned (``TaskContext.known``), kept in the details."""
    return TargetResult(
        step=step.name,
        task=step.task,
        target=target.label,
        kind=target.kind,
        host=target.host.name,
        result=TaskResult.failed(
            "interrupted before it finished (Ctrl-C or SIGTERM); what it started was killed",
            details={**(known or {}), "error": "KeyboardInterrupt", "exit_code": 130},
            retryable=False,
        ),
        started=began,
        duration=time.time() - began,
        attempts=1,
    )


def retry_delay(step: Step, failed_attempts: int) -> float:
    """Seconds to wait after ``failed_attempts`` failures: the step's ``retry_delay``, doubled
    after each further failure, never more than ``MAX_RETRY_DELAY``."""
    return min(step.retry_delay * 2 ** (failed_attempts - 1), MAX_RETRY_DELAY)


def _call(step: Step, ctx: TaskContext) -> TaskResult:
    """Call the task function; expected errors and bugs alike become FAILED results."""
    try:
        result = step.spec.func(ctx)
    except CrmMaintError as exc:
        log.debug("%s on %s raised %r", step.name, ctx.target.label, exc, exc_info=True)
        return TaskResult.failed(
            exc.text(step.flags),  # a one-step command's error names its flags
            details={**ctx.known, "error": type(exc).__name__, "exit_code": exc.exit_code},
            retryable=exc.retryable,
        )
    except Exception as exc:
        log.debug("%s on %s: internal error", step.name, ctx.target.label, exc_info=True)
        return TaskResult.failed(
            f"internal error: {type(exc).__name__}: {exc}",
            details={**ctx.known, "error": type(exc).__name__, "exit_code": INTERNAL_ERROR_EXIT},
            retryable=False,  # a bug does the same thing again
        )
    if not isinstance(result, TaskResult):
        return TaskResult.failed(
            f"internal error: task {step.task!r} returned {type(result).__name__}, not a TaskResult"
        )
    return result


def _seconds(value: float) -> str:
    return f"{value:g}s"
