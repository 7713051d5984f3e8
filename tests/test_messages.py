"""What failures say, through the installed `crmmaint` and real servers: a parameter named as
the user gave it (``--force`` on the command line, ``force: true`` in a playbook), a one-step
command's bad flag said of the flag (never of the playbook it built), a refused login naming
where the password came from (never the password, never retried), an unknown SSH host key with
the documented ``ssh-keyscan`` remedy, and a dump refused a table saying so (not a secondary
error). MariaDB does not refuse a dump a table or column: it hides what the account may not
read, so crmmaint probes for the whole database's SELECT before it dumps (and refuses a dump
that would silently leave tables out)."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from pathlib import Path

import pytest
import yaml
from clirun import run_cli, run_here
from estates import estate_inventory, sqlite_crm
from hypothesis import given
from hypothesis import strategies as st

from crmmaint.errors import (
    FORCE,
    ConfigError,
    CrmMaintError,
    EngineError,
    RestoreTargetExists,
    Setting,
)

#: A location inside a playbook a command built (``<restore>:6``, ``<backup>``).
INTERNAL_PLACE = re.compile(r"<(backup|restore|verify|prune)>")

MARIADB = ["mariadb", "--protocol=TCP", "-h", "127.0.0.1", "-P", "3306", "-uroot", "-N", "--batch"]
PSQL = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"]


def sql(command: list[str], text: str, *extra: str) -> None:
    subprocess.run([*command, *extra], input=text, text=True, check=True, capture_output=True)


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("crmmaint: error:")]


# --- the mechanism: one error, two spellings --------------------------------------------------

names = st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True)
values = st.one_of(
    st.just(True), st.integers(-5, 99), st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)
)


@given(names, values, st.text(max_size=20).filter(lambda t: "`" not in t))
def test_a_setting_is_a_param_in_text_and_a_flag_for_a_command(param, value, words):
    setting = Setting(param, value)
    exc = ConfigError(f"{words} {setting}", hint=f"set {setting}", settings=[setting])
    flag = "--" + param.replace("_", "-")
    assert str(exc) == exc.text() == exc.text({}) == exc.text({"other": "--other"})
    assert str(setting) in str(exc) and flag not in str(exc).replace(str(setting), "")
    shown = exc.text({param: flag})
    assert str(setting) not in shown
    assert shown.count(setting.as_flag(flag)) == 2
    # Context added on the way up keeps the error's settings.
    assert exc.within("step x").text({param: flag}) == f"step x: {shown}"


def test_force_spellings():
    assert str(FORCE) == "`force: true`" and FORCE.as_flag("--force") == "--force"
    assert Setting("keep_daily", 7).as_flag("--keep-daily") == "--keep-daily 7"
    exc = RestoreTargetExists("target exists", hint=f"or replace it with {FORCE}")
    assert isinstance(exc, EngineError) and exc.text({"force": "--force"}).endswith(
        "(or replace it with --force)"
    )
    assert not CrmMaintError("plain").settings


# --- a CRM on SQLite, backed up once -------------------------------------------------------------


@pytest.fixture(scope="module")
def estate(tmp_path_factory) -> Path:
    """Shared by the tests of this module that only read it (a backup that fails, a restore
    refused before it writes)."""
    tmp_path = tmp_path_factory.mktemp("estate")
    sqlite_crm(tmp_path / "crm.sqlite", customers=50)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_text("attachment\n")
    write_inventory(tmp_path, {"crm": {"engine": "sqlite", "path": "crm.sqlite", "main": True}})
    assert (
        run_here("keys", "generate", "--output", str(tmp_path / "keys" / "ops.key")).returncode == 0
    )
    inv = str(tmp_path / "inventory.yml")
    assert run_here("repo", "init", "-i", inv).returncode == 0
    done = run_cli("backup", "-i", inv)
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp_path


def write_inventory(folder: Path, databases: dict, **extra) -> Path:
    doc = estate_inventory(databases, filesets={"files": {"paths": ["files"]}}, **extra)
    path = folder / "inventory.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_playbook(folder: Path, steps: list[dict]) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``steps`` as a playbook file; the run and its journal record (``show --json``)."""
    book = folder / "book.yml"
    book.write_text(yaml.safe_dump({"name": "book", "steps": steps}))
    inv = str(folder / "inventory.yml")
    done = run_cli("run", str(book), "-i", inv)
    shown = run_cli("show", "-i", inv, "--json")
    assert shown.returncode == 0, shown.stderr
    return done, json.loads(shown.stdout)


