"""permissions.review end to end, as users run it (``crmmaint run`` and ``crmmaint baseline
accept`` as subprocesses): PostgreSQL, MariaDB and an sshd host reviewed, accepted, changed
(a superuser role, a grant to PUBLIC, an any-host account without a password, an appended
SSH key) and accepted again; check mode records nothing. Plus the findings (pure).

Roles and accounts are server-wide, and other test files make and drop their own meanwhile:
the database assertions look at this test's own names; the host's keys are this test's
alone (an ``authorized_keys`` pattern under tmp_path), so its results are asserted whole."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import yaml
from clirun import run_cli
from sshd_fixture import write_ed25519_key
from test_permissions_databases import mariadb, psql

from crmmaint.tasks.permissions import host_findings, mysql_findings, postgresql_findings


def test_findings_name_what_deserves_a_look() -> None:
    roles = {
        "roles": {
            "admin": {"superuser": True, "login": True, "password": "set", "valid_until": None},
            "app": {"login": True, "password": "set", "valid_until": "2030-01-01T00:00:00Z"},
            "etl": {
                "login": True,
                "password": "none",
                "createdb": True,
                "bypassrls": True,
                "member_of": ["pg_read_all_data", "reporting"],
            },
            "group": {"login": False, "password": "none", "createrole": True},
        },
        "public_grants": {"public.deals": {"privileges": ["SELECT"]}},
    }
    assert postgresql_findings(roles) == [
        ("superuser", ["admin"]),
        ("can create roles", ["group"]),
        ("can create databases", ["etl"]),
        ("bypass row-level security", ["etl"]),
        ("login without a password", ["etl"]),
        ("password never expires", ["admin"]),
        ("powerful built-in roles", ["etl (pg_read_all_data)"]),
        ("PUBLIC grants on", ["public.deals"]),
    ]
    accounts = {
        "accounts": {
            "'root'@'localhost'": {"global_privileges": ["ALL"], "password": "none",
                                   "auth": "unix_socket"},
            "'app'@'%'": {"global_privileges": [], "any_host": True, "password": "none",
                          "auth": "mysql_native_password"},
            "'r'@''": {"role": True, "password": "none"},
            "'old'@'%'": {"any_host": True, "password": "none", "locked": True},
        }
    }  # fmt: skip
    assert mysql_findings(accounts) == [
        ("global privileges", ["'root'@'localhost'"]),
        ("any host", ["'app'@'%'", "'old'@'%'"]),
        ("no password", ["'app'@'%'"]),
    ]
    keys = {
        "keys": {
            "root SHA256:a": {"account": "root"},
            "root SHA256:b": {"account": "root"},
            "deploy SHA256:c": {"account": "deploy"},
        },
        "sudo": {"deploy": {"via": ["group sudo"]}},
    }
    assert host_findings(keys) == [
        ("SSH keys", ["deploy", "root (2)"]),
        ("can become root", ["deploy"]),
    ]


def _run(inv: Path, book: Path, *flags: str) -> tuple[int, dict[str, dict[str, Any]]]:
    done = run_cli("run", str(book), "-i", str(inv), "--json", *flags)
    assert "Traceback" not in done.stderr, done.stderr
    doc = json.loads(done.stdout)
    return done.returncode, {r["target"].split("@")[0]: r for r in doc["results"]}


def _changes(result: dict[str, Any], mine: str) -> list[tuple[str, str, str]]:
    """This test's changes in a result: (section, key, change) of items naming ``mine``, and
    of the sections about its own database alone (grants in and on it)."""
    own = {"public_grants", "schema_grants", "database_grants"}
    return [
        (c["section"], c["key"], c["change"])
        for c in result["details"]["changes"]
        if mine in c["key"] or c["section"] in own
    ]


def test_review_accept_change_accept(sshd_hosts: list[Any], tmp_path: Path) -> None:
    sshd = sshd_hosts[4]
    mine = secrets.token_hex(4)
    dbname = f"perm_{mine}"
    role, account = f"boss_{mine}", f"app_{mine}"
    psql("postgres", f"CREATE DATABASE {dbname}")
    psql(dbname, "CREATE TABLE deals (id int)")
    mariadb(f"CREATE DATABASE {dbname}")
    keys = tmp_path / "keys"
    keys.mkdir()
    first = write_ed25519_key(tmp_path / "first")
    (keys / "root").write_text(f"{first} ops@first\n")
    inv = tmp_path / "inventory.yml"
    inv.write_text(
        yaml.safe_dump(
            {
                "settings": {"journal": "journal.sqlite"},
                "hosts": {
                    "db": {"connection": "local"},
                    "app1": {
                        "address": sshd.address,
                        "port": sshd.port,
                        "user": sshd.user,
                        "identity_file": str(sshd.identity_file),
                        "known_hosts": str(sshd.known_hosts),
                    },
                },
                "databases": {
                    "crm": {
                        "engine": "postgresql",
                        "host": "db",
                        "name": dbname,
                        "address": "127.0.0.1",
                        "port": 5432,
                        "user": "postgres",
                    },
                    "shop": {
                        "engine": "mysql",
                        "host": "db",
                        "name": dbname,
                        "address": "127.0.0.1",
                        "port": 3306,
                        "user": "root",
                    },
                },
            }
        )
    )
    book = tmp_path / "review.yml"
    book.write_text(
        yaml.safe_dump(
            {
                "name": "review",
                "steps": [
                    {
                        "name": "permissions reviewed",
                        "task": "permissions.review",
                        "database": "all",
                        "hosts": "app1",
                        "with": {"authorized_keys": [str(keys / "%u")]},
                    }
                ],
            }
        )
    )
    try:
        # 1. no baseline yet: every target warns and says how to accept
        code, results = _run(inv, book)
        assert code == 1 and set(results) == {"crm", "shop", "app1"}
        for result in results.values():
            assert result["status"] == "warning", result["message"]
            assert "no accepted baseline yet" in result["message"]
        assert "SSH keys: root" in results["app1"]["message"]
        assert "superuser: postgres" in results["crm"]["message"]

        accepted = run_cli("baseline", "accept", "permissions", "-i", str(inv))
        assert accepted.returncode == 0, accepted.stderr
        assert accepted.stdout.count("first baseline") == 3

        # 2. as accepted
        code, results = _run(inv, book)
        assert results["app1"]["status"] == "ok", results["app1"]["message"]
        assert "as in the baseline accepted" in results["app1"]["message"]
        for name in ("crm", "shop"):  # other tests' roles may come and go meanwhile
            assert _changes(results[name], mine) == []
            assert (results[name]["status"] == "ok") == (not results[name]["details"]["changes"])

        # 3. changes: a superuser, a grant to PUBLIC, an open account, one more key
        psql("postgres", f"CREATE ROLE {role} SUPERUSER")
        psql(dbname, "GRANT SELECT ON deals TO PUBLIC")
        mariadb(f"CREATE USER '{account}'@'%'")
        second = write_ed25519_key(tmp_path / "second")
        with (keys / "root").open("a") as fh:
            fh.write(f'no-pty,environment="TOKEN=s3cret" {second} intruder@laptop\n')

        code, checked = _run(inv, book, "--check")
        assert code == 1
        assert _changes(checked["crm"], mine) == [
            ("public_grants", "public.deals", "added"),
            ("roles", role, "added"),
        ]
        assert _changes(checked["shop"], mine) == [("accounts", f"'{account}'@'%'", "added")]
        # check mode recorded nothing: accepting now would accept the review of step 2
        preview = run_cli("baseline", "accept", "permissions", "--check", "--json", "-i", str(inv))
        for target in json.loads(preview.stdout):
            assert all(mine not in c["key"] for c in target["changes"])
            if target["target"] == "hosts/app1":
                assert target["changes"] == []

        code, results = _run(inv, book)
        assert code == 1
        host = results["app1"]
        assert host["status"] == "warning" and "1 change since the baseline" in host["message"]
        assert "SSH keys: root (2)" in host["message"]
        assert "key root SHA256:" in host["message"] and " added" in host["message"]
        [added] = host["details"]["changes"]
        assert added["after"]["comment"] == "intruder@laptop"
        assert added["after"]["options"] == ["no-pty", 'environment="TOKEN=***"']
        assert "s3cret" not in json.dumps(results)
        assert "superuser: " in results["crm"]["message"] and role in json.dumps(results["crm"])
        assert ("roles", role, "added") in _changes(results["crm"], mine)
        assert "public.deals" in results["crm"]["message"]  # the PUBLIC grant is named
        assert f"'{account}'@'%'" in results["shop"]["details"]["findings"]["any host"]
        assert f"'{account}'@'%'" in results["shop"]["details"]["findings"]["no password"]

        # 4. accepted for app1 only: app1 is clean, the databases still warn about this test
        only = run_cli("baseline", "accept", "permissions", "--host", "app1", "-i", str(inv))
        assert (
            only.returncode == 0 and "accepted permissions of hosts/app1: 1 change" in only.stdout
        )
        code, results = _run(inv, book)
        assert results["app1"]["status"] == "ok"
        assert ("roles", role, "added") in _changes(results["crm"], mine)
        assert run_cli("baseline", "accept", "permissions", "-i", str(inv)).returncode == 0
        code, results = _run(inv, book)
        for name in ("crm", "shop"):
            assert _changes(results[name], mine) == []
        shown = json.loads(
            run_cli("baseline", "show", "permissions", "--json", "-i", str(inv)).stdout
        )
        assert {row["target"] for row in shown} == {"database/crm", "database/shop", "hosts/app1"}
        journal = (tmp_path / "journal.sqlite").read_bytes()
        journal += (
            (tmp_path / "journal.sqlite-wal").read_bytes()
            if (tmp_path / "journal.sqlite-wal").exists()
            else b""
        )
        assert b"s3cret" not in journal
    finally:
        psql("postgres", f"DROP DATABASE IF EXISTS {dbname}; DROP ROLE IF EXISTS {role}")
        mariadb(f"DROP DATABASE IF EXISTS {dbname}; DROP USER IF EXISTS '{account}'@'%'")
