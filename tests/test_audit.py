"""The audit trail (crmmaint/audit.py, the journal's ``audit`` table, ``crmmaint audit``): each
kind of change listed with its user and outcome, dry runs left out, secrets redacted, ``--since``,
the append-only hash chain and ``--verify``.

One SQLite estate (``estates.sqlite_estate``) takes every kind of change once, as a subprocess
(module fixture); the tests read what it recorded."""

from __future__ import annotations

import getpass
import json
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from clirun import run_cli
from estates import sqlite_estate

from crmmaint.audit import (
    NO_END,
    REDACTED,
    AuditTrail,
    audit_entries,
    record_override,
    redact_argv,
    redact_flags,
)
from crmmaint.inventory import Host, Inventory
from crmmaint.journal import Journal

SECRET = "hunter2"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    # Without the debug switch an in-process `--debug` of another test file in this worker
    # left in os.environ (its log lines show the tracebacks the estate asserts away).
    with pytest.MonkeyPatch.context() as env:
        env.delenv("CRMMAINT_DEBUG", raising=False)
        return run_cli(*args)


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An estate after every kind of change, and the exit codes they gave."""
    from crmmaint.baselines import review

    root = sqlite_estate(tmp_path_factory.mktemp("audit"), customers=50)
    inv = str(root / "inventory.yml")
    (root / "book.yml").write_text(
        "name: hosts\nwindow: daily\nsteps:\n  - name: health\n    task: shell.command\n"
        "    with: {commands: ['true']}\n"
        "    hosts: all\n"
    )
    codes: dict[str, int] = {}

    def step(name: str, *args: str) -> None:
        done = cli(*args, "-i", inv)
        codes[name] = done.returncode
        assert "Traceback" not in done.stderr, done.stderr

    step("keys generate", "keys", "generate", "--output", str(root / "keys" / "ops.key"))
    step("repo init", "repo", "init")
    step("backup", "backup")
    step("backup --check", "backup", "--check")  # a dry run: not recorded
    step("run", "run", str(root / "book.yml"))
    target = str(root / "restored.sqlite")
    step("restore", "restore", "database:crm@latest", "--to", target)
    step("restore again", "restore", "database:crm@latest", "--to", target)  # exists: fails
    step("prune", "prune", "--keep-last", "1")
    step("drill", "drill", "database:crm")
    with Journal(root / "journal.sqlite") as journal:
        inventory = Inventory(path=inv)
        inventory.hosts["local"] = Host(name="local", connection="local")
        found = {"files": {"/etc/a": {"sha256": "1"}}}
        review(journal, "drift", inventory.target("hosts", "local"), found, run_id=1, check=False)
    step("baseline accept", "baseline", "accept", "drift")
    step("repo unlock", "repo", "unlock")
    step("repo repair", "repo", "repair")  # without --apply: a dry run
    # hostile words: read after the inventory, refused (exit 3), recorded with secrets masked
    step(
        "hostile run",
        "run", f"https://bob:{SECRET}@example.com/book.yml",
        "--tags", f"PGPASSWORD={SECRET}",
        "--limit", f"postgresql://bob:{SECRET}@db/crm?sslmode=require&password={SECRET}",
    )  # fmt: skip
    listed = cli("audit", "--json", "-i", inv)
    assert listed.returncode == 0, listed.stderr
    return {"root": root, "inv": inv, "codes": codes, "entries": json.loads(listed.stdout)}


def by_command(entries: list[dict[str, Any]], command: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["command"] == command]


def test_the_estate_did_what_it_was_told(estate):
    codes = estate["codes"]
    assert codes["restore again"] == 6 and codes["hostile run"] == 3
    assert {k: v for k, v in codes.items() if k not in ("restore again", "hostile run")} == {
        k: 0 for k in codes if k not in ("restore again", "hostile run")
    }


def test_audit_lists_each_kind_of_change_with_its_user(estate):
    entries = estate["entries"]
    me = getpass.getuser()
    commands = [e["command"] for e in entries]
    assert commands == [
        "keys generate",
        "repo init",
        "backup",
        "run",
        "restore",
        "restore",
        "prune",
        "drill",
        "baseline accept",
        "repo unlock",
        "run",
    ]  # fmt: skip  (oldest first; no dry run: `backup --check`, `repo repair` are left out)
    for entry in entries:
        assert entry["user"] == me and entry["machine"] == socket.gethostname(), entry
        assert entry["kind"] == "command" and entry["ended"] >= entry["at"]
    outcomes = [(e["command"], e["outcome"], e["exit_code"]) for e in entries]
    assert outcomes[:5] == [
        ("keys generate", "ok", 0), ("repo init", "ok", 0), ("backup", "ok", 0),
        ("run", "ok", 0), ("restore", "ok", 0),
    ]  # fmt: skip
    assert outcomes[5] == ("restore", "failed", 6)  # the target exists, no --force
    assert outcomes[6:10] == [
        ("prune", "ok", 0), ("drill", "ok", 0), ("baseline accept", "ok", 0),
        ("repo unlock", "ok", 0),
    ]  # fmt: skip
    assert outcomes[10] == ("run", "refused", 3)


def test_entries_say_which_targets_flags_and_run(estate):
    entries = estate["entries"]
    root = estate["root"]
    (keys,) = by_command(entries, "keys generate")
    assert keys["targets"] == [str(root / "keys" / "ops.key")]
    assert keys["flags"]["output"] == str(root / "keys" / "ops.key")
    (init,) = by_command(entries, "repo init")
    assert init["targets"] == ["repository:main"]
    (backup,) = by_command(entries, "backup")
    assert backup["run_id"] and {"crm@local", "files@local"} <= set(backup["targets"])
    assert backup["flags"] == {"inventory": estate["inv"]}
    (prune,) = by_command(entries, "prune")
    assert prune["flags"]["keep_last"] == "1" and prune["run_id"] > backup["run_id"]
    (accept,) = by_command(entries, "baseline accept")
    assert accept["targets"] == ["hosts/local"] and accept["flags"]["kind"] == "drift"
    run = by_command(entries, "run")[0]
    assert run["flags"]["playbook"] == str(root / "book.yml") and run["run_id"]
    assert run["argv"][1:3] == ["run", str(root / "book.yml")]


def test_secrets_never_reach_the_trail(estate):
    hostile = by_command(estate["entries"], "run")[-1]
    assert hostile["argv"][2] == f"https://bob:{REDACTED}@example.com/book.yml"
    assert hostile["flags"]["tags"] == f"PGPASSWORD={REDACTED}"
    assert hostile["flags"]["limit"] == (
        f"postgresql://bob:{REDACTED}@db/crm?sslmode=require&password={REDACTED}"
    )
    db = sqlite3.connect(estate["root"] / "journal.sqlite")
    rows = db.execute("SELECT * FROM audit").fetchall()
    db.close()
    assert rows and SECRET not in json.dumps(rows)


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["--password", SECRET, "x"], ["--password", REDACTED, "x"]),
        ([f"--db-password={SECRET}"], [f"--db-password={REDACTED}"]),
        (["--token", SECRET], ["--token", REDACTED]),
        ([f"--api-key={SECRET}"], [f"--api-key={REDACTED}"]),
        (
            [f"s3://AKIAEXAMPLE:{SECRET}@s3.example.com/b"],
            [f"s3://AKIAEXAMPLE:{REDACTED}@s3.example.com/b"],
        ),
        ([f"PGPASSWORD={SECRET}"], [f"PGPASSWORD={REDACTED}"]),
        ([f"host=db user=bob password={SECRET}"], [f"host=db user=bob password={REDACTED}"]),
        # the rest of a word after a secret pair goes too (masking too much is the safe side)
        ([f"https://x/y?a=1&token={SECRET}&b=2"], [f"https://x/y?a=1&token={REDACTED}"]),
        ([f"CRMMAINT-SECRET-KEY-1{SECRET.upper()}"], [REDACTED]),
        ([f"AWS_SECRET_ACCESS_KEY={SECRET}"], [f"AWS_SECRET_ACCESS_KEY={REDACTED}"]),
        (["--password"], ["--password"]),  # a flag left without its value
    ],
)
def test_redaction_of_hostile_argv(argv, shown):
    assert redact_argv(argv) == shown


def test_redaction_leaves_what_is_not_secret():
    argv = ["crmmaint", "prune", "--keep-within", "2d", "--identity", "keys/ops.key",
            "--override", "hotfix 4711", "--limit", "web1,db1", "https://example.com/a"]  # fmt: skip
    assert redact_argv(argv) == argv
    flags = {"password": SECRET, "check": False, "source": ["database:crm", f"x:{SECRET}@"]}
    assert redact_flags(flags) == {"password": REDACTED, "check": False,
                                   "source": ["database:crm", f"x:{SECRET}@"]}  # fmt: skip


def test_the_table_names_user_command_and_outcome(estate):
    done = cli("audit", "-i", estate["inv"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split("\t") == ["when", "user", "command", "targets", "flags", "outcome"]
    restore_failed = [line for line in lines if "\trestore\t" in line][1]
    assert restore_failed.split("\t")[1] == getpass.getuser()
    assert restore_failed.split("\t")[-1].startswith("failed (6), run ")
    assert SECRET not in done.stdout


def test_since_filters_and_a_killed_command_shows_no_end(estate, tmp_path):
    journal_path = tmp_path / "journal.sqlite"
    dead = subprocess.run(["true"], check=True)
    assert dead.returncode == 0
    with Journal(journal_path) as journal:
        old = time.time() - 40 * 86400
        journal.record_audit(phase="start", at=old, command="backup", user="old", outcome="started")
        journal.record_audit(
            phase="start", command="backup", user="me", outcome="started",
            process={"machine": socket.gethostname(), "pid": 2**22 + 12345},
        )  # fmt: skip
    inv = tmp_path / "inventory.yml"
    inv.write_text("settings:\n  journal: journal.sqlite\nhosts:\n  local: {connection: local}\n")
    every = json.loads(cli("audit", "--json", "-i", str(inv)).stdout)
    assert [e["user"] for e in every] == ["old", "me"]
    recent = json.loads(cli("audit", "--since", "30d", "--json", "-i", str(inv)).stdout)
    assert [e["user"] for e in recent] == ["me"] and recent[0]["outcome"] == NO_END
    bad = cli("audit", "--since", "soon", "-i", str(inv))
    assert bad.returncode == 3 and "--since" in bad.stderr


def test_rows_are_never_rewritten_and_verify_finds_a_change(estate, tmp_path):
    import shutil

    root = estate["root"]
    copy = tmp_path / "journal.sqlite"
    shutil.copy(root / "journal.sqlite", copy)
    with Journal(copy) as journal:
        before = journal.audit_rows()
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            journal._db.execute("UPDATE audit SET user = 'mallory'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            journal._db.execute("DELETE FROM audit")
        assert journal.verify_audit() == []
    # another command appends; what was there stays as it was
    inv = tmp_path / "inventory.yml"
    inv.write_text("settings:\n  journal: journal.sqlite\nhosts:\n  local: {connection: local}\n")
    assert cli("repo", "init", "-i", str(inv)).returncode != 0  # no repository: refused
    with Journal(copy) as journal:
        after = journal.audit_rows()
    assert after[: len(before)] == before and len(after) > len(before)
    verified = cli("audit", "--verify", "-i", str(inv))
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stderr
    # someone with the file rewrites a row behind the triggers' back
    db = sqlite3.connect(copy)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET user = 'mallory' WHERE id = 3")
    db.commit()
    db.close()
    broken = cli("audit", "--verify", "-i", str(inv))
    assert broken.returncode == 9 and "audit row 3: its content was changed" in broken.stdout
    source = (Path(__file__).parent.parent / "crmmaint" / "journal.py").read_text().lower()
    assert "update audit" not in source and "delete from audit" not in source


def test_an_override_is_recorded_with_who_and_why(tmp_path):
    with Journal(tmp_path / "journal.sqlite") as journal:
        record_override(
            journal, reason=f"hotfix 4711 password={SECRET}", blackout="quarter-end",
            argv=["crmmaint", "run", "daily", "--override", "hotfix 4711"],
        )  # fmt: skip
        (entry,) = audit_entries(journal)
    assert entry["command"] == "override" and entry["kind"] == "event"
    assert entry["user"] == getpass.getuser() and entry["outcome"] == "ok"
    assert "quarter-end" in entry["detail"] and "hotfix 4711" in entry["detail"]
    assert SECRET not in json.dumps(entry)


def test_remote_users_are_the_ssh_users_of_the_hosts_reached():
    inv = Inventory(path="/nonexistent/inventory.yml")
    inv.hosts["db1"] = Host(name="db1", user="crmops")
    inv.hosts["web1"] = Host(name="web1")
    inv.hosts["here"] = Host(name="here", connection="local")
    trail = AuditTrail("run", ["crmmaint", "run", "daily"], {})
    trail.inventory = inv
    for host in ("db1", "web1", "here", None):
        trail._remote_user(host)
    assert trail.remote_users == {"db1": "crmops", "web1": "(ssh default)"}
