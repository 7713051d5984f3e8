"""capacity.disk: the days-until-full math, and the task on this machine with journal history."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_tasks_health import make_ctx

from crmmaint.engines.host import parse_df
from crmmaint.journal import Journal
from crmmaint.results import Status, TaskResult
from crmmaint.tasks.api import REGISTRY
from crmmaint.tasks.capacity import DAY, days_until_full, forecastable, growth_per_day


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "journal.sqlite") as j:
        yield j


# --- pure math -------------------------------------------------------------------------------


def test_linear_growth() -> None:
    points = [(i * DAY, 100.0 + 10 * i) for i in range(5)]  # 10/day, now at 140
    assert growth_per_day(points) == pytest.approx(10.0)
    assert days_until_full(points, 200) == pytest.approx(6.0)


def test_noisy_growth_uses_least_squares_from_newest_point() -> None:
    points = [(0.0, 100.0), (DAY, 130.0), (2 * DAY, 120.0), (3 * DAY, 150.0)]
    slope = growth_per_day(points)
    assert slope == pytest.approx(14.0)  # cov/var over t = 0..3 days
    assert days_until_full(points, 290) == pytest.approx(10.0)


def test_order_of_points_does_not_matter() -> None:
    points = [(2 * DAY, 120.0), (0.0, 100.0), (DAY, 110.0)]
    assert days_until_full(points, 220) == pytest.approx(10.0)


@pytest.mark.parametrize(
    "points",
    [
        [],
        [(0.0, 100.0)],
        [(0.0, 100.0), (0.0, 120.0)],  # no time spread
        [(0.0, 100.0), (DAY, 100.0), (2 * DAY, 100.0)],  # flat
        [(0.0, 150.0), (DAY, 120.0), (2 * DAY, 100.0)],  # shrinking
    ],
)
def test_no_forecast(points: list[tuple[float, float]]) -> None:
    assert days_until_full(points, 1000) is None


def test_already_full() -> None:
    assert days_until_full([(0.0, 10.0), (DAY, 200.0)], 200) == 0.0


@pytest.mark.parametrize(
    ("times", "min_points", "min_span", "expected"),
    [
        ([0, 10, 20], 3, DAY, False),  # a burst of runs seconds apart: noise, not a trend
        ([0, DAY / 2, DAY], 3, DAY, True),
        ([0, DAY], 3, DAY, False),  # too few points
        ([0, DAY], 1, DAY, True),
        ([5.0], 1, 0, False),  # one point is never a line
        ([0, 1, 2], 3, 0, True),
    ],
)
def test_forecastable(times: list[float], min_points: int, min_span: float, expected: bool) -> None:
    assert forecastable([(t, 1.0) for t in times], min_points, min_span) is expected


# --- the task --------------------------------------------------------------------------------


def run(journal: Journal, params: dict | None = None) -> TaskResult:
    return REGISTRY["capacity.disk"].func(make_ctx("capacity.disk", params, journal=journal))


def record(journal: Journal, started: float, metrics: dict[str, float]) -> None:
    run_id = journal.start_run("daily")
    journal.record(
        run_id, step="disk", task="capacity.disk", target_kind="hosts", target="local",
        host="local", result=TaskResult.ok(metrics=metrics), started=started, duration=0.1,
    )  # fmt: skip


def root_usage() -> tuple[int, int]:
    import subprocess

    out = subprocess.run(["df", "-P", "-k"], capture_output=True, text=True, check=True).stdout
    (root,) = [d for d in parse_df(out) if d.mount == "/"]
    return root.used_bytes, root.used_bytes + root.available_bytes


def test_first_run_records_usage_without_forecast(journal: Journal) -> None:
    result = run(journal, {"mounts": ["/"]})
    assert result.status is Status.OK, result.message
    assert result.metrics["disk_used_bytes:/"] > 0
    assert result.metrics["disk_size_bytes:/"] >= result.metrics["disk_used_bytes:/"]
    assert "days_until_full:/" not in result.metrics
    assert "too little history" in result.message


def test_runs_minutes_apart_forecast_nothing(journal: Journal) -> None:
    """Usage that jumped between three runs a minute apart (another job writing) is no trend."""
    used, _ = root_usage()
    now = time.time()
    record(journal, now - 120, {"disk_used_bytes:/": used * 0.5})
    record(journal, now - 60, {"disk_used_bytes:/": used * 0.9})
    result = run(journal, {"mounts": ["/"]})
    assert result.status is Status.OK, result.message
    assert "days_until_full:/" not in result.metrics
    assert "too little history to forecast for 1" in result.message


def test_fast_growth_warns(journal: Journal) -> None:
    used, size = root_usage()
    per_day = (size - used) / 5  # full in about five days
    now = time.time()
    for days_ago in (3, 2, 1):
        record(journal, now - days_ago * DAY, {"disk_used_bytes:/": used - days_ago * per_day})
    result = run(journal, {"mounts": ["/"]})
    assert result.status is Status.WARNING
    assert "/ full in" in result.message
    assert result.metrics["days_until_full:/"] == pytest.approx(5, abs=0.5)
    assert result.details["forecasts"][0]["points"] == 4


def test_flat_usage_and_old_history_are_ok(journal: Journal) -> None:
    used, _ = root_usage()
    now = time.time()
    for days_ago in (3, 2, 1):
        record(journal, now - days_ago * DAY, {"disk_used_bytes:/": used})
    record(journal, now - 400 * DAY, {"disk_used_bytes:/": 0})  # outside history_days
    result = run(journal, {"mounts": ["/"], "warn_days": 10_000})
    assert result.status is Status.OK, result.message
    assert result.details["forecasts"][0]["points"] == 4
