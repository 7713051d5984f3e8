"""MariaDB/MySQL performance figures for ``perf.report``: InnoDB buffer pool hit ratio, slow
queries, threads and uptime, from the server's global status.

A module of its own beside ``mysql.py`` (which holds dumps, restores and, to come, index
maintenance), as ``postgresql/statistics.py`` is beside the PostgreSQL engine. The figures are
server-wide: two inventory databases on one server report the same ones. The server computes
the hit ratio; the query runs through ``MySQLEngine.query`` in a read-only session bounded by
``max_statement_time``, and reads no table of the database and no statement text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crmmaint.engines.base import QUERY_TIMEOUT

if TYPE_CHECKING:
    from crmmaint.engines.mysql import MySQLEngine

log = logging.getLogger(__name__)

#: Seconds the figures query may take (client and ``max_statement_time``): it reads status
#: variables, which answer in milliseconds.
FIGURES_TIMEOUT = 60.0

_STATUS = {
    "requests": "INNODB_BUFFER_POOL_READ_REQUESTS",
    "disk_reads": "INNODB_BUFFER_POOL_READS",
    "slow": "SLOW_QUERIES",
    "questions": "QUESTIONS",
    "connected": "THREADS_CONNECTED",
    "running": "THREADS_RUNNING",
    "uptime": "UPTIME",
}

#: One row: the status counters, the hit ratio the server computes from them (1 - reads from
#: disk / logical read requests), and the slow-query settings.
STATUS_SQL = (
    "SELECT s.requests, s.disk_reads,\n"
    "       IF(s.requests > 0, ROUND(1 - s.disk_reads * 1e0 / s.requests, 6), NULL),\n"
    "       s.slow, s.questions, s.connected, s.running, s.uptime,\n"
    "       @@GLOBAL.long_query_time, @@GLOBAL.slow_query_log\n"
    "FROM (SELECT\n"
    + ",\n".join(
        f"  MAX(IF(variable_name = '{name}', CAST(variable_value AS UNSIGNED), NULL)) AS {alias}"
        for alias, name in _STATUS.items()
    )
    + "\n  FROM information_schema.global_status\n  WHERE variable_name IN ("
    + ", ".join(f"'{name}'" for name in _STATUS.values())
    + ")) s"
)


@dataclass(frozen=True)
class ServerFigures:
    """A MariaDB/MySQL server's figures, counters since it started: InnoDB buffer pool
    ``read_requests`` (logical) and ``disk_reads`` (not found in the pool), their
    ``buffer_pool_hit_ratio`` (0 to 1, ``None`` before any read), ``slow_queries`` (statements
    that took longer than ``long_query_time`` seconds, whether or not ``slow_query_log``
    writes them), ``questions`` (statements clients sent), threads connected and running, and
    ``uptime_seconds``."""

    read_requests: int
    disk_reads: int
    buffer_pool_hit_ratio: float | None
    slow_queries: int
    questions: int
    threads_connected: int
    threads_running: int
    uptime_seconds: int
    long_query_time: float
    slow_query_log: bool


def server_figures(engine: MySQLEngine, *, timeout: float = FIGURES_TIMEOUT) -> ServerFigures:
    """The server's ``ServerFigures``. Raises ``EngineError`` (naming database and host) when
    the client fails, the server refuses, or the query outlives ``timeout`` seconds."""
    sql = (
        f"SET SESSION max_statement_time = {max(timeout, 0.001):.3f};\n"
        f"SET SESSION TRANSACTION READ ONLY;\n{STATUS_SQL};\n"
    )
    (row,) = engine.query(sql, timeout=min(timeout + 10, QUERY_TIMEOUT))
    values = [None if v in ("", "NULL") else v for v in row]
    requests, reads, ratio, slow, questions, connected, running, uptime, long_time, log_on = values
    return ServerFigures(
        read_requests=int(requests or 0),
        disk_reads=int(reads or 0),
        buffer_pool_hit_ratio=float(ratio) if ratio is not None else None,
        slow_queries=int(slow or 0),
        questions=int(questions or 0),
        threads_connected=int(connected or 0),
        threads_running=int(running or 0),
        uptime_seconds=int(uptime or 0),
        long_query_time=float(long_time or 0),
        slow_query_log=log_on == "1",
    )
