"""Accepted baselines: what a review saw, what a person accepted, and what changed since.

A review task (``permissions.review``, ``config.drift``) reduces what it finds on a target to a
``Snapshot``: sections (``roles``, ``keys``, ``files`` …) of items by key, each item a flat dict
of JSON values. Each run records the snapshot as the target's latest *observation*
(``Baselines.observe``) and compares it with the target's accepted *baseline* (``compare``):
every item added, removed or changed is a ``Change``.

``crmmaint baseline accept KIND`` copies the latest observations (what the person read in the
review's report) to the baselines, with who accepted and when. It never reads the hosts again,
so what is accepted is exactly what was reviewed, not something that appeared since.

Both live in the journal's state table (keys ``observed:KIND:TARGET`` and
``baseline:KIND:TARGET``, TARGET being ``kind/name`` of the inventory target). They hold no
secrets: review tasks never read password hashes, and mask configuration text before it is
observed (``crmmaint.masking``). Observations of check-mode runs are not recorded,
so check mode changes nothing that ``baseline accept`` would take.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crmmaint.errors import ConfigError
from crmmaint.units import plural

if TYPE_CHECKING:
    from crmmaint.inventory import Target
    from crmmaint.journal import Journal

#: The kinds of baseline, as ``crmmaint baseline accept`` names them, with the task that
#: observes each.
KINDS: dict[str, str] = {"permissions": "permissions.review", "drift": "config.drift"}

#: section -> item key -> the item's attributes (JSON values: str, int, bool, None, lists).
Snapshot = dict[str, dict[str, dict[str, Any]]]

ADDED, REMOVED, CHANGED = "added", "removed", "changed"


@dataclass(frozen=True)
class Change:
    """One item that differs from the baseline: ``change`` is added, removed or changed;
    ``before``/``after`` are its attributes in the baseline and now (``None`` when absent)."""

    section: str
    key: str
    change: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    @property
    def fields(self) -> list[str]:
        """The attribute names whose values differ (all of them for an added or removed item)."""
        before, after = self.before or {}, self.after or {}
        return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))

    def describe(self, noun: str | None = None) -> str:
        """One line naming the item: ``role alice added``, ``key root SHA256:… changed:
        options ["no-pty"] -> []``. ``noun`` defaults to the section name."""
        what = f"{noun or self.section} {self.key}"
        if self.change != CHANGED:
            return f"{what} {self.change}"
        before, after = self.before or {}, self.after or {}
        parts = [f"{f} {_short(before.get(f))} -> {_short(after.get(f))}" for f in self.fields]
        return f"{what} changed: {'; '.join(parts)}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "key": self.key,
            "change": self.change,
            "fields": self.fields,
            "before": self.before,
            "after": self.after,
        }


def _short(value: Any, limit: int = 60) -> str:
    """A value for a one-line message: lists joined, a text of several lines as its line
    count (a file's text is shown as a diff, never inline), cut at ``limit`` characters."""
    if isinstance(value, bool) or value is None:
        text = "none" if value is None else str(value).lower()
    elif isinstance(value, list):
        text = "[" + ", ".join(map(str, value)) + "]"
    elif isinstance(value, str) and "\n" in value:
        text = f"({value.count(chr(10)) + 1} lines)"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compare(baseline: Snapshot, current: Snapshot) -> list[Change]:
    """The changes from ``baseline`` to ``current``, by section then key (sorted); sections
    absent from one side count as empty. Pure: unit- and property-tested."""
    changes: list[Change] = []
    for section in sorted(baseline.keys() | current.keys()):
        old, new = baseline.get(section, {}), current.get(section, {})
        for key in sorted(old.keys() | new.keys()):
            if key not in old:
                changes.append(Change(section, key, ADDED, None, new[key]))
            elif key not in new:
                changes.append(Change(section, key, REMOVED, old[key], None))
            elif old[key] != new[key]:
                changes.append(Change(section, key, CHANGED, old[key], new[key]))
    return changes


def target_key(target: Target) -> str:
    """``hosts/web1``, ``database/crm``: the target as baselines name it (its kind as a
    playbook step selects it, and its name)."""
    return f"{target.kind}/{target.name}"


@dataclass(frozen=True)
class Observation:
    """A review's snapshot of one target: which run saw it and when (epoch seconds)."""

    kind: str
    target: str
    host: str
    snapshot: Snapshot
    run_id: int | None
    observed_at: float


@dataclass(frozen=True)
class Baseline:
    """An accepted snapshot: who accepted it and when, and the observation it came from."""

    kind: str
    target: str
    host: str
    snapshot: Snapshot
    accepted_by: str
    accepted_at: float
    run_id: int | None
    observed_at: float

    @property
    def label(self) -> str:
        """``accepted 2026-11-30 by alice``: how a diff against it names the accepted side."""
        return (
            f"accepted {time.strftime('%Y-%m-%d', time.localtime(self.accepted_at))} by"
            f" {self.accepted_by}"
        )


@dataclass(frozen=True)
class Acceptance:
    """What ``Baselines.accept`` did (or would do, in check mode) for one target."""

    observation: Observation
    changes: list[Change]
    first: bool


def check_kind(kind: str) -> str:
    """``kind`` when it is one of ``KINDS``; else ``ConfigError`` naming them."""
    if kind not in KINDS:
        raise ConfigError(
            f"no baseline kind {kind!r}",
            hint=f"name one of: {', '.join(KINDS)}",
        )
    return kind


class Baselines:
    """Observations and accepted baselines, kept in ``journal``."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def observe(self, kind: str, target: Target, snapshot: Snapshot, run_id: int | None) -> None:
        """Record ``snapshot`` as the latest observation of ``target`` (replacing the last)."""
        check_kind(kind)
        self.journal.state_set(
            f"observed:{kind}:{target_key(target)}",
            {
                "host": target.host.name,
                "snapshot": snapshot,
                "run_id": run_id,
                "observed_at": time.time(),
            },
        )

    def baseline(self, kind: str, target: Target | str) -> Baseline | None:
        """The accepted baseline of ``target`` (a ``Target`` or its ``target_key``), if any."""
        check_kind(kind)
        key = target if isinstance(target, str) else target_key(target)
        value = self.journal.state_get(f"baseline:{kind}:{key}")
        return None if value is None else _baseline(kind, key, value)

    def baselines(self, kind: str, host: str | None = None) -> list[Baseline]:
        """Every accepted baseline of ``kind`` (of targets on ``host`` only, if given)."""
        check_kind(kind)
        prefix = f"baseline:{kind}:"
        found = [
            _baseline(kind, key[len(prefix) :], value)
            for key, value in sorted(self.journal.state_prefixed(prefix).items())
        ]
        return [b for b in found if host is None or b.host == host]

    def observation(self, kind: str, target: str) -> Observation | None:
        """The latest observation of ``target`` (its ``target_key``), if any: one read."""
        check_kind(kind)
        value = self.journal.state_get(f"observed:{kind}:{target}")
        return None if value is None else _observation(kind, target, value)

    def observations(self, kind: str, host: str | None = None) -> list[Observation]:
        """The latest observation of every target of ``kind`` (on ``host`` only, if given)."""
        check_kind(kind)
        prefix = f"observed:{kind}:"
        found = [
            _observation(kind, key[len(prefix) :], value)
            for key, value in sorted(self.journal.state_prefixed(prefix).items())
        ]
        return [o for o in found if host is None or o.host == host]

    def accept(
        self,
        kind: str,
        *,
        user: str,
        host: str | None = None,
        targets: Iterable[str] | None = None,
        check: bool = False,
    ) -> list[Acceptance]:
        """Make the latest observations of ``kind`` the accepted baselines, recording ``user``
        and the time; only targets on ``host``, or named in ``targets`` (``kind/name``), when
        given. ``check``: say what would be accepted, store nothing.

        Raises ``ConfigError`` when there is nothing to accept (no review has run, or none on
        that host or of those targets): accepting must follow a review a person has read."""
        check_kind(kind)
        wanted = None if targets is None else set(targets)
        chosen = [o for o in self.observations(kind, host) if wanted is None or o.target in wanted]
        if not chosen:
            where = f" on host {host}" if host else ""
            if wanted:
                where += f" of {', '.join(sorted(wanted))}"
            raise ConfigError(
                f"no {KINDS[kind]} result to accept{where}",
                hint=f"run a playbook with {KINDS[kind]} (not in check mode), read its report,"
                f" then accept",
            )
        done: list[Acceptance] = []
        now = time.time()
        for obs in chosen:
            old = self.baseline(kind, obs.target)
            changes = compare(old.snapshot if old else {}, obs.snapshot)
            done.append(Acceptance(obs, changes, old is None))
            if check:
                continue
            self.journal.state_set(
                f"baseline:{kind}:{obs.target}",
                {
                    "host": obs.host,
                    "snapshot": obs.snapshot,
                    "accepted_by": user,
                    "accepted_at": now,
                    "run_id": obs.run_id,
                    "observed_at": obs.observed_at,
                },
            )
        return done


def _observation(kind: str, key: str, value: dict[str, Any]) -> Observation:
    return Observation(
        kind,
        key,
        str(value.get("host", "")),
        value.get("snapshot") or {},
        value.get("run_id"),
        float(value.get("observed_at", 0.0)),
    )


def _baseline(kind: str, key: str, value: dict[str, Any]) -> Baseline:
    return Baseline(
        kind,
        key,
        str(value.get("host", "")),
        value.get("snapshot") or {},
        str(value.get("accepted_by", "?")),
        float(value.get("accepted_at", 0.0)),
        value.get("run_id"),
        float(value.get("observed_at", 0.0)),
    )


#: Changes named in a review's one-line message, at most (the details list them all).
MESSAGE_CHANGES = 3


@dataclass(frozen=True)
class Review:
    """A target's snapshot against its accepted baseline: ``changes`` (everything, when there
    is no baseline yet) and the baseline compared with (``None``: none accepted)."""

    kind: str
    baseline: Baseline | None
    changes: list[Change]
    #: Whether this snapshot was recorded as the latest observation (not in check mode), so
    #: that ``baseline accept`` would take it.
    recorded: bool = True

    @property
    def clean(self) -> bool:
        """Whether the target is as accepted (a baseline exists and nothing changed)."""
        return self.baseline is not None and not self.changes

    def summary(self, nouns: dict[str, str] | None = None) -> str:
        """The review's verdict in one line, naming up to ``MESSAGE_CHANGES`` changes
        (``nouns``: section -> the word for its items, e.g. ``{"keys": "key"}``)."""
        accept = f"crmmaint baseline accept {self.kind}"
        if not self.recorded and (self.baseline is None or self.changes):
            accept = f"run without --check to record it, then `{accept}`"
        else:
            accept = f"`{accept}`"
        if self.baseline is None:
            if not self.recorded:
                return f"no accepted baseline yet (check mode records nothing): {accept}"
            return (
                f"no accepted baseline yet: read `crmmaint baseline show {self.kind}`,"
                f" then run {accept}"
            )
        since = (
            f"the baseline accepted {_date(self.baseline.accepted_at)}"
            f" by {self.baseline.accepted_by}"
        )
        if not self.changes:
            return f"as in {since}"
        named = [c.describe((nouns or {}).get(c.section)) for c in self.changes]
        more = len(named) - MESSAGE_CHANGES
        listed = "; ".join(named[:MESSAGE_CHANGES]) + (f"; and {more} more" if more > 0 else "")
        what = f"{plural(len(self.changes), 'change')} since {since}: {listed}"
        if self.recorded:
            return f"{what} (`crmmaint baseline show {self.kind}`; {accept} once reviewed)"
        return f"{what} (check mode records nothing: {accept})"

    def details(self) -> dict[str, Any]:
        """The review for a result's details: the baseline's who and when, every change."""
        out: dict[str, Any] = {"changes": [c.as_dict() for c in self.changes]}
        if self.baseline is not None:
            out["baseline"] = {
                "accepted_by": self.baseline.accepted_by,
                "accepted_at": _date(self.baseline.accepted_at),
                "run_id": self.baseline.run_id,
            }
        return out


def _date(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


def review(
    journal: Journal | None,
    kind: str,
    target: Target,
    snapshot: Snapshot,
    *,
    run_id: int | None,
    check: bool,
) -> Review:
    """Compare ``snapshot`` of ``target`` with its accepted baseline and, outside check mode,
    record it as the latest observation (what ``baseline accept`` would accept). Without a
    journal there is no baseline: every item is new."""
    if journal is None:
        return Review(kind, None, compare({}, snapshot), recorded=False)
    store = Baselines(journal)
    accepted = store.baseline(kind, target)
    if not check:
        store.observe(kind, target, snapshot, run_id)
    changes = compare(accepted.snapshot if accepted else {}, snapshot)
    return Review(kind, accepted, changes, recorded=not check)
