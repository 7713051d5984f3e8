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
takeover (``repository/lock.py``); when the inventory has no repository, the same in a
directory beside the inventory (``.crmmaint-scheduler/``), which guards this machine only
(said at start). The last start of each window is
kept in the same store (``scheduler/last/<window>``), so a scheduler taking over after
another machine's downtime knows what already ran. A playbook's run deadline is its window's
end (``Decision.ends``): no step starts after it.

SIGTERM or SIGINT ends the run under way as ``crmmaint run`` does (commands killed, the run
journaled ``interrupted`` with the steps cut short), releases the lock and exits 130.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from crmmaint.errors import CrmMaintError, LockError, ObjectNotFound
from crmmaint.interrupts import STOPPING
from crmmaint.repository.lock import SCHEDULER_LOCKS_PREFIX, SCHEDULER_PREFIX
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
LAST_PREFIX = SCHEDULER_PREFIX + "last/"


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
        from crmmaint.repository.lock import RepositoryLock

        held = RepositoryLock(
            self.backend,
            exclusive=True,
            owner=self.owner,
            timeout=0,
            heartbeat=LOCK_HEARTBEAT,
            prefix=SCHEDULER_LOCKS_PREFIX,
        )
        with held:
            yield held

    def last_start(self, window: str) -> datetime | None:
        try:
            raw = json.loads(self.backend.load(LAST_PREFIX + _object_name(window)))
            started = raw["started"]
        except ObjectNotFound:
            return None
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: [[[[…
            log.warning("scheduler: the last start of %r in %s is unreadable: ignored", window,
                        self.where)  # fmt: skip
            return None
        return plausible_start(started, window, self.where)

    def set_last_start(self, window: str, when: datetime) -> None:
        record = {"window": window, "started": when.timestamp(), "by": self.owner}
        self.backend.store(LAST_PREFIX + _object_name(window), json.dumps(record).encode())


#: How far ahead of this machine's clock a recorded last start may be (seconds): clocks of
#: two scheduler machines differ by seconds, not a day.
CLOCK_SKEW = 86400.0


def plausible_start(value: Any, window: str, where: str) -> datetime | None:
    """A recorded last start (seconds since the epoch) as a datetime, or ``None`` (logged)
    when it is no number, not finite, before 2000 or more than ``CLOCK_SKEW`` ahead: a
    damaged or planted record must neither crash the scheduler nor hold a window off."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    try:
        if ok and math.isfinite(value) and 946684800 <= value <= time.time() + CLOCK_SKEW:
            return datetime.fromtimestamp(float(value), UTC)
    except (OverflowError, ValueError):  # an integer beyond any float
        pass
    log.warning("scheduler: the last start of %r in %s is not plausible (%.40r): ignored",
                window, where, value)  # fmt: skip
    return None


def _object_name(window: str) -> str:
    """A window's name as an object name: the SHA-256 of its bytes in hex (any name, any
    length, no path tricks; the record itself holds the name)."""
    return hashlib.sha256(window.encode()).hexdigest()


@dataclass(frozen=True)
class Outcome:
    """What a tick did with one decision: the run's id and exit code when it ran."""

    decision: calendar.Decision
    run_id: int | None = None
    exit_code: int | None = None
    note: str = ""
    #: The same decision as the last one kept for its window (said and kept before).
    repeated: bool = False


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
        refresh: Callable[[], Inventory] | None = None,
    ) -> None:
        self.inventory = inventory
        self.journal = journal
        self.coordination = coordination
        self.run_window = run_window
        self.check = check
        #: Where each decision is said as one line (the CLI: stderr, so journald has it).
        self.say = say
        #: Reads the inventory again (its windows and blackouts may have changed since the
        #: last tick); ``None``: the inventory given is kept.
        self.refresh = refresh
        self.plan: EstateSchedule = schedule_of(inventory)
        #: The clock the tick runs by: the real one, unless a tick was given its moment.
        self._live = True
        self._refresh_said: str | None = None

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
        self._live = now is None
        now = now or datetime.now(UTC)
        if self.refresh is not None:
            try:
                self.inventory = self.refresh()
                self.plan = schedule_of(self.inventory)
            except CrmMaintError as exc:  # a broken edit: keep the schedule last read
                said = (
                    f"scheduler: the inventory could not be read again ({exc}); keeping the"
                    " schedule read before"
                )
                if said != self._refresh_said:  # once per broken edit, not every tick
                    self._say_line(said)
                    self._refresh_said = said
            else:
                self._refresh_said = None
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
        # Under the lock, again, at this moment: another scheduler may have run it since we
        # looked, an earlier window of this tick may have run into a blackout's start.
        if self._live:
            now = datetime.now(UTC)
        last = self.coordination.last_start(d.window.name)
        again = calendar.decide(d.window, now, last, self.plan.blackouts)
        if again.action == "blocked":
            return self._record(Outcome(again, note="blocked when its turn came"))
        if again.action not in ("run", "catch-up"):
            return self._record(Outcome(again, note="already run by another scheduler"))
        # The tick's moment, not the clock's: a tick evaluated at an injected time
        # (``--once --at``) records its runs at that time, so the next tick judges alike.
        self.coordination.set_last_start(d.window.name, now)
        self._record(Outcome(again, note="starting"))
        ends = self._before_next_blackout(again.ends, now)
        try:
            run_id, code = self.run_window(d.window, ends)
        except KeyboardInterrupt:
            self._record(Outcome(again, note="interrupted (SIGTERM or SIGINT)"))
            raise
        except CrmMaintError as exc:  # one window's failure is not the scheduler's end
            note = f"failed: {exc}"
            return self._record(Outcome(again, None, exc.exit_code, note=note))
        return self._record(Outcome(again, run_id, code, note=f"ended with exit code {code}"))

    def _before_next_blackout(self, ends: datetime | None, now: datetime) -> datetime | None:
        """The run's deadline: its window's end, or the start of the next blackout when that
        comes first (a freeze that begins mid-run lets no further step start)."""
        starts = [b.start for b in self.plan.blackouts if b.start > now]
        first = min(starts, key=lambda moment: moment.timestamp(), default=None)
        if first is None or (ends is not None and ends.timestamp() <= first.timestamp()):
            return ends
        return first

    def _say_line(self, line: str) -> None:
        if self.say is not None:
            self.say(line)  # said there, with the time: not again as a log line
        else:
            log.warning("%s", line)

    def _record(self, outcome: Outcome) -> Outcome:
        d = outcome.decision
        said = [d.action, d.slot.timestamp() if d.slot else None,
                outcome.note.split(" (")[0], outcome.run_id]  # fmt: skip
        # The same decision again (a blackout, a held lock: tick after tick, and under a
        # timer, process after process) is neither said nor kept again.
        key = f"scheduler:said:{'check:' if self.check else ''}{d.window.name}"
        if self.journal.state_get(key) == said:
            return dataclasses.replace(outcome, repeated=True)
        self.journal.state_set(key, said)
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

    def _tick_on(self) -> None:
        """A tick of the running service: a failure of the store or the journal (a full
        disk, an unreachable bucket) is said and the next tick tries again."""
        try:
            self.tick()
        except (CrmMaintError, OSError, RecursionError) as exc:
            self._say_line(f"scheduler: this tick failed ({exc}); trying again at the next")

    def serve(self, interval: float = TICK) -> None:
        """Tick every ``interval`` seconds until SIGTERM/SIGINT (``KeyboardInterrupt``), with
        ``schedule`` as the ticker; the first tick is at once."""
        import schedule

        ticker = schedule.Scheduler()
        ticker.every(interval).seconds.do(self._tick_on)
        self._tick_on()
        while not STOPPING.is_set():
            ticker.run_pending()
            idle = ticker.idle_seconds
            STOPPING.wait(max(0.5, min(interval, idle if idle is not None else interval)))
        raise KeyboardInterrupt
