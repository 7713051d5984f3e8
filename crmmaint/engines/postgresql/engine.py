"""PostgreSQL: psql and pg_dump on the database host, facts taken in the dump's own snapshot.

A dump opens a psql session, exports a REPEATABLE READ snapshot, runs ``pg_dump --snapshot``
and meanwhile takes the drill facts (tables, exact row counts, schema fingerprint, sequences) in
the session, which stays open until pg_dump ends. Row counts are cross-checked against the COPY rows
in the stream itself, so a dump that does not hold what its facts say never becomes a backup.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import csv
import functools
import hashlib
import hmac
import io
import itertools
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from crmmaint.engines.base import (
    QUERY_TIMEOUT,
    DatabaseEngine,
    DumpLayout,
    DumpStream,
    Facts,
    Reader,
    check_target_name,
    closing_dump,
    cut_message_line,
    schema_digest,
)
from crmmaint.engines.postgresql.load import (
    ChainReader,
    CopyPiece,
    PostDataQueue,
    balance,
    plan_pieces,
    run_together,
)
from crmmaint.engines.postgresql.script import PgScriptLexer, RestoreScript
from crmmaint.engines.postgresql.sections import IDENT, PostDataSplit, post_data_phases
from crmmaint.errors import CommandTimeout, EngineError, RestoreTargetExists, TransportError
from crmmaint.transport.base import Process

log = logging.getLogger(__name__)

#: Connections that build indexes in parallel after a restore's data is loaded.
POST_DATA_JOBS = 2
_ROLES_HINT = "roles the dump names must exist on this server"

_PSQL_PREFIX = re.compile(r"^psql:[^:]*:\d+: ")
#: Where a psql message quotes a value (a COPY row or column, an invalid input, a literal
#: token): everything after it on the line goes.
_PG_VALUE = re.compile(
    r"(, line \d+:|, column [^:]+:|for type [\w ]+:|at or near|value for [\w ]+:) .*"
)

#: Where CREATE/DROP DATABASE run during a restore.
MAINTENANCE_DB = "postgres"

#: Roles a least-privilege restore creates to load with (one per restore, see ``LoadRole``);
#: dropping a database one of them owns drops the role too.
LOAD_ROLE_PREFIX = "crmmaint_load_"
#: A load role cannot log in after this long (or its restore's timeout), should a restore die
#: before removing it.
LOAD_ROLE_VALID = 86400
_LOAD_HINT = (
    "restores load as a temporary role that owns only the new database: the restoring user "
    "needs CREATEROLE and CREATEDB (or superuser), and pg_hba.conf must let that role log in "
    "with a password from the client host; for a dump that needs more (untrusted extensions, "
    "event triggers), set 'restore_privilege: full' on the database (docs/engines.md)"
)

_USER_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'"
)

TABLES_SQL = f"""
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND {_USER_SCHEMAS} ORDER BY 1, 2
"""

# One row per schema object: kind, qualified name, canonical definition. search_path is set to
# pg_catalog first so every expression is printed fully qualified, whatever the session's path.
SCHEMA_SQL = f"""
SET search_path = pg_catalog;
SELECT 'relation', n.nspname || '.' || c.relname, c.relkind::text || ' ' || c.relpersistence::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_USER_SCHEMAS}
UNION ALL
SELECT 'column', n.nspname || '.' || c.relname || '.' || a.attname,
       concat_ws(' ', format_type(a.atttypid, a.atttypmod),
                 CASE WHEN a.attnotnull THEN 'NOT NULL' END,
                 'DEFAULT ' || pg_get_expr(d.adbin, d.adrelid),
                 NULLIF(a.attidentity, '')::text, NULLIF(a.attgenerated, '')::text,
                 'COLLATE ' || NULLIF(co.collname, 'default'),
                 '#' || rank() OVER (PARTITION BY c.oid ORDER BY a.attnum))
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  LEFT JOIN pg_collation co ON co.oid = a.attcollation
  WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
    AND {_USER_SCHEMAS}
