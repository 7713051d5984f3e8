"""``crmmaint scheduler``: runs the estate's playbooks in their maintenance windows.

Each tick (every ``TICK`` seconds, on ``schedule``'s clock; once with ``--once``) the
scheduler asks the calendar (``schedule/calendar.py``, pure) what each window wants now:
``run`` (its window is open and it has not run in it), ``catch-up`` (slots were missed while
no scheduler ran: ``run-once`` runs it once now, ``skip`` records the miss), ``blocked`` (a
blackout), or ``wait``. Every decision other than ``wait`` is logged and kept in the
journal (``decisions``).

Overlap: one estate never has two scheduled playbooks running at once, also with several
machines running a scheduler for failover. The lock lives where the estate's machines already
share state: the default repository's backend (a file path, SFTP or S3 bucket), under its own
``scheduler/`` prefix, with the repository lock's two-phase acquire, heartbeat and stale
takeover (``repository/lock.py``); when the inventory has no repository, a file lock beside
the journal, which guards this machine only (said at start). The last start of each window is
kept in the same store (``scheduler/last/<window>``), so a scheduler taking over after
another machine's downtime knows what already ran. A playbook's run deadline is its window's
end (``Decision.ends``): no step starts after it.

SIGTERM or SIGINT ends the run under way as ``crmmaint run`` does (commands killed, the run
journaled ``interrupted`` with the steps cut short), releases the lock and exits 130.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from crmmaint.errors import CrmMaintError, LockError, ObjectNotFound
from crmmaint.interrupts import STOPPING
from crmmaint.schedule import calendar
from crmmaint.schedule.plan import EstateSchedule, schedule_of

if TYPE_CHECKING:
    from crmmaint.inventory import Inventory
    from crmmaint.journal import Journal
    from crmmaint.repository.backends.base import Backend

log = logging.getLogger(__name__)

#: Seconds between ticks: a window starts at most this late.
TICK = 30.0
#: Decisions kept in the journal (``scheduler:decisions``), newest last.
KEPT_DECISIONS = 500
#: Heartbeat of the overlap lock (seconds); a holder silent for 5 heartbeats is stale.
LOCK_HEARTBEAT = 30.0
LAST_PREFIX = "scheduler/last/"


class Coordination(Protocol):
    """Where schedulers of one estate meet: the overlap lock and each window's last start."""

    where: str

    def lock(self) -> contextlib.AbstractContextManager[Any]:
        """Hold the estate's overlap lock (``LockError`` at once if another holds it)."""
        ...

    def last_start(self, window: str) -> datetime | None:
        """When a scheduler last started ``window``'s playbook (aware), if ever."""
        ...

    def set_last_start(self, window: str, when: datetime) -> None: ...


class RepositoryCoordination:
    """The overlap lock and last starts in a repository backend (shared by every machine that
    reaches the repository), beside but apart from the repository's own locks."""

    def __init__(self, backend: Backend, owner: str) -> None:
        self.backend = backend
        self.owner = owner
        self.where = f"repository {backend.url}"

    @contextlib.contextmanager
    def lock(self) -> Iterator[Any]:
        from crmmaint.repository.lock import SCHEDULER_PREFIX, RepositoryLock

        held = RepositoryLock(
            self.backend,
            exclusive=True,
            owner=self.owner,
            timeout=0,
            heartbeat=LOCK_HEARTBEAT,
            prefix=SCHEDULER_PREFIX + "lock/",
        )
        with held:
            yield held

    def last_start(self, window: str) -> datetime | None:
        try:
            raw = json.loads(self.backend.load(LAST_PREFIX + _object_name(window)))
            return datetime.fromtimestamp(float(raw["started"]), UTC)
        except (ObjectNotFound, ValueError, KeyError, TypeError):
            return None

    def set_last_start(self, window: str, when: datetime) -> None:
        record = {"window": window, "started": when.timestamp(), "by": self.owner}
        self.backend.store(LAST_PREFIX + _object_name(window), json.dumps(record).encode())


class LocalCoordination:
    """The overlap lock as a file lock (``flock``) beside the journal and last starts in the
    journal: for an inventory without a repository. It keeps schedulers on this machine
    apart, not those of other machines."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.path = Path(str(journal.path) + ".scheduler.lock")
        self.where = f"file {self.path} (this machine only)"

    @contextlib.contextmanager
    def lock(self) -> Iterator[Any]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockError(f"another scheduler holds {self.path}") from None
            yield fd
        finally:
            os.close(fd)

    def last_start(self, window: str) -> datetime | None:
        value = self.journal.state_get(f"scheduler:last:{window}")
        return None if value is None else datetime.fromtimestamp(float(value), UTC)

    def set_last_start(self, window: str, when: datetime) -> None:
        self.journal.state_set(f"scheduler:last:{window}", when.timestamp())


def _object_name(window: str) -> str:
    """A window's name as an object name: its bytes in hex (any name, no path tricks)."""
    return window.encode().hex()


@dataclass(frozen=True)
class Outcome:
    """What a tick did with one decision: the run's id and exit code when it ran."""

    decision: calendar.Decision
    run_id: int | None = None
    exit_code: int | None = None
    note: str = ""


