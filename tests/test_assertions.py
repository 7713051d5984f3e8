"""Drill assertions (crmmaint.assertions): conditions parsed, values compared as numbers,
text, null or times against the backup's time; malformed ones refused with their place."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmmaint.assertions import parse_assertions, parse_condition

BACKUP = datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()


def check(expect: str, value: str | None, *, rows: list | None = None) -> tuple[bool, str]:
    (item,) = parse_assertions([{"query": "select x", "expect": expect}])
    return item.evaluate(rows if rows is not None else [[value]], BACKUP)


@pytest.mark.parametrize(
    ("expect", "value", "ok"),
    [
        ("== 0", "0", True),
        ("== 0", "0.000", True),  # numbers compare as numbers
        ("== 0", "1", False),
        ("!= 0", "3", True),
        ("> 500", "500", False),
        (">= 500", "500", True),
        ("< 1e3", "999.5", True),
        ("== 'won'", "won", True),
        ("== 'won'", "lost", False),
        ("== null", None, True),
        ("== null", "0", False),
        ("!= null", None, False),
        ("== 0", None, False),  # null is no number
        ("== 0", "zero", False),
        (">= backup_time - 1 day", "2026-11-29 12:00:00", True),
        (">= backup_time - 1 day", "2026-11-29 11:59:59", False),
        (">= backup_time - 1 day", "2026-11-29 13:00:00+01", True),  # zone honoured
        (">= backup_time - 36h", "2026-11-29 00:00:00+00:00", True),
        ("<= backup_time", str(BACKUP), True),  # seconds since the epoch
        (">= backup_time - 2 days", "2026-11-28T12:00:00Z", True),
        (">= backup_time", "yesterday", False),
    ],
)
def test_conditions(expect: str, value: str | None, ok: bool) -> None:
    assert check(expect, value)[0] is ok


def test_a_query_must_give_one_value() -> None:
    assert check("== 0", None, rows=[]) == (False, "0 rows, not one value")
    assert check("== 0", None, rows=[["0"], ["0"]]) == (False, "2 rows, not one value")
    assert check("== 0", None, rows=[["0", "1"]]) == (False, "2 columns, not one value")


@given(st.integers(-(10**30), 10**30), st.integers(-(10**30), 10**30))
def test_numbers_compare_exactly(found: int, want: int) -> None:
    for op, holds in {
        "==": found == want, "!=": found != want, "<": found < want,
        "<=": found <= want, ">": found > want, ">=": found >= want,
    }.items():  # fmt: skip
        assert check(f"{op} {want}", str(found))[0] is holds


@given(st.integers(0, 10**6), st.sampled_from(["s", "m", "h", "d", " days", " hour", " minutes"]))
def test_backup_time_offsets(amount: int, unit: str) -> None:
    op, (name, offset) = parse_condition(f">= backup_time - {amount}{unit}")
    factor = {"s": 1, "m": 60, "h": 3600, "d": 86400, " days": 86400, " hour": 3600,
              " minutes": 60}[unit]  # fmt: skip
    assert (op, name, offset) == (">=", "backup_time", -amount * factor)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("select 1", "must be a list"),
        ([{"query": "select 1"}], "assertion 1: expect is missing"),
        ([{"query": "select 1", "expect": "== 1"}, {"query": "x", "expect": "~ 1"}],
         "assertion 2: expect '~ 1' is not a condition"),
        ([{"query": "select 1", "expect": "< null"}], "null compares only with == or !="),
        ([{"query": "select 1", "expect": "== backup_time - soon"}], "is not a duration"),
        ([{"query": "select 1", "expect": "== maybe"}], "is not a number, a quoted string"),
        ([{"query": " ", "expect": "== 1"}], "query must be an SQL query"),
        ([{"query": "select 1", "expect": "== 1", "when": 1}], "unknown key 'when'"),
        ([["select 1", "== 1"]], "must be a mapping"),
        ([{"query": "select 1", "expect": "== 1"}] * 51, "at most 50"),
    ],
)  # fmt: skip
def test_malformed_assertions_say_what_and_where(value, message: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        parse_assertions(value)
    assert message in str(caught.value), str(caught.value)


def test_names_and_queries_as_reports_show_them() -> None:
    (named, plain) = parse_assertions([
        {"name": "no orphans", "query": "select 0;", "expect": "== 0"},
        {"query": "select count(*)\n  from customers;", "expect": "== 0"},
    ])  # fmt: skip
    assert (named.name, named.query) == ("no orphans", "select 0")
    assert (plain.name, plain.query) == (
        "select count(*) from customers",
        "select count(*)\n  from customers",
    )
    assert plain.operand == Decimal(0)


def test_a_long_value_is_cut_where_reports_show_it() -> None:
    ok, found = check("== 'x'", "y" * 5000)
    assert not ok and found == "y" * 200 + "…"


@pytest.mark.parametrize("expect", ["== 'it''s'", '== "it\'s"'])
def test_quotes_inside_a_string(expect: str) -> None:
    assert check(expect, "it's") == (True, "it's")
