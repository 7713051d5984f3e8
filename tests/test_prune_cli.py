"""`crmmaint prune` as users run it: where its policy comes from (flags, a playbook step, the
inventory's `retention:`), `--keep-within`, and the row per backup that says why it is kept.

A SQLite estate backed up three times; the reasons themselves are tested exhaustively as pure
logic in test_retention.py.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from clirun import run_cli

from crmmaint.errors import InventoryError
from crmmaint.inventory import load_inventory
from crmmaint.repository.retention import RetentionPolicy

SOURCE = "database:crm"
COLUMNS = ["id", "source", "time", "drilled", "decision", "reasons"]


def cli(*args: str) -> tuple[int, str, str]:
    done = run_cli(*args)
    return done.returncode, done.stdout, done.stderr


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("crmmaint: error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def write_inventory(root: Path, retention: dict | None = None) -> str:
    repo: dict = {
        "url": "repo",
        "write_key": "keys/write.key",
        "recipients": ["file:keys/ops.pub"],
        "identity": "keys/ops.key",
    }
    if retention is not None:
        repo["retention"] = retention
    inv = {
        "settings": {"journal": "journal.sqlite"},
        "hosts": {"local": {"connection": "local"}},
        "databases": {"crm": {"engine": "sqlite", "path": "crm.sqlite", "main": True}},
        "repositories": {"main": repo},
    }
    path = root / "inventory.yml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return str(path)


def make_estate(root: Path) -> Path:
    """A SQLite CRM, a repository and its keys; no backup yet, no retention."""
    root.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(root / "crm.sqlite")
    db.executescript("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT);")
    db.executemany("INSERT INTO customers(name) VALUES (?)", [(f"c{i}",) for i in range(200)])
    db.commit()
    db.close()
    inv = write_inventory(root)
    assert cli("keys", "generate", "--output", str(root / "keys" / "ops.key"))[0] == 0
    assert cli("repo", "init", "-i", inv)[0] == 0
    return root


@pytest.fixture
def estate(tmp_path: Path) -> Path:
    return make_estate(tmp_path / "estate")


@pytest.fixture(scope="module")
def three_backups(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """An estate backed up three times, made once and copied by ``backed_up``."""
    root = make_estate(tmp_path_factory.mktemp("prune") / "estate")
    inv = str(root / "inventory.yml")
    for _ in range(3):
        code, out, err = cli("backup", "-i", inv)
        assert code == 0, out + err
    code, out, err = cli("backups", "list", "-i", inv, "--json")
    assert code == 0, err
    ids = [b["id"] for b in sorted(json.loads(out), key=lambda b: b["time"], reverse=True)]
    return root, ids


@pytest.fixture
def backed_up(three_backups: tuple[Path, list[str]], tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the three-backup estate (its folder, its backup ids newest first)."""
    template, ids = three_backups
    copy = tmp_path / "estate"
    shutil.copytree(template, copy)
    return copy, ids


def rows(out: str) -> dict[str, dict[str, str]]:
    """The per-backup TSV that ends prune's plain output, by backup id."""
    lines = out.splitlines()
    start = lines.index("\t".join(COLUMNS))
    return {
        cells[0]: dict(zip(COLUMNS, cells, strict=True))
        for cells in (line.split("\t") for line in lines[start + 1 :])
    }


def prune_result(out: str) -> dict:
    doc = json.loads(out)
    assert len(doc["results"]) == 1, doc
    return doc["results"][0]


# --- where the policy comes from -------------------------------------------------------------


def test_without_any_policy_prune_refuses_and_names_where_to_set_one(tmp_path):
    inv = write_inventory(tmp_path)
    code, out, err = cli("prune", "-i", inv, "--check")
    assert code == 3, out + err
    said = out + err
    assert "no retention policy for repository 'main'" in said
    # The command's own two places: its flags, and the repository's retention: (a playbook
    # step's rules are no remedy for a command line).
    assert "--keep-daily 7" in said and "retention:" in said and "keep_daily" not in said
    assert "Traceback" not in said


