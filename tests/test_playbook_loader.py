"""Playbook loading and validation: every problem has file:line, step and field."""

from __future__ import annotations

import contextlib
import copy
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmmaint.errors import PlaybookError
from crmmaint.inventory import Inventory, load_inventory
from crmmaint.playbook import check_playbook, load_playbook, load_playbook_text, loader
from crmmaint.results import TaskResult
from crmmaint.tasks.api import REGISTRY, Param, load_task_modules, task

# --- test-only tasks ---------------------------------------------------------------------------


@task(
    "test.pb.backup",
    targets="database",
    params={
        "keep": Param(int, default=7, help="backups to keep"),
        "max_age": Param("duration", default="1d"),
        "mode": Param(str, default="full", choices=("full", "schema")),
        "repository": Param(str, required=True, help="repository name"),
    },
)
def _backup(ctx):  # pragma: no cover - never run here
    return TaskResult.ok()


@task("test.pb.health", targets=("hosts",), params={"ports": Param(list, item_type=int)})
def _health(ctx):  # pragma: no cover
    return TaskResult.ok()


@task("test.pb.clear", targets=("cache", "hosts"))
def _clear(ctx):  # pragma: no cover
    return TaskResult.ok()


@task("test.pb.report", targets=("none",), params={"title": Param(str, default="report")})
def _report(ctx):  # pragma: no cover
    return TaskResult.ok()


@task("test.pb.summary", targets=())
def _summary(ctx):  # pragma: no cover
    return TaskResult.ok()


@pytest.fixture(autouse=True)
def _only_registered_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validate against the tasks registered so far, without importing every task module."""
    monkeypatch.setattr(loader, "load_task_modules", lambda: REGISTRY)


INVENTORY = """\
hosts:
  local: {connection: local}
  web1: {address: 127.0.0.2, groups: [web]}
  web2: {address: 127.0.0.3, groups: [web]}
  db1: {address: 127.0.0.4}
groups:
  dbservers: [db1]
databases:
  crm: {engine: postgresql, host: db1, main: true, groups: [main]}
  reports: {engine: sqlite, path: reports.sqlite}
caches:
  sessions: {host: web1, redis: "redis://127.0.0.2:6379/0"}
filesets:
  uploads: {host: web2, paths: [/srv/uploads]}
repositories:
  main: {url: ./repo}
vars:
  env: production
  clear_cache: true
"""

VALID = """\
name: nightly
window: daily
description: a test playbook
vars:
  retention: 7
defaults:
  timeout: 10m
  retries: 1
  on_failure: continue
steps:
  - name: backup crm
    task: test.pb.backup
    database: main
    with:
      repository: main
      max_age: 2h
    tags: [backup]
  - name: health
    task: test.pb.health
    hosts: [web, dbservers]
    with: {ports: [22, 80]}
    timeout: 30s
    retries: 3
    retry_delay: 2s
    on_failure: stop
  - name: clear
    task: test.pb.clear
    cache: all
    hosts: web1
    when: {weekday: [mon, fri], var: {clear_cache: true}}
  - name: report
    task: test.pb.report
    when: "vars.env == production"
    tags: [report, backup]
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    path = tmp_path / "inventory.yml"
    path.write_text(INVENTORY)
    return load_inventory(path)


def load(text: str, inventory: Inventory | None) -> object:
    return load_playbook_text(textwrap.dedent(text), inventory, source="pb.yml")


# --- a valid playbook ----------------------------------------------------------------------------


def test_valid_playbook_loads_with_defaults_and_converted_params(inventory: Inventory) -> None:
    pb = load(VALID, inventory)
    assert (pb.name, pb.window, pb.description) == ("nightly", "daily", "a test playbook")
    assert [s.name for s in pb.steps] == ["backup crm", "health", "clear", "report"]
    backup, health, clear, report = pb.steps
    assert backup.selectors == {"database": ["main"]}
    assert backup.params == {"keep": 7, "max_age": 7200.0, "mode": "full", "repository": "main"}
    assert (backup.timeout, backup.retries, backup.on_failure) == (600.0, 1, "continue")
    assert backup.tags == ("backup",)
    assert backup.line == 11
    assert health.selectors == {"hosts": ["web", "dbservers"]}
    assert (health.timeout, health.retries, health.retry_delay) == (30.0, 3, 2.0)
    assert health.on_failure == "stop"
    assert clear.selectors == {"cache": ["all"], "hosts": ["web1"]}
    assert clear.when is not None and clear.when.weekdays == frozenset({0, 4})
    assert report.runs_once and report.selectors == {}
    assert report.params == {"title": "report"}
    assert pb.tags == {"backup", "report"}


