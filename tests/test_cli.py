"""The CLI in-process (``main``) and as a subprocess (the installed ``crmmaint`` and ``invoke``),
exit codes included: 0 ok, 1 warnings, 2 failures, 3 configuration, 6 restore target, 8 keys,
9 integrity."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from clirun import run_here
from estates import sqlite_estate
from hypothesis import given
from hypothesis import strategies as st

from crmmaint.cli import MAX_COUNT, main, normalize_argv
from crmmaint.errors import ConfigError
from crmmaint.transport.base import COLLECT_STDOUT_LIMIT

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def setup_cli(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """A test's setup step (``keys generate``, ``repo init``) in this process (``run_here``)."""
    done = run_here(*args, cwd=cwd)
    return done.returncode, done.stdout, done.stderr


def cli(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """Run the installed ``crmmaint`` as a subprocess."""
    proc = subprocess.run(
        [str(BIN / "crmmaint"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    return proc.returncode, proc.stdout, proc.stderr


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(["crmmaint", *args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def estate(tmp_path: Path) -> Path:
    """A local estate: a small SQLite CRM, a file set, a repository with a generated key."""
    return sqlite_estate(tmp_path, customers=2000, deals=5000)


def test_argv_normaliser():
    assert normalize_argv(["crmmaint", "playbook", "check", "a.yml", "b.yml"]) == [
        "crmmaint",
        "playbook.check",
        "--file",
        "a.yml",
        "--file",
        "b.yml",
    ]
    assert normalize_argv(["crmmaint", "show"]) == ["crmmaint", "show", "last"]
    assert normalize_argv(["crmmaint", "show", "-i", "x.yml"]) == [
        "crmmaint",
        "show",
        "-i",
        "x.yml",
        "last",
    ]
    assert normalize_argv(["crmmaint", "show", "7"]) == ["crmmaint", "show", "7"]
    assert normalize_argv(["crmmaint", "keys", "generate", "--output", "k"])[1] == "keys.generate"
    # ``-i`` is every command's flag: before the command it moves behind it.
    assert normalize_argv(["crmmaint", "-i", "x.yml", "history"]) == [
        "crmmaint",
        "history",
        "-i",
        "x.yml",
    ]
    assert normalize_argv(["crmmaint", "--inventory=x.yml", "backups", "list", "--json"]) == [
        "crmmaint",
        "backups.list",
        "--inventory=x.yml",
        "--json",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["history", "--limit", "1", "--limit", "2"],
        ["history", "--limit=1", "--limit", "2"],
        ["backup", "--database", "a", "--database=b"],
        ["restore", "x", "--to", "a", "--to", "b"],
        ["history", "-i", "a.yml", "--inventory", "b.yml"],
        ["-i", "a.yml", "history", "-i", "b.yml"],
    ],
)
def test_a_flag_given_twice_is_refused(argv, tmp_path):
    """Which of two values was meant cannot be guessed (invoke read the second value as a
    command): exit 3, one line naming the flag, nothing run."""
    code, out, err = cli(*argv, cwd=tmp_path)
    assert code == 3 and out == "" and err.count("\n") == 1, (argv, out, err)
    assert "given twice" in err and "--" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, says",
    [
        (["history", "--limit", "9" * 20], "--limit takes a whole number from 1 to 1000000000"),
        (["history", "--limit", "-5"], "--limit takes a whole number"),
        (["history", "--limit=0"], "--limit takes a whole number"),
        (["show", "9" * 20], "run id must be a whole number from 1"),
        (["show", "0"], "run id must be a whole number from 1"),
        (["show", "-1"], "'-1' is not a flag of `crmmaint show`"),
        (["run", "daily", "--forks", "0"], "--forks takes a whole number"),
        (["restore", "x", "--to", "y", "--jobs", "9" * 12], "--jobs takes a whole number"),
        (["demo", "--rows", "1e6"], "--rows takes a whole number"),
        (["prune", "--keep-daily", "-1"], "--keep-daily takes a whole number from 0"),
        (["prune", "--keep-last=" + "9" * 30], "--keep-last takes a whole number from 0"),
        (["backup", "--repository", ""], "--repository is given an empty value"),
        (["backup", "--database=", "--check"], "--database is given an empty value"),
        (["run", "daily", "--tags", " "], "--tags is given an empty value"),
        (["keys", "generate", "a.key", "b.key"], "unexpected argument 'b.key'"),
        (["keys", "generate", "--output", "a.key", "b.key"], "FILE is given twice"),
        (["backup", "--fileset", "files", "--", "--check"], "no words after '--'"),
        (["prune", "--", "--keep-last", "1"], "no words after '--'"),
        (["--prompt-for-sudo-password", "history"], "unknown option"),
        (["-e", "history"], "unknown option '-e'"),
        (["history", "-l"], "unknown flag '-l'"),
        (["prune", "-d"], "unknown flag '-d'"),
        (["history", "--json=yes"], "--json takes no value"),
        (["keys", "show", "ops.pub"], "is a public key file"),
        (["prune", "--keep-within", "3"], "--keep-within '3' has no unit"),
        (["history", "extra"], "unexpected argument 'extra'"),
        (["verify", "--read-data", "--read-data-subset", "10%"], "give one"),
        (["restore", "x", "--to", "y", "--timeout", "1ms"], "--timeout '1ms' is out of range"),
        (["history", "show"], "one command at a time"),
        (["-i"], "-i needs a FILE"),
        (["history", "-i", str(Path("/"))], "not a regular file"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(argv, says, capsys, tmp_path, monkeypatch):
    """The family of words a command cannot mean: exit 3, one line naming the flag or word,
    no traceback, nothing written (no journal row: exit 3 means nothing ran)."""
    monkeypatch.chdir(tmp_path)
    code, out, err = in_process(capsys, *argv)
    assert code == 3 and out == "", (argv, out, err)
    (line,) = err.splitlines()
    assert line.startswith("crmmaint: error: ") and says in line, (argv, err)
    assert list(tmp_path.iterdir()) == [], argv


@given(
    st.sampled_from([("history", "--limit"), ("run", "--forks"), ("prune", "--keep-weekly")]),
    st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=MAX_COUNT + 1),
        st.text(min_size=1, max_size=8).filter(lambda t: not t.strip().lstrip("+").isdigit()),
    ),
)
def test_a_count_outside_its_range_is_refused(command_flag, value):
    command, flag = command_flag
    with pytest.raises(ConfigError, match=re.escape(flag)):
        normalize_argv(["crmmaint", command, f"{flag}={value}"])


def test_one_command_at_a_time(tmp_path):
    code, out, err = cli("history", "playbook.list", cwd=tmp_path)
    assert code == 3 and out == "" and "one command at a time" in err, err


@pytest.mark.parametrize(
    "argv, debug",
    [
        (["crmmaint", "backup", "--database", "crm", "--check"], False),
        (["crmmaint", "-d", "backup", "--check"], True),  # invoke's core --debug
        (["crmmaint", "backup", "--debug"], True),
        (["crmmaint", "repo", "init", "--debug"], True),
    ],
)
def test_debug_flag_only_where_it_means_debug(argv, debug, monkeypatch):
    monkeypatch.delenv("CRMMAINT_DEBUG", raising=False)
    normalize_argv(argv)
    assert (os.environ.get("CRMMAINT_DEBUG") == "1") is debug


def test_no_inventory_is_a_configuration_error(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = in_process(capsys, "inventory", "check")
    assert code == 3
    assert "no inventory given" in err and "Traceback" not in err


def test_bad_inventory_names_file_line_and_field(capsys, tmp_path):
    bad = tmp_path / "inv.yml"
    bad.write_text("hosts:\n  web1:\n    adress: 10.0.0.1\n")
    code, _, err = in_process(capsys, "inventory", "check", "-i", str(bad))
    assert code == 3
    assert f"{bad}:3" in err and "adress" in err and "address" in err


def test_inline_password_is_rejected(capsys, tmp_path):
    bad = tmp_path / "inv.yml"
    bad.write_text("databases:\n  crm: {engine: postgresql, password: hunter2}\n")
    code, _, err = in_process(capsys, "inventory", "check", "-i", str(bad))
    assert code == 3 and "inline secrets" in err and "hunter2" not in err


def test_playbook_check_reports_every_problem(capsys, tmp_path):
    book = tmp_path / "bad.yml"
    book.write_text(
        "name: x\nwindow: daily\nsteps:\n"
        "  - name: a\n    task: health.hots\n    hosts: all\n"
        "  - name: b\n    task: health.host\n    hosts: all\n    retries: lots\n"
    )
    code, out, err = in_process(
        capsys, "playbook", "check", str(book), str(REPO / "playbooks" / "daily.yml")
    )
    assert code == 3
    assert "daily.yml: valid" in out
    assert f"{book}:5, step 'a', field 'task'" in err and "health.host" in err
    assert f"{book}:10, step 'b', field 'retries'" in err


def test_shipped_playbooks_validate(capsys):
    files = sorted(str(p) for p in (REPO / "playbooks").glob("*.yml"))
    assert len(files) == 5
    code, out, _ = in_process(capsys, "playbook", "check", *files)
    assert code == 0 and out.count("valid") == 5


def test_run_daily_json_history_and_show(capsys, estate):
    inv = str(estate / "inventory.yml")
    code, out, _ = in_process(capsys, "run", "daily", "-i", inv, "--json")
    doc = json.loads(out)
    assert code == doc["exit_code"] and code in (0, 1)
    assert {r["step"] for r in doc["results"]} >= {"databases answering", "hosts healthy"}
    code, out, _ = in_process(capsys, "history", "-i", inv, "--json")
    assert code == 0 and json.loads(out)[0]["playbook"] == "daily"
    code, out, _ = in_process(capsys, "show", "-i", inv, "--json")
    shown = json.loads(out)
    assert shown["id"] == doc["run_id"] and len(shown["results"]) == len(doc["results"])
    code, _, err = in_process(capsys, "show", "999", "-i", inv)
    assert code == 3 and "no run 999" in err


def test_unknown_step_is_a_configuration_error(capsys, estate):
    code, _, err = in_process(
        capsys, "run", "daily", "-i", str(estate / "inventory.yml"), "--step", "nope"
    )
    assert code == 3 and "nope" in err


def test_backup_restore_cycle_as_subprocess(estate):
    inv = str(estate / "inventory.yml")
    code, out, err = cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))
    assert code == 0 and out.startswith("crmpub1"), err
    assert (estate / "keys" / "ops.key").stat().st_mode & 0o777 == 0o600
    code, out, err = cli("repo", "init", "-i", inv)
    assert code == 0 and "initialised" in out and "(zstd level 2)" in out, err
    code, out, err = cli("keys", "check", "-i", inv)
    assert code == 0 and "matches a recipient" in out, err

    code, out, err = cli("backup", "-i", inv, "--check")
    assert code == 0 and "would back up" in out, err
    code, out, err = cli("backups", "list", "-i", inv, "--json")
    assert code == 0 and json.loads(out) == []

    code, out, err = cli("backup", "-i", inv)
    assert code == 0, out + err
    code, out, err = cli("backups", "list", "-i", inv, "--json")
    listed = json.loads(out)
    assert {b["source"] for b in listed} == {"database:crm", "fileset:files"}

    target = estate / "restored.sqlite"
    code, out, err = cli("restore", "database:crm@latest", "--to", str(target), "-i", inv)
    assert code == 0 and "2 tables, 7000 rows" in out, err
    code, out, err = cli("restore", "database:crm@latest", "--to", str(target), "-i", inv)
    assert code == 6 and "exists" in err and "Traceback" not in err
    code, out, err = cli(
        "restore", "database:crm@latest", "--to", str(target), "-i", inv, "--jobs", "0"
    )
    assert code == 3 and "--jobs takes a whole number from 1" in err and "Traceback" not in err
    code, out, err = cli("restore", "fileset:files@latest", "--to", str(estate / "out"), "-i", inv)
    assert code == 0, err
    assert next(iter((estate / "out").rglob("a.txt"))).read_text() == "attachment\n" * 100

    code, out, err = cli("verify", "-i", inv, "--read-data")
    assert code == 0, out + err
    code, out, err = cli("prune", "-i", inv, "--check", "--keep-daily", "7", "--json")
    assert code == 0 and json.loads(out)["results"][0]["status"] == "ok"


def test_wrong_identity_and_tampering_have_their_exit_codes(estate):
    inv = str(estate / "inventory.yml")
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("keys", "generate", "--output", str(estate / "other.key"))[0] == 0
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    assert cli("backup", "-i", inv, "--database", "crm")[0] == 0

    code, _, err = cli(
        "restore",
        "database:crm@latest",
        "--to",
        str(estate / "x.sqlite"),
        "-i",
        inv,
        "--identity",
        str(estate / "other.key"),
    )
    assert code == 8 and "Traceback" not in err
    assert not (estate / "x.sqlite").exists()

    (estate / "other.key").chmod(0o644)
    code, _, err = cli(
        "restore",
        "database:crm@latest",
        "--to",
        str(estate / "x.sqlite"),
        "-i",
        inv,
        "--identity",
        str(estate / "other.key"),
    )
    assert code == 8 and "chmod 600" in err

    packs = sorted((estate / "repo" / "data").rglob("*"))
    pack = next(p for p in packs if p.is_file())
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    code, out, err = cli(
        "restore", "database:crm@latest", "--to", str(estate / "y.sqlite"), "-i", inv
    )
    assert code == 9, out + err
    assert pack.name in err
    assert not (estate / "y.sqlite").exists()
    code, out, err = cli("verify", "-i", inv, "--read-data")
    assert code == 9 and pack.name in out


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "inv.yml"
    bad.write_text("hosts: [1, 2]\n")
    code, _, err = cli("inventory", "check", "-i", str(bad))
    assert code == 3 and "Traceback" not in err
    code, _, err = cli("inventory", "check", "-i", str(bad), "--debug")
    assert code == 3 and "Traceback" in err


def test_invoke_lists_the_same_collection():
    proc = subprocess.run(
        [str(BIN / "invoke"), "--list"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for name in (
        "run",
        "history",
        "show",
        "backup",
        "restore",
        "playbook.check",
        "inventory.check",
        "keys.generate",
    ):
        assert name in proc.stdout


def test_passphrase_repository_round_trip(estate, monkeypatch):
    """The simple alternative to X25519 keys: a passphrase from a secret source."""
    inv_path = estate / "inventory.yml"
    inv = yaml.safe_load(inv_path.read_text())
    inv["repositories"]["main"] = {
        "url": "repo",
        "write_key": "keys/write.key",
        "passphrase": "env:CRM_BACKUP_PASSPHRASE",
    }
    inv_path.write_text(yaml.safe_dump(inv))
    monkeypatch.setenv("CRM_BACKUP_PASSPHRASE", "correct horse battery staple")
    assert setup_cli("repo", "init", "-i", str(inv_path))[0] == 0
    code, out, err = cli("backup", "-i", str(inv_path), "--database", "crm")
    assert code == 0, out + err
    code, out, err = cli(
        "restore", "database:crm@latest", "--to", str(estate / "p.sqlite"), "-i", str(inv_path)
    )
    assert code == 0 and "7000 rows" in out, err

    monkeypatch.setenv("CRM_BACKUP_PASSPHRASE", "wrong horse")
    code, _, err = cli(
        "restore", "database:crm@latest", "--to", str(estate / "q.sqlite"), "-i", str(inv_path)
    )
    assert code == 8 and "correct horse" not in err and "wrong horse" not in err
    assert not (estate / "q.sqlite").exists()
    monkeypatch.delenv("CRM_BACKUP_PASSPHRASE")
    code, _, err = cli("backup", "-i", str(inv_path), "--database", "crm")
    assert code == 8 and "CRM_BACKUP_PASSPHRASE" in err + _


def test_twenty_file_set_backups_in_a_row_all_succeed(estate, capsys):
    """A file set of a few hundred files (more output than a collected command may keep) backs
    up 20 times in a row; files read in between (new atimes) store nothing new. The first
    backup runs the installed program, the others `main` in this process (the same code,
    without a program start each)."""
    import random

    files = estate / "files"
    rng = random.Random(8)
    for i in range(300):
        sub = files / f"dir{i % 12}"
        sub.mkdir(exist_ok=True)
        (sub / f"doc{i}.bin").write_bytes(rng.randbytes(rng.randint(20_000, 120_000)))
    inv = str(estate / "inventory.yml")
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    for attempt in range(20):
        args = ("backup", "--fileset", "files", "-i", inv)
        code, out, err = cli(*args) if attempt == 0 else in_process(capsys, *args)
        assert code == 0, (attempt, out, err)
        now = time.time_ns() + attempt * 3600 * 10**9
        for path in files.rglob("*.bin"):
            os.utime(path, ns=(now, path.stat().st_mtime_ns))  # read since: atime moved on
    code, out, err = cli("backups", "list", "-i", inv, "--json", "--source", "fileset:files")
    listed = sorted(json.loads(out), key=lambda b: b["time"])
    assert len(listed) == 20
    assert listed[0]["size"] > COLLECT_STDOUT_LIMIT
    assert all(b["stored_bytes"] < b["size"] * 0.01 for b in listed[1:]), [
        b["stored_bytes"] for b in listed
    ]


def test_file_set_through_a_linked_root_and_an_emptied_one(estate):
    """The configured path is a symlink to the real directory: its 20 files are backed up and
    restored (not the link alone); a root that comes out empty later is a warning naming it."""
    real = estate / "real-attachments"
    real.mkdir()
    for i in range(20):
        (real / f"file{i}.txt").write_text(f"attachment {i}\n" * 50)
    shutil.rmtree(estate / "files")
    (estate / "files").symlink_to(real)
    inv = str(estate / "inventory.yml")
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    code, out, err = cli("backup", "--fileset", "files", "-i", inv)
    assert code == 0, out + err
    target = estate / "restored"
    code, out, err = cli("restore", "fileset:files@latest", "--to", str(target), "-i", inv)
    assert code == 0 and "20 files" in out, out + err
    restored = target / str(estate / "files").lstrip("/")
    assert sorted(p.name for p in restored.iterdir()) == sorted(f"file{i}.txt" for i in range(20))

    for child in real.iterdir():
        child.unlink()
    code, out, err = cli("backup", "--fileset", "files", "-i", inv)
    assert code == 1, out + err
    assert f"{estate / 'files'} holds no files (the previous backup had 20)" in out


def test_readers_wait_for_a_prune_holding_the_repository(estate):
    """`backups list` and `restore` hold shared locks: while a prune holds the repository
    exclusively they wait (and say so), then finish once it is released."""
    from crmmaint.repository.backends.local import LocalBackend
    from crmmaint.repository.lock import RepositoryLock

    inv = str(estate / "inventory.yml")
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    assert cli("backup", "-i", inv)[0] == 0
    prune = RepositoryLock(LocalBackend(estate / "repo"), exclusive=True, owner="prune elsewhere")
    prune.acquire()
    env = {**os.environ, "COLUMNS": "200"}
    readers = [
        subprocess.Popen(
            [str(BIN / "crmmaint"), *args, "-i", inv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for args in (
            ("backups", "list"),
            ("restore", "database:crm@latest", "--to", str(estate / "again.sqlite")),
        )
    ]
    said = []
    try:
        # Each announces its wait (after 2 s) and keeps waiting; a reader that gave up would
        # end its stderr (after the repository's lock_wait), so this loop ends either way.
        for reader in readers:
            assert reader.stderr is not None
            lines = iter(reader.stderr.readline, "")
            said.append(next((line for line in lines if "waiting for" in line), ""))
        assert [r.poll() for r in readers] == [None, None]  # both wait for the prune
    finally:
        prune.release()
    for reader, line in zip(readers, said, strict=True):
        out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0, out + err
        assert "waiting for the shared lock" in line and "prune elsewhere" in line, line + err
    assert (estate / "again.sqlite").exists()


def test_one_damaged_manifest_leaves_the_others_listable_and_restorable(estate):
    inv = str(estate / "inventory.yml")
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    for _ in range(2):
        assert cli("backup", "--database", "crm", "-i", inv)[0] == 0
    first, second = sorted(p.name for p in (estate / "repo" / "backups").iterdir())
    manifest = estate / "repo" / "backups" / second
    blob = bytearray(manifest.read_bytes())
    blob[50] ^= 1
    manifest.write_bytes(bytes(blob))

    code, out, err = cli("backups", "list", "-i", inv)
    assert code == 0, err
    assert first in out and f"{second}\tDAMAGED: object backups/{second} failed" in out
    assert "1 damaged backup listed" in err and "Traceback" not in err
    code, out, err = cli("restore", first, "--to", str(estate / "first.sqlite"), "-i", inv)
    assert code == 0, err
    code, out, err = cli("restore", second, "--to", str(estate / "second.sqlite"), "-i", inv)
    assert code == 9 and f"backup {second} is damaged" in err and "Traceback" not in err
    code, out, err = cli("prune", "--keep-last", "1", "-i", inv)
    assert code == 6 and "refusing to prune" in out + err

    code, out, err = cli("repo", "repair", "-i", inv)
    assert code == 0 and f"would move aside backups/{second}: damaged manifest" in out
    assert "dry run: 1 object to move aside" in out and manifest.exists()
    code, out, err = cli("repo", "repair", "--apply", "-i", inv)
    assert code == 0 and f"moved aside backups/{second}" in out, out + err
    assert (estate / "repo" / "damaged" / "backups" / second).exists()
    code, out, err = cli("backups", "list", "-i", inv)
    assert code == 0 and "DAMAGED" not in out and not err
    assert cli("verify", "--read-data", "-i", inv)[0] == 0


def test_a_restore_target_in_no_directory_exits_6(estate):
    """A target the restore cannot use (its folder is a file) is exit code 6 (README: restore
    target unusable), found before anything is written: one line, no traceback. (A database
    that fails is 5: tests/test_exit_codes.py.)"""
    inv = str(estate / "inventory.yml")
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    assert cli("backup", "-i", inv, "--database", "crm")[0] == 0
    blocker = estate / "not-a-dir"
    blocker.write_text("a file where the restore needs a directory")
    code, out, err = cli(
        "restore", "database:crm@latest", "--to", str(blocker / "crm.sqlite"), "-i", inv
    )
    assert code == 6, out + err
    assert "sqlite database" in err and "does not exist" in err and "Traceback" not in err
    error, journal = err.strip().splitlines()  # the error, then the run's journal line
    assert error.startswith("crmmaint: error: ") and journal.startswith("journal: ")


def test_the_lock_judges_another_users_live_process_alive(tmp_path):
    """As a user who may not signal the holder (EPERM), a lock of a live process of another
    user on this host is not taken over (the suite runs as root, so run this part as nobody)."""
    import pwd

    if os.getuid() != 0:
        pytest.skip("needs root to switch to the nobody user")
    import sysconfig

    nobody = pwd.getpwnam("nobody")
    code = "import sys; from crmmaint.processes import pid_alive; print(pid_alive(1))"
    # The venv's interpreter lives under /root; the system one of the same version can run the
    # checkout with the venv's packages as another user.
    system_python = Path("/usr/bin/python3")
    if not system_python.exists():
        pytest.skip("no /usr/bin/python3 to run as another user")
    proc = subprocess.run(
        [str(system_python), "-c", code],
        capture_output=True,
        text=True,
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=[],
        cwd="/",
        env={"PYTHONPATH": f"{REPO}:{sysconfig.get_paths()['purelib']}"},
        timeout=60,
    )
    assert proc.stdout.strip() == "True", proc.stderr  # pid 1 is root's: EPERM means alive


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backup", "--database", ""], "--database is given an empty value"),
        (["backup", "--fileset", " , "], "--fileset names nothing"),
        (["restore", "database:crm@latest", "--to", "x", "--jobs", "two"], "not 'two'"),
        (["run", "daily", "--forks", "many"], "not 'many'"),
        (["prune", "--keep-daily", "seven"], "not 'seven'"),
    ],
)
def test_bad_flag_values_are_one_line_and_exit_3(estate, args, message):
    code, out, err = cli(*args, "-i", str(estate / "inventory.yml"))
    assert code == 3, out + err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_journal_is_readable_by_its_owner_only(estate):
    assert cli("run", "daily", "--check", "-i", str(estate / "inventory.yml"))[0] in (0, 1)
    journal = estate / "journal.sqlite"
    assert journal.exists() and journal.stat().st_mode & 0o077 == 0
    journal.chmod(0o644)  # an older journal is tightened on next use
    assert cli("history", "-i", str(estate / "inventory.yml"))[0] == 0
    assert journal.stat().st_mode & 0o077 == 0


def test_a_relative_inventory_path_and_relative_urls_work_from_its_parent(estate):
    """`-i .demo/inventory.yml` with `url: repo` inside: relative to the inventory's folder."""
    rel = f"{estate.name}/inventory.yml"
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    for args in (("repo", "init"), ("backup",), ("backups", "list"), ("verify",)):
        code, out, err = cli(*args, "-i", rel, cwd=estate.parent)
        assert code == 0, (args, out, err)


def test_verify_names_a_backup_the_storage_rolled_back(estate):
    """The storage drops the newest backup (a rollback): no later manifest names it, but the
    journal saw it committed, so `crmmaint verify` reports it missing."""
    inv = str(estate / "inventory.yml")
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    for _ in range(2):
        assert cli("backup", "--database", "crm", "-i", inv)[0] == 0
    assert cli("verify", "-i", inv)[0] == 0
    newest = sorted((estate / "repo" / "backups").iterdir())[-1]
    newest.unlink()
    code, out, err = cli("verify", "-i", inv)
    assert code == 9, out + err
    assert f"backups/{newest.name}: missing: the journal records this backup" in out


def test_an_inventory_found_in_the_current_folder_is_named(estate):
    code, _out, err = cli("inventory", "check", cwd=estate)
    assert code == 0, err
    assert f"using {estate / 'inventory.yml'} (no -i given)" in err


def test_a_repository_made_again_under_the_same_name_is_not_missing_old_backups(estate):
    """The journal remembers backups of the deleted repository; verify of the new one (same
    name, new id) must not call them missing."""
    inv = str(estate / "inventory.yml")
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    assert cli("backup", "--database", "crm", "-i", inv)[0] == 0
    shutil.rmtree(estate / "repo")
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    assert cli("backup", "--database", "crm", "-i", inv)[0] == 0
    code, out, err = cli("verify", "--read-data", "-i", inv)
    assert code == 0, out + err


def test_sigterm_ends_a_run_cleanly(estate, tmp_path):
    """systemd stops a service with SIGTERM: the run ends as interrupted (130), the journal
    does not keep it "running", and the command the step started is gone."""
    import secrets
    import signal as _signal

    token = f"{200 + secrets.randbelow(700)}.{secrets.randbelow(10**6):06d}"
    book = tmp_path / "long.yml"
    book.write_text(yaml.safe_dump({"name": "long", "steps": [
        {"name": "wait", "task": "shell.command", "hosts": "all",
         "with": {"commands": [f"sleep {token}"], "timeout": "10m"}},
    ]}))  # fmt: skip
    proc = subprocess.Popen(
        [str(BIN / "crmmaint"), "run", str(book), "-i", str(estate / "inventory.yml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while not subprocess.run(["pgrep", "-f", f"sleep {token}"], capture_output=True).stdout:
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.1)
    proc.send_signal(_signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    time.sleep(0.5)
    assert not subprocess.run(["pgrep", "-f", f"sleep {token}"], capture_output=True).stdout
    code, history, _ = cli("history", "-i", str(estate / "inventory.yml"))
    assert code == 0 and "running" not in history, history


def test_restores_run_through_the_runner_journaled_and_checkable(estate):
    """`restore` is a one-step playbook: `--check` checks the keys and says what it would do
    without writing, every restore (failed ones too) is a run in `history`, and `show` gives
    its step with the task, the target and the error's exit code."""
    inv = str(estate / "inventory.yml")
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    assert cli("backup", "-i", inv)[0] == 0
    target = estate / "checked.sqlite"

    code, out, err = cli(
        "restore", "database:crm@latest", "--to", str(target), "-i", inv, "--check"
    )
    assert code == 0, out + err
    assert "would restore backup" in out and "2 tables" in out and str(target) in out
    assert not target.exists()
    code, out, err = cli(
        "restore", "fileset:files@latest", "--to", str(estate / "out"), "-i", inv, "--check"
    )
    assert code == 0 and "1 files" in out and not (estate / "out").exists(), out + err

    code, out, err = cli(
        "restore", "database:crm@latest", "--to", str(target), "-i", inv, "--identity",
        str(estate / "nope.key"), "--check",
    )  # fmt: skip
    assert code == 8 and "nope.key" in err and not out, out + err

    assert cli("restore", "database:crm@latest", "--to", str(target), "-i", inv)[0] == 0
    assert cli("restore", "database:crm@latest", "--to", str(target), "-i", inv)[0] == 6

    code, out, err = cli("history", "-i", inv, "--json")
    runs = [r for r in json.loads(out) if r["playbook"] == "restore"]
    assert [(r["status"], bool(r["check_mode"])) for r in runs] == [
        ("failed", False),
        ("changed", False),
        ("failed", True),
        ("changed", True),
        ("changed", True),
    ]
    code, out, err = cli("show", str(runs[0]["id"]), "-i", inv, "--json")
    (step,) = json.loads(out)["results"]
    assert step["task"] == "restore.database" and step["target"] == "crm@local"
    assert step["details"]["exit_code"] == 6 and step["details"]["error"] == "RestoreTargetExists"

    code, out, err = cli(
        "restore", "database:crm@latest", "--to", str(estate / "t.sqlite"), "-i", inv,
        "--timeout", "soon",
    )  # fmt: skip
    assert code == 3 and "--timeout 'soon'" in err and "Traceback" not in err


def test_restore_json_reports_the_run(estate):
    inv = str(estate / "inventory.yml")
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    assert cli("backup", "-i", inv, "--database", "crm")[0] == 0
    target = estate / "j.sqlite"
    code, out, err = cli("restore", "database:crm@latest", "--to", str(target), "-i", inv, "--json")
    assert code == 0, out + err
    (row,) = json.loads(out)["results"]
    assert row["status"] == "changed" and row["metrics"]["rows"] == 7000
    code, out, err = cli("restore", "database:crm@latest", "--to", str(target), "-i", inv, "--json")
    assert code == 6 and json.loads(out)["results"][0]["status"] == "failed"


def _commands() -> list[str]:
    from crmmaint.cli import ns

    return sorted(ns.task_names)


def test_help_as_a_subprocess_writes_nothing(tmp_path):
    """The installed program, as the issue found it: `keys generate --help` wrote an identity
    file named `--help`. (Every command is checked in-process below.)"""
    for argv in (["keys", "generate", "--help"], ["keys", "generate", "--output", "--help"]):
        code, out, err = cli(*argv, cwd=tmp_path)
        assert code == 0 and out.startswith("Usage: crmmaint keys generate") and not err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", _commands())
def test_help_anywhere_prints_help_and_does_nothing_else(name, tmp_path, capsys, monkeypatch):
    """`COMMAND --help` (and `-h`), wherever it stands, prints the command's help, exits 0
    and touches nothing: no identity file named `--help`, no inventory looked for."""
    from crmmaint.cli import spoken

    monkeypatch.chdir(tmp_path)
    words = spoken(name).split()
    for argv in (
        [*words, "--help"],
        [*words, "--output", "--help"],
        [*words, "-h", "x"],
        ["--help", *words, "--output", "x"],
    ):
        code, out, err = in_process(capsys, *argv)
        assert code == 0 and "Usage:" in out and not err, (argv, out, err)
        assert out.startswith(f"Usage: crmmaint {spoken(name)} ")
        # crmmaint's own help: no invoke internals, flags with the kind of value they take.
        assert "--core-opts" not in out and "Docstring:" not in out and "``" not in out
        assert "=STRING" not in out and "=INT" not in out
        assert list(tmp_path.iterdir()) == [], argv


def test_short_flags_mean_one_thing_everywhere():
    """Only `-i` (--inventory) is short, in every command that has it; no `--=INT`."""
    from crmmaint.cli import ns

    shorts = {}
    for name in ns.task_names:
        for arg in ns[name].get_arguments():
            for flag in arg.names:
                if len(flag) == 1:
                    shorts.setdefault(flag, set()).add(arg.name)
            assert arg.name and all(arg.names), (name, arg.names)
    assert shorts == {"i": {"inventory"}}


def test_top_level_help_lists_crmmaints_commands_not_invokes_options():
    code, out, _ = cli("--help")
    assert code == 0 and "restore" in out and "backups list" in out and "keys generate" in out
    assert "--prompt-for-sudo-password" not in out and "--echo" not in out
    assert "Subcommands" not in out and "backups.list" not in out


def test_help_of_a_group_lists_its_commands():
    code, out, err = cli("backups", "--help")
    assert code == 0 and "backups list" in out and not err
    code, out, err = cli("keys", "-h")
    assert code == 0 and "keys generate" in out and "keys show" in out and not err


def test_restore_help_names_arguments_and_values():
    code, out, _ = cli("restore", "--help")
    assert code == 0 and out.startswith("Usage: crmmaint restore BACKUP_ID [options]")
    for shown in ("--to NAME", "--timeout DURATION", "--jobs N", "-i, --inventory FILE"):
        assert shown in out, shown


def test_inventory_before_the_command(estate):
    inv = str(estate / "inventory.yml")
    assert cli("run", "daily", "-i", inv)[0] in (0, 1)
    code, out, err = cli("-i", inv, "history", "--json")
    assert code == 0 and json.loads(out)[0]["playbook"] == "daily", err


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`crmmaint history --json | head -c 1`: the reader goes away; crmmaint ends without a
    word on stderr, with the SIGPIPE convention's 141 (the output is far beyond a pipe's
    buffer, so the write does fail)."""
    from crmmaint.journal import Journal
    from crmmaint.results import Status

    path = tmp_path / "journal.sqlite"
    with Journal(path) as journal:
        for _ in range(3000):
            journal.finish_run(journal.start_run("daily", window="daily"), Status.OK)
    proc = subprocess.Popen(
        [str(BIN / "crmmaint"), "history", "--json", "--limit", "3000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CRMMAINT_JOURNAL": str(path)},
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(1)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    # 141 where the kernel reports the closed pipe (EPIPE); some sandboxes' pipes take the
    # write regardless, and the run then simply ends (0). Never a word on stderr.
    assert proc.wait(timeout=60) in (0, 141) and err == "", err


class _ClosedPipe(io.TextIOBase):
    """stdout whose reader has gone: every write fails as it does under `| head`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        return self._fd


def test_a_closed_pipe_is_exit_141_without_a_word(tmp_path, monkeypatch, capsys):
    from crmmaint.journal import Journal
    from crmmaint.results import Status

    path = tmp_path / "journal.sqlite"
    with Journal(path) as journal:
        journal.finish_run(journal.start_run("daily", window="daily"), Status.OK)
    monkeypatch.setenv("CRMMAINT_JOURNAL", str(path))
    with open(os.devnull, "w") as sink:
        monkeypatch.setattr(sys, "stdout", _ClosedPipe(os.dup(sink.fileno())))
        for args in (["history", "--json"], ["history"], ["--help"], ["run", "--help"]):
            with pytest.raises(SystemExit) as done:
                main(["crmmaint", *args])
            assert done.value.code == 141, args
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "args",
    [["history", "--limit", "300"], ["history", "--json", "--limit", "300"], ["--help"],
     ["history", "--help"]],
)  # fmt: skip
def test_output_that_cannot_be_written_is_exit_74_in_one_line(tmp_path, args):
    """`crmmaint history > /dev/full`: no space for the output is said on stderr, exit 74
    (EX_IOERR), not an internal error (70) or a traceback."""
    from crmmaint.journal import Journal
    from crmmaint.results import Status

    path = tmp_path / "journal.sqlite"
    with Journal(path) as journal:
        for _ in range(300):
            journal.finish_run(journal.start_run("daily", window="daily"), Status.OK)
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [str(BIN / "crmmaint"), *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CRMMAINT_JOURNAL": str(path)},
        )
    assert done.returncode == 74, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("crmmaint: error: cannot write the output: no space left"), line


@pytest.mark.parametrize(
    ("args", "code"), [(["nosuch"], 3), (["history", "--limit", "0"], 3), (["history"], 0)]
)
def test_a_full_stderr_keeps_each_exit_code(tmp_path, args, code):
    """`crmmaint … 2>/dev/full`: what cannot be said on stderr is dropped and the command
    exits with its own code (a full stderr turned every code into 1)."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [str(BIN / "crmmaint"), *args],
            stdout=subprocess.DEVNULL,
            stderr=full,
            env={**os.environ, "CRMMAINT_JOURNAL": str(tmp_path / "journal.sqlite")},
        )
    assert done.returncode == code, args


def test_a_restore_never_replaces_crmmaints_own_files_or_part_of_its_source(estate):
    """Found by a hostile tester: `--force` replaced the repository, the journal or a folder
    inside the file set; a SQLite target in a missing folder gave a raw shell error; `--check`
    said "would restore" where the restore then failed. Each is refused before anything is
    written, with `--check` too, exit 6, and nothing is touched."""
    inv = str(estate / "inventory.yml")
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    assert cli("backup", "-i", inv)[0] == 0
    (estate / "files" / "sub").mkdir()
    (estate / "files" / "sub" / "keep.txt").write_text("source data\n")
    before = {p: p.read_bytes() for p in estate.rglob("*") if p.is_file() and "repo" not in p.parts}
    cases = [
        ("database:crm@latest", estate / "journal.sqlite", "journal"),
        ("database:crm@latest", estate / "inventory.yml", "inventory"),
        ("database:crm@latest", estate / "keys" / "write.key", "write key"),
        ("fileset:files@latest", estate / "repo", "repository main"),
        ("fileset:files@latest", estate, "source"),  # holds the file set's path too
        ("fileset:files@latest", estate / "files" / "sub", "source"),
        ("database:crm@latest", estate / "missing" / "x.sqlite", "does not exist"),
        ("database:crm@latest", estate / "crm.sqlite", "source"),
    ]
    for ref, target, says in cases:
        for check in ([], ["--check"]):
            code, out, err = cli("restore", ref, "--to", str(target), "--force", "-i", inv, *check)
            assert code == 6 and says in err, (ref, target, check, out, err)
    code, out, err = cli(
        "restore", "database:crm@latest", "--to", str(estate / "r.sqlite"), "-i", inv
    )
    assert code == 0, err
    code, out, err = cli(
        "restore", "database:crm@latest", "--to", str(estate / "r.sqlite"), "-i", inv, "--check"
    )
    assert code == 6 and "exists" in err, out + err
    assert cli("backups", "list", "-i", inv)[0] == 0  # the repository is intact
    after = {p: p.read_bytes() for p in before if p.exists()}
    assert {p: after.get(p) for p in before if p.name != "journal.sqlite"} == {
        p: v for p, v in before.items() if p.name != "journal.sqlite"
    }


def test_a_run_whose_reader_goes_away_finishes_and_is_journaled(estate, monkeypatch, capsys):
    """`crmmaint run daily | head -1`: the report's reader is gone after one line; the run
    still does every step and ends in the journal (it stopped halfway, or stayed `running`)."""
    from crmmaint.journal import Journal

    inv = estate / "inventory.yml"
    book = estate / "book.yml"
    book.write_text(
        yaml.safe_dump(
            {
                "name": "two",
                "steps": [
                    {"name": f"s{i}", "task": "shell.command", "hosts": "local",
                     "with": {"commands": ["true"]}}
                    for i in range(2)
                ],
            }
        )
    )  # fmt: skip
    with open(os.devnull, "w") as sink:
        monkeypatch.setattr(sys, "stdout", _ClosedPipe(os.dup(sink.fileno())))
        code = 0
        try:
            main(["crmmaint", "run", str(book), "-i", str(inv)])
        except SystemExit as exc:
            code = exc.code or 0
    assert code == 0, capsys.readouterr().err
    with Journal(estate / "journal.sqlite") as journal:
        run = journal.run(journal.last_run_id())
    assert run["status"] == "ok" and [r["step"] for r in run["results"]] == ["s0", "s1"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_while_crmmaint_starts_is_exit_130_in_one_line(signum, tmp_path):
    """Ctrl-C or a service manager's SIGTERM while the CLI is still being imported (the first
    part of a second): exit 130, one line, no traceback of the import (nor 143). Python's
    import-time log says when the import is under way: the signal is sent as soon as invoke
    (one of the CLI's first imports) has loaded."""
    proc = subprocess.Popen(
        [str(BIN / "crmmaint"), "history"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if re.search(r"\|\s+invoke$", line.rstrip()):
            proc.send_signal(signum)
            break
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=60) == 130, "".join(lines[-20:])
    said = [line for line in lines if not line.startswith("import time:")]
    assert said == ["crmmaint: interrupted\n"], said


def test_a_run_whose_reader_is_gone_still_does_its_work(estate):
    """`crmmaint backup 2>&1 | true` (no -i: the "using inventory" notice is the first write):
    the reader of stdout and stderr is gone before crmmaint says anything; the backup is
    still made and journaled, with its own exit code."""
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("repo", "init", cwd=estate)[0] == 0
    proc = subprocess.Popen(
        [str(BIN / "crmmaint"), "backup"], cwd=estate, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0
    code, out, _ = cli("history", "--json", cwd=estate)
    assert code == 0 and [r["playbook"] for r in json.loads(out)] == ["backup"], out


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("inventory: [\n", "crmmaint.yaml:2: YAML syntax"),
        ("forks: abc\n", "crmmaint.yaml:1: forks must be a whole number"),
        ("forks: 0\n", "crmmaint.yaml:1: forks must be from 1"),
        ("inventoryy: x.yml\n", "crmmaint.yaml:1: unknown key 'inventoryy'"),
        ("- a\n", "a configuration file is a mapping"),
        ("journal: 5\n", "journal must be a path"),
    ],
)
def test_a_bad_configuration_file_is_exit_3_with_its_line(
    text, says, tmp_path, capsys, monkeypatch
):
    """-f FILE and ./crmmaint.yaml alike: checked before any command runs (invoke printed a
    YAML traceback, took `forks: abc` to an internal error, or ignored a misspelt key)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "crmmaint.yaml").write_text(text)
    for argv in (["history"], ["-f", "crmmaint.yaml", "history"]):
        code, out, err = in_process(capsys, *argv)
        assert code == 3 and out == "" and says in err and "Traceback" not in err, (argv, err)


def test_configuration_files_are_read_and_a_missing_f_file_is_an_error(estate, capsys, monkeypatch):
    monkeypatch.chdir(estate)
    (estate / "inventory.yml").rename(estate / "estate.yml")
    code, _, err = in_process(capsys, "-f", "nowhere.yaml", "history")
    assert code == 3 and "nowhere.yaml: file not found" in err, err
    (estate / "crmmaint.yaml").write_text("inventory: estate.yml\n")  # ./crmmaint.yaml
    code, out, err = in_process(capsys, "inventory", "check")
    assert code == 0 and "estate.yml: valid" in out, err


def test_keys_generate_into_a_directory_names_the_file_to_give(tmp_path, capsys):
    code, _, err = in_process(capsys, "keys", "generate", "--output", str(tmp_path))
    assert code == 8 and "is a directory" in err and str(tmp_path / "ops.key") in err, err
    assert list(tmp_path.iterdir()) == []


def test_every_commands_first_docstring_line_is_a_whole_sentence_without_rest_marks():
    """`invoke --list` shows a command's first docstring line and `invoke --help COMMAND` the
    docstring as written: no sentence cut in half, no reST ``literal`` marks."""
    import inspect

    from crmmaint.cli import ns

    for name in ns.task_names:
        doc = inspect.getdoc(ns[name].body) or ""
        assert doc.split("\n")[0].rstrip().endswith((".", ")")), name
        assert "``" not in doc, name


def test_a_closed_stdout_is_a_full_one(tmp_path):
    """`crmmaint history >&-`: a listing that cannot be written is exit 74 in one line, as
    with `> /dev/full` (it was an internal error with a traceback per result)."""
    done = subprocess.run(
        [str(BIN / "crmmaint"), "history"], stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        preexec_fn=lambda: os.close(1), timeout=120,
        env={**os.environ, "CRMMAINT_JOURNAL": str(tmp_path / "journal.sqlite")},
    )  # fmt: skip
    assert done.returncode == 74, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("crmmaint: error:")]
    assert line.startswith("crmmaint: error: cannot write the output: stdout is closed"), line


def test_a_run_with_stdout_or_stderr_closed_does_its_work_with_its_own_code(estate):
    """Found by a newcomer: `crmmaint run daily >&-` ran nothing (exit 74), and with `2>&-`
    every command exited 120. A closed stdout is a full one (the run goes on, says once
    that its report was lost); a closed stderr is one nobody reads. Neither descriptor is
    reused for a file crmmaint opens (a command's output would land in the journal)."""
    inv = str(estate / "inventory.yml")
    for close in (1, 2):
        done = subprocess.run(
            [str(BIN / "crmmaint"), "run", "daily", "--check", "-i", inv],
            stdout=subprocess.PIPE if close == 2 else None,
            stderr=subprocess.PIPE if close == 1 else None,
            text=True, preexec_fn=lambda fd=close: os.close(fd), timeout=300,
        )  # fmt: skip
        assert done.returncode in (0, 1), (close, done.stdout, done.stderr)
        if close == 1:
            assert done.stderr.count("the output cannot be written (stdout is closed)") == 1
        else:
            assert "run daily" in done.stdout
    _, out, _ = cli("history", "--json", "-i", inv)
    assert [r["playbook"] for r in json.loads(out)][:2] == ["daily", "daily"], out
    for args, code in ((["history", "-i", inv], 0), (["nosuch"], 3)):
        done = subprocess.run(
            [str(BIN / "crmmaint"), *args], stdout=subprocess.DEVNULL,
            preexec_fn=lambda: os.close(2), timeout=120,
        )  # fmt: skip
        assert done.returncode == code, args


def test_a_run_whose_output_cannot_be_written_does_its_work_and_says_so_once(estate):
    """`crmmaint run daily > /dev/full`: the run goes on and exits with its own code, and
    stderr says once that the report was lost (it logged a traceback per result)."""
    inv = str(estate / "inventory.yml")
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [str(BIN / "crmmaint"), "run", "daily", "--check", "-i", inv],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("the output cannot be written (no space left on device)") == 1
    _, out, _ = cli("history", "--json", "-i", inv)
    assert [r["playbook"] for r in json.loads(out)] == ["daily"], out


def test_an_ignored_interrupt_stays_ignored(estate):
    """`crmmaint backup &` from a script starts with SIGINT ignored: crmmaint keeps it so for
    its whole life (it installed its own handler half a second in, so an interrupt then
    ended the backup and one before it did not)."""
    import signal
    import time

    inv = str(estate / "inventory.yml")
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    proc = subprocess.Popen(
        [str(BIN / "crmmaint"), "backup", "-i", inv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    for _ in range(8):
        time.sleep(0.15)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert "interrupted" not in out + err


def test_a_restores_result_that_cannot_be_written_keeps_its_code(estate):
    """Found by a newcomer: a finished restore into a closed pipe exited 141. Its work is
    done and journaled: it keeps its code, and says once where the result is. A relative
    `--to` is from the current directory (it was beside the source database)."""
    inv = str(estate / "inventory.yml")
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    assert cli("backup", "--database", "crm", "-i", inv)[0] == 0
    here = estate / "elsewhere"
    here.mkdir()
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [str(BIN / "crmmaint"), "restore", "database:crm@latest", "--to", "copy.sqlite",
             "-i", inv], stdout=full, stderr=subprocess.PIPE, text=True, cwd=here,
            timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("the result could not be written (no space left on device)") == 1
    assert (here / "copy.sqlite").is_file() and not (estate / "copy.sqlite").exists()


def test_crmmaint_alone_is_help_and_exit_3():
    """A cron line cut short (`crmmaint`) must not look like success."""
    done = subprocess.run([str(BIN / "crmmaint")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "Commands:" in done.stdout
    assert done.stderr.strip() == "crmmaint: error: no command given (see the commands above)"


def test_a_signal_after_the_work_is_done_keeps_the_code(estate):
    """Found by a newcomer: SIGTERM as soon as a restore printed its result turned its 0 into
    130 (or 143). Once a run is finished and journaled, the program holds signals back."""
    import signal

    inv = str(estate / "inventory.yml")
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    assert cli("backup", "--database", "crm", "-i", inv)[0] == 0
    for n in range(4):
        proc = subprocess.Popen(
            [str(BIN / "crmmaint"), "restore", "database:crm@latest", "--to",
             str(estate / f"r{n}.sqlite"), "-i", inv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert line.startswith("restored "), line + err
        assert proc.returncode == 0, (n, err)


def test_a_run_whose_process_was_killed_is_recorded_as_killed(estate):
    """Found by a newcomer: after `kill -9` (or a dropped session) the run showed as running
    for ever. The next command on the machine finds its process gone and records it."""
    import signal
    import time

    inv = str(estate / "inventory.yml")
    book = estate / "slow.yml"
    book.write_text(yaml.safe_dump({"name": "slow", "steps": [
        {"name": "wait", "task": "shell.command", "hosts": "local",
         "with": {"commands": ["sleep 30"]}}]}))  # fmt: skip
    proc = subprocess.Popen([str(BIN / "crmmaint"), "run", str(book), "-i", inv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "running" not in cli("history", "-i", inv)[1]:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    code, out, err = cli("history", "--json", "-i", inv)
    assert code == 0, err
    (run,) = [r for r in json.loads(out) if r["playbook"] == "slow"]
    assert run["status"] == "killed" and run["finished"] is not None, run
    assert "ended without finishing (its process is gone)" in err


def test_backup_copies_left_by_killed_backups_are_removed(estate, tmp_path):
    """Found by a newcomer: `kill -9` during a SQLite backup left its plain copy (the whole
    database, unencrypted) in the temp dir for good. The next SQLite backup on the host
    removes copies of crmmaint processes of this machine that are gone, and any older than
    six hours; a live process's copy is left alone."""
    import time

    from crmmaint.processes import this_process

    inv = str(estate / "inventory.yml")
    assert setup_cli("keys", "generate", "--output", str(estate / "keys" / "ops.key"))[0] == 0
    assert setup_cli("repo", "init", "-i", inv)[0] == 0
    temp = tmp_path / "tmp"
    temp.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    me = this_process()
    made = {
        "dead": temp / f"crmmaint-sqlite.{gone.pid}x1-00ff.Ab12Cd34",
        "live": temp / f"crmmaint-sqlite.{me['pid']}x{me['pid_started']}-00ff.Ab12Cd34",
        "old": temp / "crmmaint-sqlite.r-00ff.Ab12Cd34",
        "new": temp / "crmmaint-sqlite.r-11ee.Ab12Cd34",
    }
    for path in made.values():
        path.mkdir()
        (path / "copy.db").write_bytes(b"plain data")
    old = time.time() - 7 * 3600
    os.utime(made["old"], (old, old))
    done = subprocess.run(
        [str(BIN / "crmmaint"), "backup", "--database", "crm", "-i", inv],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(temp)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in temp.iterdir()) == sorted(
        made[k].name for k in ("live", "new")
    ), done.stderr


def test_a_named_inventory_that_is_missing_is_an_error_for_readers_too(tmp_path):
    """Found by a newcomer: `CRMMAINT_INVENTORY=/nonexistent.yml crmmaint history` read the
    user's own (empty) journal and exited 0; a wrapper took that for success."""
    for env in ({"CRMMAINT_INVENTORY": str(tmp_path / "nope.yml")},):
        done = subprocess.run(
            [str(BIN / "crmmaint"), "history"], capture_output=True, text=True, timeout=60,
            env={**os.environ, **env, "HOME": str(tmp_path)}, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 3 and "nope.yml: file not found" in done.stderr, done.stderr
