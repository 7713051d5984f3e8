"""Hostile YAML: mutations of the shipped playbooks and of sample inventories.

Each family puts one kind of hostile value somewhere in a valid document: nesting hundreds of
levels deep, integers of thousands of digits, alias bombs ("billion laughs") and aliases into
themselves, out-of-range numbers in numeric fields, values of the wrong type. Every mutant must
load, or raise the documented error (``InventoryError``/``PlaybookError``, one line, with the
line number for the hostile families), within a bound on time and memory: never a
``RecursionError``, ``ValueError``, ``MemoryError`` or a hang. A few mutants go through the
installed CLI as subprocesses under an address-space limit (docs/inventory.md, "Limits").
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmmaint.errors import InventoryError, PlaybookError
from crmmaint.inventory import MAX_CONNECT_TIMEOUT, Inventory, load_inventory
from crmmaint.playbook import load_playbook_text
from crmmaint.playbook.loader import (
    LONGEST_PARAM_DURATION,
    LONGEST_RETRY_DELAY,
    LONGEST_TIMEOUT,
    MAX_RETRIES,
)
from crmmaint.playbook.model import Playbook
from crmmaint.repository.repository import COMPRESSION_LEVELS as LEVELS

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

#: A sample inventory with every numeric field set (the shipped ones leave most unset).
SAMPLE_INVENTORY = """\
settings: {journal: journal.sqlite}
hosts:
  local: {connection: local, connect_timeout: 5}
  app1:
    address: 10.0.0.11
    port: 22
    user: crm
    connect_timeout: 10
    groups: [app]
    vars: {log_paths: [/var/log/crm/app.log], services: {tcp: ["127.0.0.1:8080"]}}
  db1: {address: 10.0.0.21, port: 2222, groups: [db]}
databases:
  crm: {engine: postgresql, host: db1, port: 5432, user: backup, password: "env:CRM_PW", main: true}
  demo: {engine: sqlite, path: crm.sqlite}
caches:
  sessions: {host: app1, redis: "redis://127.0.0.1:6379/0"}
filesets:
  attachments: {host: app1, paths: [/srv/crm/attachments]}
repositories:
  offsite: {url: "sftp://backup@10.0.0.5:22/srv/crm", connect_timeout: 30, compression: 3, default: true}
  local: {url: repo, write_key: keys/write.key, recipients: ["file:keys/ops.pub"]}
drills:
  crm: {host: app1, port: 5433}