def test_minimal_playbook_defaults() -> None:
    pb = load_playbook_text(
        "steps: [{name: s, task: test.pb.summary}]", None, source="/x/weekly.yml"
    )
    assert (pb.name, pb.window, pb.path) == ("weekly", "adhoc", "/x/weekly.yml")
    step = pb.steps[0]
    assert (step.timeout, step.retries, step.retry_delay, step.on_failure) == (
        None,
        0,
        5.0,
        "stop",
    )


def test_load_playbook_from_file_and_shipped_name(
    tmp_path: Path, inventory: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = tmp_path / "playbooks"
    shipped.mkdir()
    (shipped / "daily.yml").write_text(VALID)
    monkeypatch.setattr(loader, "playbooks_dir", lambda: shipped)
    pb = load_playbook("daily", inventory)
    assert pb.path == str(shipped / "daily.yml")
    assert load_playbook(shipped / "daily.yml", inventory).name == "nightly"
    with pytest.raises(PlaybookError, match="did you mean 'daily'") as exc:
        load_playbook("dialy", inventory)
    assert "shipped: daily" in str(exc.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(PlaybookError, match=r"nope\.yml: file not found"):
        load_playbook(tmp_path / "nope.yml", None)


def test_shipped_playbooks_validate_against_the_shipped_tasks() -> None:
    shipped = loader.shipped_playbooks()
    assert shipped, "playbooks/ should ship the window playbooks"
    registry = load_task_modules()
    for path in shipped:
        assert check_playbook(path, registry=registry) == [], path
        assert load_playbook(path.stem, None, registry=registry).window in loader.WINDOWS


# --- every kind of error, with file:line, step and field ----------------------------------------

HEADER = "name: t\nsteps:\n"  # steps start at line 3


def step_doc(body: str) -> str:
    return HEADER + textwrap.indent(textwrap.dedent(body), "  ")


ERRORS = [
    # (document, line, step, field, text in message)
    (
        "name: t\nstepz: []\nsteps: [{name: a, task: test.pb.summary}]\n",
        2,
        None,
        "stepz",
        "did you mean 'steps'",
    ),
    ("name: t\nwindow: hourly\nsteps: []\n", 2, None, "window", "window must be one of daily"),
    ("name: [1]\nsteps: [{name: a, task: test.pb.summary}]\n", 1, None, "name", "must be a string"),
    (
        'name: "a\\e[2Jb"\nsteps: [{name: a, task: test.pb.summary}]\n',
        1,
        None,
        "name",
        "playbook name 'a\\x1b[2Jb' must start with a letter or digit",
    ),
    ("name: t\n", 1, None, "steps", "missing required field 'steps'"),
    ("name: t\nsteps: []\n", 2, None, "steps", "'steps' is empty"),
    ("name: t\nsteps: {a: 1}\n", 2, None, "steps", "must be a list"),
    ("name: t\nsteps:\n  - just a string\n", 2, None, "steps", "must be a mapping"),
    ("name: t\nvars: [1]\nsteps: [{name: a, task: test.pb.summary}]\n", 2, None, "vars", "mapping"),
    (
        "defaults:\n  timeout: 5 minutes\nsteps: [{name: a, task: test.pb.summary}]\n",
        2,
        None,
        "defaults.timeout",
        "not a duration",
    ),
    (
        "defaults:\n  retires: 2\nsteps: [{name: a, task: test.pb.summary}]\n",
        2,
        None,
        "defaults.retires",
        "did you mean 'retries'",
    ),
    (
        "defaults: 3\nsteps: [{name: a, task: test.pb.summary}]\n",
        1,
        None,
        "defaults",
        "'defaults' must be a mapping",
    ),
    (step_doc("- task: test.pb.summary\n"), 3, "#1", "name", "missing required field 'name'"),
    (step_doc("- name: ''\n  task: test.pb.summary\n"), 3, "#1", "name", "must start with"),
    (step_doc("- name: a\n"), 3, "a", "task", "missing required field 'task'"),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  tiemout: 5s\n"),
        5,
        "a",
        "tiemout",
        "did you mean 'timeout'",
    ),
    (
        step_doc("- name: a\n  task: test.pb.bakup\n"),
        4,
        "a",
        "task",
        "did you mean 'test.pb.backup'",
    ),
    (
        step_doc("- name: a\n  task: nosuchmodule.frobnicate\n"),
        4,
        "a",
        "task",
        "known tasks:",
    ),
    (
        step_doc(
            "- name: a\n  task: test.pb.backup\n  database: crmm\n  with: {repository: main}\n"
        ),
        5,
        "a",
        "database",
        "did you mean 'crm'",
    ),
    (
        step_doc("- name: a\n  task: test.pb.health\n  hosts: [web, nowhere]\n"),
        5,
        "a",
        "hosts",
        "no hosts named or grouped 'nowhere'",
    ),
    (
        step_doc("- name: a\n  task: test.pb.backup\n  hosts: all\n  with: {repository: main}\n"),
        5,
        "a",
        "hosts",
        "does not take 'hosts' targets",
    ),
    (
        step_doc("- name: a\n  task: test.pb.report\n  hosts: all\n"),
        5,
        "a",
        "hosts",
        "runs once on the runner host",
    ),
    (
        step_doc("- name: a\n  task: test.pb.health\n"),
        4,
        "a",
        "hosts",
        "needs targets",
    ),
    (
        step_doc("- name: a\n  task: test.pb.health\n  hosts: []\n"),
        5,
        "a",
        "hosts",
        "names no targets",
    ),
    (
        step_doc("- name: a\n  task: test.pb.health\n  hosts: [1, 2]\n"),
        5,
        "a",
        "hosts",
        "string or a list of strings",
    ),
    (
        step_doc(
            "- name: a\n  task: test.pb.backup\n  database: crm\n  with:\n"
            "    repository: main\n    keep: seven\n"
        ),
        8,
        "a",
        "with.keep",
        "expected int",
    ),
    (
        step_doc(
            "- name: a\n  task: test.pb.backup\n  database: crm\n  with:\n"
            "    repository: main\n    keep: true\n"
        ),
        8,
        "a",
        "with.keep",
        "true/false",
    ),
    (
        step_doc(
            "- name: a\n  task: test.pb.backup\n  database: crm\n  with:\n"
            "    repository: main\n    max_age: soon\n"
        ),
        8,
        "a",
        "with.max_age",
        "not a duration",
    ),
    (
        step_doc(
            "- name: a\n  task: test.pb.backup\n  database: crm\n  with:\n"
            "    repository: main\n    mode: partial\n"
        ),
        8,
        "a",
        "with.mode",
        "expected one of full, schema",
    ),
    (
        step_doc(
            "- name: a\n  task: test.pb.backup\n  database: crm\n  with:\n"
            "    repository: main\n    kep: 3\n"
        ),
        8,
        "a",
        "with.kep",
        "did you mean 'keep'",
    ),
    (
        step_doc("- name: a\n  task: test.pb.backup\n  database: crm\n  with: {keep: 3}\n"),
        6,
        "a",
        "with.repository",
        "needs parameter 'repository' (repository name)",
    ),
    (
        step_doc("- name: a\n  task: test.pb.backup\n  database: crm\n"),
        3,
        "a",
        "with.repository",
        "needs parameter 'repository'",
    ),
    (
        step_doc("- name: a\n  task: test.pb.health\n  hosts: all\n  with: {ports: [22, x]}\n"),
        6,
        "a",
        "with.ports",
        "expected a list of int",
    ),
    (
        step_doc("- name: a\n  task: test.pb.health\n  hosts: all\n  with: [1]\n"),
        6,
        "a",
        "with",
        "'with' must be a mapping",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  timeout: 5 minutes\n"),
        5,
        "a",
        "timeout",
        "not a duration",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  timeout: 0\n"),
        5,
        "a",
        "timeout",
        "greater than 0",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  timeout: [5]\n"),
        5,
        "a",
        "timeout",
        "must be a duration",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  retry_delay: soon\n"),
        5,
        "a",
        "retry_delay",
        "not a duration",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  retries: -1\n"),
        5,
        "a",
        "retries",
        "between 0 and 100",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  retries: 1.5\n"),
        5,
        "a",
        "retries",
        "must be an integer",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  on_failure: ignore\n"),
        5,
        "a",
        "on_failure",
        "one of stop, continue",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  tags: [x, 2]\n"),
        5,
        "a",
        "tags",
        "list of strings",
    ),
    (
        step_doc(
            "- name: a\n  task: test.pb.summary\n- name: b\n  task: test.pb.summary\n"
            "- name: a\n  task: test.pb.summary\n"
        ),
        7,
        "a",
        "name",
        "duplicate step name 'a' (first used at line 3",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  when: {weekdy: mon}\n"),
        5,
        "a",
        "when.weekdy",
        "did you mean 'weekday'",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  when: {weekday: [mon, funday]}\n"),
        5,
        "a",
        "when.weekday",
        "'funday'",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  when: {day_of_month: [0]}\n"),
        5,
        "a",
        "when.day_of_month",
        "1 .. 31",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  when: {month: 13}\n"),
        5,
        "a",
        "when.month",
        "1 .. 12",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  when: {last_day_of_month: yes please}\n"),
        5,
        "a",
        "when.last_day_of_month",
        "true or false",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  when: \"__import__('os') or 1\"\n"),
        5,
        "a",
        "when",
        "no other expressions",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  when: 'vars.env > 3'\n"),
        5,
        "a",
        "when",
        "cannot read condition",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  when: 42\n"),
        5,
        "a",
        "when",
        "'when' must be a mapping",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  when: {var: [env]}\n"),
        5,
        "a",
        "when.var",
        "mapping of variable names",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  when: 'vars.evn == production'\n"),
        5,
        "a",
        "when",
        "did you mean 'env'",
    ),
    ("name: t\nsteps:\n  - name: a\n    task: [x\n", 5, None, None, "YAML syntax"),
    ("name: t\nname: u\nsteps: []\n", 2, None, None, "duplicate key 'name'"),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  timeout: 8d\n"),
        5,
        "a",
        "timeout",
        "'timeout' must be at most 1w, not '8d'",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  timeout: 1.0e+23\n"),
        5,
        "a",
        "timeout",
        "must be at most 1w",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  retry_delay: 25h\n"),
        5,
        "a",
        "retry_delay",
        "'retry_delay' must be at most 1d",
    ),
    (
        "name: t\ndefaults: {retry_delay: -5}\nsteps: [{name: a, task: test.pb.summary}]\n",
        2,
        None,
        "defaults.retry_delay",
        "must not be negative",
    ),
    (
        step_doc(
            "- name: a\n  task: test.pb.backup\n  database: crm\n  with:\n"
            "    repository: main\n    max_age: 36501d\n"
        ),
        8,
        "a",
        "with.max_age",
        "longer than 36500d (100 years)",
    ),
    (
        step_doc("- name: a\n  task: test.pb.summary\n  retries: 99999999999999999999\n"),
        5,
        None,
        None,
        "field 'retries': integer '99999999999999999999' is out of range (at most 18 digits)",
    ),
]


