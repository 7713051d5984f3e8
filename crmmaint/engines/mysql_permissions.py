"""Who can do what on a MariaDB/MySQL server, for ``permissions.review``: its accounts and roles
(global privileges, authentication, locks, role memberships), the grants on the target's own
database, its tables and their columns, and the routines of that database that run with their
definer's rights (``SQL SECURITY DEFINER``).

Read from the server's tables and views, never from ``SHOW GRANTS`` text: ``mysql.global_priv``
(MariaDB 10.4+; else ``mysql.user``, with the columns the server has), ``mysql.roles_mapping``
(MariaDB) or ``mysql.role_edges`` (MySQL 8), and ``information_schema`` ``USER_PRIVILEGES``,
``SCHEMA_PRIVILEGES``, ``TABLE_PRIVILEGES``, ``COLUMN_PRIVILEGES`` and ``ROUTINES``.
``USER_PRIVILEGES`` leaves MariaDB's roles out: their global privileges are decoded from
``global_priv``'s ``access`` bits (``ACCESS_BITS``).

No password hash leaves the server: whether an account has one is computed there
(``authentication_string`` not empty). One row per privilege is read and Python groups and
sorts them (``GROUP_CONCAT`` cuts at ``group_concat_max_len``, and ``JSON_ARRAYAGG`` needs
MariaDB 10.5); the client's ``--batch`` output escapes tabs, newlines and backslashes, so a
name holding any character reads back whole. Each section's items are sorted by key. Queries
run through ``MySQLEngine.query`` in a read-only session bounded by ``max_statement_time``
(MariaDB), as ``mysql_statistics`` does.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from crmmaint.engines.base import QUERY_TIMEOUT

if TYPE_CHECKING:
    from crmmaint.baselines import Snapshot
    from crmmaint.engines.mysql import MySQLEngine

log = logging.getLogger(__name__)

#: MariaDB's global privilege bits (``privilege_t`` in ``sql/privilege.h``), by bit position, as
#: ``USER_PRIVILEGES`` names them in 10.5+ (10.4 calls bit 20 ``REPLICATION CLIENT`` and has
#: none past 29). Bit 10 is the grant option.
ACCESS_BITS = (
    "SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "RELOAD", "SHUTDOWN", "PROCESS",
    "FILE", "GRANT OPTION", "REFERENCES", "INDEX", "ALTER", "SHOW DATABASES", "SUPER",
    "CREATE TEMPORARY TABLES", "LOCK TABLES", "EXECUTE", "REPLICATION SLAVE", "BINLOG MONITOR",
    "CREATE VIEW", "SHOW VIEW", "CREATE ROUTINE", "ALTER ROUTINE", "CREATE USER", "EVENT",
    "TRIGGER", "CREATE TABLESPACE", "DELETE HISTORY", "SET USER", "FEDERATED ADMIN",
    "CONNECTION ADMIN", "READ_ONLY ADMIN", "REPLICATION SLAVE ADMIN", "REPLICATION MASTER ADMIN",
    "BINLOG ADMIN", "BINLOG REPLAY", "SLAVE MONITOR", "SHOW CREATE ROUTINE",
)  # fmt: skip
_GRANT_BIT = 10
#: Authentication alternatives (``IDENTIFIED VIA a OR b …``) read per account, at most.
AUTH_ALTERNATIVES = 8

#: What the server keeps about accounts: its version, which of the tables it has, and the
#: columns of ``mysql.user`` (a table in MySQL and MariaDB < 10.4, a view over
#: ``global_priv`` since).
LAYOUT_SQL = (
    "SELECT 'version', VERSION()\n"
    "UNION ALL SELECT 'table', TABLE_NAME FROM information_schema.TABLES\n"
    " WHERE TABLE_SCHEMA = 'mysql'\n"
    "   AND TABLE_NAME IN ('global_priv', 'roles_mapping', 'role_edges')\n"
    "UNION ALL SELECT 'column', LOWER(COLUMN_NAME) FROM information_schema.COLUMNS\n"
    " WHERE TABLE_SCHEMA = 'mysql' AND TABLE_NAME = 'user'"
)


def _priv(path: str) -> str:
    return f"JSON_VALUE(Priv, '$.{path}')"


def _has_secret(expression: str) -> str:
    """SQL: whether an authentication string holds something (``invalid`` is MariaDB's mark
    of a password login that can never succeed)."""
    return f"IFNULL({expression}, '') NOT IN ('', 'invalid')"


def global_priv_sql() -> str:
    """One row per account and role of ``mysql.global_priv`` (MariaDB 10.4+): user, host,
    plugin, password state, number of authentication alternatives, the plugin of each
    (``AUTH_ALTERNATIVES`` columns, ``''`` for one that is the top-level plugin or absent),
    is_role, locked, password expired (``1``/``0``) and the access bits."""
    alternatives = range(AUTH_ALTERNATIVES)
    secrets = " OR ".join(
        [_has_secret(_priv("authentication_string"))]
        + [_has_secret(_priv(f"auth_or[{i}].authentication_string")) for i in alternatives]
    )
    plugins = ", ".join(f"IFNULL({_priv(f'auth_or[{i}].plugin')}, '')" for i in alternatives)
    return (
        f"SELECT User, Host, IFNULL({_priv('plugin')}, ''),\n"
        f"  CASE WHEN {secrets} THEN 'set'\n"
        f"       WHEN {_priv('authentication_string')} = 'invalid' THEN 'disabled'\n"
        "       ELSE 'none' END,\n"
        f"  IFNULL(JSON_LENGTH(Priv, '$.auth_or'), 0), {plugins},\n"
        f"  IF(IFNULL({_priv('is_role')}, 0) = 1, '1', '0'),\n"
        f"  IF(IFNULL({_priv('account_locked')}, 0) = 1, '1', '0'),\n"
        f"  IF(IFNULL({_priv('password_last_changed')}, 1) = 0, '1', '0'),\n"
        f"  CAST(IFNULL({_priv('access')}, 0) AS UNSIGNED)\n"
        "FROM mysql.global_priv"
    )


def user_table_sql(columns: set[str]) -> str:
    """``global_priv_sql``'s columns from ``mysql.user`` (MySQL, MariaDB < 10.4), with
    ``''`` for what the server does not keep and no access bits."""

    def flag(column: str) -> str:
        return f"IF({column} = 'Y', '1', '0')" if column.lower() in columns else "''"

    secret = _has_secret("authentication_string")
    if "password" in columns:  # MariaDB < 10.4 and MySQL 5 kept native hashes there
        secret += " OR " + _has_secret("Password")
    plugin = "IFNULL(plugin, '')" if "plugin" in columns else "''"
    no_alternatives = ", ".join(["''"] * AUTH_ALTERNATIVES)
    return (
        f"SELECT User, Host, {plugin},\n"
        f"  CASE WHEN {secret} THEN 'set'\n"
        "       WHEN authentication_string = 'invalid' THEN 'disabled' ELSE 'none' END,\n"
        f"  0, {no_alternatives},\n"
        f"  {flag('is_role')}, {flag('account_locked')}, {flag('password_expired')}, ''\n"
        "FROM mysql.user"
    )


def _grantee_join(alias: str, accounts: str) -> str:
    """SQL joining ``alias``'s GRANTEE (``'user'@'host'``, as the server writes it, quotes in
    names not escaped) to the account table ``accounts`` (aliased ``g``), byte for byte."""
    return (
        f"LEFT JOIN {accounts} g ON CAST({alias}.GRANTEE AS BINARY)"
        " = CAST(CONCAT('''', g.User, '''@''', g.Host, '''') AS BINARY)"
    )


def account_key(user: str, host: str) -> str:
    """An account's key in a snapshot: ``'user'@'host'`` as in SQL (``'app'@'%'``; a role's
    host is empty: ``'auditors'@''``), a quote in a name doubled, so every key names one
    account."""
    return "'" + user.replace("'", "''") + "'@'" + host.replace("'", "''") + "'"


def mysql_ident(name: str) -> str:
    """A name in a snapshot entry that joins two (``table.column``): as it is when it holds only
    letters, digits, ``_`` and ``$``, else backquoted as in SQL (a backquote doubled), so that
    every entry splits one way."""
    if re.fullmatch(r"[A-Za-z0-9_$]+", name):
        return name
    return "`" + name.replace("`", "``") + "`"


def definer_key(definer: str) -> str:
    """``account_key`` of a routine's DEFINER as ``information_schema`` writes it: ``user@host``
    (the last ``@`` splits: a host holds none), or a role's bare name."""
    user, at, host = definer.rpartition("@")
    return account_key(user, host) if at else account_key(definer, "")


