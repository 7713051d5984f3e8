"""The database engine interface: facts, dump, restore and drop, spoken through a transport.

Every engine runs its client tools (psql, mariadb, sqlite3 …) on the host that owns the data.
SQL and dump bytes travel over stdin/stdout; passwords go through the environment only.

Every restore, of a database or a file set, follows one routine (``RestoreRoutine.run_restore``):
check the target's name, refuse the source, refuse an existing target (or, with ``force``,
replace it), create the target, load it, take its facts; a failed load removes what it made and
its own error is the one raised. Engines fill in small hooks.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import hashlib
import logging
import re
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

from crmmaint.engines.maintenance import TableMaintenance
from crmmaint.errors import (
    FORCE,
    AccessRefused,
    CommandTimeout,
    CrmMaintError,
    EngineError,
    RestoreError,
    RestoreSourceRefused,
    RestoreTargetExists,
    TransportError,
)
from crmmaint.inventory import Database
from crmmaint.transport.base import (
    CLEANUP_GRACE,
    Command,
    CommandResult,
    Process,
    StdoutMode,
    Transport,
)

log = logging.getLogger(__name__)

#: Default timeout (seconds) for short client commands: ping, facts, queries.
QUERY_TIMEOUT = 120.0

Facts = dict[str, Any]

_TARGET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class Reader(Protocol):
    """Anything with ``read(n) -> bytes`` returning ``b""`` at the end (a restore source)."""

    def read(self, size: int = ..., /) -> bytes: ...


@dataclass(frozen=True)
class DumpLayout:
    """Random access to a stored dump: where its ``COPY`` blocks are, and a reader for any byte
    range. Engines that can load tables on several connections use it (PostgreSQL); the others
    restore from the sequential stream alone."""

    size: int
    sections: list[tuple[int, int]]  # [start, end) of each COPY block, in stream order
    open: Callable[[int, int], Reader]

    @classmethod
    def from_facts(
        cls, facts: Mapping[str, Any], size: int, open_range: Callable[[int, int], Reader]
    ) -> DumpLayout | None:
        """The layout a backup recorded (``copy_sections``), or None if absent or implausible."""
        raw = facts.get("copy_sections")
        if not isinstance(raw, list) or len(raw) < 2:
            return None
        try:
            sections = [(int(start), int(end)) for start, end in raw]
        except (TypeError, ValueError):
            return None
        position = 0
        for start, end in sections:
            if not position <= start < end:
                return None
            position = end
        if sections[0][0] == 0 or position > size:
            return None
        return cls(size, sections, open_range)


def schema_digest(rows: Iterable[Sequence[str]]) -> str:
    """sha256 over a canonical, sorted description (one tab-joined line per row)."""
    lines = sorted("\t".join(row) for row in rows)
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()


def compare_facts(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Differences a drill reports between recorded facts and those of a restored copy.

    Tables, row counts and schema fingerprint must be equal; a sequence may only be ahead
    (sequences are not transactional, see docs/engines.md); a file set's ``checksums`` must be
    equal (``compare_checksums``); where both sides have ``table_checksums`` (the drill read
    its copy back), each table's must be equal. An empty list means they match.
    """
    problems: list[str] = []
    if "checksums" in expected or "checksums" in actual:
        problems += compare_checksums(expected.get("checksums", {}), actual.get("checksums", {}))
        if "links" in expected:  # recorded since file modes and links are checked
            problems += compare_links(expected["links"], actual.get("links", {}))
    exp_tables, act_tables = set(expected.get("tables", [])), set(actual.get("tables", []))
    if missing := sorted(exp_tables - act_tables):
        problems.append(f"tables missing: {', '.join(missing)}")
    if extra := sorted(act_tables - exp_tables):
        problems.append(f"unexpected tables: {', '.join(extra)}")
    exp_counts, act_counts = expected.get("row_counts", {}), actual.get("row_counts", {})
    for table in sorted(set(exp_counts) & set(act_counts)):
        if exp_counts[table] != act_counts[table]:
            problems.append(f"{table}: {act_counts[table]} rows, expected {exp_counts[table]}")
    if expected.get("schema_fingerprint") != actual.get("schema_fingerprint"):
        problems.append("schema fingerprint differs")
    if "table_checksums" in expected and "table_checksums" in actual:
        want, have = expected["table_checksums"], actual["table_checksums"]
        for table in sorted(set(want) & act_tables):
            if table not in have:
                problems.append(f"{table}: its rows were not read back")
            elif have[table] != want[table]:
                problems.append(
                    f"{table}: content differs from the backup's (checksum "
                    f"{have[table][:12]}, expected {want[table][:12]})"
                )
    act_seqs = actual.get("sequences", {})
    for seq, value in sorted(expected.get("sequences", {}).items()):
        if seq not in act_seqs:
            problems.append(f"sequence missing: {seq}")
        elif value is not None and (act_seqs[seq] is None or act_seqs[seq] < value):
            problems.append(f"sequence {seq} at {act_seqs[seq]}, expected at least {value}")
    return problems


