"""Configuration drift: the configured files of a host against their accepted baseline.

``HostOS.config_files`` reads the files the host's ``config_files:`` (or the step's ``files``)
name, globs expanded on the host; ``crmmaint.masking`` masks secret values in their text.
This module turns them into a ``baselines.Snapshot`` (section ``files``: one item per path, its
sha256, size, mode, owner, group, symlink target and *masked* text) and reports what changed
since the baseline ``crmmaint baseline accept drift`` accepted: a unified diff of each changed
text file between the accepted masked text and today's, mode and owner changes, new files (a
glob matching more) and missing ones. Raw file content is never stored, logged or reported:
only the masked text reaches the snapshot, so neither the journal nor a diff holds a secret (a
symlink is masked by its own name and by the names of the files it leads to: a link to a
``shadow`` is masked as one; a file with masked values keeps no size, which would tell the
secrets' length, and a change of masked values alone is reported as only that). The step's
``files`` replaces the host's list; an empty one, one naming a path twice, and a path not spelt
plainly (``/etc/x/../y.conf``), are refused when the playbook is checked.

Scope: a host has one drift baseline, shared by every ``config.drift`` step. A run over the
host's ``config_files`` compares every accepted path; a step with its own ``files`` compares
only its scope (the paths it names, and accepted paths its globs match), and the observation
it records keeps the other paths as last observed, so ``baseline accept drift`` never drops
what another step covers (``scoped_review``); but a host-wide run cannot know the other
steps, so to it a path only a step's ``files`` covers is no longer configured (name such paths
in ``config_files`` too when a host-wide step runs as well). Wording: a configured path or a glob's match
that is gone is ``missing``; an accepted path no pattern names any more is ``no longer
configured`` (only a host-wide run can say so); a file accepted as missing that exists now is
counted ``new`` and named ``appeared``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from crmmaint import baselines
from crmmaint.baselines import ADDED, CHANGED, REMOVED, Baselines, Change, Review, Snapshot
from crmmaint.engines.config_files import (
    ConfigFile,
    as_text,
    config_path_problem,
    glob_matches,
    mask_text,
)
from crmmaint.engines.host import HostOS, ToolMissing
from crmmaint.errors import CrmMaintError
from crmmaint.results import Status, TaskResult
from crmmaint.tasks.api import Param, TaskContext, positive, task
from crmmaint.units import format_size, plural

if TYPE_CHECKING:
    from crmmaint.inventory import Target
    from crmmaint.journal import Journal


#: The baseline kind (``crmmaint baseline accept drift``) and the snapshot's section.
KIND = "drift"
SECTION = "files"
#: Bytes of one file transferred and kept as text, by default (larger files: hash only).
MAX_SIZE = 256 * 1024
#: Bytes of all files of one host transferred in one run, at most.
TRANSFER_BUDGET = 32 << 20
#: Lines of one file's diff shown, by default.
DIFF_LINES = 200
#: Seconds reading the files may take, by default.
READ_TIMEOUT = 60.0

#: What ``describe`` calls each state of a path, in the message's order.
AS_ACCEPTED, NEW, MISSING, UNREADABLE, UNCONFIGURED = (
    "as accepted", "new", "missing", "unreadable", "no longer configured",
)  # fmt: skip
#: How the one-line summary names a file accepted as missing that exists now (counted new),
#: and one whose only change is in masked (secret) values.
APPEARED, MASKED_ONLY = "appeared", "only masked (secret) values changed"
#: Attributes compared for the one-line summary (the text and its sha256 stand for content).
_SUMMARY_FIELDS = ("sha256", "mode", "owner", "group", "link", "missing", "unreadable", "other")
#: Attributes that follow from the content alone: a change of masked values changes them.
_CONTENT_FIELDS = frozenset({"sha256", "size", "text", "masked_lines", "content"})


def _check_files(files: list[str] | None) -> None:
    if files is not None and not files:
        raise ValueError(
            "files: [] names no file; leave `files` out to use the host's config_files"
        )
    seen: set[str] = set()
    for path in files or []:
        problem = config_path_problem(path)
        if problem:
            raise ValueError(problem)
        if path in seen:
            raise ValueError(f"files lists {path!r} twice: name each path or glob once")
        seen.add(path)


def in_scope(path: str, patterns: Iterable[str]) -> bool:
    """Whether ``path`` is one of ``patterns`` or a file one of their globs would match on
    the host (``glob_matches``)."""
    return any(glob_matches(p, path) for p in patterns)


def file_item(found: ConfigFile, *, max_size: int) -> dict[str, Any]:
    """One path's attributes in the snapshot: a flat dict of JSON values, the text masked.

    ``content`` says what ``text`` holds: ``text`` (the masked content), ``binary``, ``too
    large`` (over ``max_size``: hashed on the host, not read), ``symlink matched by a glob``
    (hashed, not read) or ``not read`` (the run's transfer budget, or the file changed while
    read)."""
    if found.state == "missing":
        return {"missing": True}
    item: dict[str, Any] = {
        "mode": found.mode,
        "owner": found.owner,
        "group": found.group,
        "link": found.link,
    }
    if found.state == "unreadable":
        return {**item, "unreadable": True, "size": found.size}
    if found.state == "other":
        return {**item, "other": found.kind or "not a regular file"}
    item.update(sha256=found.sha256, size=found.size, text=None, masked_lines=0)
    if found.content is not None:
        text = as_text(found.content)
        if text is None:
            item["content"] = "binary"
        else:
            item["text"], item["masked_lines"] = mask_text(text, found.path, found.names)
            item["content"] = "text"
            if item["masked_lines"]:
                # the size less the masked text's would tell the secrets' length
                del item["size"]
    elif found.size is not None and found.size > max_size:
        item["content"] = "too large"
    elif found.link and found.globbed:
        item["content"] = "symlink matched by a glob"
    else:
        item["content"] = "not read"
    return item


def build_snapshot(found: list[ConfigFile], *, max_size: int) -> Snapshot:
    """The ``files`` section of what ``found`` holds (by path; a glob that matched nothing is
    an item of its own, ``missing``)."""
    return {SECTION: {f.path: file_item(f, max_size=max_size) for f in found}}


def _differs(change: Change) -> bool:
    """Whether a change is more than the masking of unchanged bytes (a newer crmmaint may mask
    more of the same file, and keeps no size for a file with masked values)."""
    if change.change != CHANGED:
        return True
    fields = set(change.fields)
    return bool(fields - {"text", "masked_lines"} - (set() if "sha256" in fields else {"size"}))


def _only_masked(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether the bytes changed and the masked text did not, nor anything else but what
    follows from the content (size, sha256)."""
    fields = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    return (
        "sha256" in fields
        and before.get("text") is not None
        and before.get("text") == after.get("text")
        and fields <= _CONTENT_FIELDS
    )


