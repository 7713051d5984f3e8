"""PostgreSQL: psql and pg_dump on the database host, facts taken in the dump's own snapshot.

A dump opens a psql session, exports a REPEATABLE READ snapshot, runs ``pg_dump --snapshot``
and meanwhile takes the drill facts (tables, exact row counts, schema fingerprint, sequences) in
the session, which stays open until pg_dump ends. Row counts are cross-checked against the COPY rows
in the stream itself, so a dump that does not hold what its facts say never becomes a backup.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from crmmaint.engines.base import (
    QUERY_TIMEOUT,
    DatabaseEngine,
    DumpLayout,
    DumpStream,
    Facts,
    NewTarget,
    Reader,
    RestoreRequest,
    check_target_name,
    closing_dump,
    cut_message_line,
    in_server_words,
    schema_digest,
    transport_failure,
)
from crmmaint.engines.postgresql.catalog import (
    COUNT_BATCH,
    FACTS_SQL,
    SCHEMA_SQL,
    SEQUENCES_SQL,
    TABLES_SQL,
    count_sql,
    parse_csv,
    quote_ident,
    quote_literal,
    table_key,
)
from crmmaint.engines.postgresql.load import (
    ChainReader,
    CopyPiece,
    PostDataQueue,
    balance,
    plan_pieces,
    run_together,
)
from crmmaint.engines.postgresql.maintenance import PostgreSQLMaintenance
from crmmaint.engines.postgresql.roles import LOAD_ROLE_HINT, LOAD_ROLE_PREFIX, LoadRole
from crmmaint.engines.postgresql.script import RestoreScript
from crmmaint.engines.postgresql.sections import CopyRowCounter, PostDataSplit, post_data_phases
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

#: Settings every session crmmaint opens starts with (libpq ``options``, which win over the
#: database's and role's own ``ALTER … SET``): a database owner must not be able to make a
#: superuser session call its functions (an unqualified ``pg_database_size`` found first in
#: ``public``) or change what a literal means (``standard_conforming_strings = off``), nor end
#: the snapshot session of a dump. ``pg_temp`` last: no temporary object shadows a catalog one.
#: How values are written is pinned too (UTC times, hex bytea): a dump of the source and a
#: drill's dump of its restored copy, perhaps on another server, write equal values alike.
SESSION_PINS = (
    "-c search_path=pg_catalog,pg_temp -c standard_conforming_strings=on "
    "-c client_encoding=UTF8 -c idle_in_transaction_session_timeout=0 -c statement_timeout=0 "
    "-c TimeZone=UTC -c bytea_output=hex"
)


def conninfo_value(value: str) -> str:
    """A libpq connection-string value: single-quoted, backslash and quote escaped with a
    backslash (libpq's rule, not SQL's doubling), so any database name stays one value."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


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
                raise transport_failure(
                    exc, f"{self.engine.where}: snapshot session failed"
                ) from exc
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
            raise transport_failure(exc, f"{self.engine.where}: snapshot session failed") from exc
        if not result.ok:
            raise self.engine.error(f"snapshot session failed: {result.stderr_tail()}")


@dataclass(kw_only=True)
class PgRestoreTarget(NewTarget):
    """A database a restore created: reached as the restoring user (``copy``) and as whom
    loads it (``loader``: as ``role`` in a least-privilege restore, else ``copy``)."""

    copy: PostgreSQLEngine
    loader: PostgreSQLEngine
    role: LoadRole | None


