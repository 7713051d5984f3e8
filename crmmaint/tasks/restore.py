"""Restoring a backup: choosing it (``find_backup``), loading it (``restore_database``,
``restore_fileset``: the one load every restore goes through), the tasks ``restore.database`` and
``restore.files`` (what ``crmmaint restore`` runs as a one-step playbook, so every restore is
journaled and honours ``--check``), and ``drill.restore``, which proves a backup restores and
records the proof in the repository.

The newest backup of a database is restored into a scratch database next to the original, or
where the inventory's ``drills:`` section says (another host and server); its tables, exact row
counts, schema fingerprint, sequences and table contents are compared with the facts recorded
in the same snapshot as the dump, the team's assertions are checked, the scratch copy is
dropped, and the backup is marked as drilled, which ``backups list`` shows and prune protects.
"""

from __future__ import annotations

import calendar
import logging
import os
import posixpath
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from crmmaint.assertions import Assertion
from crmmaint.engines.base import DumpLayout, Facts, list_prefixed
from crmmaint.errors import (
    ConfigError,
    CrmMaintError,
    IntegrityError,
    RestoreError,
    RestoreTargetExists,
    Setting,
)
from crmmaint.inventory import Database, FileSet
from crmmaint.processes import still_running, this_process
from crmmaint.repository.configured import identities_for, open_repository
from crmmaint.repository.format import source_name
from crmmaint.results import TaskResult
from crmmaint.tasks.api import REPOSITORY_PARAM, ByteMeter, Param, TaskContext, task
from crmmaint.transport.base import Transport
from crmmaint.units import format_duration, format_elapsed, format_size, plural

log = logging.getLogger(__name__)


class IterReader:
    """``read(n)`` over an iterator of byte strings (repository stream -> engine restore);
    ``progress`` counts each piece as the engine takes it, and is flushed at the end (the last
    count shows while the engine finishes: a parallel load's seams leave the count a few bytes
    short of the total, which would otherwise never be reported)."""

    def __init__(self, chunks: Iterator[bytes], progress: ByteMeter | None = None) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")
        self._progress = progress

    def read(self, size: int = 1 << 20) -> bytes:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                if self._progress is not None:
                    self._progress.flush()
                    self._progress = None
                return b""
        out, self._buf = self._buf[:size], self._buf[size:]
        if self._progress is not None:
            self._progress.add(len(out))
        return bytes(out)


def restore_source(
    repo: Any,
    backup_id: str,
    stream: str,
    identities: Any,
    facts: Mapping[str, Any],
    progress: ByteMeter | None = None,
) -> tuple[IterReader, DumpLayout | None]:
    """The stored stream to restore from, and random access to it when the backup recorded
    where its COPY blocks are (parallel table loads); keys and index are checked here. Every
    reader made tells ``progress`` what it reads (the ranges of a parallel load add up to
    the stream, give or take the rows at their seams)."""
    ranges = repo.stream_ranges(backup_id, stream, identities)
    what = f"{backup_id}/{stream}"

    def open_range(start: int, end: int) -> IterReader:
        return IterReader(ranges.read(start, end, what=what, prefetch=2), progress)

    layout = DumpLayout.from_facts(facts, ranges.size, open_range)
    return IterReader(ranges.read(what=what), progress), layout


def find_backup(repo: Any, ref: str, *, source: str | None = None) -> Any:
    """The backup ``ref`` names: an id or a unique prefix of one, ``SOURCE@latest``
    (``database:crm@latest``), or ``latest`` with ``source`` given. A damaged manifest is named
    (``IntegrityError``); no match or an ambiguous prefix is a ``ConfigError``."""
    backups = repo.backups()
    named = [i for i in repo.damaged_manifests if i == ref or i.startswith(ref)]
    if named and not [b for b in backups if b.id.startswith(ref)]:
        raise IntegrityError(
            f"backup {named[0]} is damaged: {repo.damaged_manifests[named[0]]}",
            hint="restore another backup; `crmmaint repo repair` moves this one aside",
        )
    if ref == "latest" and source is not None:
        ref = f"{source}@latest"
    if ref.endswith("@latest"):
        wanted = ref[: -len("@latest")]
        matching = [b for b in backups if b.source == wanted]
        if not matching:
            raise ConfigError(f"no backup of {wanted!r}", hint="see `crmmaint backups list`")
        return max(matching, key=lambda b: b.time)
    matching = [b for b in backups if (b.id == ref or b.id.startswith(ref))]
    if source is not None:
        others = sorted({b.source for b in matching if b.source != source})
        matching = [b for b in matching if b.source == source]
        if not matching and others:
            raise ConfigError(
                f"backup {ref!r} is a backup of {', '.join(others)}, not of {source}",
                hint=f"see `crmmaint backups list --source {source}`",
            )
    if len(matching) != 1:
        what = "no backup" if not matching else f"{len(matching)} backups match"
        raise ConfigError(f"{what} {ref!r}", hint="see `crmmaint backups list`")
    return matching[0]


