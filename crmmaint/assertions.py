"""Drill assertions: a team's own checks of a restored copy, an SQL query and the condition
its one value must meet (``select count(*) from customers where email is null`` ``== 0``;
``select max(created_at) from activities`` ``>= backup_time - 1 day``).

Pure parsing and evaluation: the engines run the query (read only, as the copy's owner) and
hand back its rows as text; ``Assertion.evaluate`` says whether they meet the condition.

A condition is ``OP OPERAND``: ``OP`` one of ``== != < <= > >=``; ``OPERAND`` a number, a
quoted string (``'won'``, ``'it''s'`` or ``"it's"``), ``null`` (with ``==`` and ``!=`` only), or ``backup_time``
optionally plus or minus a duration (``backup_time - 1 day``, ``backup_time - 36h``: the
time the backup was taken). A number compares as a decimal, a string as text, a time as an
ISO 8601 time (one without a zone is taken as UTC) or a number of seconds since the epoch.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from crmmaint.units import parse_duration

#: The comparison operators a condition may use.
OPERATORS = ("==", "!=", "<=", ">=", "<", ">")
_OPERATIONS = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}  # fmt: skip

#: At most this many assertions per source, and this many characters per query.
MAX_ASSERTIONS = 50
MAX_QUERY = 10_000
#: A value longer than this is cut where a report shows it.
MAX_SHOWN = 200

_CONDITION = re.compile(r"^\s*(==|!=|<=|>=|<|>)\s*(\S.*?)\s*$", re.DOTALL)
_TIME = re.compile(r"^backup_time\s*(?:([+-])\s*(\S.*))?$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_UNIT_WORDS = {
    "milliseconds": "ms", "millisecond": "ms", "seconds": "s", "second": "s",
    "minutes": "m", "minute": "m", "hours": "h", "hour": "h", "days": "d", "day": "d",
    "weeks": "w", "week": "w",
}  # fmt: skip
_UNIT_WORD = re.compile(r"(\d)\s*(" + "|".join(sorted(_UNIT_WORDS, key=len, reverse=True)) + r")\b")
_KEYS = frozenset({"query", "expect", "name"})


@dataclass(frozen=True)
class Assertion:
    """One assertion: ``name`` (what a report calls it; the query when not given), the SQL
    ``query`` that must return one row of one column, and ``expect``, the condition as
    written, parsed into ``op`` and ``operand`` (a ``Decimal``, a ``str``, ``None`` for
    null, or ``("backup_time", offset seconds)``)."""

    name: str
    query: str
    expect: str
    op: str
    operand: Any

    def evaluate(
        self, rows: Sequence[Sequence[str | None]], backup_time: float
    ) -> tuple[bool, str]:
        """Whether the query's ``rows`` (values as text, ``None`` for SQL NULL) meet the
        condition, given the backup's time (seconds since the epoch): ``(ok, found)``, where
        ``found`` is what the report shows (the value, or why there is none to compare)."""
        if len(rows) != 1 or len(rows[0]) != 1:
            shape = f"{len(rows)} rows" if len(rows) != 1 else f"{len(rows[0])} columns"
            return False, f"{shape}, not one value"
        value = rows[0][0]
        shown = "null" if value is None else value
        if len(shown) > MAX_SHOWN:
            shown = shown[:MAX_SHOWN] + "…"
        if self.operand is None or value is None:
            same = value is None and self.operand is None
            if self.op in ("==", "!="):
                return (same if self.op == "==" else not same), shown
            return False, shown
        if isinstance(self.operand, tuple):
            found = _as_time(value)
            if found is None:
                return False, f"{shown} (not a time)"
            return _compare(found, self.op, backup_time + self.operand[1]), shown
        if isinstance(self.operand, Decimal):
            try:
                number = Decimal(value.strip())
            except InvalidOperation:
                return False, f"{shown} (not a number)"
            if not number.is_finite():
                return False, f"{shown} (not a number)"
            return _compare(number, self.op, self.operand), shown
        return _compare(value, self.op, self.operand), shown


def parse_condition(text: str) -> tuple[str, Any]:
    """``(op, operand)`` of a condition (see the module's doc); raises ``ValueError`` saying
    what is accepted."""
    if not isinstance(text, str):
        raise ValueError(f"expect must be a condition such as '== 0', not {text!r:.40}")
    match = _CONDITION.match(text)
    if match is None:
        raise ValueError(
            f"expect {text!r:.60} is not a condition: write an operator ({' '.join(OPERATORS)}) "
            "and a value, e.g. '== 0' or '>= backup_time - 1 day'"
        )
    op, raw = match.groups()
    if raw.lower() == "null":
        if op not in ("==", "!="):
            raise ValueError(f"expect {text!r:.60}: null compares only with == or !=")
        return op, None
    if _NUMBER.match(raw):
        return op, Decimal(raw)
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return op, raw[1:-1].replace(raw[0] * 2, raw[0])  # 'it''s', as SQL writes it
    if time := _TIME.match(raw):
        sign, amount = time.groups()
        offset = 0.0
        if sign:
            words = _UNIT_WORD.sub(lambda m: m.group(1) + _UNIT_WORDS[m.group(2)], amount)
            try:
                offset = parse_duration(words)
            except ValueError:
                raise ValueError(
                    f"expect {text!r:.60}: {amount!r} is not a duration (e.g. 1 day, 36h, 90m)"
                ) from None
            offset = -offset if sign == "-" else offset
        return op, ("backup_time", offset)
    raise ValueError(
        f"expect {text!r:.60}: {raw!r:.40} is not a number, a quoted string, null or backup_time"
    )


def parse_assertions(value: Any) -> list[Assertion]:
    """A list of ``{query, expect, name}`` mappings as assertions; raises ``ValueError`` naming
    the first item that is not one (what a playbook step's or a ``drills:`` entry's
    ``assertions:`` holds)."""
    if not isinstance(value, list):
        raise ValueError("assertions must be a list of {query, expect} mappings")
    if len(value) > MAX_ASSERTIONS:
        raise ValueError(f"at most {MAX_ASSERTIONS} assertions, not {len(value)}")
    found: list[Assertion] = []
    for number, item in enumerate(value, 1):
        where = f"assertion {number}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} must be a mapping with query and expect")
        if unknown := sorted(str(k) for k in item if k not in _KEYS):
            raise ValueError(f"{where}: unknown key {unknown[0]!r} (query, expect, name)")
        query, expect, name = item.get("query"), item.get("expect"), item.get("name")
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"{where}: query must be an SQL query (text)")
        if len(query) > MAX_QUERY or "\0" in query:
            raise ValueError(f"{where}: query is longer than {MAX_QUERY} characters or holds NUL")
        if expect is None:
            raise ValueError(f"{where}: expect is missing (e.g. expect: '== 0')")
        try:
            op, operand = parse_condition(
                str(expect) if isinstance(expect, int | float) else expect
            )
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"{where}: name must be text")
        query = query.strip().rstrip(";").strip()
        if query.startswith("\\"):
            raise ValueError(f"{where}: query must be SQL, not a client command ({query[:2]})")
        shown = name.strip() if name else " ".join(query.split())
        found.append(Assertion(shown, query, str(expect).strip(), op, operand))
    return found


def _compare(found: Any, op: str, want: Any) -> bool:
    return _OPERATIONS[op](found, want)


def _as_time(value: str) -> float | None:
    """Seconds since the epoch of an ISO 8601 time (no zone: UTC) or a number of seconds."""
    text = value.strip()
    if _NUMBER.match(text):
        return float(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