def test_force_is_a_flag_on_the_command_line_and_a_param_in_a_playbook(estate):
    (estate / "taken.sqlite").write_bytes((estate / "crm.sqlite").read_bytes())
    inv = str(estate / "inventory.yml")
    done = run_cli(
        "restore", "database:crm@latest", "--to", str(estate / "taken.sqlite"), "-i", inv
    )
    (line,) = error_lines(done.stderr)
    assert done.returncode == 6
    assert "replace it with --force" in line and "force:" not in line, line
    steps = [
        {
            "name": "restore crm",
            "task": "restore.database",
            "database": "crm",
            "with": {"backup": "latest", "to": "taken.sqlite"},
        }
    ]
    done, record = run_playbook(estate, steps)
    assert done.returncode == 2
    (failed,) = [r for r in record["results"] if r["status"] == "failed"]
    assert "replace it with `force: true`" in failed["message"]
    assert "--force" not in done.stdout + done.stderr + failed["message"]


def test_a_task_parameter_in_a_playbook_is_never_named_as_a_flag(estate):
    steps = [
        {"name": "prune", "task": "backup.prune", "repository": "main", "with": {"keep_daily": -1}},
        {
            "name": "restore",
            "task": "restore.database",
            "database": "crm",
            "with": {"backup": "latest", "to": "new.sqlite", "jobs": 99},
            "on_failure": "continue",
        },
    ]
    steps.reverse()  # the restore first: prune's failure stops the run
    done, record = run_playbook(estate, steps)
    messages = [r["message"] for r in record["results"] if r["status"] == "failed"]
    assert any("`jobs: 99` is out of range" in m for m in messages), messages
    assert any("retention rule `keep_daily: -1`" in m for m in messages), messages
    assert not re.search(r"--(jobs|keep)", done.stdout + done.stderr + " ".join(messages))


# Every one-step command, each with each kind of invalid flag value: one line naming the flag,
# exit 3, and no location in the playbook the command built.
BAD_FLAGS = [
    (["backup", "--database", "nosuch"], "--database"),
    (["backup", "--fileset", "nosuch"], "--fileset"),
    (["backup", "--database", "crm,nosuch"], "--database"),
    (["backup", "--repository", "nosuch"], "nosuch"),
    (["restore", "database:crm@latest", "--to", "x.sqlite", "--timeout", "0"], "--timeout"),
    (["restore", "database:crm@latest", "--to", "x.sqlite", "--timeout", "0s"], "--timeout"),
    (["restore", "database:crm@latest", "--to", "x.sqlite", "--timeout", "200y"], "--timeout"),
    (["restore", "database:crm@latest", "--to", "x.sqlite", "--jobs", "0"], "--jobs"),
    (["restore", "database:crm@latest", "--to", "x.sqlite", "--repository", "no"], "'no'"),
    (["restore", "database:nosuch@latest", "--to", "x.sqlite"], "nosuch"),
    (["verify", "--read-data-subset", "200%"], "--read-data-subset"),
    (["verify", "--read-data-subset", "abc"], "--read-data-subset"),
    (["verify", "--read-data-subset", "0%"], "more than 0%"),
    (["verify", "--repository", "nosuch"], "nosuch"),
    (["prune", "--repository", "nosuch"], "nosuch"),
    *[
        (["prune", f"--keep-{rule}", "-1"], f"--keep-{rule} takes a whole number")
        for rule in ("last", "daily", "weekly", "monthly", "quarterly", "yearly")
    ],
    (
        ["prune", *[f"--keep-{r}=0" for r in ("daily", "weekly", "monthly", "yearly")]],
        "--keep-daily 7",
    ),
]


@pytest.mark.parametrize(("args", "names"), BAD_FLAGS, ids=lambda a: " ".join(a))
def test_a_bad_flag_of_a_one_step_command_is_said_of_the_flag(estate, args, names):
    done = run_cli(*args, "-i", str(estate / "inventory.yml"))
    out = done.stdout + done.stderr
    assert done.returncode == 3, out
    assert "Traceback" not in out
    assert not INTERNAL_PLACE.search(out), out
    assert "step '" not in out and "field '" not in out and "more problem" not in out
    assert names in out, out


