"""When a playbook's maintenance window opens, and what the scheduler does about it now.

Pure functions over plain data: the caller passes ``now`` (and when the window's playbook
last started); nothing here reads a clock, a file or the network. Every datetime is aware;
a naive one is refused with ``ValueError``. Instants are compared and subtracted in UTC
(Python compares two datetimes sharing a ``tzinfo`` by wall time, which is wrong across a
DST change); results are given in the window's zone.

Calendar rules (each has its tests in ``tests/test_schedule_calendar.py``):

- A window has at most one slot per calendar date in its zone: daily every date, weekly on
  its ``weekday``, monthly/quarterly/yearly on ``day`` of its months.
- A ``day`` past the month's end (31 in April, 29-31 in February) is the month's last day
  (clamped, as cron's ``L`` and most schedulers do); ``"last"`` is always the last day, so
  ``day=31`` and ``"last"`` pick the same dates. February 29 exists in leap years only.
- A wall time that does not exist (spring forward, 02:30 in Europe/Berlin on 2026-03-29)
  starts at the first moment after the gap (03:00 local): the slot still runs, once, and
  not an hour late. A wall time that happens twice (fall back, 02:30 on 2026-10-25) starts
  at its first occurrence (``fold=0``), once.
- A window's ``length`` is elapsed time: a 3 h window from 01:00 on the spring-forward night
  ends at 05:00 local, three real hours later.
- A window is open from its slot (inclusive) to slot + length (exclusive); so is a
  blackout, from ``start`` to ``end``.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

from crmmaint.inventory.schedule import CATCH_UP, EVERY
from crmmaint.units import LONGEST_RUN, plural

LAST = "last"
ACTIONS = ("run", "catch-up", "skip", "blocked", "wait")

#: The most slots ``slots_between`` returns (the earliest ones): a daily window over more
#: than a year of downtime. ``decide`` counts missed slots without this bound.
MAX_SLOTS = 400

_DAY = timedelta(days=1)


@dataclass(frozen=True)
class Window:
    """One playbook's maintenance window: when it opens (``every``, ``at`` in ``tz``, with
    ``weekday`` or ``day``/``month``) and for how long (``length``, seconds).

    ``weekday`` (0 = Monday .. 6 = Sunday) is required for weekly windows and refused for
    others. ``day`` (1..31 or ``"last"``, default 1) is for monthly, quarterly and yearly
    windows; ``month`` is 1..12 for yearly (default 1) and the month within each quarter,
    1..3, for quarterly (default 1: January, April, July, October). ``length`` is above 0 and
    at most ``LONGEST_RUN`` (7 days), and at most a day for a daily window (a longer one
    would overlap the next). ``catch_up`` says what happens to slots missed while the
    scheduler was down: ``"run-once"`` (one run now for all of them) or ``"skip"``.
    Defaults are filled in (``day=1``, ``month=1``). Raises ``ValueError`` for anything else.
    """

    name: str
    playbook: str
    every: str
    at: time
    length: float
    tz: ZoneInfo
    weekday: int | None = None
    day: int | str | None = None
    month: int | None = None
    catch_up: str = "run-once"

    def __post_init__(self) -> None:
        where = f"window {self.name!r}"
        if self.every not in EVERY:
            raise ValueError(f"{where}: every: {self.every!r}: give one of {', '.join(EVERY)}")
        if not isinstance(self.at, time) or self.at.tzinfo is not None:
            raise ValueError(f"{where}: at: give a wall-clock time without a zone (e.g. 02:00)")
        if not isinstance(self.tz, tzinfo):
            raise ValueError(f"{where}: tz: give a time zone (ZoneInfo('Europe/Berlin'))")
        if not 0 < self.length <= LONGEST_RUN:
            raise ValueError(f"{where}: length {self.length:g} s: give above 0 and at most 7 days")
        if self.every == "daily" and self.length > 86400:
            raise ValueError(f"{where}: a daily window of more than 24 h overlaps the next one")
        if self.catch_up not in CATCH_UP:
            raise ValueError(f"{where}: catch_up: {self.catch_up!r}: give run-once or skip")
        self._check_weekday(where)
        self._check_day_and_month(where)

    def _check_weekday(self, where: str) -> None:
        if self.every == "weekly":
            if not _is_int(self.weekday) or not 0 <= self.weekday <= 6:  # type: ignore[operator]
                raise ValueError(f"{where}: a weekly window needs weekday 0 (Monday) .. 6 (Sunday)")
        elif self.weekday is not None:
            raise ValueError(f"{where}: weekday is for weekly windows, not {self.every}")

    def _check_day_and_month(self, where: str) -> None:
        if self.every in ("daily", "weekly"):
            for field in ("day", "month"):
                if getattr(self, field) is not None:
                    raise ValueError(f"{where}: {field} is not for {self.every} windows")
            return
        day = 1 if self.day is None else self.day
        if day != LAST and not (_is_int(day) and 1 <= day <= 31):  # type: ignore[operator]
            raise ValueError(f"{where}: day {self.day!r}: give 1..31 or {LAST!r}")
        object.__setattr__(self, "day", day)
        if self.every == "monthly":
            if self.month is not None:
                raise ValueError(f"{where}: month is not for monthly windows")
            return
        highest = 3 if self.every == "quarterly" else 12
        month = 1 if self.month is None else self.month
        if not (_is_int(month) and 1 <= month <= highest):  # type: ignore[operator]
            within = " (the month within each quarter)" if highest == 3 else ""
            raise ValueError(f"{where}: month {self.month!r}: give 1..{highest}{within}")
        object.__setattr__(self, "month", month)

    @property
    def months(self) -> tuple[int, ...]:
        """The months (1..12) a monthly, quarterly or yearly window has a slot in; () for
        daily and weekly windows."""
        if self.every in ("daily", "weekly"):
            return ()
        if self.every == "monthly":
            return tuple(range(1, 13))
        if self.every == "quarterly":
            return tuple(self.month + q for q in (0, 3, 6, 9))  # type: ignore[operator]
        return (self.month,)  # type: ignore[return-value]


@dataclass(frozen=True)
class Blackout:
    """A period in which no maintenance starts: from ``start`` (aware, inclusive) to ``end``
    (aware, exclusive). Raises ``ValueError`` for a naive bound or one that does not end
    after it starts."""

    name: str
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        start = _utc(self.start, f"blackout {self.name!r} start")
        end = _utc(self.end, f"blackout {self.name!r} end")
        if end <= start:
            raise ValueError(
                f"blackout {self.name!r}: ends ({_moment(self.end)}) before or when it starts"
                f" ({_moment(self.start)}); give an end after the start"
            )

    def covers(self, moment: datetime) -> bool:
        """Whether aware ``moment`` lies inside the blackout (start <= moment < end)."""
        return _utc(self.start) <= _utc(moment) < _utc(self.end)


@dataclass(frozen=True)
class Decision:
    """What the scheduler does about ``window`` now.

    ``action`` is one of ``ACTIONS``: ``"run"`` (its window is open), ``"catch-up"`` (slots
    were missed: one run now), ``"skip"`` (slots were missed and the window skips them),
    ``"blocked"`` (a run or catch-up is due but a blackout holds it back), ``"wait"``.
    ``slot`` is the slot concerned (the open one, the latest missed one, or the next one when
    waiting); ``ends`` the run's deadline (``"run"``: the window's end; ``"catch-up"``: now +
    length; else None); ``reason`` one line for the log and the journal; ``missed`` how many
    slots were missed since the last run (the open one and blacked-out ones not counted).
    """

    window: Window
    action: str
    slot: datetime | None
    ends: datetime | None
    reason: str
    missed: int = 0


# --- slots ---------------------------------------------------------------------------------


def slot_on(window: Window, day: date) -> datetime | None:
    """The window's start on calendar date ``day`` (in its zone) if ``day`` is one of its
    days, else None. An aware datetime in ``window.tz``.

    A day-of-month past the month's end is the month's last day; a start inside a DST gap is
    the first moment after the gap (where a whole date was skipped, as Pacific/Apia skipped
    2011-12-30, that moment is the next date's 00:00); a start that happens twice is its
    first occurrence. See the module docstring.
    """
    if not _is_day(window, day):
        return None
    return _wall(day, window.at, window.tz)


def next_slot(window: Window, after: datetime) -> datetime:
    """The window's first slot strictly after aware ``after``, in ``window.tz``."""
    return next(_slots_after(window, after))


def slots_between(
    window: Window, start: datetime, end: datetime, *, limit: int = MAX_SLOTS
) -> list[datetime]:
    """Every slot with ``start < slot <= end`` (aware bounds), oldest first, in
    ``window.tz``: the slots a scheduler down from ``start`` to ``end`` missed. At most
    ``limit`` (default ``MAX_SLOTS``), the earliest ones; empty when ``end <= start``."""
    end_utc = _utc(end, "end")
    found: list[datetime] = []
    for slot in _slots_after(window, start):
        if len(found) >= limit or _utc(slot) > end_utc:
            break
        found.append(slot)
    return found


def current_slot(window: Window, now: datetime) -> datetime | None:
    """The slot whose window is open at aware ``now`` (slot <= now < slot + length), the
    latest if two overlap; None between windows."""
    now_utc = _utc(now, "now")
    opened = now_utc - timedelta(seconds=window.length)
    current = None
    for slot in _slots_after(window, opened):
        if _utc(slot) > now_utc:
            break
        current = slot
    return current


def window_end(window: Window, slot: datetime) -> datetime:
    """When the window that opened at ``slot`` closes: ``length`` seconds of elapsed time
    later, in ``window.tz``."""
    return _after(slot, window.length, window.tz)


# --- blackouts -----------------------------------------------------------------------------


def blackout_at(blackouts: Iterable[Blackout], moment: datetime) -> Blackout | None:
    """The blackout covering aware ``moment`` (start <= moment < end), None if none does;
    of several, the one that ends last (then the first given)."""
    covering = [b for b in blackouts if b.covers(moment)]
    return max(covering, key=lambda b: _utc(b.end), default=None)


def blackouts_ahead(
    blackouts: Iterable[Blackout], now: datetime, horizon_seconds: float
) -> list[Blackout]:
    """The blackouts under way or starting within ``horizon_seconds`` (>= 0) of aware
    ``now``: those ending after now and starting before now + horizon, by start, end and
    name. Raises ``ValueError`` for a negative horizon."""
    if horizon_seconds < 0:
        raise ValueError(f"horizon {horizon_seconds:g} s: give 0 or more seconds")
    now_utc = _utc(now, "now")
    until = now_utc + timedelta(seconds=horizon_seconds)
    ahead = [b for b in blackouts if _utc(b.end) > now_utc and _utc(b.start) < until]
    return sorted(ahead, key=lambda b: (_utc(b.start), _utc(b.end), b.name))


def blackout_from(
    name: str, start: date | datetime, end: date | datetime | None, tz: ZoneInfo
) -> Blackout:
    """A blackout from config values: a date is a whole day in ``tz`` (start: its first
    moment, normally 00:00; end: inclusive, so the blackout ends when the next day begins);
    a datetime is taken as given, a naive one as wall time in ``tz`` (resolved as slots
    are). ``end=None`` with a date start is that one day (``2026-12-24`` = 12-24 00:00 to
    12-25 00:00); ``from 2026-12-28 to 2027-01-04`` is 12-28 00:00 to 01-05 00:00.

    Raises ``ValueError`` for a datetime start without an end, and for an end before the
    start (naming both).
    """
    if end is None:
        if isinstance(start, datetime):
            raise ValueError(
                f"blackout {name!r}: starts at {start:%Y-%m-%d %H:%M} with no end; give an"
                " end, or a date alone for a whole day"
            )
        end = start
    begins = _config_moment(name, start, tz, end_of_day=False)
    ends = _config_moment(name, end, tz, end_of_day=True)
    if _utc(ends) <= _utc(begins):
        raise ValueError(
            f"blackout {name!r}: ends ({end.isoformat()}) before it starts ({start.isoformat()});"
            " give the earlier moment first"
        )
    return Blackout(name, begins, ends)


# --- the decision --------------------------------------------------------------------------


def decide(
    window: Window, now: datetime, last_run: datetime | None, blackouts: Iterable[Blackout]
) -> Decision:
    """What the scheduler does about ``window`` at aware ``now``, given when it last started
    the window's playbook (``last_run``, aware; None = never) and the ``blackouts``.

    Rules, in order:

    1. The window is open (``current_slot``) and ``last_run`` is before its slot (or None):
       ``"run"``, ending at the window's end (a run started late still ends there).
    2. Slots were missed: slots after ``last_run`` up to ``now``, the open one excepted.
       With ``last_run`` None nothing counts as missed (a new scheduler does not run
       everything at once). A slot whose whole window lay inside blackouts (one or several
       back to back) was skipped by blackout, not missed: it is never caught up, and the
       reason says how many there were. A slot whose window was partly free was runnable and
       is missed. ``catch_up: run-once``: ``"catch-up"``, one run now ending now + length;
       ``catch_up: skip``: ``"skip"``. ``missed`` counts them.
    3. Otherwise ``"wait"``; ``slot`` and the reason give the next slot.

    A blackout at ``now`` turns ``"run"`` and ``"catch-up"`` into ``"blocked"``; its reason
    names the blackout and when blackouts end (back-to-back ones followed through).

    The function keeps no state: until ``last_run`` or the calendar moves on it returns the
    same decision (a ``"skip"`` for the same ``slot`` each call; log it once per slot, or
    pass that slot as ``last_run`` to mark the missed slots handled).
    """
    blackouts = list(blackouts)
    now_utc = _utc(now, "now")
    last_utc = None if last_run is None else _utc(last_run, "last_run")
    tz = window.tz
    current = current_slot(window, now)

    missed: list[datetime] = []
    dark = 0
    if last_run is not None:
        for slot in _slots_after(window, last_run):
            if _utc(slot) > now_utc:
                break
            if current is not None and _utc(slot) == _utc(current):
                continue
            if _covered(slot, window_end(window, slot), blackouts):
                dark += 1
            else:
                missed.append(slot)
    dark_note = f"; {plural(dark, 'slot')} skipped by blackout" if dark else ""
    since = (
        f"missed {plural(len(missed), 'slot')} since {_moment(missed[0], tz)}"
        f" (last run {_moment(last_run, tz)})"
        if missed and last_run is not None
        else ""
    )

    if current is not None and (last_utc is None or last_utc < _utc(current)):
        ends = window_end(window, current)
        reason = f"in its window {_span(current, ends, tz)}"
        if missed:
            reason += f"; {since}: this run covers them"
        decision = Decision(window, "run", current, ends, reason + dark_note, len(missed))
    elif missed:
        latest = missed[-1]
        if window.catch_up == "skip":
            upcoming = next_slot(window, now)
            reason = f"{since}: skipped (catch_up: skip); next slot {_moment(upcoming, tz)}"
            return Decision(window, "skip", latest, None, reason + dark_note, len(missed))
        ends = _after(now, window.length, tz)
        reason = f"{since}: run once now (catch_up: run-once)"
        decision = Decision(window, "catch-up", latest, ends, reason + dark_note, len(missed))
    else:
        upcoming = next_slot(window, now)
        never = " (never run)" if last_run is None else ""
        reason = f"next slot {_moment(upcoming, tz)}{never}{dark_note}"
        return Decision(window, "wait", upcoming, None, reason)

    blackout = blackout_at(blackouts, now)
    if blackout is None:
        return decision
    names, until = _dark_stretch(blackouts, now_utc)
    held = f"blackout {names} until {_moment(until, tz)} (holds back: {decision.reason})"
    return Decision(window, "blocked", decision.slot, None, held, decision.missed)


# --- helpers -------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _utc(moment: datetime, what: str = "moment") -> datetime:
    """``moment`` in UTC; ``ValueError`` for a naive datetime (no zone to read it in)."""
    if not isinstance(moment, datetime):
        raise ValueError(f"{what}: give a datetime, not {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} {moment.isoformat()} has no time zone; give an aware datetime")
    return moment.astimezone(UTC)


def _after(moment: datetime, seconds: float, tz: tzinfo) -> datetime:
    """``seconds`` of elapsed time after ``moment``, in ``tz``."""
    return (_utc(moment) + timedelta(seconds=seconds)).astimezone(tz)


def _day_in(window: Window, year: int, month: int) -> int:
    """The day of ``month`` a monthly/quarterly/yearly window opens: its ``day`` clamped
    to the month's length, or the last day."""
    length = calendar.monthrange(year, month)[1]
    return length if window.day == LAST else min(window.day, length)  # type: ignore[type-var]


def _is_day(window: Window, day: date) -> bool:
    if window.every == "daily":
        return True
    if window.every == "weekly":
        return day.weekday() == window.weekday
    return day.month in window.months and day.day == _day_in(window, day.year, day.month)


def _days_from(window: Window, first: date) -> Iterator[date]:
    """The window's dates from ``first`` on, in order, without end."""
    if window.every in ("daily", "weekly"):
        day = first
        if window.every == "weekly":
            day += timedelta(days=(window.weekday - first.weekday()) % 7)  # type: ignore[operator]
        step = timedelta(days=1 if window.every == "daily" else 7)
        while True:
            yield day
            day += step
    year, month = first.year, first.month
    months = window.months
    while True:
        if month in months:
            day = date(year, month, _day_in(window, year, month))
            if day >= first:
                yield day
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def _slots_after(window: Window, after: datetime) -> Iterator[datetime]:
    """The window's slots strictly after aware ``after``, in order, each once."""
    after_utc = _utc(after, "after")
    # From the day before: a start pushed past a gap can land on the next date.
    first = after_utc.astimezone(window.tz).date() - _DAY
    last: datetime | None = None
    for day in _days_from(window, first):
        slot = _wall(day, window.at, window.tz)
        slot_utc = _utc(slot)
        if slot_utc > after_utc and (last is None or slot_utc > last):
            last = slot_utc
            yield slot


def _wall(day: date, at: time, tz: tzinfo) -> datetime:
    """Wall time ``at`` on ``day`` in ``tz``: its first occurrence when it happens twice, the
    first moment after the gap when it does not happen."""
    naive = datetime.combine(day, at.replace(tzinfo=None, fold=0))
    return _localize(naive, tz)


def _localize(naive: datetime, tz: tzinfo) -> datetime:
    earlier = naive.replace(tzinfo=tz, fold=0).astimezone(UTC).astimezone(tz)
    if earlier.replace(tzinfo=None) == naive:
        return earlier  # exists: fold=0 is the first occurrence of a repeated time
    # In a gap. With fold=1 the wall time is read with the offset after the change, with
    # fold=0 with the one before: the change lies between the two readings. Find, to the
    # second (zones change on whole seconds), the first instant whose wall time is past.
    readings = sorted(naive.replace(tzinfo=tz, fold=f).timestamp() for f in (0, 1))
    low, high = math.floor(readings[0]), math.ceil(readings[1])
    while low < high:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).replace(tzinfo=None) > naive:
            high = middle
        else:
            low = middle + 1
    return datetime.fromtimestamp(low, tz)