vars: {environment: production, threshold: 80}
"""

INVENTORIES = {
    "sample": SAMPLE_INVENTORY,
    "demo": (REPO / "examples" / "demo-inventory.yml").read_text(),
    "production": (REPO / "examples" / "production-inventory.yml").read_text(),
}
PLAYBOOKS = {p.stem: p.read_text() for p in sorted((REPO / "playbooks").glob("*.yml"))}

#: Keys whose values are seconds, counts, ports or levels, in inventories and playbooks.
NUMERIC_KEYS = {
    "port", "connect_timeout", "compression", "timeout", "retries", "retry_delay",
    "expect_status", "warn_at", "latency_warn", "connections_warn", "keep_daily", "keep_weekly",
    "keep_monthly", "keep_yearly", "keep_last", "keep_within", "warn_days", "history_days",
    "min_points", "min_span", "tcp_timeout", "threshold",
}  # fmt: skip

PLACEHOLDER = "HOSTILE_PLACEHOLDER"
LIMITS = {"seconds": 5, "memory": 1 << 30}


# --- documents and places in them ---------------------------------------------------------------


def _paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every place below the root: mapping keys and list indexes, outermost first."""
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def _put(doc: Any, path: tuple, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def _base(kind: str, name: str) -> Any:
    return yaml.safe_load((INVENTORIES if kind == "inventory" else PLAYBOOKS)[name])


def _render(doc: Any, path: tuple, fragment: str) -> str:
    """``doc`` as YAML text with the value at ``path`` written as the raw ``fragment``."""
    text = yaml.safe_dump(_put(doc, path, PLACEHOLDER), sort_keys=False, width=1 << 20)
    return text.replace(PLACEHOLDER, fragment, 1)


_PLACES = {
    (kind, name): list(_paths(_base(kind, name)))
    for kind, names in (("inventory", INVENTORIES), ("playbook", PLAYBOOKS))
    for name in names
}
_NUMERIC_PLACES = {
    key: [p for p in places if isinstance(p[-1], str) and p[-1] in NUMERIC_KEYS]
    for key, places in _PLACES.items()
}
assert all(_NUMERIC_PLACES[("playbook", name)] for name in PLAYBOOKS)
assert _NUMERIC_PLACES[("inventory", "sample")]

documents = st.sampled_from(sorted(_PLACES))


@st.composite
def places(draw: st.DrawFn, numeric: bool = False) -> tuple[str, str, tuple]:
    kind, name = draw(documents.filter(lambda k: not numeric or _NUMERIC_PLACES[k]))
    where = (_NUMERIC_PLACES if numeric else _PLACES)[(kind, name)]
    return kind, name, draw(st.sampled_from(where))


# --- the families ---------------------------------------------------------------------------------


@st.composite
def deep_nesting(draw: st.DrawFn) -> str:
    levels = draw(st.integers(50, 3000))
    if draw(st.booleans()):
        return "[" * levels + "]" * levels
    return "{a: " * levels + "1" + "}" * levels


@st.composite
def huge_numbers(draw: st.DrawFn) -> tuple[str, bool]:
    """A long number in one of YAML's spellings, and whether it is beyond what loads."""
    digits = draw(st.integers(15, 20_000))
    sign = draw(st.sampled_from(["", "-", "+"]))
    form = draw(st.sampled_from(["decimal", "hex", "binary", "sexagesimal", "float", "exponent"]))
    text = {
        "decimal": "9" * digits,
        "hex": "0x" + "f" * digits,
        "binary": "0b" + "1" * digits,
        "sexagesimal": "1" + ":59" * digits,
        "float": "9" * digits + ".5",
        "exponent": "1.0e+" + "9" * min(digits, 400),
    }[form]
    refused = {
        "decimal": digits > 18,
        "hex": True,  # 15 f's are 18 digits, 16 are 20
        "binary": digits >= 60,
        "sexagesimal": True,
        "float": digits > 308,  # inf
        "exponent": True,
    }[form]
    return sign + text, refused


@st.composite
def alias_bombs(draw: st.DrawFn) -> tuple[str, str | None]:
    """A flow sequence of anchored levels, each ``width`` aliases of the one before, and the
    refusal it must meet (None: it may load)."""
    width, depth = draw(st.integers(2, 10)), draw(st.integers(1, 12))
    shape = draw(st.sampled_from(["list", "mapping", "merge", "cycle"]))
    if shape == "cycle":
        cycle = draw(st.sampled_from(["&r [*r]", "&r {a: *r}", "&r [1, [2, *r]]", "&r {<<: *r}"]))
        return cycle, "refers to a node that contains it"
    if shape == "list":
        levels = ["&a0 [" + ", ".join(["lol"] * width) + "]"]
        levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, depth)]
    elif shape == "mapping":
        levels = ["&a0 {" + ", ".join(f"k{j}: lol" for j in range(width)) + "}"]
        levels += [
            f"&a{i} {{" + ", ".join(f"k{j}: *a{i - 1}" for j in range(width)) + "}"
            for i in range(1, depth)
        ]
    else:
        levels = ["&a0 {" + ", ".join(f"k{j}: lol" for j in range(width)) + "}"]
        levels += [
            f"&a{i} {{<<: *a{i - 1}, "
            + ", ".join(f"m{i}_{j}: *a{i - 1}" for j in range(width))
            + "}"
            for i in range(1, depth)
        ]
    huge = width**depth > 1_000_000  # the last alias alone stands for more than that
    return "[" + ", ".join(levels) + f", *a{depth - 1}]", "aliases expand" if huge else None


bad_numbers = st.sampled_from(
    [
        "-5", "0", "-0.0", "0.0001", "1e23", "1.0e+23", "-1.0e+23", "1e308", "1e999", ".inf", "-.inf", ".nan",
        "65535", "65536", "3600", "3601", "100", "101", "-1", "1_000", "0x10", "0b1", "0o17",
        "1:00:00", "99999999999999999999", "'-5s'", "'0s'", "'1e23'", "'99999999999999999999w'",
        "'9999999999999999999999999999999999999999999999999d'", "'1h1h1h'", "'5 minutes'",
    ]
) | st.integers(-(10**20), 10**20).map(str) | st.floats().map(repr)  # fmt: skip

swapped_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


# --- loading under bounds ---------------------------------------------------------------------------


