"""The permissions snapshots of PostgreSQL and MariaDB (``postgresql_permissions``,
``mysql_permissions``) against the real servers of this machine.

Roles and accounts are server-wide and other test processes make and drop their own meanwhile:
every name here ends in a random suffix, and the tests look only at their own items (and at
their own scratch database's grants), never at the whole server's.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from crmmaint.engines import engine_for
from crmmaint.engines.mysql import MySQLEngine
from crmmaint.engines.mysql_permissions import (
    LAYOUT_SQL,
    _ask,
    account_key,
    mysql_permissions,
    user_table_sql,
)
from crmmaint.engines.postgresql import PostgreSQLEngine
from crmmaint.engines.postgresql.catalog import quote_ident
from crmmaint.engines.postgresql.permissions import postgresql_permissions
from crmmaint.inventory import Database
from crmmaint.transport.local import LocalTransport

PSQL = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"]
MARIADB = ["mariadb", "--protocol=TCP", "-h", "127.0.0.1", "-uroot", "--batch", "-N", "-r"]


def psql(dbname: str, sql: str) -> str:
    done = subprocess.run(
        [*PSQL, "-A", "-t", "-d", dbname], input=sql, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def mariadb(sql: str) -> str:
    done = subprocess.run(MARIADB, input=sql, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def my_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# --- PostgreSQL ------------------------------------------------------------------------------


@dataclass
class PgScratch:
    """A database of its own and the roles a test made (dropped after it)."""

    dbname: str
    suffix: str
    roles: list[str] = field(default_factory=list)

    def role(self, stem: str, options: str = "") -> str:
        name = f"{stem}_{self.suffix}"
        psql("postgres", f"CREATE ROLE {quote_ident(name)} {options}")
        self.roles.append(name)
        return name

    def engine(self, user: str = "postgres") -> PostgreSQLEngine:
        db = Database(name="pg", engine="postgresql", host="local", dbname=self.dbname,
                      address="127.0.0.1", port=5432, user=user)  # fmt: skip
        engine = engine_for(db, LocalTransport())
        assert isinstance(engine, PostgreSQLEngine)
        return engine

    def mine(self, snapshot: dict) -> dict:
        """The snapshot without other tests' roles (server-wide, made and dropped meanwhile)."""
        roles = {k: v for k, v in snapshot["roles"].items() if k.endswith(self.suffix)}
        return {**snapshot, "roles": roles}


@pytest.fixture
def pg() -> Iterator[PgScratch]:
    suffix = secrets.token_hex(4)
    scratch = PgScratch(f"crmtest_perm_{suffix}", suffix)
    psql("postgres", f"CREATE DATABASE {scratch.dbname}")
    try:
        yield scratch
    finally:
        psql("postgres", f"DROP DATABASE IF EXISTS {scratch.dbname} WITH (FORCE)")
        for role in scratch.roles:
            psql("postgres", f"DROP ROLE IF EXISTS {quote_ident(role)}")


def test_pg_roles(pg: PgScratch) -> None:
    su = pg.role("su", "SUPERUSER")
    cr = pg.role("cr", "CREATEROLE")
    cd = pg.role("cd", "CREATEDB")
    br = pg.role("br", "BYPASSRLS REPLICATION")
    login = pg.role("login", "LOGIN")
    pw = pg.role("pw", "LOGIN PASSWORD 'p-secret' VALID UNTIL '2030-01-01'")
    forever = pg.role("forever", "LOGIN PASSWORD 'q' VALID UNTIL 'infinity'")
    odd = pg.role('we"ird\tname')
    newline = pg.role("new\nline 'q'")
    psql("postgres", f"GRANT pg_read_all_data TO {quote_ident(login)}")
    psql("postgres", f"GRANT {quote_ident(odd)}, {quote_ident(cd)} TO {quote_ident(newline)}")

    snapshot = postgresql_permissions(pg.engine(), timeout=30)
    roles = snapshot["roles"]
    assert roles[su] == {
        "superuser": True, "createrole": False, "createdb": False, "bypassrls": False,
        "replication": False, "login": False, "password": "none", "valid_until": None,
        "member_of": [],
    }  # fmt: skip
    assert roles[cr]["createrole"] and not roles[cr]["superuser"]
    assert roles[cd]["createdb"] and not roles[cd]["createrole"]
    assert roles[br]["bypassrls"] and roles[br]["replication"]
    assert roles[login]["login"] and roles[login]["password"] == "none"
    assert roles[login]["member_of"] == ["pg_read_all_data"]
    assert roles[pw]["password"] == "set"
    assert roles[pw]["valid_until"] == "2030-01-01T00:00:00Z"  # sessions are pinned to UTC
    assert roles[forever]["password"] == "set" and roles[forever]["valid_until"] is None
    # names with a quote, a tab, a newline come back whole, as keys and in member_of
    assert odd in roles and newline in roles
    assert roles[newline]["member_of"] == sorted([odd, cd])
    assert not any(name.startswith("pg_") for name in roles)
    hashes = psql("postgres", "SELECT rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL")
    text = json.dumps(snapshot)
    for digest in hashes.splitlines():
        assert digest not in text