def restore_database(
    repo: Any,
    backup: Any,
    identities: Any,
    *,
    db: Database,
    transport: Transport,
    to: str,
    force: bool = False,
    jobs: int | None = None,
    timeout: float | None = None,
    progress: ByteMeter | None = None,
) -> Facts:
    """Restore a database backup into a new database ``to`` on ``db``'s server (reached through
    ``transport``): its keys and index are checked first, the load streams (within
    ``timeout`` seconds when given, telling ``progress`` the bytes read from the backup), and
    a failed load leaves no target (``DatabaseEngine.restore``). Returns the restored copy's
    facts."""
    from crmmaint.engines import engine_for

    manifest = repo.manifest(backup.id, identities)  # WrongKeyError before anything is written
    engine = engine_for(db, transport)
    stream = backup.streams[0] if backup.streams else "dump"
    reader, layout = restore_source(repo, backup.id, stream, identities, manifest.facts, progress)
    extra = {} if jobs is None else {"jobs": jobs}
    return engine.restore(
        reader, target_name=to, force=force, layout=layout, timeout=timeout, **extra
    )


def restore_fileset(
    repo: Any,
    backup: Any,
    identities: Any,
    *,
    fileset: FileSet,
    transport: Transport,
    to: str,
    force: bool = False,
    progress: ByteMeter | None = None,
) -> Facts:
    """Restore a file-set backup into the directory ``to`` on the file set's host, telling
    ``progress`` the bytes read from the backup."""
    from crmmaint.engines.files import FileSetSource

    repo.manifest(backup.id, identities)  # WrongKeyError before anything is written
    source = FileSetSource(fileset, transport)
    return source.restore(
        IterReader(repo.read_stream(backup.id, "tar", identities), progress), to, force=force
    )


_BACKUP = Param(
    str, default="latest", help="backup id or a unique prefix of one, or latest (the newest)"
)
_TO = Param(str, required=True, help="the new database (SQLite: file) or directory to restore into")
_FORCE = Param(bool, default=False, help="replace an existing target")
_IDENTITY = Param(str, help="identity file to decrypt with (default: the repository's)")


@task(
    "restore.database",
    targets="database",
    params={
        "repository": REPOSITORY_PARAM,
        "backup": _BACKUP,
        "to": _TO,
        "force": _FORCE,
        "identity": _IDENTITY,
        "jobs": Param(
            int,
            default=2,
            help="connections a PostgreSQL restore loads and indexes on (1 to 64)",
        ),
    },
)
def restore_database_task(ctx: TaskContext) -> TaskResult:
    """Restore a backup of the target database into a new database ``to`` on the same server.

    The backup's keys are checked before anything is written, also in check mode, which then
    reports what would be restored where. Metrics: ``restore_seconds``, ``rows``, ``tables``.
    """
    db = ctx.target.obj
    jobs = ctx.params["jobs"]
    if not 1 <= jobs <= 64:
        given = Setting("jobs", jobs)
        raise ConfigError(
            f"{given} is out of range", hint="use 1 to 64 connections", settings=[given]
        )
    return _restore(ctx, "database", db.name, ctx.target.host.name)


@task(
    "restore.files",
    targets="fileset",
    params={
        "repository": REPOSITORY_PARAM,
        "backup": _BACKUP,
        "to": _TO,
        "force": _FORCE,
        "identity": _IDENTITY,
    },
)
def restore_files_task(ctx: TaskContext) -> TaskResult:
    """Restore a backup of the target file set into the directory ``to`` on the file set's host
    (paths below it as they were: ``to/srv/crm/attachments/...``). Metric: ``files``."""
    return _restore(ctx, "fileset", ctx.target.obj.name, ctx.target.host.name)


