"""The runner: parallelism bounded by forks, timeouts, retries, on_failure, check mode, journal."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pytest

from crmmaint.errors import ConfigError, EngineError, LockError, WrongKeyError
from crmmaint.inventory import Database, Host, Inventory
from crmmaint.journal import Journal
from crmmaint.playbook import (
    MultiReporter,
    Reporter,
    Runner,
    load_playbook_text,
    loader,
    plan,
)
from crmmaint.reporting.console import ConsoleReporter
from crmmaint.results import Status, TaskResult
from crmmaint.tasks.api import REGISTRY, Param, TaskContext, task

# --- test-only tasks ---------------------------------------------------------------------------

_lock = threading.Lock()
CONCURRENCY = {"now": 0, "max": 0}
CALLS: dict[str, list[float]] = defaultdict(list)
CONTEXTS: list[TaskContext] = []
RELEASE = threading.Event()


@task("test.sleep", targets=("hosts",), params={"seconds": Param(float, default=0.05)})
def _sleep(ctx: TaskContext) -> TaskResult:
    with _lock:
        CONCURRENCY["now"] += 1
        CONCURRENCY["max"] = max(CONCURRENCY["max"], CONCURRENCY["now"])
    time.sleep(ctx.params["seconds"])
    with _lock:
        CONCURRENCY["now"] -= 1
    return TaskResult.ok("slept")


@task("test.flaky", targets=("hosts",), params={"fail_times": Param(int, default=1)})
def _flaky(ctx: TaskContext) -> TaskResult:
    key = f"{ctx.step}/{ctx.target.name}"
    with _lock:
        CALLS[key].append(time.monotonic())
        attempt = len(CALLS[key])
    if attempt <= ctx.params["fail_times"]:
        if attempt % 2:
            return TaskResult.failed(f"attempt {attempt} failed")
        raise EngineError(f"attempt {attempt} raised")
    return TaskResult.changed(f"worked on attempt {attempt}")


@task(
    "test.fail",
    targets=("hosts",),
    params={
        "how": Param(
            str,
            default="result",
            choices=("result", "crm", "bug", "return", "config", "key", "missing", "lock"),
        )
    },
)
def _fail(ctx: TaskContext) -> TaskResult:
    how = ctx.params["how"]
    with _lock:
        CALLS[f"{ctx.step}/{ctx.target.name}"].append(time.monotonic())
    if how == "config":
        raise ConfigError("no such repository 'offsite'")
    if how == "key":
        raise WrongKeyError("no identity given can decrypt backup 1")
    if how == "missing":
        raise EngineError("database file /srv/crm.db does not exist", retryable=False)
    if how == "lock":
        raise LockError("repository locked by a prune on db1")
    if how == "crm":
        raise EngineError("database refused", hint="check pg_hba.conf")
    if how == "bug":
        raise ValueError("boom")
    if how == "return":
        return "not a result"  # type: ignore[return-value]
    return TaskResult.failed("it failed")


@task("test.hang", targets=("hosts",))
def _hang(ctx: TaskContext) -> TaskResult:
    RELEASE.wait(10)
    return TaskResult.ok("released")


@task(
    "test.record",
    targets=("hosts", "database"),
    params={
        "items": Param(list, default=["a"]),
        "status": Param(str, default="ok"),
        "codes": Param(dict, default={}),
    },
)
def _record(ctx: TaskContext) -> TaskResult:
    with _lock:
        CONTEXTS.append(ctx)
    ctx.params["items"].append("mutated")
    code = ctx.params["codes"].get(ctx.target.name)
    return TaskResult(
        Status(ctx.params["status"]),
        f"{'would change' if ctx.check else 'changed'} {ctx.target.label}",
        metrics={"rows": 42, "ratio": 0.5},
        details={"check": ctx.check, **({"exit_code": code} if code else {})},
    )


FINISHING = threading.Event()


@task("test.finishing", targets=("hosts",))
def _finishing(ctx: TaskContext) -> TaskResult:
    """Work that is done just as the run is interrupted (a restore that has loaded its copy)."""
    FINISHING.set()
    time.sleep(0.5)
    return TaskResult.changed(f"restored on {ctx.target.label}")


@task("test.local", targets=())
def _local(ctx: TaskContext) -> TaskResult:
    with _lock:
        CONTEXTS.append(ctx)
    return TaskResult.ok(f"{ctx.target.kind}:{ctx.target.name}")


@task("test.shell", targets=("hosts",))
def _shell(ctx: TaskContext) -> TaskResult:
    res = ctx.transport.run(["echo", ctx.target.name], timeout=ctx.time_left(10), check=True)
    return TaskResult.ok(res.text.strip())


@pytest.fixture(autouse=True)
def _only_registered_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validate against the tasks registered so far, without importing every task module."""
    monkeypatch.setattr(loader, "load_task_modules", lambda: REGISTRY)


