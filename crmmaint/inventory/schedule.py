"""The inventory's ``schedule:`` section: maintenance windows, blackouts, the catch-up policy.

It lives in the inventory, not in a file of its own: the windows and blackouts belong to the
estate (its time zone, its quarter-end close), the scheduler and ``crmmaint run`` need the
inventory anyway, and one file per estate is one file to review and keep in version control.

Read into plain values here (``ScheduleSettings``), each mistake refused at its line; the
calendar arithmetic over them is ``crmmaint.schedule.calendar``'s::

    schedule:
      timezone: Europe/Berlin       # IANA name; default: this machine's zone
      catch_up: run-once            # or skip: what a window missed while down gets
      windows:
        daily:     {at: "02:00", length: 3h}
        weekly:    {at: "03:00", on: sunday, length: 4h}
        monthly:   {at: "01:00", day: last, length: 4h}
        quarterly: {at: "01:00", day: 1, length: 6h}      # Jan, Apr, Jul, Oct
        yearly:    {at: "01:00", month: 1, day: 2, length: 8h}
        extra:     {playbook: playbooks/extra.yml, every: daily, at: "04:00", length: 1h}
      blackouts:
        - {name: quarter-end close, from: 2026-12-28, to: 2027-01-04}
        - {name: release freeze, on: 2026-12-15}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crmmaint.units import LONGEST_RUN, parse_duration
from crmmaint.units import parse_clock as clock_of
from crmmaint.yamlsource import (
    SourceError,
    WrittenInt,
    check_keys,
    get_field,
    line_of,
    one_of,
    require_mapping,
)

EVERY = ("daily", "weekly", "monthly", "quarterly", "yearly")
CATCH_UP = ("run-once", "skip")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
#: The shortest window (seconds): the scheduler looks every 30 s; less is a typo (1ms).
MIN_WINDOW = 60.0
_SCHEDULE_KEYS = {"timezone", "catch_up", "windows", "blackouts", "lock"}
_WINDOW_KEYS = {"playbook", "every", "at", "on", "day", "month", "length", "catch_up"}
_BLACKOUT_KEYS = {"name", "on", "from", "to"}
_LOCK_KEYS = {"repository"}


@dataclass(frozen=True)
class WindowSpec:
    """One window as configured: ``name`` (its key), the ``playbook`` it runs (a shipped
    playbook's name or a path relative to the inventory's folder), how often (``every``), its
    wall-clock start ``at``, ``length`` in seconds, and the calendar fields its ``every``
    uses: ``weekday`` (0 = Monday), ``day`` (1..31 or ``"last"``), ``month`` (yearly: 1..12;
    quarterly: 1..3, the month within the quarter)."""

    name: str
    playbook: str
    every: str
    at: time
    length: float
    weekday: int | None = None
    day: int | str | None = None
    month: int | None = None
    catch_up: str = "run-once"


@dataclass(frozen=True)
class BlackoutSpec:
    """A blackout as configured: whole days (``date``, both ends inclusive) or moments
    (``datetime``, naive: in the schedule's time zone; the end exclusive)."""

    name: str
    start: date | datetime
    end: date | datetime


@dataclass
class ScheduleSettings:
    """The ``schedule:`` section, read and checked."""

    timezone: str | None = None
    catch_up: str = "run-once"
    windows: list[WindowSpec] = field(default_factory=list)
    blackouts: list[BlackoutSpec] = field(default_factory=list)
    #: The repository whose backend holds the scheduler's overlap lock (None: the default).
    lock_repository: str | None = None


def load_schedule(data: dict, repositories: set[str]) -> ScheduleSettings | None:
    """The inventory's ``schedule:`` section, or ``None`` when it has none. Raises
    ``SourceError`` (file line, what is wrong, what to write) for anything else."""
    raw = data.get("schedule")
    if raw is None:
        return None
    spec = require_mapping(raw, "section 'schedule'", line_of(data, "schedule"))
    check_keys(spec, _SCHEDULE_KEYS, "schedule")
    out = ScheduleSettings()
    timezone = get_field(spec, "timezone", str)
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise SourceError(
                f"schedule: timezone {timezone!r} is not a time zone name: write an IANA name"
                " such as Europe/Berlin or UTC",
                line_of(spec, "timezone"),
            ) from None
        out.timezone = timezone
    if spec.get("catch_up") is not None:
        out.catch_up = one_of(get_field(spec, "catch_up", str), CATCH_UP, "catch_up", spec)
    windows = spec.get("windows")
    if windows is not None:
        windows = require_mapping(windows, "schedule: windows", line_of(spec, "windows"))
        for name, window in windows.items():
            out.windows.append(_window(str(name), window, windows, out.catch_up))
    blackouts = spec.get("blackouts")
    if blackouts is not None:
        if not isinstance(blackouts, list):
            raise SourceError(
                "schedule: blackouts is a list of {name, on} or {name, from, to}",
                line_of(spec, "blackouts"),
            )
        for i, blackout in enumerate(blackouts):
            out.blackouts.append(_blackout(blackout, i, line_of(spec, "blackouts")))
    lock = spec.get("lock")
    if lock is not None:
        lock = require_mapping(lock, "schedule: lock", line_of(spec, "lock"))
        check_keys(lock, _LOCK_KEYS, "schedule: lock")
        name = get_field(lock, "repository", str)
        if name is not None and name not in repositories:
            raise SourceError(
                f"schedule: lock names repository {name!r}, which the inventory does not have"
                f" (repositories: {', '.join(sorted(repositories)) or 'none'})",
                line_of(lock, "repository"),
            )
        out.lock_repository = name
    return out


def parse_clock(value: Any) -> time:
    """``"02:30"`` -> ``time(2, 30)``. YAML 1.1 reads an unquoted ``12:30`` as the number 750
    (base 60): such a number is read back from the text it was written as (``WrittenInt``).
    Any other number (``230``, ``0230``, ``2``) is refused: it is no time. Raises
    ``ValueError`` for anything but ``HH:MM`` on a 24-hour clock."""
    if isinstance(value, WrittenInt):
        value = value.written
    elif isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'{value!r} is a number, not a time of day: write at: "02:30"')
    clock = clock_of(value) if isinstance(value, str) else None
    if clock is not None:
        return time(*clock)
    raise ValueError(f"{value!r} is not a time of day: write HH:MM on a 24-hour clock, e.g. 02:30")


