"""perf.report: the weekly performance figures of databases, caches and HTTP endpoints.

The figures land in the journal as metrics (numbers, units in their names: ``_seconds``,
``_bytes``, ``_ratio`` from 0 to 1) so that reports and anomaly checks can trend them; the
result's message gives the key figures on one line, warnings first; its details carry the
tables (top statements, open transactions, standbys, per-URL latencies).

Counters (slow queries, evicted keys, transactions) are reported as they stand and as the
change since this task's previous non-check run on the same target, read from the journal
(``Journal.metric_history``); a counter that went down, or a server that started after that
run, counts from its start instead.

The task only reads: it runs the same in check mode. Its SQL lives in the engines
(``engines/postgresql/statistics.py``, ``engines/mysql_statistics.py``); it never reads
statement text of sessions (customer data), only ``pg_stat_statements``' normalised text.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from crmmaint.engines import http_probe
from crmmaint.engines.http_probe import ProbeError
from crmmaint.errors import CrmMaintError, EngineError
from crmmaint.results import Status, TaskResult
from crmmaint.tasks.api import Param, TaskContext, task
from crmmaint.units import format_duration, format_elapsed, format_size, plural

if TYPE_CHECKING:  # the adapters are imported where a target needs them (start-up stays light)
    from crmmaint.engines.base import DatabaseEngine
    from crmmaint.engines.mysql import MySQLEngine
    from crmmaint.engines.postgresql import PostgreSQLEngine
    from crmmaint.engines.postgresql.statistics import Replication

log = logging.getLogger(__name__)

TASK = "perf.report"
#: Requests to one URL stop after this many failed in a row (a dead endpoint would otherwise
#: cost ``requests`` times the timeout).
FAILURES_IN_A_ROW = 3
#: Latency percentiles reported per endpoint (linear interpolation between closest ranks).
PERCENTILES = (50, 95, 99)

# Thresholds and where their defaults come from:
# - cache_hit_warn 90%: PostgreSQL and InnoDB OLTP workloads normally run above 99% once warm;
#   below 90% the working set no longer fits the buffer cache and reads go to disk.
# - long_transaction 1h: a transaction open that long holds back vacuum (dead rows pile up,
#   tables bloat) and its locks; no CRM request or maintenance job of ours needs that long.
# - replication_lag_warn 5m: a failover to a standby that far behind loses minutes of work.
# - evictions_warn 1: a cache that evicts is full; any eviction since the last week is news.
# - redis_memory_warn 90%: Redis evicts (or refuses writes) at 100% of maxmemory.
# - latency_warn 1s: a CRM page whose endpoint needs a second at p95 is felt by its users.
PARAMS = {
    "top": Param(int, 10, help="statements listed from pg_stat_statements (0: none)"),
    "cache_hit_warn": Param(
        "percent", 90.0, help="warn when a database's buffer cache hit ratio is below this"
    ),
    "long_transaction": Param(
        "duration", 3600.0, help="a transaction open this long is long-running (warns)"
    ),
    "replication_lag_warn": Param("duration", 300.0, help="warn at this much replication lag"),
    "slow_queries_warn": Param(
        int, None, help="warn at this many MariaDB slow queries since the previous run"
    ),
    "evictions_warn": Param(
        int, 1, help="warn at this many Redis keys evicted since the previous run"
    ),
    "redis_memory_warn": Param(
        "percent", 90.0, help="warn when Redis uses this share of its maxmemory"
    ),
    "urls": Param(
        list, None, item_type=str, help="HTTP endpoints to time (default: vars.health_url)"
    ),
    "requests": Param(int, 20, help="requests per endpoint, one after another"),
    "timeout": Param("duration", 10.0, help="give up on one request after this long"),
    "latency_warn": Param("duration", 1.0, help="warn when an endpoint's p95 latency reaches this"),
}


@task(TASK, targets=("database", "cache", "hosts"), params=PARAMS)
def report(ctx: TaskContext) -> TaskResult:
    """Performance figures of databases, caches and HTTP endpoints, as journal metrics.

    Databases: cache hit ratios, long transactions, replication lag, top statements, slow
    queries; Redis: hit ratio, memory, evictions; hosts: HTTP latency percentiles.
    """
    if ctx.params["top"] < 0 or ctx.params["requests"] < 1:
        return TaskResult.failed(
            "top must be 0 or more and requests 1 or more", retryable=False,
            details=ctx.read_only_details(),
        )  # fmt: skip
    try:
        if ctx.target.kind == "database":
            return _database(ctx)
        if ctx.target.kind == "cache":
            return _cache(ctx)
        return _endpoints(ctx)
    except CrmMaintError as exc:
        return TaskResult.from_error(exc, details=ctx.read_only_details())


# --- figures, counters and percentiles (pure) ------------------------------------------------


@dataclass
class Figures:
    """What one target's report gathers: metrics, the figures for the message (those past a
    threshold apart, said first, with the threshold) and details."""

    metrics: dict[str, float] = field(default_factory=dict)
    said: list[str] = field(default_factory=list)
    warned: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, text: str, warn: str | None = None) -> None:
        """A figure for the message; with ``warn`` (the threshold it passed) a warning."""
        if warn:
            self.warned.append(f"{text} ({warn})")
        else:
            self.said.append(text)

    def result(self, ctx: TaskContext, prefix: str) -> TaskResult:
        """The result: ``warning`` when a figure passed its threshold, else ``ok``."""
        status = Status.WARNING if self.warned else Status.OK
        message = f"{prefix}: " + ", ".join(self.warned + self.said)
        return TaskResult(
            status, message, metrics=self.metrics, details=ctx.read_only_details(**self.details)
        )


@dataclass(frozen=True)
class CounterChange:
    """How much a counter grew (``delta``) over ``seconds`` (``None``: unknown), counted
    ``since`` ``"the previous run"`` or ``"the server started"`` (it was reset meanwhile)."""

    delta: float
    seconds: float | None
    since: str

    @property
    def per_second(self) -> float | None:
        return self.delta / self.seconds if self.seconds else None


def counter_change(
    previous: tuple[float, float] | None,
    current: float,
    now: float,
    counted_seconds: float | None = None,
) -> CounterChange | None:
    """The change of a counter since ``previous`` (unix time, value) to ``current`` at ``now``;
    ``counted_seconds``: how long the server has been counting (uptime, or since its
    statistics were reset). A counter below its previous value, or counted for less time
    than has passed, was reset: the change is then all of ``current``. ``None`` without a
    previous value."""
    if previous is None:
        return None
    then, before = previous
    elapsed = now - then
    if current < before or (counted_seconds is not None and counted_seconds < elapsed):
        return CounterChange(current, counted_seconds, "the server started")
    return CounterChange(current - before, elapsed if elapsed > 0 else None, "the previous run")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100) of ``values``, interpolating linearly between the
    closest ranks (numpy's default): the median of ``[1, 2, 3, 4]`` is 2.5. Raises
    ``ValueError`` for no values."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _previous(ctx: TaskContext, metric: str) -> tuple[float, float] | None:
    """The newest (time, value) of ``metric`` this task recorded on this target."""
    if ctx.journal is None:
        return None
    history = ctx.journal.metric_history(TASK, ctx.target.label, metric)
    return history[-1] if history else None


def _counter(
    ctx: TaskContext, fig: Figures, metric: str, current: int, counted: float | None
) -> CounterChange | None:
    """Record counter ``metric`` and ``<metric>_since_last_run`` (when there was a run)."""
    change = counter_change(_previous(ctx, metric), current, time.time(), counted)
    fig.metrics[metric] = current
    if change is not None:
        fig.metrics[f"{metric}_since_last_run"] = change.delta
    return change


def _ratio(value: float) -> str:
    return f"{value * 100:.1f}%"


def _hit_ratio(fig: Figures, metric: str, what: str, ratio: float | None, warn: float) -> None:
    if ratio is None:
        fig.add(f"{what}: nothing read yet")
        return
    fig.metrics[metric] = ratio
    fig.add(f"{what} {_ratio(ratio)}", f"below {warn:g}%" if ratio * 100 < warn else None)


# --- databases -------------------------------------------------------------------------------


def _database(ctx: TaskContext) -> TaskResult:
    from crmmaint.engines import engine_for

    engine = engine_for(ctx.target.obj, ctx.transport)
    fig = Figures(details={"engine": engine.engine})
    if engine.engine == "postgresql":
        _postgresql(ctx, engine, fig)  # type: ignore[arg-type]
    elif engine.engine == "mysql":
        _mysql(ctx, engine, fig)  # type: ignore[arg-type]
    else:
        _sqlite(ctx, engine, fig)
    return fig.result(ctx, engine.engine)


def _postgresql(ctx: TaskContext, engine: PostgreSQLEngine, fig: Figures) -> None:
    """Cache hit ratio, transactions per second, open transactions, replication, statements."""
    from crmmaint.engines.postgresql.statistics import FIGURES_TIMEOUT as PG_TIMEOUT
    from crmmaint.engines.postgresql.statistics import LISTED_TRANSACTIONS, PgStatistics

    p = ctx.params
    stats = PgStatistics(engine)
    db = stats.database(timeout=ctx.time_left(PG_TIMEOUT) or PG_TIMEOUT)
    _hit_ratio(fig, "pg_cache_hit_ratio", "cache hit", db.cache_hit_ratio, p["cache_hit_warn"])
    fig.metrics.update(pg_blocks_hit=db.blocks_hit, pg_blocks_read=db.blocks_read)
    change = _counter(ctx, fig, "pg_transactions", db.transactions, db.counted_seconds)
    if change is not None and change.per_second is not None:
        fig.metrics["pg_transactions_per_second"] = round(change.per_second, 3)
        fig.add(f"{change.per_second:.1f} transactions/s since {change.since}")

    open_ = stats.open_transactions(timeout=ctx.time_left(PG_TIMEOUT) or PG_TIMEOUT)
    long = [t for t in open_ if t.seconds >= p["long_transaction"]]
    oldest = open_[0].seconds if open_ else 0.0
    fig.metrics.update(pg_long_transactions=len(long), pg_oldest_transaction_seconds=oldest)
    limit = format_duration(p["long_transaction"])
    text = f"{plural(len(long), 'transaction')} open over {limit}"
    if open_:
        text += f" (oldest {format_elapsed(oldest)})"
    fig.add(text, f"warn at {limit}" if long else None)
    fig.details["transactions"] = [asdict(t) for t in open_[:LISTED_TRANSACTIONS]]

    replication = stats.replication(
        standby=db.in_recovery, timeout=ctx.time_left(PG_TIMEOUT) or PG_TIMEOUT
    )
    _replication(ctx, fig, replication)

    try:
        statements = stats.statements(p["top"], timeout=ctx.time_left(PG_TIMEOUT) or PG_TIMEOUT)
    except EngineError as exc:  # the other figures stand without it
        fig.details["statements"] = {"source": "pg_stat_statements", "error": str(exc)}
        fig.add("pg_stat_statements unreadable", "see details.statements.error")
        return
    fig.details["statements"] = {
        "source": "pg_stat_statements",
        "state": statements.state,
        "version": statements.version,
        "how_to_enable": statements.how_to_enable,
        "top": [asdict(s) for s in statements.top],
    }
    if statements.state == "available":
        fig.add(f"pg_stat_statements: top {plural(len(statements.top), 'statement')}")
    else:
        fig.add(f"pg_stat_statements {statements.state}")


def _replication(ctx: TaskContext, fig: Figures, replication: Replication) -> None:
    fig.details["replication"] = asdict(replication)
    if replication.role == "primary":
        fig.metrics["pg_standbys"] = len(replication.standbys)
        if not replication.standbys:
            fig.add("no replication")
            return
        who = plural(len(replication.standbys), "standby", "standbys")
    else:
        who = "standby"
    if replication.lag_bytes is not None:
        fig.metrics["replication_lag_bytes"] = replication.lag_bytes
    lag = replication.lag_seconds
    if lag is None:
        fig.add(f"{who}, replay lag not measured")
        return
    fig.metrics["replication_lag_seconds"] = lag
    warn = ctx.params["replication_lag_warn"]
    text = f"{who}, replay lag {format_elapsed(lag)}"
    if replication.lag_bytes:
        text += f", {format_size(replication.lag_bytes)} of WAL behind"
    fig.add(text, f"warn at {format_duration(warn)}" if lag >= warn else None)


def _mysql(ctx: TaskContext, engine: MySQLEngine, fig: Figures) -> None:
    """Buffer pool hit ratio, slow queries (and since the last run), queries/s, threads."""
    from crmmaint.engines.mysql_statistics import FIGURES_TIMEOUT as MYSQL_TIMEOUT
    from crmmaint.engines.mysql_statistics import server_figures

    p = ctx.params
    server = server_figures(engine, timeout=ctx.time_left(MYSQL_TIMEOUT) or MYSQL_TIMEOUT)
    _hit_ratio(
        fig, "mysql_buffer_pool_hit_ratio", "buffer pool hit", server.buffer_pool_hit_ratio,
        p["cache_hit_warn"],
    )  # fmt: skip
    uptime = float(server.uptime_seconds)
    slow = _counter(ctx, fig, "mysql_slow_queries", server.slow_queries, uptime)
    setting = f"long_query_time {server.long_query_time:g}s"
    if slow is None:
        fig.add(f"{server.slow_queries} slow queries since the server started ({setting})")
    else:
        limit = p["slow_queries_warn"]
        fig.add(
            f"{slow.delta:.0f} slow queries since {slow.since} ({setting})",
            f"warn at {limit}" if limit is not None and slow.delta >= limit else None,
        )
    questions = _counter(ctx, fig, "mysql_questions", server.questions, uptime)
    if questions is not None and questions.per_second is not None:
        fig.metrics["mysql_queries_per_second"] = round(questions.per_second, 3)
        fig.add(f"{questions.per_second:.1f} queries/s since {questions.since}")
    fig.metrics.update(
        mysql_threads_connected=server.threads_connected,
        mysql_threads_running=server.threads_running,
        mysql_uptime_seconds=server.uptime_seconds,
        mysql_long_query_time_seconds=server.long_query_time,
    )
    fig.add(
        f"{plural(server.threads_connected, 'thread')} connected ({server.threads_running} running)"
    )
    fig.details["server"] = asdict(server)


def _sqlite(ctx: TaskContext, engine: DatabaseEngine, fig: Figures) -> None:
    """SQLite keeps no performance statistics: its size and free pages, for the trend."""
    from crmmaint.engines.base import QUERY_TIMEOUT

    facts = engine.facts(timeout=ctx.time_left(QUERY_TIMEOUT) or QUERY_TIMEOUT)
    fig.metrics.update(sqlite_size_bytes=facts["size_bytes"], sqlite_free_pages=facts["free_pages"])
    fig.add(f"{format_size(facts['size_bytes'])}, {plural(facts['free_pages'], 'free page')}")
    fig.add("SQLite keeps no performance statistics")
    fig.details.update(version=facts.get("version"), journal_mode=facts.get("journal_mode"))


# --- caches ----------------------------------------------------------------------------------


def _cache(ctx: TaskContext) -> TaskResult:
    """Redis hit ratio, memory against maxmemory, evictions (and since the last run)."""
    from crmmaint.engines.redis import QUERY_TIMEOUT as REDIS_TIMEOUT
    from crmmaint.engines.redis import RedisCache

    cache = RedisCache(ctx.target.obj, ctx.transport)
    if cache.address is None:
        return TaskResult.skipped(
            "no Redis on this cache (cache directories keep no figures)",
            details=ctx.read_only_details(),
        )
    p = ctx.params
    info = cache.info(timeout=ctx.time_left(REDIS_TIMEOUT) or REDIS_TIMEOUT)
    fig = Figures(details={"engine": "redis", "version": info["version"]})
    hit_ratio = info["hit_ratio"]
    if isinstance(hit_ratio, float):
        fig.metrics["redis_hit_ratio"] = round(hit_ratio, 6)
        fig.add(f"hit {_ratio(hit_ratio)}")
    else:
        fig.add("hit ratio: no lookups yet")
    used, maximum = int(info["used_memory"] or 0), int(info["maxmemory"] or 0)
    fig.metrics["redis_used_memory_bytes"] = used
    if maximum:
        share = used / maximum
        fig.metrics.update(redis_maxmemory_bytes=maximum, redis_memory_used_ratio=round(share, 6))
        warn = p["redis_memory_warn"]
        fig.add(
            f"memory {format_size(used)} of {format_size(maximum)} ({_ratio(share)})",
            f"warn at {warn:g}%" if share * 100 >= warn else None,
        )
    else:
        fig.add(f"memory {format_size(used)} (no maxmemory)")
    evicted = int(info["evicted_keys"] or 0)
    uptime = float(info["uptime"] or 0)
    change = _counter(ctx, fig, "redis_evicted_keys", evicted, uptime)
    if change is None:
        fig.add(f"{plural(evicted, 'key')} evicted since the server started")
    else:
        limit = p["evictions_warn"]
        fig.add(
            f"{plural(int(change.delta), 'key')} evicted since {change.since}",
            f"warn at {limit}" if change.delta >= limit else None,
        )
    fig.metrics.update(
        redis_keyspace_hits=int(info["keyspace_hits"] or 0),
        redis_keyspace_misses=int(info["keyspace_misses"] or 0),
        redis_connected_clients=int(info["connected_clients"] or 0),
        redis_keys=int(info["keys"] or 0),
        redis_uptime_seconds=int(uptime),
    )
    return fig.result(ctx, "redis")


# --- HTTP endpoints --------------------------------------------------------------------------


@dataclass
class Timings:
    """The requests made to one URL: latencies of those answered (seconds), the statuses of
    answers 400 and above, the requests that got no answer and the last reason."""

    url: str
    seconds: list[float] = field(default_factory=list)
    error_statuses: list[int] = field(default_factory=list)
    failed: int = 0
    last_error: str | None = None

    def summary(self) -> dict[str, Any]:
        """Requests, failures, error responses and the latency percentiles (seconds)."""
        out: dict[str, Any] = {
            "url": http_probe.shown_url(self.url),
            "requests": len(self.seconds) + self.failed,
            "failed_requests": self.failed,
            "error_responses": len(self.error_statuses),
        }
        if self.seconds:
            for q in PERCENTILES:
                out[f"p{q}_seconds"] = round(percentile(self.seconds, q), 6)
            out["max_seconds"] = round(max(self.seconds), 6)
        if self.last_error:
            out["last_error"] = self.last_error
        return out


def _time_url(ctx: TaskContext, url: str) -> Timings:
    """``requests`` GETs of ``url`` from the runner, one after another (``FAILURES_IN_A_ROW``
    without an answer end them)."""
    p = ctx.params
    timings = Timings(url)
    in_a_row = 0
    for _ in range(p["requests"]):
        try:
            status, seconds = http_probe.request_from_runner(
                url, ctx.time_left(p["timeout"]) or p["timeout"], follow=False
            )
        except ProbeError as exc:
            timings.failed += 1
            timings.last_error = exc.message
            in_a_row += 1
            if in_a_row >= FAILURES_IN_A_ROW:
                break
            continue
        in_a_row = 0
        timings.seconds.append(seconds)
        if status >= 400:
            timings.error_statuses.append(status)
    return timings


def _endpoints(ctx: TaskContext) -> TaskResult:
    """Latency percentiles of the host's HTTP endpoints, timed from the runner."""
    p = ctx.params
    raw = p["urls"] or [getattr(ctx.target.obj, "vars", {}).get("health_url")]
    raw = [str(u) for u in raw if u]
    if not raw:
        return TaskResult.skipped(
            "no url to time (give urls, or set vars.health_url on the host)",
            details=ctx.read_only_details(),
        )
    urls = [http_probe.expand_url(u, ctx.target.host) for u in raw]
    if bad := [why for u in urls if (why := http_probe.url_problem(u))]:
        return TaskResult.failed(
            bad[0], retryable=False,
            details=ctx.read_only_details(urls=[http_probe.shown_url(u) for u in urls]),
        )  # fmt: skip
    timed = [_time_url(ctx, url) for url in urls]
    fig = Figures(details={"endpoints": [t.summary() for t in timed]})
    answered = [s for t in timed for s in t.seconds]
    if answered:
        for q in PERCENTILES:
            fig.metrics[f"http_p{q}_seconds"] = round(percentile(answered, q), 6)
        fig.metrics["http_max_seconds"] = round(max(answered), 6)
    fig.metrics.update(
        http_requests=sum(len(t.seconds) + t.failed for t in timed),
        http_failed_requests=sum(t.failed for t in timed),
        http_error_responses=sum(len(t.error_statuses) for t in timed),
    )
    down = [t for t in timed if not t.seconds]
    for t in timed:
        if t.seconds and len(timed) > 1:
            for q in PERCENTILES:
                fig.metrics[f"http_p{q}_seconds:{http_probe.shown_url(t.url)}"] = round(
                    percentile(t.seconds, q), 6
                )
        _say_endpoint(ctx, fig, t)
    if down:
        return TaskResult.failed(
            "; ".join(
                f"{http_probe.shown_url(t.url)} did not answer: {t.last_error}" for t in down
            ),
            metrics=fig.metrics,
            details=ctx.read_only_details(**fig.details),
        )
    return fig.result(ctx, "http")


def _say_endpoint(ctx: TaskContext, fig: Figures, t: Timings) -> None:
    if not t.seconds:
        return
    ms = {q: percentile(t.seconds, q) * 1000 for q in PERCENTILES}
    text = (
        f"{http_probe.shown_url(t.url)} p50 {ms[50]:.0f} ms, p95 {ms[95]:.0f} ms, p99 {ms[99]:.0f} ms,"
        f" max {max(t.seconds) * 1000:.0f} ms over {plural(len(t.seconds), 'answer')}"
    )
    warn = ctx.params["latency_warn"]
    problems = []
    if ms[95] >= warn * 1000:
        problems.append(f"p95 warn at {warn * 1000:.0f} ms")
    if t.failed:
        problems.append(f"{plural(t.failed, 'request')} unanswered: {t.last_error}")
    if t.error_statuses:
        problems.append(f"{len(t.error_statuses)} answered {t.error_statuses[0]}")
    fig.add(text, "; ".join(problems) or None)