def test_several_bad_flags_are_counted_as_flags(estate):
    done = run_cli(
        "backup", "--database", "nosuch", "--fileset", "nosuch", "-i", str(estate / "inventory.yml")
    )
    (line,) = error_lines(done.stderr)
    assert done.returncode == 3
    assert (
        line.startswith("crmmaint: error: --database: ") and "1 more problem in the flags" in line
    )


# --- a refused login ---------------------------------------------------------------------------


@pytest.fixture
def mariadb_account():
    """A MariaDB database with a table and an account ``(db, user, password)`` for it."""
    token = secrets.token_hex(4)
    db, user, password = f"crmmsg_{token}", f"crmmsg_{token}", f"right-{secrets.token_hex(8)}"
    sql(
        MARIADB,
        f"CREATE DATABASE {db}; CREATE TABLE {db}.notes(id INT PRIMARY KEY, body TEXT);"
        f"CREATE TABLE {db}.customers(id INT PRIMARY KEY); INSERT INTO {db}.notes VALUES (1,'x');"
        f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}';",
    )
    yield db, user, password
    sql(MARIADB, f"DROP DATABASE IF EXISTS {db}; DROP USER IF EXISTS '{user}'@'%';")


def mariadb_db(db: str, user: str, password_source: str) -> dict:
    return {
        "engine": "mysql",
        "address": "127.0.0.1",
        "port": 3306,
        "name": db,
        "user": user,
        "password": password_source,
    }


@pytest.mark.parametrize("source", ["env", "file"])
def test_a_wrong_password_names_its_source_and_is_not_retried(
    tmp_path, monkeypatch, mariadb_account, source
):
    db, user, _ = mariadb_account
    sql(MARIADB, f"GRANT ALL ON {db}.* TO '{user}'@'%';")
    wrong = f"wrong-{secrets.token_hex(8)}"
    if source == "env":
        monkeypatch.setenv("CRMMSG_DB_PASSWORD", wrong)
        spec, named = "env:CRMMSG_DB_PASSWORD", "environment variable CRMMSG_DB_PASSWORD"
    else:
        (tmp_path / "db.pw").write_text(wrong + "\n")
        (tmp_path / "db.pw").chmod(0o600)
        spec, named = f"file:{tmp_path / 'db.pw'}", f"file {tmp_path / 'db.pw'}"
    (tmp_path / "files").mkdir()
    inv = write_inventory(tmp_path, {"crm": mariadb_db(db, user, spec)})
    assert (
        run_here("keys", "generate", "--output", str(tmp_path / "keys" / "ops.key")).returncode == 0
    )
    assert run_here("repo", "init", "-i", str(inv)).returncode == 0

    done = run_cli("backup", "--database", "crm", "-i", str(inv))
    assert done.returncode == 5, done.stdout + done.stderr
    assert "Access denied" in done.stdout and named in done.stdout, done.stdout
    # A playbook that allows retries makes one attempt: the same login is refused again.
    steps = [
        {"name": "b", "task": "backup.database", "database": "crm", "retries": 3,
         "retry_delay": "1s"}
    ]  # fmt: skip
    ran, record = run_playbook(tmp_path, steps)
    (row,) = record["results"]
    assert ran.returncode == 2 and row["status"] == "failed"
    assert row["attempts"] == 1 and row["details"]["exit_code"] == 5, row
    assert named in row["message"] and "retrying" not in ran.stdout + ran.stderr
    journal = (tmp_path / "journal.sqlite").read_bytes()
    for text in (done.stdout, done.stderr, ran.stdout, ran.stderr, json.dumps(record)):
        assert wrong not in text
    assert wrong.encode() not in journal


