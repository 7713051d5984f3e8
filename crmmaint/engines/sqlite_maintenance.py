"""SQLite maintenance: ``PRAGMA quick_check`` first (a damaged file is reported and never
rewritten), then ``ANALYZE`` and ``PRAGMA optimize``, and ``VACUUM`` when the free list holds
a large share of the file's pages and the disk has room for the copy VACUUM writes.

VACUUM rebuilds the whole file and holds the database's write lock throughout (readers go on
in WAL mode, not in rollback-journal mode); it needs free space for a copy of the database
and its journal, about twice the file (https://sqlite.org/lang_vacuum.html), which is
checked first. ``busy_timeout`` is the policy's ``lock_timeout``.
"""

from __future__ import annotations

import logging
import posixpath
from typing import TYPE_CHECKING

from crmmaint.engines.host import HostError, HostOS
from crmmaint.engines.maintenance import (
    Action,
    Finding,
    MaintenancePolicy,
    Outcome,
    Survey,
    TableMaintenance,
)
from crmmaint.units import format_size

if TYPE_CHECKING:
    from crmmaint.engines.sqlite import SQLiteEngine

log = logging.getLogger(__name__)

#: Free disk VACUUM needs, as a multiple of the database file (the copy and its journal).
VACUUM_ROOM = 2.0
_PAGES_SQL = "PRAGMA page_count; PRAGMA page_size; PRAGMA freelist_count; PRAGMA journal_mode;"


def _busy(seconds: float) -> str:
    """The shell's ``.timeout``: how long a statement waits for another process's lock."""
    return f".timeout {max(1, int(seconds * 1000))}\n" if seconds else ""


class SQLiteMaintenance(TableMaintenance):
    """``TableMaintenance`` of one SQLite file through its engine's shell."""

    #: VACUUM writes the whole file again; ANALYZE reads every index.
    default_rates = {"vacuum_file": 30e6, "analyze": 60e6}

    def __init__(self, engine: SQLiteEngine) -> None:
        self.engine = engine

    def _pages(self, timeout: float, busy: float = 0.0) -> tuple[int, int, int, str]:
        rows = self.engine.query(_busy(busy) + _PAGES_SQL, timeout=timeout)
        (pages,), (page_size,), (free,), (journal,) = rows
        return int(pages), int(page_size), int(free), journal

    def survey(self, policy: MaintenancePolicy, *, timeout: float) -> Survey:
        survey = Survey(method="free pages from PRAGMA freelist_count")
        busy = _busy(policy.lock_timeout)
        check = self.engine.query(busy + "PRAGMA quick_check;", timeout=timeout)
        if check != [("ok",)]:
            detail = "; ".join(row[0] for row in check[:3])[:200]
            survey.findings.append(Finding("integrity", self.engine.path, f"quick_check: {detail}"))
            return survey  # a damaged file is not rewritten
        survey.notes.append("quick_check: ok")
        pages, page_size, free, journal = self._pages(timeout, policy.lock_timeout)
        size = pages * page_size
        tables = self.engine.tables(timeout=timeout)
        survey.objects = {"tables": len(tables)}
        if policy.analyze:
            survey.actions.append(
                Action(
                    kind="analyze",
                    object=self.engine.path,
                    reason="statistics for the query planner (ANALYZE, then PRAGMA optimize)",
                    size=0,
                    work=size,
                    statement="ANALYZE; PRAGMA optimize",
                    locks="writers wait while it reads (a few seconds per GB)",
                )
            )
        share = free / pages if pages else 0.0
        if size >= policy.min_size and share >= policy.free_space_threshold:
            reason = f"{share:.0%} of its pages free ({format_size(free * page_size)})"
            room = self._room(size, timeout)
            if room is not None:
                survey.notes.append(f"VACUUM not run although {reason}: {room}")
            else:
                survey.actions.append(
                    Action(
                        kind="vacuum_file",
                        object=self.engine.path,
                        reason=reason,
                        size=size,
                        work=size,
                        statement="VACUUM",
                        locks="writers wait until it ends"
                        + ("" if journal.lower() == "wal" else ", and readers too"),
                    )
                )
        return survey

    def _room(self, size: int, timeout: float) -> str | None:
        """Why the disk cannot take VACUUM's copy of a ``size``-byte file, or ``None``."""
        directory = posixpath.dirname(self.engine.path) or "."
        try:
            free, mount = HostOS(self.engine.transport).free_bytes(directory, timeout=timeout)
        except (HostError, ValueError) as exc:
            return f"free space of {directory} unknown ({exc})"
        if free < size * VACUUM_ROOM:
            return (
                f"{format_size(free)} free on {mount}, it needs about"
                f" {format_size(int(size * VACUUM_ROOM))}"
            )
        return None

    def perform(self, action: Action, policy: MaintenancePolicy, *, timeout: float) -> Outcome:
        pages, page_size, _, _ = self._pages(timeout, policy.lock_timeout)
        before = pages * page_size
        # .timeout is the shell's busy_timeout; the pragma alone prints its value
        self.engine.query(f"{_busy(policy.lock_timeout)}{action.statement};\n", timeout=timeout)
        pages, page_size, _, _ = self._pages(timeout, policy.lock_timeout)
        return Outcome(before, pages * page_size)
