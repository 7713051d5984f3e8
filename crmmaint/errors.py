"""One exception hierarchy for crmmaint.

Every message says what failed, where (file:line, host, object) and what to do. Each class
carries the process exit code the CLI uses when it reaches the top-level handler::

    CrmMaintError                      exit 10
    ├── ConfigError                    exit 3   bad configuration, inventory or flags
    │   ├── InventoryError                      inventory file invalid
    │   └── PlaybookError                       playbook invalid (file:line, step, field)
    ├── TransportError                 exit 4   running a command on a host failed
    │   ├── ConnectError                        cannot reach or log in to a host
    │   ├── HostKeyError                        unknown or changed SSH host key
    │   └── CommandTimeout                      a command exceeded its timeout
    ├── HostError                      exit 2   a check's command on a host failed
    │   ├── ToolMissing                         a program it needs is not installed there
    │   └── ProbeError                          an HTTP request from the runner got no answer
    ├── EngineError                    exit 5   a database or cache refused or failed
    │   └── AccessRefused                       login or privilege refused (never retried)
    ├── RepositoryError                exit 6   backup repository missing, corrupt, inconsistent
    │   ├── BackendError                        storage backend (file, S3, SFTP) failed (retried)
    │   ├── ObjectNotFound                      an object the repository needs is absent
    │   └── LockError                  exit 7   repository locked by another process (retried)
    ├── CryptoError                    exit 8   keys, passphrases, decryption
    │   ├── KeyFileError                        key file missing, malformed, or too open
    │   ├── WrongKeyError                       no identity given can decrypt this backup
    │   └── IntegrityError             exit 9   authentication failed: tampered or truncated
    │       └── UnauthenticatedConfig           a config without its MAC (`repo upgrade`)
    └── RestoreError                   exit 6   restore target unusable (no directory, not absolute)
        └── RestoreTargetExists        exit 6   target exists and no --force (also an EngineError)

"Finished with warnings" is a result (exit 1), and a task that fails is a result too
(``TaskResult.failed``, exit 2 for the run), not an exception.

``retryable`` says whether trying the same thing again a few minutes later can succeed: a
configuration, key, integrity or repository-state error cannot, so the runner does not retry
it; a host, database, storage or lock problem may pass. A raise site that knows better
(a configured source file that does not exist) passes ``retryable=False``.

A message that tells the user to set a task parameter names it with a ``Setting`` (passed in
``settings=``): ``str(exc)`` spells it as a playbook step does (`` `force: true` ``), and
``exc.text(flags)`` as the command line does (``--force``) for a one-step command such as
``crmmaint restore``, whose runner knows which flag gave which parameter.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: Exit code of a failure that is a bug in crmmaint rather than bad input (BSD's EX_SOFTWARE);
#: the CLI exits with it and the runner records it for a task that crashed.
INTERNAL_ERROR_EXIT = 70


@dataclass(frozen=True)
class Setting:
    """A task parameter set to ``value``, as a message tells the user to set it: ``str()`` is
    the playbook spelling (`` `force: true` ``, `` `keep_daily: 7` ``), ``as_flag`` the
    command-line one (``--force``, ``--keep-daily 7``)."""

    param: str
    value: Any = True

    def __str__(self) -> str:
        shown = json.dumps(self.value) if isinstance(self.value, bool) else self.value
        return f"`{self.param}: {shown}`"

    def as_flag(self, flag: str) -> str:
        """``flag`` with the value: the flag alone for ``True`` (a switch)."""
        return flag if self.value is True else f"{flag} {self.value}"


class CrmMaintError(Exception):
    """Root of every error crmmaint raises on purpose.

    ``settings``: the ``Setting`` s that ``message`` and ``hint`` name (in their playbook
    spelling, ``str(setting)``), so that ``text(flags)`` can name them as flags instead."""

    exit_code = 10
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        retryable: bool | None = None,
        settings: Iterable[Setting] = (),
    ) -> None:
        self.message = message
        self.hint = hint
        self.settings = tuple(settings)
        if retryable is not None:
            self.retryable = retryable
        super().__init__(message if hint is None else f"{message} ({hint})")

    def text(self, flags: Mapping[str, str] | None = None) -> str:
        """The message and hint, each parameter in ``settings`` named by its flag in ``flags``
        (parameter name -> ``--flag``; a parameter without one keeps its playbook spelling)."""
        out = str(self)
        for setting in self.settings:
            flag = (flags or {}).get(setting.param)
            if flag is not None:
                out = out.replace(str(setting), setting.as_flag(flag))
        return out

    def within(self, context: str) -> CrmMaintError:
        """The same error (class, hint, exit code, retryability) with ``context`` before its
        message: an engine saying where a transport failure happened keeps it a transport
        failure (exit 4), never turns it into a database one."""
        other = copy.copy(self)
        other.message = f"{context}: {self.message}"
        other.args = (other.message if other.hint is None else f"{other.message} ({other.hint})",)
        return other


class ConfigError(CrmMaintError):
    exit_code = 3
    retryable = False


class InventoryError(ConfigError):
    pass


class PlaybookError(ConfigError):
    """A playbook failed validation; raised before anything runs."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        step: str | None = None,
        field: str | None = None,
        hint: str | None = None,
        more: int = 0,
    ) -> None:
        """``message`` is the problem alone (kept as ``reason``); the error's text puts the
        file, line, step and field before it, and ``more`` (problems found after this one in
        the same playbook) after the hint."""
        self.file, self.line, self.step, self.field = file, line, step, field
        self.reason, self.reason_hint, self.more = message, hint, more
        if more:
            hint = "; ".join(
                h
                for h in (hint, f"{more} more problem{'' if more == 1 else 's'} in this file")
                if h
            )
        where = ""
        if file is not None:
            where = f"{file}:{line}" if line is not None else file
        parts = [
            p
            for p in (where, f"step {step!r}" if step else "", f"field {field!r}" if field else "")
            if p
        ]
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message, hint=hint)


