"""The audit trail: who changed what, where, with which flags, and how it ended.

Every command that changes something (``run``, ``backup``, ``restore``, ``prune``, ``drill``,
``baseline accept``, ``repo init``/``unlock``/``repair --apply``, ``keys generate``) and every
blackout override appends to the journal's append-only ``audit`` table (``Journal.record_audit``):

- a **start** row when the command begins to act (it opens its journal, or says so with
  ``AuditTrail.begin``), and an **end** row, linked by ``start_id``, with the outcome when it
  ends, however it ends (an error, Ctrl-C, SIGTERM). A start without an end is a command still
  running or one killed outright (``kill -9``, a power cut); ``audit_entries`` tells which;
- an **event** row for a fact recorded on its own (``record_override``).

Dry runs (``--check``; ``repo repair`` without ``--apply``) change nothing and are not
recorded. A command refused for its configuration (exit 3) once its inventory was read is
recorded as ``refused``; one refused before (a bad flag, an unreadable inventory) is not:
there is no journal yet to record it in.

Who: ``user`` (the OS user crmmaint runs as), ``sudo_user`` (``$SUDO_USER``), ``login_user``
(the terminal's login name when it differs), ``ssh_client`` (the address crmmaint's own SSH
session comes from) and ``remote_users`` (host -> the SSH user crmmaint logs in as there, for
the hosts the command reached). Secrets never appear: ``argv``, flag values and details pass
through ``redact_argv``/``redact_value``.

Typical use from a command (``crmmaint.cli.common.command(audit=...)`` does this itself)::

    with audited(journal_path, "repo init", argv=sys.argv, flags={...}) as trail:
        trail.targets.append("repository:main")
        ...  # the work; the end row gets ok, or the failure's exit code
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crmmaint.journal import (
    MAX_DETAIL,
    MAX_TEXT,
    Journal,
    cut_text,
    redact_argv,
    redact_flags,
    redact_value,
)

# The redaction rules live with the journal, which stores what they keep out; named here too.
from crmmaint.journal import REDACTED as REDACTED
from crmmaint.journal import is_secret_name as is_secret_name
from crmmaint.processes import still_running, this_process

log = logging.getLogger(__name__)

#: The most characters of an override reason kept (the rest is cut, and the detail says so).
MAX_REASON = MAX_TEXT


def override_reason(reason: str) -> str:
    """An override's reason as it is recorded and shown: through ``redact_value`` (``token:
    abc``, ``--password x``, ``Bearer x``, ``postgres://u:x@…`` lose their secret), then cut
    to ``MAX_REASON`` characters, saying how much was cut."""
    return cut_text(redact_value(reason), MAX_REASON)


def who() -> dict[str, str | None]:
    """Who runs this command: ``user`` (the OS user of the process), ``sudo_user``,
    ``login_user`` (only when it differs from ``user``), ``ssh_client`` (the client's
    address when crmmaint runs in an SSH session) and ``machine``."""
    user = _os_user()
    login: str | None
    try:
        login = os.getlogin()
    except OSError:  # no controlling terminal (cron, a service)
        login = os.environ.get("LOGNAME") or None
    ssh = os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_CLIENT") or ""
    return {
        "user": user,
        "sudo_user": os.environ.get("SUDO_USER") or None,
        "login_user": login if login and login != user else None,
        "ssh_client": ssh.split()[0] if ssh.split() else None,
        "machine": socket.gethostname(),
    }


def _os_user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return str(os.getuid())


#: Outcome of a command by its exit code; any other code is ``failed``. ``refused``: a
#: configuration error (3) or a blackout of the schedule (11) stopped it before it acted.
OUTCOMES = {0: "ok", 1: "warning", 3: "refused", 11: "refused", 130: "interrupted"}
#: A start row without an end whose process is gone.
NO_END = "no end recorded (killed?)"
#: A start row without an end whose process still runs.
RUNNING = "running"


def outcome_of(exit_code: int) -> str:
    """``ok``, ``warning``, ``refused`` (nothing was done), ``interrupted``, or ``failed``."""
    return OUTCOMES.get(exit_code, "failed")


@dataclass
class AuditTrail:
    """One command's audit record while it runs: what to write in its start and end rows.

    ``begin(journal_path)`` writes the start row (once); ``end(exit_code)`` the end row. The
    command may add ``targets``, ``remote_users``, ``run_id`` and ``detail`` as it learns
    them: they go into the end row (``targets`` known at ``begin`` also into the start)."""

    command: str
    argv: list[str]
    flags: dict[str, Any]
    targets: list[str] = field(default_factory=list)
    remote_users: dict[str, str] = field(default_factory=dict)
    run_id: int | None = None
    detail: str | None = None
    #: Set by the CLI once it has read an inventory (``None``: the command has none).
    inventory: Any = None
    inventory_read: bool = False
    journal_path: Path | None = None
    start_id: int | None = None
    started: float = field(default_factory=time.time)
    #: The exit code of a block of ``audited`` that ended without an exception but not in
    #: success (a run with warnings: 1); ``None``: 0.
    exit_code: int | None = None
    #: ``detail`` as ``note`` left it, redacted part by part (``end`` redacts any other).
    _noted: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.argv = redact_argv(self.argv)
        self.flags = redact_flags(self.flags)

    def note(self, text: str) -> None:
        """Add ``text``, redacted already, to the end row's ``detail``."""
        self.detail = text if not self.detail else f"{self.detail}; {text}"
        self._noted = self.detail

    def _detail(self) -> str | None:
        """``detail`` as the end row stores it: redacted whole unless ``note`` redacted its
        parts (a blackout named ``token-freeze`` must not hide the reason after it)."""
        if not self.detail:
            return None
        detail = self.detail if self.detail == self._noted else redact_value(self.detail)
        return cut_text(detail, MAX_DETAIL)

    @property
    def begun(self) -> bool:
        return self.start_id is not None

    def begin(self, journal_path: str | Path) -> None:
        """Write the start row into the journal at ``journal_path`` (nothing when already
        begun)."""
        if self.begun:
            return
        self.journal_path = Path(journal_path)
        with Journal(self.journal_path) as journal:
            self.start_id = journal.record_audit(
                phase="start", at=self.started, **self._common(), outcome="started"
            )

    def end(self, exit_code: int) -> None:
        """Write the end row: the outcome of ``exit_code``, and what the command learnt.
        An error writing it is logged, never raised: the command's own result stands."""
        if not self.begun or self.journal_path is None:
            return
        try:
            with Journal(self.journal_path) as journal:
                self._learn_from_run(journal)
                journal.record_audit(
                    phase="end",
                    start_id=self.start_id,
                    at=time.time(),
                    **self._common(),
                    outcome=outcome_of(exit_code),
                    exit_code=exit_code,
                    run_id=self.run_id,
                    detail=self._detail(),
                )
        except Exception as exc:  # a full disk must not turn a done backup into a failure
            log.warning("could not record the end of %s in the audit trail: %s", self.command, exc)

    def _common(self) -> dict[str, Any]:
        return {
            **who(),
            "process": this_process(),
            "command": self.command,
            "argv": self.argv,
            "flags": self.flags,
            "targets": sorted(dict.fromkeys(self.targets)),
            "remote_users": dict(sorted(self.remote_users.items())),
        }

    def _learn_from_run(self, journal: Journal) -> None:
        """The run this command journaled (its id, targets, and the SSH users of their
        hosts), found by this process and the time it started."""
        found = journal.runs_of_this_process(self.started)
        if not found:
            return
        if self.run_id is None:
            self.run_id = found[-1]
        run = journal.run(self.run_id)
        rows = run["results"] if run else []
        for row in rows:
            if row["target"] not in (None, "", "-"):  # "-": a step of the run itself
                self.targets.append(str(row["target"]))
            self._remote_user(row["host"])

    def _remote_user(self, host_name: str | None) -> None:
        hosts = getattr(self.inventory, "hosts", None) or {}
        host = hosts.get(host_name) if host_name else None
        if host is not None and not host.is_local:
            self.remote_users[host.name] = host.user or "(ssh default)"


