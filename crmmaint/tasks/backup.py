"""Backup tasks: ``backup.database``, ``backup.files``, ``backup.verify``, ``backup.prune``.

A dump streams from the host that owns the data, through the engine adapter and transport, into a
repository write session on this machine: chunked, compressed and encrypted before it leaves. The
manifest is committed last, so a failed or interrupted dump never appears as a backup.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from crmmaint.errors import ConfigError, IntegrityError
from crmmaint.repository.configured import open_repository, recipients_for
from crmmaint.repository.format import source_name
from crmmaint.repository.retention import POLICY_KEYS, RetentionPolicy
from crmmaint.results import TaskResult
from crmmaint.tasks.api import REPOSITORY_PARAM as REPOSITORY
from crmmaint.tasks.api import Param, TaskContext, task
from crmmaint.units import format_size, plural

MIN_SIZE_RATIO = Param(
    float,
    default=0.5,
    help="warn when a backup is smaller than this fraction of the previous one (silent data loss)",
)


@task(
    "backup.database",
    targets="database",
    params={"repository": REPOSITORY, "min_size_ratio": MIN_SIZE_RATIO},
)
def backup_database(ctx: TaskContext) -> TaskResult:
    """Stream a consistent dump of a database into the repository, with the facts a drill checks."""
    from crmmaint.engines import engine_for

    db = ctx.target.obj
    engine = engine_for(db, ctx.transport)
    if ctx.check:
        size = engine.facts().get("size_bytes")
        about = "size unknown" if size is None else f"~{format_size(size)}"
        return _would(ctx, f"{db.engine} database {db.name} ({about})")
    return _store_dump(
        ctx, engine.dump(), source_name("database", db.name), db.engine, "dump", _row_totals
    )


@task(
    "backup.files",
    targets="fileset",
    params={"repository": REPOSITORY, "min_size_ratio": MIN_SIZE_RATIO},
)
def backup_files(ctx: TaskContext) -> TaskResult:
    """Stream a tar of a file set into the repository, with per-file checksums in the manifest."""
    from crmmaint.engines.files import FileSetSource

    fileset = ctx.target.obj
    if ctx.check:
        return _would(ctx, f"file set {fileset.name} ({', '.join(fileset.paths)})")
    source = FileSetSource(fileset, ctx.transport)
    return _store_dump(
        ctx,
        source.dump(),
        source_name("fileset", fileset.name),
        "files",
        "tar",
        lambda facts: {"files": int(facts.get("files", 0)), "roots": facts.get("roots", {})},
    )


def _would(ctx: TaskContext, what: str) -> TaskResult:
    """A check-mode backup: the repository is opened (it exists, the write key opens its
    config; no lock, nothing written), so a backup that would fail there fails here too."""
    cfg = ctx.inventory.repository(ctx.params["repository"])
    with open_repository(cfg):
        pass
    repo = cfg.name
    # In check mode, "changed" means "would change" (docs/playbooks.md).
    return TaskResult.changed(
        f"would back up {what} to {repo}", details={"check": True, "repository": repo}
    )


def _store_dump(
    ctx: TaskContext,
    dump_cm: Any,
    source: str,
    kind: str,
    stream: str,
    public: Callable[[dict[str, Any]], dict[str, Any]],
) -> TaskResult:
    """Stream one dump into a write session; the manifest is committed only after the dump
    command finished cleanly (``finish`` raises otherwise, and the session aborts)."""
    repo_cfg = ctx.inventory.repository(ctx.params["repository"])
    recipients = recipients_for(repo_cfg)
    started = time.monotonic()
    with open_repository(repo_cfg) as repo:
        repository_id = repo.id
        # The previous backup's size is the best guess of this one's: the bar gets a total
        # and an ETA, marked as estimated (the reporter grows it when the dump is bigger).
        # Listed once, before the dump: it is also what the data-loss checks compare with.
        previous = _newest(repo, source)
        meter = ctx.meter(previous.size if previous is not None else None, estimated=True)
        # The session (and its lock, which may be waited for) before the dump: nothing is
        # copied or started on the source while this backup waits; an interrupt then leaves
        # nothing behind (a SQLite backup's plain copy stayed in the temp dir).
        with (
            repo.session(
                source=source, kind=kind, host=ctx.target.host.name, recipients=recipients
            ) as session,
            dump_cm as dump,
        ):
            info = session.add_stream(stream, dump, progress=meter.set)
            meter.flush()
            facts = dump.finish()
            session.set_facts(facts)
            session.meta.update(public(facts))
            backup = session.commit()
    result = _backup_result(
        backup,
        info,
        previous,
        time.monotonic() - started,
        ctx.params["min_size_ratio"],
        list(facts.get("warnings", [])),
    )
    # The journal's record of this commit, which verify looks for: by repository id, since a
    # repository deleted and made again under the same name holds none of the old backups.
    result.details["repository"] = repo_cfg.name
    result.details["repository_id"] = repository_id
    return result


@task(
    "backup.verify",
    targets="repository",
    params={
        "read_data": Param(bool, default=False, help="download every object and check its hash"),
        "read_data_subset": Param(
            "share", help="check only this share of the data, rotating across runs"
        ),
        "decrypt": Param(bool, default=False, help="also decrypt every chunk (needs the identity)"),
    },
)
def backup_verify(ctx: TaskContext) -> TaskResult:
    """Check that the repository is intact: metadata, and optionally the stored data."""
    from crmmaint.repository.configured import identities_for

    cfg = ctx.target.obj
    identities = identities_for(cfg) if ctx.params["decrypt"] else None
    with open_repository(cfg, reading="verify") as repo:
        # What this journal saw committed here: a backup the storage lost or rolled back is
        # then named.
        expected = ctx.journal.backups_recorded(repo.id) if ctx.journal is not None else set()
        report = repo.verify(
            read_data=ctx.params["read_data"] or ctx.params["read_data_subset"] is not None,
            subset_percent=ctx.params["read_data_subset"],
            identities=identities,
            expected_backups=expected,
        )
    metrics = {k: float(v) for k, v in _counts(report).items()}
    if report.ok:
        return TaskResult.ok(f"repository {cfg.name} intact ({_summary(report)})", metrics=metrics)
    problems = [str(p) for p in report.problems]
    return TaskResult.failed(
        f"repository {cfg.name}: {plural(len(problems), 'problem')}, first: {problems[0]}",
        metrics=metrics,
        details={
            "problems": problems[:50],
            "error": IntegrityError.__name__,
            "exit_code": IntegrityError.exit_code,
        },
    )


#: What each rule of a prune step keeps; none is set by default, so a step that sets none
#: prunes by its repository's ``retention:`` in the inventory (docs/retention.md).
_RULE_HELP = {
    "keep_last": "keep the N newest backups of each source",
    "keep_hourly": "keep the newest backup of each of the last N hours (UTC) that have one",
    "keep_daily": "keep the newest backup of each of the last N days (UTC) that have one",
    "keep_weekly": "the same for the last N ISO weeks",
    "keep_monthly": "the same for the last N months",
    "keep_quarterly": "the same for the last N quarters",
    "keep_yearly": "the same for the last N years",
    "keep_within": "keep every backup at most this old (e.g. 36h, 2d)",
}
#: Where a prune's policy came from -> how its message says so ({} is the repository).
POLICY_ORIGINS = {
    "step": "as given to this prune",
    "inventory": "from the inventory's retention of repository {}",
}
NO_POLICY_HINT = (
    "give one as flags, e.g. `crmmaint prune --keep-daily 7 --keep-within 2d`; as with: "
    "keep_daily: 7 in the playbook step; or as retention: on the repository in the inventory; "
    "see docs/retention.md"
)


@task(
    "backup.prune",
    targets="repository",
    params={
        key: Param("duration" if key == "keep_within" else int, help=_RULE_HELP[key])
        for key in POLICY_KEYS
    },
)
def backup_prune(ctx: TaskContext) -> TaskResult:
    """Remove backups outside the retention policy (a dry run in check mode); the details list
    every backup with its decision and the reasons that keep it."""
    cfg = ctx.target.obj
    policy, origin = prune_policy(ctx.params, cfg)
    with open_repository(cfg) as repo:
        report = repo.prune(policy, now=time.time(), dry_run=ctx.check)
    removed = list(report.remove)
    verb = "would remove" if ctx.check else "removed"
    message = f"{verb} {plural(len(removed), 'backup')}, kept {len(report.keep)}"
    if not ctx.check:
        message += f", freed {format_size(report.bytes_freed)}"
        if report.leftovers_removed:
            message += f", removed {plural(report.leftovers_removed, 'leftover')} of killed writers"
    message += f"; policy {policy.describe()} ({POLICY_ORIGINS[origin].format(cfg.name)})"
    metrics = {
        "removed": float(len(removed)),
        "kept": float(len(report.keep)),
        "freed_bytes": float(report.bytes_freed),
        "leftovers_removed": float(report.leftovers_removed),
    }
    details = {
        "removed": removed,
        "policy": policy.describe(),
        "policy_from": origin,
        "backups": [
            {
                "id": v.backup.id,
                "source": v.backup.source,
                "time": datetime.fromtimestamp(v.backup.time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "drilled": v.backup.drilled,
                "decision": "keep" if v.kept else "remove",
                "reasons": list(v.reasons),
            }
            for v in report.verdicts
        ],
    }
    if not removed:
        return TaskResult.ok(message, metrics=metrics, details=details)
    return TaskResult.changed(message, metrics=metrics, details=details)


def prune_policy(params: dict[str, Any], cfg: Any) -> tuple[RetentionPolicy, str]:
    """The policy a prune applies and where it comes from (a key of ``POLICY_ORIGINS``): the
    step's ``keep_*`` parameters (a command's flags, a playbook's ``with:``) when any is set,
    as a whole, else the repository's ``retention:`` in the inventory (``cfg``, its
    ``RepositorySettings``). Raises ``ConfigError`` (exit 3) when neither sets one, or when the
    step's rules are invalid (a negative count)."""
    given = {k: v for k, v in params.items() if k in POLICY_KEYS and v is not None}
    if given:
        return RetentionPolicy(**given), "step"
    if cfg.retention is not None:
        return cfg.retention, "inventory"
    raise ConfigError(
        f"no retention policy for repository {cfg.name!r}: refusing to prune", hint=NO_POLICY_HINT
    )