def scoped_review(
    journal: Journal | None,
    target: Target,
    snapshot: Snapshot,
    patterns: list[str],
    *,
    host_wide: bool,
    run_id: int | None,
    check: bool,
) -> Review:
    """``snapshot`` reviewed against the host's one drift baseline, which every
    ``config.drift`` step shares. A host-wide run (the host's ``config_files``) compares every
    accepted path. A step with its own ``files`` compares only the paths in its scope (what
    it found, and accepted paths its patterns name or match), and the observation it records
    keeps the previous observation's other paths (the baseline's, when nothing was observed
    yet), so accepting never drops files another step or the host's list covers."""
    if journal is None or host_wide:
        return baselines.review(journal, KIND, target, snapshot, run_id=run_id, check=check)
    found = snapshot.get(SECTION, {})
    store = Baselines(journal)
    key = baselines.target_key(target)
    observed = store.observation(KIND, key)
    if observed is not None:
        previous = observed.snapshot
    else:
        accepted = store.baseline(KIND, key)
        previous = accepted.snapshot if accepted else {}
    kept = {
        path: item
        for path, item in previous.get(SECTION, {}).items()
        if path not in found and not in_scope(path, patterns)
    }
    recorded = {**snapshot, SECTION: {**kept, **found}}
    review = baselines.review(journal, KIND, target, recorded, run_id=run_id, check=check)
    mine = [
        c
        for c in review.changes
        if c.section != SECTION or c.key in found or in_scope(c.key, patterns)
    ]
    return replace(review, changes=mine)


