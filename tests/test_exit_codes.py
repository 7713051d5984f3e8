"""The README's exit-code table, row by row, through the installed `crmmaint` as a subprocess.

A command that acts on one target (a backup of one source, verify, prune, restore) exits with
the documented code of its failure; `run` keeps 0/1/2/3, and the journal (`show --json`) carries
each failed target's error class and code.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from clirun import BIN, run_cli, run_here
from estates import sqlite_estate

from crmmaint.repository.backends.local import LocalBackend
from crmmaint.repository.lock import RepositoryLock


def cli(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    done = run_cli(*args, cwd=cwd)
    return done.returncode, done.stdout, done.stderr


def one_line(err: str) -> str:
    """The one error line a failure prints, and no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("crmmaint: error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.fixture
def estate(tmp_path: Path) -> Path:
    """A local SQLite CRM and a file set, a repository and its keys: backed up once."""
    sqlite_estate(tmp_path, customers=500)
    assert (
        run_here("keys", "generate", "--output", str(tmp_path / "keys" / "ops.key")).returncode == 0
    )
    assert run_here("repo", "init", "-i", str(tmp_path / "inventory.yml")).returncode == 0
    assert cli("backup", "-i", str(tmp_path / "inventory.yml"))[0] == 0
    return tmp_path


def edit_inventory(estate: Path, change) -> str:
    path = estate / "inventory.yml"
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def last_failure(inv: str) -> dict:
    code, out, err = cli("show", "-i", inv, "--json")
    assert code == 0, err
    failed = [r for r in json.loads(out)["results"] if r["status"] == "failed"]
    assert failed, out
    return failed[0]["details"]


def test_0_1_2_run_and_one_step_commands(estate):
    inv = str(estate / "inventory.yml")
    assert cli("backup", "-i", inv)[0] == 0
    assert cli("verify", "-i", inv)[0] == 0
    # 1: warnings (a file set that comes out empty)
    (estate / "files" / "a.txt").unlink()
    code, out, err = cli("backup", "--fileset", "files", "-i", inv)
    assert code == 1, out + err
    # 2: `run` with a failed target keeps 2 whatever the failure's class
    book = estate / "book.yml"
    book.write_text(
        yaml.safe_dump(
            {"name": "b", "steps": [{"name": "v", "task": "backup.verify", "repository": "main"}]}
        )
    )
    (estate / "repo" / "config").unlink()
    code, out, err = cli("run", str(book), "-i", inv)
    assert code == 2, out + err
    assert last_failure(inv)["exit_code"] == 6
    # a command's failures sharing one code exit with it: every source into a missing repository
    code, out, err = cli("backup", "--json", "-i", inv)
    failed = [r for r in json.loads(out)["results"] if r["status"] == "failed"]
    assert code == 6 and len(failed) > 1, out + err


def test_3_configuration_and_arguments(estate, tmp_path):
    inv = str(estate / "inventory.yml")
    for args, says in (
        (["run"], "crmmaint run needs PLAYBOOK"),
        (["restore"], "crmmaint restore needs BACKUP_ID"),
        (["restore", "database:crm@latest"], "restore needs --to"),
        (["backup", "--nope", "-i", inv], "unknown flag '--nope'"),
        (["nope"], "unknown command 'nope'"),
        (["history", "--limit"], "--limit needs a value"),
        (["run", "nope.yml", "-i", inv], "nope.yml"),
    ):
        code, out, err = cli(*args, cwd=tmp_path)
        assert code == 3, (args, out, err)
        assert says in one_line(err), (args, err)
    # A policy prune refuses is refused before anything runs: no journaled run (exit 3
    # means nothing ran), one line naming the flag.
    for args, says in (
        (["--keep-daily", "-3"], "--keep-daily takes a whole number from 0"),
        (["--keep-daily", "0"], "set no rule above 0"),
        (["--keep-within", "40000d"], "up to 100 years"),
        ([], "no retention policy for repository 'main'"),
    ):
        code, out, err = cli("prune", *args, "-i", inv)
        assert code == 3 and out == "" and says in one_line(err), (args, out, err)
    code, out, _ = cli("history", "--json", "-i", inv)
    assert [r["playbook"] for r in json.loads(out)] == ["backup"], out


def test_4_unknown_host_key_and_refused_connection(estate, sshd_host):
    def remote(doc, **host):
        doc["hosts"]["far"] = {
            "address": sshd_host.address,
            "port": sshd_host.port,
            "user": sshd_host.user,
            "identity_file": str(sshd_host.identity_file),
            "connect_timeout": 3,
            **host,
        }
        doc["filesets"]["remote"] = {"host": "far", "paths": ["/etc/hostname"]}

    empty = estate / "known_hosts"
    empty.write_text("")
    inv = edit_inventory(estate, lambda doc: remote(doc, known_hosts=str(empty)))
    code, out, err = cli("backup", "--fileset", "remote", "-i", inv)
    assert code == 4, out + err
    assert last_failure(inv)["error"] == "HostKeyError"

    inv = edit_inventory(
        estate, lambda doc: remote(doc, known_hosts=str(sshd_host.known_hosts), port=1)
    )
    code, out, err = cli("backup", "--fileset", "remote", "-i", inv)
    assert code == 4, out + err


def test_5_wrong_database_password(estate):
    user = f"crmexit_{os.getpid()}"
    mariadb = ["mariadb", "--protocol=TCP", "-h", "127.0.0.1", "-uroot"]
    subprocess.run(
        [*mariadb, "-e", f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY 'right'"],
        check=True,
    )
    try:
        (estate / "pw").write_text("Xq9-not-it\n")
        (estate / "pw").chmod(0o600)
        inv = edit_inventory(
            estate,
            lambda doc: doc["databases"].update(
                {
                    "my": {
                        "engine": "mysql",
                        "host": "local",
                        "address": "127.0.0.1",
                        "user": user,
                        "password": f"file:{estate / 'pw'}",
                        "name": "mysql",
                    }
                }
            ),
        )
        code, out, err = cli("backup", "--database", "my", "-i", inv)
        assert code == 5, out + err
        assert "Xq9-not-it" not in out + err
        assert last_failure(inv)["exit_code"] == 5
    finally:
        subprocess.run([*mariadb, "-e", f"DROP USER IF EXISTS '{user}'@'%'"], check=False)


def test_6_repository_missing_and_restore_target(estate):
    inv = str(estate / "inventory.yml")
    code, out, err = cli(
        "restore", "database:crm@latest", "--to", str(estate / "crm.sqlite"), "-i", inv
    )
    assert code == 6 and "source" in one_line(err), err  # over the source database
    assert (
        cli("restore", "database:crm@latest", "--to", str(estate / "x.sqlite"), "-i", inv)[0] == 0
    )
    code, _, err = cli(
        "restore", "database:crm@latest", "--to", str(estate / "x.sqlite"), "-i", inv
    )
    assert code == 6 and "exists" in one_line(err)
    # --force replaces a SQLite file, never what is not one (a FIFO, a directory, a link):
    # a device such as /dev/full became a regular file.
    os.mkfifo(estate / "fifo")
    (estate / "dir").mkdir()
    (estate / "link").symlink_to(estate / "x.sqlite")
    for name in ("fifo", "dir", "link"):
        target = estate / name
        code, _, err = cli("restore", "database:crm@latest", "--to", str(target), "--force",
                           "-i", inv)  # fmt: skip
        assert code == 6 and "is not a regular file" in one_line(err), (name, err)
    assert (estate / "fifo").is_fifo() and (estate / "dir").is_dir()
    assert (estate / "link").is_symlink()
    # A directory that cannot be made: under /proc, under a regular file.
    (estate / "plain").write_text("x")
    for target in ("/proc/crmmaint-restore-test", str(estate / "plain" / "sub" / "dir")):
        code, out, err = cli("restore", "fileset:files@latest", "--to", target, "-i", inv)
        assert code == 6 and "cannot be made" in one_line(err), (target, out, err)

    moved = estate / "elsewhere"
    (estate / "repo").rename(moved)
    for args in (
        ["backup", "--database", "crm"],
        ["backup", "--database", "crm", "--check"],  # a check that would pass is no check
        ["verify"],
        ["prune", "--check", "--keep-last", "1"],
    ):
        code, out, err = cli(*args, "-i", inv)
        assert code == 6, (args, out, err)
    # A playbook step that allows retries makes one attempt: a missing repository is found
    # missing again (it was retried for the step's whole retry budget).
    book = estate / "book.yml"
    step = {"name": "b", "task": "backup.database", "database": "crm", "retries": 3,
            "retry_delay": "10m"}  # fmt: skip
    book.write_text(yaml.safe_dump({"name": "b", "steps": [step]}))
    code, out, err = cli("run", str(book), "-i", inv)
    assert code == 2 and "retrying" not in out + err, out + err
    failed = last_failure(inv)
    assert failed["exit_code"] == 6, failed


def test_7_lock_held(estate):
    inv = edit_inventory(estate, lambda doc: doc["repositories"]["main"].update(lock_wait="2s"))
    held = RepositoryLock(LocalBackend(estate / "repo"), exclusive=True, owner="prune elsewhere")
    held.acquire()
    try:
        started = time.monotonic()
        code, out, err = cli("backup", "--database", "crm", "-i", inv)
        assert code == 7, out + err
        assert time.monotonic() - started < 30
        assert "prune elsewhere" in out + err
    finally:
        held.release()


def test_8_keys(estate):
    inv = str(estate / "inventory.yml")
    writer = edit_inventory(estate, lambda doc: doc["repositories"]["main"].pop("identity"))
    code, _, err = cli(
        "restore", "database:crm@latest", "--to", str(estate / "w.sqlite"), "-i", writer
    )
    assert code == 8 and "identity" in one_line(err), err
    assert not (estate / "w.sqlite").exists()
    (estate / "keys" / "write.key").chmod(0o644)
    code, out, err = cli("backup", "--database", "crm", "-i", inv)
    assert code == 8 and "chmod 600" in out + err, out + err


def test_9_damaged_data(estate):
    inv = str(estate / "inventory.yml")
    pack = next(p for p in sorted((estate / "repo" / "data").rglob("*")) if p.is_file())
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    code, out, err = cli("verify", "--read-data", "-i", inv)
    assert code == 9 and pack.name in out, out + err
    # The damaged pack holds the database's chunks or the file set's: restore both.
    done = [
        cli("restore", "database:crm@latest", "--to", str(estate / "d.sqlite"), "-i", inv),
        cli("restore", "fileset:files@latest", "--to", str(estate / "d"), "-i", inv),
    ]
    failed = [(code, err) for code, _, err in done if code != 0]
    assert len(failed) == 1, done
    code, err = failed[0]
    assert code == 9 and pack.name in one_line(err)


def test_130_interrupted_run_is_journaled(estate):
    inv = str(estate / "inventory.yml")
    token = f"{30 + secrets.randbelow(30)}.{secrets.randbelow(10**6):06d}"
    book = estate / "slow.yml"
    book.write_text(
        yaml.safe_dump(
            {
                "name": "slow",
                "steps": [
                    {
                        "name": "wait",
                        "task": "shell.command",
                        "hosts": "local",
                        "with": {"commands": [f"sleep {token}"]},
                    }
                ],
            }
        )
    )
    proc = subprocess.Popen(
        [str(BIN / "crmmaint"), "run", str(book), "-i", inv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60  # under load, starting can take more than a few seconds
    while not subprocess.run(["pgrep", "-f", f"sleep {token}"], capture_output=True).stdout:
        assert time.monotonic() < deadline and proc.poll() is None, "the step never started"
        time.sleep(0.1)
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "interrupted" in err and "Traceback" not in err
    _, out, _ = cli("show", "-i", inv, "--json")
    run = json.loads(out)
    assert run["status"] == "interrupted", run
    (row,) = run["results"]
    assert row["step"] == "wait" and row["status"] == "failed" and "interrupted" in row["message"]
