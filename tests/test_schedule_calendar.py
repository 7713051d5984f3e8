"""The maintenance calendar (crmmaint.schedule.calendar): slots over month ends, leap years
and DST nights, blackouts, and the scheduler's decision, all with time passed in (no sleeps,
no clock). Expected dates come from tables written out here, not from the stdlib calendar."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmmaint.schedule.calendar import (
    EVERY,
    LAST,
    MAX_SLOTS,
    Blackout,
    Window,
    blackout_at,
    blackout_from,
    blackouts_ahead,
    current_slot,
    decide,
    next_slot,
    slot_on,
    slots_between,
    window_end,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
ZULU = ZoneInfo("UTC")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # a 30-minute DST shift
APIA = ZoneInfo("Pacific/Apia")  # skipped all of 2011-12-30
HOUR = 3600.0

MONTH_DAYS = {
    2026: (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31),
    2027: (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31),
    2028: (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31),
}


def window(every: str = "daily", at: str = "02:00", length: float = 3 * HOUR, **kw) -> Window:
    kw.setdefault("tz", BERLIN)
    return Window(every, every, every, time.fromisoformat(at), length, **kw)


def local(tz: ZoneInfo, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=tz, fold=fold)


def same_instant(a: datetime | None, b: datetime | None) -> bool:
    """Equal as instants (``==`` on datetimes sharing a tzinfo ignores fold and offset)."""
    if a is None or b is None:
        return a is b
    return a.astimezone(UTC) == b.astimezone(UTC) and a.utcoffset() == b.utcoffset()


def days_of(year: int, month: int) -> list[date]:
    return [date(year, month, d) for d in range(1, MONTH_DAYS[year][month - 1] + 1)]


# --- month ends, leap years ----------------------------------------------------------------


@pytest.mark.parametrize("day", [31, 30, 29, LAST])
@pytest.mark.parametrize("month", range(1, 13))
@pytest.mark.parametrize("year", [2026, 2027, 2028])
def test_monthly_day_is_clamped_to_the_month_end(year: int, month: int, day: int | str) -> None:
    length = MONTH_DAYS[year][month - 1]
    expected = date(year, month, length if day == LAST else min(day, length))
    w = window("monthly", at="04:00", day=day)  # 02:00 falls in the gap on 2026-03-29
    slots = [(d, slot_on(w, d)) for d in days_of(year, month)]
    found = [(d, s) for d, s in slots if s is not None]
    assert [d for d, _ in found] == [expected]  # exactly one slot in the month
    assert same_instant(found[0][1], local(BERLIN, year, month, expected.day, 4))


@pytest.mark.parametrize(
    ("day", "year", "month", "expected"),
    [
        (31, 2026, 4, 30),
        (31, 2026, 2, 28),
        (30, 2026, 2, 28),
        (29, 2026, 2, 28),
        (29, 2027, 2, 28),
        (29, 2028, 2, 29),  # leap year
        (LAST, 2028, 2, 29),
        (LAST, 2027, 2, 28),
        (28, 2028, 2, 28),  # not moved to the 29th
        (1, 2028, 2, 1),
        (15, 2027, 6, 15),
    ],
)
def test_monthly_known_dates(day: int | str, year: int, month: int, expected: int) -> None:
    w = window("monthly", day=day)
    start = local(BERLIN, year, month, 1) - timedelta(seconds=1)
    assert same_instant(next_slot(w, start), local(BERLIN, year, month, expected, 2))


def test_monthly_default_is_the_first() -> None:
    w = window("monthly")
    assert w.day == 1
    slots = slots_between(w, local(BERLIN, 2026, 1, 1, 2), local(BERLIN, 2027, 1, 1, 2))
    assert [s.date() for s in slots] == [date(2026, m, 1) for m in range(2, 13)] + [
        date(2027, 1, 1)
    ]


def test_day_31_and_last_pick_the_same_dates() -> None:
    start, end = local(BERLIN, 2026, 1, 1), local(BERLIN, 2029, 1, 1)
    a = slots_between(window("monthly", day=31), start, end)
    b = slots_between(window("monthly", day=LAST), start, end)
    assert len(a) == 36 and [s.date() for s in a] == [s.date() for s in b]


# --- weekly, quarterly, yearly -------------------------------------------------------------


@pytest.mark.parametrize("weekday", range(7))
def test_weekly_each_weekday(weekday: int) -> None:
    w = window("weekly", weekday=weekday)
    # 2026-01-01 is a Thursday (weekday 3).
    first = date(2026, 1, 1) + timedelta(days=(weekday - 3) % 7)
    slots = slots_between(w, local(BERLIN, 2026, 1, 1), local(BERLIN, 2027, 1, 1))
    assert slots[0].date() == first
    assert all(s.date().weekday() == weekday for s in slots)
    assert all((b.date() - a.date()).days == 7 for a, b in pairwise(slots))
    spring_forward = date(2026, 3, 29)  # a Sunday: 02:00 does not exist, 03:00 does
    assert all((s.hour, s.minute) == (2, 0) for s in slots if s.date() != spring_forward)
    assert len(slots) == (53 if weekday == 3 else 52)  # 2026 has 53 Thursdays
    for d in days_of(2026, 3):
        assert (slot_on(w, d) is not None) == (d.weekday() == weekday)


@pytest.mark.parametrize(
    ("month", "day", "expected"),
    [
        (1, 1, [(1, 1), (4, 1), (7, 1), (10, 1)]),
        (1, 31, [(1, 31), (4, 30), (7, 31), (10, 31)]),
        (2, 31, [(2, 28), (5, 31), (8, 31), (11, 30)]),
        (3, 31, [(3, 31), (6, 30), (9, 30), (12, 31)]),
        (2, LAST, [(2, 28), (5, 31), (8, 31), (11, 30)]),
        (3, 15, [(3, 15), (6, 15), (9, 15), (12, 15)]),
    ],
)
def test_quarterly_months(month: int, day: int | str, expected: list[tuple[int, int]]) -> None:
    w = window("quarterly", month=month, day=day)
    slots = slots_between(w, local(BERLIN, 2027, 1, 1), local(BERLIN, 2028, 1, 1))
    assert [(s.month, s.day) for s in slots] == expected


def test_quarterly_defaults_to_the_first_of_january_april_july_october() -> None:
    w = window("quarterly")
    assert (w.month, w.day) == (1, 1)
    assert w.months == (1, 4, 7, 10)


@pytest.mark.parametrize(
    ("month", "day", "years"),
    [
        (2, 29, [(2026, 2, 28), (2027, 2, 28), (2028, 2, 29)]),
        (2, LAST, [(2026, 2, 28), (2027, 2, 28), (2028, 2, 29)]),
        (None, None, [(2026, 1, 1), (2027, 1, 1), (2028, 1, 1)]),
        (12, 31, [(2026, 12, 31), (2027, 12, 31), (2028, 12, 31)]),
        (6, 31, [(2026, 6, 30), (2027, 6, 30), (2028, 6, 30)]),
    ],
)
def test_yearly(
    month: int | None, day: int | str | None, years: list[tuple[int, int, int]]
) -> None:
    w = window("yearly", month=month, day=day)
    slots = slots_between(w, local(BERLIN, 2026, 1, 1), local(BERLIN, 2028, 12, 31, 23))
    assert [(s.year, s.month, s.day) for s in slots] == years


# --- DST -----------------------------------------------------------------------------------

# (zone, date, at) -> local wall start and its UTC offset in hours.
SPRING = [
    (BERLIN, date(2026, 3, 29), "01:30", (1, 30), 1),
    (BERLIN, date(2026, 3, 29), "02:00", (3, 0), 2),
    (BERLIN, date(2026, 3, 29), "02:30", (3, 0), 2),
    (BERLIN, date(2026, 3, 29), "02:59", (3, 0), 2),
    (BERLIN, date(2026, 3, 29), "03:00", (3, 0), 2),
    (NEW_YORK, date(2026, 3, 8), "01:30", (1, 30), -5),
    (NEW_YORK, date(2026, 3, 8), "02:00", (3, 0), -4),
    (NEW_YORK, date(2026, 3, 8), "02:30", (3, 0), -4),
    (NEW_YORK, date(2026, 3, 8), "02:59", (3, 0), -4),
    (NEW_YORK, date(2026, 3, 8), "03:00", (3, 0), -4),
    (ZULU, date(2026, 3, 29), "02:30", (2, 30), 0),
    (ZULU, date(2026, 3, 8), "02:30", (2, 30), 0),
    (LORD_HOWE, date(2026, 10, 4), "02:15", (2, 30), 11),  # 02:00 -> 02:30
]
FALL = [  # the first occurrence of a repeated time: the summer offset
    (BERLIN, date(2026, 10, 25), "01:30", (1, 30), 2),
    (BERLIN, date(2026, 10, 25), "02:00", (2, 0), 2),
    (BERLIN, date(2026, 10, 25), "02:30", (2, 30), 2),
    (BERLIN, date(2026, 10, 25), "02:59", (2, 59), 2),
    (BERLIN, date(2026, 10, 25), "03:00", (3, 0), 1),
    (NEW_YORK, date(2026, 11, 1), "00:59", (0, 59), -4),
    (NEW_YORK, date(2026, 11, 1), "01:30", (1, 30), -4),
    (NEW_YORK, date(2026, 11, 1), "02:00", (2, 0), -5),
    (NEW_YORK, date(2026, 11, 1), "02:30", (2, 30), -5),
    (NEW_YORK, date(2026, 11, 1), "02:59", (2, 59), -5),
    (NEW_YORK, date(2026, 11, 1), "03:00", (3, 0), -5),
    (ZULU, date(2026, 10, 25), "02:30", (2, 30), 0),
    (ZULU, date(2026, 11, 1), "01:30", (1, 30), 0),
]


def _check_dst_night(tz: ZoneInfo, day: date, at: str, wall: tuple[int, int], offset: int):
    w = window(at=at, tz=tz, length=600)
    slot = slot_on(w, day)
    assert slot is not None and slot.tzinfo is tz
    assert (slot.date(), slot.hour, slot.minute) == (day, *wall)
    assert slot.utcoffset() == timedelta(hours=offset)
    assert slot.fold == 0
    # It runs once that night: one slot from the day before to the day after, each a day's
    # date apart, and the next one after it is the next day's.
    midnight = local(tz, *day.timetuple()[:3])
    around = slots_between(w, midnight - timedelta(days=1), slot)
    around += slots_between(w, slot, midnight + timedelta(days=2))
    assert [s.date() for s in around] == [day + timedelta(days=n) for n in (-1, 0, 1)]
    assert next_slot(w, slot).date() == day + timedelta(days=1)
    return w, slot


@pytest.mark.parametrize(("tz", "day", "at", "wall", "offset"), SPRING)
def test_spring_forward_starts_after_the_gap(tz, day, at, wall, offset) -> None:
    _check_dst_night(tz, day, at, wall, offset)


@pytest.mark.parametrize(("tz", "day", "at", "wall", "offset"), FALL)
def test_fall_back_starts_at_the_first_occurrence_once(tz, day, at, wall, offset) -> None:
    w, slot = _check_dst_night(tz, day, at, wall, offset)
    # The second pass of the same wall time, an hour later where it repeats, opens nothing.
    second = slot.replace(fold=1).astimezone(UTC)
    if second != slot.astimezone(UTC):
        assert current_slot(w, second + timedelta(seconds=1)) is None


def test_length_is_elapsed_time_across_a_dst_change() -> None:
    w = window(at="01:00", length=3 * HOUR)
    ends = window_end(w, slot_on(w, date(2026, 3, 29)))
    assert (ends.hour, ends.minute) == (5, 0)  # 01:00 CET + 3 h = 05:00 CEST
    ends = window_end(w, slot_on(w, date(2026, 10, 25)))
    assert (ends.hour, ends.minute) == (3, 0)  # 01:00 CEST + 3 h = 03:00 CET


def test_a_whole_skipped_date_starts_at_the_next_dates_first_moment() -> None:
    w = window(tz=APIA)
    assert same_instant(slot_on(w, date(2011, 12, 30)), local(APIA, 2011, 12, 31, 0))
    slots = slots_between(w, local(APIA, 2011, 12, 28), local(APIA, 2012, 1, 1, 12))
    assert [(s.day, s.hour) for s in slots] == [(28, 2), (29, 2), (31, 0), (31, 2), (1, 2)]
    at_midnight = window(at="00:00", tz=APIA)  # the 30th's slot and the 31st's: one moment
    slots = slots_between(at_midnight, local(APIA, 2011, 12, 29, 12), local(APIA, 2012, 1, 1, 12))
    assert [(s.day, s.hour) for s in slots] == [(31, 0), (1, 0)]


# --- next_slot, slots_between, current_slot -----------------------------------------------


@pytest.mark.parametrize(
    ("w", "after", "expected"),
    [
        (window(), (2026, 12, 31, 23, 30), (2027, 1, 1, 2, 0)),
        (window(), (2027, 1, 1, 2, 0), (2027, 1, 2, 2, 0)),  # strictly after
        (window(), (2027, 1, 1, 1, 59), (2027, 1, 1, 2, 0)),
        (window("yearly"), (2026, 1, 1, 2, 0), (2027, 1, 1, 2, 0)),
        (window("yearly", month=12, day=LAST), (2026, 12, 31, 2, 1), (2027, 12, 31, 2, 0)),
        (window("monthly", day=LAST), (2026, 12, 31, 2, 0), (2027, 1, 31, 2, 0)),
        (window("quarterly", month=3, day=LAST), (2027, 12, 31, 3, 0), (2028, 3, 31, 2, 0)),
        (window("weekly", weekday=4), (2026, 12, 31, 12, 0), (2027, 1, 1, 2, 0)),  # a Friday
        (window("weekly", weekday=3), (2026, 12, 31, 12, 0), (2027, 1, 7, 2, 0)),
        (window("daily", at="23:59"), (2027, 12, 31, 23, 59), (2028, 1, 1, 23, 59)),
    ],
)
def test_next_slot_across_year_ends(w: Window, after: tuple, expected: tuple) -> None:
    assert same_instant(next_slot(w, local(BERLIN, *after)), local(BERLIN, *expected))


def test_next_slot_takes_any_zone_for_after() -> None:
    after = datetime(2026, 12, 1, 1, 30, tzinfo=UTC)  # 02:30 in Berlin: today's 02:00 passed
    assert same_instant(next_slot(window(), after), local(BERLIN, 2026, 12, 2, 2))


def test_slots_between_after_ten_days_down() -> None:
    w = window()
    down, up = local(BERLIN, 2026, 11, 20, 12), local(BERLIN, 2026, 11, 30, 12)
    slots = slots_between(w, down, up)
    assert [s.day for s in slots] == list(range(21, 31))
    assert all((s.hour, s.minute) == (2, 0) for s in slots)
    weekly = slots_between(window("weekly", weekday=0), down, up)
    assert [s.date() for s in weekly] == [date(2026, 11, 23), date(2026, 11, 30)]


def test_slots_between_bounds() -> None:
    w = window()
    slot = local(BERLIN, 2026, 11, 21, 2)
    assert slots_between(w, slot, slot) == []
    assert slots_between(w, slot, slot - timedelta(days=3)) == []
    assert [s.day for s in slots_between(w, slot, slot + timedelta(days=1))] == [22]  # start out
    assert [s.day for s in slots_between(w, slot - timedelta(seconds=1), slot)] == [21]  # end in


def test_slots_between_returns_at_most_the_first_max_slots() -> None:
    w = window()
    start = local(BERLIN, 2026, 1, 1)
    slots = slots_between(w, start, local(BERLIN, 2029, 1, 1))
    assert len(slots) == MAX_SLOTS and slots[0].date() == date(2026, 1, 1)
    assert len(slots_between(w, start, local(BERLIN, 2026, 2, 1), limit=5)) == 5


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ((2026, 12, 1, 1, 59, 59), None),
        ((2026, 12, 1, 2, 0), (2026, 12, 1, 2, 0)),  # opens at its slot
        ((2026, 12, 1, 4, 59, 59), (2026, 12, 1, 2, 0)),
        ((2026, 12, 1, 5, 0), None),  # closed at slot + length
        ((2026, 12, 1, 12, 0), None),
    ],
)
def test_current_slot(now: tuple, expected: tuple | None) -> None:
    found = current_slot(window(), local(BERLIN, *now))
    assert same_instant(found, None if expected is None else local(BERLIN, *expected))


def test_current_slot_of_a_window_past_midnight_and_a_week_long_one() -> None:
    late = window(at="22:00", length=6 * HOUR)
    assert same_instant(
        current_slot(late, local(BERLIN, 2026, 12, 2, 3)), local(BERLIN, 2026, 12, 1, 22)
    )
    week = window("weekly", weekday=5, length=7 * 86400)  # Saturday to Saturday
    found = current_slot(week, local(BERLIN, 2026, 12, 4, 12))  # a Friday
    assert same_instant(found, local(BERLIN, 2026, 11, 28, 2))


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"every": "hourly"}, "every"),
        ({"every": "weekly"}, "weekday"),
        ({"every": "weekly", "weekday": 7}, "weekday"),
        ({"every": "weekly", "weekday": True}, "weekday"),
        ({"weekday": 1}, "weekday is for weekly"),
        ({"day": 3}, "day is not for daily"),
        ({"every": "monthly", "day": 0}, "day 0"),
        ({"every": "monthly", "day": 32}, "day 32"),
        ({"every": "monthly", "day": "first"}, "day 'first'"),
        ({"every": "monthly", "month": 2}, "month is not for monthly"),
        ({"every": "quarterly", "month": 4}, r"1\.\.3"),
        ({"every": "yearly", "month": 13}, r"1\.\.12"),
        ({"length": 0}, "length"),
        ({"length": 7 * 86400 + 1, "every": "weekly", "weekday": 0}, "length"),
        ({"length": 86401}, "overlaps"),
        ({"catch_up": "all"}, "catch_up"),
        ({"at": time(2, tzinfo=UTC)}, "without a zone"),
        ({"tz": "Europe/Berlin"}, "tz"),
    ],
)
def test_window_refuses(kw: dict, says: str) -> None:
    kw = {"every": "daily", "at": time(2), "length": HOUR, "tz": BERLIN} | kw
    with pytest.raises(ValueError, match=says):
        Window("w", "w", **kw)


def test_naive_moments_are_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        next_slot(window(), datetime(2026, 12, 1))
    with pytest.raises(ValueError, match="no time zone"):
        decide(window(), datetime(2026, 12, 1), None, [])
    with pytest.raises(ValueError, match="no time zone"):
        Blackout("b", datetime(2026, 12, 1), datetime(2026, 12, 2, tzinfo=UTC))
    with pytest.raises(ValueError, match="give a datetime, not date"):
        current_slot(window(), date(2026, 12, 1))  # type: ignore[arg-type]


def test_blackout_must_end_after_it_starts() -> None:
    start = local(BERLIN, 2026, 12, 1, 12)
    with pytest.raises(ValueError, match=r"blackout 'b': ends .* before or when it starts"):
        Blackout("b", start, start.astimezone(UTC))  # the same instant in another zone


def test_window_months() -> None:
    assert window().months == () and window("weekly", weekday=0).months == ()
    assert window("monthly").months == tuple(range(1, 13))
    assert window("quarterly", month=3).months == (3, 6, 9, 12)
    assert window("yearly", month=7).months == (7,)


# --- blackouts -----------------------------------------------------------------------------


def test_blackout_from_a_single_date_is_that_whole_day() -> None:
    b = blackout_from("xmas", date(2026, 12, 24), None, BERLIN)
    assert same_instant(b.start, local(BERLIN, 2026, 12, 24))
    assert same_instant(b.end, local(BERLIN, 2026, 12, 25))


def test_blackout_from_a_date_range_includes_the_last_day() -> None:
    b = blackout_from("quarter-end close", date(2026, 12, 28), date(2027, 1, 4), BERLIN)
    assert same_instant(b.start, local(BERLIN, 2026, 12, 28))
    assert same_instant(b.end, local(BERLIN, 2027, 1, 5))
    assert blackout_from("one", date(2026, 3, 29), date(2026, 3, 29), BERLIN).end.day == 30


def test_blackout_from_datetimes() -> None:
    b = blackout_from("deploy", datetime(2026, 12, 1, 18), datetime(2026, 12, 1, 22), NEW_YORK)
    assert same_instant(b.start, local(NEW_YORK, 2026, 12, 1, 18))
    aware = datetime(2026, 12, 1, 23, tzinfo=UTC)
    b = blackout_from("deploy", date(2026, 12, 1), aware, BERLIN)
    assert b.end.astimezone(UTC) == aware and b.end.tzinfo is BERLIN
    b = blackout_from("gap", datetime(2026, 3, 29, 2, 30), datetime(2026, 3, 29, 4), BERLIN)
    assert (b.start.hour, b.start.minute) == (3, 0)


def test_blackout_from_a_day_whose_midnight_does_not_exist() -> None:
    sao_paulo = ZoneInfo("America/Sao_Paulo")  # 2018-11-04 began at 01:00
    b = blackout_from("d", date(2018, 11, 4), None, sao_paulo)
    assert (b.start.day, b.start.hour) == (4, 1)


@pytest.mark.parametrize(
    ("start", "end", "says"),
    [
        (date(2027, 1, 4), date(2026, 12, 28), "ends .2026-12-28. before it starts .2027-01-04."),
        (datetime(2026, 12, 1, 22), datetime(2026, 12, 1, 18), "before it starts"),
        (datetime(2026, 12, 1, 22), datetime(2026, 12, 1, 22), "before it starts"),
        (datetime(2026, 12, 1, 22), None, "no end"),
        ("2026-12-01", None, "not a date"),
    ],
)
def test_blackout_from_refuses(start, end, says: str) -> None:
    with pytest.raises(ValueError, match=f"blackout 'b': .*{says}"):
        blackout_from("b", start, end, BERLIN)


def test_blackout_at_bounds() -> None:
    b = blackout_from("b", date(2026, 12, 24), None, BERLIN)
    assert blackout_at([b], local(BERLIN, 2026, 12, 24)) is b  # start inclusive
    assert blackout_at([b], local(BERLIN, 2026, 12, 25)) is None  # end exclusive
    assert blackout_at([b], local(BERLIN, 2026, 12, 23, 23, 59)) is None
    assert blackout_at([], local(BERLIN, 2026, 12, 24)) is None
    longer = blackout_from("longer", date(2026, 12, 20), date(2026, 12, 31), BERLIN)
    assert blackout_at([b, longer], local(BERLIN, 2026, 12, 24, 12)) is longer


def test_blackouts_ahead() -> None:
    now = local(BERLIN, 2026, 12, 1, 12)
    past = blackout_from("past", date(2026, 11, 30), None, BERLIN)  # ends 12-01 00:00
    now_on = blackout_from("now", datetime(2026, 12, 1, 11), datetime(2026, 12, 1, 13), BERLIN)
    soon = blackout_from("soon", date(2026, 12, 3), None, BERLIN)
    sooner = blackout_from("sooner", date(2026, 12, 2), date(2026, 12, 9), BERLIN)
    later = blackout_from("later", date(2026, 12, 10), None, BERLIN)
    found = blackouts_ahead([later, soon, past, now_on, sooner], now, 7 * 86400)
    assert [b.name for b in found] == ["now", "sooner", "soon"]
    edge = blackouts_ahead([later], local(BERLIN, 2026, 12, 9), 86400)
    assert edge == []  # starts exactly at now + horizon: not before it
    with pytest.raises(ValueError, match="horizon"):
        blackouts_ahead([], now, -1)


# --- decide --------------------------------------------------------------------------------

W = window()  # daily 02:00-05:00 Europe/Berlin, catch_up: run-once
SKIPPING = window(catch_up="skip")
CLOSE = blackout_from("quarter-end close", date(2026, 12, 28), date(2027, 1, 4), BERLIN)


def test_decide_in_window_runs_to_the_windows_end() -> None:
    now = local(BERLIN, 2026, 12, 2, 2, 0, 30)
    d = decide(W, now, local(BERLIN, 2026, 12, 1, 2, 0, 5), [])
    assert (d.action, d.missed, d.reason) == ("run", 0, "in its window 02:00-05:00")
    assert same_instant(d.slot, local(BERLIN, 2026, 12, 2, 2))
    assert same_instant(d.ends, local(BERLIN, 2026, 12, 2, 5))


def test_decide_late_start_inside_the_window_still_ends_at_its_end() -> None:
    d = decide(W, local(BERLIN, 2026, 12, 2, 4, 10), local(BERLIN, 2026, 12, 1, 2), [])
    assert d.action == "run"
    assert same_instant(d.ends, local(BERLIN, 2026, 12, 2, 5))


def test_decide_already_ran_in_this_window_waits() -> None:
    d = decide(W, local(BERLIN, 2026, 12, 2, 4), local(BERLIN, 2026, 12, 2, 2, 0, 1), [])
    assert (d.action, d.reason) == ("wait", "next slot 2026-12-03 02:00")
    assert same_instant(d.slot, local(BERLIN, 2026, 12, 3, 2))


def test_decide_just_after_the_window_end_catches_up() -> None:
    d = decide(W, local(BERLIN, 2026, 12, 2, 5), local(BERLIN, 2026, 12, 1, 2), [])
    assert (d.action, d.missed) == ("catch-up", 1)
    assert same_instant(d.slot, local(BERLIN, 2026, 12, 2, 2))
    assert same_instant(d.ends, local(BERLIN, 2026, 12, 2, 8))  # now + length
    assert d.reason == (
        "missed 1 slot since 2026-12-02 02:00 (last run 2026-12-01 02:00):"
        " run once now (catch_up: run-once)"
    )


def test_decide_missed_three_slots_run_once() -> None:
    now, last = local(BERLIN, 2026, 12, 1, 12), local(BERLIN, 2026, 11, 28, 2, 3)
    d = decide(W, now, last, [])
    assert (d.action, d.missed) == ("catch-up", 3)
    assert same_instant(d.slot, local(BERLIN, 2026, 12, 1, 2))  # the latest missed
    assert same_instant(d.ends, local(BERLIN, 2026, 12, 1, 15))
    assert d.reason.startswith("missed 3 slots since 2026-11-29 02:00 (last run 2026-11-28 02:03)")


def test_decide_missed_three_slots_skip() -> None:
    now, last = local(BERLIN, 2026, 12, 1, 12), local(BERLIN, 2026, 11, 28, 2, 3)
    d = decide(SKIPPING, now, last, [])
    assert (d.action, d.missed, d.ends) == ("skip", 3, None)
    assert same_instant(d.slot, local(BERLIN, 2026, 12, 1, 2))
    assert d.reason.endswith(": skipped (catch_up: skip); next slot 2026-12-02 02:00")
    # Passing the skipped slot as last_run marks the missed ones handled.
    assert decide(SKIPPING, now, d.slot, []).action == "wait"


def test_decide_open_window_after_missed_slots_runs_and_counts_them() -> None:
    now, last = local(BERLIN, 2026, 12, 1, 3), local(BERLIN, 2026, 11, 28, 2)
    for w in (W, SKIPPING):
        d = decide(w, now, last, [])
        assert (d.action, d.missed) == ("run", 3 - 1)  # 29th, 30th; the 1st is the run
        assert same_instant(d.slot, local(BERLIN, 2026, 12, 1, 2))


def test_decide_never_run() -> None:
    d = decide(W, local(BERLIN, 2026, 12, 1, 12), None, [])
    assert (d.action, d.missed, d.reason) == ("wait", 0, "next slot 2026-12-02 02:00 (never run)")
    d = decide(W, local(BERLIN, 2026, 12, 1, 3), None, [])  # its window is open: run it
    assert d.action == "run"


def test_decide_blackout_now_blocks_a_run() -> None:
    now = local(BERLIN, 2026, 12, 29, 2, 30)
    d = decide(W, now, local(BERLIN, 2026, 12, 28, 2) - timedelta(days=1), [CLOSE])
    assert (d.action, d.ends) == ("blocked", None)
    assert same_instant(d.slot, local(BERLIN, 2026, 12, 29, 2))
    assert d.reason.startswith("blackout 'quarter-end close' until 2027-01-05 00:00 (holds back:")


def test_decide_blackout_covering_whole_windows_then_ended_does_not_catch_up() -> None:
    last = local(BERLIN, 2026, 12, 27, 2)
    now = local(BERLIN, 2027, 1, 5, 0, 30)  # the close ended; the 5th's window not yet open
    d = decide(W, now, last, [CLOSE])
    assert (d.action, d.missed) == ("wait", 0)
    assert d.reason == "next slot 2027-01-05 02:00; 8 slots skipped by blackout"
    d = decide(W, local(BERLIN, 2027, 1, 5, 2, 1), last, [CLOSE])
    assert (d.action, d.missed) == ("run", 0)


def test_decide_partly_free_window_in_a_blackout_is_missed() -> None:
    # The close starts at 04:00 on the 28th: the 28th's window had 02:00-04:00 free, so a
    # scheduler that was down then missed it.
    close = blackout_from("close", datetime(2026, 12, 28, 4), date(2027, 1, 4), BERLIN)
    d = decide(W, local(BERLIN, 2027, 1, 5, 0, 30), local(BERLIN, 2026, 12, 27, 2), [close])
    assert (d.action, d.missed) == ("catch-up", 1)
    assert same_instant(d.slot, local(BERLIN, 2026, 12, 28, 2))


def test_decide_back_to_back_blackouts_cover_a_window_together() -> None:
    a = blackout_from("a", datetime(2026, 12, 2, 0), datetime(2026, 12, 2, 3), BERLIN)
    b = blackout_from("b", datetime(2026, 12, 2, 3), datetime(2026, 12, 2, 6), BERLIN)
    last, now = local(BERLIN, 2026, 12, 1, 2), local(BERLIN, 2026, 12, 2, 12)
    assert decide(W, now, last, [a, b]).action == "wait"
    assert decide(W, now, last, [a]).action == "catch-up"
    d = decide(W, local(BERLIN, 2026, 12, 2, 2), last, [a, b])
    assert d.reason.startswith("blackout 'a', then 'b' until 2026-12-02 06:00")


def test_decide_catch_up_during_a_blackout_is_blocked() -> None:
    deploy = blackout_from("deploy", datetime(2026, 12, 1, 11), datetime(2026, 12, 1, 13), BERLIN)
    now, last = local(BERLIN, 2026, 12, 1, 12), local(BERLIN, 2026, 11, 28, 2)
    d = decide(W, now, last, [deploy])
    assert (d.action, d.missed, d.ends) == ("blocked", 3, None)
    assert d.reason.startswith("blackout 'deploy' until 2026-12-01 13:00 (holds back: missed 3")
    after = decide(W, local(BERLIN, 2026, 12, 1, 13), last, [deploy])
    assert (after.action, after.missed) == ("catch-up", 3)


def test_decide_skip_is_not_blocked() -> None:
    deploy = blackout_from("deploy", datetime(2026, 12, 1, 11), datetime(2026, 12, 1, 13), BERLIN)
    d = decide(SKIPPING, local(BERLIN, 2026, 12, 1, 12), local(BERLIN, 2026, 11, 28, 2), [deploy])
    assert d.action == "skip"


def test_decide_on_dst_nights() -> None:
    w = window(at="02:30", length=HOUR)
    spring = decide(w, local(BERLIN, 2026, 3, 29, 3, 10), local(BERLIN, 2026, 3, 28, 2, 30), [])
    assert (spring.action, spring.reason) == ("run", "in its window 03:00-04:00")
    fall_first = local(BERLIN, 2026, 10, 25, 2, 40)  # the first 02:40 (CEST)
    fall = decide(w, fall_first, local(BERLIN, 2026, 10, 24, 2, 30), [])
    assert (fall.action, fall.reason) == ("run", "in its window 02:30 CEST-02:30 CET")
    # The second 02:20 (CET) is 50 minutes after the slot: still its window, not a new one.
    second = local(BERLIN, 2026, 10, 25, 2, 20, fold=1)
    again = decide(w, second, local(BERLIN, 2026, 10, 24, 2, 30), [])
    assert (again.action, again.reason) == ("run", "in its window 02:30 CEST-02:30 CET")
    assert decide(w, second, fall_first, []).action == "wait"  # it ran in the first pass
    # The second 02:40 (CET) is past the window's end (an hour of elapsed time).
    late = decide(w, local(BERLIN, 2026, 10, 25, 2, 40, fold=1), local(BERLIN, 2026, 10, 24, 3), [])
    assert (late.action, late.missed) == ("catch-up", 1)
    after = decide(w, local(BERLIN, 2026, 10, 25, 3, 0), fall_first, [])
    assert (after.action, after.missed) == ("wait", 0)


def test_decide_window_past_midnight_reason_names_the_days() -> None:
    w = window("weekly", at="22:00", length=2 * 86400, weekday=4)
    d = decide(w, local(BERLIN, 2026, 12, 5, 12), None, [])
    assert d.reason == "in its window 22:00-22:00 (+2 days)"


# --- properties ----------------------------------------------------------------------------

ZONES = [BERLIN, NEW_YORK, ZULU, LORD_HOWE, ZoneInfo("Asia/Kolkata"), ZoneInfo("Pacific/Chatham")]
# Around the DST nights of 2026 as well as anywhere in 2000-2100.
moments = st.one_of(
    st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.datetimes(datetime(2026, 3, 7), datetime(2026, 3, 30), timezones=st.just(UTC)),
    st.datetimes(datetime(2026, 10, 24), datetime(2026, 11, 2), timezones=st.just(UTC)),
)
wall_times = st.one_of(
    st.sampled_from([time(h, m) for h in (0, 1, 2, 3) for m in (0, 15, 30, 59)]),
    st.times(),
)


@st.composite
def windows(draw: st.DrawFn) -> Window:
    every = draw(st.sampled_from(EVERY))
    kw: dict = {}
    if every == "weekly":
        kw["weekday"] = draw(st.integers(0, 6))
    if every in ("monthly", "quarterly", "yearly"):
        kw["day"] = draw(st.one_of(st.integers(1, 31), st.just(LAST)))
    if every in ("quarterly", "yearly"):
        kw["month"] = draw(st.integers(1, 3 if every == "quarterly" else 12))
    longest = 86400 if every == "daily" else 7 * 86400
    return Window(
        "w",
        "p",
        every,
        draw(wall_times),
        draw(st.floats(1, longest)),
        draw(st.sampled_from(ZONES)),
        catch_up=draw(st.sampled_from(["run-once", "skip"])),
        **kw,
    )


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(windows(), moments)
def test_next_slot_is_after_and_on_one_of_the_windows_days(w: Window, t: datetime) -> None:
    slot = next_slot(w, t)
    assert slot > t and slot.tzinfo is w.tz
    assert same_instant(slot_on(w, slot.date()), slot)
    # Every date from t's to the slot's has no slot in between.
    day = t.astimezone(w.tz).date()
    while day < slot.date():
        other = slot_on(w, day)
        assert other is None or other <= t
        day += timedelta(days=1)
    # On its date it starts at its wall time, or just after a gap (never before, never
    # more than the gap later).
    wall = slot.replace(tzinfo=None)
    wanted = datetime.combine(slot.date(), w.at)
    assert timedelta(0) <= wall - wanted <= timedelta(hours=1)
    if wall != wanted:
        assert (
            wanted.replace(tzinfo=w.tz).astimezone(UTC).astimezone(w.tz).replace(tzinfo=None)
            != wanted
        )  # the wanted wall time does not exist that day


@PROPERTY
@given(windows(), moments, st.floats(0, 120 * 86400))
def test_slots_between_is_repeated_next_slot(w: Window, t: datetime, span: float) -> None:
    end = t + timedelta(seconds=span)
    expected, slot = [], next_slot(w, t)
    while slot <= end and len(expected) < MAX_SLOTS:
        expected.append(slot)
        slot = next_slot(w, slot)
    utc = [s.astimezone(UTC) for s in slots_between(w, t, end)]
    assert utc == [s.astimezone(UTC) for s in expected]


@PROPERTY
@given(windows(), moments)
def test_current_slot_is_open_and_the_latest(w: Window, now: datetime) -> None:
    slot = current_slot(w, now)
    if slot is None:
        assert next_slot(w, now - timedelta(seconds=w.length)) > now
    else:
        assert slot <= now < window_end(w, slot)
        assert next_slot(w, slot) > now


@PROPERTY
@given(windows(), moments, st.one_of(st.none(), st.floats(0, 40 * 86400)), st.booleans())
def test_decide_is_consistent(w: Window, now: datetime, ago: float | None, dark: bool) -> None:
    last = None if ago is None else now - timedelta(seconds=ago)
    # From now on: it covers no missed window (they ended by now), only holds starts back.
    blackouts = [Blackout("b", now, now + timedelta(hours=1))] if dark else []
    d = decide(w, now, last, blackouts)
    free = decide(w, now, last, [])
    assert d.action in ("run", "catch-up", "skip", "blocked", "wait") and d.reason
    if d.action == "run":
        assert same_instant(d.slot, current_slot(w, now)) and d.ends > now
    if d.action == "catch-up":
        assert d.missed > 0 and d.ends == now + timedelta(seconds=w.length)
    if d.action == "wait":
        assert same_instant(d.slot, next_slot(w, now)) and d.missed == 0
    if last is None:
        assert d.missed == 0 and d.action in ("run", "wait", "blocked")
    if not dark:
        assert d == free
    elif free.action in ("run", "catch-up"):
        assert d.action == "blocked" and same_instant(d.slot, free.slot)
        assert "blackout 'b' until" in d.reason