def mysql_permissions(engine: MySQLEngine, *, timeout: float) -> Snapshot:
    """The permissions snapshot of ``engine``'s server and database
    (``crmmaint.baselines.Snapshot``), keys being ``account_key`` (``'app'@'%'``) but in
    ``definer_routines``:

    - ``accounts``: every account and role: ``global_privileges`` (sorted, without USAGE and
      GRANT OPTION), ``grant_option``, ``any_host`` (the host is or holds a wildcard ``%`` or
      ``_``), ``password`` (``"set"``; ``"none"``: no authentication string, which for
      ``unix_socket`` is how it should be; ``"disabled"``: MariaDB's ``invalid`` mark, no
      password can log in), ``auth`` (the plugin; alternatives joined by `` OR `` in the
      order the server tries them: ``"unix_socket OR mysql_native_password"``; ``None`` for
      a MariaDB role, which logs in with none), ``role``,
      ``locked``, ``password_expired`` (bools, ``None`` where the server does not keep it:
      ``role`` on MySQL, ``locked`` on MariaDB < 10.4) and ``member_of`` (the roles granted
      to it, sorted keys; ``None`` when the server has no roles).
    - ``database_grants``: every grantee of a privilege on this database (a grant on a
      pattern such as ```crm\\_%`.*`` that matches its name included) or on one of its tables:
      ``privileges`` (database-level, sorted), ``grant_option`` (database-level),
      ``databases`` (the names or patterns granted on, sorted) and ``tables`` (sorted
      ``table:PRIVILEGE`` entries; ``table:GRANT OPTION`` when it may pass them on) and
      ``columns`` (sorted ``table.column:PRIVILEGE`` entries, each name as ``mysql_ident``
      writes it: backquoted unless it is only letters, digits, ``_`` and ``$``:
      ``["t.email:SELECT", "`my.t`.`e:mail`:UPDATE"]``; ``table.column:GRANT OPTION`` when
      it may pass them on).
    - ``definer_routines``: the stored functions and procedures of this database that run
      with their definer's rights (``SQL SECURITY DEFINER``, the default), by ``db.name
      (TYPE)`` (``crm.close_deal (PROCEDURE)``; a function and a procedure may share a name):
      ``definer`` (``account_key``: ``'app'@'%'``; a role definer ``'auditors'@''``) and
      ``type`` (``FUNCTION``, ``PROCEDURE``, …).

    Each query may take ``timeout`` seconds. Reading ``mysql.*`` needs SELECT on it (or a
    global privilege); ``information_schema`` shows another account's grants only to a user
    who may read ``mysql``. Raises ``EngineError`` (naming database and host) when the client
    fails, the server refuses, or a query outlives its timeout.
    """
    layout: dict[str, set[str]] = defaultdict(set)
    for what, value in _ask(engine, LAYOUT_SQL, timeout):
        layout[what].add(value)
    version = next(iter(layout["version"]), "")
    global_priv = "global_priv" in layout["table"]
    accounts_table = "mysql.global_priv" if global_priv else "mysql.user"
    source = global_priv_sql() if global_priv else user_table_sql(layout["column"])
    bits = _access_bits(version)

    accounts: dict[str, dict[str, Any]] = {}
    for row in _ask(engine, source, timeout):
        user, host, plugin, password, count = row[:5]
        alternatives = row[5 : 5 + AUTH_ALTERNATIVES]
        role, locked, expired, access = row[5 + AUTH_ALTERNATIVES :]
        plugins = [alt or plugin for alt in alternatives[: int(count)]] or [plugin]
        privileges, grant = set(), False
        if role == "1" and access:  # USER_PRIVILEGES does not list MariaDB's roles
            granted = [bits[i] if i < len(bits) else f"bit {i}" for i in _set_bits(int(access))]
            grant = "GRANT OPTION" in granted
            privileges = {p for p in granted if p != "GRANT OPTION"}
        accounts[account_key(user, host)] = {
            "global_privileges": privileges,
            "grant_option": grant,
            "any_host": "%" in host or "_" in host,
            "password": password,
            "auth": " OR ".join(plugins) or None,
            "role": _flag(role),
            "locked": _flag(locked),
            "password_expired": _flag(expired),
            "member_of": None,
        }

    for user, host, privilege, grantable in _ask(
        engine,
        "SELECT g.User, g.Host, p.PRIVILEGE_TYPE, p.IS_GRANTABLE\n"
        f"FROM information_schema.USER_PRIVILEGES p {_grantee_join('p', accounts_table)}\n"
        "WHERE g.User IS NOT NULL",
        timeout,
    ):
        item = accounts.get(account_key(user, host))
        if item is None:
            continue  # made between the two queries: the next review sees it
        if privilege != "USAGE":
            item["global_privileges"].add(privilege)
        item["grant_option"] = item["grant_option"] or grantable == "YES"

    memberships = _memberships(engine, layout["table"], timeout)
    if memberships is not None:
        for item in accounts.values():
            item["member_of"] = []
        for member, roles in memberships.items():
            if member in accounts:
                accounts[member]["member_of"] = sorted(roles)
    for item in accounts.values():
        item["global_privileges"] = sorted(item["global_privileges"])

    database = engine.db.dbname or engine.db.name
    snapshot = {
        "accounts": accounts,
        "database_grants": _database_grants(engine, database, accounts_table, timeout),
        "definer_routines": _definer_routines(engine, database, timeout),
    }
    return {section: dict(sorted(items.items())) for section, items in snapshot.items()}