#: The command being audited in this thread of control (the CLI sets it).
CURRENT: ContextVar[AuditTrail | None] = ContextVar("crmmaint_audit", default=None)


def current_trail() -> AuditTrail | None:
    """The audit record of the command running now, to add ``detail``, ``targets`` or a
    ``run_id`` to; ``None`` outside an audited command (and in a dry run)."""
    return CURRENT.get()


@contextlib.contextmanager
def audited(
    journal_path: str | Path,
    command: str,
    *,
    argv: list[str],
    flags: Mapping[str, Any] | None = None,
    targets: list[str] | None = None,
) -> Iterator[AuditTrail]:
    """Record ``command`` around the block: a start row now, an end row when the block ends
    (``trail.exit_code`` when the block set it, else ``ok``; a ``CrmMaintError`` by its exit
    code, a ``SystemExit``/``invoke.Exit`` by its code; Ctrl-C ``interrupted``; any other
    exception ``failed`` with 70; exceptions re-raised). For code outside the CLI's
    ``@command``: the scheduler's runs."""
    trail = AuditTrail(command, list(argv), dict(flags or {}), targets=list(targets or []))
    trail.begin(journal_path)
    token = CURRENT.set(trail)
    code = 70
    try:
        yield trail
        code = trail.exit_code or 0
    except KeyboardInterrupt:
        code = 130
        raise
    except BaseException as exc:
        found = getattr(exc, "exit_code", getattr(exc, "code", None))
        code = found if isinstance(found, int) else 70
        raise
    finally:
        CURRENT.reset(token)
        trail.end(code)