def _window(name: str, raw: Any, windows: dict, default_catch_up: str) -> WindowSpec:
    what = f"schedule: window {name!r}"
    if not name.strip() or any(not ch.isprintable() for ch in name):
        raise SourceError(
            f"{what}: give the window a name of printable characters", line_of(windows, name)
        )
    spec = require_mapping(raw, what, line_of(windows, name))
    check_keys(spec, _WINDOW_KEYS, what)
    playbook = get_field(spec, "playbook", str) or name
    every_raw = spec.get("every", name if name in EVERY else None)
    if every_raw is None:
        raise SourceError(
            f"{what}: say how often with every: {' | '.join(EVERY)} (a window named after"
            " a shipped playbook, e.g. daily, needs none)",
            line_of(windows, name),
        )
    every = one_of(str(every_raw), EVERY, "every", spec)

    def bad(key: str, message: str) -> SourceError:
        return SourceError(f"{what}: {key}: {message}", line_of(spec, key))

    if "at" not in spec:
        raise bad("at", "give the start time, e.g. at: '02:00'")
    try:
        at = parse_clock(spec["at"])
    except ValueError as exc:
        raise bad("at", str(exc)) from None
    if "length" not in spec:
        raise bad("length", "give the window's length, e.g. length: 3h")
    try:
        if not isinstance(spec["length"], str | int | float) or isinstance(spec["length"], bool):
            raise ValueError(f"{spec['length']!r} is not a length: write e.g. 3h or 90m")
        length = parse_duration(spec["length"])
    except (ValueError, TypeError, OverflowError) as exc:
        raise bad("length", str(exc)) from None
    if not MIN_WINDOW <= length <= LONGEST_RUN:
        raise bad("length", "give a length from 1m to 7d, e.g. 3h")
    if every == "daily" and length > 86400:
        raise bad("length", "a daily window of more than 24h would overlap the next day's")

    weekday = day = month = None
    allowed = {"daily": set(), "weekly": {"on"}, "monthly": {"day"}, "quarterly": {"day", "month"},
               "yearly": {"day", "month"}}[every]  # fmt: skip
    for key in ("on", "day", "month"):
        if key in spec and key not in allowed:
            raise bad(key, f"a {every} window takes no {key!r}")
    if every == "weekly":
        if "on" not in spec:
            raise bad("on", f"say which day, e.g. on: sunday ({', '.join(WEEKDAYS)})")
        weekday = WEEKDAYS.index(one_of(str(spec["on"]).lower(), WEEKDAYS, "on", spec))
    if every in ("monthly", "quarterly", "yearly"):
        day = _day(spec.get("day", 1), bad)
    if every in ("quarterly", "yearly"):
        top = 3 if every == "quarterly" else 12
        month = spec.get("month", 1)
        if isinstance(month, bool) or not isinstance(month, int) or not 1 <= month <= top:
            within = " (the month within each quarter: 1 = Jan/Apr/Jul/Oct)" if top == 3 else ""
            raise bad("month", f"give a month from 1 to {top}{within}, not {month!r}")
    catch_up = default_catch_up
    if spec.get("catch_up") is not None:
        catch_up = one_of(get_field(spec, "catch_up", str), CATCH_UP, "catch_up", spec)
    return WindowSpec(name, playbook, every, at, length, weekday, day, month, catch_up)


