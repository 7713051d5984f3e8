"""Secrets given on a command line never reach the journal or the screen: ``runs.argv``
(``history --json``, ``show --json``), the audit trail (``audit --json``), an override's reason
(its audit detail, and the line ``crmmaint run --override`` prints to stderr), checked in the
journal file's bytes as well as in what the commands print. A reason is cut to
``MAX_REASON`` characters, saying so."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from clirun import run_cli

from crmmaint.audit import MAX_REASON, REDACTED, override_reason, redact_argv, redact_value
from crmmaint.journal import MAX_TEXT, Journal, cut_text

BERLIN = ZoneInfo("Europe/Berlin")

#: Hostile command-line words and override reasons, each with the secrets it holds.
HOSTILE: list[tuple[str, list[str]]] = [
    ("password=hunter2", ["hunter2"]),
    ("PGPASSWORD=hunter3", ["hunter3"]),
    ("postgres://u:hunter5@db.example.com/crm", ["hunter5"]),
    ("CRMMAINT-SECRET-KEY-ABCDEF123", ["ABCDEF123"]),
    ("fix; token: abc123 --password hunter4", ["abc123", "hunter4"]),
    ("hotfix 4711 --password=hunterA and more", ["hunterA"]),
    ("hotfix --token 'hunterB with blanks' done", ["hunterB"]),
    ("Authorization: Bearer hunterC.tok", ["hunterC"]),
    ("call with Bearer hunterD-tok please", ["hunterD"]),
    ("api_key: hunterE", ["hunterE"]),
    ('{"secret": "hunterF"}', ["hunterF"]),
    ("db password is hunterG", ["hunterG"]),
    ("ticket 4711\npassword: hunterH", ["hunterH"]),
    ("key AKIAIOSFODNN7EXAMPLE leaked", ["AKIAIOSFODNN7EXAMPLE"]),
    ("curl -H 'X-Auth-Token: hunterJ' https://x", ["hunterJ"]),
    ("Basic dXNlcjpodW50ZXJL1", ["dXNlcjpodW50ZXJL1"]),
]
SECRETS = [secret for _, secrets in HOSTILE for secret in secrets]


def assert_no_secret(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    leaked = [s for s in SECRETS if s.encode() in data]
    assert not leaked, f"{where} shows {leaked}"


@pytest.mark.parametrize(("text", "secrets"), HOSTILE)
def test_redact_value_masks_each_hostile_form(text: str, secrets: list[str]) -> None:
    masked = redact_value(text)
    assert REDACTED in masked
    assert not [s for s in secrets if s in masked], masked
    assert redact_value(masked) == masked  # idempotent


@pytest.mark.parametrize(("text", "secrets"), HOSTILE)
def test_redact_argv_masks_each_hostile_word(text: str, secrets: list[str]) -> None:
    for argv in (["crmmaint", "run", "daily", "--override", text], [f"--override={text}"]):
        shown = redact_argv(argv)
        assert not [s for s in secrets if s in json.dumps(shown)], shown
        assert redact_argv(shown) == shown


def test_redaction_keeps_plain_reasons_and_prose() -> None:
    for text in ("hotfix 4711", "Basic checks passed", "quarter close; see ticket CRM-12",
                 "https://example.com/runbook#step-3", "--limit web1,db1"):  # fmt: skip
        assert redact_value(text) == text


def test_a_reason_is_cut_saying_so() -> None:
    long = "hotfix " + "x" * 5000 + " password=hunterZ"
    kept = override_reason(long)
    assert len(kept) == MAX_REASON and kept.startswith("hotfix xxx")
    assert kept.endswith("more characters]") and "cut:" in kept and "hunterZ" not in kept
    assert cut_text(kept, MAX_REASON) == kept  # cutting again changes nothing
    assert all(len(w) <= MAX_TEXT for w in redact_argv(["--override", long]))


def test_start_run_stores_argv_redacted_and_readers_redact_old_rows(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    argv = ["crmmaint", "run", "daily", "--password", "hunter2"]
    argv += [word for text, _ in HOSTILE for word in ("--override", text)]
    with Journal(path) as journal:
        run_id = journal.start_run("daily", argv=argv)
        journal.finish_run(run_id, "ok")
        # a journal written before start_run redacted: its row is redacted when read
        old = journal.start_run("daily")
        journal._db.execute(  # a row as an older crmmaint left it
            "UPDATE runs SET argv = ? WHERE id = ?", (json.dumps(argv), old)
        )
        journal._db.commit()
        rows = journal._db.execute("SELECT argv FROM runs WHERE id = ?", (run_id,)).fetchall()
        assert_no_secret(json.dumps(rows), "runs.argv as stored")
        assert_no_secret(json.dumps(journal.runs()), "Journal.runs")
        assert_no_secret(json.dumps(journal.run(old)), "Journal.run of an old row")
        stored = journal.run(run_id)
        assert stored is not None and stored["argv"][:5] == [
            "crmmaint", "run", "daily", "--password", REDACTED,
        ]  # fmt: skip


def estate(root: Path) -> Path:
    """The local host, a playbook ``book.yml`` of one harmless step, and a blackout today."""
    (root / "book.yml").write_text(
        yaml.safe_dump(
            {
                "name": "book",
                "steps": [
                    {"name": "work", "task": "shell.command", "hosts": "all",
                     "with": {"commands": ["true"]}},
                ],
            }
        )
    )  # fmt: skip
    today = datetime.now(BERLIN).date()
    doc: dict[str, Any] = {
        "settings": {"journal": "journal.sqlite"},
        "hosts": {"local": {"connection": "local"}},
        "schedule": {
            "timezone": "Europe/Berlin",
            "windows": {"nightly": {"playbook": "book.yml", "every": "daily", "at": "02:00",
                                    "length": "3h"}},
            "blackouts": [{"name": "close", "on": str(today)}],
        },
    }  # fmt: skip
    path = root / "inventory.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_no_secret_reaches_journal_history_show_audit_or_stderr(tmp_path: Path) -> None:
    inv = estate(tmp_path)
    book = str(tmp_path / "book.yml")
    for text, _ in HOSTILE:
        done = run_cli("run", book, "-i", str(inv), "--override", text)
        assert done.returncode == 0, done.stderr
        assert "blackout 'close' overridden by" in done.stderr
        assert_no_secret(done.stderr + done.stdout, f"run --override {text!r}")
    long = run_cli("run", book, "-i", str(inv), "--override", "hotfix " + "y" * 3000)
    assert long.returncode == 0 and "more characters]" in long.stderr
    assert len(long.stderr) < 2000, long.stderr

    history = run_cli("history", "--json", "--limit", "100", "-i", str(inv))
    assert history.returncode == 0, history.stderr
    runs = json.loads(history.stdout)
    assert len(runs) == len(HOSTILE) + 1  # newest first: the long reason's run, cut
    assert "more characters]" in json.dumps(runs[0]["argv"])
    assert all(REDACTED in json.dumps(r["argv"]) for r in runs[1:])
    assert_no_secret(history.stdout, "history --json")
    for run in runs:
        shown = run_cli("show", str(run["id"]), "--json", "-i", str(inv))
        assert shown.returncode == 0, shown.stderr
        assert_no_secret(shown.stdout, f"show {run['id']} --json")
    audit = run_cli("audit", "--json", "-i", str(inv))
    assert audit.returncode == 0, audit.stderr
    entries = json.loads(audit.stdout)
    overrides = [e for e in entries if e["command"] == "override"]
    assert len(overrides) == len(HOSTILE) + 1
    assert all(e["detail"].startswith("blackout close overridden for run: ") for e in overrides)
    assert max(len(e["detail"]) for e in overrides) < MAX_REASON + 100
    assert_no_secret(audit.stdout, "audit --json")

    db = sqlite3.connect(tmp_path / "journal.sqlite")
    for table in ("runs", "audit"):
        assert_no_secret(json.dumps(db.execute(f"SELECT * FROM {table}").fetchall()), table)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    for file in tmp_path.glob("journal.sqlite*"):
        assert_no_secret(file.read_bytes(), file.name)