def record_override(
    journal: Journal,
    *,
    reason: str,
    blackout: str,
    argv: list[str],
    targets: list[str] | None = None,
    command: str = "run",
) -> int:
    """Record that a blackout was overridden (``crmmaint run --override REASON``): one
    ``event`` row, command ``override``, detail ``"blackout BLACKOUT overridden for COMMAND:
    REASON"`` (the reason through ``override_reason``: redacted, cut to ``MAX_REASON``
    characters), outcome ``ok``, linked to the audited command running now (its start row, in ``run_id``'s
    stead: ``detail`` names it). The running command's own end row also carries the detail.
    Returns the row's id."""
    detail = (
        f"blackout {redact_value(blackout)} overridden for {redact_value(command)}:"
        f" {override_reason(reason)}"
    )
    trail = current_trail()
    if trail is not None:
        trail.note(detail)
    return journal.record_audit(
        phase="event",
        start_id=trail.start_id if trail is not None else None,
        **{**who(), "process": this_process()},
        command="override",
        argv=redact_argv(argv),
        targets=sorted(set(targets or [])),
        flags={"blackout": blackout, "command": command},
        outcome="ok",
        exit_code=None,
        detail=detail,
    )


def audit_entries(journal: Journal, since: float | None = None) -> list[dict[str, Any]]:
    """The audit trail as one entry per command or event, oldest first: the start row's
    who/what (``at``: when it started), its end row's ``ended``, ``outcome``, ``exit_code``,
    ``run_id``, ``detail``, and the targets and remote users of both. A start without an end
    has outcome ``running`` (its process is alive) or ``NO_END``. Only entries started at or
    after ``since`` (unix time)."""
    rows = journal.audit_rows(since)
    starts = [r for r in rows if r["phase"] == "start"]
    ends = journal.audit_ends([r["id"] for r in starts])
    entries: list[dict[str, Any]] = []
    for row in rows:
        if row["phase"] == "end":
            continue
        end = ends.get(row["id"]) if row["phase"] == "start" else None
        entry = {
            "id": row["id"],
            "kind": "command" if row["phase"] == "start" else "event",
            "at": row["at"],
            "ended": end["at"] if end else (row["at"] if row["phase"] == "event" else None),
            "user": row["user"],
            "sudo_user": row["sudo_user"],
            "login_user": row["login_user"],
            "ssh_client": row["ssh_client"],
            "machine": row["machine"],
            "command": row["command"],
            "argv": row["argv"],
            "targets": sorted({*row["targets"], *(end["targets"] if end else [])}),
            "remote_users": {**row["remote_users"], **(end["remote_users"] if end else {})},
            "flags": row["flags"],
            "outcome": (end or row)["outcome"],
            "exit_code": (end or row)["exit_code"],
            "run_id": (end or row)["run_id"],
            "detail": (end or row)["detail"],
        }
        if row["phase"] == "start" and end is None:
            alive = isinstance(row["process"], dict) and still_running(row["process"])
            entry["outcome"] = RUNNING if alive else NO_END
        entries.append(entry)
    return entries