def _restore(ctx: TaskContext, kind: str, name: str, host: str) -> TaskResult:
    """The one body of ``restore.database`` and ``restore.files``."""
    params = ctx.params
    repo_cfg = ctx.inventory.repository(params["repository"])
    to = params["to"]
    identities = identities_for(repo_cfg, params["identity"])
    # What the restore would refuse, refused before anything is read or written (and in
    # check mode): a bad, reserved or source name, an existing target without --force, and
    # crmmaint's own files (repository, journal, keys, inventory) on this machine.
    target, replacing = _preflight(ctx, kind, to, params["force"])
    with open_repository(repo_cfg, reading=f"restore {kind}:{name}") as repo:
        backup = find_backup(repo, params["backup"], source=source_name(kind, name))
        manifest = repo.manifest(backup.id, identities)  # key custody, before anything else
        details = {"backup": backup.id, "source": backup.source, "to": target, "on": host}
        if ctx.check:
            tables = len(manifest.facts.get("tables", []))
            files = int(manifest.facts.get("files", 0))
            what = f"{tables} tables" if kind == "database" else f"{files} files"
            return TaskResult.changed(  # in check mode: would change
                f"would restore backup {backup.id} of {backup.source} ({format_size(backup.size)}, "
                f"{what}) into {target} on {host}"
                + (", replacing what is there" if replacing else ""),
                details={**details, "check": True},
            )
        started = time.monotonic()
        progress = ctx.meter(backup.size)  # the manifest's size: the bar's total
        if kind == "database":
            facts = restore_database(
                repo, backup, identities, db=ctx.target.obj, transport=ctx.transport, to=to,
                force=params["force"], jobs=params["jobs"], timeout=ctx.time_left(),
                progress=progress,
            )  # fmt: skip
        else:
            facts = restore_fileset(
                repo, backup, identities, fileset=ctx.target.obj, transport=ctx.transport,
                to=to, force=params["force"], progress=progress,
            )  # fmt: skip
    seconds = time.monotonic() - started
    if kind == "database":
        rows = sum((facts.get("row_counts") or {}).values())
        tables = len(facts.get("tables", []))
        what = f"{tables} tables, {rows} rows"
        metrics = {"restore_seconds": seconds, "rows": float(rows), "tables": float(tables)}
        if facts.get("owner"):
            what += f"; loaded as {facts['owner']}, which owns what it created"
            details["owner"] = facts["owner"]
    else:
        files = int(facts.get("files", 0))
        what = f"{files} files"
        metrics = {"restore_seconds": seconds, "files": float(files)}
    return TaskResult.changed(
        f"restored {backup.id} into {to} on {host}: {what} in {seconds:.1f}s",
        metrics=metrics,
        details=details,
    )


def _preflight(ctx: TaskContext, kind: str, to: str, force: bool) -> tuple[str, bool]:
    """The restore's own checks of ``to`` (``RestoreRoutine.preflight``), and on this machine
    none of crmmaint's own files: ``(target, replacing)``; raises ``RestoreError``."""
    from crmmaint.engines import engine_for
    from crmmaint.engines.files import FileSetSource

    engine: Any = (
        engine_for(ctx.target.obj, ctx.transport)
        if kind == "database"
        else FileSetSource(ctx.target.obj, ctx.transport)
    )
    target, replacing = engine.preflight(to, force=force)
    if ctx.target.host.is_local and target.startswith("/"):
        for path, what in _crmmaint_files(ctx).items():
            if target == path or path.startswith(target.rstrip("/") + "/"):
                raise RestoreError(
                    f"refusing to restore into {target}: it is or holds {what} ({path})",
                    hint="restore somewhere crmmaint keeps nothing",
                )
    return target, replacing


def _crmmaint_files(ctx: TaskContext) -> dict[str, str]:
    """crmmaint's own files on this machine, by real path: repositories on disk, key files,
    the journal and the inventory (a forced restore must never replace them)."""
    found: dict[str, str] = {}

    def add(path: str | None, what: str) -> None:
        if path:
            found[os.path.realpath(os.path.expanduser(path))] = what

    for repo in ctx.inventory.repositories.values():
        if repo.url.startswith("file://"):
            add(repo.url[len("file://") :], f"repository {repo.name}")
        add(repo.write_key, f"the write key of repository {repo.name}")
        add(repo.identity, f"the identity of repository {repo.name}")
        for ref in repo.recipients:
            if ref.startswith("file:"):
                add(ref[len("file:") :], f"a recipients file of repository {repo.name}")
    if ctx.journal is not None:
        add(str(ctx.journal.path), "crmmaint's journal")
    if ctx.inventory.path:
        add(str(ctx.inventory.path), "the inventory")
    return found


#: The prefix of every scratch copy a drill makes (a database, a SQLite file, a directory):
#: a drill never removes anything without it.
SCRATCH_PREFIX = "crmdrill_"

#: Where a file set's drill extracts when its ``drills:`` entry names no directory: on disk
#: (not a tmpfs ``/tmp``), and kept across reboots only until the system cleans it.
DEFAULT_DRILL_DIRECTORY = "/var/tmp"