def test_pg_public_grants(pg: PgScratch) -> None:
    psql(pg.dbname, """
        CREATE TABLE public.t (id int);
        CREATE SCHEMA "Odd Schema";
        CREATE TABLE "Odd Schema"."t.x" (id int);
        CREATE SEQUENCE public.s;
        CREATE VIEW public.v AS SELECT 1 AS one;
        GRANT SELECT ON public.t TO PUBLIC;
        GRANT SELECT, INSERT ON "Odd Schema"."t.x" TO PUBLIC;
        GRANT USAGE ON SEQUENCE public.s TO PUBLIC;
        GRANT USAGE ON SCHEMA "Odd Schema" TO PUBLIC;
    """)  # fmt: skip
    engine = pg.engine()
    snapshot = postgresql_permissions(engine, timeout=30)
    assert snapshot["public_grants"] == {
        "public.t": {"kind": "table", "privileges": ["SELECT"], "columns": []},
        '"Odd Schema"."t.x"': {"kind": "table", "privileges": ["INSERT", "SELECT"], "columns": []},
        "public.s": {"kind": "sequence", "privileges": ["USAGE"], "columns": []},
    }
    major = int(psql("postgres", "SHOW server_version_num")) // 10000
    public = ["USAGE"] if major >= 15 else ["CREATE", "USAGE"]  # PUBLIC's default ACL
    assert snapshot["schema_grants"] == {
        "public": {"privileges": public},
        "Odd Schema": {"privileges": ["USAGE"]},
    }
    assert snapshot["database_grants"] == {pg.dbname: {"privileges": ["CONNECT", "TEMPORARY"]}}

    psql(pg.dbname, f"""
        REVOKE SELECT ON public.t FROM PUBLIC;
        GRANT CREATE ON SCHEMA public TO PUBLIC;
        REVOKE CONNECT ON DATABASE {pg.dbname} FROM PUBLIC;
    """)  # fmt: skip
    after = postgresql_permissions(engine, timeout=30)
    assert "public.t" not in after["public_grants"]
    assert after["schema_grants"]["public"] == {"privileges": ["CREATE", "USAGE"]}
    assert after["database_grants"] == {pg.dbname: {"privileges": ["TEMPORARY"]}}


def test_pg_snapshot_is_deterministic(pg: PgScratch) -> None:
    for stem in ("b", "a", "c"):
        pg.role(stem, "LOGIN PASSWORD 'x' VALID UNTIL '2031-06-01 12:30:00+02'")
    pg.role("member")
    psql("postgres", "".join(
        f"GRANT {quote_ident(f'{s}_{pg.suffix}')} TO {quote_ident(f'member_{pg.suffix}')};"
        for s in ("c", "a", "b")
    ))  # fmt: skip
    psql(pg.dbname, "CREATE TABLE t (id int); GRANT UPDATE, SELECT, DELETE ON t TO PUBLIC")
    engine = pg.engine()
    first = pg.mine(postgresql_permissions(engine, timeout=30))
    second = pg.mine(postgresql_permissions(engine, timeout=30))
    assert first == second
    assert json.dumps(first) == json.dumps(second)  # the same order too
    assert first["roles"][f"a_{pg.suffix}"]["valid_until"] == "2031-06-01T10:30:00Z"
    assert first["roles"][f"member_{pg.suffix}"]["member_of"] == [
        f"{s}_{pg.suffix}" for s in ("a", "b", "c")
    ]
    assert first["public_grants"]["public.t"]["privileges"] == ["DELETE", "SELECT", "UPDATE"]