def _day(value: Any, bad: Any) -> int | str:
    if value == "last":
        return "last"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 31:
        raise bad("day", f"give a day of the month from 1 to 31, or last, not {value!r}")
    return value


#: The years a blackout may name: beyond them a date is a typo (and 9999-12-31 has no day
#: after it to end on).
BLACKOUT_YEARS = (2000, 2999)


def _moment(value: Any, what: str, line: int | None) -> date | datetime:
    moment = _read_moment(value, what, line)
    low, high = BLACKOUT_YEARS
    if not low <= moment.year <= high:
        raise SourceError(
            f"{what}: {moment} is outside the years {low} to {high} (a blackout names its"
            " own start and end)",
            line,
        )
    return moment


def _read_moment(value: Any, what: str, line: int | None) -> date | datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None) if value.tzinfo is None else value
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if "T" in text or " " in text:
                return datetime.fromisoformat(text)
            return date.fromisoformat(text)
        except ValueError:
            pass
    raise SourceError(
        f"{what}: {value!r} is not a date or a date and time: write 2026-12-28 or 2026-12-28T18:00",
        line,
    )


def _blackout(raw: Any, index: int, line: int | None) -> BlackoutSpec:
    what = f"schedule: blackout {index + 1}"
    spec = require_mapping(raw, what, line)
    check_keys(spec, _BLACKOUT_KEYS, what)
    name = get_field(spec, "name", str)
    if not name or not name.strip():
        raise SourceError(
            f"{what}: give it a name (it is said when a run is refused)", line_of(spec)
        )
    what = f"schedule: blackout {name!r}"
    if "on" in spec:
        if "from" in spec or "to" in spec:
            raise SourceError(f"{what}: give either on: or from: and to:", line_of(spec, "on"))
        start = _moment(spec["on"], what, line_of(spec, "on"))
        if isinstance(start, datetime):
            raise SourceError(f"{what}: on: takes a date (a whole day); use from:/to: for times",
                              line_of(spec, "on"))  # fmt: skip
        return BlackoutSpec(name, start, start)
    if "from" not in spec or "to" not in spec:
        raise SourceError(f"{what}: give on: DATE, or from: and to:", line_of(spec))
    start = _moment(spec["from"], what, line_of(spec, "from"))
    end = _moment(spec["to"], what, line_of(spec, "to"))
    if type(start) is not type(end):
        raise SourceError(
            f"{what}: from: and to: must both be dates (whole days) or both dates and times",
            line_of(spec, "to"),
        )
    if isinstance(start, datetime) and (start.tzinfo is None) != (end.tzinfo is None):  # type: ignore[union-attr]
        raise SourceError(
            f"{what}: give both from: and to: with an offset, or neither (then they are in the"
            " schedule's time zone)",
            line_of(spec, "to"),
        )
    if end < start or (isinstance(end, datetime) and end == start):  # type: ignore[operator]
        raise SourceError(f"{what}: to: {end} is not after from: {start}", line_of(spec, "to"))
    return BlackoutSpec(name, start, end)