def test_inventory_retention_is_the_policy_when_no_flag_is_given(backed_up):
    estate, backed_up = backed_up
    inv = write_inventory(estate, {"keep-last": 2})
    code, out, err = cli("prune", "-i", inv, "--check")
    assert code == 0, out + err
    assert "policy keep-last=2 (from the inventory's retention of repository main)" in out
    table = rows(out)
    assert list(table) == backed_up
    assert [table[i]["decision"] for i in backed_up] == ["keep", "keep", "remove"]
    assert table[backed_up[0]]["reasons"] == f"last 1/2, newest of source {SOURCE}"
    assert table[backed_up[1]]["reasons"] == "last 2/2"
    assert table[backed_up[2]]["reasons"] == "-"
    # times as `backups list` and `history` show them: local, to the second
    from crmmaint.cli.common import local_time

    listed = {
        b["id"]: b["time"] for b in json.loads(cli("backups", "list", "-i", inv, "--json")[1])
    }
    assert all(
        r["source"] == SOURCE and r["time"] == local_time(listed[i]) for i, r in table.items()
    )

    # Really pruned: the one removed backup is gone, the listing says so.
    code, out, err = cli("prune", "-i", inv)
    assert code == 0, out + err
    assert "removed 1 backup, kept 2" in out and rows(out)[backed_up[2]]["decision"] == "remove"
    code, out, _ = cli("backups", "list", "-i", inv, "--json")
    assert sorted(b["id"] for b in json.loads(out)) == sorted(backed_up[:2])


def test_flags_replace_the_inventory_policy_as_a_whole(backed_up):
    estate, backed_up = backed_up
    inv = write_inventory(estate, {"keep-last": 1})
    code, out, err = cli("prune", "-i", inv, "--check", "--keep-within", "1d", "--json")
    assert code == 0, out + err
    result = prune_result(out)
    details = result["details"]
    assert details["policy"] == "keep-within=1d" and details["policy_from"] == "step"
    assert details["removed"] == []
    assert [b["id"] for b in details["backups"]] == backed_up
    for backup in details["backups"]:
        assert backup["decision"] == "keep" and "within 1d" in backup["reasons"]
    assert f"newest of source {SOURCE}" in details["backups"][0]["reasons"]


def test_a_playbook_step_overrides_the_inventory_and_the_newest_drilled_stays(estate):
    """A run backs up, drills, backs up twice more, then prunes with its step's keep_last: 1
    over the inventory's keep-last: 3: the newest and the drilled first backup stay."""
    inv = write_inventory(estate, {"keep-last": 3})
    book = estate / "book.yml"
    backup = {"task": "backup.database", "database": "crm"}
    book.write_text(
        yaml.safe_dump(
            {
                "name": "rotate",
                "steps": [
                    {"name": "first", **backup},
                    {"name": "drill", "task": "drill.restore", "database": "crm"},
                    {"name": "second", **backup},
                    {"name": "third", **backup},
                    {
                        "name": "prune",
                        "task": "backup.prune",
                        "repository": "main",
                        "with": {"keep_last": 1},
                    },
                ],
            }
        )
    )
    code, out, err = cli("run", str(book), "-i", inv)
    assert code == 0, out + err
    code, out, err = cli("show", "-i", inv, "--json")
    assert code == 0, err
    (pruned,) = [r for r in json.loads(out)["results"] if r["step"] == "prune"]
    details = pruned["details"]
    assert details["policy"] == "keep-last=1" and details["policy_from"] == "step"
    newest, middle, first = details["backups"]
    assert newest["reasons"] == ["last 1/1", f"newest of source {SOURCE}"]
    assert (middle["decision"], middle["reasons"]) == ("remove", [])
    assert first["drilled"] and first["decision"] == "keep"
    assert first["reasons"] == ["newest drilled"]


# --- flags -----------------------------------------------------------------------------------


