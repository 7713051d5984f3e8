"""``drill.restore``: prove a backup restores, and record the proof in the repository.

The newest backup of a database is restored into a scratch database next to the original, or
where the inventory's ``drills:`` section says (another host and server), its tables, exact row counts, schema fingerprint and sequences are
compared with the facts recorded in the same snapshot as the dump, the scratch copy is dropped, and
the backup is marked as drilled, which ``backups list`` shows and prune protects.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from crmmaint.access import identities_for, open_repository
from crmmaint.engines.base import DumpLayout
from crmmaint.errors import ConfigError
from crmmaint.results import TaskResult
from crmmaint.tasks.api import Param, TaskContext, task
from crmmaint.tasks.backup import REPOSITORY, source_name


class IterReader:
    """``read(n)`` over an iterator of byte strings (repository stream -> engine restore)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")

    def read(self, size: int = 1 << 20) -> bytes:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return b""
        out, self._buf = self._buf[:size], self._buf[size:]
        return bytes(out)


def restore_source(
    repo: Any, backup_id: str, stream: str, identities: Any, facts: Mapping[str, Any]
) -> tuple[IterReader, DumpLayout | None]:
    """The stored stream to restore from, and random access to it when the backup recorded
    where its COPY blocks are (parallel table loads); keys and index are checked here."""
    ranges = repo.stream_ranges(backup_id, stream, identities)
    what = f"{backup_id}/{stream}"

    def open_range(start: int, end: int) -> IterReader:
        return IterReader(ranges.read(start, end, what=what, prefetch=2))

    layout = DumpLayout.from_facts(facts, ranges.size, open_range)
    return IterReader(ranges.read(what=what)), layout


def scratch_name(db: Any, now: float) -> str:
    """A scratch database name (or file name for SQLite) that cannot collide with a real one."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    base = "".join(ch if ch.isalnum() else "_" for ch in db.name)[:30]
    return f"crmdrill_{base}_{stamp}"


@task(
    "drill.restore",
    targets="database",
    params={
        "repository": REPOSITORY,
        "backup": Param(str, default="latest", help="backup id, or latest"),
        "keep": Param(bool, default=False, help="keep the scratch database for inspection"),
        "identity": Param(str, help="identity file to decrypt with (default: the repository's)"),
    },
)
def drill_restore(ctx: TaskContext) -> TaskResult:
    """Restore the newest backup of a database into a scratch copy and compare its facts."""
    from crmmaint.engines import engine_for
    from crmmaint.engines.base import compare_facts

    db = ctx.target.obj
    repo_cfg = ctx.inventory.repository(ctx.params["repository"])
    with open_repository(repo_cfg, reading=f"drill database:{db.name}") as repo:
        backups = repo.backups(source=source_name("database", db.name))
        if not backups:
            return TaskResult.failed(
                f"no backup of database {db.name} in repository {repo_cfg.name} to drill",
                details={"hint": "run backup.database first"},
            )
        wanted = ctx.params["backup"]
        if wanted == "latest":
            backup = max(backups, key=lambda b: b.time)
        else:
            matches = [b for b in backups if b.id == wanted]
            if not matches:
                raise ConfigError(
                    f"no backup {wanted!r} of database {db.name}",
                    hint="see `crmmaint backups list`",
                )
            backup = matches[0]
        identities = identities_for(repo_cfg, ctx.params["identity"])
        manifest = repo.manifest(backup.id, identities)
        expected = manifest.facts
        if ctx.check:
            return TaskResult.ok(
                f"would restore backup {backup.id} of {db.name} into a scratch database and compare "
                f"{len(expected.get('tables', []))} tables",
                details={"check": True, "backup": backup.id},
            )
        drill_db, drill_host = ctx.inventory.drill_database(db.name)
        engine = engine_for(drill_db, ctx.transport_for(drill_host))
        target = scratch_name(db, time.time())
        started = time.monotonic()
        try:
            reader, layout = restore_source(repo, backup.id, "dump", identities, expected)
            actual = engine.restore(reader, target_name=target, layout=layout)
            problems = compare_facts(expected, actual)
        except BaseException:
            # The restore's own failure is what the drill reports (it removed its target;
            # a failure to remove it again is only logged).
            engine.drop_quietly(target)
            raise
        if not ctx.params["keep"]:
            engine.drop(target)
        seconds = time.monotonic() - started
        record = {
            "time": time.time(),
            "ok": not problems,
            "seconds": round(seconds, 3),
            "problems": problems[:20],
            "run_id": ctx.run_id,
        }
        if not problems:
            repo.mark_drilled(backup.id, record)
    rows = sum((actual.get("row_counts") or {}).values())
    metrics = {
        "restore_seconds": seconds,
        "rows": float(rows),
        "tables": float(len(actual.get("tables", []))),
    }
    details = {
        "backup": backup.id,
        "scratch": target,
        "on": drill_host.name,
        "kept": ctx.params["keep"],
    }
    if problems:
        return TaskResult.failed(
            f"drill of backup {backup.id} found {len(problems)} difference(s): {problems[0]}",
            metrics=metrics,
            details={**details, "problems": problems},
        )
    return TaskResult.ok(
        f"backup {backup.id} restored on {drill_host.name} in {seconds:.1f}s: "
        f"{len(actual.get('tables', []))} tables, "
        f"{rows} rows, schema identical",
        metrics=metrics,
        details=details,
    )
