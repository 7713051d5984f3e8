"""Index and table maintenance as data: what a survey of a database found, what it proposes
to do, and what one piece of that work did. The engines fill these in (their SQL lives beside
them: ``postgresql/maintenance.py``, ``mysql_maintenance.py``, ``sqlite.py``); the
``indexes.optimize`` task decides what fits the run's deadline and reports.

A survey only reads. Every ``Action`` is one statement the engine runs on its own (one index
rebuilt, one table vacuumed), bounded by the policy's ``lock_timeout`` and a statement timeout,
so one failure (a lock that was not granted in time) costs that action only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MaintenancePolicy:
    """The thresholds and limits of one ``indexes.optimize`` call (the task's parameters).

    Shares are fractions (0.3 = 30%), sizes bytes, times seconds. The defaults and where they
    come from are in docs/tasks.md (``indexes.optimize``).
    """

    #: Rebuild an index when at least this share of it is wasted space.
    bloat_threshold: float = 0.3
    #: Indexes (and tables, for OPTIMIZE/VACUUM of a file) smaller than this are left alone.
    min_size: int = 8 << 20
    #: ``VACUUM (ANALYZE)`` a PostgreSQL table when this share of its tuples is dead
    #: (autovacuum's default ``autovacuum_vacuum_scale_factor``, 0.2).
    dead_tuple_threshold: float = 0.2
    #: ``OPTIMIZE TABLE`` (MariaDB) or ``VACUUM`` (SQLite) when this share of the space is free.
    free_space_threshold: float = 0.2
    #: Longest wait for a lock, per statement: past it, that statement fails and the CRM's
    #: sessions queued behind it go on.
    lock_timeout: float = 5.0
    #: Longest any one statement may run (the task lowers it to the time left in the run).
    statement_timeout: float = 3600.0
    #: Whether to change anything at all: ``False`` surveys and reports only.
    rebuild: bool = True
    #: Whether to run ANALYZE / ``PRAGMA optimize`` (cheap, always worth it).
    analyze: bool = True


@dataclass(frozen=True)
class Finding:
    """Something a survey reports and never changes: a duplicate, redundant or unused index
    (``kind``: ``duplicate``, ``redundant``, ``unused``, ``integrity``), ``object`` its
    qualified name, ``detail`` one line for people, ``size`` bytes where it has one."""

    kind: str
    object: str
    detail: str
    size: int = 0

    def as_data(self) -> dict[str, Any]:
        return {"kind": self.kind, "object": self.object, "detail": self.detail, "size": self.size}


@dataclass(frozen=True)
class Action:
    """One statement a survey proposes: ``kind`` (``reindex``, ``drop_leftover``, ``vacuum``,
    ``analyze``, ``optimize``, ``pragma_optimize``, ``vacuum_file``), on ``object`` (a
    qualified name), because of ``reason`` (one line with the figure that decided it).

    ``size`` is the object's size now (bytes; what a rebuild may reclaim is measured against
    it), ``work`` the bytes the statement must read or write (what a duration estimate scales
    with), ``locks`` what the CRM cannot do meanwhile (``""``: nothing it would notice), and
    ``statement`` the SQL (for check mode's report and the engine's ``perform``)."""

    kind: str
    object: str
    reason: str
    size: int
    work: int
    statement: str
    locks: str = ""
    #: Engine-private facts ``perform`` needs (a table's name, the index's table).
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def operation(self) -> str:
        """The name its past durations are kept under (``reindex:public.deals_pkey``)."""
        return f"{self.kind}:{self.object}"

    def as_data(self) -> dict[str, Any]:
        out = {"kind": self.kind, "object": self.object, "reason": self.reason}
        out |= {"size": self.size, "statement": self.statement}
        return out | ({"locks": self.locks} if self.locks else {})


@dataclass
class Survey:
    """What a survey saw: ``actions`` to take in order, ``findings`` to report, ``objects``
    looked at (indexes and tables, by kind), and ``method`` (how bloat was measured:
    ``pgstattuple``, ``estimate from the catalog statistics``, or the engine's own figure)."""

    method: str
    actions: list[Action] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    objects: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    """What one performed ``Action`` did: the object's size before and after (bytes;
    ``after`` ``None`` when it has no size now, as a dropped leftover), and a note
    (the server's own words where it said something, e.g. MariaDB's OPTIMIZE message)."""

    before: int
    after: int | None
    note: str = ""

    @property
    def reclaimed(self) -> int:
        """Bytes the action freed (never negative: a rebuild may grow a packed index)."""
        return max(0, self.before - (self.after or 0))


class TableMaintenance(ABC):
    """An engine's index and table maintenance: ``survey`` reads and proposes, ``perform``
    runs one proposed action. Raises ``EngineError`` (a failed statement names its object)."""

    @abstractmethod
    def survey(self, policy: MaintenancePolicy, *, timeout: float) -> Survey:
        """Look at every index and table of the database (read only; ``timeout`` seconds)."""

    @abstractmethod
    def perform(self, action: Action, policy: MaintenancePolicy, *, timeout: float) -> Outcome:
        """Run ``action`` under ``policy.lock_timeout`` and a statement timeout of at most
        ``timeout`` seconds; clean up what a failed one left (a ``_ccnew`` index)."""

    #: Bytes per second one kind of action is assumed to process when no past run of it is
    #: recorded (``TaskContext.estimate``); conservative, from rebuilds on a 2-core test VM.
    default_rates: dict[str, float] = {}