UNION ALL
SELECT 'constraint', n.nspname || '.' || c.relname || '.' || k.conname, pg_get_constraintdef(k.oid)
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_SCHEMAS}
UNION ALL
SELECT 'index', n.nspname || '.' || c.relname, pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_SCHEMAS}
UNION ALL
SELECT 'view', n.nspname || '.' || c.relname, md5(pg_get_viewdef(c.oid))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('v', 'm') AND {_USER_SCHEMAS}
UNION ALL
SELECT 'trigger', n.nspname || '.' || c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND {_USER_SCHEMAS}
UNION ALL
SELECT 'sequence', n.nspname || '.' || c.relname,
       concat_ws(' ', format_type(s.seqtypid, NULL), s.seqincrement, s.seqmin, s.seqmax)
  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_SCHEMAS};
RESET search_path;
"""

SEQUENCES_SQL = """
SELECT schemaname || '.' || sequencename, coalesce(last_value::text, '') FROM pg_sequences
WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1
"""

FACTS_SQL = """
SELECT current_setting('server_version'), pg_database_size(current_database()),
       (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()),
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
       current_setting('max_connections'),
       extract(epoch FROM now() - pg_postmaster_start_time())::bigint,
       pg_encoding_to_char(d.encoding), d.datcollate, d.datctype
FROM pg_database d WHERE d.datname = current_database()
"""

#: How many tables one ``count(*)`` statement covers.
_COUNT_BATCH = 200


def quote_ident(name: str) -> str:
    """An SQL identifier, double-quoted."""
    return '"' + name.replace('"', '""') + '"'


#: Settings every session crmmaint opens starts with (libpq ``options``, which win over the
#: database's and role's own ``ALTER … SET``): a database owner must not be able to make a
#: superuser session call its functions (an unqualified ``pg_database_size`` found first in
#: ``public``) or change what a literal means (``standard_conforming_strings = off``), nor end
#: the snapshot session of a dump. ``pg_temp`` last: no temporary object shadows a catalog one.
SESSION_PINS = (
    "-c search_path=pg_catalog,pg_temp -c standard_conforming_strings=on "
    "-c client_encoding=UTF8 -c idle_in_transaction_session_timeout=0 -c statement_timeout=0"
)


def conninfo_value(value: str) -> str:
    """A libpq connection-string value: single-quoted, backslash and quote escaped with a
    backslash (libpq's rule, not SQL's doubling), so any database name stays one value."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_literal(value: str) -> str:
    """An SQL string literal (standard_conforming_strings on, the default since 9.1)."""
    return "'" + value.replace("'", "''") + "'"


def table_key(schema: str, table: str) -> str:
    """A table's name in the facts: ``schema.table``, a part double-quoted (quotes doubled)
    when it holds a ``.``, so ``a."b.c"`` and ``"a.b".c`` stay two tables; any other name is
    written as before (facts recorded by older backups keep matching)."""

    def part(name: str) -> str:
        return '"' + name.replace('"', '""') + '"' if "." in name else name

    return f"{part(schema)}.{part(table)}"


def count_sql(tables: list[tuple[str, str]]) -> str:
    """One statement counting every row of ``tables`` (schema, name), each ``ONLY`` itself."""
    parts = [
        f"SELECT {quote_literal(table_key(s, t))}, count(*) "
        f"FROM ONLY {quote_ident(s)}.{quote_ident(t)}"
        for s, t in tables
    ]
    return "\nUNION ALL ".join(parts)


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802 / RFC 7677,
    PostgreSQL's ``scram_build_secret``): a role is created with it, so the password itself
    never reaches the server, its logs or ``pg_stat_activity``. ``password`` must be ASCII
    (SASLprep leaves ASCII unchanged)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class LoadRole:
    """A role made for one least-privilege restore: it logs in with a random password (only
    its SCRAM verifier goes to the server), owns the new database and what the dump creates
    in it, and is no superuser, cannot create roles or databases, replicate or bypass row
    security. A forged dump then cannot run ``COPY … TO PROGRAM``, an untrusted language or
    anything else a superuser may, nor act for the dump's real roles."""

    def __init__(self) -> None:
        self.name = LOAD_ROLE_PREFIX + secrets.token_hex(6)
        self.password = secrets.token_urlsafe(24)

    def create_sql(self, now: float, timeout: float | None = None) -> str:
        """The role, valid until the restore's ``timeout`` (seconds; else ``LOAD_ROLE_VALID``)
        has passed, plus a margin: a restore cut off before it could clean up (a step timeout,
        SIGTERM) leaves a role whose login lapses with it."""
        lease = LOAD_ROLE_VALID if timeout is None else min(LOAD_ROLE_VALID, timeout + 600)
        until = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(now + lease))
        return (
            f"CREATE ROLE {quote_ident(self.name)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
            f"NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 64 "
            f"PASSWORD {quote_literal(scram_verifier(self.password))} "
            f"VALID UNTIL {quote_literal(until)};\n"
            # CREATE DATABASE … OWNER needs the creator to be able to act as the owner.
            f"GRANT {quote_ident(self.name)} TO CURRENT_USER;"
        )


