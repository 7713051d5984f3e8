"""compare_facts: every kind of difference between recorded and restored facts fails a drill."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmmaint.engines import compare_facts

RECORDED = {
    "tables": ["public.customers", "public.deals"],
    "row_counts": {"public.customers": 120, "public.deals": 40},
    "schema_fingerprint": "ab" * 32,
    "sequences": {"public.customers_id_seq": 120, "public.deals_id_seq": None},
}


def changed(**changes) -> dict:
    facts = copy.deepcopy(RECORDED)
    facts.update(changes)
    return facts


def test_identical_facts_pass() -> None:
    assert compare_facts(RECORDED, copy.deepcopy(RECORDED)) == []


@pytest.mark.parametrize(
    ("restored", "problem"),
    [
        (
            changed(tables=["public.customers"]),
            "tables missing: public.deals",
        ),
        (
            changed(tables=[*RECORDED["tables"], "public.x"]),
            "unexpected tables: public.x",
        ),
        (
            changed(row_counts={"public.customers": 119, "public.deals": 40}),
            "public.customers: 119 rows, expected 120",
        ),
        (
            changed(row_counts={"public.customers": 121, "public.deals": 40}),
            "public.customers: 121 rows, expected 120",  # more rows is as wrong as fewer
        ),
        (changed(schema_fingerprint="cd" * 32), "schema fingerprint differs"),
        (
            changed(sequences={"public.deals_id_seq": None}),
            "sequence missing: public.customers_id_seq",
        ),
        (
            changed(sequences={"public.customers_id_seq": 100, "public.deals_id_seq": None}),
            "sequence public.customers_id_seq at 100, expected at least 120",
        ),
        (
            changed(sequences={"public.customers_id_seq": None, "public.deals_id_seq": None}),
            "sequence public.customers_id_seq at None, expected at least 120",
        ),
    ],
)
def test_each_kind_of_difference_is_reported(restored: dict, problem: str) -> None:
    assert compare_facts(RECORDED, restored) == [problem]


def test_a_sequence_may_only_be_ahead() -> None:
    ahead = changed(sequences={"public.customers_id_seq": 125, "public.deals_id_seq": 3})
    assert compare_facts(RECORDED, ahead) == []


@given(
    table=st.sampled_from(sorted(RECORDED["row_counts"])),
    delta=st.integers(-1000, 1000).filter(bool),
)
def test_any_row_count_change_fails(table: str, delta: int) -> None:
    counts = dict(RECORDED["row_counts"])
    counts[table] += delta
    problems = compare_facts(RECORDED, changed(row_counts=counts))
    assert problems == [f"{table}: {counts[table]} rows, expected {RECORDED['row_counts'][table]}"]


SUMS = {"public.customers": "1" * 64, "public.deals": "2" * 64}


@given(st.sampled_from(sorted(SUMS)), st.text("0123456789abcdef", min_size=64, max_size=64))
def test_any_table_whose_content_differs_is_named(table: str, other: str) -> None:
    recorded = changed(table_checksums=SUMS)
    restored = changed(table_checksums={**SUMS, table: other})
    problems = compare_facts(recorded, restored)
    if other == SUMS[table]:
        assert problems == []
    else:
        assert problems == [
            f"{table}: content differs from the backup's (checksum {other[:12]}, "
            f"expected {SUMS[table][:12]})"
        ]


def test_content_is_compared_only_when_both_sides_have_it() -> None:
    # an older backup recorded none; a drill that could not read back adds none
    assert compare_facts(RECORDED, changed(table_checksums={"public.deals": "3" * 64})) == []
    assert compare_facts(changed(table_checksums=SUMS), RECORDED) == []
    unread = changed(table_checksums={"public.deals": SUMS["public.deals"]})
    assert compare_facts(changed(table_checksums=SUMS), unread) == [
        "public.customers: its rows were not read back"
    ]
