"""PostgreSQL index and table maintenance: bloat, invalid, duplicate and unused indexes, and
dead tuples, asked of the catalog; ``REINDEX INDEX CONCURRENTLY``, ``DROP INDEX CONCURRENTLY``
of the leftovers of failed concurrent rebuilds and ``VACUUM (ANALYZE)``, each under
``lock_timeout`` and ``statement_timeout``.

Bloat of a B-tree index comes from ``pgstatindex`` (the ``pgstattuple`` extension) when the
database has that extension, else from an estimate: the index's size against the pages its
rows need by the planner's statistics (``reltuples``, ``pg_stats.avg_width``; the approach of
the widely used ``btree_bloat.sql`` of the PostgreSQL community, simplified). The survey says
which. Other index types are not measured.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from crmmaint.engines.maintenance import (
    Action,
    Finding,
    MaintenancePolicy,
    Outcome,
    Survey,
    TableMaintenance,
)
from crmmaint.engines.postgresql.catalog import (
    _USER_SCHEMAS,
    parse_csv,
    quote_ident,
    quote_literal,
)
from crmmaint.errors import EngineError
from crmmaint.units import format_size

if TYPE_CHECKING:
    from crmmaint.engines.postgresql.engine import PostgreSQLEngine

log = logging.getLogger(__name__)

#: Page layout of a B-tree (``src/include/storage/bufpage.h``, ``nbtree.h``): page header
#: 24 bytes, B-tree special space 16, index tuple header 8, line pointer 4, MAXALIGN 8.
_PAGE_HEADER, _BTREE_SPECIAL, _TUPLE_HEADER, _LINE_POINTER, _ALIGN = 24, 16, 8, 4, 8
#: B-tree default fillfactor (``BTREE_DEFAULT_FILLFACTOR``).
_BTREE_FILLFACTOR = 90
#: Fewest dead tuples worth a VACUUM (autovacuum's default ``autovacuum_vacuum_threshold``).
_MIN_DEAD_TUPLES = 50
#: The names PostgreSQL gives the copies of a concurrent rebuild (``index_concurrently_*``).
_LEFTOVER = re.compile(r"_cc(new|old)\d*$")

_INDEXES_SQL = f"""
SELECT n.nspname, c.relname, t.relname, i.indexrelid, i.indrelid,
       pg_relation_size(i.indexrelid), pg_table_size(i.indrelid),
       i.indisvalid, i.indisunique OR i.indisprimary OR i.indisexclusion,
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid),
       am.amname, COALESCE(s.idx_scan, 0), c.reltuples::bigint, c.relpages,
       current_setting('block_size'),
       COALESCE((SELECT option_value FROM pg_options_to_table(c.reloptions)
                 WHERE option_name = 'fillfactor'), ''),
       i.indkey::text, i.indclass::text, i.indcollation::text,
       COALESCE(pg_get_expr(i.indexprs, i.indrelid), ''),
       COALESCE(pg_get_expr(i.indpred, i.indrelid), ''), i.indnkeyatts,
       EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.relid = i.indrelid)
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_am am ON am.oid = c.relam
LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = i.indexrelid
WHERE {_USER_SCHEMAS} AND t.relpersistence <> 't'
  AND c.relkind = 'i'  -- a partitioned table's index is its partitions' indexes
ORDER BY 1, 2
"""

# Per index: its columns, how many of them the planner has statistics for, and the sum of
# their average widths (plain columns under the table, expressions under the index).
_WIDTHS_SQL = f"""
SELECT i.indexrelid, count(*), count(s.avg_width), COALESCE(sum(s.avg_width), 0),
       COALESCE(bool_or(s.null_frac > 0), false)
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL generate_series(0, i.indnatts - 1) AS k(pos)
LEFT JOIN pg_attribute ta ON ta.attrelid = i.indrelid AND ta.attnum = i.indkey[k.pos]
LEFT JOIN pg_attribute ia ON ia.attrelid = i.indexrelid AND ia.attnum = k.pos + 1
LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND (
       (i.indkey[k.pos] <> 0 AND s.tablename = t.relname AND s.attname = ta.attname)
    OR (i.indkey[k.pos] = 0 AND s.tablename = c.relname AND s.attname = ia.attname))