# --- helpers ---------------------------------------------------------------------------------


def _row_totals(facts: dict[str, Any]) -> dict[str, Any]:
    """Non-secret totals kept readable with the write key alone (for data-loss warnings)."""
    counts = facts.get("row_counts") or {}
    return {"tables": len(facts.get("tables", [])), "rows": int(sum(counts.values()))}


def _newest(repo: Any, source: str) -> Any:
    """The newest committed backup of ``source``, or ``None``."""
    backups = repo.backups(source=source)
    return max(backups, key=lambda b: b.time) if backups else None


def _backup_result(
    backup: Any,
    info: Any,
    previous: Any,
    seconds: float,
    min_ratio: float,
    notes: list[str],
) -> TaskResult:
    """The result of a committed backup: changed, or a warning for each sign of lost data
    (``notes`` from the dump: files that changed while read; a backup, a row count or a file-set
    root much smaller than the previous backup's; a file-set root with no files)."""
    metrics = {
        "size_bytes": float(backup.size),
        "stored_bytes": float(backup.stored_bytes),
        "dedup_ratio": float(backup.dedup_ratio),
        "seconds": seconds,
        "mb_per_s": backup.size / 1e6 / seconds if seconds > 0 else 0.0,
    }
    rows = backup.meta.get("rows") if isinstance(backup.meta, dict) else None
    if rows is not None:
        metrics["rows"] = float(rows)
    details = {"backup": backup.id, "source": backup.source, "stream": info.name}
    message = (
        f"backup {backup.id}: {format_size(backup.size)}, {format_size(backup.stored_bytes)} new "
        f"({backup.dedup_ratio:.0%} already stored) in {seconds:.1f}s"
    )
    warnings: list[str] = []
    if notes:
        details["dump_warnings"] = notes
        warnings.append(
            f"kept with {plural(len(notes), 'warning')} from the dump, the backup holds what was read: "
            + "; ".join(notes[:5])
            + ("; …" if len(notes) > 5 else "")
        )
    if previous is not None and previous.size > 0 and backup.size < previous.size * min_ratio:
        warnings.append(
            f"only {backup.size / previous.size:.0%} of the previous backup "
            f"{previous.id} ({format_size(previous.size)}): check for data loss"
        )
    prev_meta = previous.meta if previous is not None and isinstance(previous.meta, dict) else {}
    prev_rows = prev_meta.get("rows")
    if rows is not None and prev_rows and rows < prev_rows * min_ratio:
        warnings.append(
            f"{rows} rows against {prev_rows} in the previous backup: check for data loss"
        )
    meta = backup.meta if isinstance(backup.meta, dict) else {}
    warnings += _shrunk_roots(meta.get("roots") or {}, prev_meta.get("roots") or {}, min_ratio)
    if warnings:
        return TaskResult.warning(
            f"{message}; " + "; ".join(warnings), metrics=metrics, details=details
        )
    return TaskResult.changed(message, metrics=metrics, details=details)