def file_states(
    snapshot: Snapshot, changes: list[Change], patterns: list[str], *, has_baseline: bool
) -> dict[str, str]:
    """Each path's state for the message: ``as accepted``, ``changed``, ``new``, ``missing``,
    ``unreadable`` or ``no longer configured`` (in the baseline, matched by no pattern now)."""
    by_key = {c.key: c for c in changes if c.section == SECTION and _differs(c)}
    states: dict[str, str] = {}
    for path, item in snapshot.get(SECTION, {}).items():
        change = by_key.get(path)
        if item.get("missing"):
            states[path] = MISSING
        elif item.get("unreadable"):
            states[path] = UNREADABLE
        elif not has_baseline or (change is not None and change.change == ADDED):
            states[path] = NEW
        elif change is None:
            states[path] = AS_ACCEPTED
        elif (change.before or {}).get("missing"):
            states[path] = NEW  # a configured path that was missing exists now
        else:
            states[path] = CHANGED
    for change in by_key.values():
        if change.change == REMOVED:
            # a deleted file a glob matched is missing; a path no pattern names any more
            # (a host-wide run only: a step compares only its own scope) is no longer configured
            states[change.key] = MISSING if in_scope(change.key, patterns) else UNCONFIGURED
    return states


def _value(value: Any) -> str:
    return "none" if value is None else str(value)


def _was(item: dict[str, Any]) -> str | None:
    """What an item without content was: ``missing``, ``unreadable``, ``a directory`` …;
    ``None`` for a regular file."""
    if item.get("missing"):
        return "missing"
    if item.get("unreadable"):
        return "unreadable"
    if item.get("other"):
        return f"a {item['other']}"
    return None


def _attributes(item: dict[str, Any]) -> str:
    """A file's attributes in a line (``mode 0640, owner root, group root, 12 B``): no size
    for a file with masked values (it would tell the secrets' length)."""
    parts = [f"{a} {item[a]}" for a in ("mode", "owner", "group", "link") if item.get(a)]
    if item.get("size") is not None and not item.get("masked_lines"):
        parts.append(format_size(item["size"]))
    return ", ".join(parts)


def _diff_lines(out: dict[str, Any], lines: list[str], max_lines: int) -> None:
    """Put ``lines`` of a unified diff in ``out["diff"]``, cut at ``max_lines``."""
    if len(lines) > max_lines:
        out["diff_cut"] = len(lines) - max_lines
        lines = [*lines[:max_lines], f"… {len(lines) - max_lines} more diff lines cut"]
    out["diff"] = "\n".join(lines)


def file_diff(
    path: str,
    before: dict[str, Any],
    after: dict[str, Any],
    *,
    accepted: str,
    max_lines: int,
) -> dict[str, Any]:
    """What changed in one file from its accepted ``before`` to ``after`` (snapshot items):
    ``changes`` (mode, owner, group, link, content lines), and ``diff``, a unified diff of the
    masked texts labelled ``PATH (accepted)`` / ``PATH (now)``, cut at ``max_lines`` lines
    (``diff_cut`` then says how many more there were). When only masked (secret) values
    changed it says so, never which, nor any size (it would tell the secrets' length). A
    file accepted as missing (unreadable, not a regular file) that is one now ``appeared``:
    its attributes and its masked text as added lines; one that is gone now is ``missing``."""
    out: dict[str, Any] = {"changes": []}
    was, now = _was(before), _was(after)
    if now is not None and now != was:
        out["changes"].append(now if was is None else f"{now} (accepted as {was})")
        if now != "missing":
            out["changes"].append(_attributes(after))
        return out
    if was is not None and now is None:
        verb = {"missing": APPEARED, "unreadable": "readable now"}.get(was, "a regular file now")
        out["changes"].append(f"{verb} (accepted as {was}): {_attributes(after)}")
        text = after.get("text")
        if text is None:
            out["changes"].append(f"content not shown ({after.get('content') or 'not read'})")
        else:
            _diff_lines(
                out,
                list(
                    difflib.unified_diff(
                        [],
                        text.split("\n"),
                        f"{path} ({accepted}: {was})",
                        f"{path} (now)",
                        lineterm="",
                    )
                ),
                max_lines,
            )
        return out
    for attr in ("mode", "owner", "group", "link"):
        if before.get(attr) != after.get(attr):
            out["changes"].append(f"{attr} {_value(before.get(attr))} -> {_value(after.get(attr))}")
    if before.get("sha256") == after.get("sha256"):
        return out
    old, new = before.get("text"), after.get("text")
    if old is not None and old == new:
        out["changes"].append(MASKED_ONLY)
        return out
    if old is None or new is None:
        why = before.get("content") if old is None else after.get("content")
        line = (
            f"content changed ({why or 'not read'}; no diff): sha256"
            f" {_value(before.get('sha256'))[:12]} -> {_value(after.get('sha256'))[:12]}"
        )
        sizes = before.get("size"), after.get("size")
        if None not in sizes and not (before.get("masked_lines") or after.get("masked_lines")):
            line += f", {format_size(sizes[0] or 0)} -> {format_size(sizes[1] or 0)}"
        out["changes"].append(line)
        return out
    lines = list(
        difflib.unified_diff(
            old.split("\n"),
            new.split("\n"),
            f"{path} ({accepted})",
            f"{path} (now)",
            lineterm="",
        )
    )
    out["changes"].append("content changed")
    _diff_lines(out, lines, max_lines)
    return out