@pytest.fixture(autouse=True)
def _reset():
    CONCURRENCY.update(now=0, max=0)
    CALLS.clear()
    CONTEXTS.clear()
    RELEASE.clear()
    yield
    RELEASE.set()  # let any abandoned (timed out) task thread finish


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    hosts = {f"h{i}": Host(name=f"h{i}", connection="local", groups=["app"]) for i in range(8)}
    return Inventory(
        path=str(tmp_path / "inventory.yml"),
        hosts=hosts,
        databases={"crm": Database(name="crm", engine="sqlite", host="h0", path="/tmp/crm.db")},
    )


@pytest.fixture
def journal(tmp_path: Path):
    with Journal(tmp_path / "journal.sqlite") as j:
        yield j


class FakeTransport:
    """Stands in for a host connection in tests of the runner's pooling (not of transports)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.closed = False

    def close(self) -> None:
        self.closed = True


class RecordingReporter(Reporter):
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self._lock = threading.Lock()
        self.inside = 0
        self.overlapped = False

    def _add(self, *event: object) -> None:
        self.inside += 1
        if self.inside > 1:
            self.overlapped = True
        time.sleep(0.001)
        self.events.append(event)
        self.inside -= 1

    def on_run_start(self, playbook, planned):
        self._add("run_start", playbook.name, len(planned))

    def on_step_start(self, step, targets):
        self._add("step_start", step.name, len(targets))

    def on_target_start(self, step, target):
        self._add("target_start", step.name, target.name)

    def on_result(self, step, target, result, duration, attempts):
        self._add("result", step.name, target.name, str(result.status), attempts)

    def on_step_skipped(self, step, reason):
        self._add("skipped", step.name, reason)

    def on_run_end(self, summary):
        self._add("run_end", str(summary.status), summary.exit_code)


def run(
    text: str,
    inventory: Inventory,
    journal: Journal | None = None,
    *,
    now: datetime | None = None,
    **kw,
):
    playbook = load_playbook_text(text, inventory, source="test.yml")
    planned = plan(playbook, inventory, now=now or datetime(2024, 1, 1))
    kw.setdefault("transport_factory", lambda host: FakeTransport(host.name))
    return Runner(inventory, journal, **kw).run(playbook, planned)


# --- parallelism -------------------------------------------------------------------------------


@pytest.mark.parametrize("forks", [1, 3])
def test_parallelism_is_bounded_by_forks(inventory: Inventory, forks: int) -> None:
    summary = run(
        "steps: [{name: s, task: test.sleep, hosts: all, with: {seconds: 0.05}}]",
        inventory,
        forks=forks,
    )
    assert summary.counts[Status.OK] == 8
    assert CONCURRENCY["max"] <= forks
    if forks > 1:
        assert CONCURRENCY["max"] >= 2  # targets really did overlap


def test_results_keep_target_order(inventory: Inventory) -> None:
    summary = run("steps: [{name: s, task: test.sleep, hosts: all}]", inventory, forks=8)
    assert [r.target for r in summary.results] == [f"h{i}" for i in range(8)]


def test_forks_must_be_positive(inventory: Inventory) -> None:
    with pytest.raises(ConfigError, match="forks must be at least 1"):
        Runner(inventory, None, forks=0)


# --- timeouts and retries ----------------------------------------------------------------------


def test_timeout_fails_the_target_and_the_run_moves_on(inventory: Inventory) -> None:
    summary = run(
        """
        steps:
          - {name: hang, task: test.hang, hosts: h1, timeout: 0.2s, retries: 2,
             retry_delay: 0.01, on_failure: continue}
          - {name: after, task: test.sleep, hosts: h2}
        """,
        inventory,
    )
    hang, after = summary.results
    assert (hang.status, hang.result.message) == (Status.FAILED, "timed out after 0.2s")
    assert hang.attempts == 1  # never retried while the abandoned attempt may still run
    assert hang.result.details == {"timeout": 0.2}
    assert after.status == Status.OK


def test_task_sees_its_deadline(inventory: Inventory) -> None:
    run("steps: [{name: r, task: test.record, hosts: h0, timeout: 30s}]", inventory)
    (ctx,) = CONTEXTS
    left = ctx.time_left()
    assert left is not None and 0 < left <= 30
    assert ctx.time_left(5) == 5
    run("steps: [{name: r, task: test.record, hosts: h0}]", inventory)
    assert CONTEXTS[-1].deadline is None and CONTEXTS[-1].time_left(7) == 7


def test_retries_with_exponential_backoff(inventory: Inventory) -> None:
    summary = run(
        "steps: [{name: f, task: test.flaky, hosts: h3, retries: 3, retry_delay: 0.02,"
        " with: {fail_times: 2}}]",
        inventory,
    )
    (row,) = summary.results
    assert (row.status, row.attempts) == (Status.CHANGED, 3)
    assert row.result.message == "worked on attempt 3"
    first, second, third = CALLS["f/h3"]
    assert second - first >= 0.02  # retry_delay
    assert third - second >= 0.04  # doubled


def test_retries_exhausted_keep_the_last_failure(inventory: Inventory) -> None:
    summary = run(
        "steps: [{name: f, task: test.flaky, hosts: h3, retries: 1, retry_delay: 0.001,"
        " with: {fail_times: 5}}]",
        inventory,
    )
    (row,) = summary.results
    assert (row.status, row.attempts) == (Status.FAILED, 2)
    assert row.result.message == "attempt 2 raised"
    assert len(CALLS["f/h3"]) == 2


@pytest.mark.parametrize(
    ("how", "attempts"),
    [("config", 1), ("key", 1), ("missing", 1), ("bug", 1), ("crm", 3), ("lock", 3), ("result", 3)],
)
def test_only_failures_a_retry_can_mend_are_retried(
    inventory: Inventory, how: str, attempts: int
) -> None:
    summary = run(
        f"steps: [{{name: f, task: test.fail, hosts: h2, retries: 2, retry_delay: 0.001,"
        f" with: {{how: {how}}}}}]",
        inventory,
    )
    (row,) = summary.results
    assert (row.status, row.attempts, len(CALLS["f/h2"])) == (Status.FAILED, attempts, attempts)


class _Retries(Reporter):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_retry(self, step, target, result, attempt, attempts, delay) -> None:  # type: ignore[override]
        self.calls.append((step.name, target.label, result.message, attempt, attempts, delay))


def test_every_retry_is_announced_with_its_wait(inventory: Inventory) -> None:
    reporter = _Retries()
    summary = run(
        "steps: [{name: f, task: test.flaky, hosts: h3, retries: 3, retry_delay: 0.01,"
        " with: {fail_times: 2}}]",
        inventory,
        reporter=reporter,
    )
    assert summary.results[0].attempts == 3
    assert reporter.calls == [
        ("f", "h3", "attempt 1 failed", 2, 4, 0.01),
        ("f", "h3", "attempt 2 raised", 3, 4, 0.02),
    ]


def test_console_says_what_a_retry_waits_for(inventory: Inventory) -> None:
    out = io.StringIO()
    run(
        "steps: [{name: f, task: test.flaky, hosts: h3, retries: 1, retry_delay: 0.05,"
        " with: {fail_times: 1}}]",
        inventory,
        reporter=ConsoleReporter(out),
    )
    assert "  retry    f h3: attempt 1 failed; retrying in 0.05s, attempt 2 of 2\n" in (
        out.getvalue()
    )


def test_no_retries_by_default(inventory: Inventory) -> None:
    summary = run("steps: [{name: f, task: test.flaky, hosts: h3}]", inventory)
    assert summary.results[0].attempts == 1


# --- failures and on_failure ---------------------------------------------------------------------


def test_exceptions_become_failed_results(
    inventory: Inventory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="crmmaint.playbook.runner")
    summary = run(
        """
        defaults: {on_failure: continue}
        steps:
          - {name: result, task: test.fail, hosts: h0}
          - {name: crm, task: test.fail, hosts: h0, with: {how: crm}}
          - {name: bug, task: test.fail, hosts: h0, with: {how: bug}}
          - {name: return, task: test.fail, hosts: h0, with: {how: return}}
        """,
        inventory,
    )
    messages = {r.step: r.result.message for r in summary.results}
    assert messages == {
        "result": "it failed",
        "crm": "database refused (check pg_hba.conf)",
        "bug": "internal error: ValueError: boom",
        "return": "internal error: task 'test.fail' returned str, not a TaskResult",
    }
    assert all(r.status == Status.FAILED for r in summary.results)
    tracebacks = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert any("ValueError: boom" in caplog.text for _ in tracebacks)


def test_on_failure_stop_skips_later_steps(inventory: Inventory, journal: Journal) -> None:
    reporter = RecordingReporter()
    summary = run(
        """
        steps:
          - {name: first, task: test.sleep, hosts: h0}
          - {name: broken, task: test.fail, hosts: [h1, h2]}
          - {name: later, task: test.sleep, hosts: h3}
          - {name: last, task: test.local}
        """,
        inventory,
        journal,
        reporter=reporter,
    )
    assert [(r.step, r.status) for r in summary.results] == [
        ("first", Status.OK),
        ("broken", Status.FAILED),
        ("broken", Status.FAILED),
        ("later", Status.SKIPPED),
        ("last", Status.SKIPPED),
    ]
    assert summary.stopped_after == "broken"
    assert summary.results[3].result.message == "stopped after failure of step 'broken'"
    assert ("skipped", "later", "stopped after failure of step 'broken'") in reporter.events
    assert summary.exit_code == 2
    rows = journal.run(summary.run_id)["results"]
    assert [(r["step"], r["status"], r["target"]) for r in rows[3:]] == [
        ("later", "skipped", "-"),
        ("last", "skipped", "-"),
    ]


def test_on_failure_continue_runs_later_steps(inventory: Inventory) -> None:
    summary = run(
        """
        steps:
          - {name: broken, task: test.fail, hosts: h1, on_failure: continue}
          - {name: later, task: test.sleep, hosts: h3}
        """,
        inventory,
    )
    assert [r.status for r in summary.results] == [Status.FAILED, Status.OK]
    assert summary.stopped_after is None
    assert summary.status == Status.FAILED and summary.exit_code == 2


def test_a_failed_target_does_not_stop_its_own_step(inventory: Inventory) -> None:
    summary = run(
        "steps: [{name: f, task: test.flaky, hosts: all, with: {fail_times: 1}},"
        " {name: n, task: test.sleep, hosts: h0}]",
        inventory,
    )
    assert [r.status for r in summary.results[:8]] == [Status.FAILED] * 8
    assert summary.results[8].status == Status.SKIPPED


# --- check mode, parameters, targets -------------------------------------------------------------


def test_check_mode_is_passed_to_tasks(inventory: Inventory, journal: Journal) -> None:
    summary = run(
        "steps: [{name: r, task: test.record, hosts: [h0, h1]}]", inventory, journal, check=True
    )
    assert [ctx.check for ctx in CONTEXTS] == [True, True]
    assert summary.check
    assert summary.results[0].result.message == "would change h0"
    assert journal.run(summary.run_id)["check_mode"] is True
    run("steps: [{name: r, task: test.record, hosts: h0}]", inventory)
    assert CONTEXTS[-1].check is False


def test_each_call_gets_its_own_copy_of_params(inventory: Inventory) -> None:
    run("steps: [{name: r, task: test.record, hosts: [h0, h1], with: {items: [x]}}]", inventory)
    assert [ctx.params["items"] for ctx in CONTEXTS] == [["x", "mutated"], ["x", "mutated"]]


def test_context_carries_target_step_inventory_and_run(
    inventory: Inventory, journal: Journal
) -> None:
    summary = run("steps: [{name: r, task: test.record, database: crm}]", inventory, journal)
    (ctx,) = CONTEXTS
    assert (ctx.target.kind, ctx.target.name, ctx.target.host.name) == ("database", "crm", "h0")
    assert ctx.step == "r" and ctx.inventory is inventory
    assert ctx.run_id == summary.run_id and ctx.journal is journal
    assert summary.results[0].target == "crm@h0"


def test_run_once_task_gets_the_local_run_target(inventory: Inventory) -> None:
    summary = run("steps: [{name: l, task: test.local}]", inventory)
    assert summary.results[0].result.message == "run:local"
    assert (summary.results[0].kind, summary.results[0].host) == ("run", "local")


def test_when_false_steps_are_skipped_with_reason(inventory: Inventory) -> None:
    reporter = RecordingReporter()
    summary = run(
        "steps: [{name: fridays, task: test.sleep, hosts: all, when: {weekday: fri}}]",
        inventory,
        reporter=reporter,
        now=datetime(2024, 1, 1),
    )
    (row,) = summary.results
    assert row.status == Status.SKIPPED
    assert row.result.message == "when: today is mon, step runs on fri"
    assert row.result.details["targets"] == [f"h{i}" for i in range(8)]
    assert CONCURRENCY["max"] == 0
    assert summary.exit_code == 0


# --- transports ----------------------------------------------------------------------------------


def test_one_transport_per_host_reused_and_closed(inventory: Inventory) -> None:
    made: list[FakeTransport] = []

    def factory(host: Host) -> FakeTransport:
        transport = FakeTransport(host.name)
        made.append(transport)
        return transport

    @task("test.transport_user", targets=("hosts", "database"))
    def _use(ctx: TaskContext) -> TaskResult:
        assert ctx.transport is ctx.transport_for(ctx.target.host)
        return TaskResult.ok(ctx.transport.host)

    summary = run(
        """
        steps:
          - {name: a, task: test.transport_user, hosts: all}
          - {name: b, task: test.transport_user, hosts: [h0, h1]}
          - {name: c, task: test.transport_user, database: crm}
        """,
        inventory,
        transport_factory=factory,
        forks=4,
    )
    assert summary.exit_code == 0
    assert sorted(t.host for t in made) == [f"h{i}" for i in range(8)]
    assert all(t.closed for t in made)


def test_default_transports_run_local_commands(inventory: Inventory) -> None:
    playbook = load_playbook_text(
        "steps: [{name: echo, task: test.shell, hosts: [h0, h1], timeout: 20s}]", inventory
    )
    summary = Runner(inventory, None).run(playbook, plan(playbook, inventory))
    assert [r.result.message for r in summary.results] == ["h0", "h1"]


# --- journal, reporter, summary ------------------------------------------------------------------


def test_journal_holds_run_results_metrics_attempts(inventory: Inventory, journal: Journal) -> None:
    summary = run(
        """
        name: nightly
        window: daily
        steps:
          - {name: rec, task: test.record, hosts: h0, with: {status: warning}}
          - {name: flaky, task: test.flaky, hosts: h1, retries: 1, retry_delay: 0.001}
          - {name: fri, task: test.local, when: {weekday: fri}}
        """,
        inventory,
        journal,
        argv=["crmmaint", "run", "nightly"],
    )
    doc = journal.run(summary.run_id)
    assert (doc["playbook"], doc["window"], doc["status"]) == ("nightly", "daily", "warning")
    assert doc["inventory"] == inventory.path and doc["argv"] == ["crmmaint", "run", "nightly"]
    assert doc["finished"] >= doc["started"]
    rec, flaky, fri = doc["results"]
    assert (rec["task"], rec["target_kind"], rec["target"], rec["host"]) == (
        "test.record",
        "hosts",
        "h0",
        "h0",
    )
    assert (rec["status"], rec["attempts"]) == ("warning", 1)
    assert rec["metrics"] == {"rows": 42.0, "ratio": 0.5}
    assert rec["details"] == {"check": False}
    assert rec["duration"] >= 0
    assert (flaky["status"], flaky["attempts"]) == ("changed", 2)
    assert (fri["status"], fri["target_kind"], fri["message"]) == (
        "skipped",
        "step",
        "when: today is mon, step runs on fri",
    )
    assert summary.exit_code == 1
    assert summary.counts == {
        Status.OK: 0,
        Status.CHANGED: 1,
        Status.WARNING: 1,
        Status.FAILED: 0,
        Status.SKIPPED: 1,
    }


def test_reporter_sees_every_event_in_order_and_never_concurrently(inventory: Inventory) -> None:
    reporter = RecordingReporter()
    run(
        """
        steps:
          - {name: s, task: test.sleep, hosts: all, with: {seconds: 0.01}}
          - {name: fri, task: test.local, when: {weekday: fri}}
        """,
        inventory,
        reporter=reporter,
        forks=4,
    )
    kinds = [e[0] for e in reporter.events]
    assert kinds[:2] == ["run_start", "step_start"]
    assert kinds.count("target_start") == 8 and kinds.count("result") == 8
    assert kinds[-2:] == ["skipped", "run_end"]
    assert reporter.events[-1] == ("run_end", "ok", 0)
    for host in (f"h{i}" for i in range(8)):
        assert kinds.index("target_start") <= reporter.events.index(("result", "s", host, "ok", 1))
    assert not reporter.overlapped


def test_multi_reporter_and_a_failing_reporter(inventory: Inventory) -> None:
    class Broken(Reporter):
        def on_result(self, *args: object) -> None:
            raise RuntimeError("reporter bug")

    good = RecordingReporter()
    summary = run(
        "steps: [{name: s, task: test.sleep, hosts: h0}]",
        inventory,
        reporter=MultiReporter(Broken(), good),
    )
    assert summary.exit_code == 0
    assert [e[0] for e in good.events] == ["run_start", "step_start", "target_start", "run_end"]


def test_summary_status_and_exit_codes(inventory: Inventory) -> None:
    def code(status: str) -> int:
        return run(
            f"steps: [{{name: r, task: test.record, hosts: h0, with: {{status: {status}}}}}]",
            inventory,
        ).exit_code

    assert [code(s) for s in ("ok", "changed", "skipped", "warning", "failed")] == [0, 0, 0, 1, 2]


@pytest.mark.parametrize(
    ("codes", "one_target", "expected"),
    [
        ({"h0": 6, "h1": 6}, True, 6),  # `backup` of every source into a missing repository
        ({"h0": 6}, True, 6),  # one of two failed
        ({"h0": 6, "h1": 5}, True, 2),  # failures of different kinds
        ({"h0": 6, "h1": None}, True, 2),  # one failure says no code
        ({"h0": 6, "h1": 6}, False, 2),  # `run` keeps 2
    ],
)
def test_a_commands_failures_sharing_a_code_exit_with_it(
    inventory: Inventory, codes: dict, one_target: bool, expected: int
) -> None:
    """The README's rule: `backup`, `verify`, `prune`, `restore` exit with the code their
    failed targets share, 2 when they differ; `run` exits 2 for any failure."""
    failing = [name for name in codes]
    book = (
        "steps: ["
        f"{{name: bad, task: test.record, hosts: [{', '.join(failing)}], on_failure: continue,"
        f" with: {{status: failed, codes: {{{', '.join(f'{k}: {v or 0}' for k, v in codes.items())}}}}}}},"
        "{name: good, task: test.record, hosts: [h2]}]"
    )
    summary = run(book, inventory, one_target=one_target)
    assert summary.status == Status.FAILED and summary.exit_code == expected


def test_no_journal_runs_without_run_id(inventory: Inventory) -> None:
    summary = run("steps: [{name: s, task: test.sleep, hosts: h0}]", inventory)
    assert summary.run_id is None and summary.playbook == "test"


def test_a_target_that_finished_as_the_run_was_interrupted_keeps_its_own_result(
    inventory: Inventory, journal: Journal
) -> None:
    """Found by a newcomer: an interrupt just as a restore finished journaled the whole
    restore as interrupted. A target whose task returns while the run ends is journaled
    with its result; only what was really cut short is said to be."""
    import _thread

    from crmmaint.playbook.runner import RunInterrupted

    FINISHING.clear()

    def interrupt() -> None:
        assert FINISHING.wait(10)
        time.sleep(0.1)  # the runner is waiting for its targets
        _thread.interrupt_main()

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(RunInterrupted) as interrupted:
        run("steps: [{name: r, task: test.finishing, hosts: h0}]", inventory, journal)
    assert interrupted.value.targets == []
    (row,) = journal.run(interrupted.value.run_id)["results"]
    assert row["status"] == "changed", row


def test_an_interrupt_as_the_run_is_journaled_ends_it_as_interrupted(
    inventory: Inventory, tmp_path: Path
) -> None:
    """Found by a newcomer: Ctrl-C just after the run's row was written left it "running"
    for ever. Interrupts wait while the row is written, then end the run as interrupted."""
    import os
    import signal

    class Interrupting(Journal):
        def start_run(self, *args, **kwargs):
            run_id = super().start_run(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGINT)  # arrives "during" the write
            return run_id

    with Interrupting(tmp_path / "j.sqlite") as journal:
        with pytest.raises(KeyboardInterrupt):
            run("steps: [{name: r, task: test.record, hosts: h0}]", inventory, journal)
        (row,) = journal.runs()
        assert row["status"] == "interrupted" and row["finished"] is not None, row