def fact_checks(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each check a drill makes, with what the backup recorded and what the restored copy
    has, for its report: ``{"check", "expected", "found", "ok"}``, in the order a reader
    takes them (counts first, then each table, the schema, each sequence). The same
    comparisons as ``compare_facts``, which lists only the differences."""
    checks: list[dict[str, Any]] = []

    def add(check: str, want: Any, found: Any, ok: bool) -> None:
        checks.append({"check": check, "expected": want, "found": found, "ok": ok})

    if "checksums" in expected or "checksums" in actual:
        want, have = expected.get("checksums", {}), actual.get("checksums", {})
        add("files", len(want), len(have), set(want) == set(have))
        same = sum(
            1
            for p in set(want) & set(have)
            if want[p]["sha256"] == have[p]["sha256"] and want[p]["size"] == have[p]["size"]
        )
        add("files with the same sha256 and size", len(want), same, same == len(want))
        modes = sum(
            1 for p in set(want) & set(have) if want[p].get("mode", "") == have[p].get("mode", "")
        )
        if any("mode" in f for f in want.values()):
            add("files with the same mode", len(want), modes, modes == len(want))
        if "links" in expected:
            links, found = expected["links"], actual.get("links", {})
            alike = sum(1 for p in links if found.get(p) == links[p])
            add(
                "symbolic links to the same target",
                len(links),
                alike,
                alike == len(links) and set(found) == set(links),
            )
        add(
            "bytes",
            sum(f["size"] for f in want.values()),
            sum(f["size"] for f in have.values()),
            sum(f["size"] for f in want.values()) == sum(f["size"] for f in have.values()),
        )
        return checks
    want_tables, have_tables = expected.get("tables", []), actual.get("tables", [])
    add("tables", len(want_tables), len(have_tables), set(want_tables) == set(have_tables))
    want_rows, have_rows = expected.get("row_counts", {}), actual.get("row_counts", {})
    for table in sorted(set(want_rows) | set(have_rows)):
        want, have = want_rows.get(table), have_rows.get(table)
        add(f"rows in {table}", want, have, want == have)
    want_fp, have_fp = expected.get("schema_fingerprint"), actual.get("schema_fingerprint")
    add(
        "schema fingerprint",
        str(want_fp or "")[:16] or None,
        str(have_fp or "")[:16] or None,
        want_fp == have_fp,
    )
    if "table_checksums" in expected and "table_checksums" in actual:
        want_sums, have_sums = expected["table_checksums"], actual["table_checksums"]
        for table in sorted(want_sums):
            want, have = want_sums[table], have_sums.get(table)
            add(f"content of {table}", want[:16], have and have[:16], want == have)
    have_seqs = actual.get("sequences", {})
    for seq, value in sorted(expected.get("sequences", {}).items()):
        have = have_seqs.get(seq)
        ok = seq in have_seqs and (value is None or (have is not None and have >= value))
        add(f"sequence {seq}", None if value is None else f">= {value}", have, ok)
    return checks


def version_major(engine: str, version: str) -> tuple[int, ...] | None:
    """The part of a server's version that decides whether it can load another's dump:
    PostgreSQL's major number (``"16.4 (Debian 16.4-1)"`` -> ``(16,)``; ``"9.6.24"`` ->
    ``(9, 6)``, majors before 10 had two numbers), MariaDB's and MySQL's first two
    (``"10.11.6-MariaDB-0+deb12u1"`` -> ``(10, 11)``). ``None`` for text without a version."""
    found = re.match(r"\s*(\d+)(?:\.(\d+))?", version)
    if found is None:
        return None
    first, second = int(found.group(1)), int(found.group(2) or 0)
    if engine == "postgresql" and first >= 10:
        return (first,)
    return (first, second)


def compare_checksums(
    expected: Mapping[str, Mapping[str, Any]], actual: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Differences between the per-file checksums a file-set dump recorded and those of a
    restore (``{path: {"sha256", "size"}}``): files missing, unexpected, or with other content.
    An empty list means they match."""
    problems = [f"missing: {p}" for p in sorted(set(expected) - set(actual))]
    problems += [f"unexpected: {p}" for p in sorted(set(actual) - set(expected))]
    both = sorted(set(expected) & set(actual))
    problems += [
        f"content differs: {p}"
        for p in both
        if expected[p]["sha256"] != actual[p]["sha256"] or expected[p]["size"] != actual[p]["size"]
    ]
    problems += [
        f"mode differs: {p} is {actual[p].get('mode')}, expected {expected[p]['mode']}"
        for p in both
        if expected[p].get("mode") and expected[p]["mode"] != actual[p].get("mode")
    ]
    return problems


