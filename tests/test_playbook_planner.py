"""Planning: step selection, ``when`` conditions on dates and variables, ``--limit``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmmaint.errors import ConfigError
from crmmaint.inventory import Inventory, load_inventory
from crmmaint.playbook import load_playbook_text, loader, parse_when, plan
from crmmaint.playbook.conditions import When
from crmmaint.results import TaskResult
from crmmaint.tasks.api import REGISTRY, task


@task("test.plan.host", targets="hosts")
def _host(ctx):  # pragma: no cover - never run here
    return TaskResult.ok()


@task("test.plan.db", targets=("database", "cache"))
def _db(ctx):  # pragma: no cover
    return TaskResult.ok()


@task("test.plan.local", targets=())
def _local(ctx):  # pragma: no cover
    return TaskResult.ok()


@task("test.plan.repo", targets="repository")
def _repo(ctx):  # pragma: no cover
    return TaskResult.ok()


@pytest.fixture(autouse=True)
def _only_registered_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validate against the tasks registered so far, without importing every task module."""
    monkeypatch.setattr(loader, "load_task_modules", lambda: REGISTRY)


INVENTORY = """\
hosts:
  web1: {address: 127.0.0.2, groups: [web]}
  web2: {address: 127.0.0.3, groups: [web]}
  db1: {address: 127.0.0.4}
groups:
  dbservers: [db1]
databases:
  crm: {engine: postgresql, host: db1, groups: [main]}
  reports: {engine: sqlite, path: reports.sqlite}
caches:
  sessions: {host: web1, redis: "redis://127.0.0.2:6379/0"}
repositories:
  main: {url: ./repo}
vars:
  env: production
  site: berlin
"""

PLAYBOOK = """\
name: p
vars:
  env: staging
  tier: gold
steps:
  - name: hosts
    task: test.plan.host
    hosts: all
    tags: [health]
  - name: databases
    task: test.plan.db
    database: all
    cache: sessions
    tags: [backup, data]
  - name: monday
    task: test.plan.host
    hosts: web
    when: {weekday: mon}
  - name: report
    task: test.plan.local
    when: "vars.env == production"
    tags: [report]
  - name: prune
    task: test.plan.repo
    repository: all
"""

MONDAY = datetime(2024, 1, 1, 3, 0)  # a Monday, first of the month
TUESDAY = datetime(2024, 1, 2, 3, 0)


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    path = tmp_path / "inventory.yml"
    path.write_text(INVENTORY)
    return load_inventory(path)


@pytest.fixture
def playbook(inventory: Inventory):
    return load_playbook_text(PLAYBOOK, inventory, source="p.yml")


def labels(planned) -> dict[str, list[str]]:
    return {p.name: [f"{t.kind}:{t.name}@{t.host.name}" for t in p.targets] for p in planned}


def test_plan_expands_targets_in_inventory_order(playbook, inventory) -> None:
    planned = plan(playbook, inventory, now=MONDAY)
    assert labels(planned) == {
        "hosts": ["hosts:web1@web1", "hosts:web2@web2", "hosts:db1@db1"],
        "databases": ["database:crm@db1", "database:reports@local", "cache:sessions@web1"],
        "monday": ["hosts:web1@web1", "hosts:web2@web2"],
        "report": ["run:local@local"],
        "prune": ["repository:main@local"],
    }
    assert [p.skip_reason for p in planned] == [None] * 5


def test_when_false_is_planned_as_skipped_with_reason(playbook, inventory) -> None:
    planned = {p.name: p for p in plan(playbook, inventory, now=TUESDAY)}
    assert planned["monday"].skipped
    assert planned["monday"].skip_reason == "when: today is tue, step runs on mon"
    assert planned["monday"].targets  # still listed, for the report
    assert not planned["hosts"].skipped


def test_inventory_vars_override_playbook_vars(playbook, inventory) -> None:
    assert not {p.name: p for p in plan(playbook, inventory, now=MONDAY)}["report"].skipped
    inventory.vars["env"] = "staging"
    report = {p.name: p for p in plan(playbook, inventory, now=MONDAY)}["report"]
    assert report.skip_reason == "when: vars.env == 'production' is false (vars.env is 'staging')"


def test_tags_keep_steps_with_any_tag(playbook, inventory) -> None:
    names = [p.name for p in plan(playbook, inventory, tags=["report", "data"], now=MONDAY)]
    assert names == ["databases", "report"]
    with pytest.raises(ConfigError, match="no step of playbook 'p' has this tag") as exc:
        plan(playbook, inventory, tags=["bakup"], now=MONDAY)
    assert "backup, data, health, report" in str(exc.value)


def test_step_keeps_named_steps_in_playbook_order(playbook, inventory) -> None:
    names = [p.name for p in plan(playbook, inventory, steps=["prune", "hosts"], now=MONDAY)]
    assert names == ["hosts", "prune"]
    with pytest.raises(ConfigError, match="did you mean 'prune'"):
        plan(playbook, inventory, steps=["prnue"], now=MONDAY)


def test_step_and_tags_together_intersect(playbook, inventory) -> None:
    planned = plan(playbook, inventory, steps=["hosts", "report"], tags=["health"], now=MONDAY)
    assert [p.name for p in planned] == ["hosts"]


