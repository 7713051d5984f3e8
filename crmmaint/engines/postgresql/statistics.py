"""PostgreSQL performance figures for ``perf.report``: the shared-buffer cache hit ratio, open
transactions, replication lag and the top statements of ``pg_stat_statements``.

The server computes the figures (ratios, ages, byte distances between WAL positions); Python
only reads numbers. Every query runs through ``PostgreSQLEngine.query`` (its session pinned:
``search_path`` ``pg_catalog, pg_temp``, so no object of the database stands in for a catalog
one), read-only, with a ``statement_timeout`` of its own (the pins turn the server's off).

No statement text of a session is ever read (``pg_stat_activity.query`` holds the literals a
client sent: customer data). Statement texts come from ``pg_stat_statements`` only, which
replaces constants with ``$1``; ``statement_text`` blanks whatever literal is left (utility
statements are not normalised before PostgreSQL 16) and cuts it to ``STATEMENT_TEXT_LIMIT``.

For a user other than a superuser to see other users' sessions and statements, grant it
``pg_monitor`` (``pg_read_all_stats``); without it those rows show no times, which counts
them as not open.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crmmaint.engines.base import QUERY_TIMEOUT
from crmmaint.engines.postgresql.catalog import quote_ident
from crmmaint.errors import EngineError

if TYPE_CHECKING:
    from crmmaint.engines.postgresql.engine import PostgreSQLEngine

log = logging.getLogger(__name__)

#: Seconds a figures query may take (client and ``statement_timeout``): they read statistics
#: views, which answer in milliseconds; a server that takes longer is too busy to be asked more.
FIGURES_TIMEOUT = 60.0
#: Characters of a statement's text a report keeps (after ``statement_text`` blanks literals).
STATEMENT_TEXT_LIMIT = 200
#: Characters of a statement's text read from the server (the rest is never transferred).
_TEXT_READ = 2000
#: Open transactions listed in the details, oldest first.
LISTED_TRANSACTIONS = 5

#: The library name in ``shared_preload_libraries`` (a list that may quote names or give a
#: path: ``'"pg_stat_statements"'``, ``'$libdir/pg_stat_statements'``); NULL for a user who
#: may not read that setting (``pg_settings`` hides it, ``current_setting`` would fail).
_PRELOADED = r"""(SELECT setting ~ '(^|[\s,"/])pg_stat_statements(\.so)?("|\s|,|$)'
          FROM pg_settings WHERE name = 'shared_preload_libraries')"""

DATABASE_SQL = """
SELECT d.blks_hit, d.blks_read,
       CASE WHEN d.blks_hit + d.blks_read > 0
            THEN round(d.blks_hit::numeric / (d.blks_hit + d.blks_read), 6) END,
       d.xact_commit + d.xact_rollback,
       round(extract(epoch FROM now() - d.stats_reset), 3),
       pg_is_in_recovery()
FROM pg_stat_database d WHERE d.datname = current_database()
"""

#: Client sessions of this database with a transaction open, oldest first: no query text.
TRANSACTIONS_SQL = """
SELECT a.pid, coalesce(a.usename, ''), left(coalesce(a.application_name, ''), 64),
       coalesce(a.state, ''), round(extract(epoch FROM now() - a.xact_start), 3)
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.backend_type = 'client backend'
  AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL
ORDER BY a.xact_start
"""

#: On a primary: one row per standby streaming from it.
STANDBYS_SQL = """
SELECT coalesce(application_name, ''), coalesce(host(client_addr), 'local'),
       coalesce(state, ''), coalesce(sync_state, ''),
       round(extract(epoch FROM replay_lag), 3),
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint
FROM pg_stat_replication ORDER BY 1, 2
"""

#: On a standby: how far behind its replay is. Caught up (all WAL received is replayed), it
#: has no lag, however long ago the primary last committed.
STANDBY_LAG_SQL = """
SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE round(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 3) END,
       coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint
"""

#: Is pg_stat_statements loaded, its version in this database, and the schema of its view
#: (the view that belongs to the extension, not one of the same name a user made).
STATEMENTS_SETUP_SQL = f"""
SELECT {_PRELOADED},
       (SELECT e.extversion FROM pg_extension e WHERE e.extname = 'pg_stat_statements'),
       (SELECT n.nspname FROM pg_extension e
          JOIN pg_depend d ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid
           AND d.deptype = 'e' AND d.classid = 'pg_class'::regclass
          JOIN pg_class c ON c.oid = d.objid AND c.relname = 'pg_stat_statements'
           AND c.relkind = 'v'
          JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE e.extname = 'pg_stat_statements')
"""

#: What ``pg_stat_statements`` says when its library is not in ``shared_preload_libraries``.
_NOT_LOADED = "must be loaded via shared_preload_libraries"


def top_statements_sql(schema: str, version: str, limit: int) -> str:
    """The ``limit`` statements of this database that took the most time: queryid, calls,
    total and mean seconds, rows, share of this database's statement time, text (cut to
    ``_TEXT_READ`` characters). Extension versions before 1.8 name the times ``total_time``
    and ``mean_time``."""
    new_names = _version(version) >= (1, 8)
    total, mean = (
        ("total_exec_time", "mean_exec_time") if new_names else ("total_time", "mean_time")
    )
    return f"""