def scratch_name(db: Any, now: float, *, kept: bool = False) -> str:
    """A scratch database name (or file name for SQLite) that cannot collide with a real one,
    nor with another drill's: ``crmdrill_<name>_<UTC time>_<6 random hex digits>`` (at most
    60 characters, within PostgreSQL's 63 and MariaDB's 64), since drills of estates whose
    databases share a name may run on one server in the same second. A copy to be kept
    (``--keep``) ends in ``_kept``: no sweep of stale copies (``stale_scratch``) takes it."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    return f"{scratch_prefix(db.name, kept=kept)}{stamp}_{secrets.token_hex(3)}" + (
        "_kept" if kept else ""
    )


def scratch_prefix(name: str, *, kept: bool = False) -> str:
    """What every scratch copy of source ``name`` starts with: ``crmdrill_<name>_`` (the
    name with anything but ASCII letters and digits as ``_``, cut to fit the name length)."""
    base = "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in name)[
        : 25 if kept else 30
    ]
    return f"{SCRATCH_PREFIX}{base}_"


#: A scratch copy this old (its name's UTC time), not recorded as running on this machine,
#: is taken for one a killed drill left, on another machine too, and removed by the next
#: drill of its source (``stale_scratch``).
STALE_SCRATCH_SECONDS = 86400


def stale_scratch(names: list[str], source_name: str, now: float) -> list[str]:
    """Those of ``names`` (database names or paths) that are scratch copies of source
    ``source_name`` made more than ``STALE_SCRATCH_SECONDS`` before ``now``, judged by the
    UTC time in their name; kept copies (``_kept``) and names of another shape are never."""
    pattern = re.compile(re.escape(scratch_prefix(source_name)) + r"(\d{14})_[0-9a-f]{6}\Z")
    found = []
    for name in names:
        match = pattern.match(posixpath.basename(name))
        if match is None:
            continue
        try:
            made = calendar.timegm(time.strptime(match.group(1), "%Y%m%d%H%M%S"))
        except ValueError:
            continue
        if now - made > STALE_SCRATCH_SECONDS:
            found.append(name)
    return found


class Phases:
    """The phases of a drill and how long each took (seconds): ``preflight`` (the backup
    found, its keys unwrapped, the target checked), ``restore`` (fetch, decrypt and load:
    one streamed pipeline, so not separable), ``verify`` (the restored copy read back and
    compared), ``cleanup`` (the scratch copy removed)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._began = time.monotonic()
        self._mark = self._began

    def end(self, phase: str, *, moved_on: float = 0.0) -> None:
        """The phase ``phase`` ends now (it began where the previous one ended); its last
        ``moved_on`` seconds belong to the next phase already (the restore's read-back of
        the copy, done by the engine, is the verify phase's work)."""
        now = time.monotonic()
        moved_on = min(max(moved_on, 0.0), now - self._mark)
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._mark - moved_on, 3)
        self._mark = now - moved_on

    @property
    def total(self) -> float:
        """Seconds since the drill began."""
        return time.monotonic() - self._began