class TransportError(CrmMaintError):
    exit_code = 4


class ConnectError(TransportError):
    pass


class HostKeyError(TransportError):
    retryable = False


class CommandTimeout(TransportError):
    pass


class BlackoutError(CrmMaintError):
    """A run was refused because a blackout of the inventory's schedule is in force (the
    quarter-end close, a release freeze): nothing ran. ``--override "reason"`` runs it
    anyway and records who and why; ``--check`` is never blocked."""

    exit_code = 11


class HostError(CrmMaintError):
    """A command on a host failed, or its output could not be read (``engines.host``), or a
    request from the runner got no answer (``ProbeError``); the message says which. A check's
    failure: exit 2, as a failed target."""

    exit_code = 2


class ToolMissing(HostError):
    """A program a check needs is not installed on the host (its command exited 127)."""


class ProbeError(HostError):
    """An HTTP request made from the runner (``engines.http_probe``) got no answer: refused,
    unreachable, timed out. A ``HostError`` because it is the same failure as curl's on the
    host: ``health.http`` reports it alike (exit 2) wherever the request was made from."""


class EngineError(CrmMaintError):
    exit_code = 5


class AccessRefused(EngineError):
    """The server refused the login (wrong password, unknown or locked user) or a privilege
    the work needs (SELECT on a table): the same again is refused again, so never retried."""

    retryable = False


class RepositoryError(CrmMaintError):
    exit_code = 6
    retryable = False


class BackendError(RepositoryError):
    retryable = True


def os_reason(exc: OSError) -> str:
    """An ``OSError`` as a message says it: ``"no space left on device"``, without Python's
    ``[Errno 28]`` and the path."""
    reason = exc.strerror or str(exc)
    return reason[:1].lower() + reason[1:]  # "larger than 16 MiB" keeps its unit


#: Set once crmmaint has said that its output cannot be written (a run's report lost to
#: ``> /dev/full`` or ``>&-``): whatever else fails to be written is not said again.
OUTPUT_LOSS_SAID = threading.Event()


class OutputWriteError(Exception):
    """Writing crmmaint's own output (stdout) failed: no space, an I/O error. Not a
    ``CrmMaintError``: the command line ends with exit 74 (``cli.common.OUTPUT_ERROR``), and a
    run goes on without its report. ``errno_error`` is the ``OSError``."""

    def __init__(self, errno_error: OSError) -> None:
        super().__init__(str(errno_error))
        self.errno_error = errno_error


class RepositoryMissing(BackendError):
    """The repository's location (a directory, an SFTP path, an S3 bucket) does not exist:
    looking again finds it missing again, so it is never retried (exit 6)."""

    retryable = False


class ObjectNotFound(RepositoryError):
    pass


class LockError(RepositoryError):
    exit_code = 7
    retryable = True


class CryptoError(CrmMaintError):
    exit_code = 8
    retryable = False


class KeyFileError(CryptoError):
    pass


class WrongKeyError(CryptoError):
    pass


class IntegrityError(CryptoError):
    exit_code = 9


class UnauthenticatedConfig(IntegrityError):
    """A repository config without its MAC (older, or stripped): ``repo upgrade`` decides."""


class RestoreError(CrmMaintError):
    exit_code = 6
    retryable = False


class RestoreSourceRefused(RestoreError, EngineError):
    """The restore target is the backup's source itself (its database, file or paths), refused
    even with ``force``. Also an ``EngineError`` (the engine found it); exit code 6."""

    exit_code = 6
    retryable = False


#: The restore parameter that replaces an existing target: ``--force`` on the command line.
FORCE = Setting("force")


class RestoreTargetExists(RestoreError, EngineError):
    """The restore target exists and ``force`` was not given. Also an ``EngineError`` (the
    engine found it), so code that catches either sees it; its exit code is the restore's.
    Its hint names ``FORCE`` (a setting of every such error)."""

    exit_code = 6
    retryable = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, settings=(FORCE,))