def test_keep_within_takes_a_duration(backed_up):
    inv = str(backed_up[0] / "inventory.yml")
    code, out, err = cli("prune", "-i", inv, "--check", "--keep-within", "36h")
    assert code == 0, out + err
    assert "would remove 0 backups, kept 3; policy keep-within=36h" in out
    assert {r["reasons"].split(", ")[0] for r in rows(out).values()} == {"within 36h"}
    # A zero window is no rule at all: an empty policy, refused rather than keeping only the
    # newest backup.
    code, out, err = cli("prune", "-i", inv, "--check", "--keep-within", "0s")
    assert code == 3 and out == "" and "prune refuses an empty policy" in err, out + err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--keep-within", "2 days"], "--keep-within: not a duration: '2 days'"),
        (["--keep-within", "-2d"], "--keep-within: not a duration: '-2d'"),
        (
            ["--keep-hourly", "many"],
            "--keep-hourly takes a whole number from 0 to 1000000000, not 'many'",
        ),
    ],
)
def test_bad_flag_values_are_one_line_and_exit_3(tmp_path, args, says):
    code, out, err = cli("prune", "-i", write_inventory(tmp_path), *args)
    assert code == 3, out + err
    assert says in one_line(err) and len(err.strip().splitlines()) == 1


# --- retention in the inventory --------------------------------------------------------------


@pytest.mark.parametrize(
    ("retention", "says"),
    [
        ({"keep-daily": 7, "keep-dayly": 7}, "unknown key 'keep-dayly'"),
        ({"keep-weekly": 4, "keep-daily": -1}, "keep-daily must not be negative"),
        ({"keep-within": "2 fortnights"}, "keep-within: not a duration"),
        ({"keep-monthly": 1.5}, "keep-monthly must be a whole number"),
        ({"keep-daily": 0}, "sets no keep-* rule above 0"),
    ],
)
def test_bad_retention_in_the_inventory_is_refused_at_load_with_its_line(tmp_path, retention, says):
    inv = write_inventory(tmp_path, retention)
    bad_key = list(retention)[-1]
    text = Path(inv).read_text().splitlines()
    line = next(n for n, row in enumerate(text, start=1) if row.strip().startswith(bad_key))
    if says.startswith("sets no"):  # the policy as a whole: the line of retention:
        line = next(n for n, row in enumerate(text, start=1) if "retention:" in row)
    for command in (["prune", "--check"], ["backups", "list"]):
        code, out, err = cli(*command, "-i", inv)
        assert code == 3, (command, out, err)
        message = one_line(err)
        assert f"{inv}:{line}: repository 'main' retention" in message, message
        assert says in message


def test_inventory_retention_spellings_and_what_it_loads(tmp_path):
    inv = write_inventory(tmp_path, {"keep_daily": 7, "keep-hourly": "24", "keep-within": "2d"})
    settings = load_inventory(inv).repositories["main"]
    assert settings.retention == RetentionPolicy(
        keep_hourly=24, keep_daily=7, keep_within=2 * 86400.0
    )
    assert load_inventory(write_inventory(tmp_path)).repositories["main"].retention is None
    with pytest.raises(InventoryError, match="retention must be a mapping"):
        load_inventory(write_inventory(tmp_path, ["keep-daily"]))  # type: ignore[arg-type]


def test_a_dry_run_does_not_wait_for_running_backups(backed_up):
    """`prune --check` writes nothing: it takes the lock a backup shares, so a backup at work
    does not hold it up (it waited its minute and exited 7)."""
    from crmmaint.repository.backends.local import LocalBackend
    from crmmaint.repository.lock import RepositoryLock

    estate, _ = backed_up
    inv = write_inventory(estate, {"keep-last": 2})
    backup = RepositoryLock(LocalBackend(estate / "repo"), exclusive=False, owner="a backup")
    backup.acquire()
    try:
        code, out, err = cli("prune", "-i", inv, "--check")
        assert code == 0, out + err
        assert "would remove" in out
    finally:
        backup.release()


def test_a_prune_whose_table_cannot_be_written_keeps_its_code(backed_up):
    """Found by a newcomer: `prune > /dev/full` (or `>&-`) exited 74 and said so twice,
    although the prune was done: it keeps its code and says it once."""
    import os
    import subprocess

    from clirun import BIN

    estate, _ = backed_up
    inv = write_inventory(estate, {"keep-last": 100})
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [str(BIN / "crmmaint"), "prune", "--check", "-i", inv],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("no space left on device") == 1, done.stderr
    closed = subprocess.run(
        [str(BIN / "crmmaint"), "prune", "--check", "-i", inv],
        stderr=subprocess.PIPE, text=True, timeout=300, preexec_fn=lambda: os.close(1),
    )  # fmt: skip
    assert closed.returncode == 0 and closed.stderr.count("stdout is closed") == 1, closed.stderr
