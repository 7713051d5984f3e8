"""``crmmaint inventory check --connect`` against real parts: SQLite, PostgreSQL, MariaDB and
Redis on 127.0.0.1, sshd hosts on 127.0.0.x, a local repository with a backup in it. Each
failure is reported on its own line with its reason and the right exit code, no secret is
shown, and nothing is written anywhere."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from clirun import run_cli
from estates import estate_inventory, sqlite_crm
from hypothesis import given
from hypothesis import strategies as st

from crmmaint.reachability import MIXED_FAILURES_EXIT, Reach, exit_code, source_phrase

BIN = Path(sys.executable).parent
SECRET = "hunter2-not-the-password"

POSTGRES = {"engine": "postgresql", "address": "127.0.0.1", "port": 5432, "user": "postgres",
            "name": "postgres"}  # fmt: skip
MARIADB = {"engine": "mysql", "address": "127.0.0.1", "port": 3306, "user": "root",
           "name": "mysql"}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def snapshot(*roots: Path) -> dict[str, tuple[int, int, float]]:
    """Every path below ``roots`` with its mode, size and modification time."""
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            st_ = path.lstat()
            found[str(path)] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def estate(tmp_path_factory) -> Path:
    """A folder with a SQLite CRM, a cache directory, an identity, and a local repository
    (made by ``repo init``) holding one backup of the SQLite database."""
    root = tmp_path_factory.mktemp("estate")
    sqlite_crm(root / "crm.sqlite", customers=50)
    (root / "cache").mkdir()
    env = {**os.environ, "HOME": str(root)}
    for name in ("ops", "other"):
        subprocess.run(
            [str(BIN / "crmmaint"), "keys", "generate", "--output", str(root / f"keys/{name}.key")],
            check=True, capture_output=True, env=env, timeout=120,
        )  # fmt: skip
    write_inventory(root, "inventory.yml")
    for args in (["repo", "init"], ["backup", "--database", "crm"]):
        done = subprocess.run(
            [str(BIN / "crmmaint"), *args, "-i", str(root / "inventory.yml")],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    return root


def write_inventory(root: Path, name: str, **changes: dict) -> str:
    """An inventory of the estate (every item reachable), with ``changes`` per section
    merged in; returns its path."""
    inv = estate_inventory(
        {
            "crm": {"engine": "sqlite", "path": "crm.sqlite", "main": True},
            "pg": dict(POSTGRES),
            "maria": dict(MARIADB),
        },
        caches={
            "sessions": {"redis": "redis://127.0.0.1:6379/0", "directories": [str(root / "cache")]}
        },
    )
    for section, entries in changes.items():
        for key, value in entries.items():
            if value is None:
                inv[section].pop(key, None)
            else:
                inv[section][key] = value
    path = root / name
    path.write_text(yaml.safe_dump(inv))
    return str(path)


def connect(inventory: str, *extra: str) -> tuple[int, dict[tuple[str, str], dict], str]:
    """Run ``inventory check --connect --json``: exit code, items by (kind, name), stderr."""
    proc = run_cli("inventory", "check", "--connect", "-i", inventory, "--json", *extra)
    assert "Traceback" not in proc.stderr
    items = {(row["kind"], row["name"]): row for row in json.loads(proc.stdout)}
    return proc.returncode, items, proc.stderr


def test_a_whole_local_estate_is_ok_and_untouched(estate):
    inv = write_inventory(estate, "ok.yml")
    before = snapshot(estate)
    code, items, _ = connect(inv)
    assert code == 0, items
    assert {k: row["status"] for k, row in items.items()} == {
        ("host", "local"): "ok",
        ("database", "crm"): "ok",
        ("database", "pg"): "ok",
        ("database", "maria"): "ok",
        ("cache", "sessions"): "ok",
        ("repository", "main"): "ok",
    }
    assert items["database", "pg"]["detail"].startswith("postgresql ")
    assert "1 backup," in items["repository", "main"]["detail"]
    assert "identity opens the newest" in items["repository", "main"]["detail"]
    assert snapshot(estate) == before  # no lock, no journal, no -wal, nothing


def test_the_plain_output_is_one_tab_separated_line_per_item(estate):
    proc = run_cli("inventory", "check", "--connect", "-i", write_inventory(estate, "ok.yml"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "kind\tname\tstatus\tdetail"
    assert len(lines) == 7 and all(line.split("\t")[2] == "ok" for line in lines[1:])


@pytest.mark.parametrize(
    ("changes", "item", "code", "words"),
    [
        pytest.param(
            {"databases": {"pg": {**POSTGRES, "name": "no_such_database_here"}}},
            ("database", "pg"),
            5,
            'database "no_such_database_here" does not exist',
            id="postgresql-database-missing",
        ),
        pytest.param(
            {"databases": {"pg": {**POSTGRES, "port": "FREE"}}},
            ("database", "pg"),
            5,
            "Connection refused",
            id="postgresql-port-stopped",
        ),
        pytest.param(
            {"caches": {"sessions": {"redis": "redis://127.0.0.1:FREE/0"}}},
            ("cache", "sessions"),
            5,
            "Connection refused",
            id="redis-port-stopped",
        ),
        pytest.param(
            {
                "repositories": {
                    "main": {
                        "url": "no-repo-here",
                        "write_key": "keys/write.key",
                        "recipients": ["file:keys/ops.pub"],
                    }
                }
            },
            ("repository", "main"),
            6,
            "does not exist",
            id="repository-missing",
        ),
        pytest.param(
            {
                "repositories": {
                    "main": {
                        "url": "repo",
                        "write_key": "keys/write.key",
                        "recipients": ["file:keys/ops.pub"],
                        "identity": "keys/other.key",
                    }
                }
            },
            ("repository", "main"),
            8,
            "keys/other.key is not one of its recipients",
            id="identity-not-a-recipient",
        ),
        pytest.param(
            {"databases": {"maria": {**MARIADB, "password": "env:CRM_TEST_DB_PASS"}}},
            ("database", "maria"),
            5,
            "password from env CRM_TEST_DB_PASS refused for user 'root'",
            id="mariadb-password",
        ),
        pytest.param(
            {
                "caches": {
                    "sessions": {
                        "redis": "redis://127.0.0.1:6379/0",
                        "password": "env:CRM_TEST_DB_PASS",
                    }
                }
            },
            ("cache", "sessions"),
            5,
            "password from env CRM_TEST_DB_PASS refused",
            id="redis-password",
        ),
        pytest.param(
            {"databases": {"maria": {**MARIADB, "password": "env:CRM_TEST_UNSET"}}},
            ("database", "maria"),
            8,
            "env:CRM_TEST_UNSET: the variable is unset",
            id="password-source-empty",
        ),
        pytest.param(
            {"caches": {"sessions": {"directories": ["/nonexistent/crmmaint-cache"]}}},
            ("cache", "sessions"),
            5,
            "/nonexistent/crmmaint-cache does not exist",
            id="cache-directory-missing",
        ),
    ],
)
def test_one_failing_item_says_why_with_its_exit_code(
    estate, tmp_path, monkeypatch, changes, item, code, words
):
    port = str(free_port())
    changes = json.loads(json.dumps(changes).replace('"FREE"', port).replace("FREE", port))
    monkeypatch.setenv("CRM_TEST_DB_PASS", SECRET)
    inv = write_inventory(estate, f"one-{item[1]}.yml", **changes)
    before = snapshot(estate)
    got, items, err = connect(inv)
    assert got == code, items[item]
    assert items[item]["status"] == "failed"
    assert words in items[item]["detail"]
    assert "\n" not in items[item]["detail"]
    others = {k: row["status"] for k, row in items.items() if k != item}
    assert set(others.values()) == {"ok"}, others
    assert SECRET not in json.dumps(list(items.values())) + err
    assert snapshot(estate) == before
    assert not (estate / "no-repo-here").exists()


def test_several_kinds_of_failure_exit_2_and_say_each_on_a_line(estate, monkeypatch):
    monkeypatch.setenv("CRM_TEST_DB_PASS", SECRET)
    inv = write_inventory(
        estate,
        "mixed.yml",
        databases={"pg": {**POSTGRES, "name": "no_such_database_here"}},
        repositories={"main": {"url": "no-repo-here", "write_key": "keys/write.key",
                               "recipients": ["file:keys/ops.pub"]}},
    )  # fmt: skip
    proc = run_cli("inventory", "check", "--connect", "-i", inv)
    assert proc.returncode == MIXED_FAILURES_EXIT
    rows = {tuple(line.split("\t")[:3]) for line in proc.stdout.splitlines()[1:]}
    assert ("database", "pg", "failed") in rows
    assert ("repository", "main", "failed") in rows
    assert ("database", "crm", "ok") in rows
    assert "2 of 6 items failed (exit 2)" in proc.stderr
    assert "repo init" in proc.stderr  # the repository's hint: what to do


def test_ssh_hosts_known_unknown_and_silent(estate, sshd_hosts, sshd_factory, tmp_path):
    """A known host (and a SQLite database on it) is ok; an unknown host key is refused and
    known_hosts stays as it was; a port that accepts but never speaks fails in time."""
    good, stranger = sshd_hosts[0], sshd_factory()
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.touch()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts; nobody ever sends an SSH banner

    def ssh(host, **extra):
        return {"address": host.address, "port": host.port, "user": host.user,
                "identity_file": host.identity_file, "known_hosts": host.known_hosts, **extra}  # fmt: skip

    inv = write_inventory(
        estate,
        "ssh.yml",
        hosts={
            "good": ssh(good),
            "stranger": ssh(stranger, known_hosts=str(empty_known_hosts)),
            "silent": {"address": "127.0.0.1", "port": silent.getsockname()[1],
                       "identity_file": good.identity_file, "known_hosts": good.known_hosts,
                       "connect_timeout": 1},
        },
        databases={"remote": {"engine": "sqlite", "host": "good",
                              "path": str(estate / "crm.sqlite")}, "pg": None, "maria": None},
    )  # fmt: skip
    known = {p: Path(p).read_bytes() for p in (good.known_hosts, str(empty_known_hosts))}
    before = snapshot(estate)
    try:
        code, items, _ = connect(inv)
    finally:
        silent.close()
    assert items["host", "good"]["status"] == "ok", items["host", "good"]
    assert items["database", "remote"]["status"] == "ok", items["database", "remote"]
    stranger_row = items["host", "stranger"]
    assert stranger_row["status"] == "failed"
    assert "unknown SSH host key" in stranger_row["detail"]
    assert str(empty_known_hosts) in stranger_row["detail"]
    assert "ssh-keyscan" in stranger_row["hint"]
    assert items["host", "silent"]["status"] == "failed"
    assert items["host", "silent"]["exit_code"] == 4
    assert code == 4  # both failures are transport failures
    assert {p: Path(p).read_bytes() for p in known} == known
    assert snapshot(estate) == before


def test_an_ssh_key_the_host_refuses_is_named(estate, sshd_hosts, tmp_path):
    from sshd_fixture import write_ed25519_key

    host = sshd_hosts[1]
    stray = tmp_path / "stray_key"
    write_ed25519_key(stray)
    inv = write_inventory(
        estate,
        "refused.yml",
        hosts={"h": {"address": host.address, "port": host.port, "user": host.user,
                     "identity_file": str(stray), "known_hosts": host.known_hosts}},
    )  # fmt: skip
    code, items, _ = connect(inv)
    assert code == 4
    assert items["host", "h"]["detail"] == (
        f"SSH login as {host.user!r} with key {stray} refused by h ({host.address}:{host.port})"
    )


def test_the_invoke_form_reaches_the_estate(estate):
    """``invoke inventory.check --connect`` is the same command."""
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [str(BIN / "invoke"), "-r", str(repo), "inventory.check", "--connect", "--json",
         "-i", write_inventory(estate, "ok.yml")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {row["status"] for row in json.loads(proc.stdout)} == {"ok"}


# --- pure logic -----------------------------------------------------------------------------


def reach(ok: bool, code: int) -> Reach:
    return Reach("host", "h", ok, "x", exit_code=0 if ok else code)


@given(st.lists(st.tuples(st.booleans(), st.sampled_from([3, 4, 5, 6, 8, 9, 70]))))
def test_exit_code_is_the_shared_code_of_the_failures_or_2(rows):
    results = [reach(ok, code) for ok, code in rows]
    codes = {code for ok, code in rows if not ok}
    expected = 0 if not codes else codes.pop() if len(codes) == 1 else 2
    assert exit_code(results) == expected


def test_a_password_source_is_named_never_read():
    from crmmaint.inventory import SecretSource

    assert source_phrase(SecretSource("env:CRM_DB_PASS")) == "env CRM_DB_PASS"
    assert source_phrase(SecretSource("file:/etc/crm/db.pass")) == "file /etc/crm/db.pass"
    assert source_phrase(SecretSource("cmd:pass show crm/db")) == "a command (cmd:…)"
    assert source_phrase(None) == "no password"


def test_an_item_past_its_guard_is_reported_and_the_others_finish(monkeypatch):
    """The orchestration alone (probes are plain functions here): a probe that hangs is
    reported failed after its guard and frees its slot (one worker: the others run after it),
    one that raises says why, the rest are ok."""
    import threading

    from crmmaint import reachability
    from crmmaint.errors import EngineError
    from crmmaint.inventory import Inventory

    release = threading.Event()

    def hangs(pool):
        release.wait(30)
        return "too late"

    def refuses(pool):
        raise EngineError("refused", hint="do something")

    items = [
        reachability._Item("host", "slow", 1.0, hangs),
        reachability._Item("database", "db", 1.0, refuses),
        reachability._Item("cache", "c", 1.0, lambda pool: "PONG"),
    ]
    monkeypatch.setattr(reachability, "plan", lambda inv: items)
    monkeypatch.setattr(reachability, "guard_seconds", lambda timeout: 0.5)
    try:
        found = reachability.reach_all(Inventory(path="x"), workers=1)
    finally:
        release.set()
    assert [(r.name, r.ok, r.exit_code) for r in found] == [
        ("slow", False, 4),
        ("db", False, 5),
        ("c", True, 0),
    ]
    assert found[0].detail == "no answer within 0.5s"
    assert found[1].hint == "do something"
    assert reachability.exit_code(found) == MIXED_FAILURES_EXIT


def test_a_probe_that_runs_out_of_time_is_no_answer_and_a_cmd_password_is_suspected():
    """A probe's command timing out (raised as the engine's error, caused by the transport's
    timeout) is said as no answer, without the probe's command or a playbook step's remedy;
    an item whose password comes from a cmd: command names that command as a suspect."""
    from crmmaint import reachability
    from crmmaint.errors import CommandTimeout, EngineError
    from crmmaint.inventory import SecretSource

    def timed_out(pool):
        try:
            raise CommandTimeout("command 'sh -c …' did not finish within 5s and was killed")
        except CommandTimeout as exc:
            raise EngineError("query: did not finish", hint="raise the step's timeout") from exc

    for secret, suspect in ((SecretSource("cmd:pass show crm"), True), (None, False)):
        item = reachability._Item("database", "db", 5.0, timed_out, secret)
        try:
            timed_out(None)
        except EngineError as exc:
            found = reachability._Checks._failed(item, exc, 5.1)
        assert not found.ok and found.detail == "no answer within 5s" and found.exit_code == 4
        assert "step" not in found.hint and ("cmd: command" in found.hint) is suspect