def test_pg_password_unknown_to_a_plain_user(pg: PgScratch) -> None:
    plain = pg.role("plain", "LOGIN")
    pw = pg.role("pw", "LOGIN PASSWORD 'p'")
    snapshot = postgresql_permissions(pg.engine(plain), timeout=30)
    assert snapshot["roles"][pw]["password"] == "unknown"
    assert {r["password"] for r in snapshot["roles"].values()} == {"unknown"}
    assert snapshot["roles"][plain]["login"] is True


# --- MariaDB ---------------------------------------------------------------------------------


@dataclass
class MyScratch:
    """A database of its own and the accounts and roles a test made (dropped after it)."""

    dbname: str
    suffix: str
    accounts: list[str] = field(default_factory=list)

    def user(self, stem: str, host: str = "%", options: str = "") -> str:
        account = f"{my_literal(f'{stem}_{self.suffix}')}@{my_literal(host)}"
        mariadb(f"CREATE USER {account} {options}")
        self.accounts.append(f"USER {account}")
        return account_key(f"{stem}_{self.suffix}", host)

    def role(self, stem: str) -> str:
        mariadb(f"CREATE ROLE {stem}_{self.suffix}")
        self.accounts.append(f"ROLE {stem}_{self.suffix}")
        return account_key(f"{stem}_{self.suffix}", "")

    def engine(self) -> MySQLEngine:
        db = Database(name="maria", engine="mysql", host="local", dbname=self.dbname,
                      address="127.0.0.1", port=3306, user="root")  # fmt: skip
        engine = engine_for(db, LocalTransport())
        assert isinstance(engine, MySQLEngine)
        return engine

    def mine(self, snapshot: dict) -> dict:
        return {
            section: {k: v for k, v in items.items() if self.suffix in k}
            for section, items in snapshot.items()
        }


@pytest.fixture
def my() -> Iterator[MyScratch]:
    suffix = secrets.token_hex(4)
    scratch = MyScratch(f"crmtest_perm_{suffix}", suffix)
    mariadb(f"CREATE DATABASE {scratch.dbname}; CREATE TABLE {scratch.dbname}.t (id int)")
    try:
        yield scratch
    finally:
        mariadb(f"DROP DATABASE IF EXISTS {scratch.dbname}")
        for what in scratch.accounts:
            kind, _, account = what.partition(" ")
            mariadb(f"DROP {kind} IF EXISTS {account}")


def test_my_accounts(my: MyScratch) -> None:
    anyone = my.user("anyone")
    sup = my.user("sup", "localhost", "IDENTIFIED BY 'pw-secret'")
    admin = my.user("admin", "10.0.%")
    mariadb(
        f"GRANT SUPER ON *.* TO 'sup_{my.suffix}'@'localhost';"
        f"GRANT ALL ON *.* TO 'admin_{my.suffix}'@'10.0.%' WITH GRANT OPTION;"
        f"ALTER USER 'anyone_{my.suffix}'@'%' ACCOUNT LOCK PASSWORD EXPIRE"
    )
    snapshot = mysql_permissions(my.engine(), timeout=30)
    accounts = snapshot["accounts"]
    assert accounts[anyone] == {
        "global_privileges": [], "grant_option": False, "any_host": True, "password": "none",
        "auth": "mysql_native_password", "role": False, "locked": True,
        "password_expired": True, "member_of": [],
    }  # fmt: skip
    assert accounts[sup]["global_privileges"] == ["SUPER"]
    assert accounts[sup]["password"] == "set" and accounts[sup]["any_host"] is False
    assert not accounts[sup]["grant_option"] and not accounts[sup]["locked"]
    assert {"SUPER", "SELECT", "FILE", "CREATE USER"} <= set(accounts[admin]["global_privileges"])
    assert accounts[admin]["grant_option"] and accounts[admin]["any_host"]
    assert "USAGE" not in accounts[admin]["global_privileges"]
    assert accounts[admin]["global_privileges"] == sorted(accounts[admin]["global_privileges"])
    # no hash leaves the server
    text = json.dumps(snapshot)
    digest = mariadb(f"SELECT authentication_string FROM mysql.user WHERE user = 'sup_{my.suffix}'")
    assert digest.startswith("*") and digest not in text
    for other in mariadb("SELECT authentication_string FROM mysql.user").splitlines():
        assert other in ("", "invalid") or other not in text