def _summary_view(item: dict[str, Any] | None) -> dict[str, Any] | None:
    """An item as the one-line summary shows it: content as a short sha256, no text."""
    if item is None:
        return None
    view = {k: item[k] for k in _SUMMARY_FIELDS if k in item}
    if isinstance(view.get("sha256"), str):
        view["sha256"] = view["sha256"][:12]
    return view


@dataclass(frozen=True)
class FileChange(Change):
    """A file's change as the summary names it: ``state`` is ``new``, ``missing``, ``no longer
    configured``, ``appeared``, ``unreadable``, ``only masked (secret) values changed`` or
    ``changed`` (then its attributes are listed)."""

    state: str = CHANGED

    def describe(self, noun: str | None = None) -> str:
        if self.state == CHANGED:
            return super().describe(noun)
        what = f"{noun or self.section} {self.key}"
        if self.state == MASKED_ONLY:
            return f"{what}: {MASKED_ONLY}"
        return f"{what} {self.state}"

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "state": self.state}


def _state(change: Change, states: dict[str, str]) -> str:
    """How the summary names ``change`` (see ``FileChange``)."""
    if change.change == ADDED:
        return NEW
    if change.change == REMOVED:
        return states.get(change.key, MISSING)
    before, after = change.before or {}, change.after or {}
    was, now = _was(before), _was(after)
    if now is not None and now != was:
        return MISSING if now == "missing" else UNREADABLE if now == "unreadable" else CHANGED
    if was == "missing" and now is None:
        return APPEARED
    if _only_masked(before, after):
        return MASKED_ONLY
    return CHANGED


def describe_change(change: Change, noun: str | None = None) -> str:
    """One drift change in a line as a run's summary names it (``file /x appeared``, ``…
    missing``, ``…: only masked (secret) values changed``), for ``baseline show``/``accept``:
    a removed path is ``missing``, never listed attribute by attribute."""
    shown = summary_review(Review(KIND, None, [change])).changes
    if not shown:
        return f"{noun or change.section} {change.key}: masked differently (the bytes are the same)"
    return shown[0].describe(noun)


def summary_review(review: Review, states: dict[str, str] | None = None) -> Review:
    """``review`` with its changes as the one-line summary should name them (``states``: a
    removed path's state, ``missing`` or ``no longer configured``): without the masked text (a
    diff shows it), ignoring changes of masking alone. Everything else of ``review`` stays
    (``recorded``: check mode says it records nothing)."""
    changes: list[Change] = [
        FileChange(
            c.section,
            c.key,
            c.change,
            _summary_view(c.before),
            _summary_view(c.after),
            _state(c, states or {}),
        )
        for c in review.changes
        if _differs(c)
    ]
    return replace(review, changes=changes)


