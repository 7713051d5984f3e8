"""The one place a run is assembled: plan the playbook, run it into the journal, report it.

``run_playbook`` is what ``crmmaint run``, the one-step commands (``backup``, ``restore``,
``verify``, ``prune``) and the demo call; a scheduler calls it too. ``adhoc_playbook`` builds
the one-step playbooks of those commands as data, validated like a playbook file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from crmmaint.playbook.loader import build_playbook
from crmmaint.playbook.model import Playbook
from crmmaint.playbook.planner import plan
from crmmaint.playbook.runner import Reporter, Runner, RunSummary, TransportFactory

if TYPE_CHECKING:
    from crmmaint.inventory import Inventory
    from crmmaint.journal import Journal


@dataclass(frozen=True)
class AdhocStep:
    """One step of a command's one-step playbook: ``task`` on the targets ``selectors`` names
    (``{"database": ["crm"]}``; empty: the task runs once), with ``params`` (the step's
    ``with:``), validated against the task's schema like a playbook file's step."""

    name: str
    task: str
    selectors: Mapping[str, Sequence[str]] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    on_failure: str = "stop"
    timeout: float | None = None

    def as_data(self) -> dict[str, Any]:
        """The step as a playbook's ``steps:`` item holds it."""
        out: dict[str, Any] = {"name": self.name, "task": self.task}
        out.update({key: list(values) for key, values in self.selectors.items()})
        out["with"] = dict(self.params)
        out["on_failure"] = self.on_failure
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


def adhoc_playbook(name: str, steps: Sequence[AdhocStep], inventory: Inventory) -> Playbook:
    """A validated playbook ``name`` (window ``adhoc``) of ``steps``; raises ``PlaybookError``
    as a playbook file would (an unknown target, a parameter of the wrong type)."""
    data = {"name": name, "window": "adhoc", "steps": [step.as_data() for step in steps]}
    return build_playbook(data, inventory, source=f"<{name}>")


def run_playbook(
    book: Playbook,
    inventory: Inventory,
    journal: Journal | None,
    *,
    check: bool = False,
    limit: list[str] | None = None,
    tags: list[str] | None = None,
    steps: list[str] | None = None,
    forks: int = 10,
    reporter: Reporter | Any | None = None,
    argv: list[str] | None = None,
    now: datetime | None = None,
    transport_factory: TransportFactory | None = None,
    one_target: bool = False,
) -> RunSummary:
    """Plan ``book`` for ``inventory`` (``limit``/``tags``/``steps`` select; ``now``: when
    calendar conditions are judged, default the machine's local time) and run it: one journal
    run row (when ``journal`` is given) with every target's result, each told to ``reporter``.

    Returns the run's summary (``exit_code`` 0, 1 or 2; with ``one_target``, for a command
    acting on one target, the code of that target's failure). Raises ``PlaybookError`` for a
    selection that names nothing, ``ConfigError`` for ``forks`` < 1, and ``KeyboardInterrupt``
    when interrupted (the journal then records the run as failed).
    """
    planned = plan(
        book,
        inventory,
        limit=limit,
        tags=tags,
        steps=steps,
        now=now or datetime.now().astimezone(),
    )
    runner = Runner(
        inventory,
        journal,
        forks=forks,
        check=check,
        reporter=reporter,
        argv=argv,
        transport_factory=transport_factory,
        one_target=one_target,
    )
    return runner.run(book, planned)
