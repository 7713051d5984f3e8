"""Planning: expand a playbook into steps with concrete targets before anything runs.

``plan`` is a pure function of the playbook, the inventory, the CLI filters and the time: it
picks steps (``--step``, ``--tags``), evaluates ``when``, resolves selectors to targets and
applies ``--limit``. Steps that will not run stay in the plan with the reason.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from crmmaint.errors import ConfigError
from crmmaint.inventory import Host, Inventory, Target
from crmmaint.playbook.model import Playbook, Step, local_target, merged_vars


@dataclass
class PlannedStep:
    """A step with its targets; ``skip_reason`` says why it will not run (``None``: it runs)."""

    step: Step
    targets: list[Target] = field(default_factory=list)
    skip_reason: str | None = None

    @property
    def name(self) -> str:
        return self.step.name

    @property
    def skipped(self) -> bool:
        return self.skip_reason is not None


def plan(
    playbook: Playbook,
    inventory: Inventory,
    *,
    limit: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    steps: Sequence[str] | None = None,
    now: datetime | None = None,
) -> list[PlannedStep]:
    """Select, condition-check and target the steps of ``playbook`` for a run at ``now``.

    ``ConfigError`` for a ``--step``, ``--tags`` or ``--limit`` name that matches nothing.
    """
    now = now if now is not None else datetime.now()
    selected = _select(playbook, tags, steps)
    limit_set = _check_limit(inventory, limit)
    variables = merged_vars(playbook, inventory)
    planned = []
    for step in selected:
        targets = _targets(step, inventory)
        reason = None
        if not targets:
            kinds = " or ".join(step.selectors)
            reason = f"no targets: the inventory has no {kinds} matching the step"
        elif limit_set is not None and not step.runs_once:
            targets = [t for t in targets if host_matches(t.host, limit_set, inventory)]
            if not targets:
                reason = f"no targets on --limit {','.join(limit or [])}"
        if step.when is not None:
            reason = step.when.reason_false(now, variables) or reason
        planned.append(PlannedStep(step, targets, reason))
    return planned


def host_matches(host: Host, patterns: set[str], inventory: Inventory) -> bool:
    """True if ``host`` is named by ``patterns`` directly, through a group, or by ``all``."""
    if "all" in patterns or host.name in patterns:
        return True
    groups = set(host.groups)
    groups.update(g for g, members in inventory.groups.items() if host.name in members)
    return bool(groups & patterns)


def _select(
    playbook: Playbook, tags: Sequence[str] | None, steps: Sequence[str] | None
) -> list[Step]:
    chosen = list(playbook.steps)
    if steps:
        names = [s.name for s in playbook.steps]
        for wanted in steps:
            if wanted not in names:
                near = difflib.get_close_matches(wanted, names, n=1)
                raise ConfigError(
                    f"--step {wanted!r}: playbook {playbook.name!r} has no such step",
                    hint=f"did you mean {near[0]!r}?" if near else f"steps: {', '.join(names)}",
                )
        chosen = [s for s in chosen if s.name in steps]
    if tags:
        known = playbook.tags
        for tag in tags:
            if tag not in known:
                raise ConfigError(
                    f"--tags {tag!r}: no step of playbook {playbook.name!r} has this tag",
                    hint=f"tags: {', '.join(sorted(known)) or 'none'}",
                )
        chosen = [s for s in chosen if set(s.tags) & set(tags)]
    return chosen


def _check_limit(inventory: Inventory, limit: Sequence[str] | None) -> set[str] | None:
    if not limit:
        return None
    known = inventory.names("hosts") | {"local"}
    for name in limit:
        if name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1)
            raise ConfigError(
                f"--limit {name!r}: no host or group of that name in {inventory.path}",
                hint=f"did you mean {near[0]!r}?"
                if near
                else f"hosts and groups: {', '.join(sorted(known - {'all'}))}",
            )
    return set(limit)


def _targets(step: Step, inventory: Inventory) -> list[Target]:
    if step.runs_once:
        return [local_target(inventory)]
    targets: list[Target] = []
    for kind, selectors in step.selectors.items():
        targets.extend(inventory.resolve(kind, selectors))
    return targets
