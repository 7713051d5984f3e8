"""A backup is untrusted input to a restore: a holder of only the write key and the public keys
forges a backup, dated newest, whose dump holds client meta-commands (`\\! cmd` runs a shell
command in psql and in the mariadb client). `crmmaint restore … @latest` and a drill, run
through the CLI against real PostgreSQL and MariaDB, must refuse it and run nothing."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from clirun import run_cli

from crmmaint.inventory import load_inventory
from crmmaint.repository import Repository
from crmmaint.repository.backends.local import LocalBackend
from crmmaint.repository.configured import load_write_key, recipients_for


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args)


def sql(engine: str, statement: str, db: str | None = None) -> str:
    if engine == "postgresql":
        command = [
            "psql",
            "-X",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-qAt",
            "-d",
            db or "postgres",
        ]
    else:
        command = [
            "mariadb",
            "-uroot",
            "-h127.0.0.1",
            "--protocol=tcp",
            "-N",
            *([db] if db else []),
        ]
    done = subprocess.run(command, input=statement, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def make_source(engine: str) -> str:
    """A new source database with the two customers every backup here holds; its name."""
    name = f"crmforge_{uuid.uuid4().hex[:8]}"
    sql(engine, f"CREATE DATABASE {name}")
    sql(engine, "CREATE TABLE customers (id int PRIMARY KEY, name text); "
        "INSERT INTO customers VALUES (1, 'Anna'), (2, 'Ben');", name)  # fmt: skip
    return name


def drop_databases(engine: str, *names: str) -> None:
    for name in names:
        drop = f"DROP DATABASE IF EXISTS {name}"
        sql(engine, drop + (" WITH (FORCE)" if engine == "postgresql" else ""))


def write_estate_inventory(root: Path, engine: str, name: str) -> Path:
    keys = root / "keys"
    inv = {
        "settings": {"journal": str(root / "journal.sqlite")},
        "hosts": {"local": {"connection": "local"}},
        "databases": {
            "crm": {
                "engine": engine,
                "host": "local",
                "name": name,
                "address": "127.0.0.1",
                "user": "postgres" if engine == "postgresql" else "root",
                "main": True,
            }
        },
        "repositories": {
            "main": {
                "url": str(root / "repo"),
                "write_key": str(keys / "write.key"),
                "recipients": [f"file:{keys / 'ops.pub'}"],
                "identity": str(keys / "ops.key"),
            }
        },
    }
    path = root / "inventory.yml"
    path.write_text(yaml.safe_dump(inv))
    return path


@pytest.fixture(scope="module", params=["postgresql", "mysql"])
def template(request, tmp_path_factory):
    """Keys, a repository and its journal holding one genuine backup of a two-customer
    database, made once per engine: each test gets its own copy (``estate``)."""
    engine = request.param
    root = tmp_path_factory.mktemp(f"forge-{engine}")
    name = make_source(engine)
    path = write_estate_inventory(root, engine, name)
    (root / "keys").mkdir()
    generated = cli("keys", "generate", "--output", str(root / "keys" / "ops.key"))
    (root / "keys" / "ops.pub").write_text(generated.stdout.strip() + "\n")
    assert cli("repo", "init", "-i", str(path)).returncode == 0
    assert cli("backup", "-i", str(path)).returncode == 0
    drop_databases(engine, name)
    return engine, root


@pytest.fixture
def estate(template, tmp_path):
    """A copy of the template's keys, repository and journal in ``tmp_path``, and a source
    database of its own (the same two customers): ``(engine, name, inventory path)``."""
    engine, root = template
    for part in ("keys", "repo"):
        shutil.copytree(root / part, tmp_path / part, symlinks=True)
    shutil.copy2(root / "journal.sqlite", tmp_path / "journal.sqlite")
    name = make_source(engine)
    path = write_estate_inventory(tmp_path, engine, name)
    yield engine, name, path
    drop_databases(engine, name, f"{name}_forged")


def forge(inventory: Path, engine: str, dump: bytes, facts: dict) -> str:
    """What a write-key holder can do: commit a backup of its choosing (newest)."""
    inv = load_inventory(inventory)
    cfg = inv.repositories["main"]
    repo = Repository.open(
        LocalBackend(cfg.url.removeprefix("file://")), load_write_key(cfg.write_key)
    )
    with repo.session(
        source="database:crm", kind=engine, host="local", recipients=recipients_for(cfg)
    ) as session:
        session.add_stream("dump", io.BytesIO(dump))
        session.set_facts({"engine": engine, **facts})
        session.meta.update({"tables": 1, "rows": 2})
        return session.commit().id


def payloads(marker: Path, secret: Path, source_db: str) -> list[tuple[str, bytes, dict]]:
    """Forged dumps, each trying to run `touch marker` on this host, read `secret` into the
    database, or reach beyond the scratch database, if the client obeys it."""
    shell = f"\\! touch {marker}\n".encode()
    copy = b"COPY public.c%d (id) FROM stdin;\n1\n2\n\\.\n"
    pg_two = (
        b"SET client_encoding = 'UTF8';\n" + shell
        + b"CREATE TABLE public.c1 (id int);\nCREATE TABLE public.c2 (id int);\n"
    )  # fmt: skip
    first = len(pg_two)
    pg_two += copy % 1
    second = len(pg_two)
    pg_two += copy % 2
    vi = b"SELECT 1\n\\e\n" + b":\n" * 2000 + f":!touch {marker}\n:qa!\n".encode() + b";\n"
    return [
        ("plain", b"SELECT 1;\n" + shell + b"SELECT 2;\n", {"format": "pg_dump-plain"}),
        (
            "its own unrestrict",  # the dump cannot unlock what it did not lock
            b"\\restrict abc\n\\unrestrict abc\n\\unrestrict xyz\n" + shell,
            {"format": "pg_dump-plain"},
        ),
        (
            "parallel layout",  # two COPY sections: the parallel restore path
            pg_two,
            {"format": "pg_dump-plain", "copy_sections": [[first, second], [second, len(pg_two)]]},
        ),
        ("mariadb system", b"SELECT 1;\nsystem touch " + str(marker).encode() + b"\n", {}),
        ("editor", vi, {}),
        (
            "local infile",
            b"CREATE TABLE loot (l text);\n"
            + f"LOAD DATA LOCAL INFILE '{secret}' INTO TABLE loot;\n".encode(),
            {},
        ),
        ("connect elsewhere", b"SELECT 1;\nconnect other 127.0.0.2\nSELECT 2;\n", {}),
        (
            "use the source",
            f"SELECT 1;\nuse {source_db}\nCREATE TABLE touched_prod (id int);\n".encode(),
            {},
        ),
    ]


@pytest.mark.parametrize("case", range(8))
def test_a_forged_backup_runs_no_client_command(estate, tmp_path, case):
    engine, name, inventory = estate
    marker = tmp_path / "pwned"
    secret = tmp_path / "keys" / "ops.key"
    label, dump, facts = payloads(marker, secret, name)[case]
    if engine == "mysql" and label == "parallel layout":
        pytest.skip("MariaDB restores from the sequential stream only")
    forge(inventory, engine, dump, facts)
    done = cli("restore", "database:crm@latest", "--to", f"{name}_forged", "-i", str(inventory))
    assert done.returncode == 5, (label, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert not marker.exists(), f"{label}: the forged backup ran a client command"
    tables = sql(engine, f"SELECT datname FROM pg_database WHERE datname = '{name}_forged'"
                 if engine == "postgresql" else f"SHOW DATABASES LIKE '{name}_forged'")  # fmt: skip
    assert tables.strip() == ""  # the half-loaded target was dropped
    if engine == "mysql":
        found = sql(engine, "SHOW TABLES LIKE 'touched_prod'", name).strip()
        assert found == "", f"{label}: the restore reached the source database"

    book = tmp_path / "drill.yml"
    book.write_text(yaml.safe_dump({
        "name": "drill", "steps": [{"name": "drill", "task": "drill.restore", "database": "main"}],
    }))  # fmt: skip
    drilled = cli("run", str(book), "-i", str(inventory))
    assert drilled.returncode == 2 and "failed   drill crm@local" in drilled.stdout, drilled.stdout
    assert not marker.exists(), f"{label}: the drill ran a client command"


def test_a_genuine_backup_still_restores(estate):
    _engine, name, inventory = estate
    done = cli("restore", "database:crm@latest", "--to", f"{name}_forged", "-i", str(inventory))
    assert done.returncode == 0 and "2 rows" in done.stdout, done.stdout + done.stderr


def test_forged_sql_runs_without_superuser_rights(estate, tmp_path):
    """The second layer: SQL that a superuser could run (a program on the server, another
    role's password) fails, because the dump loads as a role that owns only the new database."""
    engine, name, inventory = estate
    marker = tmp_path / "pwned"
    roles_before = load_roles(engine)
    if engine == "postgresql":
        dump = (
            f"COPY (SELECT 1) TO PROGRAM 'touch {marker}';\nALTER ROLE postgres PASSWORD 'taken';\n"
        ).encode()
    else:
        # No client command for the guard to refuse: plain SQL naming the source database.
        dump = f"CREATE TABLE t (id int); CREATE TABLE `{name}`.touched_prod (id int);\n"
        dump = dump.encode()
    forge(inventory, engine, dump, {"format": "pg_dump-plain"} if engine == "postgresql" else {})
    done = cli("restore", "database:crm@latest", "--to", f"{name}_forged", "-i", str(inventory))
    assert done.returncode == 5, done.stdout + done.stderr
    assert "denied" in done.stderr or "must be superuser" in done.stderr, done.stderr
    assert not marker.exists()
    if engine == "mysql":
        assert sql(engine, "SHOW TABLES LIKE 'touched_prod'", name).strip() == ""
    assert not new_load_roles(engine, roles_before), "the failed restore left its load role"


def new_load_roles(engine: str, before: set[str], wait: float = 10.0) -> set[str]:
    """Load roles (accounts) without a database that were not there ``before``, once those of
    restores under way elsewhere on this shared server (tests in another process: a role is
    made a moment before its database) have had ``wait`` seconds to get theirs or go."""
    import time

    deadline = time.monotonic() + wait
    while (left := load_roles(engine) - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def load_roles(engine: str) -> set[str]:
    """Load roles (accounts) left without a database: what a restore must never leave. One
    that owns a database belongs to a kept restore, or to a restore under way elsewhere on
    this shared server, and is not counted."""
    if engine == "mysql":
        from crmmaint.engines.mysql import LoadUser

        live = {LoadUser(db, "").name for db in sql(engine, "SHOW DATABASES").split()}
        users = sql(engine, "SELECT user FROM mysql.user WHERE user LIKE 'crmmaint_load%'")
        return set(users.split()) - live
    return set(
        sql(engine, "SELECT rolname FROM pg_roles r WHERE rolname LIKE 'crmmaint_load%' AND "
            "NOT EXISTS (SELECT 1 FROM pg_database d WHERE d.datdba = r.oid)").split()
    )  # fmt: skip


@pytest.fixture
def owned_estate(tmp_path):
    """A genuine PostgreSQL database whose owner (no superuser) planted a CHECK constraint
    calling its own function, which tries to make the owner a superuser: harmless while the
    owner inserts, a takeover if a restore evaluates it as a superuser."""
    name = f"crmowned_{uuid.uuid4().hex[:8]}"
    owner = f"{name}_owner"
    sql("postgresql", f"CREATE ROLE {owner} LOGIN; CREATE DATABASE {name} OWNER {owner};"
        f"CREATE ROLE {owner}_reader; CREATE ROLE {owner}_r2;")  # fmt: skip
    sql("postgresql", f"""
        SET ROLE {owner};
        CREATE FUNCTION public.ok(int) RETURNS bool LANGUAGE plpgsql AS $$
        BEGIN
          EXECUTE 'ALTER ROLE {owner} SUPERUSER';
          RETURN true;
        EXCEPTION WHEN others THEN RETURN true;
        END $$;
        CREATE TABLE public.accounts (id int PRIMARY KEY CHECK (public.ok(id)), name text);
        INSERT INTO public.accounts SELECT g, 'a' || g FROM generate_series(1, 50) g;
        GRANT SELECT ON public.accounts TO PUBLIC;
        -- What else a genuine database holds that a non-superuser must still load: a table
        -- whose owner is subject to its own policies, a grant made by a grantee.
        CREATE TABLE public.notes (id int PRIMARY KEY, mine bool);
        INSERT INTO public.notes SELECT g, g % 2 = 0 FROM generate_series(1, 10) g;
        ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY;
        ALTER TABLE public.notes FORCE ROW LEVEL SECURITY;
        CREATE POLICY only_mine ON public.notes USING (mine);
        GRANT SELECT ON public.notes TO {owner}_reader WITH GRANT OPTION;
        SET ROLE {owner}_reader;
        GRANT SELECT ON public.notes TO {owner}_r2;
    """, name)  # fmt: skip
    inventory = tmp_path / "inventory.yml"
    keys = tmp_path / "keys"
    keys.mkdir()
    generated = cli("keys", "generate", "--output", str(keys / "ops.key"))
    (keys / "ops.pub").write_text(generated.stdout.strip() + "\n")
    inv = {
        "settings": {"journal": str(tmp_path / "journal.sqlite")},
        "hosts": {"local": {"connection": "local"}},
        "databases": {"crm": {"engine": "postgresql", "host": "local", "name": name,
                              "address": "127.0.0.1", "user": "postgres", "main": True}},
        "repositories": {"main": {"url": str(tmp_path / "repo"),
                                  "write_key": str(keys / "write.key"),
                                  "recipients": [f"file:{keys / 'ops.pub'}"],
                                  "identity": str(keys / "ops.key")}},
    }  # fmt: skip
    inventory.write_text(yaml.safe_dump(inv))
    assert cli("repo", "init", "-i", str(inventory)).returncode == 0
    assert cli("backup", "-i", str(inventory)).returncode == 0
    yield name, owner, inventory, inv
    for db in (name, f"{name}_copy", f"{name}_full"):
        sql("postgresql", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    sql("postgresql", f"DROP ROLE IF EXISTS {owner}_r2; DROP ROLE IF EXISTS {owner}_reader; "
        f"DROP ROLE IF EXISTS {owner}")  # fmt: skip


def is_superuser(role: str) -> bool:
    return (
        sql("postgresql", f"SELECT rolsuper FROM pg_roles WHERE rolname = '{role}'").strip() == "t"
    )


def test_a_database_owner_gains_nothing_from_a_restore_or_drill(owned_estate, tmp_path):
    name, owner, inventory, _ = owned_estate
    assert not is_superuser(owner)
    roles_before = load_roles("postgresql")
    done = cli("restore", "database:crm@latest", "--to", f"{name}_copy", "-i", str(inventory))
    assert done.returncode == 0 and "60 rows" in done.stdout, done.stdout + done.stderr
    assert not is_superuser(owner), "the restore ran the owner's function as a superuser"
    grants = sql("postgresql", "SELECT grantee FROM information_schema.role_table_grants "
                 "WHERE table_name = 'notes' ORDER BY 1", f"{name}_copy").split()  # fmt: skip
    assert f"{owner}_r2" in grants and f"{owner}_reader" in grants
    owners = sql("postgresql", "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class "
                 "WHERE relnamespace = 'public'::regnamespace", f"{name}_copy").split()  # fmt: skip
    assert len(owners) == 1 and owners[0].startswith("crmmaint_load_"), owners
    login = sql("postgresql", f"SELECT rolcanlogin FROM pg_roles WHERE rolname = '{owners[0]}'")
    assert login.strip() == "f"  # the load role logs in no more once the restore is done

    book = tmp_path / "drill.yml"
    book.write_text(yaml.safe_dump({
        "name": "drill", "steps": [{"name": "drill", "task": "drill.restore", "database": "main"}],
    }))  # fmt: skip
    drilled = cli("run", str(book), "-i", str(inventory))
    assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    assert not is_superuser(owner), "the drill ran the owner's function as a superuser"
    assert not new_load_roles("postgresql", roles_before)  # the drill's went with its copy


def test_full_privilege_restores_keep_the_dumps_owners(owned_estate):
    """`restore_privilege: full` loads as the configured user: the dump's owners are kept (and
    the owner's function runs with that user's rights, which is why it is not the default)."""
    name, owner, inventory, inv = owned_estate
    inv["databases"]["crm"]["restore_privilege"] = "full"
    inventory.write_text(yaml.safe_dump(inv))
    done = cli("restore", "database:crm@latest", "--to", f"{name}_full", "-i", str(inventory))
    assert done.returncode == 0, done.stdout + done.stderr
    owners = sql("postgresql", "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class "
                 "WHERE relnamespace = 'public'::regnamespace", f"{name}_full").split()  # fmt: skip
    assert owners == [owner]
    sql("postgresql", f"ALTER ROLE {owner} NOSUPERUSER")


def test_a_failed_restore_says_what_failed_without_the_data(estate, tmp_path):
    """Clients echo rows and statements when a load fails (a BLOB's hex, a key value): the
    message, the console and the journal get what failed and where, not the data."""
    engine, name, inventory = estate
    secret = "SECRETVALUE" * 20
    if engine == "postgresql":
        dump = (
            "CREATE TABLE public.t (v text PRIMARY KEY);\n"
            f"COPY public.t (v) FROM stdin;\n{secret}\n{secret}\n\\.\n"
        )
        facts = {"format": "pg_dump-plain"}
    else:
        blob = secret.encode().hex()
        dump = (
            "CREATE TABLE t (id int PRIMARY KEY, b blob);\n"
            f"INSERT INTO t VALUES (1, 0x{blob}), (1, 0x{blob});\n"
        )
        facts = {}
    forge(inventory, engine, dump.encode(), facts)
    done = cli("restore", "database:crm@latest", "--to", f"{name}_forged", "-i", str(inventory))
    assert done.returncode == 5 and "restore into" in done.stderr, done.stderr
    assert "duplicate" in done.stderr.lower()
    for text in (done.stdout, done.stderr):
        assert "SECRETVALUE" not in text and secret.encode().hex()[:40].upper() not in text.upper()
    book = tmp_path / "drill.yml"
    book.write_text(yaml.safe_dump({
        "name": "drill", "steps": [{"name": "drill", "task": "drill.restore", "database": "main"}],
    }))  # fmt: skip
    drilled = cli("run", str(book), "-i", str(inventory))
    assert drilled.returncode == 2
    journal = (tmp_path / "journal.sqlite").read_bytes()
    assert b"SECRETVALUE" not in journal and b"duplicate" in journal.lower()


def test_a_failed_forged_load_leaves_no_account_that_logs_in(estate, tmp_path):
    """A dump that gives its load role or account a password of its choosing, makes its
    database a template (PostgreSQL), then fails: the role or account is gone (or cannot log
    in), and so is the database, on restore and drill alike."""
    engine, name, inventory = estate
    before = load_roles(engine)
    if engine == "postgresql":
        dump = (
            "DO $$BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L', current_user, 'known'); "
            "END$$;\nCOMMIT;\nDO $$BEGIN EXECUTE format('ALTER DATABASE %I IS_TEMPLATE true', "
            "current_database()); END$$;\nSELECT 1/0;\n"
        )
        facts = {"format": "pg_dump-plain"}
    else:
        dump = "CREATE TABLE t (id int);\nSET PASSWORD = PASSWORD('known');\nSELECT * FROM nope;\n"
        facts = {}
    forge(inventory, engine, dump.encode(), facts)
    done = cli("restore", "database:crm@latest", "--to", f"{name}_forged", "-i", str(inventory))
    assert done.returncode == 5, done.stdout + done.stderr
    assert "could not drop" not in done.stderr, done.stderr
    book = tmp_path / "drill.yml"
    book.write_text(yaml.safe_dump({
        "name": "drill", "steps": [{"name": "drill", "task": "drill.restore", "database": "main"}],
    }))  # fmt: skip
    drilled = cli("run", str(book), "-i", str(inventory), "--json")
    assert drilled.returncode == 2
    assert "division by zero" in drilled.stdout or "nope" in drilled.stdout, drilled.stdout
    assert not new_load_roles(engine, before), "a failed load left its role or account behind"
    if engine == "postgresql":
        # this drill's copy (other tests' drills may run on the server meanwhile)
        (result,) = json.loads(drilled.stdout)["results"]
        scratch = result["details"]["scratch"]
        left = sql(engine, "SELECT count(*) FROM pg_database WHERE datname IN "
                   f"('{scratch}', '{name}_forged')")  # fmt: skip
        assert left.strip() == "0"


@pytest.mark.parametrize(
    "line",
    [
        "SELECT 1; \\u {db}",
        "SELECT 1; \\r {db} 127.0.0.1",
        " " * 70 + "use {db}",
        "SELECT 1; /* x */ USE {db};",
        "XA START 'x'; INSERT INTO t VALUES (1); XA END 'x'; XA PREPARE 'x';",
        # The client reads strings by the session's sql_mode, and so must the guard.
        "SET sql_mode='NO_BACKSLASH_ESCAPES'; SELECT 'a\\';\nconnect {db} 127.0.0.2;\n-- ';",
        'SET sql_mode=\'ANSI_QUOTES\'; SELECT 1 AS "a\\";\nconnect {db} 127.0.0.2;\n-- ";',
    ],
)
def test_client_commands_are_refused_wherever_the_client_runs_them(tmp_path, line):
    """The guard in front of the mariadb client, even with `restore_privilege: full`: a client
    command mid-line, after spaces or a comment, and XA statements are refused before loading."""
    name = f"crmforge_{uuid.uuid4().hex[:8]}"
    sql("mysql", f"CREATE DATABASE {name}")
    try:
        sql(
            "mysql",
            "CREATE TABLE customers (id int PRIMARY KEY); INSERT INTO customers VALUES (1);",
            name,
        )
        inv = tmp_path / "inventory.yml"
        keys = tmp_path / "keys"
        keys.mkdir()
        made = cli("keys", "generate", "--output", str(keys / "ops.key"))
        (keys / "ops.pub").write_text(made.stdout.strip() + "\n")
        inv.write_text(yaml.safe_dump({
            "settings": {"journal": str(tmp_path / "journal.sqlite")},
            "hosts": {"local": {"connection": "local"}},
            "databases": {"crm": {"engine": "mysql", "host": "local", "name": name,
                                  "address": "127.0.0.1", "user": "root", "main": True,
                                  "restore_privilege": "full"}},
            "repositories": {"main": {"url": str(tmp_path / "repo"),
                                      "write_key": str(keys / "write.key"),
                                      "recipients": [f"file:{keys / 'ops.pub'}"],
                                      "identity": str(keys / "ops.key")}},
        }))  # fmt: skip
        assert cli("repo", "init", "-i", str(inv)).returncode == 0
        assert cli("backup", "-i", str(inv)).returncode == 0
        dump = (
            "CREATE TABLE t (id int);\n"
            + line.format(db=name)
            + "\nCREATE TABLE touched (id int);\n"
        )
        forge(inv, "mysql", dump.encode(), {})
        done = cli("restore", "database:crm@latest", "--to", f"{name}_forged", "-i", str(inv))
        assert done.returncode == 5 and "refusing to restore" in done.stderr, done.stderr
        assert sql("mysql", "SHOW TABLES LIKE 'touched'", name).strip() == ""
        assert sql("mysql", "XA RECOVER").strip() == ""
    finally:
        sql("mysql", f"DROP DATABASE IF EXISTS {name}")
        sql("mysql", f"DROP DATABASE IF EXISTS {name}_forged")


def test_a_short_failing_row_is_not_echoed_either(estate):
    engine, name, inventory = estate
    if engine != "postgresql":
        pytest.skip("psql's CONTEXT line; MariaDB's echo is covered above")
    dump = (
        "CREATE TABLE public.s (id int, card text CHECK (card <> 'TOPSECRET-1'));\n"
        "COPY public.s (id, card) FROM stdin;\n1\tTOPSECRET-1\n\\.\n"
    )
    forge(inventory, engine, dump.encode(), {"format": "pg_dump-plain"})
    done = cli("restore", "database:crm@latest", "--to", f"{name}_forged", "-i", str(inventory))
    assert done.returncode == 5 and "check constraint" in done.stderr, done.stderr
    assert "TOPSECRET" not in done.stdout + done.stderr


def test_a_changed_row_fails_the_drill_naming_its_table(estate):
    """A backup whose data is not what its facts recorded (one value changed, counts and
    schema the same): the drill reads the restored table back and names it."""
    from crmmaint.repository.configured import identities_for

    engine, _name, inventory = estate
    cfg = load_inventory(inventory).repositories["main"]
    repo = Repository.open(
        LocalBackend(cfg.url.removeprefix("file://")), load_write_key(cfg.write_key)
    )
    identities = identities_for(cfg)
    (genuine,) = repo.backups(source="database:crm")
    facts = repo.manifest(genuine.id, identities).facts
    dump = b"".join(repo.read_stream(genuine.id, "dump", identities))
    assert dump.count(b"Anna") == 1
    forge(inventory, engine, dump.replace(b"Anna", b"Anne"), facts)

    drilled = cli("drill", "--json", "-i", str(inventory))
    assert drilled.returncode == 2, drilled.stdout + drilled.stderr
    (result,) = yaml.safe_load(drilled.stdout)["results"]
    assert result["status"] == "failed"
    assert "customers: content differs from the backup's" in result["message"], result["message"]
    content = [c for c in result["details"]["checks"] if c["check"].startswith("content of")]
    assert [c["ok"] for c in content] == [False]
    rows = [c for c in result["details"]["checks"] if c["check"].startswith("rows in")]
    assert all(c["ok"] for c in rows), rows  # the counts alone would have passed