WHERE {_USER_SCHEMAS}
GROUP BY i.indexrelid
"""

# Live rows as autovacuum counts them: the planner's reltuples (-1: never analyzed or
# vacuumed, then the statistics collector's n_live_tup).
_TABLES_SQL = """
SELECT s.schemaname, s.relname,
       CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint ELSE s.n_live_tup END,
       s.n_dead_tup, pg_table_size(s.relid), s.relid
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
ORDER BY 1, 2
"""

# The schema of the pgstattuple extension ('' without it), and when the statistics that say
# an index is unused began ('' since the server's start).
_SETTINGS_SQL = """
SELECT COALESCE((SELECT n.nspname FROM pg_extension e JOIN pg_namespace n
                 ON n.oid = e.extnamespace WHERE e.extname = 'pgstattuple'), ''),
       COALESCE((SELECT to_char(stats_reset AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"')
                 FROM pg_stat_database WHERE datname = current_database()), '')
"""


@dataclass(frozen=True)
class _Index:
    schema: str
    name: str
    table: str
    oid: str
    table_oid: str
    size: int
    table_size: int
    valid: bool
    unique: bool
    backs_constraint: bool
    method: str
    scans: int
    tuples: int
    pages: int
    block_size: int
    fillfactor: int
    key: str
    opclasses: str
    collations: str
    expressions: str
    predicate: str
    key_columns: int
    building: bool

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def table_label(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def definition(self) -> tuple[str, ...]:
        """What makes two indexes the same index."""
        return (self.table_oid, self.method, self.key, self.opclasses, self.collations,
                self.expressions, self.predicate)  # fmt: skip

    @property
    def columns(self) -> list[str]:
        return self.key.split()[: self.key_columns]


def _index(row: tuple[str, ...]) -> _Index:
    (schema, name, table, oid, table_oid, size, table_size, valid, unique, backs, method,
     scans, tuples, pages, block, fill, key, opclasses, collations, exprs, pred, nkey,
     building) = row  # fmt: skip
    return _Index(
        schema, name, table, oid, table_oid, int(size), int(table_size), valid == "t",
        unique == "t", backs == "t", method, int(scans), max(0, int(tuples)), int(pages),
        int(block), int(fill) if fill else _BTREE_FILLFACTOR, key, opclasses, collations,
        exprs, pred, int(nkey), building == "t",
    )  # fmt: skip


def estimated_btree_bytes(
    tuples: int, width: float, block_size: int, fillfactor: int, nullable: bool = False
) -> int:
    """Bytes a freshly built B-tree of ``tuples`` rows of key ``width`` bytes (the sum of the
    columns' average widths) needs: leaf pages filled to ``fillfactor`` percent, one in 100
    more for the inner pages (rounded up), and the meta page. A lower bound in spirit: a
    rebuilt index is about this size, so what exceeds it is bloat."""
    data = width + (_ALIGN if nullable else 0)
    tuple_bytes = _TUPLE_HEADER + math.ceil(data / _ALIGN) * _ALIGN + _LINE_POINTER
    usable = (block_size - _PAGE_HEADER - _BTREE_SPECIAL) * fillfactor / 100
    leaves = math.ceil(tuples * tuple_bytes / usable) if tuples else 1
    return (leaves + math.ceil(leaves / 100) + 1) * block_size


class PostgreSQLMaintenance(TableMaintenance):
    """``TableMaintenance`` of one PostgreSQL database, through its engine's psql."""

    #: REINDEX reads the table and writes the index; VACUUM reads the table: bytes/second.
    default_rates = {"reindex": 20e6, "vacuum": 40e6, "drop_leftover": 1e9}

    def __init__(self, engine: PostgreSQLEngine) -> None:
        self.engine = engine

    # --- survey ---------------------------------------------------------------------------

    def _catalog(self, timeout: float, lock_timeout: float) -> dict[str, list[tuple[str, ...]]]:
        """The survey's catalog queries in one session: their rows by query (``index``,
        ``width``, ``table``, ``settings``), each row tagged with its query's name. Sizes
        need a table's lightest lock: a table locked by another session fails the survey
        after ``lock_timeout`` seconds rather than waiting behind it."""
        queries = {"settings": _SETTINGS_SQL, "index": _INDEXES_SQL, "width": _WIDTHS_SQL,
                   "table": _TABLES_SQL}  # fmt: skip
        sql = ";\n".join(
            query.strip().replace("SELECT ", f"SELECT {quote_literal(tag)}, ", 1)
            for tag, query in queries.items()
        )
        out: dict[str, list[tuple[str, ...]]] = {tag: [] for tag in queries}
        pin = f"SET lock_timeout = {max(1, int(lock_timeout * 1000))};\n"
        for row in self.engine.query(pin + sql + ";", timeout=timeout):
            out[row[0]].append(row[1:])
        return out

    def survey(self, policy: MaintenancePolicy, *, timeout: float) -> Survey:
        catalog = self._catalog(timeout, policy.lock_timeout)
        indexes = [_index(row) for row in catalog["index"]]
        ((extension, since),) = catalog["settings"]
        method = (
            "bloat from pgstattuple" if extension else "bloat estimated from the catalog statistics"
        )
        survey = Survey(method=method, objects={"indexes": len(indexes)})
        since_text = since or "statistics began"
        bloat = self._bloat(indexes, policy, extension or None, catalog["width"], timeout)
        # Tables left alone: an index build under way, or a failed rebuild's copy to drop
        # first (rebuilding again while a long transaction blocks the drop adds a copy).
        busy = {i.table_oid for i in indexes if i.building}
        leftovers = {i.table_oid for i in indexes if not i.valid and _LEFTOVER.search(i.name)}
        for index in indexes:
            if index.table_oid in busy:
                if index.building:
                    survey.notes.append(f"{index.table_label}: an index build is under way; left"
                                        " alone")  # fmt: skip
                continue
            if not index.valid:
                survey.actions.append(self._invalid(index))
                continue
            if index.table_oid in leftovers:
                continue
            wasted = bloat.get(index.oid)
            if wasted is None or index.size < policy.min_size:
                continue
            share = wasted / index.size if index.size else 0.0
            if share >= policy.bloat_threshold:
                survey.actions.append(
                    Action(
                        kind="reindex",
                        object=index.label,
                        reason=f"{share:.0%} bloat ({format_size(wasted)} of"
                        f" {format_size(index.size)}, {method.removeprefix('bloat ')})",
                        size=index.size,
                        work=index.size + index.table_size,
                        statement=f"REINDEX INDEX CONCURRENTLY {index.qualified}",
                        locks="none for reads and writes (brief waits at its start and end)",
                        extra={"schema": index.schema, "name": index.name, "table": index.table},
                    )
                )
        survey.findings += _duplicates([i for i in indexes if i.valid])
        survey.findings += [
            Finding("unused", i.label, f"never scanned since {since_text}", i.size)
            for i in indexes
            if i.valid and i.scans == 0 and not i.unique and not i.backs_constraint
        ]
        tables = catalog["table"]
        survey.objects["tables"] = len(tables)
        for schema, table, live, dead, size, oid in tables:
            if oid in busy:
                continue  # VACUUM would wait for the index build's lock
            live_n, dead_n = int(live), int(dead)
            # autovacuum's rule (``autovacuum_vacuum_threshold`` + scale factor x reltuples)
            share = dead_n / max(1, live_n)
            if dead_n >= _MIN_DEAD_TUPLES + policy.dead_tuple_threshold * live_n:
                name = f"{quote_ident(schema)}.{quote_ident(table)}"
                survey.actions.append(
                    Action(
                        kind="vacuum",
                        object=f"{schema}.{table}",
                        reason=f"{dead_n} dead tuples, {share:.0%} of its {live_n} rows",
                        size=int(size),
                        work=int(size),
                        statement=f"VACUUM (ANALYZE) {name}",
                        locks="none for reads and writes; waits for DDL on the table",
                        extra={"schema": schema, "name": table},
                    )
                )
        return survey

    def _invalid(self, index: _Index) -> Action:
        if _LEFTOVER.search(index.name):
            return Action(
                kind="drop_leftover",
                object=index.label,
                reason="invalid: left by a failed concurrent rebuild",
                size=index.size,
                work=0,
                statement=f"DROP INDEX CONCURRENTLY {index.qualified}",
                locks="none for reads and writes",
                extra={"schema": index.schema, "name": index.name, "table": index.table},
            )
        return Action(
            kind="reindex",
            object=index.label,
            reason="invalid: a failed CREATE INDEX CONCURRENTLY; queries cannot use it",
            size=index.size,
            work=index.size + index.table_size,
            statement=f"REINDEX INDEX CONCURRENTLY {index.qualified}",
            locks="none for reads and writes (brief waits at its start and end)",
            extra={"schema": index.schema, "name": index.name, "table": index.table},
        )

    def _bloat(
        self,
        indexes: list[_Index],
        policy: MaintenancePolicy,
        extension_schema: str | None,
        width_rows: list[tuple[str, ...]],
        timeout: float,
    ) -> dict[str, int]:
        """Wasted bytes of each valid B-tree index at least ``policy.min_size`` big, by oid:
        from ``pgstatindex`` in ``extension_schema``, else estimated from ``width_rows``
        (``_WIDTHS_SQL``)."""
        measured = [
            i for i in indexes
            if i.valid and i.method == "btree" and i.size >= policy.min_size and not i.building
        ]  # fmt: skip
        if not measured:
            return {}
        out: dict[str, int] = {}
        if extension_schema is not None:
            function = f"{quote_ident(extension_schema)}.pgstatindex"
            sql = "\nUNION ALL\n".join(
                f"SELECT {quote_literal(i.oid)}, avg_leaf_density FROM"
                f" {function}({i.oid}::oid::regclass)"
                for i in measured
            )
            for oid, density in self.engine.query(sql, timeout=timeout):
                index = next(i for i in measured if i.oid == oid)
                packed = float(density) if density not in ("", "NaN") else 0.0
                share = max(0.0, 1 - packed / index.fillfactor) if packed else 0.0
                out[oid] = int(index.size * share)
            return out
        widths = {row[0]: row[1:] for row in width_rows}
        for index in measured:
            columns, known, width, nullable = widths.get(index.oid, ("0", "1", "0", "f"))
            if int(known) < int(columns) or int(columns) == 0:
                continue  # no statistics (never analyzed): no estimate
            needed = estimated_btree_bytes(
                index.tuples, float(width), index.block_size, index.fillfactor, nullable == "t"
            )
            out[index.oid] = max(0, index.size - needed)
        return out

    # --- perform --------------------------------------------------------------------------

    def perform(self, action: Action, policy: MaintenancePolicy, *, timeout: float) -> Outcome:
        """``TableMaintenance.perform``; the size before is the survey's, the size after is
        asked in the same session, right after the statement.

        A statement that fails, is cancelled or whose client is killed (a timeout, an
        interrupt) is cancelled on the server too (its session is found by a name of its
        own), and a failed rebuild's ``_ccnew`` copy is dropped, on the cleanup's own time;
        a copy that cannot be dropped yet is named in the error (the next run drops it)."""
        after_sql = None
        if action.kind != "drop_leftover":
            name = quote_literal(
                f"{quote_ident(action.extra['schema'])}.{quote_ident(action.extra['name'])}"
            )
            size = "pg_table_size" if action.kind == "vacuum" else "pg_relation_size"
            after_sql = f"SELECT {size}(to_regclass({name}))"
        session = f"crmmaint maintenance {secrets.token_hex(6)}"
        try:
            rows = self._run(
                action.statement, policy, timeout, f"{action.kind} {action.object}", after_sql,
                session=session,
            )  # fmt: skip
        except EngineError as exc:
            cleaner = PostgreSQLMaintenance(self.engine.cleaning_up())
            cleaner._cancel(session)
            stays = cleaner._drop_leftovers(action, policy) if action.kind == "reindex" else []
            raise _explained(exc, stays) from exc
        after = int(rows[-1][0]) if rows and rows[-1] and rows[-1][0] else None
        return Outcome(action.size, after)

    def _run(
        self,
        statement: str,
        policy: MaintenancePolicy,
        timeout: float,
        what: str,
        then: str | None = None,
        *,
        session: str = "crmmaint maintenance",
    ) -> list[tuple[str, ...]]:
        """One statement in autocommit (``REINDEX … CONCURRENTLY`` cannot run in a
        transaction block) after ``lock_timeout`` and ``statement_timeout`` for the session
        (named ``session`` in ``pg_stat_activity``); then the query ``then`` in the same
        session, whose rows are returned. The server's own timeout ends the statement a
        little before the client's (``_SERVER_FIRST``), so a cancelled statement is reported
        as the server's and its cleanup still has time."""
        command = [*self.engine.psql()]
        server = max(0.001, timeout - min(_SERVER_FIRST, timeout / 10))
        for line in (
            f"SET application_name = {quote_literal(session)}",
            f"SET lock_timeout = {max(1, int(policy.lock_timeout * 1000))}",
            f"SET statement_timeout = {max(1, int(server * 1000))}",
            statement,
            *([then] if then else []),
        ):
            command += ["-c", line]
        result = self.engine.run(command, timeout=timeout, what=what)
        return parse_csv(result.text)

    def _cancel(self, session: str) -> None:
        """Cancel what the session named ``session`` still runs on the server (its client
        was killed: the server would go on), and wait up to ``_CANCEL_WAIT`` seconds for it
        to end. Failures are logged: the statement's own error is what the user reads."""
        try:
            self.engine.query(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name ="
                f" {quote_literal(session)};"
                "DO $$BEGIN FOR i IN 1..50 LOOP EXIT WHEN NOT EXISTS (SELECT 1 FROM"
                f" pg_stat_activity WHERE application_name = {quote_literal(session)});"
                " PERFORM pg_sleep(0.1); END LOOP; END$$;",
                timeout=_CANCEL_WAIT + 10,
            )
        except EngineError as exc:
            log.info("%s: could not cancel %s on the server: %s", self.engine.where, session, exc)

    def _drop_leftovers(self, action: Action, policy: MaintenancePolicy) -> list[str]:
        """After a failed ``REINDEX CONCURRENTLY`` of ``action``'s index: drop the invalid
        copies it left (``_ccnew`` indexes of the same table and definition, whatever
        PostgreSQL's truncation made of the name). Returns those that could not be dropped
        (a lock still held): the next run finds them invalid and drops them."""
        schema, name = action.extra["schema"], action.extra["name"]
        qualified = quote_literal(f"{quote_ident(schema)}.{quote_ident(name)}")
        try:
            rows = self.engine.query(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                f" JOIN pg_index o ON o.indexrelid = to_regclass({qualified})"
                " WHERE i.indrelid = o.indrelid AND NOT i.indisvalid"
                " AND i.indexrelid <> o.indexrelid AND c.relname ~ '_ccnew[0-9]*$'"
                " AND i.indkey::text = o.indkey::text AND i.indclass::text = o.indclass::text"
                " AND pg_get_expr(i.indexprs, i.indrelid) IS NOT DISTINCT FROM"
                "     pg_get_expr(o.indexprs, o.indrelid)"
                " AND pg_get_expr(i.indpred, i.indrelid) IS NOT DISTINCT FROM"
                "     pg_get_expr(o.indpred, o.indrelid)",
                timeout=_CANCEL_WAIT,
            )
        except EngineError as exc:
            return [f"copies of {schema}.{name} (not looked for: {exc.message})"]
        stays = []
        # a cleanup waits for a lock no longer than half its own time
        waits = replace(policy, lock_timeout=min(policy.lock_timeout, _CANCEL_WAIT / 2))
        for (leftover,) in rows:
            statement = (
                f"DROP INDEX CONCURRENTLY IF EXISTS {quote_ident(schema)}.{quote_ident(leftover)}"
            )
            session = f"crmmaint maintenance {secrets.token_hex(6)}"
            try:
                self._run(statement, waits, _CANCEL_WAIT, f"dropping leftover {schema}.{leftover}",
                          session=session)  # fmt: skip
                log.info("%s: dropped %s.%s left by a failed rebuild", self.engine.where,
                         schema, leftover)  # fmt: skip
            except EngineError as exc:
                self._cancel(session)
                log.info("%s: %s.%s left by a failed rebuild stays: %s", self.engine.where,
                         schema, leftover, exc)  # fmt: skip
                stays.append(f"{schema}.{leftover}")
        return stays


#: Seconds the server's ``statement_timeout`` ends a statement before the client gives up.
_SERVER_FIRST = 5.0
#: Seconds a cleanup waits for a cancelled statement to end, and for each leftover's drop.
_CANCEL_WAIT = 20.0


def _explained(exc: EngineError, stays: list[str]) -> EngineError:
    """``exc`` (its row values already gone: ``DatabaseEngine.run``) with a hint for a unique
    index that its duplicates block, and naming the rebuild's copies that ``stays``."""
    message = exc.message
    hint = exc.hint
    if "could not create unique index" in message:
        hint = "the table holds duplicate keys: remove them, and the next run rebuilds the index"
    if stays:
        message += f"; left by the failed rebuild until the next run drops it: {', '.join(stays)}"
    return EngineError(message, hint=hint, retryable=exc.retryable)


def _duplicates(indexes: list[_Index]) -> list[Finding]:
    """Indexes that repeat another one's definition (``duplicate``), and plain B-tree indexes
    whose key columns are the leading columns of another B-tree index on the same table
    (``redundant``: the other serves its queries). Reported, never dropped."""
    out: list[Finding] = []
    same: dict[tuple[str, ...], list[_Index]] = defaultdict(list)
    for index in indexes:
        same[index.definition].append(index)
    for group in same.values():
        if len(group) < 2:
            continue
        keep = sorted(group, key=lambda i: (not i.backs_constraint, not i.unique, i.name))[0]
        for other in group:
            if other is not keep:
                out.append(
                    Finding(
                        "duplicate", other.label, f"same definition as {keep.label}", other.size
                    )
                )
    plain = [
        i for i in indexes
        if i.method == "btree" and not i.expressions and not i.predicate and "0" not in i.columns
    ]  # fmt: skip
    duplicates = {f.object for f in out}
    for index in plain:
        if index.unique or index.backs_constraint or index.label in duplicates:
            continue
        cols = index.columns
        ops = index.opclasses.split()[: len(cols)]
        for other in plain:
            wider = other.columns
            if (
                other is not index
                and other.table_oid == index.table_oid
                and len(wider) > len(cols)
                and wider[: len(cols)] == cols
                and other.opclasses.split()[: len(cols)] == ops
            ):
                out.append(
                    Finding(
                        "redundant",
                        index.label,
                        f"its columns lead {other.label}, which serves the same queries",
                        index.size,
                    )
                )
                break
    return out
