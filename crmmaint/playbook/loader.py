"""Load and validate playbooks: every problem found before anything runs, with file:line.

``load_playbook`` returns a ``Playbook`` or raises the first ``PlaybookError`` (its hint counts
the others); ``check_playbook`` returns every problem of a file, for ``playbook check``. Without
an inventory, target names and ``when`` variables are not checked (everything else is).
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import crmmaint
from crmmaint.errors import PlaybookError
from crmmaint.inventory import Inventory
from crmmaint.playbook.conditions import When, parse_when
from crmmaint.playbook.model import (
    ON_FAILURE,
    SELECTOR_KEYS,
    WINDOWS,
    Playbook,
    Step,
    StepDefaults,
    task_runs_once,
)
from crmmaint.tasks.api import TaskSpec, load_task_modules
from crmmaint.units import format_duration, parse_duration
from crmmaint.yamlsource import (
    SourceError,
    get_field,
    get_str_list,
    line_of,
    load_yaml_file,
    load_yaml_text,
    type_name,
)

log = logging.getLogger(__name__)

TOP_KEYS = frozenset({"name", "window", "description", "vars", "defaults", "steps"})
WINDOW_KEYS = frozenset({"every", "length"})
DEFAULTS_KEYS = frozenset({"timeout", "retries", "retry_delay", "on_failure"})
STEP_KEYS = frozenset(
    {"name", "task", "with", "when", "timeout", "retries", "retry_delay", "on_failure", "tags"}
    | set(SELECTOR_KEYS)
)
MAX_RETRIES = 100
#: Longest step ``timeout`` and ``retry_delay`` accepted (a week, a day): a longer one is a typo,
#: and a huge one would overflow the runner's clock arithmetic. (The runner waits at most 10
#: minutes between attempts whatever ``retry_delay`` says; a day keeps older files valid.)
LONGEST_TIMEOUT = 7 * 86400.0
LONGEST_RETRY_DELAY = 86400.0
#: Longest duration a task parameter may be (a century): below what Python can wait for
#: (``threading.TIMEOUT_MAX``, 292 years) or subtract from today's date.
LONGEST_PARAM_DURATION = 100 * 365 * 86400.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:/-]*$")


class _Invalid(SourceError):
    """A validation problem with an optional hint (``SourceError`` has none)."""

    def __init__(
        self, message: str, line: int | None = None, field: str | None = None, hint: str = ""
    ) -> None:
        super().__init__(message, line, field)
        self.hint = hint or None


# --- finding playbook files ------------------------------------------------------------------


def playbooks_dir() -> Path:
    """The shipped playbooks: ``playbooks/`` at the repository (installation) root."""
    return Path(crmmaint.__file__).resolve().parent.parent / "playbooks"


def shipped_playbooks() -> list[Path]:
    """Paths of the shipped playbooks (``playbooks/daily.yml`` …); the stem is the name."""
    folder = playbooks_dir()
    return sorted(folder.glob("*.yml")) if folder.is_dir() else []


def resolve_playbook_path(path_or_name: str | Path) -> Path:
    """A bare name (``daily``) means the shipped ``playbooks/daily.yml``; anything else is a path."""
    text = str(path_or_name)
    path = Path(text).expanduser()
    is_name = "/" not in text and not text.endswith((".yml", ".yaml")) and not path.exists()
    if not is_name:
        return path
    shipped = playbooks_dir() / f"{text}.yml"
    if shipped.exists():
        return shipped
    known = [p.stem for p in shipped_playbooks()]
    near = difflib.get_close_matches(text, known, n=1)
    raise PlaybookError(
        f"no playbook file or shipped playbook named {text!r}",
        hint=(f"did you mean {near[0]!r}? " if near else "")
        + f"shipped: {', '.join(known) or 'none'}; or give the path of a YAML file",
    )


# --- entry points ----------------------------------------------------------------------------


def load_playbook(
    path_or_name: str | Path,
    inventory: Inventory | None,
    *,
    registry: Mapping[str, TaskSpec] | None = None,
) -> Playbook:
    """Load and validate a playbook file or shipped name; raises the first ``PlaybookError``."""
    path = resolve_playbook_path(path_or_name)
    builder = _Builder(str(path), inventory, registry)
    try:
        data = load_yaml_file(path)
    except SourceError as exc:
        raise builder.error(exc) from exc
    return builder.build_or_raise(data, default_name=path.stem)


def load_playbook_text(
    text: str,
    inventory: Inventory | None,
    *,
    source: str = "<string>",
    registry: Mapping[str, TaskSpec] | None = None,
) -> Playbook:
    """Like ``load_playbook`` for YAML text (tests, playbooks from other sources)."""
    builder = _Builder(source, inventory, registry)
    try:
        data = load_yaml_text(text, source)
    except SourceError as exc:
        raise builder.error(exc) from exc
    return builder.build_or_raise(data, default_name=Path(source).stem or "playbook")


def build_playbook(
    data: Mapping[str, Any],
    inventory: Inventory | None,
    *,
    source: str,
    registry: Mapping[str, TaskSpec] | None = None,
) -> Playbook:
    """Validate a playbook given as data (the mapping a YAML file would hold: ``name``,
    ``window``, ``steps`` ...), as the CLI's one-step commands build them; the same checks and
    ``PlaybookError`` as a file, with ``source`` (``<restore>``) in place of a file name."""
    builder = _Builder(source, inventory, registry)
    return builder.build_or_raise(dict(data), default_name=source.strip("<>") or "playbook")


def check_playbook(
    path_or_name: str | Path,
    inventory: Inventory | None = None,
    *,
    registry: Mapping[str, TaskSpec] | None = None,
) -> list[PlaybookError]:
    """Every problem of one playbook (empty when valid); target names need an inventory."""
    try:
        path = resolve_playbook_path(path_or_name)
    except PlaybookError as exc:
        return [exc]
    builder = _Builder(str(path), inventory, registry)
    try:
        data = load_yaml_file(path)
    except SourceError as exc:
        return [builder.error(exc)]
    builder.build(data, default_name=path.stem)
    return builder.errors


# --- validation ------------------------------------------------------------------------------


class _Builder:
    """Validates one playbook document, collecting problems instead of stopping at the first."""

    def __init__(
        self,
        source: str,
        inventory: Inventory | None,
        registry: Mapping[str, TaskSpec] | None,
    ) -> None:
        self.source = source
        self.inventory = inventory
        self.registry = registry if registry is not None else load_task_modules()
        self.problems: list[tuple[SourceError, str | None]] = []

    @property
    def errors(self) -> list[PlaybookError]:
        return [self.error(exc, step) for exc, step in self.problems]

    def error(self, exc: SourceError, step: str | None = None, more: int = 0) -> PlaybookError:
        return PlaybookError(
            exc.message,
            file=self.source,
            line=exc.line,
            step=step,
            field=exc.field,
            hint=getattr(exc, "hint", None) or None,
            more=more,
        )

    def add(self, exc: SourceError, step: str | None = None) -> None:
        self.problems.append((exc, step))

    @contextmanager
    def checking(self, step: str | None = None) -> Iterator[None]:
        """Record a ``SourceError`` raised in the block and carry on with the next check."""
        try:
            yield
        except SourceError as exc:
            self.problems.append((exc, step))

    def build_or_raise(self, data: Any, default_name: str) -> Playbook:
        playbook = self.build(data, default_name)
        if self.problems or playbook is None:
            exc, step = self.problems[0]
            raise self.error(exc, step, len(self.problems) - 1)
        return playbook

    def build(self, data: Any, default_name: str) -> Playbook | None:
        if data is None:
            self.add(_Invalid("the playbook is empty", hint=_DOC_HINT))
            return None
        if not isinstance(data, dict):
            self.add(
                _Invalid(
                    f"a playbook must be a mapping with 'steps', not {type_name(data)}",
                    hint=_DOC_HINT,
                )
            )
            return None
        for key in data:
            with self.checking():
                _reject_unknown(data, key, TOP_KEYS, "the playbook")

        name, window, description = default_name, "adhoc", ""
        variables: dict[str, Any] = {}
        defaults = StepDefaults()
        with self.checking():
            name = get_field(data, "name", str, default=default_name)
            if "name" in data and not _NAME.match(name):  # printed in output and the journal
                raise _Invalid(
                    f"playbook name {name!r:.60} must start with a letter or digit and use only"
                    " letters, digits, spaces and _ . : / -",
                    line_of(data, "name"),
                    "name",
                )
        window_length: float | None = None
        with self.checking():
            window, window_length = _window(data)
        with self.checking():
            description = get_field(data, "description", str, default="")
        with self.checking():
            variables = dict(get_field(data, "vars", dict, default={}))
        with self.checking():
            defaults = self._defaults(data)

        steps: list[Step] = []
        raw_steps: Any = []
        with self.checking():
            raw_steps = get_field(data, "steps", list, required=True, what="the playbook")
            if not raw_steps:
                raise _Invalid("'steps' is empty", line_of(data, "steps"), "steps", _DOC_HINT)
        seen: dict[str, int | None] = {}
        for index, raw in enumerate(raw_steps or []):
            step = self._step(index, raw, line_of(data, "steps"), defaults, variables)
            step_name = raw.get("name") if isinstance(raw, dict) else None
            if isinstance(step_name, str) and step_name in seen:
                self.add(
                    _Invalid(
                        f"duplicate step name {step_name!r}",
                        line_of(raw, "name"),
                        "name",
                        f"first used at line {seen[step_name]}; step names must be unique",
                    ),
                    step_name,
                )
            elif isinstance(step_name, str):
                seen[step_name] = line_of(raw, "name")
            if step is not None:
                steps.append(step)
        if self.problems:
            return None
        return Playbook(
            name=name,
            window=window,
            window_length=window_length,
            steps=steps,
            description=description,
            vars=variables,
            defaults=defaults,
            path=self.source,
        )

    def _defaults(self, data: dict) -> StepDefaults:
        raw = data.get("defaults")
        if raw is None:
            return StepDefaults()
        if not isinstance(raw, dict):
            raise _Invalid(
                f"'defaults' must be a mapping ({', '.join(sorted(DEFAULTS_KEYS))}),"
                f" not {type_name(raw)}",
                line_of(data, "defaults"),
                "defaults",
            )
        for key in raw:
            _reject_unknown(raw, key, DEFAULTS_KEYS, "'defaults'", prefix="defaults.")
        base = StepDefaults()
        return StepDefaults(
            timeout=_duration(raw, "timeout", base.timeout, "defaults.", positive=True),
            retries=_retries(raw, base.retries, "defaults."),
            retry_delay=_duration(
                raw, "retry_delay", base.retry_delay, "defaults.", maximum=LONGEST_RETRY_DELAY
            )
            or 0.0,
            on_failure=_on_failure(raw, base.on_failure, "defaults."),
        )

    def _step(
        self,
        index: int,
        raw: Any,
        steps_line: int | None,
        defaults: StepDefaults,
        variables: dict[str, Any],
    ) -> Step | None:
        label = f"#{index + 1}"
        if not isinstance(raw, dict):
            self.add(
                _Invalid(
                    f"step {label} must be a mapping with 'name' and 'task', not {type_name(raw)}",
                    steps_line,
                    "steps",
                )
            )
            return None
        before = len(self.problems)
        name: str | None = None
        with self.checking(label):
            name = get_field(raw, "name", str, required=True, what=f"step {label}")
            if not _NAME.match(name):
                raise _Invalid(
                    f"step name {name!r:.60} must start with a letter or digit and use only"
                    " letters, digits, spaces and _ . : / -",
                    line_of(raw, "name"),
                    "name",
                )
        label = name or label
        for key in raw:
            with self.checking(label):
                _reject_unknown(raw, key, STEP_KEYS, "the step")

        spec: TaskSpec | None = None
        with self.checking(label):
            spec = self._task(raw)
        selectors: dict[str, list[str]] = {}
        params: dict[str, Any] = {}
        if spec is not None:
            with self.checking(label):
                selectors = self._selectors(raw, spec)
            params = self._params(raw, spec, label)
        else:
            for key in SELECTOR_KEYS:
                if key in raw:
                    with self.checking(label):
                        get_str_list(raw, key)

        when: When | None = None
        if raw.get("when") is not None:
            with self.checking(label):
                when = parse_when(raw["when"], raw)
                self._check_variables(when, raw, variables)
        timeout, retries, delay, on_failure = (
            defaults.timeout,
            defaults.retries,
            defaults.retry_delay,
            defaults.on_failure,
        )
        tags: list[str] = []
        with self.checking(label):
            timeout = _duration(raw, "timeout", defaults.timeout, positive=True)
        with self.checking(label):
            retries = _retries(raw, defaults.retries)
        with self.checking(label):
            delay = (
                _duration(raw, "retry_delay", defaults.retry_delay, maximum=LONGEST_RETRY_DELAY)
                or 0.0
            )
        with self.checking(label):
            on_failure = _on_failure(raw, defaults.on_failure)
        with self.checking(label):
            tags = get_str_list(raw, "tags")
            for tag in tags:
                if not tag.strip():
                    raise _Invalid("tags must not be empty strings", line_of(raw, "tags"), "tags")

        if len(self.problems) > before or name is None or spec is None:
            return None
        return Step(
            name=name,
            task=spec.name,
            spec=spec,
            selectors=selectors,
            params=params,
            when=when,
            timeout=timeout,
            retries=retries,
            retry_delay=delay,
            on_failure=on_failure,
            tags=tuple(tags),
            line=line_of(raw, "name") or line_of(raw),
        )

    def _task(self, raw: dict) -> TaskSpec:
        name = get_field(raw, "task", str, required=True, what="the step")
        spec = self.registry.get(name)
        if spec is not None:
            return spec
        known = sorted(self.registry)
        near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        if near:
            hint = f"did you mean {' or '.join(repr(n) for n in near)}?"
        else:
            same_module = [n for n in known if n.split(".")[0] == name.split(".")[0]]
            listed = same_module or known
            shown = ", ".join(listed[:12]) + (" …" if len(listed) > 12 else "")
            hint = f"known tasks: {shown or 'none'}"
        raise _Invalid(f"unknown task {name!r}", line_of(raw, "task"), "task", hint)

    def _selectors(self, raw: dict, spec: TaskSpec) -> dict[str, list[str]]:
        given = [k for k in SELECTOR_KEYS if k in raw]
        allowed = [k for k in spec.targets if k in SELECTOR_KEYS]
        if task_runs_once(spec):
            if given:
                raise _Invalid(
                    f"task {spec.name!r} runs once on the runner host and takes no targets",
                    line_of(raw, given[0]),
                    given[0],
                    f"remove {given[0]!r}",
                )
            return {}
        for key in given:
            if key not in allowed:
                raise _Invalid(
                    f"task {spec.name!r} does not take {key!r} targets",
                    line_of(raw, key),
                    key,
                    f"it takes {_either(allowed)}",
                )
        if not given:
            raise _Invalid(
                f"task {spec.name!r} needs targets",
                line_of(raw, "task"),
                allowed[0] if allowed else "task",
                f"add {_either(allowed)} with a name, a group or all",
            )
        out: dict[str, list[str]] = {}
        for key in given:
            names = get_str_list(raw, key)
            if not names:
                raise _Invalid(f"{key!r} names no targets", line_of(raw, key), key)
            if self.inventory is not None:
                known = self.inventory.names(key)
                for target in names:
                    if target not in known:
                        raise _Invalid(
                            f"no {key} named or grouped {target!r} in inventory"
                            f" {self.inventory.path}",
                            line_of(raw, key),
                            key,
                            "mark the main database with 'main: true' in the inventory (the "
                            "shipped playbooks back up and drill 'main')"
                            if key == "database" and target == "main"
                            else _suggest(target, known),
                        )
            out[key] = names
        return out

    def _params(self, raw: dict, spec: TaskSpec, label: str) -> dict[str, Any]:
        given = raw.get("with")
        if given is None:
            given = {}
        if not isinstance(given, dict):
            with self.checking(label):
                raise _Invalid(
                    f"'with' must be a mapping of parameters, not {type_name(given)}",
                    line_of(raw, "with"),
                    "with",
                )
            return {}
        ok = True
        for key, value in given.items():
            with self.checking(label):
                if key not in spec.params:
                    ok = False
                    raise _Invalid(
                        f"task {spec.name!r} has no parameter {key!r}",
                        line_of(given, key),
                        f"with.{key}",
                        _suggest(key, set(spec.params), "parameters", allow_all=False),
                    )
                if value is None:
                    continue
                try:
                    converted = spec.params[key].convert(value)
                except (ValueError, TypeError, OverflowError) as exc:
                    ok = False
                    raise _Invalid(
                        f"parameter {key!r}: {exc}",
                        line_of(given, key),
                        f"with.{key}",
                        spec.params[key].help or None,
                    ) from exc
                if spec.params[key].type == "duration" and not (
                    converted <= LONGEST_PARAM_DURATION  # False for NaN too
                ):
                    ok = False
                    raise _Invalid(
                        f"parameter {key!r}: {value!r:.40} is longer than"
                        f" {format_duration(LONGEST_PARAM_DURATION)} (100 years)",
                        line_of(given, key),
                        f"with.{key}",
                        spec.params[key].help or None,
                    )
        for key, param in spec.params.items():
            if param.required and given.get(key) is None:
                ok = False
                with self.checking(label):
                    raise _Invalid(
                        f"task {spec.name!r} needs parameter {key!r} ({param.help or param.type_name})",
                        line_of(raw, "with") or line_of(raw),
                        f"with.{key}",
                    )
        if not ok:
            return {}
        with self.checking(label):
            try:
                return spec.validate_params(dict(given))
            except (KeyError, ValueError, TypeError, OverflowError) as exc:
                raise _Invalid(str(exc), line_of(raw, "with"), "with") from exc
        return {}

    def _check_variables(self, when: When, raw: dict, variables: dict[str, Any]) -> None:
        if self.inventory is None:
            return
        known = set(variables) | set(self.inventory.vars)
        for name in when.variables:
            if name not in known:
                raise _Invalid(
                    f"'when' uses variable {name!r}, defined neither in the playbook's vars"
                    " nor in the inventory's vars",
                    line_of(raw, "when"),
                    "when",
                    _suggest(name, known, "variables", allow_all=False),
                )


_DOC_HINT = "see docs/playbooks.md"


def _reject_unknown(
    mapping: dict, key: str, allowed: frozenset[str], what: str, prefix: str = ""
) -> None:
    if key in allowed:
        return
    raise _Invalid(
        f"unknown key {key!r} in {what}",
        line_of(mapping, key),
        prefix + key,
        _suggest(key, set(allowed), "keys", allow_all=False),
    )


def _suggest(word: str, choices: set[str], what: str = "", *, allow_all: bool = True) -> str:
    near = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    if near:
        return f"did you mean {near[0]!r}?"
    listed = sorted(c for c in choices if allow_all or c != "all")
    shown = ", ".join(listed[:15]) + (" …" if len(listed) > 15 else "")
    return f"known {what or 'names'}: {shown or 'none'}"


def _either(keys: list[str]) -> str:
    return " or ".join(repr(k) for k in keys) or "no targets"


def _duration(
    mapping: dict,
    key: str,
    default: float | None,
    prefix: str = "",
    *,
    positive: bool = False,
    maximum: float = LONGEST_TIMEOUT,
) -> float | None:
    """A duration in seconds, at least 0 (more when ``positive``) and at most ``maximum``."""
    value = mapping.get(key)
    if value is None:
        return default
    field = prefix + key
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _Invalid(
            f"{key!r} must be a duration such as 30s, 5m or 2h, not {type_name(value)}",
            line_of(mapping, key),
            field,
        )
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _Invalid(f"{key!r}: {exc}", line_of(mapping, key), field) from exc
    if not math.isfinite(seconds) or seconds > maximum:
        raise _Invalid(
            f"{key!r} must be at most {format_duration(maximum)}, not {value!r:.40}",
            line_of(mapping, key),
            field,
        )
    if positive and seconds <= 0:
        raise _Invalid(f"{key!r} must be greater than 0", line_of(mapping, key), field)
    return seconds


def _window(data: dict) -> tuple[str, float | None]:
    """The ``window:`` of a playbook: a name (``daily``), or a mapping ``{every: daily,
    length: 3h}`` whose ``length`` is the run's deadline (``every`` defaults to ``adhoc``)."""
    raw = data.get("window")
    if isinstance(raw, dict):
        for key in raw:
            _reject_unknown(raw, key, WINDOW_KEYS, "'window'", prefix="window.")
        every = _window_name(raw, "every", "window.")
        length = _duration(raw, "length", None, "window.", positive=True)
        return every, length
    return _window_name(data, "window", ""), None


