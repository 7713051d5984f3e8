"""MariaDB/MySQL: the mariadb client and mariadb-dump (or mysql/mysqldump) on the database host.

The dump is ``--single-transaction``; its row counts and table list are taken from the dump
stream itself (rows of every ``INSERT`` counted as they pass), so they describe exactly what the
dump holds. The schema fingerprint is read before and after the dump and must not change
(DDL is not transactional in MySQL). See docs/engines.md for why no second snapshot is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from crmmaint.engines.base import (
    QUERY_TIMEOUT,
    DatabaseEngine,
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
)
from crmmaint.engines.myscript import MAX_HEAD, MyScriptLexer, RestoreScript, quoted_pattern
from crmmaint.errors import AccessRefused, EngineError, RestoreTargetExists

if TYPE_CHECKING:
    from crmmaint.engines.mysql_maintenance import MySQLMaintenance

log = logging.getLogger(__name__)

# Runs the first program found with the remaining arguments; nothing is interpolated.
_FIRST_OF = (
    'a="$0"; b="$1"; shift; for p in "$a" "$b"; do '
    'if command -v "$p" >/dev/null 2>&1; then exec "$p" "$@"; fi; done; '
    'echo "neither $a nor $b is installed" >&2; exit 127'
)

DUMP_OPTIONS = [
    "--single-transaction",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--order-by-primary",
    "--skip-dump-date",
    "--default-character-set=utf8mb4",
]

TABLES_SQL = """
SELECT table_name FROM information_schema.tables
WHERE table_schema = DATABASE() AND table_type IN ('BASE TABLE', 'SYSTEM VERSIONED')
ORDER BY table_name
"""

SCHEMA_SQL = """
SELECT 'table', table_name, concat_ws(' ', table_type, engine, table_collation)
  FROM information_schema.tables WHERE table_schema = DATABASE()
UNION ALL
SELECT 'column', concat(table_name, '.', column_name),
       concat_ws(' ', column_type, is_nullable, concat('DEFAULT ', column_default), extra,
                 collation_name, concat('#', ordinal_position))
  FROM information_schema.columns WHERE table_schema = DATABASE()
UNION ALL
SELECT 'index', concat(table_name, '.', index_name),
       group_concat(concat_ws(' ', column_name, sub_part, collation, index_type,
                              IF(non_unique = 0, 'UNIQUE', ''))
                    ORDER BY seq_in_index SEPARATOR ', ')
  FROM information_schema.statistics WHERE table_schema = DATABASE()
  GROUP BY table_name, index_name
UNION ALL
SELECT 'constraint', concat(c.table_name, '.', c.constraint_name),
       concat_ws(' ', c.constraint_type, r.referenced_table_name, r.update_rule, r.delete_rule)
  FROM information_schema.table_constraints c
  LEFT JOIN information_schema.referential_constraints r
    ON r.constraint_schema = c.constraint_schema AND r.constraint_name = c.constraint_name
       AND r.table_name = c.table_name
  WHERE c.table_schema = DATABASE()
UNION ALL
SELECT 'trigger', trigger_name,
       concat_ws(' ', event_object_table, action_timing, event_manipulation, md5(action_statement))
  FROM information_schema.triggers WHERE trigger_schema = DATABASE()
UNION ALL
SELECT 'routine', concat(routine_type, ' ', routine_name), md5(routine_definition)
  FROM information_schema.routines WHERE routine_schema = DATABASE()
UNION ALL
SELECT 'view', table_name, md5(replace(view_definition, concat('`', DATABASE(), '`.'), ''))
  FROM information_schema.views WHERE table_schema = DATABASE()
"""

FACTS_SQL = """
SELECT VERSION(),
       (SELECT coalesce(sum(data_length + index_length), 0) FROM information_schema.tables
         WHERE table_schema = DATABASE()),
       (SELECT variable_value FROM information_schema.global_status
         WHERE variable_name = 'THREADS_CONNECTED'),
       @@max_connections,
       (SELECT variable_value FROM information_schema.global_status
         WHERE variable_name = 'UPTIME'),
       @@character_set_database, @@collation_database
