"""Log scanning: count error lines written since the last run, across log rotation.

Per file the journal keeps a cursor (inode, offset). Each run streams only the bytes after it
from the host (``HostOS.open_range`` in ``engines/host.py``, never the whole log in memory) and
advances it to the last complete line read. When the inode changed or the file shrank, the log
was rotated: the rest of the old file is read from ``PATH.1`` if that still has the old inode,
then the new file from its start. This module decides what to read and counts; the host adapter
lists and reads the files.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crmmaint.engines.host import PROBE_TIMEOUT, FileListing, FileStat, HostOS
from crmmaint.errors import CrmMaintError
from crmmaint.results import TaskResult
from crmmaint.tasks.api import Param, TaskContext, task
from crmmaint.units import format_size

log = logging.getLogger(__name__)

DEFAULT_PATTERNS = ["ERROR", "CRITICAL", "FATAL", "Traceback"]
TOP_MESSAGES = 5
#: A line longer than this is cut; the cut counts as consumed.
MAX_LINE = 1 << 20
#: Distinct normalised messages kept while counting (the rarest are dropped beyond this).
MAX_DISTINCT = 5000

#: A line is matched on its first 8 KiB: a pattern like `ERROR.*timeout` on a 1 MiB line
#: would otherwise cost seconds.
MATCH_LIMIT = 8192


@dataclass(frozen=True)
class Segment:
    """A byte range of one file to scan; ``whole_lines`` stops at the last newline."""

    path: str
    start: int
    end: int
    whole_lines: bool = True


def plan_reads(
    current: FileStat, rotated: FileStat | None, cursor: dict[str, int] | None, max_bytes: int
) -> tuple[list[Segment], bool, int]:
    """What to read of one log given its saved cursor: (segments, rotated?, bytes skipped).

    Pure decision logic: the cursor is ``{"inode": …, "offset": …}`` or None on the first run.
    """
    segments: list[Segment] = []
    was_rotated = False
    start = 0
    if cursor is not None:
        same_file = cursor["inode"] == current.inode and current.size >= cursor["offset"]
        if same_file:
            start = cursor["offset"]
        else:
            was_rotated = True
            old = rotated if rotated is not None and rotated.inode == cursor["inode"] else None
            if old is not None and old.size > cursor["offset"]:
                segments.append(Segment(old.path, cursor["offset"], old.size, whole_lines=False))
    skipped = 0
    if current.size - start > max_bytes:
        skipped = current.size - max_bytes - start
        start = current.size - max_bytes
    if current.size > start:
        segments.append(Segment(current.path, start, current.size))
    return segments, was_rotated, skipped


_DIGITS = re.compile(r"\d+")
#: A leading timestamp once digits became N: "N-N-N N:N:N,N", "[N/N/N N:N:N +N]", "N-N-NTN:NZ".
_LEADING_TIME = re.compile(
    r"^\[?N[-/.]N[-/.]N(?:[T ]|:)N:N(?::N)?(?:[.,]N)?(?:Z| ?[+-]N(?::?N)?)?\]?\s*"
)


def normalise(line: str) -> str:
    """A message stripped of what varies between occurrences, for grouping: a leading
    timestamp is dropped, digits become N, runs of blanks one space."""
    text = _LEADING_TIME.sub("", _DIGITS.sub("N", line.strip()))
    return " ".join(text.split())[:200]


@dataclass
class ScanCounts:
    """Matches across all files of one run."""

    pattern: re.Pattern[str]
    lines: int = 0
    matches: int = 0
    bytes: int = 0
    messages: Counter[str] = field(default_factory=Counter)

    def feed(self, line: bytes) -> None:
        self.lines += 1
        text = line[:MATCH_LIMIT].decode("utf-8", "replace")
        if self.pattern.search(text):
            self.matches += 1
            self.messages[normalise(text)] += 1
            if len(self.messages) > MAX_DISTINCT:
                self.messages = Counter(dict(self.messages.most_common(MAX_DISTINCT // 5)))


def scan_segment(
    ctx: TaskContext, seg: Segment, counts: ScanCounts, timeout: float, *, follow: bool = False
) -> int:
    """Stream one byte range from the host into ``counts``; returns the bytes consumed.

    An unfinished last line (the application is still writing it) is left for the next run.
    Raises ``HostError`` when the file cannot be read (or became a symlink, without ``follow``).
    """
    consumed = 0
    pending = b""
    with HostOS(ctx.transport).open_range(
        seg.path,
        seg.start,
        seg.end - seg.start,
        follow=follow,
        timeout=ctx.time_left(timeout) or timeout,
    ) as stream:
        while chunk := stream.read(1 << 16):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                counts.feed(line)
                consumed += len(line) + 1
            if len(pending) > MAX_LINE:
                counts.feed(pending[:MAX_LINE])
                consumed += len(pending)
                pending = b""
    if pending and not seg.whole_lines:  # a rotated file is complete: its last line too
        counts.feed(pending)
        consumed += len(pending)
    counts.bytes += consumed
    return consumed


def list_files(ctx: TaskContext, paths: list[str], *, follow: bool = False) -> FileListing:
    """Expand globs on the host (see ``HostOS.log_files``); symlinks are skipped unless
    ``follow``. Raises ``HostError`` when the listing fails."""
    return HostOS(ctx.transport).log_files(
        paths, follow=follow, timeout=ctx.time_left(PROBE_TIMEOUT)
    )


def resolve_paths(ctx: TaskContext, paths: list[str]) -> list[str]:
    """Relative paths on a local host are relative to the inventory file, like the inventory's own."""
    if not ctx.target.host.is_local:
        return list(paths)
    # The inventory's own folder by its physical path: a checkout under a symlinked folder
    # must not make its own logs look like links (logs.scan skips those).
    base = Path(os.path.realpath(Path(ctx.inventory.path).parent))
    return [p if p.startswith("/") else str(base / p) for p in paths]