@pytest.fixture
def pg_database():
    token = secrets.token_hex(4)
    name = f"crmmsg_{token}"
    sql(PSQL, f"CREATE DATABASE {name}", "-d", "postgres")
    sql(
        PSQL,
        "CREATE TABLE notes(id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'x');"
        "CREATE TABLE customers(id int PRIMARY KEY); INSERT INTO customers VALUES (1);",
        "-d",
        name,
    )
    roles: list[str] = []
    yield name, roles
    sql(PSQL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", "-d", "postgres")
    for role in roles:
        sql(PSQL, f"DROP ROLE IF EXISTS {role}", "-d", "postgres")


def pg_db(name: str, user: str) -> dict:
    return {
        "engine": "postgresql",
        "address": "127.0.0.1",
        "port": 5432,
        "name": name,
        "user": user,
    }


def setup_backup(tmp_path: Path, databases: dict) -> Path:
    (tmp_path / "files").mkdir(exist_ok=True)
    inv = write_inventory(tmp_path, databases)
    assert (
        run_here("keys", "generate", "--output", str(tmp_path / "keys" / "ops.key")).returncode == 0
    )
    assert run_here("repo", "init", "-i", str(inv)).returncode == 0
    return inv


def test_a_role_that_may_not_log_in_is_refused_once(tmp_path, pg_database):
    # PostgreSQL here trusts every local login, so no password can be wrong: a NOLOGIN role is
    # the refusal it can give.
    name, roles = pg_database
    role = f"{name}_nologin"
    roles.append(role)
    sql(PSQL, f"CREATE ROLE {role} NOLOGIN", "-d", "postgres")
    setup_backup(tmp_path, {"crm": pg_db(name, role)})
    steps = [{"name": "b", "task": "backup.database", "database": "crm", "retries": 2}]
    _, record = run_playbook(tmp_path, steps)
    (row,) = record["results"]
    assert row["attempts"] == 1 and row["details"]["exit_code"] == 5, row
    assert "is not permitted to log in" in row["message"]
    assert "no password is configured" in row["message"], row["message"]


@pytest.mark.parametrize(
    "db",
    [
        {"engine": "postgresql", "address": "127.0.0.1", "port": 5432, "user": "postgres"},
        {"engine": "mysql", "address": "127.0.0.1", "port": 3306, "user": "root"},
    ],
    ids=["postgresql", "mysql"],
)
def test_a_database_that_does_not_exist_is_not_retried(tmp_path, db):
    missing = f"crmmsg_missing_{secrets.token_hex(4)}"
    setup_backup(tmp_path, {"crm": {**db, "name": missing}})
    steps = [{"name": "b", "task": "backup.database", "database": "crm", "retries": 3,
              "retry_delay": "5m"}]  # fmt: skip
    ran, record = run_playbook(tmp_path, steps)
    (row,) = record["results"]
    assert row["status"] == "failed" and row["attempts"] == 1, row
    assert "retrying" not in ran.stdout + ran.stderr
    assert "check 'name:'" in row["message"], row["message"]


def test_a_role_that_does_not_exist_says_so(tmp_path, pg_database):
    name, _ = pg_database
    setup_backup(tmp_path, {"crm": pg_db(name, f"{name}_nobody")})
    _, record = run_playbook(
        tmp_path, [{"name": "b", "task": "backup.database", "database": "crm"}]
    )
    (row,) = record["results"]
    assert row["details"]["exit_code"] == 5, row
    assert "the server has no user" in row["message"] and "check the password" not in row["message"]


# --- a dump refused a table ----------------------------------------------------------------------


def test_a_postgresql_dump_refused_a_table_says_so(tmp_path, pg_database):
    name, roles = pg_database
    role = f"{name}_reader"
    roles.append(role)
    sql(PSQL, f"CREATE ROLE {role} LOGIN; GRANT CONNECT ON DATABASE {name} TO {role};", "-d", name)
    sql(PSQL, f"GRANT USAGE ON SCHEMA public TO {role}; GRANT SELECT ON customers TO {role};",
        "-d", name)  # fmt: skip
    inv = setup_backup(tmp_path, {"crm": pg_db(name, role)})
    for _ in range(3):  # which of the dump's sessions fails first varies: the cause is one
        done = run_cli("backup", "--database", "crm", "-i", str(inv))
        assert done.returncode == 5, done.stdout + done.stderr
        assert "permission denied for table notes" in done.stdout, done.stdout
        assert "invalid snapshot identifier" not in done.stdout
    sql(PSQL, f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role};"
        f"REVOKE ALL ON SCHEMA public FROM {role}; REVOKE ALL ON DATABASE {name} FROM {role};",
        "-d", name)  # fmt: skip