#: Runs ``window``'s playbook with the run deadline ``ends``: returns (run id, exit code).
RunWindow = Callable[[calendar.Window, datetime | None], tuple[int | None, int]]


class Scheduler:
    """Decides and runs what the estate's windows want; ``tick`` once, or ``serve``."""

    def __init__(
        self,
        inventory: Inventory,
        journal: Journal,
        coordination: Coordination,
        run_window: RunWindow,
        *,
        check: bool = False,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.inventory = inventory
        self.journal = journal
        self.coordination = coordination
        self.run_window = run_window
        self.check = check
        #: Where each decision is said as one line (the CLI: stderr, so journald has it).
        self.say = say
        self.plan: EstateSchedule = schedule_of(inventory)
        #: The last decision said for each window: the same one again (a blackout, a held
        #: lock, tick after tick) is neither said nor kept again.
        self._said: dict[str, tuple[Any, ...]] = {}

    def decide(self, now: datetime) -> list[calendar.Decision]:
        """What each window wants at aware ``now`` (its last start read from the store)."""
        return [
            calendar.decide(w, now, self.coordination.last_start(w.name), self.plan.blackouts)
            for w in self.plan.windows
        ]

    def tick(self, now: datetime | None = None) -> list[Outcome]:
        """Evaluate every window at ``now`` (default: the clock) and run what is due, one
        playbook at a time under the estate's overlap lock. A lock another scheduler holds
        is no error: the tick runs nothing and says so (that scheduler is at work)."""
        now = now or datetime.now(UTC)
        decisions = self.decide(now)
        outcomes: list[Outcome] = []
        due = [d for d in decisions if d.action in ("run", "catch-up")]
        for d in decisions:
            if d.action in ("skip", "blocked"):
                outcomes.append(self._record(Outcome(d)))
            if d.action == "skip" and d.slot is not None and not self.check:
                # Dealt with: the next tick waits for the next slot instead of counting
                # the same misses again (and one more each day).
                self.coordination.set_last_start(d.window.name, d.slot)
        if not due:
            return outcomes
        if self.check:
            return outcomes + [self._record(Outcome(d, note="check mode: not run")) for d in due]
        try:
            with self.coordination.lock():
                for d in due:
                    if STOPPING.is_set():
                        break
                    outcomes.append(self._run(d, now))
        except LockError as exc:
            note = f"not run: another scheduler holds the estate's lock ({exc})"
            outcomes += [self._record(Outcome(d, note=note)) for d in due]
        return outcomes

    def _run(self, d: calendar.Decision, now: datetime) -> Outcome:
        # Under the lock, again: another scheduler may have run it since we looked.
        last = self.coordination.last_start(d.window.name)
        again = calendar.decide(d.window, now, last, self.plan.blackouts)
        if again.action not in ("run", "catch-up"):
            return self._record(Outcome(again, note="already run by another scheduler"))
        # The tick's moment, not the clock's: a tick evaluated at an injected time
        # (``--once --at``) records its runs at that time, so the next tick judges alike.
        self.coordination.set_last_start(d.window.name, now)
        self._record(Outcome(again, note="starting"))
        try:
            run_id, code = self.run_window(d.window, again.ends)
        except KeyboardInterrupt:
            self._record(Outcome(again, note="interrupted (SIGTERM or SIGINT)"))
            raise
        except CrmMaintError as exc:  # one window's failure is not the scheduler's end
            note = f"failed: {exc}"
            return self._record(Outcome(again, None, exc.exit_code, note=note))
        return self._record(Outcome(again, run_id, code, note=f"ended with exit code {code}"))

    def _record(self, outcome: Outcome) -> Outcome:
        d = outcome.decision
        said = (d.action, d.slot, outcome.note.split(" (")[0], outcome.run_id)
        if self._said.get(d.window.name) == said:
            return outcome
        self._said[d.window.name] = said
        entry = {
            "at": time.time(),
            "window": d.window.name,
            "playbook": d.window.playbook,
            "action": d.action,
            "slot": d.slot.timestamp() if d.slot else None,
            "ends": d.ends.timestamp() if d.ends else None,
            "missed": d.missed,
            "reason": d.reason,
            "note": outcome.note,
            "run_id": outcome.run_id,
            "exit_code": outcome.exit_code,
            "check": self.check,
        }
        kept = list(self.journal.state_get("scheduler:decisions") or [])
        self.journal.state_set("scheduler:decisions", [*kept, entry][-KEPT_DECISIONS:])
        line = f"scheduler: {d.action} {d.window.name}: {d.reason}" + (
            f" ({outcome.note})" if outcome.note else ""
        )
        log.info("%s", line)
        if self.say is not None:
            self.say(line)
        return outcome

    def serve(self, interval: float = TICK) -> None:
        """Tick every ``interval`` seconds until SIGTERM/SIGINT (``KeyboardInterrupt``), with
        ``schedule`` as the ticker; the first tick is at once."""
        import schedule

        ticker = schedule.Scheduler()
        ticker.every(interval).seconds.do(self.tick)
        self.tick()
        while not STOPPING.is_set():
            ticker.run_pending()
            idle = ticker.idle_seconds
            STOPPING.wait(max(0.5, min(interval, idle if idle is not None else interval)))
        raise KeyboardInterrupt
