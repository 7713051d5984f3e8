"""When a run must end: its deadline from ``--until``, ``--for`` or the playbook's window length.

Pure functions over datetimes (the caller passes ``now``), tested without a clock. A deadline
is an aware local datetime: ``--until 05:30`` is the next 05:30 on this machine's clock, today
or tomorrow, read through the system's time zone rules (so across a DST change it is the wall
time people mean).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from crmmaint.units import LONGEST_RUN, parse_clock, parse_duration


def parse_until(value: str, now: datetime) -> datetime:
    """The moment ``--until VALUE`` names, after aware ``now``: ``HH:MM`` (24-hour clock) is
    the next such wall time, today when it is still ahead, else tomorrow; an ISO date and time
    (``2026-12-02T05:30``, local unless it carries an offset) is taken as written.

    Raises ``ValueError`` with what to write for any other text, for a moment that has
    passed, and for one more than ``LONGEST_RUN`` away.
    """
    text = value.strip()
    clock = parse_clock(text)
    if clock:
        hour, minute = clock
        day = now.date()
        for _ in range(2):
            naive = datetime(day.year, day.month, day.day, hour, minute)
            ends = naive.astimezone()  # the system's rules for that day (DST)
            if ends > now:
                return ends
            day += timedelta(days=1)
        raise ValueError(f"--until {value}: no such time ahead")  # pragma: no cover
    try:
        ends = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--until {value!r} is not a time: give HH:MM (24-hour, e.g. 05:30) or a date and"
            " time (2026-12-02T05:30)"
        ) from None
    ends = ends.astimezone() if ends.tzinfo is None else ends
    if ends <= now:
        raise ValueError(f"--until {value}: that time has passed ({now:%Y-%m-%d %H:%M} now)")
    if (ends - now).total_seconds() > LONGEST_RUN:
        raise ValueError(f"--until {value}: more than a week ahead; give a nearer end")
    return ends


def parse_length(value: str, flag: str = "--for") -> float:
    """A run's length in seconds (``3h``, ``90m``): more than 0 and at most ``LONGEST_RUN``.
    Raises ``ValueError`` naming ``flag``."""
    try:
        seconds = parse_duration(value)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{flag} {value}: {exc}") from None
    if not 0 < seconds <= LONGEST_RUN:
        raise ValueError(f"{flag} {value}: give a length above 0 and at most 7d (e.g. 3h)")
    return seconds


def run_deadline(
    now: datetime,
    *,
    until: str | None = None,
    length: str | None = None,
    window_length: float | None = None,
) -> tuple[datetime | None, str]:
    """When a run starting at aware ``now`` must end, and what set it (``--until 05:30``,
    ``--for 3h``, ``the playbook's window (3h)``; ``""`` without a deadline): ``until`` wins
    over ``length``, both over the playbook's ``window_length`` (seconds).

    Raises ``ValueError`` when both ``until`` and ``length`` are given, or either is invalid.
    """
    if until is not None and length is not None:
        raise ValueError("give --until or --for, not both")
    if until is not None:
        return parse_until(until, now), f"--until {until}"
    if length is not None:
        return now + timedelta(seconds=parse_length(length)), f"--for {length}"
    if window_length is not None:
        return now + timedelta(seconds=window_length), "the playbook's window length"
    return None, ""