def test_my_roles_and_odd_names(my: MyScratch) -> None:
    role = my.role("auditor")
    twin = my.user("twin")
    odd_name = f"we\"i\trd\n'x_{my.suffix}"
    mariadb(f"CREATE USER {my_literal(odd_name)}@'%'")
    my.accounts.append(f"USER {my_literal(odd_name)}@'%'")
    mariadb(
        f"GRANT PROCESS, SUPER, BINLOG MONITOR ON *.* TO auditor_{my.suffix} WITH GRANT OPTION;"
        f"GRANT PROCESS, SUPER, BINLOG MONITOR ON *.* TO 'twin_{my.suffix}'@'%'"
        " WITH GRANT OPTION;"
        f"GRANT auditor_{my.suffix} TO {my_literal(odd_name)}@'%';"
        f"GRANT SELECT ON {my.dbname}.* TO {my_literal(odd_name)}@'%'"
    )
    snapshot = mysql_permissions(my.engine(), timeout=30)
    accounts = snapshot["accounts"]
    odd = account_key(odd_name, "%")
    assert odd == f"'we\"i\trd\n''x_{my.suffix}'@'%'"
    assert accounts[odd]["member_of"] == [role]
    assert snapshot["database_grants"][odd]["privileges"] == ["SELECT"]
    assert accounts[role]["role"] is True and accounts[role]["auth"] is None
    # a role's privileges (decoded from global_priv) read as an account's (USER_PRIVILEGES)
    assert accounts[role]["global_privileges"] == ["BINLOG MONITOR", "PROCESS", "SUPER"]
    assert accounts[role]["global_privileges"] == accounts[twin]["global_privileges"]
    assert accounts[role]["grant_option"] and accounts[twin]["grant_option"]


def test_my_database_grants(my: MyScratch) -> None:
    reader = my.user("reader")
    writer = my.user("writer", "localhost")
    pattern = my.user("pattern")
    role = my.role("editor")
    mariadb(
        f"GRANT SELECT ON {my.dbname}.* TO 'reader_{my.suffix}'@'%';"
        f"GRANT INSERT, UPDATE ON {my.dbname}.t TO 'writer_{my.suffix}'@'localhost'"
        " WITH GRANT OPTION;"
        f"GRANT DELETE ON `crmtest\\_perm\\_%`.* TO 'pattern_{my.suffix}'@'%';"
        f"GRANT SELECT ON {my.dbname}.t TO editor_{my.suffix};"
        # another database's grant is not this one's
        f"GRANT SELECT ON crmtest_other_{my.suffix}.* TO 'reader_{my.suffix}'@'%'"
    )
    engine = my.engine()
    snapshot = mysql_permissions(engine, timeout=30)
    grants = snapshot["database_grants"]
    assert grants[reader] == {
        "privileges": ["SELECT"], "grant_option": False, "databases": [my.dbname], "tables": [],
        "columns": [],
    }  # fmt: skip
    assert grants[writer] == {
        "privileges": [], "grant_option": False, "databases": [],
        "tables": ["t:GRANT OPTION", "t:INSERT", "t:UPDATE"], "columns": [],
    }  # fmt: skip
    assert grants[pattern]["privileges"] == ["DELETE"]
    assert grants[pattern]["databases"] == ["crmtest\\_perm\\_%"]
    assert grants[role]["tables"] == ["t:SELECT"]
    # deterministic: a second look sees the same
    assert my.mine(mysql_permissions(engine, timeout=30)) == my.mine(snapshot)
    mariadb(f"REVOKE SELECT ON {my.dbname}.* FROM 'reader_{my.suffix}'@'%'")
    assert reader not in mysql_permissions(engine, timeout=30)["database_grants"]


