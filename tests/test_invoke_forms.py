"""The invoke forms the README documents, run as users run them: ``invoke -r REPO ...`` as a
subprocess, plain invoke's parser and config (not crmmaint's ``main``)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
INVOKE = Path(sys.executable).parent / "invoke"


def invoke(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``invoke -r REPO ARGS`` in ``cwd``; output captured as text."""
    return subprocess.run(
        [str(INVOKE), "-r", str(REPO), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture
def estate(tmp_path: Path) -> Path:
    """A folder holding ``inventory.yml``: one local host and a small SQLite database."""
    db = sqlite3.connect(tmp_path / "crm.sqlite")
    db.execute("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT)")
    db.commit()
    db.close()
    inv = {
        "settings": {"journal": "journal.sqlite"},
        "hosts": {"local": {"connection": "local"}},
        "databases": {"crm": {"engine": "sqlite", "path": "crm.sqlite", "main": True}},
    }
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inv))
    return tmp_path


def test_invoke_list_shows_every_command():
    proc = invoke("--list")
    assert proc.returncode == 0, proc.stderr
    for name in ("run", "playbook.check", "playbook.list", "inventory.check", "show"):
        assert name in proc.stdout


def test_invoke_run_daily_from_the_estates_folder(estate):
    proc = invoke("run", "daily", cwd=estate)
    # 1: a warning, such as the load of a busy test machine; nothing failed
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert "ok       databases answering crm@local" in proc.stdout
    assert (estate / "journal.sqlite").exists()


def test_invoke_run_without_an_inventory_is_a_configuration_error(tmp_path):
    proc = invoke("run", "daily", cwd=tmp_path)
    assert proc.returncode == 3
    assert "no inventory given" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invoke_playbook_check_takes_the_file_positionally():
    proc = invoke("playbook.check", "playbooks/daily.yml")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "playbooks/daily.yml: valid\n"


def test_invoke_playbook_check_takes_more_files_as_flags():
    proc = invoke("playbook.check", "playbooks/daily.yml", "--file", "playbooks/weekly.yml")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["playbooks/daily.yml: valid", "playbooks/weekly.yml: valid"]
    proc = invoke("playbook.check", "--file", "playbooks/daily.yml", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [row["valid"] for row in json.loads(proc.stdout)] == [True]


def test_invoke_playbook_check_of_a_bad_playbook_exits_3(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("name: bad\nsteps:\n  - name: x\n    task: no.such.task\n    hosts: all\n")
    proc = invoke("playbook.check", str(bad))
    assert proc.returncode == 3
    assert "no.such.task" in proc.stderr


def test_invoke_playbook_check_without_a_file_says_so():
    proc = invoke("playbook.check")
    assert proc.returncode != 0
    assert "'file'" in proc.stderr


def test_invoke_inventory_check_and_show(estate):
    proc = invoke("inventory.check", cwd=estate)
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout
    assert invoke("run", "daily", cwd=estate).returncode in (0, 1)  # 1: warnings only
    proc = invoke("show", "last", cwd=estate)
    assert proc.returncode == 0, proc.stderr
    assert "health.database" in proc.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["playbook", "check", "playbooks/daily.yml", "playbooks/weekly.yml"],
        ["playbook.check", "playbooks/daily.yml"],
        ["playbook", "check", "--file", "playbooks/daily.yml"],
    ],
)
def test_the_crmmaint_program_keeps_its_forms(argv):
    """The positional is invoke's; ``crmmaint playbook check A B`` still takes several."""
    proc = subprocess.run(
        [str(INVOKE.parent / "crmmaint"), *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": valid") == sum(a.endswith(".yml") for a in argv)


@pytest.mark.parametrize(
    "args",
    [["keys.generate", "--help"], ["keys.generate", "-h"], ["keys.show", "--help"],
     ["run", "--help"], ["restore", "--help", "--to", "x"]],
)  # fmt: skip
def test_help_taken_as_a_value_by_plain_invoke_runs_nothing(args, tmp_path):
    """Plain invoke's parser gives `--help` after a command to its positional: crmmaint refuses
    the value (exit 3, one line) instead of writing an identity file named `--help`."""
    done = invoke(*args, cwd=tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "--help was taken as an argument's value" in done.stderr
    assert list(tmp_path.iterdir()) == []