@pytest.mark.parametrize(
    ("grant", "refused"),
    [
        ("GRANT SELECT ON {db}.customers TO {user}", True),  # one table of two
        ("GRANT SELECT (id) ON {db}.notes TO {user}; GRANT SELECT ON {db}.customers TO {user}",
         True),  # columns
        ("GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON {db}.* TO {user}", False),  # the database
        ("GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON *.* TO {user}", False),  # global
        ("CREATE ROLE IF NOT EXISTS {user}_r; GRANT SELECT, EVENT ON {db}.* TO {user}_r;"
         "GRANT {user}_r TO {user}; SET DEFAULT ROLE {user}_r FOR {user}", False),  # a role
    ],
)  # fmt: skip
def test_a_mariadb_account_that_cannot_read_every_table_is_refused_a_dump(
    tmp_path, monkeypatch, mariadb_account, grant, refused
):
    db, user, password = mariadb_account
    account = f"'{user}'@'%'"
    sql(MARIADB, grant.format(db=db, user=account).replace(f"'{user}'@'%'_r", f"{user}_r") + ";")
    monkeypatch.setenv("CRMMSG_DB_PASSWORD", password)
    inv = setup_backup(tmp_path, {"crm": mariadb_db(db, user, "env:CRMMSG_DB_PASSWORD")})
    try:
        done = run_cli("backup", "--database", "crm", "-i", str(inv))
    finally:
        sql(MARIADB, f"DROP ROLE IF EXISTS {user}_r;")
    if refused:
        assert done.returncode == 5, done.stdout + done.stderr
        (line,) = error_lines(done.stderr) or [done.stdout]
        assert f"cannot read all of database '{db}'" in done.stdout + done.stderr, line
        assert f"GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON `{db}`.*" in done.stdout + done.stderr
        listed = run_cli("backups", "list", "-i", str(inv))
        assert "crm" not in listed.stdout.replace("crmmsg", "")
    else:
        assert done.returncode == 0, done.stdout + done.stderr


# --- an unknown SSH host key ---------------------------------------------------------------------


def test_an_unknown_host_key_names_the_host_and_the_keyscan_remedy(sshd_host, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    host = {
        "address": sshd_host.address,
        "port": sshd_host.port,
        "user": sshd_host.user,
        "identity_file": str(sshd_host.identity_file),
        "known_hosts": str(known_hosts),
        "connect_timeout": 5,
    }
    inv = tmp_path / "inventory.yml"
    inv.write_text(
        yaml.safe_dump({"settings": {"journal": "journal.sqlite"}, "hosts": {"app1": host}})
    )
    book = tmp_path / "book.yml"
    book.write_text(
        yaml.safe_dump(
            {
                "name": "b",
                "steps": [
                    {"name": "t", "task": "shell.command", "hosts": "all", "retries": 2,
                     "with": {"commands": ["true"]}}
                ],
            }
        )
    )  # fmt: skip
    done = run_cli("run", str(book), "-i", str(inv))
    assert done.returncode == 2
    shown = json.loads(run_cli("show", "-i", str(inv), "--json").stdout)
    (row,) = shown["results"]
    message = row["message"]
    assert row["attempts"] == 1 and row["details"]["exit_code"] == 4, row
    assert "app1" in message and "unknown SSH host key" in message
    # docs/transports.md, "Adding a host key": the fingerprint check and the line to add.
    docs = (Path(__file__).parent.parent / "docs" / "transports.md").read_text()
    assert "ssh-keyscan -p PORT ADDRESS >> " in docs and "ssh-keygen -lf /etc/ssh/" in docs
    scan = f"ssh-keyscan -p {sshd_host.port} {sshd_host.address}"
    assert f"`{scan} >> {known_hosts}`" in message, message
    assert "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`" in message
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", sshd_host.host_key_file + ".pub"], capture_output=True, text=True
    ).stdout.split()[1]
    assert fingerprint in message
    # The remedy works as printed: the next run reaches the host.
    command = message.split("`")[-2]
    subprocess.run(["sh", "-c", command], check=True, capture_output=True, timeout=30)
    assert run_cli("run", str(book), "-i", str(inv)).returncode == 0
