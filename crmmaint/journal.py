"""The journal: run history in SQLite (runs, per-target results, metrics, task state) and
the audit trail of the commands that change something (``audit``).

Reports, ``history``/``show``, monitoring checks, capacity forecasts and the scheduler's
catch-up read it. It stores results as tasks return them, which never hold secrets, and
command lines, flags and audit details redacted (``redact_argv``, ``redact_flags``,
``redact_value``): a secret given on a command line (``PGPASSWORD=…``, ``--password …``, a
URL's password, an ``--override`` reason that quotes one) is never stored.

The ``audit`` table is append-only: nothing here updates or deletes its rows, and triggers
make SQLite refuse an UPDATE or DELETE from anyone else. Each row carries the SHA-256 of the
row before it and of its own content (``hash``), so ``verify_audit`` finds a row changed or
taken out of the middle (an attacker who can write the file can rewrite the whole chain:
this is tamper evidence against mistakes and casual edits, not a signature).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import math
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crmmaint.errors import ConfigError
from crmmaint.processes import still_running, this_process
from crmmaint.results import Status, TaskResult
from crmmaint.units import metric_value

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    playbook TEXT NOT NULL,
    window TEXT,
    inventory TEXT,
    started REAL NOT NULL,
    finished REAL,
    status TEXT,
    check_mode INTEGER NOT NULL DEFAULT 0,
    user TEXT,
    machine TEXT,
    argv TEXT
);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step TEXT NOT NULL,
    task TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target TEXT NOT NULL,
    host TEXT,
    status TEXT NOT NULL,
    message TEXT,
    details TEXT,
    started REAL NOT NULL,
    duration REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS results_run ON results(run_id);
CREATE TABLE IF NOT EXISTS metrics (
    result_id INTEGER NOT NULL REFERENCES results(id),
    name TEXT NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_result ON metrics(result_id);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    phase TEXT NOT NULL,
    start_id INTEGER REFERENCES audit(id),
    at REAL NOT NULL,
    user TEXT,
    sudo_user TEXT,
    login_user TEXT,
    ssh_client TEXT,
    machine TEXT,
    process TEXT,
    command TEXT NOT NULL,
    argv TEXT NOT NULL,
    targets TEXT NOT NULL,
    remote_users TEXT NOT NULL,
    flags TEXT NOT NULL,
    outcome TEXT,
    exit_code INTEGER,
    run_id INTEGER,
    detail TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
CREATE INDEX IF NOT EXISTS audit_start ON audit(start_id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"""

#: The columns of an ``audit`` row a writer gives (``record_audit``), in the order they are
#: hashed; ``id``, ``prev_hash`` and ``hash`` are the journal's.
AUDIT_FIELDS = (
    "phase", "start_id", "at", "user", "sudo_user", "login_user", "ssh_client", "machine",
    "process", "command", "argv", "targets", "remote_users", "flags", "outcome", "exit_code",
    "run_id", "detail",
)  # fmt: skip
#: Columns stored as JSON text, decoded by the readers.
_AUDIT_JSON = {"process": None, "argv": [], "targets": [], "remote_users": {}, "flags": {}}


def _decode_audit(row: dict[str, Any]) -> None:
    """An audit row's JSON columns decoded, in place. A column that does not hold what a
    writer of the table stores (edited by hand: ``--verify`` says which) reads as empty,
    times that are no finite number as 0, and text that is not text as its repr: a listing of
    a tampered trail still lists."""
    for name, empty in _AUDIT_JSON.items():
        try:
            value = json.loads(row[name]) if row[name] is not None else empty
        except (TypeError, ValueError):
            value = empty
        if empty is not None and type(value) is not type(empty):
            value = empty
        row[name] = value
    for name in ("at",):
        value = row.get(name)
        if not (_is_number(value) and math.isfinite(value) and 0 <= value < 2**33):
            row[name] = 0.0
    for name, value in list(row.items()):
        if isinstance(value, bytes):
            row[name] = repr(value)


#: The ``prev_hash`` of the first audit row.
AUDIT_GENESIS = "0" * 64


