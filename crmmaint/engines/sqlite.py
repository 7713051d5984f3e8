"""SQLite: the sqlite3 shell on the host that owns the file.

A dump is SQLite's online backup (``.backup``) into a private temporary directory on that
host, checked with ``PRAGMA integrity_check``, described (facts from the copy itself) and then
streamed with ``cat``; the copy is removed afterwards. Restore writes a new file atomically.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import posixpath
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from crmmaint.engines.base import (
    QUERY_TIMEOUT,
    DatabaseEngine,
    DumpStream,
    Facts,
    NewTarget,
    RestoreRequest,
    closing_dump,
    in_server_words,
    list_prefixed,
    schema_digest,
)
from crmmaint.errors import FORCE, CrmMaintError, EngineError, RestoreError
from crmmaint.processes import still_running, this_process

if TYPE_CHECKING:
    from crmmaint.engines.sqlite_maintenance import SQLiteMaintenance

log = logging.getLogger(__name__)

# $1 = source database. Makes a 0700 temp dir, backs up into it and checks the copy; prints the
# dir. The copy's name is a fixed literal, so no path is ever spliced into a dot-command.
#: Removes the backup copy of token $1 (the directory ``_BACKUP_SCRIPT`` made).
_REMOVE_COPY = 'rm -rf -- "${TMPDIR:-/tmp}"/crmmaint-sqlite."$1".*'

#: Removes backup copies that a killed crmmaint left (``kill -9``, a power cut: no cleanup
#: ran): those of processes of this machine that are gone ($@: their tokens' owner parts,
#: ``<pid>x<start>``), and on any host those older than ``STALE_COPY_MINUTES``.
_REMOVE_LEFT_COPIES = r"""
t=${TMPDIR:-/tmp}
for owner in "$@"; do rm -rf -- "$t"/crmmaint-sqlite."$owner"-*; done
find "$t" -maxdepth 1 -type d -name 'crmmaint-sqlite.*' -mmin +STALE -exec rm -rf -- {} +
exit 0
"""
#: A backup copy left this long is a killed backup's (a backup streams its copy in minutes).
STALE_COPY_MINUTES = 360

# $1 = the database file, $2 = this backup's token (in the copy's directory name, so the copy
# is found and removed also when the script was killed before it printed the directory).
_BACKUP_SCRIPT = r"""
set -eu
umask 077
src=$1
case $src in /*) ;; *) src=$PWD/$src ;; esac
test -f "$src" || { echo "no such database file: $src" >&2; exit 2; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/crmmaint-sqlite.$2.XXXXXXXX")
cd "$dir"
if ! sqlite3 -bail -batch -readonly "$src" ".backup copy.db" >/dev/null; then
  cd /; rm -rf "$dir"; exit 3
fi
check=$(sqlite3 -batch copy.db "PRAGMA integrity_check;" 2>&1) || true
if [ "$check" != "ok" ]; then
  cd /; rm -rf "$dir"; echo "integrity_check of the backup copy: $check" | head -c 2000 >&2; exit 4
fi
echo "$dir"
"""

#: What a restore target path is: ``none``, a regular ``file``, or ``other``.
_TARGET_KIND = (
    'if [ -L "$1" ]; then echo other; elif [ -f "$1" ]; then echo file; '
    'elif [ -e "$1" ]; then echo other; else echo none; fi'
)

# $1 = destination, $2 = this restore's token. Streams stdin into a temp file next to it, then
# renames it into place.
_WRITE_SCRIPT = r"""
set -eu
umask 077
dest=$1
tmp=$(mktemp "$dest.crmmaint-partial.$2.XXXXXXXX")
trap 'rm -f "$tmp"' EXIT
cat > "$tmp"
rm -f "$dest-wal" "$dest-shm" "$dest-journal"
mv -f "$tmp" "$dest"
trap - EXIT
"""

# $1 = destination, $2 = a restore's token: removes the temp file the restore left when it was
# killed mid-write (its own trap did not run). The token is hex: the glob matches only it.
_DISCARD_PARTIAL = 'rm -f -- "$1".crmmaint-partial."$2".*'

SCHEMA_SQL = """
SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master
WHERE name NOT LIKE 'sqlite_stat%'
"""

TABLES_SQL = """
SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name
"""

FACTS_SQL = """
SELECT sqlite_version(), (SELECT page_count FROM pragma_page_count()) *
       (SELECT page_size FROM pragma_page_size()),
       (SELECT journal_mode FROM pragma_journal_mode()),
       (SELECT freelist_count FROM pragma_freelist_count())
"""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(kw_only=True)
class SQLiteRestoreTarget(NewTarget):
    """A file a restore writes: ``token`` names its temporary file, ``written`` says it was
    renamed into place."""

    token: str
    written: bool = False


class SQLiteEngine(DatabaseEngine[SQLiteRestoreTarget]):
    """An SQLite database file on its host."""

    engine = "sqlite"

    @property
    def path(self) -> str:
        if not self.db.path:
            raise self.error("no path configured")
        return self.db.path

    def uri(self, *, readonly: bool = False) -> str:
        """A URI that never creates a missing file (the plain shell would)."""
        return f"file:{quote(self.path)}?mode={'ro' if readonly else 'rw'}"

    def query(self, sql: str, *, timeout: float = QUERY_TIMEOUT) -> list[tuple[str, ...]]:
        return self._query(sql, timeout=timeout, readonly=False)

    def _query(
        self, sql: str, *, timeout: float = QUERY_TIMEOUT, readonly: bool = True
    ) -> list[tuple[str, ...]]:
        command = ["sqlite3", "-bail", "-batch", "-csv", "-noheader", self.uri(readonly=readonly)]
        result = self.run(command, stdin=sql.encode("utf-8"), timeout=timeout, what="query")
        return [tuple(row) for row in csv.reader(io.StringIO(result.text))]

    def facts(self, *, timeout: float = QUERY_TIMEOUT) -> Facts:
        (row,) = self._query(FACTS_SQL, timeout=timeout)
        version, size, journal, free = row
        return {
            "engine": self.engine,
            "version": version,
            "size_bytes": int(size),
            "journal_mode": journal,
            "free_pages": int(free),
        }

    def tables(self, *, timeout: float = QUERY_TIMEOUT) -> list[str]:
        return [name for (name,) in self._query(TABLES_SQL, timeout=timeout)]

    def row_counts(self, *, timeout: float = QUERY_TIMEOUT) -> dict[str, int]:
        names = self.tables(timeout=timeout)
        if not names:
            return {}
        # One statement, so every count comes from the same read transaction.
        sql = "\nUNION ALL ".join(
            f"SELECT {quote_literal(t)}, count(*) FROM {quote_ident(t)}" for t in names
        )
        return {name: int(n) for name, n in self._query(sql, timeout=timeout)}

    def schema_fingerprint(self, *, timeout: float = QUERY_TIMEOUT) -> str:
        return schema_digest(self._query(SCHEMA_SQL, timeout=timeout))

    def integrity_check(self, *, timeout: float | None = None) -> None:
        """``PRAGMA integrity_check``; anything but ``ok`` raises ``EngineError``."""
        rows = self._query("PRAGMA integrity_check;", timeout=timeout or QUERY_TIMEOUT)
        if rows != [("ok",)]:
            detail = "; ".join(r[0] for r in rows[:5])
            raise self.error(f"integrity_check failed: {detail}")

    # --- dump -------------------------------------------------------------------------------

    def for_path(self, path: str) -> SQLiteEngine:
        return SQLiteEngine(replace(self.db, path=path), self.transport)

    def target_names(self, prefix: str, *, near: str) -> list[str]:
        directory = posixpath.dirname(self.target_path(near))
        return [posixpath.join(directory, name) for name in
                list_prefixed(self.transport, directory, prefix, what=self.where)]  # fmt: skip

    def for_target(self, target_name: str) -> SQLiteEngine:
        return self.for_path(self.target_path(target_name))

    def maintenance(self) -> SQLiteMaintenance:
        """Index and table maintenance of this database (``sqlite_maintenance``)."""
        from crmmaint.engines.sqlite_maintenance import SQLiteMaintenance

        return SQLiteMaintenance(self)

    def owner_query(self, sql: str, *, timeout: float = QUERY_TIMEOUT) -> list[list[str | None]]:
        """``DatabaseEngine.owner_query``: the file opened read-only, in the shell's
        ``-safe`` mode (no shell function that reaches files or runs programs, whatever
        the file's views call); a file has no owner to act as."""
        if sql.lstrip().startswith("."):
            raise self.error("an assertion's query must be SQL, not a sqlite3 shell command")
        null = f"<n{secrets.token_hex(6)}>"  # the shell keeps at most 19 characters of it
        # The query as an argument: the shell runs it as SQL, every line of it (on stdin a
        # line starting with a dot is a shell command: `.trace FILE` writes any file).
        command = ["sqlite3", "-bail", "-batch", "-safe", "-csv", "-noheader",
                   "-nullvalue", null, self.uri(readonly=True), sql]  # fmt: skip
        try:
            result = self.run(command, timeout=timeout, what="assertion query")
        except EngineError as exc:
            raise in_server_words(exc) from exc
        return [
            [None if v == null else v for v in row] for row in csv.reader(io.StringIO(result.text))
        ]

    def content_checksums(self, *, timeout: float | None = None) -> dict[str, str]:
        """Each table's rows hashed by the sqlite3 shell's ``sha3_query`` (SHA3-256 over
        the query's text and every value, in the order a full scan returns them: rowid or
        key order, which a restored file keeps). Read-only, and ``-safe``: no shell function
        that reaches files runs, whatever the file's views hold. A shell without
        ``sha3_query`` gives no checksums (``{}``)."""
        names = self.tables(timeout=timeout or QUERY_TIMEOUT)
        if not names:
            return {}
        sql = "\nUNION ALL ".join(
            f"SELECT {quote_literal(t)}, "
            f"hex(sha3_query({quote_literal('SELECT * FROM ' + quote_ident(t))}))"
            for t in names
        )
        command = ["sqlite3", "-bail", "-batch", "-safe", "-csv", "-noheader",
                   self.uri(readonly=True)]  # fmt: skip
        try:
            result = self.run(
                command, stdin=sql.encode("utf-8"), timeout=timeout or QUERY_TIMEOUT * 10,
                what="content checksums",
            )  # fmt: skip
        except EngineError as exc:
            if "sha3_query" in exc.message or "-safe" in exc.message:
                log.warning("%s: no content checksums: %s", self.where, exc.message)
                return {}
            raise
        return {row[0]: row[1].lower() for row in csv.reader(io.StringIO(result.text)) if row}

    @contextlib.contextmanager
    def dump(self, *, timeout: float | None = None) -> Iterator[DumpStream]:
        """Online backup to a temp copy, integrity_check, facts from the copy, then stream it."""
        self._remove_left_copies()
        token = f"{_owner(this_process()) if self._here() else 'r'}-{secrets.token_hex(8)}"
        try:
            result = self.run(
                ["sh", "-c", _BACKUP_SCRIPT, "sh", self.path, token],
                timeout=timeout or QUERY_TIMEOUT * 10,
                what="online backup",
                final_exits=(2,),  # the database file does not exist
            )
            tmpdir = result.text.strip()
            if not tmpdir.startswith("/"):
                raise self.error(f"online backup gave no temp directory: {tmpdir[:200]!r}")
            copy = posixpath.join(tmpdir, "copy.db")
            copied = self.for_path(copy)
            facts = copied.snapshot_facts() | {
                "format": "sqlite-file",
                "table_checksums": copied.content_checksums(timeout=timeout),
            }
            with self.started(
                ["cat", "--", copy], what="streaming the backup copy", stdout="stream"
            ) as proc:
                stream = DumpStream(proc, describe=self.error, facts=facts, timeout=timeout)
                with closing_dump(stream):
                    yield stream
        finally:
            # A plain copy of the database: removed also when the run was interrupted (as
            # cleanup), and when the script was killed before it said where the copy is.
            try:
                self.cleaning_up().run(
                    ["sh", "-c", _REMOVE_COPY, "sh", token], what="removing the backup copy"
                )
            except CrmMaintError as exc:
                log.warning("could not remove the temporary backup copy (%s): %s", token, exc)

    def _here(self) -> bool:
        """Whether the database is on this machine (its transport runs commands here)."""
        from crmmaint.transport.local import LocalTransport

        return isinstance(getattr(self.transport, "inner", self.transport), LocalTransport)

    def _remove_left_copies(self) -> None:
        """Remove the plain backup copies killed backups left in the temp directory: of
        processes of this machine that are gone (their token names them), and on any host
        those older than ``STALE_COPY_MINUTES``. A failure is logged: the backup goes on."""
        dead: list[str] = []
        if self._here():
            temp = os.environ.get("TMPDIR") or "/tmp"
            with contextlib.suppress(OSError):
                for entry in os.scandir(temp):
                    owner = _left_owner(entry.name)
                    if owner is not None and not still_running(owner):
                        dead.append(_owner(owner))
        script = _REMOVE_LEFT_COPIES.replace("STALE", str(STALE_COPY_MINUTES))
        try:
            self.run(["sh", "-c", script, "sh", *sorted(set(dead))], what="removing left copies")
        except CrmMaintError as exc:
            log.warning("could not remove backup copies left by killed backups: %s", exc)
        if dead:
            log.warning("removed backup copies left by killed backups (%s)", ", ".join(dead))

    # --- restore and drop ------------------------------------------------------------------

    def target_path(self, target_name: str) -> str:
        """``target_name`` as a path: absolute as given, else next to the source file; raises
        ``EngineError`` for an empty name, a directory or a NUL byte."""
        if not target_name or target_name.endswith("/") or "\0" in target_name:
            raise self.error(f"invalid restore target {target_name!r}")
        return posixpath.normpath(
            target_name
            if target_name.startswith("/")
            else posixpath.join(posixpath.dirname(self.path), target_name)
        )

    # --- restore hooks: a new file, written beside the target and renamed into place ---------

    target_noun = "database file"
    target_exists_hint = f"choose another name, remove it, or replace it with {FORCE}"

    def shown(self, target: str) -> str:
        return target

    def restore_target(self, name: str) -> str:
        """The target file's absolute path (``target_path``), in a directory that exists."""
        target = self.target_path(name)
        parent = posixpath.dirname(target) or "/"
        if not self.transport.run(["test", "-d", parent], timeout=QUERY_TIMEOUT).ok:
            raise RestoreError(
                f"{self.where}: the directory {parent} of restore target {target} does not exist",
                hint="create it first, or name a file in an existing directory",
            )
        return target

    def is_source(self, target: str) -> bool:
        return target == posixpath.normpath(self.path)

    def target_exists(self, target: str) -> bool:
        """Whether ``target`` exists as a regular file (``force`` may replace it); anything
        else there (a device such as /dev/full, a FIFO, a directory, a symbolic link) raises
        ``RestoreError`` (exit 6): a restore renames its file over the target, and must
        never turn a device or a directory entry into a database file."""
        found = self.transport.run(
            ["sh", "-c", _TARGET_KIND, "sh", target], timeout=QUERY_TIMEOUT
        ).text.strip()
        if found == "other":
            raise RestoreError(
                f"{self.where}: restore target {target} exists and is not a regular file "
                "(a device, a FIFO, a directory or a link): a SQLite restore writes a file",
                hint="name a new file, or an existing SQLite file to replace with --force",
            )
        return found == "file"

    def create_target(
        self, target: str, request: RestoreRequest, *, replacing: bool
    ) -> SQLiteRestoreTarget:
        """Nothing yet: the load writes a temporary file and renames it into place (over the
        old file, with force), so a load that fails leaves any old file as it was."""
        return SQLiteRestoreTarget(target, token=secrets.token_hex(8))

    def load_target(self, made: SQLiteRestoreTarget, request: RestoreRequest) -> int:
        """Write the stream to the file atomically, then ``integrity_check`` it."""
        size = self.load(
            ["sh", "-c", _WRITE_SCRIPT, "sh", made.name, made.token],
            request.stream,
            into=made.name,
            what="writing",
            timeout=request.timeout,
        )
        made.written = True
        self.for_path(made.name).integrity_check(timeout=request.timeout)
        return size

    def discard_target(self, made: SQLiteRestoreTarget) -> None:
        """Remove the file once written (it failed its check), else the temporary file a
        killed write left; an old file a forced restore was to replace stays until then."""
        if made.written:
            self.drop(made.name)
        else:
            partial = ["sh", "-c", _DISCARD_PARTIAL, "sh", made.name, made.token]
            self.run(partial, what="removing the partial restore")

    def restored_facts(self, made: SQLiteRestoreTarget, request: RestoreRequest) -> Facts:
        return self.for_path(made.name).snapshot_facts() | {"path": made.name}

    def drop(self, target_name: str, *, timeout: float = QUERY_TIMEOUT) -> None:
        """Remove a restored file and its -wal, -shm and -journal files; never the source."""
        dest = self.target_path(target_name)
        if self.is_source(dest):
            raise self.error(f"refusing to remove the source database file {dest}")
        self.run(
            ["rm", "-f", "--", dest, f"{dest}-wal", f"{dest}-shm", f"{dest}-journal"],
            timeout=timeout,
            what="removing the restored file",
        )


def _owner(process: Mapping[str, Any]) -> str:
    """A process as the owner part of a backup copy's token: ``<pid>x<start ticks>``."""
    return f"{process['pid']}x{process.get('pid_started') or 0}"


def _left_owner(name: str) -> dict[str, Any] | None:
    """The process (``processes.this_process`` form) a backup copy's directory name says
    made it, ``None`` for a name that says none (``crmmaint-sqlite.<pid>x<start>-<hex>.X``)."""
    found = re.fullmatch(r"crmmaint-sqlite\.(\d+)x(\d+)-[0-9a-f]+\.\w+", name)
    if found is None:
        return None
    me = this_process()
    started = int(found.group(2)) or None
    return {**me, "pid": int(found.group(1)), "pid_started": started}