def test_my_user_table_fallback(my: MyScratch) -> None:
    """Without ``global_priv`` (MySQL, MariaDB < 10.4) accounts come from ``mysql.user`` with
    the columns it has: here MariaDB's view of it, which keeps no lock."""
    my.user("old", options="IDENTIFIED BY 'pw'")
    my.user("nopw", "localhost")
    engine = my.engine()
    columns = {value for what, value in _ask(engine, LAYOUT_SQL, 30) if what == "column"}
    rows = {
        (row[0], row[1]): row
        for row in _ask(engine, user_table_sql(columns), 30)
        if row[0].endswith(my.suffix)
    }
    old, nopw = rows[(f"old_{my.suffix}", "%")], rows[(f"nopw_{my.suffix}", "localhost")]
    assert old[2:5] == ("mysql_native_password", "set", "0")
    assert nopw[3] == "none"
    assert old[-4:] == ("0", "", "0", "")  # role, locked (not kept), expired, access


# --- the families added after a hostile review -----------------------------------------------


def test_pg_public_column_grants(pg: PgScratch) -> None:
    odd = 'we"i\trd\nco:l'
    psql(pg.dbname, f"""
        CREATE TABLE contacts (id int, name text, {quote_ident(odd)} text, gone text);
        CREATE SCHEMA "Odd Schema";
        CREATE TABLE "Odd Schema"."t.x" (id int, email text);
        GRANT SELECT (name, {quote_ident(odd)}), UPDATE (name) ON contacts TO PUBLIC;
        GRANT SELECT ON "Odd Schema"."t.x" TO PUBLIC;
        GRANT INSERT (email) ON "Odd Schema"."t.x" TO PUBLIC;
        GRANT SELECT (gone) ON contacts TO PUBLIC;
        ALTER TABLE contacts DROP COLUMN gone;
    """)  # fmt: skip
    engine = pg.engine()
    snapshot = postgresql_permissions(engine, timeout=30)
    odd_entry = '"we""i\trd\nco:l":SELECT'  # quote_ident's spelling, tab and newline whole
    assert snapshot["public_grants"] == {
        "public.contacts": {
            "kind": "table", "privileges": [],
            "columns": sorted([odd_entry, "name:SELECT", "name:UPDATE"]),
        },
        '"Odd Schema"."t.x"': {
            "kind": "table", "privileges": ["SELECT"], "columns": ["email:INSERT"],
        },
    }  # fmt: skip
    again = postgresql_permissions(engine, timeout=30)  # other tests' roles left out
    assert json.dumps(pg.mine(again)) == json.dumps(pg.mine(snapshot))

    psql(pg.dbname, f"""
        REVOKE SELECT (name, {quote_ident(odd)}), UPDATE (name) ON contacts FROM PUBLIC;
        REVOKE INSERT (email) ON "Odd Schema"."t.x" FROM PUBLIC;
    """)  # fmt: skip
    after = postgresql_permissions(engine, timeout=30)["public_grants"]
    assert after == {
        '"Odd Schema"."t.x"': {"kind": "table", "privileges": ["SELECT"], "columns": []}
    }


def test_pg_default_grants(pg: PgScratch) -> None:
    owner = pg.role("own'er\tx")
    schema = 'Sch"ema\nB'
    psql(pg.dbname, f"""
        CREATE SCHEMA {quote_ident(schema)};
        ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC;
        ALTER DEFAULT PRIVILEGES FOR ROLE {quote_ident(owner)} IN SCHEMA {quote_ident(schema)}
            GRANT USAGE, SELECT ON SEQUENCES TO PUBLIC;
        ALTER DEFAULT PRIVILEGES FOR ROLE {quote_ident(owner)}
            GRANT SELECT ON TABLES TO {quote_ident(owner)};
        ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
    """)  # fmt: skip
    engine = pg.engine()
    snapshot = postgresql_permissions(engine, timeout=30)
    assert snapshot["default_grants"] == {
        "postgres * functions": {
            "role": "postgres",
            "schema": None,
            "objects": "functions",
            "privileges": [],
        },
        "postgres * tables": {
            "role": "postgres",
            "schema": None,
            "objects": "tables",
            "privileges": ["SELECT"],
        },
        f"{quote_ident(owner)} {quote_ident(schema)} sequences": {
            "role": owner,
            "schema": schema,
            "objects": "sequences",
            "privileges": ["SELECT", "USAGE"],
        },
    }  # a default grant to a role, not PUBLIC, is not listed
    again = postgresql_permissions(engine, timeout=30)  # other tests' roles left out
    assert json.dumps(pg.mine(again)) == json.dumps(pg.mine(snapshot))
    # what it means: a table made now is PUBLIC's to read
    psql(pg.dbname, "CREATE TABLE fresh (id int)")
    assert postgresql_permissions(engine, timeout=30)["public_grants"]["public.fresh"] == {
        "kind": "table", "privileges": ["SELECT"], "columns": [],
    }  # fmt: skip

    psql(pg.dbname, f"""
        ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM PUBLIC;
        ALTER DEFAULT PRIVILEGES FOR ROLE {quote_ident(owner)} IN SCHEMA {quote_ident(schema)}
            REVOKE USAGE, SELECT ON SEQUENCES FROM PUBLIC;
        ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO PUBLIC;
    """)  # fmt: skip
    assert postgresql_permissions(engine, timeout=30)["default_grants"] == {}