# --- redaction ------------------------------------------------------------------------------
# The journal is where a secret given on a command line would stay for good (``runs.argv``, the
# ``audit`` table), so the rules that keep secrets out live here; ``crmmaint.audit`` uses them.

#: What stands in for a secret.
REDACTED = "***"
#: The most characters of one command-line word, flag value or audit detail the journal keeps
#: (an ``--override`` reason of a megabyte is cut, and says so: ``cut_text``).
MAX_TEXT = 500
#: The most characters of an audit row's ``detail`` (it may join several notes).
MAX_DETAIL = 2000

#: Names of flags and ``KEY=value`` keys whose value is a secret (``--password``,
#: ``PGPASSWORD=``, ``api_key=``, ``--token``), matched anywhere in the name.
_SECRET_NAME = re.compile(
    r"pass|pwd|secret|token|api[-_]?key|private|credential|auth|cookie|session|"
    r"(?:^|[-_])(?:pw|key|dsn)$",
    re.IGNORECASE,
)
#: Credentials in a URL: ``scheme://user:password@host``.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^/\s:@]*:)[^/\s@]*(?P<at>@)")
#: ``KEY=value`` (in a word, a query string, a DSN ``password=…``) with a secret-looking key.
_PAIR = re.compile(r"(?P<key>[\w.-]+)(?P<eq>=)(?P<value>[^&;\s]*)")
#: A crmmaint identity (private key) written out in full.
_SECRET_KEY = re.compile(r"CRMMAINT-SECRET-KEY-[\w-]+", re.IGNORECASE)
#: A long flag inside free text and its value: ``--password hunter``, ``--token='a b'``.
_LONG_FLAG = re.compile(
    r"(?<![\w-])(?P<flag>--[A-Za-z][\w.-]*)(?P<sep>=|[ \t]+)"
    r"(?P<value>\"[^\"]*\"?|'[^']*'?|[^\s\"']\S*)"
)
#: An HTTP credential anywhere: ``Bearer`` and whatever follows it; the other schemes
#: (``Basic``, ``Token`` …) only before a credential-like word (a digit, 8+ characters), so
#: that prose (``Basic checks passed``) stays.
_BEARER = re.compile(r"\b(?P<scheme>Bearer)(?P<sep>[ \t:=]+)(?!\*\*\*)[^\s\"',;]+", re.IGNORECASE)
_AUTH_CREDENTIAL = re.compile(
    r"\b(?P<scheme>Basic|Token|Digest|Bot|ApiKey|Negotiate|NTLM)(?P<sep>[ \t:=]+)"
    r"(?=[^\s\"',;]*\d)[A-Za-z0-9+/=._~-]{8,}",
    re.IGNORECASE,
)
#: Passes of the rules over a text at most (each pass's ``***`` may let another rule match).
_REDACT_PASSES = 4


def is_secret_name(name: str) -> bool:
    """Whether a flag or key named ``name`` (``--db-password``, ``PGPASSWORD``) holds a
    secret: by the journal's flag words (``_SECRET_NAME``: also ``auth``, ``session``,
    ``dsn``), or by the rule configuration files are masked by
    (``crmmaint.masking.is_secret_name``); either is enough."""
    from crmmaint.masking import is_secret_name as secret_in_config

    bare = name.lstrip("-")
    return bool(_SECRET_NAME.search(bare)) or secret_in_config(bare)


