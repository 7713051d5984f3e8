"""MariaDB/MySQL table maintenance: ``ANALYZE TABLE`` of every table, ``OPTIMIZE TABLE`` of
tables whose free space is above a threshold, and duplicate and redundant keys reported.

Free space is ``information_schema.TABLES.DATA_FREE`` against the table's size. For an InnoDB
table in the shared system tablespace that figure is the whole tablespace's free space, not
the table's, and OPTIMIZE would not give it back to the disk: such tables are never chosen.
InnoDB runs OPTIMIZE as a rebuild (``ALTER TABLE … FORCE``, online: reads and writes go on,
with a short exclusive lock at its start and end); MyISAM and Aria lock the table for writes
throughout, and the action says so.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING

from crmmaint.engines.maintenance import (
    Action,
    Finding,
    MaintenancePolicy,
    Outcome,
    Survey,
    TableMaintenance,
)
from crmmaint.units import format_size

if TYPE_CHECKING:
    from crmmaint.engines.mysql import MySQLEngine

log = logging.getLogger(__name__)

_ONLINE = "none for reads and writes (InnoDB rebuilds the table online; brief locks at its ends)"
_BLOCKING = "writes wait until it ends ({engine} locks the table while it rebuilds)"


class MySQLMaintenance(TableMaintenance):
    """``TableMaintenance`` of one MariaDB/MySQL database through its engine's client."""

    #: OPTIMIZE copies the table (bytes/second); ANALYZE samples a few pages per index.
    default_rates = {"optimize": 15e6, "analyze": 2e9}

    def __init__(self, engine: MySQLEngine) -> None:
        self.engine = engine
        self.schema = engine.db.dbname or engine.db.name
        self.quote_ident, self.quote_literal = engine.quote_ident, engine.quote_literal

    def survey(self, policy: MaintenancePolicy, *, timeout: float) -> Survey:
        schema = self.quote_literal(self.schema)
        ((version,),) = self.engine.query("SELECT VERSION()", timeout=timeout)
        # InnoDB's table list: INNODB_SYS_TABLES in MariaDB, INNODB_TABLES in MySQL 8
        innodb = "INNODB_SYS_TABLES" if "mariadb" in version.lower() else "INNODB_TABLES"
        tables = self.engine.query(
            "SELECT t.TABLE_NAME, COALESCE(t.ENGINE, ''), COALESCE(t.DATA_LENGTH, 0),"
            " COALESCE(t.INDEX_LENGTH, 0), COALESCE(t.DATA_FREE, 0),"
            f" COALESCE((SELECT s.SPACE FROM information_schema.{innodb} s"
            "           WHERE s.NAME = CONCAT(t.TABLE_SCHEMA, '/', t.TABLE_NAME)), -1)"
            " FROM information_schema.TABLES t"
            f" WHERE t.TABLE_SCHEMA = {schema} AND t.TABLE_TYPE = 'BASE TABLE'"
            " ORDER BY t.TABLE_NAME",
            timeout=timeout,
        )
        survey = Survey(
            method="free space from information_schema", objects={"tables": len(tables)}
        )
        total = 0
        for name, engine, data, index, free, space in tables:
            size = int(data) + int(index)
            total += size
            share = int(free) / (size + int(free)) if size + int(free) else 0.0
            if engine.lower() == "innodb" and space == "0":
                continue  # system tablespace: its free space is not this table's
            if size < policy.min_size or share < policy.free_space_threshold:
                continue
            rebuild = "InnoDB rebuilds the table" if engine.lower() == "innodb" else engine
            survey.actions.append(
                Action(
                    kind="optimize",
                    object=f"{self.schema}.{name}",
                    reason=f"{share:.0%} free ({format_size(int(free))} of"
                    f" {format_size(size + int(free))}); {rebuild}",
                    size=size + int(free),
                    work=size,
                    statement=f"OPTIMIZE TABLE {self._name(name)}",
                    locks=_ONLINE
                    if engine.lower() == "innodb"
                    else _BLOCKING.format(engine=engine),
                    extra={"table": name},
                )
            )
        if policy.analyze and tables:
            names = ", ".join(self._name(row[0]) for row in tables)
            survey.actions.insert(
                0,
                Action(
                    kind="analyze",
                    object=self.schema,
                    reason=f"key statistics of {len(tables)} tables refreshed for the optimizer",
                    size=0,
                    work=total,
                    statement=f"ANALYZE TABLE {names}",
                    locks="none for reads and writes",
                    extra={"tables": str(len(tables))},
                ),
            )
        survey.findings += self._keys(schema, timeout)
        return survey

    def _name(self, table: str) -> str:
        return f"{self.quote_ident(self.schema)}.{self.quote_ident(table)}"

    def _keys(self, schema: str, timeout: float) -> list[Finding]:
        """Duplicate keys (the same columns, in order, as another key of the table) and
        redundant ones (a non-unique B-tree key whose columns lead another B-tree key)."""
        rows = self.engine.query(
            "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, INDEX_TYPE, COLUMN_NAME,"
            " COALESCE(SUB_PART, '') FROM information_schema.STATISTICS"
            f" WHERE TABLE_SCHEMA = {schema} ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
            timeout=timeout,
        )
        keys: dict[tuple[str, str], dict] = {}
        for table, index, non_unique, kind, column, part in rows:
            key = keys.setdefault(
                (table, index), {"unique": non_unique == "0", "type": kind, "columns": []}
            )
            key["columns"].append(f"{column}({part})" if part else column)
        by_table: dict[str, list[tuple[str, dict]]] = defaultdict(list)
        for (table, index), key in keys.items():
            by_table[table].append((index, key))
        out: list[Finding] = []
        for table, indexes in by_table.items():
            # PRIMARY and unique keys first: a duplicate of one of them is the one to report
            indexes.sort(key=lambda item: (item[0] != "PRIMARY", not item[1]["unique"], item[0]))
            seen: dict[tuple[str, ...], str] = {}
            for index, key in indexes:
                cols = (key["type"], *key["columns"])
                if cols in seen:
                    out.append(
                        Finding("duplicate", f"{self.schema}.{table}.{index}",
                                f"same columns as {seen[cols]}")
                    )  # fmt: skip
                    continue
                seen[cols] = index
            duplicates = {f.object for f in out}
            for index, key in indexes:
                if key["unique"] or key["type"] != "BTREE":
                    continue
                if f"{self.schema}.{table}.{index}" in duplicates:
                    continue
                for other, wider in indexes:
                    n = len(key["columns"])
                    if (
                        other != index
                        and wider["type"] == "BTREE"
                        and len(wider["columns"]) > n
                        and wider["columns"][:n] == key["columns"]
                    ):
                        out.append(
                            Finding("redundant", f"{self.schema}.{table}.{index}",
                                    f"its columns lead {other}, which serves the same queries")
                        )  # fmt: skip
                        break
        return out

    def perform(self, action: Action, policy: MaintenancePolicy, *, timeout: float) -> Outcome:
        before = self._size(action) if action.kind == "optimize" else 0
        # lock_wait_timeout takes whole seconds; max_statement_time exists in MariaDB only
        # (/*M! … */ runs there and nowhere else).
        sql = (
            f"SET SESSION lock_wait_timeout = {max(1, round(policy.lock_timeout))};\n"
            f"/*M! SET SESSION max_statement_time = {max(timeout, 0.001):.3f} */;\n"
            f"{action.statement};\n"
        )
        rows = self.engine.query(sql, timeout=timeout + 30)
        # OPTIMIZE and ANALYZE answer with rows (Table, Op, Msg_type, Msg_text); a failure is
        # a row of type "error", not an SQL error.
        errors = [row[3] for row in rows if len(row) >= 4 and row[2].lower() == "error"]
        if errors:
            raise self.engine.error(f"{action.statement[:60]}: {errors[0]}")
        notes = {row[3] for row in rows if len(row) >= 4 and row[2].lower() == "note"}
        after = self._size(action) if action.kind == "optimize" else 0
        return Outcome(before or action.size, after, "; ".join(sorted(notes)))

    def _size(self, action: Action) -> int:
        rows = self.engine.query(
            "SELECT COALESCE(DATA_LENGTH, 0) + COALESCE(INDEX_LENGTH, 0) + COALESCE(DATA_FREE, 0)"
            f" FROM information_schema.TABLES WHERE TABLE_SCHEMA = {self.quote_literal(self.schema)}"
            f" AND TABLE_NAME = {self.quote_literal(action.extra['table'])}"
        )
        return int(rows[0][0]) if rows else 0