@pytest.mark.parametrize(("doc", "line", "step", "field", "text"), ERRORS)
def test_validation_errors_name_file_line_step_field(
    inventory: Inventory, doc: str, line: int, step: str | None, field: str | None, text: str
) -> None:
    with pytest.raises(PlaybookError) as info:
        load_playbook_text(doc, inventory, source="pb.yml")
    err = info.value
    assert text in str(err)
    assert (err.file, err.line, err.step, err.field) == ("pb.yml", line, step, field)
    where = f"pb.yml:{line}"
    assert str(err).startswith(where)
    if step:
        assert f"step {step!r}" in str(err)
    if field:
        assert f"field {field!r}" in str(err)


def test_empty_and_non_mapping_documents() -> None:
    with pytest.raises(PlaybookError, match="the playbook is empty"):
        load_playbook_text("", None, source="pb.yml")
    with pytest.raises(PlaybookError, match="must be a mapping with 'steps', not list"):
        load_playbook_text("- a\n- b\n", None, source="pb.yml")


def test_without_inventory_target_names_and_variables_are_not_checked() -> None:
    doc = step_doc(
        "- name: a\n  task: test.pb.health\n  hosts: somewhere\n  when: 'vars.whatever'\n"
    )
    pb = load_playbook_text(doc, None, source="pb.yml")
    assert pb.steps[0].selectors == {"hosts": ["somewhere"]}


