"""The one place a run is assembled: plan the playbook, run it into the journal, report it.

``run_playbook`` is what ``crmmaint run``, the one-step commands (``backup``, ``restore``,
``verify``, ``prune``) and the demo call; a scheduler calls it too. ``adhoc_playbook`` builds
the one-step playbooks of those commands as data, validated like a playbook file; their
errors name the command's flags (``--timeout``, ``--force``), never a line of that playbook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from crmmaint.errors import ConfigError, PlaybookError
from crmmaint.playbook.loader import build_playbook
from crmmaint.playbook.model import Playbook
from crmmaint.playbook.planner import plan
from crmmaint.playbook.runner import Reporter, Runner, RunSummary, TransportFactory
from crmmaint.units import plural

if TYPE_CHECKING:
    from crmmaint.inventory import Inventory
    from crmmaint.journal import Journal


@dataclass(frozen=True)
class AdhocStep:
    """One step of a command's one-step playbook: ``task`` on the targets ``selectors`` names
    (``{"database": ["crm"]}``; empty: the task runs once), with ``params`` (the step's
    ``with:``), validated against the task's schema like a playbook file's step.

    ``flags`` names the command-line flag that gave a selector, parameter or ``timeout`` when
    it is not ``--`` and the name with ``-`` for ``_`` (``keep_daily``: ``--keep-daily``)."""

    name: str
    task: str
    selectors: Mapping[str, Sequence[str]] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    on_failure: str = "stop"
    timeout: float | None = None
    flags: Mapping[str, str] = field(default_factory=dict)

    def flag_names(self) -> dict[str, str]:
        """The flag of every selector, parameter and ``timeout`` of the step."""
        names = [*self.selectors, *self.params, "timeout"]
        return {name: self.flags.get(name, "--" + name.replace("_", "-")) for name in names}

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
    """A validated playbook ``name`` (window ``adhoc``) of ``steps``, whose steps know their
    flags (``Step.flags``: the errors of their tasks name them). Raises ``ConfigError`` naming
    the flag for what a playbook file would be refused for (an unknown target, a parameter of
    the wrong type), never a location in the playbook the command built."""
    data = {"name": name, "window": "adhoc", "steps": [step.as_data() for step in steps]}
    try:
        book = build_playbook(data, inventory, source=f"<{name}>")
    except PlaybookError as exc:
        raise _flag_error(name, steps, exc) from None
    flags = {step.name: step.flag_names() for step in steps}
    for built in book.steps:
        built.flags = flags.get(built.name, {})
    return book


def _flag_error(command: str, steps: Sequence[AdhocStep], exc: PlaybookError) -> ConfigError:
    """``exc``, found in the playbook of ``command``, said of the flag that gave the value."""
    key = (exc.field or "").removeprefix("with.")
    flags = next((step.flag_names() for step in steps if step.name == exc.step), {})
    reason = exc.reason
    for named in (f"parameter {key!r}: ", f"{key!r}: ", f"{key!r} "):
        if key and reason.startswith(named):  # the flag says which value it is
            reason = reason[len(named) :]
            break
    more = f"{plural(exc.more, 'more problem')} in the flags" if exc.more else None
    hint = "; ".join(h for h in (exc.reason_hint, more) if h) or None
    flag = flags.get(key)
    return ConfigError(f"{flag}: {reason}" if flag else f"crmmaint {command}: {reason}", hint=hint)


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
    ends_at: datetime | None = None,
) -> RunSummary:
    """Plan ``book`` for ``inventory`` (``limit``/``tags``/``steps`` select; ``now``: when
    calendar conditions are judged, default the machine's local time) and run it: one journal
    run row (when ``journal`` is given) with every target's result, each told to ``reporter``.

    ``ends_at`` (aware) is the run's deadline; without it, ``book.window_length`` seconds
    from now when the playbook gives one. No step or target starts after it, and tasks skip
    work that would not fit before it (``TaskContext.wont_fit``).

    Returns the run's summary (``exit_code`` 0, 1 or 2; with ``one_target``, for a command
    acting on one target, the code of that target's failure). Raises ``PlaybookError`` for a
    selection that names nothing, ``ConfigError`` for ``forks`` < 1, and ``KeyboardInterrupt``
    when interrupted (the journal then records the run as failed).
    """
    now = now or datetime.now().astimezone()
    if ends_at is None and book.window_length is not None:
        ends_at = datetime.now().astimezone() + timedelta(seconds=book.window_length)
    planned = plan(book, inventory, limit=limit, tags=tags, steps=steps, now=now)
    runner = Runner(
        inventory,
        journal,
        forks=forks,
        check=check,
        reporter=reporter,
        argv=argv,
        transport_factory=transport_factory,
        one_target=one_target,
        ends_at=ends_at,
    )
    return runner.run(book, planned)
