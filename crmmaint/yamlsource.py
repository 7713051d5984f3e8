"""YAML loading that remembers where every value came from, and small field readers.

Inventory and playbook validation both need "file:line, field: what is wrong, what to do". The
loader returns plain dicts and lists whose mappings are ``SourceMap`` (a dict that also knows the
line of itself and of each key), so validators can point at the exact line.

A configuration file is untrusted input, so the loader bounds what a document may make it
build, and refuses anything beyond with the line (a ``SourceError``, never a ``RecursionError``,
``ValueError`` or a hang): collections nested more than ``MAX_DEPTH`` levels, aliases that
would expand to more than ``MAX_ALIAS_NODES`` nodes in all ("billion laughs") or that refer to
a node containing them, integers of more than ``MAX_INT_DIGITS`` digits, and floats that are
not finite (``.inf``, ``.nan``, ``1e999``).
"""

from __future__ import annotations

import errno
import math
import os
import reprlib
import stat
from pathlib import Path
from typing import Any, TypeVar

import yaml

from crmmaint.errors import os_reason
from crmmaint.units import format_size

# Durations, sizes and percentages are parsed in crmmaint.units; the names stay importable from
# here for the modules that still take them from this one.
from crmmaint.units import parse_duration as parse_duration
from crmmaint.units import parse_percent as parse_percent
from crmmaint.units import parse_size as parse_size

T = TypeVar("T")


class SourceMap(dict):
    """A mapping loaded from YAML with ``line`` (of the mapping) and ``key_lines``."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


#: Deepest nesting of lists and mappings a configuration document may have (the shipped files
#: use 5); Python's own recursion limit would end a deeper one with a RecursionError.
MAX_DEPTH = 64
#: The most nodes all aliases of one document may stand for, counted as if each alias were
#: written out in full: plenty for ``<<: *defaults`` on every host of a large inventory, far
#: below what would make a traversal of the loaded data (a message, ``--json``) take long.
MAX_ALIAS_NODES = 100_000
#: The most digits an integer may have; more is refused rather than read (Python refuses to
#: convert more than 4,300, and no setting needs more than 18: a size of 10**18 bytes is an EB).
MAX_INT_DIGITS = 18
_MAX_INT = 10**MAX_INT_DIGITS - 1


class SourceError(Exception):
    """A problem at a place in a YAML file; callers turn it into their domain error."""

    def __init__(self, message: str, line: int | None = None, field: str | None = None) -> None:
        self.message, self.line, self.field = message, line, field
        super().__init__(message)


def _line(mark: yaml.Mark | None) -> int | None:
    return mark.line + 1 if mark is not None else None


class _LineLoader(yaml.SafeLoader):
    """``SafeLoader`` building ``SourceMap`` mappings, within the limits above."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0  # collections open around the node being composed
        self._open_anchors: list[str | None] = []
        self._alias_nodes = 0
        self._expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, depth)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)  # type: ignore[arg-type]
            if target is not None:
                self._check_alias(event, target)
            return super().compose_node(parent, index)
        if not isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise SourceError(
                f"nested deeper than {MAX_DEPTH} levels of lists and mappings",
                _line(event.start_mark),
            )
        self._depth += 1
        self._open_anchors.append(event.anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.pop()

    def _check_alias(self, event: yaml.AliasEvent, target: yaml.Node) -> None:
        """Refuse an alias to a node it is inside of, or one that takes the document past
        ``MAX_DEPTH`` or ``MAX_ALIAS_NODES`` once written out."""
        line = _line(event.start_mark)
        if event.anchor in self._open_anchors:
            raise SourceError(f"alias *{event.anchor} refers to a node that contains it", line)
        nodes, depth = self._expansion(target)
        if self._depth + depth > MAX_DEPTH:
            raise SourceError(
                f"alias *{event.anchor} nests the document deeper than {MAX_DEPTH} levels of"
                " lists and mappings",
                line,
            )
        self._alias_nodes += nodes
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise SourceError(
                f"aliases expand to more than {MAX_ALIAS_NODES:,} values (alias"
                f" *{event.anchor} stands for {nodes:,}); write the values out or use fewer"
                " aliases",
                line,
            )

    def _expansion(self, node: yaml.Node) -> tuple[int, int]:
        """(nodes, depth) of ``node`` with every alias in it written out; a composed node
        passed the depth check, so this recursion stays within ``MAX_DEPTH``."""
        known = self._expanded.get(id(node))
        if known is not None:
            return known
        nodes, depth = 1, 0
        if isinstance(node, yaml.CollectionNode):
            children = (
                [n for pair in node.value for n in pair]
                if isinstance(node, yaml.MappingNode)
                else node.value
            )
            for child in children:
                child_nodes, child_depth = self._expansion(child)
                nodes += child_nodes
                depth = max(depth, child_depth)
            depth += 1
        self._expanded[id(node)] = (nodes, depth)
        return nodes, depth

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:  # 2024-13-01, an int beyond Python's limit
            raise SourceError(
                f"cannot read {_scalar_text(node)}: {exc}", _line(node.start_mark)
            ) from exc

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:  # type: ignore[override]
        # Checked before conversion: a long one is slow to convert, or refused by Python.
        written = node.value.replace("_", "")
        value = super().construct_yaml_int(node) if len(written) <= 80 else None
        if value is None or abs(value) > _MAX_INT:
            raise SourceError(
                f"integer {_scalar_text(node)} is out of range (at most {MAX_INT_DIGITS}"
                " digits); quote it if it is text",
                _line(node.start_mark),
            )
        return value

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:  # type: ignore[override]
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise SourceError(
                f"{_scalar_text(node)} is not a finite number; quote it if it is text",
                _line(node.start_mark),
            )
        return value

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> SourceMap:  # type: ignore[override]
        result = SourceMap()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be plain scalars", key_node.start_mark
                )
            # A key is a name or a field: the text as written (a host named `yes`, `off`,
            # `null` or `0x10` is that name, not "True", "False", "None" or "16").
            key = key_node.value
            if key in result:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            try:
                result[key] = self.construct_object(value_node, deep=True)
            except SourceError as exc:
                if isinstance(value_node, yaml.ScalarNode):  # name the field in the message
                    exc.message = f"field {key!r}: {exc.message}"
                raise
            result.key_lines[key] = key_node.start_mark.line + 1
        return result


