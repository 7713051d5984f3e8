"""The playbook as data: a validated ``Playbook`` of ``Step`` s, ready to plan and run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crmmaint.inventory import Host, Inventory, Target
from crmmaint.playbook.conditions import When
from crmmaint.tasks.api import TaskSpec

WINDOWS = ("daily", "weekly", "monthly", "quarterly", "yearly", "adhoc")
ON_FAILURE = ("stop", "continue")
#: Selector keys a step may use, in the order targets are expanded.
SELECTOR_KEYS = ("hosts", "database", "cache", "fileset", "repository")
#: ``TaskSpec.targets`` values meaning "runs once on the machine crmmaint runs on".
RUN_ONCE_KINDS = ("none", "run")
#: Target kind of a step that runs once on the runner host.
RUN_KIND = "run"

DEFAULT_RETRY_DELAY = 5.0
DEFAULT_ON_FAILURE = "stop"


@dataclass(frozen=True)
class StepDefaults:
    """The ``defaults:`` section: values every step inherits unless it sets its own."""

    timeout: float | None = None
    retries: int = 0
    retry_delay: float = DEFAULT_RETRY_DELAY
    on_failure: str = DEFAULT_ON_FAILURE


@dataclass
class Step:
    """One validated step: a task, its target selectors, converted parameters and policies."""

    name: str
    task: str
    spec: TaskSpec
    selectors: dict[str, list[str]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    when: When | None = None
    timeout: float | None = None
    retries: int = 0
    retry_delay: float = DEFAULT_RETRY_DELAY
    on_failure: str = DEFAULT_ON_FAILURE
    tags: tuple[str, ...] = ()
    line: int | None = None
    #: For a step a one-step command built (``adhoc_playbook``): the command-line flag of each
    #: parameter (``{"force": "--force"}``), so that its errors name what the user typed.
    flags: dict[str, str] = field(default_factory=dict)

    @property
    def runs_once(self) -> bool:
        """True for tasks without targets: one call on the runner host."""
        return not self.selectors


@dataclass
class Playbook:
    """A validated playbook; ``path`` is the file it came from (``None`` for text)."""

    name: str
    window: str
    steps: list[Step]
    #: Seconds from the run's start to its deadline (``window: {length: 3h}``); ``None``: none.
    window_length: float | None = None
    description: str = ""
    vars: dict[str, Any] = field(default_factory=dict)
    defaults: StepDefaults = field(default_factory=StepDefaults)
    path: str | None = None

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    @property
    def tags(self) -> set[str]:
        return {tag for step in self.steps for tag in step.tags}


def task_runs_once(spec: TaskSpec) -> bool:
    """A task declared with ``targets=()`` or ``("none",)`` runs once, locally."""
    return not spec.targets or all(kind in RUN_ONCE_KINDS for kind in spec.targets)


def runner_host(inventory: Inventory) -> Host:
    """The machine crmmaint runs on: the inventory's local ``local`` host, else a default."""
    host = inventory.hosts.get("local")
    if host is not None and host.is_local:
        return host
    return Host(name="local", connection="local", address="127.0.0.1")


def local_target(inventory: Inventory) -> Target:
    """The single target of a run-once step: ``Target(kind="run", name="local")``."""
    host = runner_host(inventory)
    return Target(RUN_KIND, host.name, host, host)


def merged_vars(playbook: Playbook, inventory: Inventory | None) -> dict[str, Any]:
    """Variables ``when`` sees: playbook ``vars`` overridden by inventory ``vars``."""
    out = dict(playbook.vars)
    if inventory is not None:
        out.update(inventory.vars)
    return out
