"""Task results as data: the runner, journal and reports consume only these."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crmmaint.errors import CrmMaintError


class Status(enum.StrEnum):
    OK = "ok"
    CHANGED = "changed"
    WARNING = "warning"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def severity(self) -> int:
        """Order for "worst of": skipped < ok < changed < warning < failed."""
        return _SEVERITY[self]


#: How the message of a step or target the run's deadline kept from starting begins (a
#: warning: the work its window was for did not run).
NOT_STARTED = "not started: "

_SEVERITY = {
    Status.SKIPPED: 0,
    Status.OK: 1,
    Status.CHANGED: 2,
    Status.WARNING: 3,
    Status.FAILED: 4,
}


@dataclass
class TaskResult:
    """What one task did on one target.

    ``metrics`` are numbers (journal and monitoring graph them); ``details`` is any JSON-able data
    a report may show. Neither may contain secrets. ``retryable`` (failures only) is False when
    another attempt cannot succeed (a configuration, key or integrity error): the runner then
    spends no retry on it.
    """

    status: Status
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    retryable: bool = True

    @classmethod
    def ok(cls, message: str = "", **kw: Any) -> TaskResult:
        return cls(Status.OK, message, **kw)

    @classmethod
    def changed(cls, message: str = "", **kw: Any) -> TaskResult:
        return cls(Status.CHANGED, message, **kw)

    @classmethod
    def warning(cls, message: str = "", **kw: Any) -> TaskResult:
        return cls(Status.WARNING, message, **kw)

    @classmethod
    def failed(cls, message: str = "", **kw: Any) -> TaskResult:
        return cls(Status.FAILED, message, **kw)

    @classmethod
    def skipped(cls, message: str = "", **kw: Any) -> TaskResult:
        return cls(Status.SKIPPED, message, **kw)

    @classmethod
    def from_error(cls, exc: CrmMaintError, context: str | None = None, **kw: Any) -> TaskResult:
        """The failure of a task that caught ``exc``: its message with its hint (what to do,
        e.g. the ``ssh-keyscan`` line of an unknown host key) after ``context``, its class and
        exit code in ``details`` (merged with ``details=``), retried only if it may pass."""
        details = {**kw.pop("details", {}), "error": type(exc).__name__}
        details["exit_code"] = exc.exit_code
        text = str(exc)
        said = context is None or text.startswith(f"{context}: ")  # the error names it already
        message = text if said else f"{context}: {text}"
        return cls(Status.FAILED, message, details=details, retryable=exc.retryable, **kw)


def worst(statuses: list[Status]) -> Status:
    """The most severe status of a list; ``ok`` for an empty list."""
    return max(statuses, key=lambda s: s.severity, default=Status.OK)