def test_limit_by_host_and_group(playbook, inventory) -> None:
    planned = plan(playbook, inventory, limit=["web1", "dbservers"], now=MONDAY)
    assert labels(planned) == {
        "hosts": ["hosts:web1@web1", "hosts:db1@db1"],
        "databases": ["database:crm@db1", "cache:sessions@web1"],
        "monday": ["hosts:web1@web1"],
        "report": ["run:local@local"],  # a run-once step is kept
        "prune": [],
    }
    prune = planned[-1]
    assert prune.skip_reason == "no targets on --limit web1,dbservers"


def test_limit_by_host_group_attribute_and_all(playbook, inventory) -> None:
    web = labels(plan(playbook, inventory, limit=["web"], now=MONDAY))
    assert web["hosts"] == ["hosts:web1@web1", "hosts:web2@web2"]
    everything = labels(plan(playbook, inventory, limit=["all"], now=MONDAY))
    assert everything == labels(plan(playbook, inventory, now=MONDAY))
    local = labels(plan(playbook, inventory, limit=["local"], now=MONDAY))
    assert local["prune"] == ["repository:main@local"]
    assert local["databases"] == ["database:reports@local"]


def test_unknown_limit_is_an_error(playbook, inventory) -> None:
    with pytest.raises(ConfigError, match="did you mean 'db1'"):
        plan(playbook, inventory, limit=["db2"], now=MONDAY)


def test_step_with_no_matching_objects_is_skipped(inventory) -> None:
    inventory.repositories.clear()
    pb = load_playbook_text(
        "steps: [{name: prune, task: test.plan.repo, repository: all}]", inventory
    )
    (planned,) = plan(pb, inventory, now=MONDAY)
    assert planned.skip_reason == "no targets: the inventory has no repository matching the step"


def test_plan_is_pure(playbook, inventory) -> None:
    first = labels(plan(playbook, inventory, now=MONDAY))
    assert labels(plan(playbook, inventory, now=MONDAY)) == first
    assert [s.name for s in playbook.steps] == ["hosts", "databases", "monday", "report", "prune"]


# --- conditions ----------------------------------------------------------------------------------


def runs(when: When, day: datetime, variables: dict | None = None) -> bool:
    return when.reason_false(day, variables or {}) is None


@pytest.mark.parametrize(
    ("spec", "day", "expected"),
    [
        ({"weekday": ["mon", "fri"]}, datetime(2024, 1, 5), True),  # Friday
        ({"weekday": ["mon", "fri"]}, datetime(2024, 1, 6), False),  # Saturday
        ({"weekday": "Sunday"}, datetime(2024, 1, 7), True),
        ({"day_of_month": [1, 15]}, datetime(2024, 3, 15), True),
        ({"day_of_month": [1, 15]}, datetime(2024, 3, 16), False),
        ({"day_of_month": 31}, datetime(2024, 2, 29), False),
        ({"month": [1, 4, 7, 10]}, datetime(2024, 7, 1), True),
        ({"month": [1, 4, 7, 10]}, datetime(2024, 8, 1), False),
        ({"month": ["jan", "July"]}, datetime(2024, 7, 9), True),
        ({"last_day_of_month": True}, datetime(2024, 2, 29), True),  # leap year
        ({"last_day_of_month": True}, datetime(2023, 2, 28), True),
        ({"last_day_of_month": True}, datetime(2024, 2, 28), False),
        ({"last_day_of_month": True}, datetime(2024, 12, 31), True),
        ({"last_day_of_month": False}, datetime(2024, 12, 31), False),
        ({"weekday": "mon", "day_of_month": list(range(1, 8))}, datetime(2024, 1, 1), True),
        ({"weekday": "mon", "day_of_month": list(range(1, 8))}, datetime(2024, 1, 8), False),
        ({"month": 1, "weekday": "tue"}, datetime(2024, 1, 1), False),
    ],
)
def test_calendar_conditions(spec: dict, day: datetime, expected: bool) -> None:
    assert runs(parse_when(spec), day) is expected


@pytest.mark.parametrize(
    ("spec", "variables", "expected"),
    [
        ({"var": {"env": "production"}}, {"env": "production"}, True),
        ({"var": {"env": "production"}}, {"env": "staging"}, False),
        ({"var": {"env": ["production", "staging"]}}, {"env": "staging"}, True),
        ({"var": {"env": "production", "site": "berlin"}}, {"env": "production"}, False),
        ("vars.env == production", {"env": "production"}, True),
        ("vars.env != production", {"env": "production"}, False),
        ("vars.count == 3", {"count": 3}, True),
        ("vars.count == 3", {"count": "3"}, False),
        ("vars.flag == true", {"flag": True}, True),
        ("vars.name == 'a b'", {"name": "a b"}, True),
        ("vars.flag", {"flag": True}, True),
        ("vars.flag", {}, False),
        ("not vars.flag", {}, True),
        (["vars.a", {"weekday": "mon"}], {"a": 1}, True),
        (["vars.a", "vars.b"], {"a": 1}, False),
    ],
)
def test_variable_conditions(spec, variables: dict, expected: bool) -> None:
    assert runs(parse_when(spec), MONDAY, variables) is expected


@given(
    day=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 12, 31)),
    weekdays=st.sets(st.integers(0, 6), min_size=1),
    days=st.sets(st.integers(1, 31), min_size=1),
)
def test_calendar_conditions_match_the_calendar(day: datetime, weekdays: set, days: set) -> None:
    names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    when = parse_when({"weekday": [names[d] for d in weekdays], "day_of_month": sorted(days)})
    assert runs(when, day) == (day.weekday() in weekdays and day.day in days)