def _scalar_text(node: yaml.Node) -> str:
    """A scalar as written, shortened for a message (a hostile one may be megabytes)."""
    text = node.value if isinstance(node.value, str) else "value"
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}… ({len(text):,} characters)"


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    lambda loader, node: loader.construct_mapping(node),  # type: ignore[attr-defined]
)
_LineLoader.add_constructor(
    "tag:yaml.org,2002:int",
    lambda loader, node: loader.construct_yaml_int(node),  # type: ignore[attr-defined]
)
_LineLoader.add_constructor(
    "tag:yaml.org,2002:float",
    lambda loader, node: loader.construct_yaml_float(node),  # type: ignore[attr-defined]
)


def load_yaml_text(text: str, source: str = "<string>") -> Any:
    """Parse YAML text; syntax errors become ``SourceError`` with the line."""
    try:
        return yaml.load(text, Loader=_LineLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise SourceError(f"YAML syntax: {problem}", line) from exc
    except yaml.YAMLError as exc:
        raise SourceError(f"YAML syntax: {exc}") from exc


#: The largest configuration file read (an inventory, a playbook, a recipients file).
MAX_CONFIG_FILE = 16 << 20


def read_regular_file(path: str | Path, *, limit: int = MAX_CONFIG_FILE) -> bytes:
    """The bytes of a configuration file: opened without blocking (a FIFO must not hang
    crmmaint) and refused, as an ``OSError`` with its reason, when it is not a regular file
    or larger than ``limit`` bytes (``/dev/zero`` must not fill memory)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {format_size(limit)}")
    return data


def load_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML file; a missing file is a ``SourceError`` too."""
    p = Path(path)
    try:
        text = read_regular_file(p).decode("utf-8")
    except FileNotFoundError as exc:
        raise SourceError("file not found") from exc
    except OSError as exc:
        raise SourceError(f"cannot read: {os_reason(exc)}") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    return load_yaml_text(text, str(p))


# --- field readers -------------------------------------------------------------------------


def line_of(mapping: Any, key: str | None = None) -> int | None:
    if isinstance(mapping, SourceMap):
        return mapping.line_of(key) if key is not None else mapping.line
    return None


def check_keys(mapping: Any, allowed: set[str] | frozenset[str], what: str) -> None:
    """Reject keys outside ``allowed`` with a did-you-mean hint."""
    if not isinstance(mapping, dict):
        raise SourceError(f"{what} must be a mapping, not {type_name(mapping)}")
    for key in mapping:
        if key not in allowed:
            near = _closest(key, allowed)
            hint = (
                f"; did you mean {near!r}?" if near else f"; allowed: {', '.join(sorted(allowed))}"
            )
            raise SourceError(f"unknown key {key!r} in {what}{hint}", line_of(mapping, key), key)


def require_mapping(value: Any, what: str, line: int | None = None) -> dict:
    if not isinstance(value, dict):
        raise SourceError(f"{what} must be a mapping, not {type_name(value)}", line)
    return value


def get_field(
    mapping: dict,
    key: str,
    kind: type[T] | tuple[type, ...],
    *,
    required: bool = False,
    default: Any = None,
    what: str = "",
) -> Any:
    """Read ``mapping[key]`` and check its type (bool is never accepted as int)."""
    if key not in mapping or mapping[key] is None:
        if required:
            raise SourceError(
                f"missing required field {key!r}{' in ' + what if what else ''}",
                line_of(mapping),
                key,
            )
        return default
    value = mapping[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    else:
        ok = isinstance(value, kinds)
    if not ok:
        expected = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
        raise SourceError(
            f"field {key!r} must be {expected}, not {type_name(value)} ({short_repr(value):.40})",
            line_of(mapping, key),
            key,
        )
    return value


def get_str_list(mapping: dict, key: str, *, what: str = "") -> list[str]:
    """A list of strings; a single string is accepted as a one-element list."""
    value = mapping.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise SourceError(
        f"field {key!r} must be a string or a list of strings", line_of(mapping, key), key
    )


def one_of(value: str, choices: tuple[str, ...] | list[str], key: str, mapping: Any) -> str:
    if value not in choices:
        raise SourceError(
            f"field {key!r} must be one of {', '.join(choices)}, not {value!r}",
            line_of(mapping, key),
            key,
        )
    return value


_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "a mapping",
    list: "a list",
}


class _ShortRepr(reprlib.Repr):
    """``repr`` that stops early: a value from a hostile file may hold a million items."""

    repr_SourceMap = reprlib.Repr.repr_dict


_SHORT_REPR = _ShortRepr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 2, 40, 40


def short_repr(value: Any) -> str:
    """``repr(value)`` cut short after a few items, levels and characters, for messages."""
    return _SHORT_REPR.repr(value)


def type_name(value: Any) -> str:
    if value is None:
        return "empty"
    return _KIND_NAMES.get(type(value), type(value).__name__).removeprefix("a ").removeprefix("an ")


def _closest(word: str, choices: set[str] | frozenset[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return found[0] if found else None