def compare_links(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    """Differences between the symbolic links a file-set dump recorded (path -> target) and
    those of a restore: missing, unexpected, or pointing elsewhere."""
    problems = [f"link missing: {p}" for p in sorted(set(expected) - set(actual))]
    problems += [f"unexpected link: {p}" for p in sorted(set(actual) - set(expected))]
    problems += [
        f"link {p} points to {actual[p]!r}, expected {expected[p]!r}"
        for p in sorted(set(expected) & set(actual))
        if expected[p] != actual[p]
    ]
    return problems


class DumpStream:
    """A dump in progress: ``read`` its bytes to the end, then ``finish`` to check how it ended.

    ``facts`` (tables, row_counts, schema_fingerprint …) are complete once ``finish`` returned.
    A dump whose command failed, was killed, or was not read to the end raises ``EngineError``
    from ``finish`` — so a failed dump never becomes a backup. ``tolerate`` may accept a non-zero
    exit that still produced a whole dump (tar's "some files differ"): it returns the warnings
    to keep in ``facts["warnings"]``, or None to fail as usual.
    """

    def __init__(
        self,
        process: Process,
        *,
        describe: Callable[[str], EngineError],
        facts: Facts | None = None,
        observe: Callable[[bytes], None] | None = None,
        complete: Callable[[Facts], None] | None = None,
        timeout: float | None = None,
        tolerate: Callable[[CommandResult], list[str] | None] | None = None,
    ) -> None:
        self._process = process
        self._tolerate = tolerate
        self.error = describe
        self._observe = observe
        self._complete = complete
        self._timeout = timeout
        if timeout is not None:
            process.set_timeout(timeout)
        self.facts: Facts = dict(facts or {})
        self.bytes_read = 0
        self.eof = False
        self.finished = False

    def read(self, size: int = 1 << 20) -> bytes:
        """Up to ``size`` bytes of the dump; ``b""`` at the end."""
        if self.eof:
            return b""
        try:
            chunk = self._process.read(size)
        except TransportError as exc:
            self._process.kill()
            context = self.error("reading the dump failed").message  # names engine and host
            raise transport_failure(exc, context) from exc
        if not chunk:
            self.eof = True
            if self._observe is not None:
                self._observe(b"")
            return b""
        self.bytes_read += len(chunk)
        if self._observe is not None:
            self._observe(chunk)
        return chunk

    def finish(self) -> Facts:
        """Wait for the dump command, check its exit status and complete the facts."""
        if self.finished:
            return self.facts
        if not self.eof:
            self._process.kill()
            raise self.error("finish() called before the dump stream was read to the end")
        try:
            result = self._process.wait(timeout=self._timeout)
        except CommandTimeout as exc:
            raise self.error(f"dump timed out after {self._timeout}s") from exc
        warnings = None
        if result.exit_status != 0 and self._tolerate is not None:
            warnings = self._tolerate(result)
            if warnings is not None:
                self.facts["warnings"] = warnings
        if result.exit_status != 0 and warnings is None:
            status = result.exit_status
            how = (
                f"was killed (exit {status})" if status > 128 or status < 0 else f"exited {status}"
            )
            raise self.error(f"dump command {how}: {result.stderr_tail()}")
        if self._complete is not None:
            self._complete(self.facts)
        self.facts["bytes"] = self.bytes_read
        self.finished = True
        return self.facts

    def kill(self) -> None:
        """Stop the dump command (a caller giving up); ``finish`` then raises."""
        self._process.kill()


@dataclass(frozen=True)
class RestoreRequest:
    """One restore as it was asked for.

    ``target`` is the name as given (a database name, a file or a directory path); ``timeout``
    bounds the load in seconds (None: no limit); ``layout`` and ``jobs`` let an engine that can
    load tables on several connections do so; ``single_transaction`` asks an engine that loads
    one stream to do it in one transaction (PostgreSQL; the others load as they always do).
    """

    stream: Reader
    target: str
    force: bool = False
    timeout: float | None = None
    layout: DumpLayout | None = None
    jobs: int = 2
    single_transaction: bool = True


@dataclass
class NewTarget:
    """A restore target ``create_target`` made, by its checked name. Engines subclass it to
    carry what their load and cleanup need (a load role, a staging directory …)."""

    name: str


TargetT = TypeVar("TargetT", bound=NewTarget)


class RestoreRoutine(abc.ABC, Generic[TargetT]):
    """The one restore routine of every engine, file sets included (``run_restore``), and the
    hooks an engine fills in. An engine supplies ``where``, ``error`` and ``transport``."""

    transport: Transport
    #: What a restore target is, in messages ("database", "database file", "directory").
    target_noun: str = "database"
    #: What to do about a restore target that exists.
    target_exists_hint: str = f"choose another name, drop it, or replace it with {FORCE}"
    #: Names of the server's own databases, never a restore target (even with force).
    system_databases: frozenset[str] = frozenset()

    @property
    @abc.abstractmethod
    def where(self) -> str:
        """The source, its engine and host, for messages."""

    @abc.abstractmethod
    def error(
        self, what: str, *, hint: str | None = None, retryable: bool | None = None
    ) -> EngineError:
        """An ``EngineError`` whose message starts with ``where``."""

    def run_restore(self, request: RestoreRequest) -> Facts:
        """Restore ``request.stream`` into a new target; returns the restored copy's facts.

        The steps, each a hook: ``restore_target`` checks and normalises the name (an invalid
        one raises); ``is_source`` refuses the source itself (``EngineError``);
        ``target_exists`` looks, and an existing target raises ``RestoreTargetExists`` unless
        ``request.force``, when ``clear_existing`` makes room; ``create_target`` makes the
        empty target (removing what it made if it fails); ``load_target`` loads it;
        ``restored_facts`` describes it. If the load or the facts fail, are stopped (the step
        timed out) or interrupted, ``discard_target`` removes what the restore made, on
        ``cleaning_up``'s transport (the load's deadline may have passed), and the load's own
        error is raised, never a cleanup's.
        """
        target, replacing = self.preflight(request.target, force=request.force)
        if replacing:
            log.warning("replacing %s %s with a restore (force)", self.target_noun, target)
            self.clear_existing(target)
        log.info("restoring into %s on %s", target, self.transport.host)
        made = self.create_target(target, request, replacing=replacing)
        try:
            size = self.load_target(made, request)
            log.info("restored %d bytes into %s on %s", size, target, self.transport.host)
            # Inside the try: a restore interrupted while it reads the loaded copy's facts
            # leaves no target either (it left a whole target journaled as failed, and the
            # next try refused the name as taken).
            reading = time.monotonic()
            facts = dict(self.restored_facts(made, request))
            facts["read_back_seconds"] = round(time.monotonic() - reading, 3)  # drills' verify
            return facts
        except BaseException:
            try:
                self.cleaning_up().discard_target(made)
            except Exception as exc:  # the load's error is the one to report
                log.warning("could not remove the failed restore target %s: %s", target, exc)
            raise

    def preflight(self, name: str, *, force: bool) -> tuple[str, bool]:
        """The checks a restore into ``name`` makes before it changes anything, also what
        ``--check`` runs: ``(target, replacing)``, the normalised target and whether a forced
        restore would replace something there. Raises what the restore would: an invalid or
        reserved name (``restore_target``), ``RestoreSourceRefused`` for the source itself,
        ``RestoreTargetExists`` for an existing target without ``force``."""
        target = self.restore_target(name)
        if self.is_source(target):
            raise RestoreSourceRefused(
                f"{self.where}: "
                f"refusing to restore over the source {self.target_noun} {self.shown(target)}",
                hint=f"restore into another {self.target_noun}",
            )
        replacing = self.target_exists(target)
        if replacing and not force:
            raise RestoreTargetExists(
                f"{self.where}: restore target {self.target_noun} {self.shown(target)} exists",
                hint=self.target_exists_hint,
            )
        return target, replacing

    def cleaning_up(self) -> Self:
        """This engine with its commands run through ``transport.for_cleanup``: removing what a
        failed restore made gets ``CLEANUP_GRACE`` seconds of its own, even when the step's
        deadline passed or the runner killed the load's commands."""
        transport = self.transport.for_cleanup(CLEANUP_GRACE)
        if transport is self.transport:
            return self
        clone = copy.copy(self)
        clone.transport = transport
        return clone

    # --- the hooks ----------------------------------------------------------------------------

    def shown(self, target: str) -> str:
        """``target`` as messages show it (a name quoted, a path as it is)."""
        return repr(target)

    @abc.abstractmethod
    def restore_target(self, name: str) -> str:
        """The target ``name`` checked and normalised (a path made absolute …); raises
        ``EngineError`` or ``RestoreError`` for a name no restore may use."""

    @abc.abstractmethod
    def is_source(self, target: str) -> bool:
        """Whether restoring into ``target`` would overwrite the source itself."""

    @abc.abstractmethod
    def target_exists(self, target: str) -> bool:
        """Whether ``target`` exists (holds something a restore without force must keep)."""

    def clear_existing(self, target: str) -> None:
        """Make room for a forced restore: by default nothing, for engines that build the new
        copy beside the old one and swap it in once complete."""

    @abc.abstractmethod
    def create_target(self, target: str, request: RestoreRequest, *, replacing: bool) -> TargetT:
        """Make the new, empty target (and what the load needs: a load role …). If this fails
        it removes what it made itself and raises."""

    @abc.abstractmethod
    def load_target(self, made: TargetT, request: RestoreRequest) -> int:
        """Load ``request.stream`` into ``made`` and check it is whole; returns the bytes
        loaded. Raises ``EngineError`` (or the stream's own error) when it cannot."""

    @abc.abstractmethod
    def discard_target(self, made: TargetT) -> None:
        """Remove what a failed restore made, logging rather than raising where it can. An old
        target a forced restore was to replace stays as it was unless ``clear_existing``
        already removed it. It is called on ``cleaning_up()``: run its commands through
        ``self``, not through the engines ``made`` carries (those may be stopped)."""

    @abc.abstractmethod
    def restored_facts(self, made: TargetT, request: RestoreRequest) -> Facts:
        """The facts of the restored copy (what ``compare_facts`` compares)."""


class DatabaseEngine(RestoreRoutine[TargetT]):
    """One database reached through the transport of the host that owns it."""

    engine: str = ""
    #: What the client says when the server refuses the configured login (user or password):
    #: ``inventory check --connect`` then names the password's source.
    login_refusals: tuple[str, ...] = ()

    def __init__(self, db: Database, transport: Transport) -> None:
        self.db = db
        self.transport = transport

    # --- errors and command helpers ---------------------------------------------------------

    @property
    def where(self) -> str:
        target = self.db.dbname or self.db.path or self.db.name
        return f"{self.engine} database {self.db.name!r} ({target}) on host {self.transport.host}"

    #: What the engine's clients print when the server refuses the login (wrong password,
    #: unknown user), and when it refuses a privilege the work needs (SELECT on a table).
    login_refused: re.Pattern[str] | None = None
    privilege_refused: re.Pattern[str] | None = None
    #: What they print when the server has no database of the configured name: the same
    #: again finds none again, so it is never retried.
    missing_database: re.Pattern[str] | None = None

    def error(
        self, what: str, *, hint: str | None = None, retryable: bool | None = None
    ) -> EngineError:
        """An ``EngineError`` naming engine, database and host; ``AccessRefused`` (never
        retried) when ``what`` holds the server's refusal of the login (its hint names where
        the password came from, never the password) or of a privilege."""
        message = f"{self.where}: {what}"
        if self.login_refused is not None and self.login_refused.search(what):
            if "does not exist" in what:  # PostgreSQL: no such role
                user = f"user {self.db.user!r}" if self.db.user else "the connecting user"
                return AccessRefused(
                    message,
                    hint=f"the server has no {user}: check 'user:' of database "
                    f"{self.db.name!r} in the inventory, or create the role",
                )
            return AccessRefused(message, hint=self.login_hint())
        if self.missing_database is not None and self.missing_database.search(what):
            return EngineError(
                message,
                hint=f"check 'name:' (the name on the server) of database {self.db.name!r} in "
                "the inventory; a missing database is not retried",
                retryable=False,
            )
        if (
            self.privilege_refused is not None
            and not self.loads_untrusted  # a denial there is the least privilege at work
            and self.privilege_refused.search(what)
        ):
            user = self.db.user or "the connecting user"
            return AccessRefused(
                message,
                hint=f"grant {user} read access to the whole database (a dump reads it all)",
            )
        return EngineError(message, hint=hint, retryable=retryable)

    @property
    def loads_untrusted(self) -> bool:
        """Whether this engine connects as a least-privilege load account a restore made."""
        return False

    def login_hint(self) -> str:
        """What to check when the server refused the login: user and password source."""
        user = f"user {self.db.user!r}" if self.db.user else "the connecting user"
        if self.db.password is None:
            return (
                f"no password is configured for {user}: add 'password: env:NAME' (or file:, "
                f"cmd:) to database {self.db.name!r} in the inventory, or check the server's "
                "authentication rules"
            )
        return (
            f"check the password of {user} read from {self.db.password.describe()}; "
            "a refused login is not retried"
        )

    def password_env(self, variable: str) -> dict[str, str]:
        """The environment carrying the password for the client tool (never argv)."""
        if self.db.password is None:
            return {}
        return {variable: self.db.password.resolve().decode("utf-8")}

    def client_env(self) -> dict[str, str]:
        """Environment for every client command of this engine (password, locale)."""
        return {}

    def run(
        self,
        command: Command,
        *,
        stdin: bytes | None = None,
        timeout: float | None = QUERY_TIMEOUT,
        what: str = "command",
        final_exits: Container[int] = (),
    ) -> CommandResult:
        """Run a client command to completion; a failure becomes ``EngineError``, one that no
        retry can mend when the exit status is in ``final_exits`` (a missing source file). Its
        message carries what the client said without the row values it quotes
        (``client_error``): a failed statement's ``DETAIL: Key (email)=(…)`` never reaches a
        result or the journal."""
        try:
            result = self.transport.run(
                command, stdin=stdin, timeout=timeout, env=self.client_env(), check=False
            )
        except CommandTimeout as exc:  # it says how long it had, or why it was not started
            raise self.error(f"{what}: {exc.message}") from exc
        except TransportError as exc:
            raise transport_failure(exc, f"{self.where}: {what} could not run") from exc
        if not result.ok:
            raise self.error(
                f"{what} failed (exit {result.exit_status}):"
                f" {self.client_error(result.stderr.decode('utf-8', 'replace'))}",
                retryable=False if result.exit_status in final_exits else None,
            )
        return result

    @contextlib.contextmanager
    def started(self, command: Command, *, what: str, stdout: StdoutMode) -> Iterator[Process]:
        """Start a client command (``stdout`` as in ``Transport.start``: a dump or session
        reads it, a load only collects it); transport failures become ``EngineError``."""
        try:
            with self.transport.start(command, stdout=stdout, env=self.client_env()) as proc:
                yield proc
        except EngineError:
            raise
        except TransportError as exc:
            raise transport_failure(exc, f"{self.where}: {what}") from exc

    def load(
        self,
        command: Command,
        stream: Reader,
        *,
        into: str,
        what: str,
        timeout: float | None,
        hint: str | None = None,
    ) -> int:
        """Stream a dump into a client command's stdin (a restore); returns the bytes fed.

        The stream passes through ``untrusted_script`` first: a backup is untrusted input.
        A client that exits non-zero, a source that fails mid-stream, or a timeout becomes an
        ``EngineError`` naming the target; the caller removes the half-loaded target.
        """
        with self.started(command, what=what, stdout="collect") as proc:
            if timeout is not None:
                proc.set_timeout(timeout)
            size, problem = feed(self.untrusted_script(stream), proc)
            try:
                result = proc.wait(timeout=timeout)
            except CommandTimeout as exc:
                raise self.error(f"restore timed out after {timeout}s") from exc
            if not result.ok or problem:
                stderr = result.stderr.decode("utf-8", "replace")
                raise self.error(
                    f"restore into {into!r} failed: {problem or ''} "
                    f"{self.client_error(stderr)}".strip(),
                    hint=self.load_hint(stderr) or hint,
                )
        return size

    def load_hint(self, stderr: str) -> str | None:
        """What to do about a failed load, from what the client said (None: nothing to add
        to the caller's hint)."""
        return None

    #: How much of a client's complaint a restore error carries (characters).
    CLIENT_ERROR_LIMIT = 400

    def client_error(self, stderr: str) -> str:
        """What a failed restore client said, made fit for a message, a log and the journal:
        without the table data clients echo (``redact_client_error``), its last
        ``CLIENT_ERROR_LIMIT`` characters, one line."""
        text = self.redact_client_error(stderr).strip()[-self.CLIENT_ERROR_LIMIT :]
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        # a line repeated right after itself is said once (as ``CommandResult.stderr_tail``)
        return " | ".join(line for i, line in enumerate(lines) if i == 0 or line != lines[i - 1])

    def redact_client_error(self, stderr: str) -> str:
        """``stderr`` without the values of rows and statements a client echoes; engines know
        their client's messages (the default keeps what is said, cut per line)."""
        return "\n".join(cut_message_line(line) for line in stderr.splitlines())

    def untrusted_script(self, stream: Reader) -> Reader:
        """What a restore client may be fed of a backup's stream. A write-key holder can forge
        a backup, so an engine whose client obeys commands in its input neutralises or refuses
        them here (psql restricted mode, the mariadb guard); the default passes it unchanged."""
        return stream

    def drop_quietly(self, target_name: str) -> None:
        """Remove a failed restore target; a failure to do so is logged, not raised."""
        try:
            self.drop(target_name)
        except EngineError as exc:
            log.warning("could not drop failed restore target %s: %s", target_name, exc)

    # --- the interface ----------------------------------------------------------------------

    def ping(self, *, timeout: float = 30.0) -> float:
        """Connect and run ``SELECT 1``; returns the round trip in seconds."""
        start = time.monotonic()
        rows = self.query("SELECT 1", timeout=timeout)
        if rows != [("1",)]:
            raise self.error(f"SELECT 1 answered {rows!r}")
        return time.monotonic() - start

    @abc.abstractmethod
    def facts(self, *, timeout: float = QUERY_TIMEOUT) -> Facts:
        """Server and database figures: version, size_bytes, connections, uptime …"""

    @abc.abstractmethod
    def query(self, sql: str, *, timeout: float = QUERY_TIMEOUT) -> list[tuple[str, ...]]:
        """Run SQL (over stdin) and return its rows as strings; for small results only."""

    @abc.abstractmethod
    def tables(self, *, timeout: float = QUERY_TIMEOUT) -> list[str]:
        """User tables, sorted."""

    @abc.abstractmethod
    def row_counts(self, *, timeout: float = QUERY_TIMEOUT) -> dict[str, int]:
        """Exact row count of every user table."""

    @abc.abstractmethod
    def schema_fingerprint(self, *, timeout: float = QUERY_TIMEOUT) -> str:
        """sha256 of tables, columns, types, constraints and indexes; stable across restore."""

    def snapshot_facts(self, *, timeout: float = QUERY_TIMEOUT) -> Facts:
        """The facts a drill compares (tables, row_counts, schema_fingerprint) taken now."""
        return {
            "tables": self.tables(timeout=timeout),
            "row_counts": self.row_counts(timeout=timeout),
            "schema_fingerprint": self.schema_fingerprint(timeout=timeout),
        }

    @abc.abstractmethod
    def dump(
        self, *, timeout: float | None = None
    ) -> contextlib.AbstractContextManager[DumpStream]:
        """Stream a consistent dump; a context manager yielding a ``DumpStream``."""

    @abc.abstractmethod
    def for_target(self, target_name: str) -> Self:
        """The same server, reaching the restore target ``target_name`` (a database, or for
        SQLite a file named as a restore names it)."""

    @abc.abstractmethod
    def target_names(self, prefix: str, *, near: str) -> list[str]:
        """The restore targets on this server whose names start with ``prefix`` (databases;
        SQLite: the files beside ``near``'s file), for a drill's sweep of copies that killed
        drills left. Raises ``EngineError``."""

    @abc.abstractmethod
    def maintenance(self) -> TableMaintenance:
        """The engine's index and table maintenance (``indexes.optimize``)."""

    @abc.abstractmethod
    def owner_query(self, sql: str, *, timeout: float = QUERY_TIMEOUT) -> list[list[str | None]]:
        """The rows of ``sql`` (values as text, ``None`` for NULL), run on a restored copy
        with no more rights than the copy's own owner has (the role or account a
        least-privilege restore loaded it as; else the configured user), in a read-only
        transaction, within ``timeout`` seconds: a drill's assertions, whose queries may
        reach the copy's views and functions, which the backup made. Raises
        ``EngineError`` with the server's message when the query fails."""

    def content_checksums(self, *, timeout: float | None = None) -> dict[str, str]:
        """Each table's content checksum as a backup records it (``table_checksums``), taken
        the same way: the database is dumped as a backup dumps it, and the stream is read to
        the end and thrown away (no byte is kept). Where the dump writes rows in a stable
        order (a restored copy's rows in the order they were loaded, or key order), a copy
        restored from a backup gives the backup's checksums. Seconds: about one dump's time.
        Raises what ``dump`` raises."""
        with self.dump(timeout=timeout) as stream:
            while stream.read(1 << 20):
                pass
            facts = stream.finish()
        return dict(facts.get("table_checksums") or {})

    def restore(
        self,
        stream: Reader,
        *,
        target_name: str,
        force: bool = False,
        timeout: float | None = None,
        layout: DumpLayout | None = None,
        jobs: int = 2,
    ) -> Facts:
        """Load a dump into a NEW database ``target_name``; returns its facts (tables,
        row_counts, schema_fingerprint …, for ``compare_facts``).

        ``layout`` (random access to the stored dump) lets an engine load tables on ``jobs``
        connections at once; engines without a parallel path read ``stream`` alone.
        ``timeout`` bounds the load (seconds). An invalid name or the source's own raises
        ``EngineError``; an existing target ``RestoreTargetExists`` unless ``force``, which
        replaces it; a failed load removes the target and raises its error
        (``RestoreRoutine.run_restore``).
        """
        request = RestoreRequest(
            stream, target_name, force=force, timeout=timeout, layout=layout, jobs=jobs
        )
        return self.run_restore(request)

    # --- restore hooks shared by the server engines -------------------------------------------

    def restore_target(self, name: str) -> str:
        """A plain identifier (``check_target_name``), not one of the server's own databases
        (``system_databases``: a forced restore would drop it)."""
        check_target_name(self, name)
        if name.lower() in self.system_databases:
            raise RestoreError(
                f"{self.where}: {name!r} is a system database of the server, never a restore "
                "target",
                hint="name a new database",
            )
        return name

    def is_source(self, target: str) -> bool:
        return target == (self.db.dbname or self.db.name)

    def clear_existing(self, target: str) -> None:
        """Drop the existing database (``drop``): a server database is replaced by dropping it."""
        self.drop(target)

    @abc.abstractmethod
    def drop(self, target_name: str, *, timeout: float = QUERY_TIMEOUT) -> None:
        """Remove a database made by ``restore`` (drill cleanup). Missing is not an error."""


#: A quoted part of a client message longer than this is data, not a name (names are at most
#: 64 characters in MariaDB and 63 bytes in PostgreSQL).
_LONG_QUOTED = re.compile("'[^'\n]{65,}'|\"[^\"\n]{65,}\"")


#: Lists the entries of directory $1 whose names start with $2 (the prefix taken literally),
#: NUL-separated.
_LIST_PREFIXED = 'for f in "$1"/"$2"*; do if [ -e "$f" ] || [ -L "$f" ]; then printf "%s\\0" "${f##*/}"; fi; done'


def list_prefixed(transport: Transport, directory: str, prefix: str, *, what: str) -> list[str]:
    """The names (not paths) in ``directory`` on ``transport``'s host that start with
    ``prefix``, sorted; raises ``EngineError`` naming ``what`` when they cannot be listed."""
    try:
        result = transport.run(
            ["sh", "-c", _LIST_PREFIXED, "sh", directory, prefix], timeout=QUERY_TIMEOUT,
            check=False,
        )  # fmt: skip
    except TransportError as exc:
        raise transport_failure(exc, f"{what}: listing {directory} failed") from exc
    if not result.ok:
        raise EngineError(f"{what}: listing {directory} failed: {result.stderr_tail()}")
    return sorted(n for n in result.stdout.decode("utf-8", "surrogateescape").split("\0") if n)


#: Where a client's error message quotes the server's (psql and mariadb).
_SERVER_ERROR = re.compile(r"ERROR(?: \d+ \(\w+\))?(?: at line \d+)?:\s*(.*)")


def in_server_words(exc: EngineError) -> EngineError:
    """A failed query's error as the server said it (the first line, at most 300
    characters): "where … failed (exit 1):", the client's echo of the statement and
    MariaDB's "ERROR 1792 (25006) at line 3:" add nothing where a report shows it."""
    said = exc.message.splitlines()[0] if exc.message else "no message"
    if server := _SERVER_ERROR.search(said):
        said = server.group(1)
    return EngineError(said[:300], retryable=False)


def transport_failure(exc: TransportError, context: str) -> CrmMaintError:
    """What an engine raises when a command's transport failed: the same transport error with
    ``context`` (an unreachable host or an unknown host key stays exit 4), except a command
    that ran out of time, which is the database's failure (``EngineError``, exit 5: a lock
    wait, a slow dump)."""
    if isinstance(exc, CommandTimeout):
        return EngineError(f"{context}: {exc}", retryable=exc.retryable)
    return exc.within(context)


def cut_message_line(line: str, limit: int = 300) -> str:
    """One line of a client message: a long quoted part elided, the line bounded."""
    line = _LONG_QUOTED.sub(lambda m: m.group()[0] + "…" + m.group()[0], line)
    return line if len(line) <= limit else line[:limit] + "…"


def check_target_name(engine: DatabaseEngine, name: str) -> None:
    """Restore targets are plain identifiers: letters, digits, underscore, at most 63."""
    if not _TARGET_NAME.fullmatch(name):
        raise engine.error(
            f"invalid target database name {name!r}",
            hint="use letters, digits and underscores, starting with a letter",
        )


@contextlib.contextmanager
def closing_dump(stream: DumpStream) -> Iterator[DumpStream]:
    """Yield ``stream``; on leaving, finish it if read to the end, else kill it and raise."""
    try:
        yield stream
    except BaseException:
        stream.kill()
        raise
    if not stream.finished:
        if not stream.eof:
            stream.kill()
            raise stream.error("dump abandoned before the end of its stream")
        stream.finish()


def feed(stream: Reader, proc: Process, chunk: int = 1 << 20) -> tuple[int, str | None]:
    """Like ``pump`` but a command that stops reading early is reported, not raised.

    Returns (bytes written, problem): the caller then waits for the command, whose stderr
    says why it stopped (psql with ON_ERROR_STOP exits at the first error).
    """
    total = 0
    try:
        while data := stream.read(chunk):
            proc.write(data)
            total += len(data)
        proc.close_stdin()
    except (OSError, TransportError) as exc:
        return total, f"stopped reading its input ({exc})"
    return total, None


def pump(stream: Reader, proc: Process, chunk: int = 1 << 20) -> int:
    """Copy a reader into a process's stdin, then close it; returns the byte count."""
    total = 0
    while data := stream.read(chunk):
        proc.write(data)
        total += len(data)
    proc.close_stdin()
    return total