class Hang(Exception):
    """The watchdog fired: loading took longer than the bound."""


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def bounded(seconds: float = LIMITS["seconds"], memory: int = LIMITS["memory"]) -> Iterator[None]:
    """Raise ``Hang`` after ``seconds`` and ``MemoryError`` past ``memory`` more bytes of address
    space: a regression fails the example instead of stalling or swapping the machine."""

    def fire(signum: int, frame: Any) -> None:
        raise Hang(f"still loading after {seconds}s")

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + memory
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    previous = signal.signal(signal.SIGALRM, fire)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _load(kind: str, text: str, check: Callable[[Any], None] | None = None) -> str | None:
    """Load one mutant; the error's one-line message, or None when it is valid (then
    ``check`` gets the inventory or playbook)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"mutant-{kind}.yml"
        path.write_text(text)
        path.chmod(0o600)
        try:
            with bounded():
                if kind == "inventory":
                    loaded: Any = load_inventory(path)
                else:
                    loaded = load_playbook_text(text, None, source=str(path))
        except (InventoryError, PlaybookError) as exc:
            message = str(exc)
            assert "\n" not in message, message
            assert message.startswith(str(path)), message
            return message
    if check is not None:
        check(loaded)
    return None


def _in_range(loaded: Inventory | Playbook) -> None:
    """What loaded has every number within its documented range."""
    if isinstance(loaded, Inventory):
        for host in loaded.hosts.values():
            assert 0 < host.connect_timeout <= MAX_CONNECT_TIMEOUT and 0 < host.port < 65536
        for target in [*loaded.databases.values(), *loaded.drills.values()]:
            assert target.port is None or 0 < target.port < 65536
        for repo in loaded.repositories.values():
            timeout = repo.options.get("connect_timeout", 10)
            assert 0 < timeout <= MAX_CONNECT_TIMEOUT and repo.compression in (None, *LEVELS)
        return
    for step in loaded.steps:
        assert step.timeout is None or 0 < step.timeout <= LONGEST_TIMEOUT
        assert 0 <= step.retries <= MAX_RETRIES and 0 <= step.retry_delay <= LONGEST_RETRY_DELAY
        for name, value in step.params.items():
            if step.spec.params[name].type == "duration" and value is not None:
                assert 0 <= value <= LONGEST_PARAM_DURATION
            if isinstance(value, int | float):
                assert math.isfinite(value) and abs(value) < 10**18


def _has_line(message: str, kind: str) -> bool:
    return re.match(rf".*/mutant-{kind}\.yml:\d+[:,]", message) is not None


HYPOTHESIS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- property tests ---------------------------------------------------------------------------------


@HYPOTHESIS
@given(places(), deep_nesting())
def test_deep_nesting_is_a_line_error(place, fragment):
    kind, name, path = place
    message = _load(kind, _render(_base(kind, name), path, fragment))
    if fragment.count("[") + fragment.count("{") > 64:
        assert message is not None and _has_line(message, kind), message
        assert "nested deeper than 64 levels" in message, message


@HYPOTHESIS
@given(places(), huge_numbers())
def test_huge_numbers_are_line_errors(place, number):
    (kind, name, path), (fragment, refused) = place, number
    message = _load(kind, _render(_base(kind, name), path, fragment))
    if refused:
        assert message is not None, fragment[:40]
        assert "not a finite number" in message or "is out of range" in message, message
    if message is not None:
        assert _has_line(message, kind), message


@HYPOTHESIS
@given(places(), alias_bombs())
def test_alias_bombs_are_refused_or_small(place, bomb):
    (kind, name, path), (fragment, refusal) = place, bomb
    message = _load(kind, _render(_base(kind, name), path, fragment))
    if refusal is not None:
        assert message is not None and refusal in message, message
    if message is not None:
        assert _has_line(message, kind), message


@HYPOTHESIS
@given(places(numeric=True), bad_numbers)
def test_numeric_fields_load_or_name_their_line(place, fragment):
    kind, name, path = place
    message = _load(kind, _render(_base(kind, name), path, fragment), check=_in_range)
    if message is not None:
        assert _has_line(message, kind), message


@HYPOTHESIS
@given(places(), swapped_values)
def test_type_swaps_load_or_raise_the_documented_error(place, value):
    kind, name, path = place
    text = yaml.safe_dump(_put(_base(kind, name), path, value), sort_keys=False)
    _load(kind, text, check=_in_range)


# --- fixed members of each family -------------------------------------------------------------------


def _sample(path: tuple, fragment: str) -> str:
    return _render(_base("inventory", "sample"), path, fragment)


@pytest.mark.parametrize(
    ("path", "fragment", "expected"),
    [
        (("hosts", "app1", "connect_timeout"), "-5", "connect_timeout -5 out of range"),
        (("hosts", "app1", "connect_timeout"), "0", "connect_timeout 0 out of range"),
        (("hosts", "app1", "connect_timeout"), "1.0e+23", "connect_timeout 1e+23 out of range"),
        (("hosts", "app1", "connect_timeout"), "1e23", "must be an integer or a number"),
        (("hosts", "app1", "connect_timeout"), ".nan", "'.nan' is not a finite number"),
        (("repositories", "offsite", "connect_timeout"), "3601", "at most 3600 seconds"),
        (("hosts", "db1", "port"), "0", "port 0 out of range 1-65535"),
        (("databases", "crm", "port"), "65536", "port 65536 out of range 1-65535"),
        (("drills", "crm", "port"), "-1", "port -1 out of range 1-65535"),
        (("hosts", "db1", "port"), "9" * 5000, "field 'port': integer '99999"),
        (("vars", "threshold"), "1" + ":59" * 3000, "field 'threshold': integer"),
        (("vars", "deep"), "[" * 500 + "]" * 500, "nested deeper than 64 levels"),
        (("repositories", "offsite", "region"), "[eu]", "field 'region' must be a string"),
    ],
)
def test_inventory_numbers_out_of_range_name_the_line(path, fragment, expected):
    message = _load("inventory", _sample(path, fragment))
    assert message is not None and expected in message, message
    assert _has_line(message, "inventory"), message


def test_block_style_nesting_is_refused_with_its_line():
    lines = ["name: deep", "vars:"] + [f"{'  ' * (i + 1)}k{i}:" for i in range(600)]
    message = _load("playbook", "\n".join(lines) + " 1\nsteps: []\n")
    # the document is level 1, vars level 2: the 65th level is the mapping of k63, on line 66
    assert message is not None and "mutant-playbook.yml:66:" in message, message


def _with_aliases(copies: int) -> str:
    """The sample inventory with a host merging another's settings, and ``copies`` aliases of
    a 101-node list (100 paths) in its vars."""
    paths = "&paths [" + ", ".join(f"/srv/{i}" for i in range(100)) + "]"
    return (
        SAMPLE_INVENTORY.replace(
            "hosts:\n", "hosts:\n  app2: &app {port: 22, user: crm, groups: [app]}\n"
        )
        .replace("  db1:", "  app3: {<<: *app, address: 10.0.0.13}\n  db1:")
        .replace(
            "vars: {environment",
            f"vars: {{paths: {paths}, copies: [{', '.join(['*paths'] * copies)}], environment",
        )
    )


def test_aliases_within_the_limit_still_load():
    assert _load("inventory", _with_aliases(copies=980)) is None  # 99,000 nodes and a merge


def test_aliases_past_the_limit_are_refused_at_the_alias():
    message = _load("inventory", _with_aliases(copies=1000))
    assert message is not None and "aliases expand to more than 100,000 values" in message
    assert _has_line(message, "inventory"), message


# --- through the installed CLI -------------------------------------------------------------------------


def _address_space_limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMITS["memory"], LIMITS["memory"]))


def _bomb(levels: int = 10) -> str:
    chain = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    chain += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(chain) + f", *a{levels - 1}]"


CLI_CASES = [
    ("inventory", ("vars", "environment"), "[" * 600 + "]" * 600, "nested deeper"),
    ("inventory", ("hosts", "db1", "port"), "9" * 5000, "out of range"),
    ("inventory", ("vars", "environment"), _bomb(), "aliases expand"),
    ("inventory", ("hosts", "app1", "connect_timeout"), "-5", "out of range"),
    ("inventory", ("hosts", "app1", "connect_timeout"), "1.0e+23", "out of range"),
    ("inventory", ("hosts", "app1", "port"), "[22]", "must be an integer"),
    ("playbook", ("vars",), "{x: " + "[" * 600 + "]" * 600 + "}", "nested deeper"),
    ("playbook", ("steps", 0, "retries"), "9" * 5000, "out of range"),
    ("playbook", ("description",), _bomb(), "aliases expand"),
    ("playbook", ("name",), _bomb(), "aliases expand"),
    ("playbook", ("steps", 0, "timeout"), "1.0e+23", "must be at most"),
    ("playbook", ("steps", 0, "retries"), "[1]", "must be an integer"),
]


@pytest.mark.parametrize(("kind", "path", "fragment", "expected"), CLI_CASES)
def test_the_cli_reports_one_line_and_exit_3(tmp_path, kind, path, fragment, expected):
    base = _base(kind, "sample" if kind == "inventory" else "daily")
    path_of_file = tmp_path / f"hostile-{kind}.yml"
    path_of_file.write_text(_render(base, path, fragment))
    path_of_file.chmod(0o600)
    args = ["inventory", "check", "-i"] if kind == "inventory" else ["playbook", "check"]
    proc = subprocess.run(
        [str(BIN / "crmmaint"), *args, str(path_of_file)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        preexec_fn=_address_space_limit,
    )
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert re.search(rf"hostile-{kind}\.yml:\d+[:,]", lines[0]), lines[0]
    assert expected in lines[0], lines[0]
