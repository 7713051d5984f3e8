"""Cache clearing: Redis keys by pattern, old files in cache directories, and the application's
own cache endpoint, on every cache that configures them ("caches cleared where configured").

What to clear comes from the cache's ``clear:`` mapping in the inventory
(``crmmaint.inventory.CacheClearing``); a step's ``with:`` parameters override it key by key.
The adapter (``crmmaint.engines.redis.RedisCache``) knows how: SCAN + UNLINK in batches, one
command at a time, FLUSHDB only for ``flush: database``; find that never follows a symlink or
leaves a configured directory; an HTTP call from the runner with the token in a header. This
module decides what to clear, watches the run's deadline and turns the counts into a result.
In check mode everything is counted the same way and nothing is removed or called.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from crmmaint.engines.redis import (
    MAX_UNLINK_BATCH,
    UNLINK_BATCH,
    DirectoryClearing,
    EndpointCall,
    EndpointRefused,
    KeyClearing,
    RedisCache,
)
from crmmaint.errors import ConfigError, CrmMaintError
from crmmaint.inventory import (
    ENDPOINT_METHODS,
    FLUSH_SCOPES,
    SECRET_PREFIXES,
    Cache,
    CacheClearing,
    SecretSource,
    endpoint_problem,
    file_glob_problem,
    key_pattern_problem,
)
from crmmaint.results import Status, TaskResult, worst
from crmmaint.tasks.api import Param, TaskContext, task
from crmmaint.units import format_duration, format_size, plural

log = logging.getLogger(__name__)

#: Seconds before the run's deadline (or the step's timeout) at which no new batch, directory
#: or call starts (at most a tenth of the time the task had when it started).
DEADLINE_RESERVE = 2.0
#: Seconds that clearing one cache may take when the step sets no timeout.
CLEAR_TIMEOUT = 6 * 3600.0
#: Seconds to wait, after clearing keys, for the server to free them in the background before
#: its memory is read again.
SETTLE = 2.0


def _each(problem_of: Callable[[str], str | None]) -> Callable[[list[str]], None]:
    """A ``Param.check`` of a list: ``ValueError`` with the first item's problem."""

    def check(values: list[str]) -> None:
        for value in values:
            if (problem := problem_of(value)) is not None:
                raise ValueError(problem)

    return check


def _one(problem_of: Callable[[str], str | None]) -> Callable[[str], None]:
    def check(value: str) -> None:
        if (problem := problem_of(value)) is not None:
            raise ValueError(problem)

    return check


def _token_problem(value: str) -> str | None:
    if value.startswith(SECRET_PREFIXES):
        return None
    # never echo it: it may be the token itself
    return (
        "'token' must be a secret source (env:NAME, file:/path or cmd:COMMAND), not the token"
        " itself: keep the token out of playbooks, e.g. token: env:CRM_CACHE_TOKEN"
    )


def _batch_problem(value: int) -> str | None:
    if 1 <= value <= MAX_UNLINK_BATCH:
        return None
    return f"batch must be 1 to {MAX_UNLINK_BATCH} keys, not {value}"