def _memberships(
    engine: MySQLEngine, tables: set[str], timeout: float
) -> dict[str, set[str]] | None:
    """Account key -> keys of the roles granted to it (``None``: the server has no roles)."""
    if "roles_mapping" in tables:  # MariaDB: a role's host is ''
        sql = "SELECT User, Host, Role, '' FROM mysql.roles_mapping"
    elif "role_edges" in tables:  # MySQL 8
        sql = "SELECT TO_USER, TO_HOST, FROM_USER, FROM_HOST FROM mysql.role_edges"
    else:
        return None
    found: dict[str, set[str]] = defaultdict(set)
    for user, host, role, role_host in _ask(engine, sql, timeout):
        found[account_key(user, host)].add(account_key(role, role_host))
    return found


def _database_grants(
    engine: MySQLEngine, database: str, accounts_table: str, timeout: float
) -> dict[str, dict[str, Any]]:
    """Grantee key -> its grants on ``database`` and on the tables in it."""
    name = engine.quote_literal(database)
    # A database-level grant may name a pattern (`crm\_%`): LIKE, byte for byte, as the
    # server matches it (backslash escapes a wildcard in both).
    schema_rows = _ask(
        engine,
        "SELECT g.User IS NOT NULL, IFNULL(g.User, ''), IFNULL(g.Host, ''), s.GRANTEE,\n"
        "       s.TABLE_SCHEMA, s.PRIVILEGE_TYPE, s.IS_GRANTABLE\n"
        f"FROM information_schema.SCHEMA_PRIVILEGES s {_grantee_join('s', accounts_table)}\n"
        f"WHERE CAST({name} AS BINARY) LIKE CAST(s.TABLE_SCHEMA AS BINARY)",
        timeout,
    )
    table_rows = _ask(
        engine,
        "SELECT g.User IS NOT NULL, IFNULL(g.User, ''), IFNULL(g.Host, ''), t.GRANTEE,\n"
        "       t.TABLE_NAME, t.PRIVILEGE_TYPE, t.IS_GRANTABLE\n"
        f"FROM information_schema.TABLE_PRIVILEGES t {_grantee_join('t', accounts_table)}\n"
        f"WHERE CAST(t.TABLE_SCHEMA AS BINARY) = CAST({name} AS BINARY)",
        timeout,
    )
    column_rows = _ask(
        engine,
        "SELECT g.User IS NOT NULL, IFNULL(g.User, ''), IFNULL(g.Host, ''), c.GRANTEE,\n"
        "       c.TABLE_NAME, c.COLUMN_NAME, c.PRIVILEGE_TYPE, c.IS_GRANTABLE\n"
        f"FROM information_schema.COLUMN_PRIVILEGES c {_grantee_join('c', accounts_table)}\n"
        f"WHERE CAST(c.TABLE_SCHEMA AS BINARY) = CAST({name} AS BINARY)",
        timeout,
    )
    grants: dict[str, dict[str, Any]] = {}

    def item(known: str, user: str, host: str, grantee: str) -> dict[str, Any]:
        key = account_key(user, host) if known == "1" else grantee
        return grants.setdefault(
            key,
            {
                "privileges": set(),
                "grant_option": False,
                "databases": set(),
                "tables": set(),
                "columns": set(),
            },
        )

    for known, user, host, grantee, schema, privilege, grantable in schema_rows:
        entry = item(known, user, host, grantee)
        entry["privileges"].add(privilege)
        entry["databases"].add(schema)
        entry["grant_option"] = entry["grant_option"] or grantable == "YES"
    for known, user, host, grantee, table, privilege, grantable in table_rows:
        entry = item(known, user, host, grantee)
        entry["tables"].add(f"{table}:{privilege}")
        if grantable == "YES":
            entry["tables"].add(f"{table}:GRANT OPTION")
    for known, user, host, grantee, table, column, privilege, grantable in column_rows:
        entry = item(known, user, host, grantee)
        where = f"{mysql_ident(table)}.{mysql_ident(column)}"
        entry["columns"].add(f"{where}:{privilege}")
        if grantable == "YES":
            entry["columns"].add(f"{where}:GRANT OPTION")
    for entry in grants.values():
        for field in ("privileges", "databases", "tables", "columns"):
            entry[field] = sorted(entry[field])
    return grants