def describe(
    snapshot: Snapshot,
    review: Review,
    patterns: list[str],
    *,
    max_lines: int,
) -> tuple[Status, str, dict[str, Any], dict[str, float]]:
    """The verdict on one host: status, message, details and metrics. ``ok`` when every file
    is as accepted; ``warning`` on any change, an unreadable file, or no baseline yet."""
    baseline = review.baseline
    states = file_states(snapshot, review.changes, patterns, has_baseline=baseline is not None)
    items = snapshot.get(SECTION, {})
    accepted = baseline.label if baseline else ""
    old_items = baseline.snapshot.get(SECTION, {}) if baseline else {}
    rows: list[dict[str, Any]] = []
    for path in sorted(states):
        item = items.get(path) or {}
        row: dict[str, Any] = {"path": path, "state": states[path]}
        row.update({k: v for k, v in item.items() if k != "text"})
        if states[path] == CHANGED:
            row.update(
                file_diff(
                    path, old_items.get(path, {}), item, accepted=accepted, max_lines=max_lines
                )
            )
        rows.append(row)

    counts = {
        s: sum(1 for v in states.values() if v == s)
        for s in (AS_ACCEPTED, CHANGED, NEW, MISSING, UNREADABLE, UNCONFIGURED)
    }
    metrics: dict[str, float] = {
        "files": sum(1 for i in items.values() if not i.get("missing")),
        "files_changed": counts[CHANGED],
        "files_new": counts[NEW],
        "files_missing": counts[MISSING],
        "files_unreadable": counts[UNREADABLE],
        "masked_lines": sum(int(i.get("masked_lines") or 0) for i in items.values()),
    }
    shown = summary_review(review, states)
    if baseline is None:
        parts = [f"{plural(int(metrics['files']), 'file')} read"]
        parts += [f"{counts[s]} {s}" for s in (MISSING, UNREADABLE) if counts[s]]
        message = f"{', '.join(parts)}; {shown.summary({SECTION: 'file'})}"
    else:
        parts = [f"{counts[AS_ACCEPTED]} as accepted"]
        parts += [
            f"{counts[s]} {s}"
            for s in (CHANGED, NEW, MISSING, UNREADABLE, UNCONFIGURED)
            if counts[s]
        ]
        message = (
            f"{plural(len(states), 'file')}: {', '.join(parts)}; {shown.summary({SECTION: 'file'})}"
        )
    if counts[UNREADABLE]:
        message += (
            "; unreadable files are not checked: connect as a user who may read them (become: sudo)"
        )
    status = (
        Status.WARNING if baseline is None or shown.changes or counts[UNREADABLE] else Status.OK
    )
    details = {"files": rows, **shown.details()}
    return status, message, details, metrics


@task(
    "config.drift",
    targets="hosts",
    params={
        "files": Param(
            list,
            None,
            item_type=str,
            check=_check_files,
            help="absolute paths and globs on the host (default: the host's config_files)",
        ),
        "max_size": Param(
            "size",
            MAX_SIZE,
            check=positive,
            help="files larger than this are hashed on the host but not read, so get no diff",
        ),
        "diff_lines": Param(int, DIFF_LINES, check=positive, help="diff lines shown per file"),
        "timeout": Param(
            "duration", READ_TIMEOUT, check=positive, help="seconds reading the files may take"
        ),
    },
)
def drift(ctx: TaskContext) -> TaskResult:
    """Configured files against the accepted baseline: masked diffs, new and missing files."""
    p = ctx.params
    host = ctx.target.host
    patterns = list(host.config_files if p["files"] is None else p["files"])
    if not patterns:
        return TaskResult.skipped(
            f"{host.name}: no configuration files to check: set `config_files:` on the host in"
            " the inventory, or the step's `files`",
            details=ctx.read_only_details(),
        )
    max_size = int(p["max_size"])
    try:
        found = HostOS(ctx.transport).config_files(
            patterns,
            max_bytes=max_size,
            budget=TRANSFER_BUDGET,
            timeout=ctx.time_left(float(p["timeout"])),
        )
    except ToolMissing as exc:
        return TaskResult.skipped(f"{host.name}: {exc}", details=ctx.read_only_details())
    except CrmMaintError as exc:
        return TaskResult.from_error(exc, host.name, details=ctx.read_only_details())
    snapshot = build_snapshot(found, max_size=max_size)
    review = scoped_review(
        ctx.journal,
        ctx.target,
        snapshot,
        patterns,
        host_wide=p["files"] is None,
        run_id=ctx.run_id,
        check=ctx.check,
    )
    status, message, details, metrics = describe(
        snapshot, review, patterns, max_lines=int(p["diff_lines"])
    )
    details = ctx.read_only_details(
        patterns=patterns, recorded=ctx.journal is not None and not ctx.check, **details
    )
    return TaskResult(status, message, metrics=metrics, details=details)