class PostgreSQLEngine(DatabaseEngine[PgRestoreTarget]):
    """A PostgreSQL database, reached with psql/pg_dump on its host."""

    system_databases = frozenset({"postgres", "template0", "template1"})

    engine = "postgresql"
    login_refusals = ("authentication failed", "no password supplied", "pg_hba.conf rejects")
    #: Set on the engine a least-privilege restore loads with (``as_load_role``).
    load_role: LoadRole | None = None
    login_refused = re.compile(
        r"FATAL:\s+(?:password authentication failed|no pg_hba\.conf entry"
        r"|role \"[^\"]*\" (?:does not exist|is not permitted to log in))"
        r"|no password supplied"
    )
    privilege_refused = re.compile(
        r"permission denied for (?:table|relation|view|materialized view|sequence|schema"
        r"|database|function)"
    )
    missing_database = re.compile(r"FATAL:\s+database \"[^\"]*\" does not exist")

    @property
    def loads_untrusted(self) -> bool:
        return self.load_role is not None

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

    def maintenance(self) -> PostgreSQLMaintenance:
        """Index and table maintenance of this database (``postgresql.maintenance``)."""
        return PostgreSQLMaintenance(self)

    def owner_query(self, sql: str, *, timeout: float = QUERY_TIMEOUT) -> list[list[str | None]]:
        """``DatabaseEngine.owner_query``: one psql transaction, ``READ ONLY``, with
        ``statement_timeout`` bounding the query and the usual ``search_path`` (``"$user",
        public``) so that the copy's tables are found unqualified. When a least-privilege
        restore made the database, the session logs in as its owning load role, given a
        login with a new random password for the query and disarmed again after (``SET
        ROLE`` would not do: a function of the copy could ``RESET ROLE`` back to the
        configured user); otherwise as the configured user."""
        if sql.lstrip().startswith("\\"):  # psql -c runs a backslash command as one
            raise self.error("an assertion's query must be SQL, not a psql command")
        rows = self.query(
            "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database "
            "WHERE datname = pg_catalog.current_database()",
            timeout=timeout,
        )
        owner = rows[0][0] if rows else ""
        engine = self
        if owner.startswith(LOAD_ROLE_PREFIX):
            role = LoadRole(owner)
            self._maintenance(
                role.login_sql(time.time(), timeout), timeout=QUERY_TIMEOUT,
                what="ALTER ROLE (assertion query)", hint=LOAD_ROLE_HINT,
            )  # fmt: skip
            engine = self.as_load_role(role)
        # Unaligned output between random separators: CSV cannot tell one empty string
        # from no column, and psql's CSV writes neither as anything but an empty line.
        null, fs, rs = (f"<{c}{secrets.token_hex(8)}>" for c in "nfr")
        command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-F", fs, "-R", rs,
                   "-P", f"null={null}", *engine.conn_args(), "-1"]  # fmt: skip
        for step in [
            # for the session, not the transaction: a query's own COMMIT ends neither
            "SET default_transaction_read_only = on",
            "SET TRANSACTION READ ONLY",
            f"SET statement_timeout = {max(1, int(timeout * 1000))}",
            'SET search_path = "$user", public',
            sql,
        ]:
            command += ["-c", step]
        try:
            result = engine.run(command, timeout=timeout + 30, what="assertion query")
        except EngineError as exc:
            raise in_server_words(exc) from exc
        finally:
            if engine is not self:
                self.cleaning_up()._disarm(owner)
        if not result.text:
            return []
        text = result.text[:-1] if result.text.endswith("\n") else result.text
        return [[None if v == null else v for v in row.split(fs)] for row in text.split(rs)]

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
        for i in range(0, len(pairs), COUNT_BATCH):
            for name, n in ask(count_sql(pairs[i : i + COUNT_BATCH])):
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
            # what a restore's server must be at least (a drill's preflight)
            "server_version": session.ask("SHOW server_version")[0][0],
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

                def describe(what: str) -> EngineError:
                    # A failed count ends the snapshot's transaction: pg_dump then fails with
                    # "invalid snapshot identifier". The count's error is the cause: say it.
                    cause = counted.exception()
                    return cause if isinstance(cause, EngineError) else self.error(what)

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
                    final["table_checksums"] = counter.checksums

                with self.started(command, what="pg_dump", stdout="stream") as proc:
                    stream = DumpStream(
                        proc,
                        describe=describe,
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

    def for_target(self, target_name: str) -> PostgreSQLEngine:
        return self.for_database(target_name)

    def target_names(self, prefix: str, *, near: str) -> list[str]:
        rows = self._maintenance(
            "SELECT datname FROM pg_catalog.pg_database", timeout=QUERY_TIMEOUT, what="listing"
        )
        return sorted(name for (name,) in rows if name.startswith(prefix))

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
        stream loads in one transaction (``single_transaction``). Either way a failed restore
        drops the new database. The rest is ``DatabaseEngine.restore``.
        """
        request = RestoreRequest(
            stream,
            target_name,
            force=force,
            timeout=timeout,
            layout=layout,
            jobs=jobs,
            single_transaction=single_transaction,
        )
        return self.run_restore(request)

    def target_exists(self, target: str) -> bool:
        return self.exists(target)

    def create_target(
        self, target: str, request: RestoreRequest, *, replacing: bool
    ) -> PgRestoreTarget:
        """``CREATE DATABASE`` from ``template0``; in a least-privilege restore, first the
        ``LoadRole`` that will own it (removed again if the database cannot be made)."""
        role = LoadRole() if self.db.restore_privilege == "least" else None
        try:
            owner = ""
            if role is not None:
                self._maintenance(
                    role.create_sql(time.time(), request.timeout),
                    timeout=QUERY_TIMEOUT,
                    what="CREATE ROLE (least-privilege restore)",
                    hint=LOAD_ROLE_HINT,
                )
                owner = f" OWNER {quote_ident(role.name)}"
            try:
                self._maintenance(
                    f"CREATE DATABASE {quote_ident(target)}{owner} TEMPLATE template0",
                    timeout=QUERY_TIMEOUT,
                    what="CREATE DATABASE",
                )
            except EngineError as exc:
                if self.exists(target):  # made meanwhile by someone else: not ours to touch
                    raise RestoreTargetExists(
                        f"{self.where}: restore target database {target!r} was created by "
                        "another session while this restore started",
                        hint=self.target_exists_hint,
                    ) from exc
                raise
        except BaseException:
            if role is not None:  # on the cleanup's own time: the step may be over already
                self.cleaning_up()._drop_load_role(role.name, quietly=True)
            raise
        copy = self.for_database(target)
        loader = copy if role is None else copy.as_load_role(role)
        return PgRestoreTarget(target, copy=copy, loader=loader, role=role)

    def load_target(self, made: PgRestoreTarget, request: RestoreRequest) -> int:
        """The parallel path when the backup recorded a layout and ``jobs`` > 1, else the
        stream; a load role then logs in no more."""
        if request.layout is not None and request.jobs > 1:
            size, frozen = made.loader._restore_parallel(
                request.layout, jobs=request.jobs, timeout=request.timeout
            )
        else:
            size, frozen = made.loader._restore_stream(
                request.stream,
                single_transaction=request.single_transaction,
                timeout=request.timeout,
                jobs=request.jobs,
            )
        log.info("%s: %d tables loaded frozen", made.name, frozen)
        if made.role is not None:
            # The objects stay the load role's (a superuser owning a forged dump's views
            # and SECURITY DEFINER functions would hand them its rights); it logs in no more.
            self._disarm(made.role.name)
        return size

    def discard_target(self, made: PgRestoreTarget) -> None:
        """Drop the half-loaded database and its load role; the role's login goes first (the
        dump may have set a password of its choosing), after the prepared transactions that
        could hold its row."""
        if made.role is not None:
            with contextlib.suppress(EngineError):
                self._rollback_prepared(made.name, timeout=QUERY_TIMEOUT)
                self._disarm(made.role.name)
        self.drop_quietly(made.name)
        if made.role is not None:
            self._drop_load_role(made.role.name, quietly=True)

    def restored_facts(self, made: PgRestoreTarget, request: RestoreRequest) -> Facts:
        """``snapshot_facts`` of the new database, and who owns it when a load role does."""
        facts = made.copy.snapshot_facts()
        if made.role is not None:
            log.info(
                "%s and its objects are owned by role %s (no login)", made.name, made.role.name
            )
            facts["owner"] = f"role {made.role.name} (no login)"
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