def test_pg_definer_functions(pg: PgScratch) -> None:
    owner = pg.role('fn "owner"\n')
    psql(pg.dbname, f"""
        CREATE SCHEMA "s.x";
        CREATE FUNCTION "s.x"."get	it"(a int, "b'q" text) RETURNS int LANGUAGE sql
            SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS 'SELECT 1';
        ALTER FUNCTION "s.x"."get	it"(int, text) OWNER TO {quote_ident(owner)};
        CREATE PROCEDURE public.p() LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
        CREATE FUNCTION public.invoker() RETURNS int LANGUAGE sql AS 'SELECT 1';
    """)  # fmt: skip
    engine = pg.engine()
    snapshot = postgresql_permissions(engine, timeout=30)
    key = '"s.x"."get\tit"(a integer, "b\'q" text)'
    assert snapshot["definer_functions"] == {
        key: {"owner": owner, "public_execute": True, "search_path": "pg_catalog, pg_temp"},
        "public.p()": {"owner": "postgres", "public_execute": True, "search_path": None},
    }
    again = postgresql_permissions(engine, timeout=30)  # other tests' roles left out
    assert json.dumps(pg.mine(again)) == json.dumps(pg.mine(snapshot))

    psql(pg.dbname, """
        REVOKE EXECUTE ON FUNCTION "s.x"."get	it"(int, text) FROM PUBLIC;
        DROP PROCEDURE public.p();
    """)  # fmt: skip
    after = postgresql_permissions(engine, timeout=30)["definer_functions"]
    assert after == {
        key: {"owner": owner, "public_execute": False, "search_path": "pg_catalog, pg_temp"}
    }


def test_pg_owners(pg: PgScratch) -> None:
    app = pg.role("app")
    odd = pg.role("ow\tn'er\n")
    psql(pg.dbname, f"""
        CREATE TABLE mine (id int);
        CREATE TABLE deals (id int);
        CREATE TABLE contacts (id int);
        ALTER TABLE deals OWNER TO {quote_ident(app)};
        ALTER TABLE contacts OWNER TO {quote_ident(app)};
        CREATE SCHEMA "Sch ema" AUTHORIZATION {quote_ident(odd)};
        CREATE VIEW "Sch ema".v AS SELECT 1 AS one;
        ALTER VIEW "Sch ema".v OWNER TO {quote_ident(app)};
    """)  # fmt: skip
    engine = pg.engine()
    snapshot = postgresql_permissions(engine, timeout=30)
    # postgres owns the database (it made it): its tables are no news
    assert snapshot["owners"] == {
        app: {"relations_in": ["Sch ema", "public"], "schemas": []},
        odd: {"relations_in": [], "schemas": ["Sch ema"]},
    }
    again = postgresql_permissions(engine, timeout=30)  # other tests' roles left out
    assert json.dumps(pg.mine(again)) == json.dumps(pg.mine(snapshot))
    psql(pg.dbname, "CREATE TABLE more (id int); ALTER TABLE more OWNER TO " + quote_ident(app))
    assert postgresql_permissions(engine, timeout=30)["owners"] == snapshot["owners"]

    psql(pg.dbname, f"""
        REASSIGN OWNED BY {quote_ident(app)} TO postgres;
        DROP SCHEMA "Sch ema" CASCADE;
    """)  # fmt: skip
    assert postgresql_permissions(engine, timeout=30)["owners"] == {}
    # the database's owner is left out: as the app's own database, the app's tables are no news
    psql("postgres", f"ALTER DATABASE {pg.dbname} OWNER TO {quote_ident(app)}")
    psql(pg.dbname, f"ALTER TABLE deals OWNER TO {quote_ident(app)}")
    owners = postgresql_permissions(engine, timeout=30)["owners"]
    assert app not in owners and owners["postgres"]["relations_in"] == ["public"]