def test_selector_kinds_are_still_checked_without_inventory() -> None:
    doc = step_doc("- name: a\n  task: test.pb.health\n  database: crm\n")
    with pytest.raises(PlaybookError, match="does not take 'database' targets"):
        load_playbook_text(doc, None, source="pb.yml")


def test_all_problems_are_collected(tmp_path: Path, inventory: Inventory) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(
        step_doc(
            "- name: a\n  task: test.pb.nope\n"
            "- name: b\n  task: test.pb.health\n  hosts: nowhere\n  retries: x\n"
            "- name: a\n  task: test.pb.summary\n"
        )
    )
    problems = check_playbook(path, inventory)
    assert [(p.line, p.step, p.field) for p in problems] == [
        (4, "a", "task"),
        (7, "b", "hosts"),
        (8, "b", "retries"),
        (9, "a", "name"),
    ]
    assert all(p.file == str(path) for p in problems)
    with pytest.raises(PlaybookError, match=r"3 more problems in this file"):
        load_playbook(path, inventory)
    # Without an inventory the unknown host is not a problem.
    assert len(check_playbook(path)) == 3


def test_check_playbook_of_a_valid_file_is_empty(tmp_path: Path, inventory: Inventory) -> None:
    path = tmp_path / "ok.yml"
    path.write_text(VALID)
    assert check_playbook(path, inventory) == []
    assert check_playbook(path) == []
    assert "no playbook file" in str(check_playbook("no-such-playbook-name")[0])