"""

_COUNT_BATCH = 200
_UNESCAPE = {b"n": b"\n", b"t": b"\t", b"0": b"\0", b"\\": b"\\"}
_BATCH_ESCAPE = re.compile(rb"\\(.)")


#: The statement the client echoes around an error, and the values its messages quote.
_ECHOED = re.compile(r"^-{14}\n.*?^-{14}\n", re.MULTILINE | re.DOTALL)
_MY_VALUE = re.compile(r"(near |entry |value: |value |string )'(?:[^'\\]|\\.|'')*'")


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


#: Accounts a least-privilege restore creates (``LoadUser``), one per restore target.
LOAD_USER_PREFIX = "crmmaint_load_"
_LOAD_HINT = (
    "restores load as an account that may use only the new database: the restoring user needs "
    "CREATE USER and the GRANT OPTION; for a dump that needs more (functions with binary "
    "logging on, SUPER), set 'restore_privilege: full' on the database (docs/engines.md)"
)


def native_password_hash(password: str) -> str:
    """The ``mysql_native_password`` hash of ``password`` (``*`` + hex SHA1(SHA1(password))),
    so an account is created without its password reaching the server or its logs."""
    inner = hashlib.sha1(password.encode("ascii")).digest()
    return "*" + hashlib.sha1(inner).hexdigest().upper()


class LoadUser:
    """The account a least-privilege restore loads with: every privilege on the new database
    and none elsewhere (a forged dump's ``USE source`` or ``INSERT INTO source.t`` is denied),
    at the host the server sees the restoring client as, with a random password. Its name
    follows from the target's, so dropping the target finds it. Afterwards it stays, locked,
    as the definer of the views, routines, triggers and events the dump created."""

    def __init__(self, target_name: str, host: str) -> None:
        digest = hashlib.sha256(target_name.encode("utf-8")).hexdigest()[:12]
        self.name = LOAD_USER_PREFIX + digest
        self.host = host
        self.password = secrets.token_urlsafe(24)

    @property
    def account(self) -> str:
        return f"{quote_literal(self.name)}@{quote_literal(self.host)}"

    def unlock_sql(self) -> str:
        """Give the (retired) account a login again, with this object's password."""
        return (
            f"ALTER USER {self.account} IDENTIFIED WITH mysql_native_password "
            f"AS {quote_literal(native_password_hash(self.password))} ACCOUNT UNLOCK"
        )

    def retire_sql(self) -> str:
        """Lock the account and forget its password (a new random one, never used)."""
        unused = native_password_hash(secrets.token_urlsafe(24))
        return (
            f"ALTER USER {self.account} IDENTIFIED WITH mysql_native_password "
            f"AS {quote_literal(unused)} ACCOUNT LOCK"
        )

    def create_sql(self, target_name: str) -> str:
        # In a database-level GRANT, _ and % are wildcards: escape them.
        pattern = target_name.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")
        return (
            f"DROP USER IF EXISTS {self.account};\n"
            f"CREATE USER {self.account} IDENTIFIED WITH mysql_native_password "
            f"AS {quote_literal(native_password_hash(self.password))} "
            "WITH MAX_USER_CONNECTIONS 8;\n"
            f"GRANT ALL PRIVILEGES ON {quote_ident(pattern)}.* TO {self.account};"
        )


def quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def parse_batch(output: bytes) -> list[tuple[str, ...]]:
    """Rows of ``mariadb --batch --skip-column-names`` output (tab-separated, escaped)."""
    rows = []
    for line in output.split(b"\n"):
        if not line:
            continue
        rows.append(
            tuple(
                _BATCH_ESCAPE.sub(lambda m: _UNESCAPE.get(m.group(1), m.group(1)), field).decode(
                    "utf-8", "replace"
                )
                for field in line.split(b"\t")
            )
        )
    return rows


#: A statement's head that inserts rows, and one that creates a table (a name may hold any
#: character, newlines included).
_INSERT_HEAD = re.compile(
    rb"INSERT INTO `((?:[^`]|``)+)` (?:\((?:[^)`]|`(?:[^`]|``)*`)*\) )?VALUES"
)  # a column list where the table has INVISIBLE columns
_CREATE_HEAD = re.compile(rb"CREATE TABLE `((?:[^`]|``)+)` \(")


class InsertRowCounter:
    """Counts the rows of every table in a mysqldump stream, as it streams past.

    Walks the dump with ``MyScriptLexer``: an ``INSERT`` counts only where the client would run
    one (never a line of a routine body or a string that looks like one), and a table name may
    hold any character. In a dump's ``INSERT INTO `t` VALUES (…),(…);`` every ``(`` outside
    strings opens one row (mariadb-dump writes values as literals); in mariadb-dump 10.11's
    layout, one row per line, every row starts a line with ``(`` (a dump escapes the newlines
    of its strings), which is counted in C without stripping strings first.

    ``checksums`` holds, per table, the sha256 over the sha256 of each of its ``INSERT``
    statements as the dump wrote them (``--order-by-primary``: rows in key order), which a
    drill compares with a dump of its restored copy (``DatabaseEngine.content_checksums``).
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._hashes: dict[str, Any] = {}
        self._statement_hash = hashlib.sha256()
        self._lexer = MyScriptLexer()
        self._start = -1  # offset of the statement under way (-1: none)
        self._rows = 0  # counted after the statement's head
        self._per_line = False
        self._after_newline = False  # the last byte seen was a newline

    def feed(self, chunk: bytes) -> None:
        """Count what ``chunk`` completes; an empty chunk ends the stream."""
        lexer = self._lexer
        for piece in lexer.feed(chunk):
            if piece.kind != "statement":
                self._after_newline = piece.data.endswith(b"\n")
                continue
            if self._start < 0:
                self._start, self._rows = piece.offset, 0
                self._per_line = False
                self._statement_hash = hashlib.sha256()
            self._statement_hash.update(piece.data)
            head = lexer.head
            if lexer.head_open and len(head) < MAX_HEAD and not piece.last:
                pass  # all head so far: counted from the head at the end
            elif not piece.inner:
                skip = self._start + len(head) - piece.offset
                data = piece.data if skip <= 0 else piece.data[skip:]
                if skip > 0 or piece.offset == self._start:
                    self._per_line = head.endswith(b"\n(") or b" VALUES\n(" in head[:256]
                    self._after_newline = head.endswith(b"\n")
                self._rows += self._count(data)
            if piece.data:
                self._after_newline = piece.data.endswith(b"\n")
            if piece.last:
                self._statement(head)
                self._start = -1

    @property
    def checksums(self) -> dict[str, str]:
        """sha256 (hex) of each table's ``INSERT`` statements, by table; a table with no rows
        has the digest of nothing."""
        found = {table: hashlib.sha256().hexdigest() for table in self.counts}
        return found | {table: h.hexdigest() for table, h in self._hashes.items()}

    def _count(self, data: bytes) -> int:
        if self._per_line:
            rows = data.count(b"\n(")
            if self._after_newline and data.startswith(b"("):
                rows += 1
            return rows
        if b"'" in data or b'"' in data or b"`" in data:
            data = quoted_pattern(*self._lexer.modes).sub(b"", data)
        return data.count(b"(")

    def _statement(self, head: bytes) -> None:
        if match := _INSERT_HEAD.match(head):
            table = match.group(1).replace(b"``", b"`").decode("utf-8")
            code = quoted_pattern(*self._lexer.modes).sub(b"", head[match.end() :])
            rows = code.count(b"\n(") if self._per_line else code.count(b"(")
            self.counts[table] = self.counts.get(table, 0) + rows + self._rows
            digest = self._statement_hash.digest()
            self._hashes.setdefault(table, hashlib.sha256()).update(digest)
        elif match := _CREATE_HEAD.match(head):
            self.counts.setdefault(match.group(1).replace(b"``", b"`").decode("utf-8"), 0)


@dataclass(kw_only=True)
class MyRestoreTarget(NewTarget):
    """A database a restore created: reached as the restoring user (``copy``) and as whom
    loads it (``loader``: as a ``LoadUser`` in a least-privilege restore, else ``copy``)."""

    copy: MySQLEngine
    loader: MySQLEngine


class MySQLEngine(DatabaseEngine[MyRestoreTarget]):
    """A MariaDB or MySQL database, reached with the mariadb/mysql clients on its host."""

    system_databases = frozenset({"mysql", "sys", "performance_schema", "information_schema"})

    engine = "mysql"
    #: The quoting of this module's SQL, for modules that may not import it (maintenance).
    quote_ident = staticmethod(quote_ident)
    quote_literal = staticmethod(quote_literal)
    login_refusals = ("ERROR 1045",)  # Access denied for user … (using password: …)
    #: Set on the engine a least-privilege restore loads with (``as_load_user``).
    load_user: LoadUser | None = None
    #: ERROR 1045: the login; 1044 (database), 1142/1143 (table, column): a privilege.
    login_refused = re.compile(r"\b1045\b|Access denied for user '[^']*'@'[^']*' \(using")
    privilege_refused = re.compile(
        r"\b(?:1044|1142|1143)\b|command denied to user|Access denied for user \S+ to database"
    )
    missing_database = re.compile(r"\bERROR 1049\b|Unknown database '")

    @property
    def loads_untrusted(self) -> bool:
        return self.load_user is not None

    def conn_args(self) -> list[str]:
        args = ["--default-character-set=utf8mb4"]
        if self.db.address:
            args += ["--protocol=TCP", f"--host={self.db.address}"]
        if self.db.port:
            args.append(f"--port={self.db.port}")
        if self.db.user:
            args.append(f"--user={self.db.user}")
        return args

    def client(self, *options: str, database: str | None = None) -> list[str]:
        """``mariadb`` (or ``mysql``) with the connection options and ``options``."""
        db = database if database is not None else (self.db.dbname or self.db.name)
        args = [*self.conn_args(), *options]
        if db:
            args.append(f"--database={db}")
        return ["sh", "-c", _FIRST_OF, "mariadb", "mysql", *args]

    def untrusted_script(self, stream: Reader) -> Reader:
        """Refuse client commands the sandbox lets through; loading as a ``LoadUser``, name
        that user as every definer (``myscript.RestoreScript``)."""
        return RestoreScript(
            stream, describe=self.error, rewrite_definers=self.load_user is not None
        )

    def load_hint(self, stderr: str) -> str | None:
        """A least-privilege denial points to ``restore_privilege``."""
        if self.load_user is not None and ("Access denied" in stderr or "denied to user" in stderr):
            return (
                "the dump loads as an account that may use only the new database "
                "(restore_privilege: least); a genuine dump that needs more restores with "
                "'restore_privilege: full' on the database (docs/engines.md)"
            )
        return None

    def redact_client_error(self, stderr: str) -> str:
        """The mariadb client's complaint without row values: no echoed statement (the block
        between its ``-----`` lines, BLOBs in hex and all), no "near '…'" excerpt, no
        duplicate entry or incorrect value."""
        text = _ECHOED.sub("", stderr)
        text = _MY_VALUE.sub(lambda m: m.group(1) + "'…'", text)
        return "\n".join(cut_message_line(line) for line in text.splitlines())

    def client_env(self) -> dict[str, str]:
        """Password through the environment; an editor that does nothing (`\\e` in a dump
        must never start one on this host)."""
        env = {"EDITOR": "false", "VISUAL": "false"}
        if self.load_user is not None:
            return env | {"MYSQL_PWD": self.load_user.password}
        return env | self.password_env("MYSQL_PWD")

    # --- queries ----------------------------------------------------------------------------

    def query(self, sql: str, *, timeout: float = QUERY_TIMEOUT) -> list[tuple[str, ...]]:
        return self._query(sql, timeout=timeout)

    def _query(
        self, sql: str, *, timeout: float = QUERY_TIMEOUT, database: str | None = None
    ) -> list[tuple[str, ...]]:
        command = self.client("--batch", "--skip-column-names", database=database)
        result = self.run(command, stdin=sql.encode("utf-8"), timeout=timeout, what="query")
        return parse_batch(result.stdout)

    def maintenance(self) -> MySQLMaintenance:
        """Index and table maintenance of this database (``mysql_maintenance``)."""
        from crmmaint.engines.mysql_maintenance import MySQLMaintenance

        return MySQLMaintenance(self)

    def owner_query(self, sql: str, *, timeout: float = QUERY_TIMEOUT) -> list[list[str | None]]:
        """``DatabaseEngine.owner_query``: when a least-privilege restore made this database,
        as its ``LoadUser`` account (every right on this database, none elsewhere), unlocked
        with a new random password for the query and locked again after; in a ``READ ONLY``
        transaction, ``max_statement_time`` bounding it. Rows come as XML (``--xml``), the
        one output that tells NULL from the text ``NULL``."""
        import xml.etree.ElementTree as ET

        dbname = self.db.dbname or self.db.name
        user = LoadUser(dbname, self._client_host())
        found = self._query(
            f"SELECT COUNT(*) FROM mysql.user WHERE user = {quote_literal(user.name)} "
            f"AND host = {quote_literal(user.host)}",
            database="",
        )
        owner = found and found[0][0] != "0"
        if owner:
            self._query(user.unlock_sql(), database="")
        engine = self.as_load_user(user) if owner else self
        script = (
            "SET SESSION TRANSACTION READ ONLY;\nSET SESSION time_zone = '+00:00';\n"
            f"SET SESSION max_statement_time = {max(timeout, 0.001):.3f};\n{sql};\n"
        )
        # The client commands of a query (`system`, `\\!`, `connect`, `use` …) are refused
        # before the client sees them, and the client is sandboxed, as a restore's is.
        guarded = RestoreScript(
            io.BytesIO(script.encode("utf-8")),
            describe=lambda _: self.error("the query holds a client command: only SQL runs"),
        )
        stdin = b"".join(iter(lambda: guarded.read(1 << 16), b""))
        try:
            result = engine.run(
                engine.client("--xml", "--sandbox"), stdin=stdin, timeout=timeout + 30,
                what="assertion query",
            )  # fmt: skip
        except EngineError as exc:
            raise in_server_words(exc) from exc
        finally:
            if owner:
                self.cleaning_up()._query(user.retire_sql(), database="")
        nil = "{http://www.w3.org/2001/XMLSchema-instance}nil"
        rows: list[list[str | None]] = []
        try:
            parsed = ET.fromstring(f"<all>{result.text}</all>".replace('<?xml version="1.0"?>', ""))
        except ET.ParseError:
            raise self.error(
                "the query's value is not text (binary data?): select it as HEX(…) or LENGTH(…)"
            ) from None
        for resultset in parsed:
            for item in resultset.iter("row"):
                rows.append(
                    [None if f.get(nil) == "true" else (f.text or "") for f in item.iter("field")]
                )
        return rows

    def facts(self, *, timeout: float = QUERY_TIMEOUT) -> Facts:
        (row,) = self.query(FACTS_SQL, timeout=timeout)
        version, size, conns, max_conns, uptime, charset, collation = row
        return {
            "engine": self.engine,
            "version": version,
            "size_bytes": int(size),
            "connections": int(conns),
            "max_connections": int(max_conns),
            "uptime": int(uptime),
            "charset": charset,
            "collation": collation,
        }

    def tables(self, *, timeout: float = QUERY_TIMEOUT) -> list[str]:
        return [name for (name,) in self.query(TABLES_SQL, timeout=timeout)]

    def row_counts(self, *, timeout: float = QUERY_TIMEOUT) -> dict[str, int]:
        names = self.tables(timeout=timeout)
        counts: dict[str, int] = {}
        for i in range(0, len(names), _COUNT_BATCH):
            sql = "\nUNION ALL ".join(
                f"SELECT {quote_literal(t)}, COUNT(*) FROM {quote_ident(t)}"
                for t in names[i : i + _COUNT_BATCH]
            )
            for name, n in self.query(sql, timeout=timeout):
                counts[name] = int(n)
        return counts

    def schema_fingerprint(self, *, timeout: float = QUERY_TIMEOUT) -> str:
        rows = self.query(
            "SET SESSION group_concat_max_len = 1048576;\n" + SCHEMA_SQL, timeout=timeout
        )
        return schema_digest(rows)

    def snapshot_facts(self, *, timeout: float = QUERY_TIMEOUT) -> Facts:
        """Tables, counts and fingerprint; counts in one consistent-snapshot transaction."""
        names = self.tables(timeout=timeout)
        parts = [f"SELECT {quote_literal(t)}, COUNT(*) FROM {quote_ident(t)}" for t in names]
        sql = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;\n"
        sql += "".join(
            "\nUNION ALL ".join(parts[i : i + _COUNT_BATCH]) + ";\n"
            for i in range(0, len(parts), _COUNT_BATCH)
        )
        counts = {name: int(n) for name, n in self.query(sql + "COMMIT;", timeout=timeout)}
        return {
            "engine": self.engine,
            "tables": sorted(counts),
            "row_counts": counts,
            "schema_fingerprint": self.schema_fingerprint(timeout=timeout),
        }

    # --- dump -------------------------------------------------------------------------------

    def require_whole_database_select(self, dbname: str) -> None:
        """Refuse a dump by an account that may not read every table of ``dbname``.

        MariaDB hides what an account may not read: ``SHOW TABLES`` and mariadb-dump skip a
        table the account has no privilege on, and a dump without it "succeeds". The probe
        reads a table name that cannot exist: with ``SELECT`` on the whole database (or
        globally) the server answers ERROR 1146 (no such table); with grants on some tables
        only, ERROR 1142 (SELECT command denied). Raises ``AccessRefused`` (exit 5) naming the
        grant to add; a login refusal passes through as ``AccessRefused`` too."""
        probe = f"crmmaint_privilege_probe_{secrets.token_hex(8)}"
        sql = f"SELECT 1 FROM {quote_ident(dbname)}.{quote_ident(probe)} LIMIT 0"
        command = self.client("--batch", "--skip-column-names", database="")
        try:
            self.run(command, stdin=sql.encode("utf-8"), what="privilege check")
        except AccessRefused as exc:
            if "ERROR 1142" not in exc.message:
                raise  # the login itself
            user = self.db.user or "the connecting user"
            raise AccessRefused(
                f"{self.where}: {user} cannot read all of database {dbname!r}: the account "
                "has privileges on some of its tables only, and a dump would silently leave "
                "out the rest",
                hint=f"GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON {quote_ident(dbname)}.* "
                f"TO {user} (docs/engines.md, MariaDB privileges)",
            ) from exc
        except EngineError as exc:
            if "ERROR 1146" not in exc.message:
                raise

    @contextlib.contextmanager
    def dump(self, *, timeout: float | None = None) -> Iterator[DumpStream]:
        """A ``--single-transaction`` dump; row counts are counted in the stream itself."""
        dbname = self.db.dbname or self.db.name
        self.require_whole_database_select(dbname)
        before = self.schema_fingerprint()
        tables = self.tables()
        command = [
            "sh", "-c", _FIRST_OF, "mariadb-dump", "mysqldump",
            *self.conn_args(), *DUMP_OPTIONS, "--", dbname,
        ]  # fmt: skip
        counter = InsertRowCounter()

        def complete(final: Facts) -> None:
            after = self.schema_fingerprint()
            if after != before:
                raise self.error(
                    "the schema changed while the dump ran; its data may not match its DDL",
                    hint="run the backup again outside schema migrations",
                )
            if missing := [t for t in tables if t not in counter.counts]:
                raise self.error(f"tables missing from the dump stream: {', '.join(missing)}")
            # Views appear in the stream as placeholder tables: keep to the base tables.
            final["tables"] = tables
            final["row_counts"] = {t: counter.counts.get(t, 0) for t in tables}
            checksums = counter.checksums
            final["table_checksums"] = {t: checksums[t] for t in tables if t in checksums}

        facts = {
            "engine": self.engine,
            "format": "mysqldump",
            "schema_fingerprint": before,
            # what a restore's server must be at least (a drill's preflight)
            "server_version": self._query("SELECT @@version", database="")[0][0],
        }
        log.info("dumping %s", self.where)
        with self.started(command, what="mariadb-dump", stdout="stream") as proc:
            stream = DumpStream(
                proc,
                describe=self.error,
                facts=facts,
                observe=counter.feed,
                complete=complete,
                timeout=timeout,
            )
            with closing_dump(stream):
                yield stream

    # --- restore and drop ------------------------------------------------------------------

    def for_database(self, dbname: str) -> MySQLEngine:
        return MySQLEngine(replace(self.db, dbname=dbname), self.transport)

    def for_target(self, target_name: str) -> MySQLEngine:
        return self.for_database(target_name)

    def target_names(self, prefix: str, *, near: str) -> list[str]:
        rows = self._query("SHOW DATABASES", database="")
        return sorted(name for (name,) in rows if name.startswith(prefix))

    def exists(self, name: str, *, timeout: float = QUERY_TIMEOUT) -> bool:
        sql = f"SELECT 1 FROM information_schema.schemata WHERE schema_name = {quote_literal(name)}"
        return bool(self._query(sql, timeout=timeout, database=""))

    def target_exists(self, target: str) -> bool:
        return self.exists(target)

    def create_target(
        self, target: str, request: RestoreRequest, *, replacing: bool
    ) -> MyRestoreTarget:
        """``CREATE DATABASE``; in a least-privilege restore, then the ``LoadUser`` that may
        use only it (the database is dropped again if that user cannot be made)."""
        try:
            self._query(f"CREATE DATABASE {quote_ident(target)}", database="")
        except EngineError as exc:
            if self.exists(target):  # made meanwhile by someone else: not ours to touch
                raise RestoreTargetExists(
                    f"{self.where}: restore target database {target!r} was created by another "
                    "session while this restore started",
                    hint=self.target_exists_hint,
                ) from exc
            raise
        copy = self.for_database(target)
        try:
            user = self._create_load_user(target) if self.db.restore_privilege == "least" else None
        except BaseException:
            self.drop_quietly(target)
            raise
        loader = copy if user is None else copy.as_load_user(user)
        return MyRestoreTarget(target, copy=copy, loader=loader)

    def load_target(self, made: MyRestoreTarget, request: RestoreRequest) -> int:
        """Feed the dump to the client, sandboxed; a load user then logs in no more."""
        # A backup is untrusted input (a write-key holder can forge one): the sandbox
        # refuses the client commands that reach the file system or a shell (`\\!`,
        # `system`, `source`, `tee`), and a client without it fails instead of loading;
        # --local-infile=0 keeps LOAD DATA LOCAL from reading this host's files; the guard
        # refuses the client commands the sandbox lets through (`\\e` runs an editor on
        # the rest of the dump, `connect` reaches another server, `use` another database);
        # the load user may touch no other database, whatever SQL the dump holds.
        loader = made.loader
        size = loader.load(
            loader.client("--sandbox", "--local-infile=0"),
            request.stream,
            into=made.name,
            what="mariadb restore",
            timeout=request.timeout,
        )
        if loader.load_user is not None:
            # It stays as the definer of what the dump created; it logs in no more, with
            # whatever password the dump may have set.
            self._query(loader.load_user.retire_sql(), database="")
        return size

    def discard_target(self, made: MyRestoreTarget) -> None:
        """Drop the half-loaded database and its load user (``drop``)."""
        self.drop_quietly(made.name)

    def restored_facts(self, made: MyRestoreTarget, request: RestoreRequest) -> Facts:
        """``snapshot_facts`` of the new database, and the definer account when a load user
        loaded it."""
        facts = made.copy.snapshot_facts()
        if made.loader.load_user is not None:
            account = made.loader.load_user.account
            log.info("the definer of %s's views and routines is %s (locked)", made.name, account)
            facts["owner"] = f"account {account} (locked)"
        return facts

    def _client_host(self) -> str:
        """The host the server sees this client as (where a ``LoadUser`` account is for)."""
        (row,) = self._query("SELECT SUBSTRING_INDEX(USER(), '@', -1)", database="")
        return row[0]

    def _create_load_user(self, target_name: str) -> LoadUser:
        user = LoadUser(target_name, self._client_host())
        try:
            self._query(user.create_sql(target_name), database="")
        except EngineError as exc:
            raise EngineError(exc.message, hint=_LOAD_HINT, retryable=False) from exc
        return user

    def as_load_user(self, user: LoadUser) -> MySQLEngine:
        """This database reached as ``user`` (a least-privilege restore's load)."""
        engine = MySQLEngine(replace(self.db, user=user.name, password=None), self.transport)
        engine.load_user = user
        return engine

    def drop(self, target_name: str, *, timeout: float = QUERY_TIMEOUT) -> None:
        """Drop a restore target, and the ``LoadUser`` accounts made for it: those first (a
        failed load may have given its account a password of its choosing)."""
        check_target_name(self, target_name)
        if target_name == (self.db.dbname or self.db.name):
            raise self.error(f"refusing to drop the source database {target_name!r}")
        name = LoadUser(target_name, "").name
        hosts = self._query(
            f"SELECT host FROM mysql.user WHERE user = {quote_literal(name)}",
            timeout=timeout,
            database="",
        )
        for (host,) in hosts:
            account = f"{quote_literal(name)}@{quote_literal(host)}"
            self._query(f"DROP USER IF EXISTS {account}", timeout=timeout, database="")
        self._query(
            f"DROP DATABASE IF EXISTS {quote_ident(target_name)}", timeout=timeout, database=""
        )