def _config_moment(
    name: str, value: date | datetime, tz: ZoneInfo, *, end_of_day: bool
) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return _localize(value.replace(fold=0), tz)
        return value.astimezone(tz)
    if not isinstance(value, date):
        raise ValueError(f"blackout {name!r}: {value!r} is not a date or a datetime; give one")
    return _wall(value + _DAY if end_of_day else value, time(0), tz)


def _covered(start: datetime, end: datetime, blackouts: list[Blackout]) -> bool:
    """Whether blackouts (together, back to back) cover all of ``start`` to ``end``."""
    reached = _utc(start)
    end_utc = _utc(end)
    while reached < end_utc:
        ends = [_utc(b.end) for b in blackouts if _utc(b.start) <= reached < _utc(b.end)]
        if not ends:
            return False
        reached = max(ends)
    return True


def _dark_stretch(blackouts: list[Blackout], now_utc: datetime) -> tuple[str, datetime]:
    """The blackouts holding back a start at ``now`` (quoted, in order) and when the last of
    them, followed through back-to-back ones, ends."""
    names: list[str] = []
    reached = now_utc
    while True:
        covering = [b for b in blackouts if b.covers(reached)]
        if not covering:
            return ", then ".join(names), reached
        longest = max(covering, key=lambda b: _utc(b.end))
        names.append(repr(longest.name))
        reached = _utc(longest.end)