def _window_name(mapping: dict, key: str, prefix: str) -> str:
    try:
        name = get_field(mapping, key, str, default="adhoc")
    except SourceError as exc:
        raise _Invalid(
            f"{exc.message} (a window name, or {{every: daily, length: 3h}})",
            exc.line,
            prefix + key,
        ) from exc
    if name not in WINDOWS:
        raise _Invalid(
            f"{prefix + key} must be one of {', '.join(WINDOWS)}, not {name!r}",
            line_of(mapping, key),
            prefix + key,
        )
    return name


def _retries(mapping: dict, default: int, prefix: str = "") -> int:
    try:
        value = get_field(mapping, "retries", int, default=default)
    except SourceError as exc:
        raise _Invalid(exc.message, exc.line, prefix + "retries") from exc
    if not 0 <= value <= MAX_RETRIES:
        raise _Invalid(
            f"'retries' must be between 0 and {MAX_RETRIES}, not {value}",
            line_of(mapping, "retries"),
            prefix + "retries",
        )
    return value


def _on_failure(mapping: dict, default: str, prefix: str = "") -> str:
    try:
        value = get_field(mapping, "on_failure", str, default=default)
    except SourceError as exc:
        raise _Invalid(exc.message, exc.line, prefix + "on_failure") from exc
    if value not in ON_FAILURE:
        raise _Invalid(
            f"'on_failure' must be one of {', '.join(ON_FAILURE)}, not {value!r:.40}",
            line_of(mapping, "on_failure"),
            prefix + "on_failure",
        )
    return value