@task(
    "cache.clear",
    targets="cache",
    params={
        "patterns": Param(
            list,
            None,
            item_type=str,
            help="Redis key patterns (SCAN MATCH globs) to remove",
            check=_each(key_pattern_problem),
        ),
        "flush": Param(
            str, None, choices=FLUSH_SCOPES, help="'database': FLUSHDB the cache's Redis database"
        ),
        "files": Param(
            list,
            None,
            item_type=str,
            help="file name globs to remove in the cache's directories",
            check=_each(file_glob_problem),
        ),
        "older_than": Param("duration", None, help="remove only files modified longer ago"),
        "endpoint": Param(
            str, None, help="URL of the application's cache endpoint", check=_one(endpoint_problem)
        ),
        "method": Param(str, None, choices=ENDPOINT_METHODS, help="HTTP method (default POST)"),
        "token": Param(
            str,
            None,
            help="the endpoint's bearer token: env:NAME, file:/path or cmd:COMMAND",
            check=_one(_token_problem),
        ),
        "batch": Param(
            int,
            UNLINK_BATCH,
            help=f"keys per UNLINK batch (1-{MAX_UNLINK_BATCH})",
            check=_one(_batch_problem),  # type: ignore[arg-type]
        ),
        "pause": Param("duration", 0.0, help="pause after each batch of keys"),
    },
)
def clear(ctx: TaskContext) -> TaskResult:
    """Clear a cache where configured: Redis keys by pattern, old cache files, its endpoint."""
    cache: Cache = ctx.target.obj  # type: ignore[assignment]
    try:
        wanted = settings(cache.clear, ctx.params)
        batch = ctx.params.get("batch", UNLINK_BATCH)
        if not 1 <= batch <= MAX_UNLINK_BATCH:
            raise ConfigError(
                f"cache.clear: batch must be 1 to {MAX_UNLINK_BATCH} keys, not {batch}",
                hint=f"the default, {UNLINK_BATCH}, keeps each batch near a millisecond",
            )
    except ConfigError as exc:
        return TaskResult.from_error(exc, details={"check_mode": ctx.check})
    plan = Plan.of(cache, wanted, ctx.params)
    if not plan.anything:
        return TaskResult.skipped(
            f"nothing to clear on cache {cache.name!r}"
            + (f" ({'; '.join(plan.notes)})" if plan.notes else "")
            + ": set 'clear:' on the cache in the inventory (patterns, files/older_than,"
            " endpoint), or give them in the step's with:",
            details={"check_mode": ctx.check, "notes": plan.notes},
        )
    left = ctx.run_time_left()
    stop_at = None
    if left is not None:
        stop_at = time.monotonic() + left - min(DEADLINE_RESERVE, left / 10)
    report = Report(check=ctx.check, notes=list(plan.notes), limit=_limit_name(ctx))
    adapter = RedisCache(cache, ctx.transport)
    _clear_keys(ctx, adapter, plan, stop_at, report)
    _clear_directories(ctx, adapter, plan, stop_at, report)
    _call_endpoint(ctx, adapter, plan, stop_at, report)
    return report.result(ctx)


def settings(configured: CacheClearing | None, params: dict[str, Any]) -> CacheClearing:
    """What to clear: the cache's ``clear:`` (``configured``) with the step's parameters over
    it, key by key. Key patterns and ``flush`` are alternatives: a step that gives one drops
    the cache's other. Raises ``ConfigError`` for a pattern, glob, URL or token source that
    the inventory loader would have refused."""
    out = configured or CacheClearing()
    if params.get("patterns") is not None and params.get("flush") is not None:
        raise ConfigError(
            "cache.clear: give 'flush: database' or 'patterns', not both",
            hint="flush removes every key of the database; patterns remove only theirs",
        )
    if params.get("patterns") is not None:
        out = replace(out, patterns=tuple(params["patterns"]), flush=None)
    if params.get("flush") is not None:
        out = replace(out, flush=params["flush"], patterns=())
    if params.get("files") is not None:
        out = replace(out, files=tuple(params["files"]))
    if params.get("older_than") is not None:
        out = replace(out, older_than=float(params["older_than"]))
    if params.get("endpoint") is not None:
        out = replace(out, endpoint=params["endpoint"])
    if params.get("method") is not None:
        out = replace(out, method=params["method"])
    if params.get("token") is not None:
        if not params["token"].startswith(SECRET_PREFIXES):
            raise ConfigError(  # never echo it: it may be the token itself
                "cache.clear: 'token' must be a secret source (env:NAME, file:/path or "
                "cmd:COMMAND), not the token itself",
                hint="keep the token out of playbooks: give e.g. token: env:CRM_CACHE_TOKEN",
            )
        out = replace(out, token=SecretSource(params["token"]))
    problems = [key_pattern_problem(p) for p in out.patterns]
    problems += [file_glob_problem(g) for g in out.files]
    if out.endpoint is not None:
        problems.append(endpoint_problem(out.endpoint))
    if out.older_than is not None and out.older_than == float("inf"):
        problems.append("older_than is too large")
    problem = next((p for p in problems if p is not None), None)
    if problem is not None:
        raise ConfigError(f"cache.clear: {problem}", hint="correct the step's with: parameters")
    return out