def _definer_routines(
    engine: MySQLEngine, database: str, timeout: float
) -> dict[str, dict[str, Any]]:
    """``db.name (TYPE)`` -> definer and type of each SQL SECURITY DEFINER routine of
    ``database``."""
    name = engine.quote_literal(database)
    rows = _ask(
        engine,
        "SELECT ROUTINE_SCHEMA, ROUTINE_NAME, ROUTINE_TYPE, DEFINER\n"
        "FROM information_schema.ROUTINES\n"
        f"WHERE CAST(ROUTINE_SCHEMA AS BINARY) = CAST({name} AS BINARY)\n"
        "  AND SECURITY_TYPE = 'DEFINER'",
        timeout,
    )
    return {
        f"{schema}.{routine} ({kind})": {"definer": definer_key(definer), "type": kind}
        for schema, routine, kind, definer in rows
    }


def _access_bits(version: str) -> tuple[str, ...]:
    """``ACCESS_BITS`` as this MariaDB version names them."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found and (int(found[1]), int(found[2])) < (10, 5):
        return (*ACCESS_BITS[:20], "REPLICATION CLIENT", *ACCESS_BITS[21:30])
    return ACCESS_BITS


def _set_bits(value: int) -> list[int]:
    return [i for i in range(value.bit_length()) if value >> i & 1]


def _flag(value: str) -> bool | None:
    return {"1": True, "0": False}.get(value)


def _ask(engine: MySQLEngine, sql: str, timeout: float) -> list[tuple[str, ...]]:
    """Rows of ``sql`` in a read-only session bounded by ``timeout`` seconds (the statement
    time limit exists in MariaDB only: ``/*M! … */`` runs there and nowhere else)."""
    guard = (
        "SET SESSION TRANSACTION READ ONLY;\n"
        f"/*M! SET SESSION max_statement_time = {max(timeout, 0.001):.3f} */;\n"
    )
    return engine.query(f"{guard}{sql};\n", timeout=min(timeout + 10, QUERY_TIMEOUT))
