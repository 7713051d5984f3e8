"""The run's deadline: ``--until``/``--for``/``window: {length}`` parsed, seen by tasks, kept
by the runner (no step or target starts after it), and the fit of estimated work."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmmaint.errors import PlaybookError
from crmmaint.inventory import Host, Inventory
from crmmaint.journal import Journal
from crmmaint.playbook import Runner, load_playbook_text, loader, plan
from crmmaint.results import Status, TaskResult
from crmmaint.schedule.windows import LONGEST_RUN, parse_length, parse_until, run_deadline
from crmmaint.tasks.api import REGISTRY, Estimate, Param, TaskContext, task
from tests.clirun import run_cli as crmmaint

SEEN: list[TaskContext] = []
_lock = threading.Lock()


@task("test.deadline", targets=("hosts",), params={"seconds": Param(float, default=0.0)})
def _deadline(ctx: TaskContext) -> TaskResult:
    with _lock:
        SEEN.append(ctx)
    time.sleep(ctx.params["seconds"])
    return TaskResult.ok("done")


@pytest.fixture(autouse=True)
def _only_registered_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "load_task_modules", lambda: REGISTRY)
    SEEN.clear()


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    hosts = {f"h{i}": Host(name=f"h{i}", connection="local") for i in range(4)}
    return Inventory(path=str(tmp_path / "inventory.yml"), hosts=hosts)


NOW = datetime(2026, 12, 1, 22, 15, tzinfo=UTC).astimezone()


# --- parsing -------------------------------------------------------------------------------


def test_until_clock_time_is_the_next_one() -> None:
    ends = parse_until("05:30", NOW)
    assert ends > NOW and (ends - NOW) <= timedelta(days=1)
    assert (ends.hour, ends.minute) == (5, 30)


@given(st.integers(0, 23), st.integers(0, 59), st.integers(0, 86399))
def test_until_clock_is_always_ahead_within_a_day(hour: int, minute: int, offset: int) -> None:
    now = NOW + timedelta(seconds=offset)
    ends = parse_until(f"{hour:02d}:{minute:02d}", now)
    assert now < ends <= now + timedelta(days=1, hours=1)  # an hour of slack: a DST change
    assert (ends.hour, ends.minute) == (hour, minute)


@pytest.mark.parametrize(
    "text", ["25:00", "5.30", "tomorrow", "", "12:60", "2020-01-01T00:00", "2099-01-01T00:00"]
)
def test_until_refuses_what_is_not_an_end_ahead(text: str) -> None:
    with pytest.raises(ValueError, match="--until"):
        parse_until(text, NOW)


def test_until_iso_time_as_written() -> None:
    later = (NOW + timedelta(hours=5)).replace(second=0, microsecond=0)
    assert parse_until(later.isoformat(), NOW) == later


@pytest.mark.parametrize("text", ["0s", "8d", "-1h", "3 hours", "abc"])
def test_length_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="--for"):
        parse_length(text)


def test_deadline_precedence() -> None:
    assert run_deadline(NOW) == (None, "")
    ends, why = run_deadline(NOW, window_length=3600)
    assert ends == NOW + timedelta(hours=1) and "window" in why
    ends, why = run_deadline(NOW, length="90m", window_length=3600)
    assert ends == NOW + timedelta(minutes=90) and why == "--for 90m"
    ends, why = run_deadline(NOW, until="23:00", window_length=3600)
    assert why == "--until 23:00"
    with pytest.raises(ValueError, match="not both"):
        run_deadline(NOW, until="23:00", length="1h")
    assert parse_length("7d") == LONGEST_RUN


def test_playbook_window_mapping(inventory: Inventory) -> None:
    book = load_playbook_text(
        "window: {every: daily, length: 3h}\nsteps: [{name: a, task: test.deadline, hosts: all}]",
        inventory,
    )
    assert (book.window, book.window_length) == ("daily", 10800.0)
    plain = load_playbook_text(
        "window: weekly\nsteps: [{name: a, task: test.deadline, hosts: all}]", inventory
    )
    assert (plain.window, plain.window_length) == ("weekly", None)


@pytest.mark.parametrize(
    ("window", "says"),
    [
        ("{length: 0s}", "greater than 0"),
        ("{length: soon}", "window.length"),
        ("{every: hourly}", "window.every must be one of"),
        ("{lenght: 3h}", "lenght"),
        ("[daily]", "window"),
        ("hourly", "window must be one of"),
    ],
)
def test_playbook_window_mistakes_refused(inventory: Inventory, window: str, says: str) -> None:
    with pytest.raises(PlaybookError, match=says):
        load_playbook_text(
            f"window: {window}\nsteps: [{{name: a, task: test.deadline, hosts: all}}]", inventory
        )


# --- the runner ----------------------------------------------------------------------------


def _run(inventory: Inventory, text: str, journal: Journal | None = None, **kw):
    book = load_playbook_text(text, inventory, source="test.yml")
    return Runner(inventory, journal, **kw).run(book, plan(book, inventory, now=NOW))


def test_tasks_see_the_deadline(inventory: Inventory) -> None:
    ends = datetime.now().astimezone() + timedelta(hours=2)
    _run(inventory, "steps: [{name: a, task: test.deadline, hosts: [h0]}]", ends_at=ends)
    (ctx,) = SEEN
    assert ctx.run_ends == ends
    left = ctx.run_time_left()
    assert left is not None and 7000 < left <= 7200


def test_no_deadline_no_limit(inventory: Inventory) -> None:
    _run(inventory, "steps: [{name: a, task: test.deadline, hosts: [h0]}]")
    assert SEEN[0].run_time_left() is None
    assert SEEN[0].wont_fit("anything", Estimate(1e9, "a guess")) is None


def test_nothing_starts_after_the_deadline(inventory: Inventory, tmp_path: Path) -> None:
    """A step that runs past the end finishes; the next step and the targets still queued
    behind the first (forks 1) are skipped, saying why, and the journal has them."""
    ends = datetime.now().astimezone() + timedelta(seconds=0.4)
    with Journal(tmp_path / "j.sqlite") as journal:
        summary = _run(
            inventory,
            "steps:\n"
            "  - {name: slow, task: test.deadline, hosts: [h0, h1], with: {seconds: 0.6}}\n"
            "  - {name: later, task: test.deadline, hosts: [h2]}\n",
            journal,
            forks=1,
            ends_at=ends,
        )
        rows = (journal.run(summary.run_id) or {})["results"]
    by = {(r.step, r.target): r.result for r in summary.results}
    assert by[("slow", "h0")].status == Status.OK
    # work the window was for did not run: a warning, so that cron notices (exit 1)
    assert by[("slow", "h1")].status == Status.WARNING
    assert "not started: the run's window ended at" in by[("slow", "h1")].message
    assert by[("later", "-")].status == Status.WARNING
    assert {r["status"] for r in rows} == {"ok", "warning"}
    assert summary.exit_code == 1


def test_window_length_sets_the_deadline(inventory: Inventory) -> None:
    from crmmaint.playbook.run import run_playbook

    book = load_playbook_text(
        "window: {length: 1h}\nsteps: [{name: a, task: test.deadline, hosts: [h0]}]", inventory
    )
    run_playbook(book, inventory, None, transport_factory=None)
    left = SEEN[0].run_time_left()
    assert left is not None and 3500 < left <= 3600


# --- fitting work --------------------------------------------------------------------------


def _ctx(inventory: Inventory, journal: Journal | None, **kw) -> TaskContext:
    from crmmaint.inventory import Target

    host = inventory.hosts["h0"]
    return TaskContext(
        target=Target("hosts", "h0", host, host),
        inventory=inventory,
        params={},
        check=kw.pop("check", False),
        journal=journal,
        run_id=None,
        step="s",
        transport_for=lambda h: None,  # type: ignore[arg-type,return-value]
        **kw,
    )


def test_wont_fit_names_what_how_long_and_the_end(inventory: Inventory) -> None:
    ends = datetime.now().astimezone() + timedelta(minutes=10)
    ctx = _ctx(inventory, None, run_deadline=time.monotonic() + 600, run_ends=ends)
    assert ctx.wont_fit("rebuild of i", Estimate(60, "a guess")) is None
    said = ctx.wont_fit("rebuild of i", Estimate(3600, "1 GB at 300 kB/s"))
    assert said is not None
    assert said.startswith("rebuild of i skipped: it would take about 1h 00m 00s")
    assert "1 GB at 300 kB/s" in said and f"{ends:%H:%M}" in said
    step_first = _ctx(inventory, None, deadline=time.monotonic() + 60)
    assert "step's timeout" in (step_first.wont_fit("x", Estimate(600, "g")) or "")


def test_estimates_learn_from_past_runs(inventory: Inventory, tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        ctx = _ctx(inventory, journal)
        first = ctx.estimate("reindex:public.a", 100 << 20, default_rate=50 << 20)
        assert first.seconds == pytest.approx(2.0) and "assumed" in first.basis
        ctx.record_duration("reindex:public.a", 100 << 20, 10.0)  # 10 MB/s
        ctx.record_duration("reindex:public.a", 100 << 20, 5.0)  # 20 MB/s
        again = ctx.estimate("reindex:public.a", 100 << 20, default_rate=50 << 20)
        assert again.seconds == pytest.approx(10.0)  # the slowest of its runs
        assert "2 runs" in again.basis
        other = ctx.estimate("reindex:public.b", 50 << 20, default_rate=50 << 20)
        assert other.seconds == pytest.approx(5.0) and "reindex on this target" in other.basis
        ctx.record_duration("reindex:public.c", 1000, 0.001)  # too small to say anything
        assert journal.state_get("hosts:h0:rate:reindex:public.c") is None
        check = _ctx(inventory, journal, check=True)
        check.record_duration("reindex:public.d", 100 << 20, 10.0)
        assert journal.state_get("hosts:h0:rate:reindex:public.d") is None


# --- the command line ----------------------------------------------------------------------


def test_cli_run_until_and_for(tmp_path: Path) -> None:
    inv = tmp_path / "inventory.yml"
    inv.write_text("hosts: {local: {connection: local}}\n")
    book = tmp_path / "book.yml"
    book.write_text(
        'steps: [{name: hi, task: shell.command, hosts: all, with: {commands: ["true"]}}]\n'
    )
    done = crmmaint("run", str(book), "-i", str(inv), "--for", "2h", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "this run ends at" in done.stderr and "--for 2h" in done.stderr
    bad = crmmaint("run", str(book), "-i", str(inv), "--until", "5pm", cwd=tmp_path)
    assert bad.returncode == 3 and "--until '5pm' is not a time" in bad.stderr
    both = crmmaint("run", str(book), "-i", str(inv), "--until", "05:00", "--for", "1h",
                    cwd=tmp_path)  # fmt: skip
    assert both.returncode == 3 and "not both" in both.stderr
    assert "Traceback" not in bad.stderr + both.stderr