@task(
    "drill.restore",
    targets=("database", "fileset"),
    params={
        "repository": REPOSITORY_PARAM,
        "backup": Param(str, default="latest", help="backup id, or latest"),
        "keep": Param(bool, default=False, help="keep the scratch copy for inspection"),
        "identity": Param(str, help="identity file to decrypt with (default: the repository's)"),
        "target": Param(
            str,
            help="the scratch copy's name (database, SQLite file or directory); default "
            "crmdrill_<source>_<time>_<random>; an existing one is refused",
        ),
        "rto": Param(
            "duration",
            help="recovery time objective: a drill taking longer is a warning (default: the "
            "source's drills: entry in the inventory)",
        ),
        "rto_exceeded": Param(
            str, choices=("warn", "fail"), help="what a drill over its objective is (default warn)"
        ),
        "assertions": Param(
            "assertions",
            default=[],
            help="a database's own checks of the copy, after those of its drills: entry: a "
            "list of {query, expect, name}, e.g. {query: 'select count(*) from customers "
            "where email is null', expect: '== 0'} (docs/drills.md)",
        ),
    },
)
def drill_restore(ctx: TaskContext) -> TaskResult:
    """Restore a backup of a database or file set into a scratch copy, check it against what
    the backup recorded, time it against the recovery time objective, remove the copy.

    Databases: tables, exact row counts, schema fingerprint, sequences, each table's content
    (``table_checksums``, the copy read back as the backup read the source) and the
    ``assertions`` of the source's ``drills:`` entry and the step; file sets: every file's
    sha256, size and mode, and every link's target. Metrics: ``drill_seconds`` and one ``<phase>_seconds`` per phase
    (``Phases``), ``restore_seconds`` (the restore phase), ``rows``/``tables`` or ``files``.
    The backup is marked drilled only when every check passed. Raises what the restore
    raises (a wrong key: ``WrongKeyError``; an existing target: ``RestoreTargetExists``).
    """
    from crmmaint.engines.base import compare_facts, fact_checks

    phases = Phases()
    kind = "fileset" if ctx.target.kind == "fileset" else "database"
    obj = ctx.target.obj
    settings = ctx.inventory.drill_settings(kind, obj.name)
    rto = ctx.params["rto"] if ctx.params["rto"] is not None else settings.rto
    exceeded = ctx.params["rto_exceeded"] or settings.rto_exceeded
    repo_cfg = ctx.inventory.repository(ctx.params["repository"])
    source = source_name(kind, obj.name)
    # SQL: a step that drills databases and file sets alike checks them on its databases
    assertions = [*settings.assertions, *ctx.params["assertions"]] if kind == "database" else []
    with open_repository(repo_cfg, reading=f"drill {source}") as repo:
        if not repo.backups(source=source):
            return TaskResult.failed(
                f"no backup of {source} in repository {repo_cfg.name} to drill",
                details={
                    "hint": f"run backup.{'files' if kind == 'fileset' else 'database'} first"
                },
            )
        backup = find_backup(repo, ctx.params["backup"], source=source)
        ctx.known.update(backup=backup.id, source=source, repository=repo_cfg.name)
        identities = identities_for(repo_cfg, ctx.params["identity"])
        expected = repo.manifest(backup.id, identities).facts  # key custody, before anything
        scratch = _Scratch(ctx, kind, ctx.params["target"])
        ctx.known.update(scratch=scratch.name, on=scratch.host.name)
        leftovers = [] if ctx.check else scratch.remove_leftovers(source)
        refused, checked = scratch.preflight(expected, backup.size, settings.min_free)
        if refused:
            return TaskResult.failed(
                f"drill of backup {backup.id} refused before anything was restored: "
                + "; ".join(refused),
                details={"backup": backup.id, "source": source, "preflight": checked,
                         "problems": refused},
                retryable=False,
            )  # fmt: skip
        if ctx.check:
            what = (
                f"{int(expected.get('files', 0))} files"
                if kind == "fileset"
                else f"{len(expected.get('tables', []))} tables"
            )
            if assertions:
                what += f" and check {plural(len(assertions), 'assertion')}"
            return TaskResult.changed(  # in check mode: would change
                f"would restore backup {backup.id} of {source} into {scratch.name} on "
                f"{scratch.host.name} and compare {what}",
                details={
                    "check": True,
                    "backup": backup.id,
                    "scratch": scratch.name,
                    "preflight": checked,
                },
            )
        phases.end("preflight")
        scratch.register(source)
        try:
            # A failed restore removed what it made itself (the engines' restore routine); a
            # target it found existing is never removed here: it is not this drill's.
            actual = scratch.restore(repo, backup, identities, ctx)
            # the restored copy read back (its counts, schema, checksums) is the check's
            phases.end("restore", moved_on=float(actual.get("read_back_seconds", 0.0)))
            try:
                sums, said = scratch.content_checksums(expected, ctx.time_left())
                if sums is not None:
                    actual["table_checksums"] = sums
                if said:
                    checked.append(said)
                problems = compare_facts(expected, actual)
                checks = fact_checks(expected, actual)
                for check in scratch.check_assertions(assertions, backup.time, ctx.time_left):
                    checks.append(check)
                    if not check["ok"]:
                        problems.append(check.pop("problem"))
                phases.end("verify")
            except BaseException:
                # The comparison's failure (or an interrupt) is what the drill reports; the
                # scratch copy goes on the cleanup's own time.
                scratch.remove(quietly=True)
                raise
            if not ctx.params["keep"]:
                scratch.remove()
            phases.end("cleanup")
        finally:
            scratch.unregister(source)
        seconds = phases.total
        over = rto is not None and seconds > rto
        record = {
            "time": time.time(),
            "ok": not problems,
            "seconds": round(seconds, 3),
            "phases": phases.seconds,
            "rto": rto,
            "problems": problems[:20],
            "run_id": ctx.run_id,
        }
        if not problems:
            repo.mark_drilled(backup.id, record)
    metrics: dict[str, float] = {
        "drill_seconds": seconds,
        "restore_seconds": phases.seconds["restore"],
        **{f"{phase}_seconds": value for phase, value in phases.seconds.items()},
    }
    if kind == "fileset":
        metrics["files"] = float(actual.get("files", 0))
        what = f"{int(actual.get('files', 0))} files, contents identical"
    else:
        rows = sum((actual.get("row_counts") or {}).values())
        metrics.update(rows=float(rows), tables=float(len(actual.get("tables", []))))
        same = "schema and contents" if "table_checksums" in actual else "schema"
        what = f"{plural(len(actual.get('tables', [])), 'table')}, {plural(rows, 'row')}, {same} identical"
        if assertions:
            what += f", {plural(len(assertions), 'assertion')} held"
    if rto is not None:
        metrics["rto_seconds"] = rto
    details: dict[str, Any] = {
        "backup": backup.id,
        "source": source,
        "repository": repo_cfg.name,
        "scratch": scratch.name,
        "on": scratch.host.name,
        "kept": ctx.params["keep"],
        "phases": phases.seconds,
        "rto": rto,
        "preflight": checked,
        "checks": checks,
    }
    timing = f"in {format_elapsed(seconds)}" + (
        f" (objective {format_duration(rto)})" if rto is not None else ""
    )
    kept = (
        f"; the copy is kept: {scratch.shown} on {scratch.host.name} (remove it when done)"
        if ctx.params["keep"]
        else ""
    )
    if problems:
        return TaskResult.failed(
            f"drill of backup {backup.id} found {plural(len(problems), 'difference')}: "
            f"{problems[0]}{kept}",
            metrics=metrics,
            details={**details, "problems": problems},
        )
    message = f"backup {backup.id} restored on {scratch.host.name} {timing}: {what}{kept}"
    if leftovers:
        details["leftovers_removed"] = leftovers
        message += (
            f"; removed {plural(len(leftovers), 'copy', 'copies')} that earlier drills (killed, "
            f"or on another machine) left: {', '.join(leftovers)}"
        )
    if scratch.named_leftovers:
        details["leftovers_kept"] = scratch.named_leftovers
        message += (
            f"; a drill killed earlier left {', '.join(scratch.named_leftovers)} (named with "
            "--target, so never removed by a drill): remove it by hand"
        )
    if over:
        said = (
            f"drill took {format_elapsed(seconds)}, over its recovery time objective of "
            f"{format_duration(rto)}; {message}"
        )
        if exceeded == "fail":
            return TaskResult.failed(said, metrics=metrics, details=details, retryable=False)
        return TaskResult.warning(said, metrics=metrics, details=details)
    return TaskResult.ok(message, metrics=metrics, details=details)


