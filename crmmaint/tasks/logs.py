"""Log scanning: count error lines written since the last run, across log rotation.

Per file the journal keeps a cursor (inode, offset). Each run streams only the bytes after it
from the host (``tail -c +N | head -c LEN`` through the transport, never the whole log in
memory) and advances it to the last complete line read. When the inode changed or the file
shrank, the log was rotated: the rest of the old file is read from ``PATH.1`` if that still
has the old inode, then the new file from its start.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crmmaint.errors import CrmMaintError
from crmmaint.results import TaskResult
from crmmaint.tasks.api import Param, TaskContext, task
from crmmaint.tasks.health import PROBE_TIMEOUT, ProbeError, probe

log = logging.getLogger(__name__)

DEFAULT_PATTERNS = ["ERROR", "CRITICAL", "FATAL", "Traceback"]
TOP_MESSAGES = 5
#: A line longer than this is cut; the cut counts as consumed.
MAX_LINE = 1 << 20
#: Distinct normalised messages kept while counting (the rarest are dropped beyond this).
MAX_DISTINCT = 5000

#: $1 = follow|nofollow, then globs (IFS is empty: a glob is expanded, never split at spaces).
#: NUL-terminated records, since a file name may hold a newline: "f<TAB>inode<TAB>size<TAB>path"
#: per matching file, "r…" for its rotated predecessor PATH.1, "l<TAB>path" for a symlink not
#: followed, "m<TAB>glob" when nothing matches.
_LIST_SCRIPT = r"""
mode=$1; shift; IFS=
# true when an absolute path reaches its file through a symlinked folder
linked() { case $1 in /*) [ "$(readlink -f -- "$1")" != "$1" ];; *) false;; esac; }
st() { if [ "$mode" = follow ]; then stat -L --printf "$1" -- "$2"; else stat --printf "$1" -- "$2"; fi; }
for pat do
  n=0
  for f in $pat; do
    if [ "$mode" != follow ] && { [ -L "$f" ] || linked "$f"; }; then
      printf 'l\t%s\0' "$f"; n=1; continue
    fi
    [ -f "$f" ] || continue
    n=1; st 'f\t%i\t%s\t%n\0' "$f"
    if [ -f "$f.1" ] && { [ "$mode" = follow ] || [ ! -L "$f.1" ]; }; then
      st 'r\t%i\t%s\t%n\0' "$f.1"
    fi
  done
  [ $n = 1 ] || printf 'm\t%s\0' "$pat"
done
true
"""
#: Bytes $1.. (1-based) of file $2, at most $3 of them; $4 = follow|nofollow.
_READ_SCRIPT = (
    '[ "$4" = follow ] || [ ! -L "$2" ] || { echo "$2 became a symbolic link" >&2; exit 3; }; '
    'tail -c +"$1" -- "$2" | head -c "$3"'
)
#: A line is matched on its first 8 KiB: a pattern like `ERROR.*timeout` on a 1 MiB line
#: would otherwise cost seconds.
MATCH_LIMIT = 8192


@dataclass(frozen=True)
class FileStat:
    path: str
    inode: int
    size: int


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
    """
    length = seg.end - seg.start
    consumed = 0
    pending = b""
    with ctx.transport.start(
        [
            "sh",
            "-c",
            _READ_SCRIPT,
            "sh",
            str(seg.start + 1),
            seg.path,
            str(length),
            "follow" if follow else "nofollow",
        ],
        stdout="stream",
    ) as proc:
        proc.close_stdin()
        proc.set_timeout(ctx.time_left(timeout) or timeout)
        while chunk := proc.read(1 << 16):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                counts.feed(line)
                consumed += len(line) + 1
            if len(pending) > MAX_LINE:
                counts.feed(pending[:MAX_LINE])
                consumed += len(pending)
                pending = b""
        res = proc.wait(timeout=ctx.time_left(PROBE_TIMEOUT))
    if not res.ok:
        raise ProbeError(f"reading {seg.path} failed (exit {res.exit_status}): {res.stderr_tail()}")
    if pending and not seg.whole_lines:  # a rotated file is complete: its last line too
        counts.feed(pending)
        consumed += len(pending)
    counts.bytes += consumed
    return consumed


@dataclass
class Listing:
    """What the globs matched on the host."""

    files: list[tuple[FileStat, FileStat | None]]  # (file, rotated PATH.1 or None)
    missing: list[str]  # globs that matched nothing
    links: list[str]  # symlinks skipped (not followed)


def list_files(ctx: TaskContext, paths: list[str], *, follow: bool = False) -> Listing:
    """Expand globs on the host. Symlinks are skipped (and listed) unless ``follow``: a log
    path must not become a way to read any file the scanning user can (a link to a root-only
    file). Any file name, newlines included, is one record; an unreadable record is skipped."""
    mode = "follow" if follow else "nofollow"
    res = probe(ctx, ["sh", "-c", _LIST_SCRIPT, "sh", mode, *paths], what="listing log files")
    listing = Listing([], [], [])
    seen: set[str] = set()  # a file two globs match is scanned once
    current = False  # the last "f" record was new (its rotated ".1" belongs to it)
    for record in res.stdout.decode("utf-8", "surrogateescape").split("\0"):
        kind, _, rest = record.partition("\t")
        if kind == "m":
            listing.missing.append(rest)
        elif kind == "l":
            if rest not in listing.links:
                listing.links.append(rest)
        elif kind in ("f", "r"):
            inode, _, rest = rest.partition("\t")
            size, _, path = rest.partition("\t")
            if not (inode.isdigit() and size.isdigit() and path):
                log.debug("logs.scan: skipping an unreadable listing record %r", record[:200])
                continue
            stat = FileStat(path, int(inode), int(size))
            if kind == "f":
                current = path not in seen
                if current:
                    seen.add(path)
                    listing.files.append((stat, None))
            elif current and listing.files and listing.files[-1][0].path + ".1" == path:
                listing.files[-1] = (listing.files[-1][0], stat)
    return listing


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
        return TaskResult.failed(f"{ctx.target.name}: {exc.message}")

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
            "%s: skipped %d bytes of %s (more than max_bytes new)",
            ctx.target.name,
            skipped,
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