def parse_csv(text: str) -> list[tuple[str, ...]]:
    return [tuple(row) for row in csv.reader(io.StringIO(text))]


#: The table a ``COPY`` statement names, schema-qualified as pg_dump writes it (a quoted name
#: may hold any character, newlines included).
_COPY_TABLE = re.compile(rb"COPY (" + IDENT + rb")\.(" + IDENT + rb")[ (]", re.DOTALL)


def _unquote(ident: bytes) -> str:
    text = ident.decode("utf-8")
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text


class CopyRowCounter:
    """Counts the data rows of every ``COPY … FROM stdin`` block in a plain pg_dump stream.

    Works chunk by chunk without holding the stream, on ``PgScriptLexer``: a block is one only
    where psql would take it for one (never a function body or string that looks like one), and
    inside it the rows are counted as newlines in C (``bytes.count``) up to the ``\\.`` line.
    ``sections`` records where each block lies in the stream, ``[start, end)`` from its ``COPY``
    statement to just after its terminator, so a restore can later read the tables' data on
    several connections at once.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.sections: list[tuple[int, int]] = []
        self._lexer = PgScriptLexer()
        self._statement: list[bytes] = []  # the COPY statement under way
        self._start = 0
        self._table: str | None = None

    def feed(self, chunk: bytes) -> None:
        """Count what ``chunk`` completes; an empty chunk ends the stream."""
        for piece in self._lexer.feed(chunk):
            if piece.kind == "statement":
                tokens = self._lexer.statement.tokens
                if tokens and tokens[0] == b"COPY":
                    if not self._statement:
                        self._start = piece.offset
                    self._statement.append(piece.data)
                    if piece.last:
                        self._begin_block()
            elif piece.kind == "data" and self._table is not None:
                rows = piece.data.count(b"\n")
                if piece.last:
                    rows -= 1 if piece.data.endswith(b"\\.\n") else 0
                    self.counts[self._table] += rows
                    self.sections.append((self._start, piece.offset + len(piece.data)))
                    self._table = None
                else:
                    self.counts[self._table] += rows

    def _begin_block(self) -> None:
        text, self._statement = b"".join(self._statement), []
        match = _COPY_TABLE.match(text) if self._lexer.statement.copy_from_stdin else None
        if match is None:
            return
        self._table = table_key(_unquote(match.group(1)), _unquote(match.group(2)))
        self.counts.setdefault(self._table, 0)


class _PsqlSession:
    """An interactive psql on the database host: send SQL, read CSV rows up to a marker row."""

    def __init__(self, engine: PostgreSQLEngine, proc: Process) -> None:
        self.engine = engine
        self.proc = proc
        self._buffer = b""

    def ask(self, sql: str) -> list[tuple[str, ...]]:
        marker = f"__crmmaint_{secrets.token_hex(8)}__"
        # A result row, unlike \echo, is flushed by psql at once: it ends our read.
        self.proc.write(f"{sql.strip().rstrip(';')};\nSELECT '{marker}';\n".encode())
        needle = f"{marker}\n".encode()
        while True:
            at = self._buffer.find(needle)
            if at >= 0 and (at == 0 or self._buffer[at - 1 : at] == b"\n"):
                text, self._buffer = self._buffer[:at], self._buffer[at + len(needle) :]
                return parse_csv(text.decode("utf-8"))
            try:
                chunk = self.proc.read(1 << 16)
            except TransportError as exc:
                raise self.engine.error(f"snapshot session failed: {exc}") from exc
            if not chunk:
                raise self.engine.error(f"snapshot session ended: {self._stderr()}")
            self._buffer += chunk

    def _stderr(self) -> str:
        try:
            return self.proc.wait(timeout=10).stderr_tail()
        except CommandTimeout:
            return "(no exit)"

    def close(self, sql: str = "COMMIT") -> None:
        try:
            self.proc.write(f"{sql};\n".encode())
            self.proc.close_stdin()
            result = self.proc.wait(timeout=QUERY_TIMEOUT)
        except TransportError as exc:
            raise self.engine.error(f"snapshot session failed: {exc}") from exc
        if not result.ok:
            raise self.engine.error(f"snapshot session failed: {result.stderr_tail()}")


class PostgreSQLEngine(DatabaseEngine):
    """A PostgreSQL database, reached with psql/pg_dump on its host."""

    engine = "postgresql"
    #: Set on the engine a least-privilege restore loads with (``as_load_role``).
    load_role: LoadRole | None = None

    # --- command lines ----------------------------------------------------------------------

    def conn_args(self, dbname: str | None = None) -> list[str]:
        args = ["-w"]
        if self.db.address:
            args += ["-h", self.db.address]
        if self.db.port:
            args += ["-p", str(self.db.port)]
        if self.db.user:
            args += ["-U", self.db.user]
        # "dbname=" makes libpq read the value as a name even if it contains "=" or spaces.
        name = dbname or self.db.dbname or self.db.name
        return [*args, "-d", f"dbname={conninfo_value(name)}"]

    def psql(self, dbname: str | None = None) -> list[str]:
        return ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--csv", "-t", *self.conn_args(dbname)]

    def client_env(self) -> dict[str, str]:
        """Environment of every psql and pg_dump: the session is pinned (``SESSION_PINS``)."""
        env = {"PGAPPNAME": "crmmaint", "PGCONNECT_TIMEOUT": "15", "PGOPTIONS": SESSION_PINS}
        if self.load_role is not None:
            return env | {"PGPASSWORD": self.load_role.password}
        return env | self.password_env("PGPASSWORD")

    # --- queries ----------------------------------------------------------------------------

    def query(self, sql: str, *, timeout: float = QUERY_TIMEOUT) -> list[tuple[str, ...]]:
        """Rows of ``sql`` as strings (CSV-parsed). The session is pinned (``SESSION_PINS``):
        its search_path is ``pg_catalog, pg_temp``, so name user tables with their schema."""
        result = self.run(self.psql(), stdin=sql.encode("utf-8"), timeout=timeout, what="query")
        return parse_csv(result.text)

    def facts(self, *, timeout: float = QUERY_TIMEOUT) -> Facts:
        (row,) = self.query(FACTS_SQL, timeout=timeout)
        version, size, conns, total, max_conns, uptime, encoding, collate, ctype = row
        return {
            "engine": self.engine,
            "version": version,
            "size_bytes": int(size),
            "connections": int(conns),
            "server_connections": int(total),
            "max_connections": int(max_conns),
            "uptime": int(uptime),
            "encoding": encoding,
            "collate": collate,
            "ctype": ctype,
        }

    def _table_pairs(self, ask) -> list[tuple[str, str]]:
        return [(s, t) for s, t in ask(TABLES_SQL)]

    def tables(self, *, timeout: float = QUERY_TIMEOUT) -> list[str]:
        pairs = self._table_pairs(lambda q: self.query(q, timeout=timeout))
        return [table_key(s, t) for s, t in pairs]

    def row_counts(self, *, timeout: float = QUERY_TIMEOUT) -> dict[str, int]:
        return self._counts(lambda q: self.query(q, timeout=timeout))

    def schema_fingerprint(self, *, timeout: float = QUERY_TIMEOUT) -> str:
        return schema_digest(self.query(SCHEMA_SQL, timeout=timeout))

    def sequences(self, *, timeout: float = QUERY_TIMEOUT) -> dict[str, int | None]:
        return _sequences(self.query(SEQUENCES_SQL, timeout=timeout))

    def snapshot_facts(self, *, timeout: float = QUERY_TIMEOUT) -> Facts:
        """Tables, counts, fingerprint and sequences, all in one REPEATABLE READ transaction."""
        with self.started(self.psql(), what="facts session", stdout="stream") as proc:
            session = _PsqlSession(self, proc)
            session.ask("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1")
            facts = self._session_facts(session)
            session.close()
        return facts

    def _counts(self, ask) -> dict[str, int]:
        pairs = self._table_pairs(ask)
        counts: dict[str, int] = {}
        for i in range(0, len(pairs), _COUNT_BATCH):
            for name, n in ask(count_sql(pairs[i : i + _COUNT_BATCH])):
                counts[name] = int(n)
        return counts

    def _session_facts(self, session: _PsqlSession) -> Facts:
        counts = self._counts(session.ask)
        return {
            "engine": self.engine,
            "tables": sorted(counts),
            "row_counts": counts,
            "schema_fingerprint": schema_digest(session.ask(SCHEMA_SQL)),
            "sequences": _sequences(session.ask(SEQUENCES_SQL)),
        }

    # --- dump -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def dump(self, *, timeout: float | None = None) -> Iterator[DumpStream]:
        """A plain-SQL pg_dump stream whose facts come from the same exported snapshot."""
        with self.started(self.psql(), what="snapshot session", stdout="stream") as session_proc:
            if timeout is not None:
                session_proc.set_timeout(timeout)
            session = _PsqlSession(self, session_proc)
            (snapshot,) = session.ask(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT pg_export_snapshot()"
            )[0]
            command = ["pg_dump", *self.conn_args(), f"--snapshot={snapshot}", "--format=plain"]
            log.info("dumping %s (snapshot %s)", self.where, snapshot)
            counter = CopyRowCounter()
            # The facts are counted in the snapshot session while pg_dump streams the same
            # snapshot: both see the same rows, and the counting overlaps the dump.
            with ThreadPoolExecutor(1, thread_name_prefix="crmmaint-facts") as pool:
                counted = pool.submit(self._session_facts, session)

                def complete(final: Facts) -> None:
                    final.update(counted.result())
                    for table, expected in final["row_counts"].items():
                        streamed = counter.counts.get(table, 0)
                        if streamed != expected:
                            raise self.error(
                                f"dump stream holds {streamed} rows of {table}, "
                                f"the snapshot counted {expected}"
                            )
                    final["copy_sections"] = [list(section) for section in counter.sections]

                with self.started(command, what="pg_dump", stdout="stream") as proc:
                    stream = DumpStream(
                        proc,
                        describe=self.error,
                        facts={"format": "pg_dump-plain"},
                        observe=counter.feed,
                        complete=complete,
                        timeout=timeout,
                    )
                    with closing_dump(stream):
                        yield stream
            # The snapshot had to stay exported until pg_dump was done with it.
            session.close()

    # --- restore and drop ------------------------------------------------------------------

    def for_database(self, dbname: str) -> PostgreSQLEngine:
        """The same server, another database (a restore target)."""
        return PostgreSQLEngine(replace(self.db, dbname=dbname), self.transport)

    def exists(self, name: str, *, timeout: float = QUERY_TIMEOUT) -> bool:
        sql = f"SELECT 1 FROM pg_database WHERE datname = {quote_literal(name)}"
        return bool(self._maintenance(sql, timeout=timeout, what="database lookup"))

    def _maintenance(
        self, sql: str, *, timeout: float, what: str, hint: str | None = None
    ) -> list[tuple[str, ...]]:
        try:
            result = self.run(
                self.psql(MAINTENANCE_DB), stdin=sql.encode("utf-8"), timeout=timeout, what=what
            )
        except EngineError as exc:
            if hint is None or exc.hint is not None:
                raise
            raise EngineError(exc.message, hint=hint, retryable=exc.retryable) from exc
        return parse_csv(result.text)

    def restore(
        self,
        stream: Reader,
        *,
        target_name: str,
        force: bool = False,
        timeout: float | None = None,
        layout: DumpLayout | None = None,
        jobs: int = POST_DATA_JOBS,
        single_transaction: bool = True,
    ) -> Facts:
        """Create ``target_name`` and load a plain dump into it with psql; returns its facts.

        With a ``layout`` (the backup recorded where its COPY blocks are) and ``jobs`` > 1 the
        tables load on ``jobs`` connections at once (``_restore_parallel``); otherwise the
        stream loads in one transaction. Either way a failed restore drops the new database.
        """
        check_target_name(self, target_name)
        if target_name == (self.db.dbname or self.db.name):
            raise self.error(f"refusing to restore over the source database {target_name!r}")
        if self.exists(target_name):
            if not force:
                raise RestoreTargetExists(
                    f"{self.where}: restore target database {target_name!r} exists",
                    hint="choose another name, drop it, or pass force to replace it",
                )
            log.warning("dropping existing database %s for restore (force)", target_name)
            self.drop(target_name)
        role = LoadRole() if self.db.restore_privilege == "least" else None
        target = self.for_database(target_name)
        try:
            owner = ""
            if role is not None:
                self._maintenance(role.create_sql(time.time(), timeout), timeout=QUERY_TIMEOUT,
                                  what="CREATE ROLE (least-privilege restore)", hint=_LOAD_HINT)  # fmt: skip
                owner = f" OWNER {quote_ident(role.name)}"
            self._maintenance(
                f"CREATE DATABASE {quote_ident(target_name)}{owner} TEMPLATE template0",
                timeout=QUERY_TIMEOUT,
                what="CREATE DATABASE",
            )
            loader = target if role is None else target.as_load_role(role)
            log.info("restoring into %s on %s", target_name, self.transport.host)
            if layout is not None and jobs > 1:
                size, frozen = loader._restore_parallel(layout, jobs=jobs, timeout=timeout)
            else:
                size, frozen = loader._restore_stream(
                    stream, single_transaction=single_transaction, timeout=timeout, jobs=jobs
                )
            if role is not None:
                # The objects stay the load role's (a superuser owning a forged dump's views
                # and SECURITY DEFINER functions would hand them its rights); it logs in no more.
                self._disarm(role.name)
        except BaseException:
            if role is not None:  # first: the dump may have set a password of its choosing
                with contextlib.suppress(EngineError):
                    self._rollback_prepared(target_name, timeout=QUERY_TIMEOUT)
                    self._disarm(role.name)
            self.drop_quietly(target_name)
            if role is not None:
                self._drop_load_role(role.name, quietly=True)
            raise
        log.info("restored %d bytes into %s (%d tables loaded frozen)", size, target_name, frozen)
        facts = target.snapshot_facts()
        if role is not None:
            log.info("%s and its objects are owned by role %s (no login)", target_name, role.name)
            facts["owner"] = f"role {role.name} (no login)"
        return facts

    def as_load_role(self, role: LoadRole) -> PostgreSQLEngine:
        """This database reached as ``role`` (a least-privilege restore's loads)."""
        engine = PostgreSQLEngine(replace(self.db, user=role.name, password=None), self.transport)
        engine.load_role = role
        return engine

    def _disarm(self, role: str) -> None:
        """A load role logs in no more, whatever password the dump gave it (a lock held on
        its row fails this at once rather than hang)."""
        self._maintenance(
            f"SET lock_timeout = '10s'; ALTER ROLE {quote_ident(role)} NOLOGIN PASSWORD NULL",
            timeout=QUERY_TIMEOUT,
            what="ALTER ROLE",
        )

    def _rollback_prepared(self, target_name: str, *, timeout: float) -> None:
        """Roll back the prepared transactions a script left in ``target_name``."""
        gids = self._maintenance(
            "SELECT quote_literal(gid) FROM pg_catalog.pg_prepared_xacts "
            f"WHERE database = {quote_literal(target_name)}",
            timeout=timeout,
            what="prepared transaction lookup",
        )
        if gids:
            rollback = "".join(f"ROLLBACK PREPARED {gid};\n" for (gid,) in gids)
            self.for_database(target_name).run(
                self.psql(target_name), stdin=rollback.encode(), timeout=timeout,
                what="ROLLBACK PREPARED",
            )  # fmt: skip

    def _drop_load_role(self, name: str, *, quietly: bool = False) -> None:
        try:
            self._maintenance(
                f"DROP ROLE IF EXISTS {quote_ident(name)}", timeout=QUERY_TIMEOUT, what="DROP ROLE"
            )
        except EngineError as exc:
            if not quietly:
                raise
            log.warning("could not drop load role %s: %s", name, exc)

    def redact_client_error(self, stderr: str) -> str:
        """psql's complaint without row values: no ``DETAIL`` (failing rows, key values), no
        echoed ``LINE n:`` statement text and its caret, no COPY column value in ``CONTEXT``,
        no invalid input value, no literal quoted by "at or near"."""
        kept = []
        for line in stderr.splitlines():
            body = _PSQL_PREFIX.sub("", line.strip())
            if body.startswith(("DETAIL:", "LINE ")) or (body and set(body) <= {"^", " "}):
                continue
            kept.append(cut_message_line(_PG_VALUE.sub(r"\1 …", line)))
        return "\n".join(kept)

    def load_hint(self, stderr: str) -> str | None:
        """A least-privilege denial points to ``restore_privilege``, a missing role to the
        roles, a refused meta-command to the backup itself."""
        if "backslash commands are restricted" in stderr:
            return (
                "the dump holds a psql meta-command, which pg_dump never writes there: "
                "a restore refuses them (a forged backup?)"
            )
        if re.search(r"role \S+ does not exist", stderr):
            return _ROLES_HINT
        denied = ("permission denied", "must be superuser", "must be owner", "must be able to")
        if self.load_role is not None and any(d in stderr for d in denied):
            return (
                "the dump loads as a role that owns only the new database "
                "(restore_privilege: least); a genuine dump that needs more restores with "
                "'restore_privilege: full' on the database (docs/engines.md)"
            )
        return None

    def untrusted_script(self, stream: Reader) -> Reader:
        """psql in restricted mode: no meta-command of the dump runs (``RestoreScript``);
        loading as a ``LoadRole``, without the dump's ownership statements too (that role may
        not act for the dump's roles)."""
        return RestoreScript(stream, drop_ownership=self.load_role is not None)

    def _psql_load(self, *, single_transaction: bool = False) -> list[str]:
        command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null"]
        if single_transaction:
            command.append("--single-transaction")
        return command + self.conn_args()

    def _restore_stream(
        self, stream: Reader, *, single_transaction: bool, timeout: float | None, jobs: int
    ) -> tuple[int, int]:
        """The whole dump on one connection (in one transaction), then post-data in parallel."""
        # FREEZE needs the tables created in the loading transaction: only with one transaction.
        split = PostDataSplit(stream, freeze=single_transaction)
        size = self.load(
            self._psql_load(single_transaction=single_transaction),
            split,
            into=self.db.dbname or self.db.name,
            what="psql restore",
            timeout=timeout,
        )
        if split.post:
            self.run_post_data(split, timeout=timeout, jobs=jobs)
        return size, split.frozen

    def _restore_parallel(
        self, layout: DumpLayout, *, jobs: int, timeout: float | None
    ) -> tuple[int, int]:
        """Pre-data in one transaction, then what lies between and after the COPY blocks
        (sequence values), then the COPY blocks on ``jobs`` connections, each table in its own
        ``TRUNCATE`` + ``COPY … FREEZE`` transaction (balanced by size); a connection that has
        loaded its share builds the indexes and keys of tables already loaded
        (``PostDataQueue``), and the rest of post-data runs as ``run_post_data`` does. Each
        connection reads its own byte ranges of the stored dump. With 4 or more jobs, a block
        bigger than a fair share is cut into pieces at row boundaries (``plan_pieces``), loaded
        with plain ``COPY`` on several connections at once."""
        into = self.db.dbname or self.db.name
        first = layout.sections[0][0]
        pre = PostDataSplit(layout.open(0, first), freeze=True)
        size = self.load(
            self._psql_load(single_transaction=True),
            pre,
            into=into,
            what="psql restore (schema)",
            timeout=timeout,
        )
        # What lies between and after the COPY blocks first: headers, sequence values (and
        # large objects), in one transaction; this also yields the post-data DDL.
        sections = layout.sections
        gaps: list[bytes | Callable[[], Reader]] = [pre.preamble]
        gaps += [
            _opener(layout, end, start)
            for (_, end), (start, _) in itertools.pairwise(sections)
            if start > end
        ]
        gaps.append(_opener(layout, sections[-1][1], layout.size))
        rest = PostDataSplit(ChainReader(gaps), seen_data=True)
        size += self.load(
            self._psql_load(single_transaction=True),
            rest,
            into=into,
            what="psql restore (sequences)",
            timeout=timeout,
        )
        phases = post_data_phases(rest.post)
        early = phases.pop(0)[1] if phases and phases[0][0] else []
        queue = PostDataQueue(early)
        pieces = plan_pieces(sections, jobs)
        bins = balance([piece.size for piece in pieces], jobs)
        left = collections.Counter(piece.section for piece in pieces)
        readers: dict[int, CopyPiece] = {}
        cancel = threading.Event()
        lock = threading.Lock()

        def piece_reader(index: int) -> Callable[[], Reader]:
            def open_piece() -> Reader:
                readers[index] = CopyPiece(pieces[index], layout.open, pre.created)
                return readers[index]

            return open_piece

        def connection(indexes: list[int]) -> None:
            """Load this connection's pieces, then build what the queue hands out."""
            if indexes:
                parts: list[bytes | Callable[[], Reader]] = [pre.preamble]
                parts += [piece_reader(i) for i in indexes]
                self.load(
                    self._psql_load(),
                    ChainReader(parts, cancel),
                    into=into,
                    what="psql restore (data)",
                    timeout=timeout,
                )
            with lock:
                done = []
                for i in indexes:
                    left[pieces[i].section] -= 1
                    table = readers[i].table
                    if not left[pieces[i].section] and table is not None:
                        done.append(table)
                everything = not +left
            queue.loaded(done, everything=everything)
            self._post_session(queue, pre.preamble, cancel, timeout=timeout)

        log.info(
            "loading %d tables in %d pieces on %d connections",
            len(sections),
            len(pieces),
            jobs,
        )
        bins += [[] for _ in range(jobs - len(bins))]
        run_together([functools.partial(connection, indexes) for indexes in bins], cancel, queue)
        size += sum(end - start for start, end in sections)
        self._run_phases(phases, pre.preamble, timeout=timeout, jobs=jobs)
        return size + len(rest.post), sum(reader.frozen for reader in readers.values())

    def _post_session(
        self,
        queue: PostDataQueue,
        preamble: bytes,
        cancel: threading.Event | None = None,
        *,
        timeout: float | None,
    ) -> None:
        """One connection that runs items from ``queue`` until it is empty: one psql for many
        indexes (a psql per item cost ~60 ms each: 800 items of a 400-table schema took 40 s)."""

        def scripts() -> Iterator[bytes]:
            yield preamble
            while (sql := queue.take()) is not None:
                yield sql

        self.load(
            self._psql_load(),
            ChainReader(scripts(), cancel),
            into=self.db.dbname or self.db.name,
            what="psql post-data",
            timeout=timeout,
        )

    def run_post_data(
        self, split: PostDataSplit, *, timeout: float | None, jobs: int = POST_DATA_JOBS
    ) -> None:
        """Build indexes and single-table constraints on ``jobs`` connections (as
        ``pg_restore -j`` does), foreign keys and everything else in dump order."""
        self._run_phases(post_data_phases(split.post), split.preamble, timeout=timeout, jobs=jobs)

    def _run_phases(
        self,
        phases: list[tuple[bool, list[bytes]]],
        preamble: bytes,
        *,
        timeout: float | None,
        jobs: int,
    ) -> None:
        """Each phase in order: a parallel one on ``jobs`` connections sharing a queue, a
        sequential one (a single script) on one."""
        for parallel, scripts in phases:
            queue = PostDataQueue(scripts)
            queue.loaded([], everything=True)
            workers = min(jobs, len(scripts)) if parallel else 1
            cancel = threading.Event()
            session = functools.partial(
                self._post_session, queue, preamble, cancel, timeout=timeout
            )
            run_together([session] * workers, cancel, queue)

    def drop(self, target_name: str, *, timeout: float = QUERY_TIMEOUT) -> None:
        """Drop a restore target, and the ``LoadRole`` that owns it if one does."""
        check_target_name(self, target_name)
        if target_name == (self.db.dbname or self.db.name):
            raise self.error(f"refusing to drop the source database {target_name!r}")
        found = self._maintenance(
            "SELECT r.rolname, d.datistemplate FROM pg_catalog.pg_database d "
            "JOIN pg_catalog.pg_roles r ON r.oid = d.datdba "
            f"WHERE d.datname = {quote_literal(target_name)}",
            timeout=timeout,
            what="database lookup",
        )
        owner, template = found[0] if found else ("", "f")
        # What a loaded script can do that would keep its role logging in or its database
        # from being dropped: a prepared transaction (it may hold the role's own row, so it
        # goes first), a password of its choosing, a template flag.
        self._rollback_prepared(target_name, timeout=timeout)
        if owner.startswith(LOAD_ROLE_PREFIX):
            self._disarm(owner)
        if template == "t":
            self._maintenance(f"ALTER DATABASE {quote_ident(target_name)} IS_TEMPLATE false",
                              timeout=timeout, what="ALTER DATABASE")  # fmt: skip
        self._maintenance(
            f"DROP DATABASE IF EXISTS {quote_ident(target_name)} WITH (FORCE)",
            timeout=timeout,
            what="DROP DATABASE",
        )
        if owner.startswith(LOAD_ROLE_PREFIX):
            self._drop_load_role(owner)


def _opener(layout: DumpLayout, start: int, end: int) -> Callable[[], Reader]:
    return lambda: layout.open(start, end)


def _sequences(rows: list[tuple[str, ...]]) -> dict[str, int | None]:
    return {name: int(value) if value else None for name, value in rows}
