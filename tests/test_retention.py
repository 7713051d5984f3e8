"""Retention planning: hand-written cases per rule, then properties over random histories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmmaint.errors import ConfigError
from crmmaint.repository.retention import (
    COUNT_RULES,
    PERIOD_RULES,
    BackupRef,
    RetentionPolicy,
    Verdict,
    format_duration,
    plan_prune,
)

DAY = 86400.0
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC).timestamp()


def at(year: int, month: int, day: int, hour: int = 3) -> float:
    return datetime(year, month, day, hour, tzinfo=UTC).timestamp()


def daily_history(days: int, source: str = "crm", hour: int = 3) -> list[BackupRef]:
    """One backup a day at ``hour`` UTC, ending on the day of NOW; ids are the dates."""
    end = datetime(2026, 11, 20, hour, tzinfo=UTC)
    out = []
    for n in range(days):
        t = end - timedelta(days=n)
        out.append(BackupRef(f"{source}-{t:%Y-%m-%dT%H}", source, t.timestamp()))
    return out


def kept(backups, policy, now=NOW) -> list[str]:
    return plan_prune(backups, policy, now).keep


# --- policy parsing -------------------------------------------------------------------------


def test_from_mapping_accepts_dashes_underscores_and_durations():
    policy = RetentionPolicy.from_mapping(
        {"keep-daily": 7, "keep_weekly": "4", "keep-within": "2d", "Keep-Yearly": 1}
    )
    assert policy == RetentionPolicy(
        keep_daily=7, keep_weekly=4, keep_yearly=1, keep_within=2 * DAY
    )
    assert RetentionPolicy.from_mapping({"keep-within": "3600s"}).keep_within == 3600.0
    assert RetentionPolicy.from_mapping({"keep-within": 0}).keep_within == 0.0
    assert RetentionPolicy.from_mapping({"keep-within": None}).is_empty


def test_from_mapping_rejects_unknown_key_with_suggestion():
    with pytest.raises(ConfigError) as err:
        RetentionPolicy.from_mapping({"keep-dayly": 7}, where="repository main")
    text = str(err.value)
    assert "repository main" in text and "'keep-dayly'" in text
    assert "did you mean keep-daily?" in text and "keep-quarterly" in text


@pytest.mark.parametrize(
    ("mapping", "fragment"),
    [
        ({"keep-daily": -1}, "keep-daily must not be negative"),
        ({"keep_last": "-3"}, "keep_last must not be negative"),
        ({"keep-weekly": 1.5}, "keep-weekly must be a whole number"),
        ({"keep-monthly": True}, "keep-monthly must be a whole number"),
        ({"keep-within": "2 fortnights"}, "keep-within: not a duration"),
        ({"keep-within": -5}, "keep-within: duration must not be negative"),
        ({"keep-daily": 1, "keep_daily": 2}, "keep-daily is given twice"),
        ({"keep-within": 3}, "keep-within: 3 has no unit"),
        ({"keep-within": "2.5"}, "keep-within: '2.5' has no unit"),
        ({"keep-daily": 99999999999}, "keep-daily must be at most 1000000000"),
    ],
)
def test_from_mapping_rejects_bad_values(mapping, fragment):
    with pytest.raises(ConfigError) as err:
        RetentionPolicy.from_mapping(mapping)
    assert fragment in str(err.value)
    assert err.value.hint  # every refusal says what to do


def test_constructor_validates_too():
    with pytest.raises(
        ConfigError, match="retention rule `keep_last: -1` must be a whole number >= 0"
    ):
        RetentionPolicy(keep_last=-1)
    with pytest.raises(ConfigError, match="keep-within must be a duration"):
        RetentionPolicy(keep_within=float("nan"))


def test_is_empty_and_describe():
    assert RetentionPolicy().is_empty
    assert RetentionPolicy(keep_within=0).is_empty
    assert not RetentionPolicy(keep_yearly=1).is_empty
    assert not RetentionPolicy(keep_within=60).is_empty
    policy = RetentionPolicy(keep_daily=7, keep_within=2 * DAY)
    assert policy.describe() == "keep-daily=7 keep-within=2d"
    assert RetentionPolicy().describe() == "(empty)"


@pytest.mark.parametrize(
    ("seconds", "text"), [(172800, "2d"), (90, "90s"), (7200, "2h"), (1209600, "2w"), (1.5, "1.5s")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


# --- rules, one at a time --------------------------------------------------------------------


def test_empty_policy_is_refused_even_with_no_backups():
    with pytest.raises(ConfigError, match="empty retention policy") as err:
        plan_prune(daily_history(3), RetentionPolicy(), NOW)
    assert "`keep_daily: 7`" in err.value.hint
    with pytest.raises(ConfigError):
        plan_prune([], RetentionPolicy(), NOW)


def test_no_backups_is_an_empty_decision():
    decision = plan_prune([], RetentionPolicy(keep_last=3), NOW)
    assert (decision.keep, decision.remove, decision.reasons) == ([], [], {})


def test_keep_last():
    history = daily_history(10)
    decision = plan_prune(history, RetentionPolicy(keep_last=3), NOW)
    assert decision.keep == [b.id for b in history[:3]]
    assert decision.remove == [b.id for b in history[3:]]
    assert decision.reasons[history[0].id] == ["last 1/3", "newest of source crm"]
    assert decision.reasons[history[2].id] == ["last 3/3"]


def test_keep_hourly_takes_newest_of_each_utc_hour():
    backups = [
        BackupRef("h11-b", "crm", at(2026, 11, 20, 11) + 1800),
        BackupRef("h11-a", "crm", at(2026, 11, 20, 11) + 60),
        BackupRef("h09", "crm", at(2026, 11, 20, 9)),
        BackupRef("h08", "crm", at(2026, 11, 20, 8)),
    ]
    decision = plan_prune(backups, RetentionPolicy(keep_hourly=2), NOW)
    assert decision.keep == ["h11-b", "h09"]
    assert decision.reasons["h09"] == ["hourly 2026-11-20T09"]
    assert RetentionPolicy.from_mapping({"keep-hourly": 24}).describe() == "keep-hourly=24"


def test_verdicts_list_every_backup_in_output_order():
    history = daily_history(4)
    history[2] = BackupRef(history[2].id, "crm", history[2].time, drilled=True)
    decision = plan_prune(history, RetentionPolicy(keep_within=2 * DAY), NOW)
    assert decision.verdicts == [
        Verdict(history[0], True, ("within 2d", "newest of source crm")),
        Verdict(history[1], True, ("within 2d",)),
        Verdict(history[2], True, ("newest drilled",)),
        Verdict(history[3], False, ()),
    ]


def test_keep_within_longer_than_a_century_is_refused():
    with pytest.raises(ConfigError, match="from 0 to 100 years"):
        RetentionPolicy.from_mapping({"keep-within": "99999w"})
    with pytest.raises(ConfigError, match="from 0 to 100 years"):
        RetentionPolicy(keep_within=float("inf"))


def test_keep_daily_takes_newest_of_each_day_and_skips_empty_days():
    backups = [
        BackupRef("d20-late", "crm", at(2026, 11, 20, 11)),
        BackupRef("d20-early", "crm", at(2026, 11, 20, 1)),
        BackupRef("d19", "crm", at(2026, 11, 19)),
        # no backup on the 18th and 17th: empty days do not count
        BackupRef("d16-late", "crm", at(2026, 11, 16, 23)),
        BackupRef("d16-early", "crm", at(2026, 11, 16, 0)),
        BackupRef("d15", "crm", at(2026, 11, 15)),
    ]
    decision = plan_prune(backups, RetentionPolicy(keep_daily=3), NOW)
    assert decision.keep == ["d20-late", "d19", "d16-late"]
    assert decision.remove == ["d20-early", "d16-early", "d15"]
    assert decision.reasons["d16-late"] == ["daily 2026-11-16"]


def test_days_are_utc_days():
    # 23:30 and 00:30 UTC are different days, whatever the local time zone says.
    backups = [
        BackupRef("after-midnight", "crm", at(2026, 11, 20, 0) + 1800),
        BackupRef("before-midnight", "crm", at(2026, 11, 19, 23) + 1800),
    ]
    assert kept(backups, RetentionPolicy(keep_daily=2)) == ["after-midnight", "before-midnight"]


def test_keep_weekly_uses_iso_weeks():
    # 2026-11-16 is a Monday (ISO week 47); the Sunday before it belongs to week 46.
    backups = [
        BackupRef("mon-w47", "crm", at(2026, 11, 16)),
        BackupRef("sun-w46", "crm", at(2026, 11, 15)),
        BackupRef("mon-w46", "crm", at(2026, 11, 9)),
        BackupRef("sun-w45", "crm", at(2026, 11, 8)),
    ]
    decision = plan_prune(backups, RetentionPolicy(keep_weekly=2), NOW)
    assert decision.keep == ["mon-w47", "sun-w46"]
    assert decision.reasons["sun-w46"] == ["weekly 2026-W46"]


def test_iso_week_crossing_a_year():
    # 2027-01-01 (a Friday) is in ISO week 2026-W53.
    backups = [
        BackupRef("2027-01-04", "crm", at(2027, 1, 4)),
        BackupRef("2027-01-01", "crm", at(2027, 1, 1)),
        BackupRef("2026-12-28", "crm", at(2026, 12, 28)),
    ]
    decision = plan_prune(backups, RetentionPolicy(keep_weekly=3), at(2027, 1, 5))
    assert decision.keep == ["2027-01-04", "2027-01-01"]
    assert decision.reasons["2027-01-01"] == ["weekly 2026-W53"]


def test_keep_monthly_quarterly_yearly():
    history = daily_history(800)  # 2024-09-12 .. 2026-11-20
    monthly = plan_prune(history, RetentionPolicy(keep_monthly=3), NOW)
    assert monthly.keep == ["crm-2026-11-20T03", "crm-2026-10-31T03", "crm-2026-09-30T03"]
    assert monthly.reasons["crm-2026-10-31T03"] == ["monthly 2026-10"]

    quarterly = plan_prune(history, RetentionPolicy(keep_quarterly=3), NOW)
    assert quarterly.keep == ["crm-2026-11-20T03", "crm-2026-09-30T03", "crm-2026-06-30T03"]
    assert quarterly.reasons["crm-2026-06-30T03"] == ["quarterly 2026-Q2"]

    yearly = plan_prune(history, RetentionPolicy(keep_yearly=5), NOW)
    # Fewer years with backups than asked: every year that has one keeps its newest.
    assert yearly.keep == ["crm-2026-11-20T03", "crm-2025-12-31T03", "crm-2024-12-31T03"]


def test_rules_overlap_rather_than_extend_each_other():
    # daily=7 + weekly=2 over daily backups ending Friday 2026-11-20: the newest of ISO weeks 47
    # and 46 (Fri 20th, Sun 15th) are already dailies, so weekly adds nothing (as in restic;
    # borg would count only weeks not already covered and reach back to week 45).
    history = daily_history(30)
    decision = plan_prune(history, RetentionPolicy(keep_daily=7, keep_weekly=2), NOW)
    assert decision.keep == [b.id for b in history[:7]]
    assert decision.reasons["crm-2026-11-15T03"] == ["daily 2026-11-15", "weekly 2026-W46"]


def test_keep_within():
    history = daily_history(10, hour=12)  # exactly n days old at NOW
    decision = plan_prune(history, RetentionPolicy(keep_within=2 * DAY), NOW)
    assert decision.keep == [b.id for b in history[:3]]  # age 0, 1 and exactly 2 days
    assert decision.reasons[history[2].id] == ["within 2d"]


def test_future_backups_are_kept_and_take_no_slot():
    future = BackupRef("skewed", "crm", NOW + 3 * DAY)
    history = [*daily_history(5), future]
    decision = plan_prune(history, RetentionPolicy(keep_last=1), NOW)
    assert decision.keep == ["skewed", "crm-2026-11-20T03"]
    assert decision.reasons["skewed"] == ["in the future (clock skew?)", "newest of source crm"]
    assert decision.reasons["crm-2026-11-20T03"] == ["last 1/1"]


def test_newest_and_newest_drilled_are_always_kept():
    history = daily_history(20)
    history[12] = BackupRef(history[12].id, "crm", history[12].time, drilled=True)
    history[15] = BackupRef(history[15].id, "crm", history[15].time, drilled=True)
    decision = plan_prune(history, RetentionPolicy(keep_yearly=1), NOW)
    assert decision.keep == [history[0].id, history[12].id]
    assert decision.reasons[history[0].id] == ["yearly 2026", "newest of source crm"]
    assert decision.reasons[history[12].id] == ["newest drilled"]
    assert history[15].id in decision.remove


def test_sources_are_pruned_independently_and_in_order():
    crm = daily_history(5, source="crm")
    old_files = [BackupRef("files-old", "files", at(2020, 1, 1))]
    billing = daily_history(3, source="billing")
    decision = plan_prune([*crm, *old_files, *billing], RetentionPolicy(keep_last=2), NOW)
    assert decision.keep == [
        *[b.id for b in billing[:2]],
        *[b.id for b in crm[:2]],
        "files-old",  # the only backup of its source survives any policy
    ]
    assert decision.remove == [billing[2].id, *[b.id for b in crm[2:]]]
    assert decision.reasons["files-old"] == ["last 1/2", "newest of source files"]


def test_equal_times_are_ordered_by_id():
    backups = [BackupRef(i, "crm", NOW - DAY) for i in ("b", "c", "a")]
    decision = plan_prune(backups, RetentionPolicy(keep_last=1), NOW)
    assert decision.keep == ["c"]
    assert decision.remove == ["b", "a"]


def test_duplicate_ids_are_a_programming_error():
    backups = [BackupRef("x", "crm", NOW), BackupRef("x", "files", NOW)]
    with pytest.raises(ValueError, match="appears twice"):
        plan_prune(backups, RetentionPolicy(keep_last=1), NOW)


def test_backup_time_must_be_finite():
    with pytest.raises(ValueError, match="finite"):
        BackupRef("x", "crm", float("inf"))


# --- properties ------------------------------------------------------------------------------

counts = st.integers(min_value=0, max_value=6)
withins = st.one_of(st.none(), st.floats(min_value=0, max_value=90 * DAY))
policies = st.builds(
    RetentionPolicy,
    keep_last=counts,
    keep_hourly=counts,
    keep_daily=counts,
    keep_weekly=counts,
    keep_monthly=counts,
    keep_quarterly=counts,
    keep_yearly=counts,
    keep_within=withins,
).filter(lambda p: not p.is_empty)


def _history(rows) -> list[BackupRef]:
    return [
        # Some times rounded to whole hours so equal timestamps and period edges occur.
        BackupRef(
            f"b{i:03d}", source, NOW - (round(offset / 3600) * 3600 if whole else offset), drilled
        )
        for i, (offset, source, drilled, whole) in enumerate(rows)
    ]


#: Up to 40 backups of up to 3 sources over ~3 years, some drilled, a few in the future.
histories = st.lists(
    st.tuples(
        st.floats(min_value=-3 * DAY, max_value=3 * 366 * DAY),
        st.sampled_from(["crm", "billing", "files"]),
        st.booleans(),
        st.booleans(),
    ),
    max_size=40,
).map(_history)


def newest(backups, pick=lambda b: True) -> dict[str, str]:
    best: dict[str, BackupRef] = {}
    for b in backups:
        if pick(b) and (
            b.source not in best or (b.time, b.id) > (best[b.source].time, best[b.source].id)
        ):
            best[b.source] = b
    return {s: b.id for s, b in best.items()}


@settings(max_examples=200, deadline=None)
@given(histories, policies)
def test_partition_and_always_kept(backups, policy):
    decision = plan_prune(backups, policy, NOW)
    keep, remove = set(decision.keep), set(decision.remove)
    assert keep | remove == {b.id for b in backups}
    assert not keep & remove
    assert len(decision.keep) + len(decision.remove) == len(backups)
    assert set(decision.reasons) == keep and all(decision.reasons.values())
    assert set(newest(backups).values()) <= keep
    assert set(newest(backups, lambda b: b.drilled).values()) <= keep
    assert {b.id for b in backups if b.time > NOW} <= keep


@settings(max_examples=200, deadline=None)
@given(histories, policies)
def test_every_kept_backup_has_a_reason_and_no_removed_one_has(backups, policy):
    decision = plan_prune(backups, policy, NOW)
    assert sorted(v.backup.id for v in decision.verdicts) == sorted(b.id for b in backups)
    assert [v.backup.id for v in decision.verdicts if v.kept] == decision.keep
    assert [v.backup.id for v in decision.verdicts if not v.kept] == decision.remove
    for verdict in decision.verdicts:
        assert bool(verdict.reasons) == verdict.kept
        if verdict.kept:
            assert list(verdict.reasons) == decision.reasons[verdict.backup.id]
    for source, backup_id in newest(backups).items():
        assert f"newest of source {source}" in decision.reasons[backup_id]
    for backup_id in newest(backups, lambda b: b.drilled).values():
        assert "newest drilled" in decision.reasons[backup_id]


@settings(max_examples=200, deadline=None)
@given(histories, policies)
def test_each_reason_is_true_of_its_backup(backups, policy):
    """A reason names a rule the policy sets (or an always-kept case) and holds for the
    backup it keeps: its age for ``within``, its UTC period for a period rule, its rank for
    ``last``."""
    by_id = {b.id: b for b in backups}
    words = {word: (name, period_of) for name, (word, period_of) in PERIOD_RULES.items()}
    decision = plan_prune(backups, policy, NOW)
    for backup_id, reasons in decision.reasons.items():
        backup = by_id[backup_id]
        when = datetime.fromtimestamp(backup.time, tz=UTC)
        for reason in reasons:
            word, _, rest = reason.partition(" ")
            if word == "within":
                assert policy.keep_within and NOW - backup.time <= policy.keep_within
                assert rest == format_duration(policy.keep_within)
            elif word == "last":
                rank, _, total = rest.partition("/")
                assert int(total) == policy.keep_last and 1 <= int(rank) <= policy.keep_last
            elif word in words:
                name, period_of = words[word]
                assert getattr(policy, name) > 0 and rest == period_of(when)
            elif word == "newest":
                assert rest in (f"of source {backup.source}", "drilled")
            else:
                assert reason == "in the future (clock skew?)" and backup.time > NOW


@settings(max_examples=200, deadline=None)
@given(histories, policies, policies)
def test_monotonic(backups, a, b):
    # The field-wise maximum of two policies is larger than each: it keeps all either keeps.
    larger = RetentionPolicy(
        **{name: max(getattr(a, name), getattr(b, name)) for name in COUNT_RULES},
        keep_within=max(a.keep_within or 0, b.keep_within or 0) or None,
    )
    big = set(plan_prune(backups, larger, NOW).keep)
    assert set(plan_prune(backups, a, NOW).keep) <= big
    assert set(plan_prune(backups, b, NOW).keep) <= big


@settings(max_examples=200, deadline=None)
@given(histories, policies)
def test_idempotent(backups, policy):
    first = plan_prune(backups, policy, NOW)
    survivors = [b for b in backups if b.id in set(first.keep)]
    second = plan_prune(survivors, policy, NOW)
    assert second.remove == []
    assert second.keep == first.keep


@settings(max_examples=100, deadline=None)
@given(histories, policies, st.randoms(use_true_random=False))
def test_input_order_does_not_matter(backups, policy, rnd):
    shuffled = list(backups)
    rnd.shuffle(shuffled)
    assert plan_prune(shuffled, policy, NOW) == plan_prune(backups, policy, NOW)


@settings(max_examples=50, deadline=None)
@given(histories)
def test_empty_policy_is_always_refused(backups):
    with pytest.raises(ConfigError):
        plan_prune(backups, RetentionPolicy(keep_within=0), NOW)
