"""Capacity: disk usage recorded every run and a days-until-full forecast from its history.

The forecast is a least-squares line through the used bytes of the last ``history_days``
(journal metrics of earlier runs plus the measurement just taken), projected from today's
usage to the filesystem's usable size (used + available, so root-reserved blocks are excluded).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from crmmaint.engines.host import PROBE_TIMEOUT, HostOS
from crmmaint.errors import CrmMaintError
from crmmaint.results import TaskResult
from crmmaint.tasks.api import Param, TaskContext, task
from crmmaint.units import plural

log = logging.getLogger(__name__)

DAY = 86400.0


def growth_per_day(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (unix time, value) points, per day; None for < 2 distinct times."""
    n = len(points)
    if n < 2:
        return None
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in points)
    if var_t == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var_t * DAY


def days_until_full(points: Sequence[tuple[float, float]], capacity: float) -> float | None:
    """Days until the used value reaches ``capacity``, from the newest point along the trend.

    ``points`` are (unix time, used) pairs in any order. None when usage is flat or shrinking
    or there is too little history; 0.0 when already full.
    """
    if not points:
        return None
    newest = max(points)[1]
    if newest >= capacity:
        return 0.0
    slope = growth_per_day(points)
    if slope is None or slope <= 0:
        return None
    return (capacity - newest) / slope


def forecastable(points: Sequence[tuple[float, float]], min_points: int, min_span: float) -> bool:
    """Whether (unix time, value) ``points`` are enough for a trend: at least ``min_points`` of
    them, spanning at least ``min_span`` seconds (a burst of runs minutes apart measures noise,
    not growth per day)."""
    if len(points) < max(min_points, 2):
        return False
    times = [t for t, _ in points]
    return max(times) - min(times) >= min_span


@task(
    "capacity.disk",
    targets="hosts",
    params={
        "warn_days": Param(int, 30, help="warn when a filesystem is forecast full within this"),
        "history_days": Param(int, 30, help="fit the trend over this many past days"),
        "min_points": Param(int, 3, help="measurements needed before forecasting"),
        "min_span": Param(
            "duration",
            DAY,
            help="time the measurements must span before forecasting (seconds apart say nothing"
            " about a daily trend)",
        ),
        "mounts": Param(list, None, item_type=str, help="only these mount points"),
    },
)
def disk(ctx: TaskContext) -> TaskResult:
    """Disk usage per mount, recorded for trends, and days until each filesystem is full."""
    p = ctx.params
    try:
        disks = HostOS(ctx.transport).disks(p["mounts"], timeout=ctx.time_left(PROBE_TIMEOUT))
    except CrmMaintError as exc:
        return TaskResult.from_error(exc, ctx.target.name, details=ctx.read_only_details())

    now = time.time()
    since = now - p["history_days"] * DAY
    metrics: dict[str, float] = {}
    forecasts: list[dict[str, object]] = []
    soon: list[str] = []
    for d in disks:
        capacity = d.used_bytes + d.available_bytes
        metrics[f"disk_used_bytes:{d.mount}"] = d.used_bytes
        metrics[f"disk_size_bytes:{d.mount}"] = capacity
        history: list[tuple[float, float]] = []
        if ctx.journal is not None:
            history = ctx.journal.metric_history(
                "capacity.disk", ctx.target.label, f"disk_used_bytes:{d.mount}", since=since
            )
        points = [*history, (now, float(d.used_bytes))]
        enough = forecastable(points, p["min_points"], p["min_span"])
        days = days_until_full(points, capacity) if enough else None
        growth = growth_per_day(points) if enough else None
        if days is not None:
            metrics[f"days_until_full:{d.mount}"] = round(days, 1)
            if days < p["warn_days"]:
                soon.append(f"{d.mount} full in {days:.0f} days")
        forecasts.append(
            {
                "mount": d.mount,
                "used_pct": round(d.used_pct, 2),
                "points": len(points),
                "growth_bytes_per_day": None if growth is None else round(growth),
                "days_until_full": None if days is None else round(days, 1),
            }
        )

    details = ctx.read_only_details(forecasts=forecasts, history_days=p["history_days"])
    if soon:
        return TaskResult.warning("; ".join(soon), metrics=metrics, details=details)
    forecast_count = sum(1 for f in forecasts if f["growth_bytes_per_day"] is not None)
    message = f"{plural(len(disks), 'filesystem')}, none forecast full within {p['warn_days']} days"
    if forecast_count < len(disks):
        message += f" (too little history to forecast for {len(disks) - forecast_count})"
    return TaskResult.ok(message, metrics=metrics, details=details)
