"""A database's own settings and objects are untrusted input to crmmaint's sessions, which run
as a superuser: a database owner must not be able to make them grant it superuser, through the
CLI as users run it (health in check mode, backup)."""

from __future__ import annotations

import subprocess
import uuid

import pytest
import yaml
from clirun import run_cli


def psql(statement: str, db: str = "postgres") -> str:
    done = subprocess.run(
        ["psql", "-X", "-h", "127.0.0.1", "-U", "postgres", "-qAt", "-v", "ON_ERROR_STOP=1",
         "-d", db],
        input=statement, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args)


@pytest.fixture
def owned(tmp_path):
    """A database owned by a non-superuser role, and an inventory that reaches it as postgres."""
    tag = uuid.uuid4().hex[:8]
    owner, db = f"crmowner_{tag}", f"crmowned_{tag}"
    psql(f"CREATE ROLE {owner} LOGIN; CREATE DATABASE {db} OWNER {owner}")
    keys = tmp_path / "keys"
    inv = {
        "settings": {"journal": str(tmp_path / "journal.sqlite")},
        "hosts": {"local": {"connection": "local"}},
        "databases": {
            "crm": {"engine": "postgresql", "host": "local", "name": db, "address": "127.0.0.1",
                    "user": "postgres", "main": True},
        },
        "repositories": {"main": {"url": str(tmp_path / "repo"), "write_key": str(keys / "w.key"),
                                  "recipients": [f"file:{keys / 'ops.pub'}"]}},
    }  # fmt: skip
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inv))
    keys.mkdir()
    (keys / "ops.pub").write_text(cli("keys", "generate", "--output", str(keys / "ops.key")).stdout)
    assert cli("repo", "init", "-i", str(path)).returncode == 0
    yield owner, db, path
    psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    psql(f"DROP ROLE IF EXISTS {owner}; DROP ROLE IF EXISTS crmpwned_{tag}")


def superuser(role: str) -> bool:
    return psql(f"SELECT rolsuper FROM pg_roles WHERE rolname = '{role}'") == "t"


def as_owner(owner: str, db: str, statement: str) -> None:
    psql(f"SET ROLE {owner};\n{statement}", db)


def test_a_search_path_the_owner_set_does_not_run_the_owners_functions(owned, tmp_path):
    owner, db, inventory = owned
    as_owner(owner, db, f"""
        CREATE FUNCTION public.pg_database_size(name) RETURNS bigint LANGUAGE plpgsql AS $f$
        BEGIN EXECUTE 'ALTER ROLE {owner} SUPERUSER'; RETURN 0; END $f$;
        CREATE FUNCTION public.current_setting(text) RETURNS text LANGUAGE plpgsql AS $f$
        BEGIN EXECUTE 'ALTER ROLE {owner} SUPERUSER'; RETURN '0'; END $f$;
        CREATE TABLE public.customers (id int PRIMARY KEY);
        INSERT INTO public.customers SELECT generate_series(1, 10);
    """)  # fmt: skip
    psql(f"ALTER DATABASE {db} SET search_path = public, pg_catalog")
    book = tmp_path / "health.yml"
    book.write_text(yaml.safe_dump({
        "name": "health", "steps": [{"name": "db", "task": "health.database", "database": "all"}],
    }))  # fmt: skip
    for args in (["run", str(book), "--check"], ["run", str(book)], ["backup"]):
        done = cli(*args, "-i", str(inventory))
        assert done.returncode in (0, 1), done.stdout + done.stderr
        assert not superuser(owner), f"`crmmaint {' '.join(args)}` made the owner a superuser"


def test_a_literal_means_the_same_whatever_the_database_says(owned):
    owner, db, inventory = owned
    pwned = f"crmpwned_{owner.removeprefix('crmowner_')}"
    table = f"a\\'; commit; create role {pwned} superuser;--"
    as_owner(
        owner,
        db,
        f'CREATE TABLE public."{table}" (id int); INSERT INTO public."{table}" VALUES (1);',
    )
    psql(f"ALTER DATABASE {db} SET standard_conforming_strings = off")
    done = cli("backup", "-i", str(inventory))
    assert psql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{pwned}'") == "0"
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["o'brien", "back\\slash", "sp ace=x", "both\\' ' end\\"])
def test_any_database_name_reaches_that_database(name):
    """The name goes into a libpq connection string with libpq's quoting, not SQL's."""
    from crmmaint.engines import engine_for
    from crmmaint.inventory import Database
    from crmmaint.transport.local import LocalTransport

    quoted = '"' + name.replace('"', '""') + '"'
    psql(f"CREATE DATABASE {quoted}")
    try:
        db = Database(name="crm", engine="postgresql", host="local", dbname=name,
                      address="127.0.0.1", user="postgres")  # fmt: skip
        engine = engine_for(db, LocalTransport())
        assert engine.query("SELECT current_database()") == [(name,)]
    finally:
        psql(f"DROP DATABASE {quoted}")


def test_a_non_superuser_with_pg_read_all_data_backs_up(owned, tmp_path):
    """The documented least-privilege backup role: LOGIN plus pg_read_all_data (PostgreSQL 14+)."""
    owner, db, inventory = owned
    reader = f"crmreader_{owner.removeprefix('crmowner_')}"
    as_owner(owner, db, "CREATE TABLE public.deals (id int PRIMARY KEY, amount int);"
             "INSERT INTO public.deals SELECT i, i * 10 FROM generate_series(1, 500) i;")  # fmt: skip
    psql(f"CREATE ROLE {reader} LOGIN; GRANT pg_read_all_data TO {reader}")
    try:
        doc = yaml.safe_load(inventory.read_text())
        doc["databases"]["crm"]["user"] = reader
        inventory.write_text(yaml.safe_dump(doc))
        done = cli("backup", "-i", str(inventory))
        assert done.returncode == 0, done.stdout + done.stderr
        listed = cli("backups", "list", "--json", "-i", str(inventory))
        assert '"rows": 500' in listed.stdout
    finally:
        psql(f"DROP ROLE IF EXISTS {reader}")