def test_my_column_grants(my: MyScratch) -> None:
    reader = my.user("colreader")
    table, column = "t.x\tq'", 'e:m"ail\n`x'
    quoted_table = "`" + table + "`"
    quoted_column = "`" + column.replace("`", "``") + "`"
    mariadb(
        f"CREATE TABLE {my.dbname}.{quoted_table} (id int, {quoted_column} text);"
        f"GRANT SELECT (id, {quoted_column}), UPDATE (id)"
        f" ON {my.dbname}.{quoted_table} TO 'colreader_{my.suffix}'@'%';"
        f"GRANT INSERT (id) ON {my.dbname}.t TO 'colreader_{my.suffix}'@'%' WITH GRANT OPTION"
    )
    engine = my.engine()
    snapshot = mysql_permissions(engine, timeout=30)
    assert snapshot["database_grants"][reader] == {
        "privileges": [], "grant_option": False, "databases": [], "tables": [],
        "columns": sorted([
            f"{quoted_table}.id:SELECT", f"{quoted_table}.id:UPDATE",
            f"{quoted_table}.{quoted_column}:SELECT", "t.id:GRANT OPTION", "t.id:INSERT",
        ]),
    }  # fmt: skip
    assert json.dumps(my.mine(mysql_permissions(engine, timeout=30))) == json.dumps(
        my.mine(snapshot)
    )
    mariadb(
        f"REVOKE SELECT (id, {quoted_column}), UPDATE (id)"
        f" ON {my.dbname}.{quoted_table} FROM 'colreader_{my.suffix}'@'%';"
        f"REVOKE INSERT (id) ON {my.dbname}.t FROM 'colreader_{my.suffix}'@'%';"
        f"REVOKE GRANT OPTION ON {my.dbname}.t FROM 'colreader_{my.suffix}'@'%'"
    )
    assert reader not in mysql_permissions(engine, timeout=30)["database_grants"]


def test_my_definer_routines(my: MyScratch) -> None:
    stem = "de'f\tiner"
    definer = my.user(stem, "10.0.%")
    odd = "cl\tose'\n`deal"
    quoted = "`" + odd.replace("`", "``") + "`"
    user = my_literal(f"{stem}_{my.suffix}")
    mariadb(
        f"CREATE DEFINER={user}@'10.0.%'"
        f" PROCEDURE {my.dbname}.{quoted}() SQL SECURITY DEFINER SELECT 1;"
        f"CREATE FUNCTION {my.dbname}.{quoted}() RETURNS int RETURN 1;"
        f"CREATE FUNCTION {my.dbname}.safe() RETURNS int SQL SECURITY INVOKER RETURN 1"
    )
    engine = my.engine()
    snapshot = mysql_permissions(engine, timeout=30)
    root = snapshot["definer_routines"][f"{my.dbname}.{odd} (FUNCTION)"]["definer"]
    assert snapshot["definer_routines"] == {
        f"{my.dbname}.{odd} (FUNCTION)": {"definer": root, "type": "FUNCTION"},
        f"{my.dbname}.{odd} (PROCEDURE)": {"definer": definer, "type": "PROCEDURE"},
    }
    assert root.startswith("'root'@'")
    assert json.dumps(my.mine(mysql_permissions(engine, timeout=30))) == json.dumps(
        my.mine(snapshot)
    )
    mariadb(f"DROP PROCEDURE {my.dbname}.{quoted}")
    after = mysql_permissions(engine, timeout=30)["definer_routines"]
    assert list(after) == [f"{my.dbname}.{odd} (FUNCTION)"]