def cut_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` when it is at most ``limit`` characters, else its start and how much was cut,
    ``limit`` characters in all (so cutting again changes nothing)."""
    if len(text) <= limit:
        return text
    for keep in range(limit, -1, -1):  # the note's length depends on the number in it
        note = f"… [cut: {len(text) - keep} more characters]"
        if keep + len(note) <= limit:
            return text[:keep] + note
    return text[:limit]


def redact_value(text: str) -> str:
    """``text`` with what looks like a secret replaced by ``***``, line by line: the
    password of a URL, the value of a ``KEY=value`` pair, a ``key: value``, a ``key value``
    or a ``--key value``/``--key=value`` whose key looks secret, a ``Bearer`` (``Basic``,
    ``Token`` …) credential, a crmmaint secret key, and whatever
    ``crmmaint.masking.mask_text`` recognises in configuration syntaxes
    (JSON/YAML/INI pairs, tokens and password hashes by their shape). It errs towards masking
    too much: the rest of a line after ``password:`` goes. Idempotent.

    Not recognised: short flags (``-pSECRET``), ``user:pass@host`` without a scheme, a secret
    after a word that does not look secret (``db hunter2``)."""
    from crmmaint.masking import mask_text

    text = str(text)
    for _ in range(_REDACT_PASSES):
        again = _URL_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}{m['at']}", text)
        again = _SECRET_KEY.sub(REDACTED, again)
        again = _PAIR.sub(
            lambda m: f"{m['key']}={REDACTED}" if is_secret_name(m["key"]) else m[0], again
        )
        again = _LONG_FLAG.sub(
            lambda m: f"{m['flag']}{m['sep']}{REDACTED}" if is_secret_name(m["flag"]) else m[0],
            again,
        )
        again = _BEARER.sub(lambda m: f"{m['scheme']}{m['sep']}{REDACTED}", again)
        again = _AUTH_CREDENTIAL.sub(lambda m: f"{m['scheme']}{m['sep']}{REDACTED}", again)
        again = mask_text(again)[0]
        if again == text:
            break
        text = again
    return text


def redact_argv(argv: list[str] | tuple[str, ...]) -> list[str]:
    """A command line as the journal keeps it: the value after a secret flag (``--password
    X``, ``--password=X``) replaced, every word through ``redact_value`` (a ``--flag=value``
    word's value on its own) and cut to ``MAX_TEXT`` characters. Idempotent."""
    out: list[str] = []
    secret_next = False
    for word in argv:
        word = str(word)
        if secret_next:
            out.append(REDACTED)
            secret_next = False
            continue
        if word.startswith("-") and not word.startswith("---"):
            name, eq, value = word.partition("=")
            if is_secret_name(name):
                if eq:
                    out.append(f"{name}={REDACTED}")
                else:
                    out.append(word)
                    secret_next = True
                continue
            if eq and name.startswith("--"):
                out.append(cut_text(f"{name}={redact_value(value)}"))
                continue
        out.append(cut_text(redact_value(word)))
    return out


def redact_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """A command's options as the journal keeps them: a secret one's value replaced, strings
    (and lists of them) through ``redact_value`` and cut to ``MAX_TEXT`` characters."""
    out: dict[str, Any] = {}
    for name, value in flags.items():
        if is_secret_name(name) and value not in (None, False, ""):
            out[name] = REDACTED
        elif isinstance(value, str):
            out[name] = cut_text(redact_value(value))
        elif isinstance(value, list | tuple):
            out[name] = [cut_text(redact_value(v)) if isinstance(v, str) else v for v in value]
        elif value is None or isinstance(value, bool | int | float):
            out[name] = value
        else:
            out[name] = cut_text(redact_value(str(value)))
    return out


def default_journal_path() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("crmmaint")) / "journal.sqlite"


#: The status of a run that Ctrl-C or SIGTERM ended (its steps under way are recorded failed).
INTERRUPTED = "interrupted"
#: The status of a run whose process ended without finishing it (``kill -9``, a power cut),
#: found by a later command on the same machine (``Journal.end_killed_runs``).
KILLED = "killed"


class Journal:
    """A SQLite journal, safe to use from the runner's worker threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        try:
            # It holds output tails and log lines: readable by its owner only (SQLite gives
            # the -wal and -shm files the database file's mode).
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Never open and close a descriptor of a journal that exists: closing any
            # descriptor of a file drops every POSIX lock this process holds on it, those of
            # another open Journal (SQLite's) included, and a second process then writes into
            # a WAL the first believes locked ("disk I/O error"; the scheduler keeps one open
            # while each run's audit rows open their own).
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                if self.path.stat().st_mode & 0o077:
                    os.chmod(self.path, 0o600)
            else:
                os.close(fd)  # new and empty: no lock of anyone's on it yet
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
            added = {"pid": "INTEGER", "pid_started": "INTEGER", "pid_namespace": "TEXT"}
            for column, kind in added.items():  # journals written before they were kept
                if column not in columns:
                    self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(
                f"cannot open journal {self.path}: {exc}",
                hint="check the path and its permissions, or set journal: in the inventory settings",
            ) from exc
        self._lock = threading.Lock()
        #: Rows the last ``verify_audit`` read.
        self.audit_rows_checked = 0

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with self._lock, self._db:
            yield self._db.cursor()

    # --- writing ----------------------------------------------------------------------------

    def start_run(
        self,
        playbook: str,
        *,
        window: str | None = None,
        inventory: str | None = None,
        check: bool = False,
        argv: list[str] | None = None,
    ) -> int:
        self.end_killed_runs()
        me = this_process()
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO runs (playbook, window, inventory, started, check_mode, user, machine,"
                " argv, pid, pid_started, pid_namespace) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    playbook,
                    window,
                    inventory,
                    time.time(),
                    int(check),
                    current_user(),
                    me["machine"],
                    json.dumps(redact_argv(argv or [])),
                    me["pid"],
                    me["pid_started"],
                    me["pid_namespace"],
                ),
            )
            return int(cur.lastrowid or 0)

    def end_killed_runs(self) -> list[int]:
        """Record as ``KILLED`` the unfinished runs of this machine whose process is gone
        (``kill -9``, a power cut, a dropped session): they would show as running for ever.
        Returns their ids. Runs of other machines, and of live processes, are left alone."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, machine, pid, pid_started, pid_namespace FROM runs"
                " WHERE finished IS NULL AND pid IS NOT NULL AND machine = ?",
                (socket.gethostname(),),
            ).fetchall()
        dead = [
            run_id
            for run_id, machine, pid, started, space in rows
            if not still_running(
                {"machine": machine, "pid": pid, "pid_started": started, "pid_namespace": space}
            )
        ]
        if dead:
            with self._tx() as cur:
                cur.executemany(
                    "UPDATE runs SET finished = ?, status = ? WHERE id = ? AND finished IS NULL",
                    [(time.time(), KILLED, run_id) for run_id in dead],
                )
            log.warning(
                "run %s ended without finishing (its process is gone): recorded as %s",
                ", ".join(map(str, dead)),
                KILLED,
            )
        return dead

    def record(
        self,
        run_id: int,
        *,
        step: str,
        task: str,
        target_kind: str,
        target: str,
        host: str | None,
        result: TaskResult,
        started: float,
        duration: float,
        attempts: int = 1,
    ) -> int:
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO results (run_id, step, task, target_kind, target, host, status, message,"
                " details, started, duration, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    step,
                    task,
                    target_kind,
                    target,
                    host,
                    str(result.status),
                    result.message,
                    json.dumps(result.details, default=str),
                    started,
                    duration,
                    attempts,
                ),
            )
            rid = int(cur.lastrowid or 0)
            cur.executemany(
                "INSERT INTO metrics (result_id, name, value) VALUES (?, ?, ?)",
                [(rid, k, float(v)) for k, v in result.metrics.items() if _is_number(v)],
            )
            return rid

    def finish_run(self, run_id: int, status: Status | str) -> None:
        """Record the end of a run: its worst ``Status``, or ``INTERRUPTED`` when Ctrl-C or
        SIGTERM ended it."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE runs SET finished = ?, status = ? WHERE id = ?",
                (time.time(), str(status), run_id),
            )

    def record_audit(self, **row: Any) -> int:
        """Append one row to the audit trail and return its id. ``row`` holds ``AUDIT_FIELDS``
        (missing ones are NULL or empty); JSON columns (``argv``, ``targets``, ``remote_users``,
        ``flags``, ``process``) are given as Python values. ``argv`` and ``flags`` pass through
        ``redact_argv`` and ``redact_flags`` (``crmmaint.audit`` redacts them already:
        redacting again changes nothing); ``detail``, which the caller redacts (its parts:
        ``crmmaint.audit`` redacts an override's reason, not the blackout's name), is cut to
        ``MAX_DETAIL`` characters. Never updates or deletes a row.

        The previous row's hash is read and the new row written in one IMMEDIATE transaction,
        so two processes appending at once still make one chain."""
        unknown = set(row) - set(AUDIT_FIELDS)
        if unknown:
            raise ValueError(f"unknown audit fields: {', '.join(sorted(unknown))}")
        values = {name: row.get(name) for name in AUDIT_FIELDS}
        values["argv"] = redact_argv(values["argv"] or [])
        values["flags"] = redact_flags(values["flags"] or {})
        if values["detail"] is not None:
            values["detail"] = cut_text(str(values["detail"]), MAX_DETAIL)
        values["at"] = float(values["at"] if values["at"] is not None else time.time())
        for name, empty in _AUDIT_JSON.items():
            value = values[name] if values[name] is not None else empty
            values[name] = None if value is None else json.dumps(value, sort_keys=True)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                last = self._db.execute(
                    "SELECT hash FROM audit ORDER BY id DESC LIMIT 1"
                ).fetchone()
                prev = last[0] if last else AUDIT_GENESIS
                digest = audit_digest(prev, values)
                cur = self._db.execute(
                    f"INSERT INTO audit ({', '.join(AUDIT_FIELDS)}, prev_hash, hash)"
                    f" VALUES ({', '.join('?' * (len(AUDIT_FIELDS) + 2))})",
                    [*(values[name] for name in AUDIT_FIELDS), prev, digest],
                )
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise
            return int(cur.lastrowid or 0)

    def audit_rows(self, since: float | None = None) -> list[dict[str, Any]]:
        """The audit trail's rows as stored, oldest first (JSON columns decoded), those at or
        after ``since`` (unix time) when given. ``crmmaint.audit.audit_entries`` joins each
        command's start and end rows."""
        sql, args = "SELECT * FROM audit", []
        if since is not None:
            sql += " WHERE at >= ?"
            args.append(since)
        rows = self._rows(sql + " ORDER BY id", args)
        for row in rows:
            _decode_audit(row)
        return rows

    def audit_ends(self, start_ids: list[int]) -> dict[int, dict[str, Any]]:
        """The end rows of the audit rows ``start_ids`` (start id -> end row, decoded as
        ``audit_rows`` does): an end written after ``since`` of a listing is found by its
        start, wherever the listing's window began."""
        if not start_ids:
            return {}
        found: dict[int, dict[str, Any]] = {}
        for i in range(0, len(start_ids), 500):
            chunk = start_ids[i : i + 500]
            rows = self._rows(
                f"SELECT * FROM audit WHERE phase = 'end' AND start_id IN"
                f" ({', '.join('?' * len(chunk))}) ORDER BY id",
                list(chunk),
            )
            for row in rows:
                _decode_audit(row)
                found.setdefault(row["start_id"], row)
        return found

    def runs_of_this_process(self, since: float) -> list[int]:
        """Ids of the runs this process started at or after ``since`` (unix time), oldest
        first: the audit trail links a command to the run it journaled."""
        me = this_process()
        rows = self._rows(
            "SELECT id FROM runs WHERE machine = ? AND pid = ? AND started >= ? ORDER BY id",
            [me["machine"], me["pid"], since],
        )
        return [int(row["id"]) for row in rows]

    def verify_audit(self) -> list[str]:
        """Check the audit trail's hash chain: one line per problem (a row whose content no
        longer matches its hash, a row missing before another); ``[]`` when intact. Rows
        removed from the end leave no trace: keep copies of the journal (``backup``).
        ``audit_rows_checked`` holds how many rows were read."""
        problems: list[str] = []
        checked = 0
        prev = AUDIT_GENESIS
        with self._lock:
            cur = self._db.execute(
                f"SELECT id, {', '.join(AUDIT_FIELDS)}, prev_hash, hash FROM audit ORDER BY id"
            )
            for found in cur:
                row_id, *fields, prev_hash, digest = found
                values = dict(zip(AUDIT_FIELDS, fields, strict=True))
                if prev_hash != prev:
                    problems.append(
                        f"audit row {row_id}: the row before it is missing or was changed"
                    )
                try:
                    intact = audit_digest(prev_hash, values) == digest
                except (TypeError, ValueError):  # a blob, a value no writer of it stores
                    intact = False
                if not intact:
                    problems.append(f"audit row {row_id}: its content was changed")
                prev = digest
                checked += 1
        self.audit_rows_checked = checked
        return problems

    def state_get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def state_set(self, key: str, value: Any) -> None:
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO state (key, value, updated) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                (key, json.dumps(value), time.time()),
            )

    def state_delete(self, key: str) -> None:
        """Forget ``key`` (nothing happens when it is not there)."""
        with self._tx() as cur:
            cur.execute("DELETE FROM state WHERE key = ?", (key,))

    def state_prefixed(self, prefix: str) -> dict[str, Any]:
        """Every state entry whose key starts with ``prefix``: key -> value."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM state WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
            ).fetchall()
        return {key: json.loads(value) for key, value in rows}

    # --- reading ----------------------------------------------------------------------------

    def runs(self, limit: int = 20, playbook: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` runs (of ``playbook``), newest first: one dict per run with
        the columns of ``runs``; ``argv`` is the command line as a list of strings."""
        self.end_killed_runs()
        sql = "SELECT * FROM runs"
        args: list[Any] = []
        if playbook:
            sql += " WHERE playbook = ?"
            args.append(playbook)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [_run_row(r) for r in self._rows(sql, args)]

    def run(self, run_id: int) -> dict[str, Any] | None:
        """One run as ``runs`` gives it, plus ``results``: its rows with ``details`` decoded
        and ``metrics`` (whole numbers as ints: byte counts stay exact); ``None`` if unknown."""
        self.end_killed_runs()
        rows = self._rows("SELECT * FROM runs WHERE id = ?", [run_id])
        if not rows:
            return None
        run = _run_row(rows[0])
        results = self._rows("SELECT * FROM results WHERE run_id = ? ORDER BY id", [run_id])
        metrics = self._rows(
            "SELECT m.result_id, m.name, m.value FROM metrics m JOIN results r ON r.id = m.result_id"
            " WHERE r.run_id = ?",
            [run_id],
        )
        by_result: dict[int, dict[str, float]] = {}
        for m in metrics:
            by_result.setdefault(m["result_id"], {})[m["name"]] = metric_value(m["value"])
        for r in results:
            r["details"] = json.loads(r["details"] or "{}")
            r["metrics"] = by_result.get(r["id"], {})
        run["results"] = results
        return run

    def task_results(
        self, task: str, *, since: float | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The results of ``task`` (``drill.restore``), newest first: each ``results`` row
        with ``details`` decoded, its ``metrics``, and its run's ``playbook``, ``user``,
        ``machine`` and ``check_mode``; only those started at or after ``since`` (unix
        time), at most ``limit``. Rows of runs in check mode are left out (nothing ran)."""
        sql = (
            "SELECT r.*, u.playbook, u.user, u.machine, u.check_mode FROM results r"
            " JOIN runs u ON u.id = r.run_id WHERE r.task = ? AND u.check_mode = 0"
        )
        args: list[Any] = [task]
        if since is not None:
            sql += " AND r.started >= ?"
            args.append(since)
        sql += " ORDER BY r.id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = self._rows(sql, args)
        if not rows:
            return rows
        metrics = self._rows(
            "SELECT m.result_id, m.name, m.value FROM metrics m JOIN results r"
            " ON r.id = m.result_id WHERE r.task = ? AND r.id >= ?",
            [task, min(r["id"] for r in rows)],
        )
        by_result: dict[int, dict[str, float]] = {}
        for m in metrics:
            by_result.setdefault(m["result_id"], {})[m["name"]] = metric_value(m["value"])
        for r in rows:
            r["details"] = json.loads(r["details"] or "{}")
            r["metrics"] = by_result.get(r["id"], {})
        return rows

    def last_run_id(self) -> int | None:
        row = self._rows("SELECT max(id) AS id FROM runs", [])
        return row[0]["id"] if row else None

    def metric_history(
        self, task: str, target: str, metric: str, since: float | None = None
    ) -> list[tuple[float, float]]:
        """(time, value) pairs of one metric of one task on one target, oldest first."""
        sql = (
            "SELECT r.started AS t, m.value AS v FROM metrics m JOIN results r ON r.id = m.result_id"
            " JOIN runs u ON u.id = r.run_id"
            " WHERE r.task = ? AND r.target = ? AND m.name = ? AND u.check_mode = 0"
        )
        args: list[Any] = [task, target, metric]
        if since is not None:
            sql += " AND r.started >= ?"
            args.append(since)
        sql += " ORDER BY r.started"
        return [(row["t"], row["v"]) for row in self._rows(sql, args)]

    def last_result(
        self, task: str, target: str | None = None, status: str | None = None
    ) -> dict[str, Any] | None:
        """The newest non-check result of a task (optionally on a target, with a status)."""
        sql = "SELECT r.* FROM results r JOIN runs u ON u.id = r.run_id WHERE r.task = ? AND u.check_mode = 0"
        args: list[Any] = [task]
        if target is not None:
            sql += " AND r.target = ?"
            args.append(target)
        if status is not None:
            sql += " AND r.status = ?"
            args.append(status)
        rows = self._rows(sql + " ORDER BY r.id DESC LIMIT 1", args)
        if not rows:
            return None
        rows[0]["details"] = json.loads(rows[0]["details"] or "{}")
        return rows[0]

    def backups_recorded(self, repository_id: str) -> set[str]:
        """Ids of the backups this journal saw committed into the repository whose config id is
        ``repository_id`` (from the details of backup.database / backup.files results), for
        ``verify`` to look for."""
        found: set[str] = set()
        with self._lock:
            rows = self._db.execute(
                "SELECT details FROM results WHERE task IN ('backup.database', 'backup.files') "
                "AND status IN ('changed', 'warning') AND details LIKE ?",
                [f'%"repository_id": {json.dumps(repository_id)}%'],
            ).fetchall()
        for (details,) in rows:
            try:
                doc = json.loads(details or "{}")
            except ValueError:
                continue
            if doc.get("repository_id") == repository_id and isinstance(doc.get("backup"), str):
                found.add(doc["backup"])
        return found

    def _rows(self, sql: str, args: list[Any]) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(sql, args)
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _run_row(row: dict[str, Any]) -> dict[str, Any]:
    """A ``runs`` row for readers: ``argv``, stored as JSON text, decoded to a list of strings
    (redacted: a journal written before ``start_run`` redacted may hold a secret);
    ``check_mode``, stored as 0 or 1, a bool (as ``run --json`` gives it).

    Rows of any journal read the same; a value that is not a JSON list (NULL, or text some
    other writer left) becomes ``[]`` or a one-item list rather than an error."""
    for private in ("pid", "pid_started", "pid_namespace"):  # for end_killed_runs only
        row.pop(private, None)
    text = row.get("argv")
    try:
        argv = json.loads(text) if text else []
    except (TypeError, ValueError):
        argv = [str(text)]
    if not isinstance(argv, list):
        argv = [str(argv)]
    row["argv"] = redact_argv([str(a) for a in argv])  # journals written before it redacted
    if "check_mode" in row:
        row["check_mode"] = bool(row["check_mode"])
    return row


def current_user() -> str:
    """Who runs this command: the user behind sudo (``SUDO_USER``), else the OS user, else
    the uid as text."""
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def audit_digest(prev_hash: str, values: dict[str, Any]) -> str:
    """The SHA-256 (hex) of an audit row: the previous row's hash and the row's
    ``AUDIT_FIELDS`` as stored (JSON columns as their text), as canonical JSON."""
    content = json.dumps(
        [prev_hash, [values.get(name) for name in AUDIT_FIELDS]], separators=(",", ":")
    )
    return hashlib.sha256(content.encode()).hexdigest()


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