SELECT coalesce(s.queryid::text, ''), s.calls, round((s.{total} / 1000)::numeric, 6),
       round((s.{mean} / 1000)::numeric, 6), s.rows,
       round((s.{total} / nullif(sum(s.{total}) OVER (), 0))::numeric, 4),
       left(coalesce(s.query, ''), {_TEXT_READ})
FROM {quote_ident(schema)}.pg_stat_statements s
WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY s.{total} DESC LIMIT {int(limit)}
"""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2]) or (0,)


# One token of SQL, left to right: a comment, a dollar-quoted body, a string literal (an E''
# one with backslash escapes, others with their B/X/N/U& prefix), a quoted identifier (kept),
# a number. An unterminated one runs to
# the end (the text may have been cut in the middle of a literal).
_TOKENS = re.compile(
    r"""(?P<comment>/\*.*?(?:\*/|\Z)|--[^\n]*)
      |(?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)?\$.*?(?:\$(?P=tag)\$|\Z))
      |(?P<escaped>\b[Ee]'(?:[^'\\]|''|\\.)*(?:'|\Z))
      |(?P<string>(?:\b[BbXxNn]|\b[Uu]&)?'(?:[^']|'')*(?:'|\Z))
      |(?P<ident>"(?:[^"]|"")*(?:"|\Z))
      |(?P<number>(?<![\w$.])\d+(?:\.\d*)?(?:[eE][+-]?\d+)?(?!\w))""",
    re.DOTALL | re.VERBOSE,
)


def statement_text(text: str, limit: int = STATEMENT_TEXT_LIMIT) -> str:
    """A statement's text fit for a report: literals, dollar-quoted bodies and numbers
    replaced by ``?``, comments dropped, whitespace collapsed, at most ``limit`` characters
    (``…`` marks a cut). ``$1`` placeholders and quoted identifiers stay."""

    def blank(m: re.Match[str]) -> str:
        if m.group("comment"):
            return " "
        if m.group("ident"):
            return m.group("ident")
        return "?"

    flat = " ".join(_TOKENS.sub(blank, text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass(frozen=True)
class DatabaseFigures:
    """Counters of this database since its statistics were last reset: shared-buffer
    ``blocks_hit`` and ``blocks_read`` (read from the OS or disk), their ``cache_hit_ratio``
    (0 to 1, ``None`` before any block was read), ``transactions`` committed and rolled back,
    ``counted_seconds`` since that reset (``None``: never reset; since PostgreSQL 15 the
    counters outlive a clean restart); ``in_recovery``: a standby."""

    blocks_hit: int
    blocks_read: int
    cache_hit_ratio: float | None
    transactions: int
    counted_seconds: float | None
    in_recovery: bool


@dataclass(frozen=True)
class OpenTransaction:
    """A client session of this database inside a transaction (``state``: ``active``,
    ``idle in transaction`` …), open for ``seconds``. Never what it runs."""

    pid: int
    user: str
    application: str
    state: str
    seconds: float


@dataclass(frozen=True)
class Standby:
    """A standby streaming from this primary: its ``replay_lag_seconds`` (``None`` when the
    server has not measured one) and the WAL bytes it has yet to replay."""

    name: str
    address: str
    state: str
    sync_state: str
    replay_lag_seconds: float | None
    replay_lag_bytes: int | None


@dataclass(frozen=True)
class Replication:
    """This server's place in replication: ``role`` ``primary`` (with its ``standbys``, maybe
    none) or ``standby``; ``lag_seconds``/``lag_bytes``: the largest replay lag (on a standby
    its own), ``None`` when there is none to measure."""

    role: str
    standbys: list[Standby] = field(default_factory=list)
    lag_seconds: float | None = None
    lag_bytes: int | None = None


@dataclass(frozen=True)
class TopStatement:
    """One normalised statement of ``pg_stat_statements``: its ``queryid``, ``calls``, total
    and mean seconds, ``rows``, ``share`` of this database's statement time (0 to 1) and its
    ``text`` as ``statement_text`` gives it."""

    queryid: str
    calls: int
    total_seconds: float
    mean_seconds: float
    rows: int
    share: float | None
    text: str


@dataclass(frozen=True)
class Statements:
    """What ``pg_stat_statements`` offers this database: ``state`` is ``available``,
    ``not installed`` (no ``CREATE EXTENSION`` in this database) or ``not loaded`` (not in
    ``shared_preload_libraries``: its view fails); ``loaded`` says whether the server preloads
    the library (``None``: this user may not read the setting), ``version`` the extension's
    version here; ``top`` when available."""

    state: str
    loaded: bool | None
    version: str | None = None
    top: list[TopStatement] = field(default_factory=list)

    @property
    def how_to_enable(self) -> str | None:
        """What an administrator does to make it available, or ``None`` when it is."""
        if self.state == "available":
            return None
        steps = []
        if self.loaded is False:
            steps.append(
                "add pg_stat_statements to shared_preload_libraries and restart the server"
            )
        elif self.loaded is None:
            steps.append(
                "check that shared_preload_libraries holds pg_stat_statements (this user may "
                "not read it: grant it pg_monitor)"
            )
        if self.state == "not installed":
            steps.append("CREATE EXTENSION pg_stat_statements in this database")
        return "; ".join(steps)


class PgStatistics:
    """The performance figures of one PostgreSQL database, asked through its engine.

    Every method raises ``EngineError`` (naming database and host) when psql fails, the
    server refuses, or the query outlives its ``timeout`` (seconds).
    """

    def __init__(self, engine: PostgreSQLEngine) -> None:
        self.engine = engine

    def ask(self, sql: str, *, timeout: float = FIGURES_TIMEOUT) -> list[tuple[str, ...]]:
        """Rows of ``sql`` in a read-only session whose ``statement_timeout`` is ``timeout``."""
        guard = (
            f"SET statement_timeout = {max(1, int(timeout * 1000))};\n"
            "SET lock_timeout = 5000;\nSET default_transaction_read_only = on;\n"
        )
        return self.engine.query(guard + sql, timeout=min(timeout + 10, QUERY_TIMEOUT))

    def database(self, *, timeout: float = FIGURES_TIMEOUT) -> DatabaseFigures:
        """The buffer cache and transaction counters of this database (``DatabaseFigures``)."""
        (row,) = self.ask(DATABASE_SQL, timeout=timeout)
        hit, read, ratio, transactions, counted, recovery = row
        return DatabaseFigures(
            blocks_hit=int(hit),
            blocks_read=int(read),
            cache_hit_ratio=float(ratio) if ratio else None,
            transactions=int(transactions),
            counted_seconds=_float(counted),
            in_recovery=recovery == "t",
        )

    def open_transactions(self, *, timeout: float = FIGURES_TIMEOUT) -> list[OpenTransaction]:
        """Client sessions of this database with a transaction open, oldest first (this
        session left out)."""
        return [
            OpenTransaction(int(pid), user, app, state, float(seconds))
            for pid, user, app, state, seconds in self.ask(TRANSACTIONS_SQL, timeout=timeout)
        ]

    def replication(self, *, standby: bool, timeout: float = FIGURES_TIMEOUT) -> Replication:
        """Replication lag: on a primary (``standby`` false, from ``DatabaseFigures.in_recovery``)
        per standby streaming from it, on a standby its own replay delay."""
        if standby:
            ((seconds, backlog),) = self.ask(STANDBY_LAG_SQL, timeout=timeout)
            return Replication(
                "standby", lag_seconds=float(seconds) if seconds else None, lag_bytes=int(backlog)
            )
        standbys = [
            Standby(name, address, state, sync, _float(lag), _int(behind))
            for name, address, state, sync, lag, behind in self.ask(STANDBYS_SQL, timeout=timeout)
        ]
        if not standbys:
            return Replication("primary")
        lags = [s.replay_lag_seconds for s in standbys if s.replay_lag_seconds is not None]
        behind = [s.replay_lag_bytes for s in standbys if s.replay_lag_bytes is not None]
        if not lags and behind and max(behind) == 0:
            lags = [0.0]  # every standby caught up and idle: the server stopped measuring
        return Replication(
            "primary",
            standbys,
            lag_seconds=max(lags) if lags else None,
            lag_bytes=max(behind) if behind else None,
        )

    def statements(self, limit: int, *, timeout: float = FIGURES_TIMEOUT) -> Statements:
        """The ``limit`` statements that took the most time in this database, if
        ``pg_stat_statements`` is installed here and loaded (``Statements`` says which)."""
        ((preloaded, version, schema),) = self.ask(STATEMENTS_SETUP_SQL, timeout=timeout)
        loaded = {"t": True, "f": False}.get(preloaded)
        if not version or not schema:
            return Statements("not installed", loaded)
        try:
            rows = self.ask(top_statements_sql(schema, version, limit), timeout=timeout)
        except EngineError as exc:
            if _NOT_LOADED not in exc.message:
                raise
            # Preloaded under a name the check did not recognise is still loaded; this is not.
            return Statements("not loaded", False, version)
        top = [
            TopStatement(
                queryid=queryid,
                calls=int(calls),
                total_seconds=float(total),
                mean_seconds=float(mean),
                rows=int(rows_),
                share=_float(share),
                text=statement_text(text),
            )
            for queryid, calls, total, mean, rows_, share, text in rows
        ]
        return Statements("available", True, version, top)


def _float(value: str) -> float | None:
    return float(value) if value else None


def _int(value: str) -> int | None:
    return int(value) if value else None