@dataclass
class Plan:
    """What ``cache.clear`` does on one cache: the parts of ``wanted`` that the cache has
    (keys need ``redis``, files need ``directories``); ``notes`` say what was left out."""

    wanted: CacheClearing
    keys: bool = False
    files: bool = False
    endpoint: bool = False
    batch: int = UNLINK_BATCH
    pause: float = 0.0
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, cache: Cache, wanted: CacheClearing, params: dict[str, Any]) -> Plan:
        plan = cls(wanted, batch=params.get("batch", UNLINK_BATCH))
        plan.pause = float(params.get("pause") or 0.0)
        if wanted.patterns or wanted.flush:
            plan.keys = cache.redis is not None
            if not plan.keys:
                plan.notes.append("no 'redis' on this cache: key patterns and flush not applied")
        if wanted.files or wanted.older_than is not None:
            plan.files = bool(cache.directories)
            if not plan.files:
                plan.notes.append("no 'directories' on this cache: files not cleared")
        plan.endpoint = wanted.endpoint is not None
        return plan

    @property
    def anything(self) -> bool:
        return self.keys or self.files or self.endpoint


@dataclass
class Report:
    """The counts of one cache's clearing as they come in, and the result they make."""

    check: bool
    keys: list[KeyClearing] = field(default_factory=list)
    memory_before: int | None = None
    memory_after: int | None = None
    directories: list[DirectoryClearing] = field(default_factory=list)
    endpoint: EndpointCall | None = None
    #: The endpoint asked for (url, method), and once it answered outside 2xx: called, status.
    endpoint_wanted: dict[str, Any] | None = None
    #: The files asked for, for messages: ``*.cache older than 1d``.
    files_wanted: str = ""
    left: list[str] = field(default_factory=list)
    #: What ended the work early, for messages: "the run's deadline (05:30)".
    limit: str = "the run's deadline"
    failures: list[CrmMaintError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def result(self, ctx: TaskContext) -> TaskResult:
        metrics = self.metrics()
        details = self.details()
        extra = list(self.warnings)
        if self.left:
            extra.insert(0, f"stopped before {self.limit}; left: " + "; ".join(self.left))
        if self.failures:
            first = self.failures[0]
            failures = [str(first)] + [f"also: {f}" for f in self.failures[1:]]
            message = "; ".join([*failures, *filter(None, [self.summary()]), *extra])
            details.update(error=type(first).__name__, exit_code=first.exit_code)
            log.info("%s: %s", ctx.target.label, message)
            return TaskResult(
                Status.FAILED,
                message,
                metrics=metrics,
                details=details,
                retryable=all(f.retryable for f in self.failures),
            )
        statuses = [Status.CHANGED if self.anything_done else Status.OK]
        if extra:
            statuses.append(Status.WARNING)
        message = "; ".join([self.summary() or self.nothing(), *extra, *self.notes])
        log.info("%s: %s", ctx.target.label, message)
        return TaskResult(worst(statuses), message, metrics=metrics, details=details)

    @property
    def anything_done(self) -> bool:
        """Something was removed or called (check mode: would be)."""
        keys = sum(k.matched if self.check else k.removed for k in self.keys)
        files = sum(d.files for d in self.directories)
        return bool(keys or files or self.endpoint or (self.check and self.endpoint_wanted))

    def nothing(self) -> str:
        parts = []
        if self.keys:
            parts.append(f"no key matched {_patterns(self.keys)}")
        if self.directories:
            parts.append(
                f"no file matching {self.files_wanted} in"
                f" {plural(len(self.directories), 'directory', 'directories')}"
            )
        return "; ".join(parts) or "nothing cleared"

    def summary(self) -> str:
        """What was (check mode: would be) removed or called, for the message."""
        verb = "would remove" if self.check else "removed"
        parts = []
        matched = sum(k.matched for k in self.keys)
        if matched:
            removed = matched if self.check else sum(k.removed for k in self.keys)
            text = f"{verb} {_count(removed, 'key')} matching {_patterns(self.keys)}"
            size = sum(k.bytes or 0 for k in self.keys)
            facts = [f"{format_size(size)} by MEMORY USAGE"] if size else []
            facts.append(f"{sum(k.without_ttl for k in self.keys):,} without a TTL")
            if self.memory_freed is not None:
                facts.append(f"used_memory down {format_size(self.memory_freed)}")
            parts.append(f"{text} ({', '.join(facts)})")
        files = sum(d.files for d in self.directories)
        if files:
            size = sum(d.bytes for d in self.directories)
            parts.append(
                f"{verb} {_count(files, 'file')} ({format_size(size)}) matching {self.files_wanted}"
            )
        if self.endpoint is not None:
            parts.append(
                f"{self.endpoint.method} {self.endpoint.url} answered {self.endpoint.status}"
                f" in {self.endpoint.seconds * 1000:.0f} ms"
            )
        elif self.check and self.endpoint_wanted:
            parts.append(f"would {self.endpoint_wanted['method']} {self.endpoint_wanted['url']}")
        return "; ".join(parts)

    @property
    def memory_freed(self) -> int | None:
        if self.memory_before is None or self.memory_after is None:
            return None
        return max(0, self.memory_before - self.memory_after)

    def metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.keys:
            metrics["keys_matched"] = sum(k.matched for k in self.keys)
            metrics["keys_removed"] = sum(k.removed for k in self.keys)
            metrics["keys_without_ttl"] = sum(k.without_ttl for k in self.keys)
            if any(k.bytes is not None for k in self.keys):
                metrics["keys_bytes"] = sum(k.bytes or 0 for k in self.keys)
            metrics["keys_seconds"] = round(sum(k.seconds for k in self.keys), 3)
            if self.memory_before is not None:
                metrics["used_memory_before"] = self.memory_before
            if self.memory_after is not None:
                metrics["used_memory_after"] = self.memory_after
            if self.memory_freed is not None:
                metrics["memory_freed"] = self.memory_freed
        if self.directories:
            files = sum(d.files for d in self.directories)
            size = sum(d.bytes for d in self.directories)
            metrics["files_matched"] = files
            metrics["files_removed"] = 0 if self.check else files
            metrics["files_bytes"] = size
            metrics["bytes_freed"] = 0 if self.check else size
        if self.endpoint is not None:
            metrics["endpoint_status"] = self.endpoint.status
            metrics["endpoint_ms"] = round(self.endpoint.seconds * 1000, 1)
        if self.left:
            metrics["left_unfinished"] = len(self.left)
        return metrics

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {"check_mode": self.check}
        if self.keys:
            details["keys"] = [
                {
                    "pattern": k.pattern if k.pattern is not None else "(flush: database)",
                    "matched": k.matched,
                    "removed": k.removed,
                    "without_ttl": k.without_ttl,
                    "bytes": k.bytes,
                    "batches": k.batches,
                    "ignored": k.ignored,
                    "seconds": round(k.seconds, 3),
                    "finished": k.finished,
                }
                for k in self.keys
            ]
            # Every matching key's TTL is looked at in its batch (a flush: the server's counts).
            details["keys_without_ttl_method"] = "counted"
        if self.directories:
            details["directories"] = [
                {
                    "path": d.path,
                    "files": d.files,
                    "bytes": d.bytes,
                    "finished": d.finished,
                    **({"skipped": d.skipped} if d.skipped else {}),
                    **({"error": d.error} if d.error else {}),
                }
                for d in self.directories
            ]
        if self.endpoint is not None:
            details["endpoint"] = {
                "url": self.endpoint.url,
                "method": self.endpoint.method,
                "status": self.endpoint.status,
            }
        elif self.endpoint_wanted is not None:
            details["endpoint"] = {"called": False, **self.endpoint_wanted}
        if self.left:
            details["left"] = self.left
        if self.notes or self.warnings:
            details["notes"] = self.warnings + self.notes
        return details


def _clear_keys(
    ctx: TaskContext, adapter: RedisCache, plan: Plan, stop_at: float | None, report: Report
) -> None:
    if not plan.keys:
        return
    wanted = plan.wanted
    if _passed(stop_at):
        report.left.append(f"keys {', '.join(wanted.patterns) or '(flush)'} not started")
        return
    try:
        report.memory_before = adapter.used_memory(timeout=ctx.time_left(60.0))
        if wanted.flush:
            report.keys.append(adapter.flush_database(ctx.check, timeout=ctx.time_left(600.0)))
        for i, pattern in enumerate(wanted.patterns):
            if _passed(stop_at):
                report.left.append(f"keys {', '.join(wanted.patterns[i:])} not started")
                break
            done = adapter.clear_keys(
                pattern,
                ctx.check,
                batch=plan.batch,
                pause=plan.pause,
                stop_at=stop_at,
                timeout=ctx.time_left(CLEAR_TIMEOUT),
            )
            report.keys.append(done)
            if done.ignored:
                report.warnings.append(
                    f"{plural(done.ignored, 'key')} SCAN returned for {pattern!r} left alone:"
                    " its name holds a line break, which redis-cli cannot pass back safely"
                )
            if not done.finished:
                report.left.append(f"keys matching {pattern!r} not all seen")
                report.left += [f"keys {p} not started" for p in wanted.patterns[i + 1 :]]
                break
        if not ctx.check:
            report.memory_after = adapter.used_memory(settle=SETTLE, timeout=ctx.time_left(60.0))
    except CrmMaintError as exc:
        report.failures.append(exc)


def _clear_directories(
    ctx: TaskContext, adapter: RedisCache, plan: Plan, stop_at: float | None, report: Report
) -> None:
    if not plan.files:
        return
    wanted = plan.wanted
    globs = wanted.files or ("*",)
    report.files_wanted = ", ".join(globs) + (
        f" older than {format_duration(wanted.older_than)}" if wanted.older_than else ""
    )
    folder = os.path.dirname(os.path.abspath(ctx.inventory.path)) if ctx.inventory.path else None
    for i, path in enumerate(adapter.cache.directories):
        if _passed(stop_at):
            report.left += [f"directory {p} not started" for p in adapter.cache.directories[i:]]
            return
        try:
            done = adapter.clear_files(
                path,
                ctx.check,
                patterns=globs,
                older_than=wanted.older_than,
                stop_at=stop_at,
                timeout=ctx.time_left(CLEAR_TIMEOUT),
                inventory_dir=folder,
            )
        except CrmMaintError as exc:
            report.failures.append(exc)
            continue
        report.directories.append(done)
        if done.error and done.vanished:  # another process removed files too: not a fault
            report.warnings.append(
                f"directory {path}: some files or folders went away while find ran (another"
                f" process clearing it?): {done.error}"
            )
        elif done.error:
            refused = any(s in done.error for s in ("Permission denied", "not permitted"))
            report.failures.append(
                adapter.error(
                    f"clearing directory {path} failed: {done.error}",
                    hint="give crmmaint's user the right to remove the cache's files"
                    if refused
                    else "see find's message for what it could not do",
                )
            )
        if done.skipped == "does not exist":
            report.notes.append(f"directory {path} does not exist")
        elif done.skipped:
            report.warnings.append(f"directory {path} skipped: {done.skipped}")
        if not done.finished:
            report.left.append(f"directory {path} not finished")


def _call_endpoint(
    ctx: TaskContext, adapter: RedisCache, plan: Plan, stop_at: float | None, report: Report
) -> None:
    wanted = plan.wanted
    if not plan.endpoint or wanted.endpoint is None:
        return
    report.endpoint_wanted = {"url": wanted.endpoint, "method": wanted.method}
    if ctx.check:
        return  # nothing is called in check mode (nor the token read: cmd: could do anything)
    if _passed(stop_at):
        report.left.append(f"endpoint {wanted.endpoint} not called")
        return
    left = None if stop_at is None else max(0.001, stop_at - time.monotonic())
    timeout = min(x for x in (60.0, ctx.time_left(), left) if x is not None)
    try:
        report.endpoint = adapter.call_endpoint(
            wanted.endpoint, method=wanted.method, token=wanted.token, timeout=timeout
        )
    except EndpointRefused as exc:  # called, and it answered
        report.endpoint_wanted.update(called=True, status=exc.status)
        report.failures.append(exc)
    except CrmMaintError as exc:
        if left is not None and timeout == left and "timed out" in exc.message:
            exc = exc.within(
                f"cut off by {report.limit} after {timeout:.1f}s"
            )  # the deadline's limit, not the endpoint's
        report.failures.append(exc)


def _patterns(keys: list[KeyClearing]) -> str:
    names = [k.pattern for k in keys if k.pattern is not None]
    if len(names) < len(keys):
        return "the whole database (flush)"
    return ", ".join(repr(n) for n in names)


def _limit_name(ctx: TaskContext) -> str:
    """Which bound ``ctx.run_time_left`` counts down to: the run's deadline or the step's
    timeout (the earlier one)."""
    if ctx.run_deadline is not None and (ctx.deadline is None or ctx.run_deadline <= ctx.deadline):
        return "the run's deadline" + (f" ({ctx.run_ends:%H:%M})" if ctx.run_ends else "")
    return "the step's timeout"


def _count(n: int, noun: str) -> str:
    """``plural`` with thousands separated: ``60,000 keys``."""
    return f"{n:,} {noun if n == 1 else noun + 's'}"


def _passed(moment: float | None) -> bool:
    return moment is not None and time.monotonic() >= moment
