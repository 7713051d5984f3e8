"""Retention: which backups a prune keeps, as a pure function over plain data.

``plan_prune(backups, policy, now)`` decides per source, in the manner of borg's and restic's
``prune``: each grandfather-father-son rule keeps the newest backup in each of the N most recent
UTC periods (hour, day, ISO week, month, quarter, year) that hold a backup; ``keep_last`` keeps the N
newest; ``keep_within`` keeps everything younger than a duration. Rules overlap (a backup kept by
``daily`` also fills its ``weekly`` period), which keeps the result monotonic and idempotent.
Whatever the policy, the newest backup and the newest drilled backup of every source are kept,
and so is any backup dated in the future (clock skew). Nothing here touches a repository.

The decision carries, for every backup, the reasons that keep it (``daily 2026-11-29``,
``within 2d``, ``newest of source crm``, ``newest drilled``...): they are what the rules
found, so ``prune --check`` shows why without computing anything again.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from crmmaint.errors import ConfigError, Setting
from crmmaint.units import MAX_COUNT, format_duration, parse_duration

#: Count rules in the order they are evaluated and reported.
COUNT_RULES = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_quarterly",
    "keep_yearly",
)
POLICY_KEYS = (*COUNT_RULES, "keep_within")
#: Longest ``keep_within`` (seconds): a century, as for any duration a playbook step takes.
MAX_KEEP_WITHIN = 100 * 365 * 86400.0


@dataclass(frozen=True)
class RetentionPolicy:
    """How many backups to keep per rule; ``keep_within`` is in seconds (None: rule unset)."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_quarterly: int = 0
    keep_yearly: int = 0
    keep_within: float | None = None

    def __post_init__(self) -> None:
        for name in COUNT_RULES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                given, example = Setting(name, value), Setting(name, 7)
                raise ConfigError(
                    f"retention rule {given} must be a whole number >= 0",
                    hint=f"use e.g. {example}, or 0 to turn the rule off",
                    settings=(given, example),
                )
        within = self.keep_within
        if within is not None and (
            isinstance(within, bool)
            or not isinstance(within, int | float)
            or not 0 <= within <= MAX_KEEP_WITHIN
        ):
            shown = (
                format_duration(within)
                if isinstance(within, int | float)
                and not isinstance(within, bool)
                and math.isfinite(within)
                and within >= 0
                else repr(within)
            )
            raise ConfigError(
                f"retention policy keep-within must be a duration from 0 to 100 years "
                f"(36500d), got {shown}",
                hint="set e.g. keep-within: 2d (units s, m, h, d, w), or leave it out",
            )

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[str, Any], *, where: str = "retention policy"
    ) -> RetentionPolicy:
        """Build from config keys such as ``keep-daily: 7`` or ``keep_within: 2d``."""
        values: dict[str, Any] = {}
        for raw_key, value in mapping.items():
            key = str(raw_key).strip().lower().replace("-", "_")
            if key not in POLICY_KEYS:
                close = difflib.get_close_matches(key, POLICY_KEYS, n=1, cutoff=0.6)
                hint = f"did you mean {_dashed(close[0])}?" if close else None
                raise ConfigError(
                    f"{where}: unknown key {raw_key!r}; use one of "
                    + ", ".join(_dashed(k) for k in POLICY_KEYS),
                    hint=hint,
                )
            if key in values:
                raise ConfigError(
                    f"{where}: {_dashed(key)} is given twice (as - and _ spellings)",
                    hint="keep one of them",
                )
            values[key] = _parse_value(key, raw_key, value, where)
        try:
            return cls(**values)
        except ConfigError as exc:
            message = exc.message.removeprefix("retention policy ")
            raise ConfigError(f"{where}: {message}", hint=exc.hint, settings=exc.settings) from None

    @property
    def is_empty(self) -> bool:
        """True when no rule would keep anything; ``plan_prune`` refuses such a policy."""
        return not any(getattr(self, name) for name in COUNT_RULES) and not self.keep_within

    def describe(self) -> str:
        """The set rules in config spelling, e.g. ``keep-daily=7 keep-within=2d``."""
        parts = [f"{_dashed(n)}={getattr(self, n)}" for n in COUNT_RULES if getattr(self, n)]
        if self.keep_within:
            parts.append(f"keep-within={format_duration(self.keep_within)}")
        return " ".join(parts) or "(empty)"


@dataclass(frozen=True)
class BackupRef:
    """What retention needs to know about one backup; ``time`` is epoch seconds (UTC)."""

    id: str
    source: str
    time: float
    drilled: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.time):
            raise ValueError(f"backup {self.id}: time must be a finite epoch, got {self.time!r}")


@dataclass(frozen=True)
class Verdict:
    """One backup's fate: kept, with the reasons the rules gave (never empty), or removed
    (no reasons)."""

    backup: BackupRef
    kept: bool
    reasons: tuple[str, ...] = ()


@dataclass
class PruneDecision:
    """Ids to keep and to remove (newest first within each source), why each is kept, and
    ``verdicts``: every backup in that same order (sources by name), kept or not."""

    keep: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)


