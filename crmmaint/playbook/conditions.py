"""Step conditions (``when:``): calendar tests and variable comparisons, declarative, no eval.

A ``when`` is a mapping (every key must hold), a string ``vars.NAME == VALUE`` /
``vars.NAME != VALUE`` / ``vars.NAME`` / ``not vars.NAME``, or a list of those (all must hold).
Parsing raises ``SourceError``; ``When.reason_false`` returns why a step does not run today.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import yaml

from crmmaint.yamlsource import SourceError, check_keys, line_of, type_name

WHEN_KEYS = frozenset({"weekday", "day_of_month", "month", "last_day_of_month", "var"})

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")

_VAR_EXPR = re.compile(
    r"^\s*(?P<not>not\s+)?vars\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"\s*(?:(?P<op>==|!=)\s*(?P<value>\S.*?))?\s*$"
)


@dataclass(frozen=True)
class VarTest:
    """``vars.NAME`` compared with a value: ``==``, ``!=``, ``in`` (a list) or ``truthy``."""

    name: str
    op: str
    value: Any = None
    negate: bool = False

    def holds(self, variables: Mapping[str, Any]) -> bool:
        actual = variables.get(self.name)
        if self.op == "==":
            result = actual == self.value
        elif self.op == "!=":
            result = actual != self.value
        elif self.op == "in":
            result = actual in self.value
        else:
            result = bool(actual)
        return result != self.negate

    def describe(self) -> str:
        if self.op == "truthy":
            return f"{'not ' if self.negate else ''}vars.{self.name}"
        if self.op == "in":
            return f"vars.{self.name} in {list(self.value)!r}"
        return f"vars.{self.name} {self.op} {self.value!r}"


@dataclass(frozen=True)
class When:
    """All conditions of one step; ``None`` fields are not tested."""

    weekdays: frozenset[int] | None = None
    days_of_month: frozenset[int] | None = None
    months: frozenset[int] | None = None
    last_day_of_month: bool | None = None
    var_tests: tuple[VarTest, ...] = field(default_factory=tuple)

    @property
    def variables(self) -> list[str]:
        return [t.name for t in self.var_tests]

    def reason_false(self, now: datetime, variables: Mapping[str, Any]) -> str | None:
        """Why the step does not run at ``now`` with ``variables``; ``None`` when it runs."""
        if self.weekdays is not None and now.weekday() not in self.weekdays:
            wanted = ", ".join(WEEKDAYS[d] for d in sorted(self.weekdays))
            return f"when: today is {WEEKDAYS[now.weekday()]}, step runs on {wanted}"
        if self.days_of_month is not None and now.day not in self.days_of_month:
            wanted = ", ".join(str(d) for d in sorted(self.days_of_month))
            return f"when: day of month is {now.day}, step runs on day {wanted}"
        if self.months is not None and now.month not in self.months:
            wanted = ", ".join(MONTHS[m - 1] for m in sorted(self.months))
            return f"when: month is {MONTHS[now.month - 1]}, step runs in {wanted}"
        if self.last_day_of_month is not None:
            is_last = (now + timedelta(days=1)).month != now.month
            if is_last != self.last_day_of_month:
                return (
                    "when: not the last day of the month"
                    if self.last_day_of_month
                    else "when: today is the last day of the month"
                )
        for test in self.var_tests:
            if not test.holds(variables):
                return f"when: {test.describe()} is false (vars.{test.name} is {variables.get(test.name)!r})"
        return None


def parse_when(value: Any, owner: Any = None, key: str = "when") -> When:
    """Parse a ``when`` value; ``owner`` is the mapping holding it (for line numbers)."""
    line = line_of(owner, key)
    parts = value if isinstance(value, list) else [value]
    if not parts:
        raise SourceError("'when' must not be an empty list", line, "when")
    merged: dict[str, Any] = {}
    tests: list[VarTest] = []
    for part in parts:
        if isinstance(part, str):
            tests.append(_parse_var_expr(part, line))
        elif isinstance(part, dict):
            found = _parse_mapping(part)
            for k, v in found.items():
                if k == "var_tests":
                    tests.extend(v)
                elif k in merged:
                    raise SourceError(
                        f"'when' tests {k} twice; put the values in one list",
                        line_of(part, k) or line,
                        f"when.{k}",
                    )
                else:
                    merged[k] = v
        else:
            raise SourceError(
                "'when' must be a mapping (weekday, day_of_month, month, last_day_of_month, var),"
                f" a 'vars.NAME == VALUE' string, or a list of those; not {type_name(part)}",
                line,
                "when",
            )
    return When(var_tests=tuple(tests), **merged)


def _parse_mapping(spec: dict) -> dict[str, Any]:
    try:
        check_keys(spec, WHEN_KEYS, "'when'")
    except SourceError as exc:
        raise SourceError(exc.message, exc.line, f"when.{exc.field}") from exc
    if not spec:
        raise SourceError("'when' must not be empty", line_of(spec), "when")
    out: dict[str, Any] = {}
    if "weekday" in spec:
        out["weekdays"] = _int_set(spec, "weekday", _weekday, "a weekday (mon .. sun)")
    if "day_of_month" in spec:
        out["days_of_month"] = _int_set(
            spec, "day_of_month", lambda v: _int_in(v, 1, 31), "a day of the month (1 .. 31)"
        )
    if "month" in spec:
        out["months"] = _int_set(spec, "month", _month, "a month (1 .. 12 or jan .. dec)")
    if "last_day_of_month" in spec:
        flag = spec["last_day_of_month"]
        if not isinstance(flag, bool):
            raise SourceError(
                f"'last_day_of_month' must be true or false, not {type_name(flag)}",
                line_of(spec, "last_day_of_month"),
                "when.last_day_of_month",
            )
        out["last_day_of_month"] = flag
    if "var" in spec:
        out["var_tests"] = _parse_var_mapping(spec)
    return out


def _int_set(spec: dict, key: str, convert: Any, expected: str) -> frozenset[int]:
    raw = spec[key]
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise SourceError(f"'{key}' must not be an empty list", line_of(spec, key), f"when.{key}")
    out = set()
    for item in items:
        number = convert(item)
        if number is None:
            raise SourceError(
                f"'{key}' must list {expected} values, not {item!r:.40}",
                line_of(spec, key),
                f"when.{key}",
            )
        out.add(number)
    return frozenset(out)


def _int_in(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def _weekday(value: Any) -> int | None:
    if isinstance(value, str):
        text = value.strip().lower()
        for index, name in enumerate(calendar.day_name):
            if text in (WEEKDAYS[index], name.lower()):
                return index
    return None


def _month(value: Any) -> int | None:
    if isinstance(value, str):
        text = value.strip().lower()
        for index, name in enumerate(calendar.month_name[1:]):
            if text in (MONTHS[index], name.lower()):
                return index + 1
        return None
    return _int_in(value, 1, 12)


def _parse_var_mapping(spec: dict) -> list[VarTest]:
    tests = spec["var"]
    line = line_of(spec, "var")
    if not isinstance(tests, dict) or not tests:
        raise SourceError(
            "'var' must be a mapping of variable names to values, e.g. var: {env: production}",
            line,
            "when.var",
        )
    out = []
    for name, expected in tests.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SourceError(
                f"'var' names variable {name!r}; use letters, digits and _",
                line_of(tests, name),
                "when.var",
            )
        if isinstance(expected, dict):
            raise SourceError(
                f"'var' value of {name!r} must be a scalar or a list of scalars",
                line_of(tests, name),
                f"when.var.{name}",
            )
        if isinstance(expected, list):
            if any(isinstance(v, dict | list) for v in expected):
                raise SourceError(
                    f"'var' value of {name!r} must be a scalar or a list of scalars",
                    line_of(tests, name),
                    f"when.var.{name}",
                )
            out.append(VarTest(name, "in", tuple(expected)))
        else:
            out.append(VarTest(name, "==", expected))
    return out


def _parse_var_expr(text: str, line: int | None) -> VarTest:
    m = _VAR_EXPR.match(text)
    if m is None or (m.group("not") and m.group("op")):
        raise SourceError(
            f"cannot read condition {text!r:.60}; write 'vars.NAME == VALUE', 'vars.NAME != VALUE',"
            " 'vars.NAME' or 'not vars.NAME' (no other expressions)",
            line,
            "when",
        )
    name, op = m.group("name"), m.group("op")
    if op is None:
        return VarTest(name, "truthy", negate=bool(m.group("not")))
    try:
        value = yaml.safe_load(m.group("value"))
    except yaml.YAMLError:
        value = m.group("value")
    if isinstance(value, dict | list):
        raise SourceError(
            f"condition {text!r:.60} compares with a {type_name(value)}; use a plain value",
            line,
            "when",
        )
    return VarTest(name, op, value)