@task(
    "logs.scan",
    targets="hosts",
    params={
        "paths": Param(list, None, item_type=str, help="log files or globs on the host"),
        "patterns": Param(
            list, DEFAULT_PATTERNS, item_type=str, help="regexes that mark a bad line"
        ),
        "warn_at": Param(int, 1, help="warn at this many matching lines"),
        "fail_at": Param(int, None, help="fail at this many matching lines"),
        "max_bytes": Param(
            "size", 64 * 1024 * 1024, help="read at most this much per file and run"
        ),
        "timeout": Param("duration", 600.0, help="time limit for reading one file"),
        "follow_symlinks": Param(
            bool, False, help="read logs that are symlinks (off: they are skipped and named)"
        ),
    },
)
def scan(ctx: TaskContext) -> TaskResult:
    """Count lines matching error patterns written since the last run.

    Without ``paths`` the host's ``vars.log_paths`` is used. Check mode scans but keeps the
    saved offsets, so the next real run sees the same lines.
    """
    p = ctx.params
    host_vars = getattr(ctx.target.obj, "vars", {}) or {}
    paths = p["paths"] or host_vars.get("log_paths") or []
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        return TaskResult.skipped("no log paths (give paths, or set vars.log_paths on the host)")
    try:
        pattern = re.compile("|".join(f"(?:{pat})" for pat in p["patterns"]))
    except re.error as exc:
        return TaskResult.failed(f"invalid pattern in {p['patterns']!r}: {exc}")

    counts = ScanCounts(pattern)
    per_file: list[dict[str, Any]] = []
    try:
        follow = bool(p["follow_symlinks"])
        listing = list_files(ctx, resolve_paths(ctx, [str(x) for x in paths]), follow=follow)
        files, missing = listing.files, listing.missing
        for current, rotated in files:
            per_file.append(
                _scan_file(ctx, current, rotated, counts, p["max_bytes"], p["timeout"], follow)
            )
    except CrmMaintError as exc:
        return TaskResult.from_error(exc, ctx.target.name)

    top = [{"message": m, "count": n} for m, n in counts.messages.most_common(TOP_MESSAGES)]
    metrics = {
        "matches": counts.matches,
        "lines": counts.lines,
        "bytes": counts.bytes,
        "files": len(files),
    }
    details: dict[str, Any] = {
        "files": per_file,
        "missing": missing,
        "symlinks_skipped": listing.links,
        "top": top,
        "check_mode": ctx.check,
        "offsets_saved": not ctx.check and ctx.journal is not None,
    }
    suffix = " (check mode: offsets not advanced)" if ctx.check else ""
    if not files:
        return TaskResult.warning(
            f"no log file matches {', '.join(missing)}{suffix}", metrics=metrics, details=details
        )
    summary = f"{counts.matches} matching lines in {counts.lines} new lines of {len(files)} files"
    if top:
        summary += f"; most frequent: {top[0]['message'][:120]} ({top[0]['count']}x)"
    if missing:
        summary += f"; nothing matches {', '.join(missing)}"
    if listing.links:
        summary += (
            f"; skipped symlinks {', '.join(listing.links)} (set follow_symlinks to read them)"
        )
    if p["fail_at"] is not None and counts.matches >= p["fail_at"]:
        return TaskResult.failed(summary + suffix, metrics=metrics, details=details)
    if counts.matches >= p["warn_at"] or missing:
        return TaskResult.warning(summary + suffix, metrics=metrics, details=details)
    return TaskResult.ok(summary + suffix, metrics=metrics, details=details)


def _scan_file(
    ctx: TaskContext,
    current: FileStat,
    rotated: FileStat | None,
    counts: ScanCounts,
    max_bytes: int,
    timeout: float,
    follow: bool = False,
) -> dict[str, Any]:
    key = f"logs.scan:{current.path}"
    cursor = ctx.state_get(key)
    segments, was_rotated, skipped = plan_reads(current, rotated, cursor, max_bytes)
    before = counts.matches
    offset = cursor["offset"] if cursor and not was_rotated else 0
    offset += skipped
    read = 0
    for seg in segments:
        consumed = scan_segment(ctx, seg, counts, timeout, follow=follow)
        read += consumed
        if seg.path == current.path:
            offset = seg.start + consumed
    ctx.state_set(key, {"inode": current.inode, "offset": offset})
    if skipped:
        log.warning(
            "%s: skipped %s of %s (more than max_bytes new)",
            ctx.target.name,
            format_size(skipped),
            current.path,
        )
    return {
        "path": current.path,
        "offset": offset,
        "bytes": read,
        "matches": counts.matches - before,
        "rotated": was_rotated,
        "skipped_bytes": skipped,
    }