def _hour(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H")


def _day(t: datetime) -> str:
    return t.strftime("%Y-%m-%d")


def _week(t: datetime) -> str:
    year, week, _ = t.isocalendar()
    return f"{year}-W{week:02d}"


def _month(t: datetime) -> str:
    return t.strftime("%Y-%m")


def _quarter(t: datetime) -> str:
    return f"{t.year}-Q{(t.month - 1) // 3 + 1}"


def _year(t: datetime) -> str:
    return f"{t.year}"


#: Period rules: policy field -> (reason word, UTC period label of a timestamp).
PERIOD_RULES: dict[str, tuple[str, Callable[[datetime], str]]] = {
    "keep_hourly": ("hourly", _hour),
    "keep_daily": ("daily", _day),
    "keep_weekly": ("weekly", _week),
    "keep_monthly": ("monthly", _month),
    "keep_quarterly": ("quarterly", _quarter),
    "keep_yearly": ("yearly", _year),
}


def plan_prune(backups: Sequence[BackupRef], policy: RetentionPolicy, now: float) -> PruneDecision:
    """Decide which backups to keep under ``policy`` at time ``now`` (epoch seconds).

    Output order is deterministic: sources sorted by name, newest first within each source.
    """
    if policy.is_empty:
        daily, weekly = Setting("keep_daily", 7), Setting("keep_weekly", 4)
        raise ConfigError(
            "refusing to prune with an empty retention policy: it sets no keep-* rule",
            hint=f"set at least one rule, e.g. {daily} and {weekly}",
            settings=(daily, weekly),
        )
    seen: set[str] = set()
    by_source: dict[str, list[BackupRef]] = {}
    for backup in backups:
        if backup.id in seen:
            raise ValueError(f"backup id {backup.id} appears twice in the list to prune")
        seen.add(backup.id)
        by_source.setdefault(backup.source, []).append(backup)

    decision = PruneDecision()
    for source in sorted(by_source):
        newest_first = sorted(by_source[source], key=lambda b: (b.time, b.id), reverse=True)
        reasons = _plan_source(source, newest_first, policy, now)
        for backup in newest_first:
            if backup.id in reasons:
                decision.keep.append(backup.id)
                decision.reasons[backup.id] = reasons[backup.id]
                decision.verdicts.append(Verdict(backup, True, tuple(reasons[backup.id])))
            else:
                decision.remove.append(backup.id)
                decision.verdicts.append(Verdict(backup, False))
    return decision


def _plan_source(
    source: str, newest_first: list[BackupRef], policy: RetentionPolicy, now: float
) -> dict[str, list[str]]:
    """Reasons per kept id for the backups of one source, sorted newest first."""
    reasons: dict[str, list[str]] = {}

    def keep(backup: BackupRef, reason: str) -> None:
        reasons.setdefault(backup.id, []).append(reason)

    # A backup dated after `now` is kept and takes no rule's slot: a skewed clock must neither
    # lose it nor let it push a genuine backup out of keep-last or its period.
    past: list[BackupRef] = []
    for backup in newest_first:
        if backup.time > now:
            keep(backup, "in the future (clock skew?)")
        else:
            past.append(backup)

    if policy.keep_within:
        label = format_duration(policy.keep_within)
        for backup in past:
            if now - backup.time <= policy.keep_within:
                keep(backup, f"within {label}")

    for rank, backup in enumerate(past[: policy.keep_last], start=1):
        keep(backup, f"last {rank}/{policy.keep_last}")

    for name, (word, period_of) in PERIOD_RULES.items():
        wanted = getattr(policy, name)
        if not wanted:
            continue
        periods: set[str] = set()
        for backup in past:  # newest first: the first backup met in a period is its newest
            period = period_of(datetime.fromtimestamp(backup.time, tz=UTC))
            if period in periods:
                continue
            if len(periods) == wanted:
                break
            periods.add(period)
            keep(backup, f"{word} {period}")

    if newest_first:
        keep(newest_first[0], f"newest of source {source}")
    drilled = next((b for b in newest_first if b.drilled), None)
    if drilled is not None:
        keep(drilled, "newest drilled")
    return reasons


def _dashed(key: str) -> str:
    return key.replace("_", "-")


def _parse_value(key: str, raw_key: object, value: Any, where: str) -> Any:
    """Config value -> field value; wrong types become a ConfigError naming the key."""
    if key == "keep_within":
        if value is None:
            return None
        if bare_number(value):
            raise ConfigError(
                f"{where}: {raw_key}: {value!r} has no unit (it would be {value} seconds)",
                hint="units s, m, h, d, w: e.g. keep-within: 36h",
            )
        try:
            return parse_duration(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"{where}: {raw_key}: {exc}", hint="units s, m, h, d, w: e.g. keep-within: 36h"
            ) from None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"{where}: {raw_key} must be a whole number, got {value!r}",
            hint=f"set e.g. {_dashed(key)}: 7",
        )
    if value < 0:
        raise ConfigError(
            f"{where}: {raw_key} must not be negative, got {value}",
            hint=f"use 0 or leave {_dashed(key)} out to disable the rule, or a count like 7",
        )
    if value > MAX_COUNT:
        raise ConfigError(
            f"{where}: {raw_key} must be at most {MAX_COUNT}, got {value}",
            hint=f"set e.g. {_dashed(key)}: 7",
        )
    return value


def bare_number(value: Any) -> bool:
    """Whether a ``keep-within`` value is a positive number without a unit (``3``, ``"3"``,
    ``2.5``): ``parse_duration`` would read seconds, where a retention window is days or
    weeks, so a unit is required (0 and negative numbers are refused as durations)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value > 0
    try:
        return float(str(value).strip()) > 0
    except ValueError:
        return False


__all__ = [
    "BackupRef",
    "PruneDecision",
    "RetentionPolicy",
    "Verdict",
    "format_duration",
    "plan_prune",
]