def _shrunk_roots(
    roots: dict[str, dict[str, int]], previous: dict[str, dict[str, int]], min_ratio: float
) -> list[str]:
    """A warning for each file-set root that holds no files, or fewer files or bytes than
    ``min_ratio`` of the previous backup's (a path emptied, a mount missing, a link broken)."""
    notes = []
    for path, now in roots.items():
        before = previous.get(path) or {}
        if not now.get("files"):
            notes.append(
                f"{path} holds no files"
                + (f" (the previous backup had {before['files']})" if before.get("files") else "")
            )
            continue
        if before.get("files") and now["files"] < before["files"] * min_ratio:
            notes.append(
                f"{path} holds {now['files']} against {before['files']} files in the previous "
                "backup: check for data loss"
            )
        elif before.get("bytes") and now.get("bytes", 0) < before["bytes"] * min_ratio:
            notes.append(
                f"{path} holds {format_size(now.get('bytes', 0))} against {format_size(before['bytes'])} in "
                "the previous backup: check for data loss"
            )
    return notes


def _counts(report: Any) -> dict[str, int]:
    return {k: v for k, v in vars(report).items() if isinstance(v, int) and not isinstance(v, bool)}


def _summary(report: Any) -> str:
    """The counts of a verify report as words; ``bytes_read`` -> ``"146 MiB read"``,
    ``packs_read`` -> ``"1 pack read"`` / ``"2 packs read"``."""
    return (
        ", ".join(
            f"{format_size(v)} {k.removeprefix('bytes_').replace('_', ' ')}"
            if k.startswith("bytes_")
            else f"{v} {_counted(k, v)}"
            for k, v in _counts(report).items()
        )
        or "ok"
    )


def _counted(key: str, count: int) -> str:
    """A count's words agreeing with it: the plural noun is the last word ending in ``s``
    (``packs_read``, ``index_segments``); one of it drops the ``s``."""
    words = key.split("_")
    if count == 1:
        last = max((i for i, w in enumerate(words) if w.endswith("s")), default=None)
        if last is not None:
            words[last] = words[last][:-1]
    return " ".join(words)
