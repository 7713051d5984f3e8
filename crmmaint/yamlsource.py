"""YAML loading that remembers where every value came from, and small field readers.

Inventory and playbook validation both need "file:line, field: what is wrong, what to do". The
loader returns plain dicts and lists whose mappings are ``SourceMap`` (a dict that also knows the
line of itself and of each key), so validators can point at the exact line.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any, TypeVar

import yaml

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


class _LineLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> SourceMap:  # type: ignore[override]
        result = SourceMap()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be plain scalars", key_node.start_mark
                )
            key = str(key)
            if key in result:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            result[key] = self.construct_object(value_node, deep=True)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    lambda loader, node: loader.construct_mapping(node),  # type: ignore[attr-defined]
)


class SourceError(Exception):
    """A problem at a place in a YAML file; callers turn it into their domain error."""

    def __init__(self, message: str, line: int | None = None, field: str | None = None) -> None:
        self.message, self.line, self.field = message, line, field
        super().__init__(message)


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
        raise OSError(errno.EFBIG, f"larger than {limit} bytes")
    return data


def load_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML file; a missing file is a ``SourceError`` too."""
    p = Path(path)
    try:
        text = read_regular_file(p).decode("utf-8")
    except FileNotFoundError as exc:
        raise SourceError("file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read: {exc}") from exc
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
            f"field {key!r} must be {expected}, not {type_name(value)} ({value!r:.40})",
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


def type_name(value: Any) -> str:
    if value is None:
        return "empty"
    return _KIND_NAMES.get(type(value), type(value).__name__).removeprefix("a ").removeprefix("an ")


def _closest(word: str, choices: set[str] | frozenset[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return found[0] if found else None