# --- robustness: any mutation of a valid playbook fails only with PlaybookError ------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["all", "web", "crm", "mon", "5m", "stop", "vars.env == x", "1e999s", "9" * 400]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


VALID_DOC = yaml.safe_load(VALID)
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: object, data: st.DataObject) -> object:
    paths = _paths(doc)
    path = data.draw(st.sampled_from(paths))
    if not path:
        return data.draw(VALUES)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]  # type: ignore[index]
    last = path[-1]
    action = data.draw(st.sampled_from(["delete", "replace", "insert"]))
    if action == "delete":
        del parent[last]  # type: ignore[attr-defined]
    elif action == "replace":
        parent[last] = data.draw(VALUES)  # type: ignore[index]
    elif isinstance(parent, dict):
        key = data.draw(st.text(min_size=1, max_size=10) | st.sampled_from(list(loader.STEP_KEYS)))
        parent[key] = data.draw(VALUES)
    else:
        parent.insert(last, data.draw(VALUES))  # type: ignore[attr-defined]
    return doc


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_playbooks_raise_only_playbook_error(
    inventory: Inventory, data: st.DataObject
) -> None:
    doc: object = copy.deepcopy(VALID_DOC)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        doc = _mutate(doc, data)
    text = yaml.dump(doc, Dumper=DUMPER, allow_unicode=True)
    inv = inventory if data.draw(st.booleans()) else None
    try:
        load_playbook_text(text, inv, source="fuzz.yml")
    except PlaybookError as exc:
        assert exc.file == "fuzz.yml"
        assert str(exc)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_raises_only_playbook_error(text: str) -> None:
    with contextlib.suppress(PlaybookError):
        load_playbook_text(text, None, source="fuzz.yml")


def test_the_reference_example_validates_against_the_shipped_tasks() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "playbooks.md").read_text()
    example = doc.split("## A complete example\n\n```yaml\n", 1)[1].split("```", 1)[0]
    pb = load_playbook_text(example, None, source="playbooks.md", registry=load_task_modules())
    assert [s.on_failure for s in pb.steps] == ["continue", "stop", "continue", "continue"]