class _Scratch:
    """The scratch copy of one drill: where it goes (a database on the drill server, a
    SQLite file or a directory on the drill host), how it is restored and removed."""

    def __init__(self, ctx: TaskContext, kind: str, name: str | None) -> None:
        from crmmaint.engines import engine_for
        from crmmaint.engines.files import FileSetSource

        self.kind = kind
        self.journal = ctx.journal
        self.source_name = ctx.target.obj.name
        #: Copies named with --target that killed drills left: never removed, only said.
        self.named_leftovers: list[str] = []
        self.other_version: str | None = None  # the drill server's, when not the source's
        obj = ctx.target.obj
        generated = scratch_name(obj, time.time(), kept=ctx.params["keep"])
        if kind == "fileset":
            self.host, directory = ctx.inventory.drill_fileset(obj.name)
            self.transport = ctx.transport_for(self.host)
            self.files = FileSetSource(obj, self.transport)
            self.name = name or posixpath.join(directory or DEFAULT_DRILL_DIRECTORY, generated)
            parent = posixpath.dirname(self.name.rstrip("/")) or "/"
            if not self.transport.run(["test", "-d", parent], timeout=60).ok:
                raise RestoreError(
                    f"the drill directory {parent} does not exist on {self.host.name}",
                    hint="create it (a drill makes only its own scratch directory), or set "
                    "another directory in the file set's drills: entry",
                )
            self._checked(self.files.preflight)
        else:
            self.db, self.host = ctx.inventory.drill_database(obj.name)
            self.transport = ctx.transport_for(self.host)
            self.engine = engine_for(self.db, self.transport)
            self.name = name or generated
            self._checked(self.engine.preflight)

    def _checked(self, preflight: Any) -> None:
        """The restore's own checks of the scratch name; an existing target is refused with
        what a drill can do about it (a drill never replaces anything: no force)."""
        try:
            preflight(self.name, force=False)
        except RestoreTargetExists as exc:
            raise RestoreError(
                exc.message,
                hint="a drill never replaces anything: give another --target (or `target:`), "
                "or leave it out for a new scratch name",
            ) from None

    # --- before anything moves -------------------------------------------------------------

    def preflight(
        self, expected: Mapping[str, Any], size: int, min_free: int
    ) -> tuple[list[str], list[str]]:
        """What would make the restore fail, found before it starts: ``(refusals, checked)``,
        each a sentence. The drill server's version must not be older than the backup's
        source server's (``version_major``; a backup that did not record it is not checked);
        where the copy goes must have room for the backup's size plus a quarter (indexes,
        a database's own overhead) plus ``min_free`` bytes (the ``drills:`` entry's floor).
        Free space is read with ``df`` on the drill host: of the directory for a file set or
        a SQLite file, of the server's data directory when the server runs on that host; a
        server elsewhere, or one that does not say where its data lives, is not checked."""
        refused: list[str] = []
        checked: list[str] = []
        if self.kind == "database" and expected.get("server_version"):
            self._check_version(str(expected["server_version"]), refused, checked)
        where = self._data_directory()
        if where is None:
            checked.append("free space not checked: the server's data directory is not on "
                           f"{self.host.name} or not readable")  # fmt: skip
            return refused, checked
        from crmmaint.engines.host import HostOS

        need = size + size // 4 + min_free
        try:
            free, mount = HostOS(self.transport).free_bytes(where)
        except (CrmMaintError, ValueError) as exc:
            checked.append(f"free space not checked: {exc}")
            return refused, checked
        said = (
            f"{format_size(free)} free on {mount} ({where}) on {self.host.name}, "
            f"{format_size(need)} needed (the backup's {format_size(size)} and a quarter"
            + (f", and the floor of {format_size(min_free)})" if min_free else ")")
        )
        (refused if free < need else checked).append(said)
        return refused, checked

    def _check_version(self, source: str, refused: list[str], checked: list[str]) -> None:
        from crmmaint.engines.base import version_major

        engine = self.db.engine
        if engine not in ("postgresql", "mysql"):
            return
        target = str(self.engine.facts(timeout=60).get("version", ""))
        have, want = version_major(engine, target), version_major(engine, source)
        if have != want:
            self.other_version = f"{target.split()[0] if target else '?'} (the backup's: " + (
                f"{source.split()[0]})"
            )
        if have is None or want is None:
            checked.append(f"server version not compared ({target!r}, backup {source!r})")
        elif have < want:
            refused.append(
                f"the drill server runs {target.split()[0]}, older than the backup's "
                f"{source.split()[0]}: it may not load the dump"
            )
        else:
            checked.append(f"server {target.split()[0]} can load a dump of {source.split()[0]}")

    def content_checksums(
        self, expected: Mapping[str, Any], timeout: float | None
    ) -> tuple[dict[str, str] | None, str | None]:
        """The restored copy's tables read back the way the backup read them
        (``DatabaseEngine.content_checksums``), to compare with the backup's
        ``table_checksums``: ``(checksums, None)``, or ``(None, why not)`` when the backup
        recorded none (taken by an earlier crmmaint) or the drill server's major version is
        not the source's (a value's text, a float's digits, may differ between versions
        without the value differing). A file set's files are compared by their own sums."""
        if self.kind != "database":
            return None, None
        if "table_checksums" not in expected:
            return None, "table contents not compared: the backup recorded no checksums of them"
        if self.other_version:
            return None, (
                "table contents not compared: the drill server runs "
                f"{self.other_version}, and values may be written otherwise"
            )
        return self.engine.for_target(self.name).content_checksums(timeout=timeout), None

    def check_assertions(
        self,
        assertions: list[Assertion],
        backup_time: float,
        time_left: Callable[[], float | None],
    ) -> list[dict[str, Any]]:
        """Run each assertion's query on the restored copy (``owner_query``: read only, as
        the copy's owner) and evaluate its condition: one check each, ``{"check",
        "expected", "found", "ok"}``, and for one that failed a ``problem`` sentence with its
        query and value. A query the server refuses fails its assertion, not the drill's
        other checks. Each query has at most ``ASSERTION_TIMEOUT`` seconds (less when the
        step's time is running out: ``time_left`` says how much, and each leaves
        ``CLEANUP_MARGIN`` for removing the copy)."""
        checks: list[dict[str, Any]] = []
        if not assertions:
            return checks
        copy = self.engine.for_target(self.name)
        for item in assertions:
            # the copy is removed after the checks: a query never takes the step's last minute
            left = time_left()
            timeout = (
                ASSERTION_TIMEOUT
                if left is None
                else max(1.0, min(ASSERTION_TIMEOUT, left - CLEANUP_MARGIN))
            )
            try:
                ok, found = item.evaluate(
                    copy.owner_query(item.query, timeout=timeout), backup_time
                )
            except Exception as exc:  # one assertion's failure, never the drill's other checks
                log.debug("assertion %r failed", item.name, exc_info=True)
                said = getattr(exc, "message", None) or f"internal error: {type(exc).__name__}"
                ok, found = False, f"error: {said.splitlines()[0][:300]}"
            check = {"check": f"assertion: {item.name}", "expected": item.expect,
                     "found": found, "ok": ok, "query": item.query}  # fmt: skip
            if not ok:
                named = "" if item.name == " ".join(item.query.split()) else f"{item.name}: "
                check["problem"] = (
                    f"assertion failed: {named}{item.query} gave {found}, expected {item.expect}"
                )
            checks.append(check)
        return checks

    def _data_directory(self) -> str | None:
        """Where the copy's bytes will be written on the drill host, ``None`` when unknown."""
        if self.kind == "fileset":
            return posixpath.dirname(self.name.rstrip("/")) or "/"
        if self.db.engine == "sqlite":
            return posixpath.dirname(self.engine.target_path(self.name))
        if self.db.address not in (None, "127.0.0.1", "localhost", "::1"):
            return None  # the server runs elsewhere: its disk is not the drill host's
        sql = (
            "SELECT setting FROM pg_catalog.pg_settings WHERE name = 'data_directory'"
            if self.db.engine == "postgresql"
            else "SELECT @@datadir"
        )
        try:
            rows = self.engine.query(sql, timeout=60)
        except CrmMaintError:
            return None
        found = rows[0][0] if rows and rows[0] else ""
        return found if found.startswith("/") else None

    # --- the running drills on this machine, in the journal --------------------------------

    def _key(self, source: str) -> str:
        return f"{_RUNNING}{source}:{self.name}"

    def register(self, source: str) -> None:
        """Record this drill as running (``drill:<source>:<scratch>`` in the journal's state:
        this process, its start time, the scratch copy), so that the next drill of
        ``source`` can tell a copy left by a killed drill from one that is still in use."""
        if self.journal is not None:
            self.journal.state_set(
                self._key(source), {"scratch": self.name, "started": time.time(), **this_process()}
            )

    def unregister(self, source: str) -> None:
        """The drill has ended (its copy removed, or kept on purpose)."""
        if self.journal is not None:
            self.journal.state_delete(self._key(source))

    def remove_leftovers(self, source: str) -> list[str]:
        """Remove the scratch copies of drills of ``source`` that were killed (``kill -9``,
        a power cut) before they could: those recorded as running by a process of this
        machine that is gone. A drill still running, or one of another machine, is never
        touched. Returns the names removed; one that cannot be removed is logged and left."""
        removed: list[str] = []
        running: set[str] = set()
        entries = (
            {} if self.journal is None else self.journal.state_prefixed(f"{_RUNNING}{source}:")
        )
        for key, entry in entries.items():
            if not isinstance(entry, dict):
                continue
            name = str(entry.get("scratch", ""))
            if still_running(entry):
                running.add(name)
                continue
            if not self._is_scratch(name):
                # named with --target: never removed by a drill; said once, then forgotten
                self.named_leftovers.append(name)
                if self.journal is not None:
                    self.journal.state_delete(key)
                continue
            try:
                self.remove_named(name)
            except CrmMaintError as exc:
                log.warning("could not remove %s, left by a killed drill: %s", name, exc)
                continue
            if self.journal is not None:
                self.journal.state_delete(key)
            removed.append(name)
        for name in self._stale(running | set(removed)):
            try:
                self.remove_named(name)
            except CrmMaintError as exc:
                log.warning("could not remove %s, left by a drill long ago: %s", name, exc)
                continue
            removed.append(name)
        return removed

    def _stale(self, spared: set[str]) -> list[str]:
        """Scratch copies of this drill's source where its copy goes, made more than
        ``STALE_SCRATCH_SECONDS`` ago (``stale_scratch``) and not in ``spared``: those of
        drills killed on any machine, or whose journal was lost. A listing that fails is
        logged: the drill goes on."""
        prefix = scratch_prefix(self.source_name)
        try:
            if self.kind == "fileset":
                directory = posixpath.dirname(self.name.rstrip("/")) or "/"
                names = [posixpath.join(directory, n) for n in
                         list_prefixed(self.transport, directory, prefix, what=self.host.name)]  # fmt: skip
            else:
                names = self.engine.target_names(prefix, near=self.name)
        except CrmMaintError as exc:
            log.warning("could not look for copies left by earlier drills: %s", exc)
            return []
        return [n for n in stale_scratch(names, self.source_name, time.time()) if n not in spared]

    def restore(self, repo: Any, backup: Any, identities: Any, ctx: TaskContext) -> Facts:
        """Restore ``backup`` into the scratch copy; returns the restored copy's facts."""
        if self.kind == "fileset":
            return restore_fileset(
                repo, backup, identities, fileset=ctx.target.obj, transport=self.transport,
                to=self.name, progress=ctx.meter(backup.size),
            )  # fmt: skip
        return restore_database(
            repo, backup, identities, db=self.db, transport=self.transport, to=self.name,
            timeout=ctx.time_left(), progress=ctx.meter(backup.size),
        )  # fmt: skip

    def remove(self, *, quietly: bool = False) -> None:
        """Remove the scratch copy, on the cleanup's own time (``cleaning_up``: also when
        the step's time ran out during the checks); ``quietly``: a failure is logged."""
        if self.kind == "fileset":
            self.files.cleaning_up().remove_scratch(self.name, quietly=quietly)
        elif quietly:
            self.engine.cleaning_up().drop_quietly(self.name)
        else:
            self.engine.cleaning_up().drop(self.name)

    @property
    def shown(self) -> str:
        """Where the copy is, as a person looks for it: a SQLite file's whole path."""
        if self.kind == "database" and self.db.engine == "sqlite":
            return self.engine.target_path(self.name)
        return self.name

    def _is_scratch(self, name: str) -> bool:
        """Whether ``name`` carries the scratch prefix (``SCRATCH_PREFIX``)."""
        on_disk = self.kind == "fileset" or self.db.engine == "sqlite"
        return (posixpath.basename(name) if on_disk else name).startswith(SCRATCH_PREFIX)

    def remove_named(self, name: str) -> None:
        """Remove another drill's scratch copy ``name`` where this drill's would be; only a
        name with the scratch prefix (``SCRATCH_PREFIX``) is ever removed."""
        if not self._is_scratch(name):
            raise RestoreError(f"{name!r} is not a drill's scratch copy: left alone")
        if self.kind == "fileset":
            self.files.remove_scratch(name)
        else:
            self.engine.drop(name)


#: The journal state keys of running drills: ``drill:<source>:<scratch copy>``.
_RUNNING = "drill:"

#: Seconds an assertion's query may take at most.
ASSERTION_TIMEOUT = 300.0
#: Seconds of the step's time an assertion leaves for removing the copy.
CLEANUP_MARGIN = 60.0
