"""Accepted baselines of the reviews: ``baseline accept KIND``, ``baseline show KIND``.

KIND is ``permissions`` (``permissions.review``) or ``drift`` (``config.drift``). Accepting
takes what the latest review recorded, never a new reading of the hosts (``crmmaint.baselines``).
"""

from __future__ import annotations

import sys
from typing import Any

from invoke import Collection

from crmmaint.audit import current_trail
from crmmaint.baselines import KINDS, Baseline, Baselines, Change, check_kind, compare
from crmmaint.cli.common import command, helps, local_time, maybe_inventory, open_journal
from crmmaint.errors import ConfigError
from crmmaint.inventory import Inventory
from crmmaint.journal import current_user
from crmmaint.reporting.console import print_table, visible, write_json
from crmmaint.units import plural

_KIND_HELP = f"which review's baselines: {' or '.join(KINDS)}"


def _host(inv: Inventory | None, host: str | None) -> str | None:
    if host is not None and inv is not None and host not in inv.hosts:
        raise ConfigError(
            f"no host {host!r} in the inventory {inv.path}",
            hint=f"hosts: {', '.join(sorted(inv.hosts)) or 'none'}",
        )
    return host


@command(
    help=helps(
        kind=_KIND_HELP,
        host="only the targets on this host",
        check="say what would be accepted; store nothing",
    ),
    positional=["kind"],
    audit="baseline accept",
)
def accept(
    c: Any,
    kind: str,
    inventory: str | None = None,
    host: str | None = None,
    check: bool = False,
    json: bool = False,
    debug: bool = False,
) -> None:
    """Accept what the latest review found as the baseline (who and when are recorded)."""
    kind = check_kind(kind)
    inv = maybe_inventory(c, inventory)
    host = _host(inv, host)
    user = current_user()
    with open_journal(c, inv) as journal:
        done = Baselines(journal).accept(kind, user=user, host=host, check=check)
    if (trail := current_trail()) is not None:
        trail.targets += [a.observation.target for a in done if a.first or a.changes]
    if json:
        write_json(
            [
                {
                    "target": a.observation.target,
                    "host": a.observation.host,
                    "observed_at": local_time(a.observation.observed_at),
                    "run_id": a.observation.run_id,
                    "first": a.first,
                    "changes": [ch.as_dict() for ch in a.changes],
                    "accepted": not check,
                    "accepted_by": None if check else user,
                }
                for a in done
            ]
        )
        return
    verb = "would accept" if check else "accepted"
    for a in done:
        obs = a.observation
        seen = f"seen {local_time(obs.observed_at)} by run {obs.run_id or '-'}"
        if a.first:
            items = sum(len(items) for items in obs.snapshot.values())
            first = f"first baseline, {plural(items, 'item')}"
            print(f"{verb} {kind} of {visible(obs.target)}: {first} ({seen})")
        elif not a.changes:
            print(f"{kind} of {visible(obs.target)}: no change to accept ({seen})")
        else:
            print(
                f"{verb} {kind} of {visible(obs.target)}: {plural(len(a.changes), 'change')}"
                f" ({seen})"
            )
        if not a.first:
            for change in a.changes:
                print(f"  {visible(_describe(kind, change))}")
    if not check and any(a.first or a.changes for a in done):
        print(f"crmmaint: accepted by {user}", file=sys.stderr)


@command(
    help=helps(kind=_KIND_HELP, host="only the targets on this host"),
    positional=["kind"],
)
def show(
    c: Any,
    kind: str,
    inventory: str | None = None,
    host: str | None = None,
    json: bool = False,
    debug: bool = False,
) -> None:
    """List the accepted baselines (who, when) and what the latest review found changed."""
    kind = check_kind(kind)
    inv = maybe_inventory(c, inventory)
    host = _host(inv, host)
    with open_journal(c, inv) as journal:
        store = Baselines(journal)
        accepted = {b.target: b for b in store.baselines(kind, host)}
        observed = {o.target: o for o in store.observations(kind, host)}
    rows = []
    pending_of: dict[str, list[Change]] = {}
    for target in sorted(accepted.keys() | observed.keys()):
        base, obs = accepted.get(target), observed.get(target)
        pending = compare(base.snapshot if base else {}, obs.snapshot) if obs is not None else []
        pending_of[target] = pending
        rows.append(
            {
                "target": target,
                "accepted": local_time(base.accepted_at) if base else "never",
                "by": base.accepted_by if base else "-",
                "reviewed": local_time(obs.observed_at) if obs else "never",
                "pending": len(pending) if base else "all",
                "changes": [ch.as_dict() for ch in pending],
            }
        )
    if json:
        write_json(rows)
        return
    if not rows:
        print(f"crmmaint: no {KINDS[kind]} has run yet (journal {journal.path})", file=sys.stderr)
        return
    print_table(
        rows, ["target", "accepted", "by", "reviewed", "pending"], title=f"{kind} baselines"
    )
    for target in sorted(observed):
        obs, base, pending = observed[target], accepted.get(target), pending_of[target]
        if not pending:
            continue
        since = "no baseline yet" if base is None else "changed since the baseline"
        run = obs.run_id or "-"
        print(f"\n{visible(target)}: {len(pending)} {since} (reviewed by run {run}):")
        for change in pending:
            print(f"  {visible(_describe(kind, change))}")
            if change.after is not None and change.change != "changed":
                print(f"      {visible(attributes(change.after))}")
            elif kind == "drift" and change.change == "changed" and base is not None:
                for line in _file_diff(change, base):
                    print(f"      {visible(line.expandtabs())}")
    print(f"\naccept after reading: crmmaint baseline accept {kind} [--host HOST]")


def _describe(kind: str, change: Change) -> str:
    """A change in one line: a configuration file as ``config.drift``'s summary names it
    (appeared, missing, changed without its text), anything else item by item."""
    if kind == "drift":
        from crmmaint.tasks.config_drift import describe_change

        return describe_change(change, "file")
    return change.describe()


def _file_diff(change: Change, base: Baseline) -> list[str]:
    """A changed configuration file as ``config.drift`` reports it: mode/owner changes and
    the unified diff of the masked texts; a file accepted as missing that exists now
    ``appeared`` (its attributes and masked text), one gone now ``missing``; a change of
    masked values alone says only so (no size: it would tell the secrets' length)."""
    from crmmaint.tasks.config_drift import DIFF_LINES, file_diff

    shown = file_diff(
        change.key, change.before or {}, change.after or {}, accepted=base.label,
        max_lines=DIFF_LINES,
    )  # fmt: skip
    return [*shown["changes"], *shown.get("diff", "").splitlines()]


def attributes(item: dict[str, Any], limit: int = 160) -> str:
    """An item's attributes on one line, ``superuser; login; password=set``: true flags by
    name, false and empty ones left out (cut at ``limit`` characters)."""
    parts = []
    for name, value in sorted(item.items()):
        if value is True:
            parts.append(name)
        elif name == "text":
            continue  # a file's text: shown as a diff once accepted, never inline
        elif value not in (False, None, [], ""):
            shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            parts.append(f"{name}={shown}")
    text = "; ".join(parts) or "(no attributes)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def register(ns: Collection) -> None:
    """Add the command group to the CLI collection."""
    ns.add_collection(Collection("baseline", accept, show))
