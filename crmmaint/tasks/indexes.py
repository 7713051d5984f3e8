"""``indexes.optimize``: keep a database's indexes and tables lean, safely, inside the window.

The engine surveys (read only): bloated and invalid indexes, dead tuples, free space, and the
duplicate, redundant and unused indexes that are reported and never dropped. Then each proposed
action runs on its own, in the survey's order, when it fits: its duration is estimated from
its size and from the same action's past runs (kept in the journal), and what would not end
before the run's deadline (``--until``, ``--for``, the playbook's window) is skipped with a
warning that says why. Every statement runs under ``lock_timeout`` and a statement timeout, so
the CRM never waits on it longer than configured, and a failure costs that action only.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from crmmaint.engines.maintenance import MaintenancePolicy, Outcome, Survey
from crmmaint.errors import ConfigError, CrmMaintError
from crmmaint.results import TaskResult
from crmmaint.tasks.api import Param, TaskContext, task
from crmmaint.units import format_elapsed, format_size, plural

log = logging.getLogger(__name__)

#: ``statement_timeout: 0``: a statement is bounded only by the run's deadline, the step's
#: timeout, or a week.
NO_STATEMENT_LIMIT = 7 * 86400.0
#: Seconds a survey's catalog queries may take (pgstatindex reads each measured index).
SURVEY_TIMEOUT = 900.0
#: Bytes per second assumed for an action kind an engine does not name.
FALLBACK_RATE = 10e6
#: Action kinds that may give space back (the message says how much).
_SHRINKING = frozenset({"reindex", "drop_leftover", "optimize", "vacuum_file"})
#: What each action kind did, for the result's message.
_DONE = {
    "reindex": ("index", "indexes", "rebuilt"),
    "drop_leftover": ("leftover index", "leftover indexes", "dropped"),
    "vacuum": ("table", "tables", "vacuumed"),
    "analyze": ("database", "databases", "analyzed"),
    "optimize": ("table", "tables", "rebuilt by OPTIMIZE"),
    "pragma_optimize": ("PRAGMA optimize", "PRAGMA optimize", "run"),
    "quick_check": ("quick_check", "quick_check", "passed"),
    "vacuum_file": ("database file", "database files", "vacuumed"),
}


@task(
    "indexes.optimize",
    targets=("database",),
    params={
        "bloat_threshold": Param(
            "percent", 30.0, help="rebuild an index when this share of it is wasted space"
        ),
        "min_size": Param(
            "size", 8 << 20, help="leave indexes (and SQLite/MariaDB tables) smaller than this"
        ),
        "dead_tuple_threshold": Param(
            "percent", 20.0, help="VACUUM (ANALYZE) a PostgreSQL table with this share dead"
        ),
        "free_space_threshold": Param(
            "percent", 20.0, help="OPTIMIZE (MariaDB) or VACUUM (SQLite) with this share free"
        ),
        "lock_timeout": Param(
            "duration", 5.0, help="longest wait for a lock per statement (then that one fails)"
        ),
        "statement_timeout": Param("duration", 3600.0, help="longest any one statement may run"),
        "rebuild": Param(bool, True, help="false: survey and report only"),
    },
)
def optimize(ctx: TaskContext) -> TaskResult:
    """Rebuild bloated and invalid indexes, vacuum/optimize tables, report the rest."""
    from crmmaint.engines import engine_for

    try:
        policy = _policy(ctx.params)
    except ConfigError as exc:
        return TaskResult.from_error(exc, details={"check_mode": ctx.check})
    try:
        maintenance = engine_for(ctx.target.obj, ctx.transport).maintenance()
        survey = maintenance.survey(policy, timeout=ctx.time_left(SURVEY_TIMEOUT) or 1.0)
    except CrmMaintError as exc:
        return TaskResult.from_error(exc, "survey", details={"check_mode": ctx.check})
    done: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    actions = survey.actions if policy.rebuild else []
    would_take = 0.0
    for action in actions:
        rate = maintenance.default_rates.get(action.kind, FALLBACK_RATE)
        estimate = ctx.estimate(action.operation, action.work, rate)
        entry = action.as_data() | {"estimate_seconds": round(estimate.seconds, 1)}
        # check mode: as if the actions it would run before this one had taken their time
        why = ctx.wont_fit(f"{action.kind} of {action.object}", estimate, after=would_take)
        if why is not None:  # check mode says the same: it would be skipped
            log.info("%s: %s", ctx.target.label, why)
            skipped.append(entry | {"why": why})
            continue
        if ctx.check:
            would_take += estimate.seconds
            done.append(entry)
            continue
        left = ctx.run_time_left()
        timeout = policy.statement_timeout if left is None else min(policy.statement_timeout, left)
        started = time.monotonic()
        try:
            outcome = maintenance.perform(action, policy, timeout=max(1.0, timeout))
        except CrmMaintError as exc:
            log.info("%s: %s of %s failed: %s", ctx.target.label, action.kind,
                     action.object, exc)  # fmt: skip
            failed.append(entry | {"error": exc.message})
            continue
        seconds = time.monotonic() - started
        ctx.record_duration(action.operation, action.work, seconds)
        done.append(entry | _outcome(outcome, seconds))
    return _result(ctx, survey, policy, done, skipped, failed)


def _policy(params: dict[str, Any]) -> MaintenancePolicy:
    """The task's parameters as a policy; raises ``ConfigError`` for a ``lock_timeout`` of 0
    (PostgreSQL would read it as "wait for ever", the one thing the setting exists to stop)."""
    if params["lock_timeout"] <= 0:
        raise ConfigError(
            "indexes.optimize: lock_timeout must be more than 0",
            hint="it bounds how long the CRM's sessions may queue behind a statement; e.g. 5s",
        )
    return MaintenancePolicy(
        bloat_threshold=params["bloat_threshold"] / 100,
        min_size=params["min_size"],
        dead_tuple_threshold=params["dead_tuple_threshold"] / 100,
        free_space_threshold=params["free_space_threshold"] / 100,
        lock_timeout=params["lock_timeout"],
        # 0, as in PostgreSQL: no limit of its own (the run's deadline still bounds it)
        statement_timeout=params["statement_timeout"] or NO_STATEMENT_LIMIT,
        rebuild=params["rebuild"],
    )


def _outcome(outcome: Outcome, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"before": outcome.before, "after": outcome.after}
    out |= {"reclaimed": outcome.reclaimed, "seconds": round(seconds, 2)}
    return out | ({"note": outcome.note} if outcome.note else {})


def _result(
    ctx: TaskContext,
    survey: Survey,
    policy: MaintenancePolicy,
    done: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
    failed: list[dict[str, Any]],
) -> TaskResult:
    """One line that says what was done, skipped and failed; the findings in details."""
    findings = [f.as_data() for f in survey.findings]
    kinds = {kind: [f for f in findings if f["kind"] == kind] for kind in
             ("duplicate", "redundant", "unused", "integrity")}  # fmt: skip
    reclaimed = sum(d.get("reclaimed", 0) for d in done)
    metrics: dict[str, float] = {
        "actions_done": 0 if ctx.check else len(done),
        "actions_skipped": len(skipped),
        "actions_failed": len(failed),
        "bytes_reclaimed": reclaimed,
        "indexes_rebuilt": sum(1 for d in done if d["kind"] == "reindex") * (not ctx.check),
        "invalid_indexes": sum(1 for a in survey.actions if a.reason.startswith("invalid")),
        "duplicate_indexes": len(kinds["duplicate"]),
        "redundant_indexes": len(kinds["redundant"]),
        "unused_indexes": len(kinds["unused"]),
        "unused_index_bytes": sum(f["size"] for f in kinds["unused"]),
    }
    details: dict[str, Any] = {
        "check_mode": ctx.check,
        "method": survey.method,
        "objects": survey.objects,
        "actions": done,
        "skipped": skipped,
        "failed": failed,
        "findings": findings,
        "notes": survey.notes,
    }
    if not policy.rebuild:
        details["proposed"] = [a.as_data() for a in survey.actions]
    parts = [_said_done(ctx, done, reclaimed, policy, survey)]
    if skipped:
        parts.append(f"{len(skipped)} skipped: {skipped[0]['why']}")
    if failed:
        parts.append(
            f"{len(failed)} failed: {failed[0]['kind']} of {failed[0]['object']}:"
            f" {failed[0]['error']}"
        )
    reported = [
        plural(len(kinds[k]), f"{k} index", f"{k} indexes")
        for k in ("duplicate", "redundant", "unused")
        if kinds[k]
    ]
    if reported:
        parts.append("reported, not dropped: " + ", ".join(reported))
    if kinds["integrity"]:
        parts.append(f"integrity check: {kinds['integrity'][0]['detail'][:200]}")
    message = f"{survey.method}: " + "; ".join(parts)
    if kinds["integrity"]:
        return TaskResult.failed(message, metrics=metrics, details=details, retryable=False)
    if skipped or failed:
        return TaskResult.warning(message, metrics=metrics, details=details)
    if done:  # in check mode: it would change something (docs/playbooks.md)
        return TaskResult.changed(message, metrics=metrics, details=details)
    return TaskResult.ok(message, metrics=metrics, details=details)


def _said(kind: str, count: int) -> str:
    """``3 indexes rebuilt``, ``1 table vacuumed``."""
    one, many, verb = _DONE.get(kind, (kind, kind, "done"))
    return f"{plural(count, one, many)} {verb}"


def _said_done(
    ctx: TaskContext,
    done: list[dict[str, Any]],
    reclaimed: int,
    policy: MaintenancePolicy,
    survey: Survey,
) -> str:
    if not policy.rebuild:
        return f"{plural(len(survey.actions), 'action')} proposed (rebuild: false)"
    if not done:
        if survey.actions:  # every one of them skipped or failed: said after this
            return "nothing done"
        looked = ", ".join(plural(n, k[:-1] if n == 1 else k, k) for k, n in
                           survey.objects.items())  # fmt: skip
        if not looked:
            return "nothing done"
        return f"nothing to do ({looked} looked at)"
    by_kind: dict[str, int] = {}
    for d in done:
        by_kind[d["kind"]] = by_kind.get(d["kind"], 0) + 1
    verbs = ", ".join(_said(kind, n) for kind, n in by_kind.items())
    if ctx.check:
        total = sum(d["estimate_seconds"] for d in done)
        return f"would run {plural(len(done), 'action')} ({verbs}; about {format_elapsed(total)})"
    seconds = sum(d.get("seconds", 0.0) for d in done)
    if any(d["kind"] in _SHRINKING for d in done):
        verbs += f", {format_size(reclaimed)} reclaimed"
    return f"{verbs} in {format_elapsed(seconds)}"