def _moment(moment: datetime, tz: tzinfo | None = None) -> str:
    """``2026-12-02 02:00`` in ``tz`` (seconds when set; the zone's abbreviation when the
    wall time happens twice that night, so the line names one moment)."""
    local = moment.astimezone(tz) if tz is not None and moment.tzinfo is not None else moment
    return f"{local:%Y-%m-%d} {_clock(local)}"


def _clock(local: datetime) -> str:
    text = f"{local:%H:%M:%S}" if local.second else f"{local:%H:%M}"
    if local.tzinfo is not None:
        # Read with the other fold, a repeated wall time is another instant at the same wall
        # time; any other reads back as itself.
        other = local.replace(fold=1 - local.fold).astimezone(UTC).astimezone(local.tzinfo)
        if other.replace(tzinfo=None) == local.replace(tzinfo=None) and _utc(other) != _utc(local):
            text += f" {local:%Z}"
    return text


def _span(start: datetime, end: datetime, tz: tzinfo) -> str:
    """``02:00-05:00``, with ``(+N days)`` when the window ends on a later date."""
    begins, ends = start.astimezone(tz), end.astimezone(tz)
    days = (ends.date() - begins.date()).days
    later = f" (+{plural(days, 'day')})" if days else ""
    return f"{_clock(begins)}-{_clock(ends)}{later}"
