"""Caches: Redis through redis-cli on the cache's host, cache directories through find, and
an application's own cache endpoint over HTTP from the runner.

Clearing by pattern uses SCAN (never KEYS) and UNLINK in modest batches, one command at a time
on one connection, so other clients never wait behind more than one short command; a
whole-database flush (FLUSHDB of the configured database only) happens only when explicitly
allowed. Directories are cleared by find without following symlinks or leaving them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from crmmaint.engines.base import transport_failure
from crmmaint.engines.http_probe import ProbeError, send_from_runner
from crmmaint.errors import CommandTimeout, ConfigError, EngineError, TransportError
from crmmaint.inventory import (
    Cache,
    SecretSource,
    cache_directory_problem,
    endpoint_problem,
    file_glob_problem,
    normalise_directory,
    parse_redis_url,
)
from crmmaint.transport.base import CommandResult, Process, Transport

log = logging.getLogger(__name__)

QUERY_TIMEOUT = 60.0
#: Keys per batch (one script call that counts and UNLINKs them): about a millisecond of the
#: server's time for small keys.
UNLINK_BATCH = 500
#: The most keys a batch may hold (``batch``): the server serves no one else during a batch.
MAX_UNLINK_BATCH = 5000
#: Buckets one ``SCAN`` call visits (its COUNT): well under a millisecond of the server's time.
SCAN_COUNT = 1000
#: Seconds an application's cache endpoint may take to answer, by default.
ENDPOINT_TIMEOUT = 60.0
#: Seconds to wait for a redis-cli that ended early to say why.
KILL_WAIT = 5.0

#: One batch: for each key (KEYS) that still exists, count it, whether it has no TTL and its
#: MEMORY USAGE; then UNLINK them all unless ARGV[1] is "0" (check mode). Returns
#: {existing, without TTL, bytes, removed}. Only reads in check mode.
_CLEAR_SCRIPT = """\
local existing, no_ttl, bytes, removed = 0, 0, 0, 0
for _, key in ipairs(KEYS) do
  local ttl = redis.call('PTTL', key)
  if ttl ~= -2 then
    existing = existing + 1
    if ttl == -1 then no_ttl = no_ttl + 1 end
    bytes = bytes + (redis.call('MEMORY', 'USAGE', key) or 0)
  end
end
if ARGV[1] == '1' and existing > 0 then removed = redis.call('UNLINK', unpack(KEYS)) end
return {existing, no_ttl, bytes, removed}
"""

# $1 = directory (normalised); the rest is find's expression. A directory that is a symlink,
# or is reached through one (its real path, from `cd -P` and `pwd -P`, differs: printed on
# stderr), is not followed; one that is missing holds nothing to clear: each said by its own
# exit status. find then runs inside the directory it checked ("."), so a link put in the way
# afterwards leads nowhere (exec: stopping the command stops find itself).
_FIND_IN_DIR = (
    'd=$1; shift; [ -L "$d" ] && exit 90; [ -e "$d" ] || exit 91; [ -d "$d" ] || exit 92; '
    'cd -P -- "$d" || exit 93; r=$(pwd -P) || exit 93; '
    '[ "$r" = "$d" ] || { printf "%s\\n" "$r" >&2; exit 94; }; exec find . "$@"'
)
_FIND_SKIPS = {
    90: "a symlink, not followed: name the directory it points to",
    91: "does not exist",
    92: "not a directory",
    93: "could not be entered (no search permission?)",
    94: "reached through a symlink, not followed: name the real directory",
    95: "removed while it was being cleared",
}


@dataclass(frozen=True)
class RedisAddress:
    """Where redis-cli connects: host/port or a unix socket, a database number, TLS or not."""

    host: str | None = None
    port: int | None = None
    socket: str | None = None
    db: int = 0
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """The address in a cache's ``redis`` URL (``crmmaint.inventory.parse_redis_url``);
        ``ConfigError`` for one the inventory loader would have refused."""
        try:
            host, port, socket, db, tls = parse_redis_url(url)
        except ValueError as exc:
            raise ConfigError(
                f"redis URL: {exc}", hint="correct the cache's 'redis' in the inventory"
            ) from None
        return cls(host=host, port=port, socket=socket, db=db, tls=tls)

    def args(self) -> list[str]:
        args = ["-s", self.socket] if self.socket else ["-h", str(self.host), "-p", str(self.port)]
        if self.tls:
            args.append("--tls")
        return [*args, "-n", str(self.db)]


#: Printable ASCII but the two characters quoting escapes (``"`` and ``\\``).
_PLAIN_ARG = re.compile(rb"[ !#-\[\]-~]*")


def quote_arg(value: bytes) -> str:
    """One argument for redis-cli's stdin parser: double-quoted, non-printables as \\xHH."""
    if _PLAIN_ARG.fullmatch(value):  # the common case, without a loop over its bytes
        return '"' + value.decode("ascii") + '"'
    out = []
    for byte in value:
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append(f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


_CLEAR_SCRIPT_ARG = quote_arg(_CLEAR_SCRIPT.encode())


def parse_info(text: str) -> dict[str, str]:
    """``INFO`` output as a flat dict (``db0`` keeps its ``keys=…,expires=…`` string)."""
    info = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    return info


#: How redis-cli's answer begins when a command failed.
_FAILED_REPLIES = ("ERR", "NOAUTH", "WRONGPASS", "Could not")


class RedisCache:
    """A cache from the inventory: a Redis database and/or cache directories on its host."""

    #: What redis-cli says when the server refuses the configured password (``inventory check
    #: --connect`` then names the password's source).
    login_refusals: tuple[str, ...] = ("AUTH failed", "WRONGPASS", "NOAUTH")

    def __init__(self, cache: Cache, transport: Transport) -> None:
        self.cache = cache
        self.transport = transport
        self.address = RedisAddress.parse(cache.redis) if cache.redis else None

    @property
    def where(self) -> str:
        return f"cache {self.cache.name!r} on host {self.transport.host}"

    def error(
        self, what: str, *, hint: str | None = None, retryable: bool | None = None
    ) -> EngineError:
        return EngineError(f"{self.where}: {what}", hint=hint, retryable=retryable)

    def _env(self) -> dict[str, str]:
        if self.cache.password is None:
            return {}
        return {"REDISCLI_AUTH": self.cache.password.resolve().decode("utf-8")}

    def _cli(self, *extra: str) -> list[str]:
        if self.address is None:
            raise self.error("no redis URL configured")
        return ["redis-cli", *self.address.args(), *extra]

    def _run(
        self, commands: str, *, timeout: float = QUERY_TIMEOUT, what: str = "redis-cli"
    ) -> CommandResult:
        """Feed redis-cli commands over stdin; errors (also ``ERR`` replies, and a server it
        could not connect to, which redis-cli reports on stderr with exit status 0) raise."""
        try:
            result = self.transport.run(
                self._cli(), stdin=commands.encode(), timeout=timeout, env=self._env()
            )
        except TransportError as exc:
            raise transport_failure(exc, f"{self.where}: {what}") from exc
        self._check_selected(result.stderr, what)
        unreachable = result.stderr.startswith(b"Could not connect")
        if unreachable or not result.ok or result.text.startswith(_FAILED_REPLIES):
            detail = stderr_text(result.stderr) or _shorten(result.text.strip(), 300)
            raise self.error(f"{what} failed: {detail}")
        return result

    def _check_selected(self, stderr: bytes, what: str) -> None:
        """Raise when redis-cli said its ``SELECT`` of the configured database failed: it then
        carries on in database 0, so what it answered (or did) was not this cache's."""
        for line in stderr.decode("utf-8", "replace").splitlines():
            if line.startswith("SELECT ") and " failed" in line:
                raise self.database_refused(what, line.strip())

    def database_refused(self, what: str, detail: str) -> EngineError:
        db = self.address.db if self.address else 0
        return self.error(
            f"{what}: the server refused database {db} ({_shorten(detail, 200)}); nothing"
            " was cleared",
            hint="a server has databases 0 to its 'databases' setting minus one: correct the"
            " database number in the cache's redis URL",
            retryable=False,
        )

    # --- health ---------------------------------------------------------------------------

    def ping(self, *, timeout: float = 30.0) -> float:
        """``PING``; returns the round trip in seconds. A configured password the server did
        not accept fails it too: redis-cli says ``AUTH failed`` and goes on without one, which
        a server that needs no password answers."""
        start = time.monotonic()
        result = self._run("PING\n", timeout=timeout, what="PING")
        refused = stderr_text(result.stderr)
        if self.cache.password is not None and "AUTH failed" in refused:
            raise self.error(f"PING: login refused: {refused}")
        answer = result.text.strip()
        if answer != "PONG":
            raise self.error(f"PING answered {answer[:100]!r}")
        return time.monotonic() - start

    def info(self, *, timeout: float = QUERY_TIMEOUT) -> dict[str, float | int | str | None]:
        """Memory, clients, hit ratio and evictions from ``INFO``."""
        raw = parse_info(self._run("INFO\n", timeout=timeout, what="INFO").text)
        hits, misses = int(raw.get("keyspace_hits", 0)), int(raw.get("keyspace_misses", 0))
        keyspace = raw.get(f"db{self.address.db if self.address else 0}", "")
        keys = dict(item.split("=", 1) for item in keyspace.split(",") if "=" in item)
        return {
            "version": raw.get("redis_version"),
            "uptime": int(raw.get("uptime_in_seconds", 0)),
            "used_memory": int(raw.get("used_memory", 0)),
            "maxmemory": int(raw.get("maxmemory", 0)),
            "connected_clients": int(raw.get("connected_clients", 0)),
            "keyspace_hits": hits,
            "keyspace_misses": misses,
            "hit_ratio": hits / (hits + misses) if hits + misses else None,
            "evicted_keys": int(raw.get("evicted_keys", 0)),
            "keys": int(keys.get("keys", 0)),
        }

    # --- clearing keys --------------------------------------------------------------------

    def clear(
        self,
        pattern: str | None,
        check: bool,
        *,
        allow_flush: bool = False,
        timeout: float = 600.0,
    ) -> int:
        """Remove keys matching ``pattern`` (``clear_keys``); in check mode only count them.
        Returns the keys removed (check mode: that would be).

        ``pattern=None`` means the whole database and needs ``allow_flush`` (FLUSHDB of the
        configured database; other databases of the server are never touched); without it
        ``EngineError`` is raised and nothing is touched.
        """
        if pattern is None:
            if not allow_flush:
                raise self.error(
                    "refusing to clear every key without a pattern",
                    hint="give a key pattern, or allow a flush of this database explicitly",
                )
            return self.flush_database(check, timeout=timeout).matched
        done = self.clear_keys(pattern, check, timeout=timeout)
        return done.matched if check else done.removed

    def clear_keys(
        self,
        pattern: str,
        check: bool,
        *,
        batch: int = UNLINK_BATCH,
        pause: float = 0.0,
        stop_at: float | None = None,
        timeout: float = 600.0,
    ) -> KeyClearing:
        """Remove the keys matching ``pattern`` (Redis glob) from the configured database.

        One redis-cli connection walks the keyspace with ``SCAN … MATCH pattern COUNT
        SCAN_COUNT`` (never KEYS) and hands the keys it finds, ``batch`` at a time (at most
        ``MAX_UNLINK_BATCH``), to one script call that counts those that still exist, those
        without a TTL and their ``MEMORY USAGE``, and UNLINKs them (check mode: only counts).
        Each command waits for the one before (nothing is pipelined) and ``pause`` seconds
        follow each batch, so other clients wait at most one short command. No new command
        starts after ``stop_at`` (``time.monotonic()``): the result is then not ``finished``.
        ``timeout`` (seconds) bounds the whole walk. A key SCAN returns that the pattern does
        not match here too (a key holding a line break, which redis-cli prints as two lines)
        is left alone and counted in ``ignored``.

        Raises ``EngineError`` (the server refused a command, scripting disabled, timed
        out) or the transport's error.
        """
        if not 1 <= batch <= MAX_UNLINK_BATCH:
            raise self.error(f"batch must be 1 to {MAX_UNLINK_BATCH} keys, not {batch}")
        matches = redis_glob(pattern)
        done = KeyClearing(pattern=pattern, check=check)
        started = time.monotonic()
        match = f" MATCH {quote_arg(pattern.encode())} COUNT {SCAN_COUNT}"
        with self._session(f"clearing {pattern!r}", timeout) as session:
            cursor = "0"
            pending: list[bytes] = []
            while True:
                if _passed(stop_at):
                    done.finished = False
                    break
                cursor, keys = _scan_reply(session.call(f"SCAN {cursor}{match}"), self)
                for key in keys:
                    if matches(key):
                        pending.append(key)
                    else:
                        done.ignored += 1
                scanned = cursor == "0"
                while pending and (len(pending) >= batch or scanned):
                    if _passed(stop_at):
                        break
                    self._clear_batch(session, pending[:batch], check, done)
                    del pending[:batch]
                    if pause:
                        time.sleep(pause)
                if pending and scanned:
                    done.finished = False
                if scanned:
                    break
        done.seconds = time.monotonic() - started
        log.info(
            "%s: %s %d of %d keys matching %r (%d without TTL) in %d batches, %.1fs%s",
            self.where,
            "would unlink" if check else "unlinked",
            done.matched if check else done.removed,
            done.matched,
            pattern,
            done.without_ttl,
            done.batches,
            done.seconds,
            "" if done.finished else ", stopped before the end",
        )
        return done

    def _clear_batch(
        self, session: _Session, keys: list[bytes], check: bool, done: KeyClearing
    ) -> None:
        keys = list(dict.fromkeys(keys))  # SCAN may return a key twice
        command = " ".join(
            [
                "EVAL",
                _CLEAR_SCRIPT_ARG,
                str(len(keys)),
                *(quote_arg(k) for k in keys),
                "0" if check else "1",
            ]
        )
        reply = session.call(command)
        if len(reply) != 4 or not all(line.isdigit() for line in reply):
            text = b" ".join(reply).decode("utf-8", "replace").strip()[:300]
            raise self.error(
                f"clearing keys failed: {text or 'no answer'}",
                hint="crmmaint clears keys with a script: the cache's user needs EVAL, PTTL,"
                " MEMORY USAGE and UNLINK",
            )
        matched, without_ttl, size, removed = (int(line) for line in reply)
        done.matched += matched
        done.without_ttl += without_ttl
        done.bytes = (done.bytes or 0) + size
        done.removed += removed
        done.batches += 1

    def flush_database(self, check: bool, *, timeout: float = QUERY_TIMEOUT) -> KeyClearing:
        """``FLUSHDB ASYNC`` of the configured database only (check mode: count it). The keys
        and those without a TTL come from ``DBSIZE`` and ``INFO keyspace`` (counted by the
        server, not sampled); their memory is not known (``bytes`` is ``None``). The caller
        decides that a flush is wanted (``flush: database``). Raises ``EngineError``."""
        started = time.monotonic()
        db = self.address.db if self.address else 0
        # One connection whose database was selected and checked first (``_session``):
        # redis-cli would flush database 0 after failing to select a missing one.
        with self._session(f"flushing database {db}", timeout) as session:
            first = session.call("DBSIZE")
            if len(first) != 1 or not first[0].isdigit():
                text = b" ".join(first).decode("utf-8", "replace").strip()
                raise self.error(f"DBSIZE answered {_shorten(text, 100)!r}")
            keys = int(first[0])
            raw = b"\n".join(session.call("INFO keyspace")).decode("utf-8", "replace")
            keyspace = parse_info(raw).get(f"db{db}", "")
            fields = dict(item.split("=", 1) for item in keyspace.split(",") if "=" in item)
            expiring = int(fields.get("expires", 0))
            done = KeyClearing(pattern=None, check=check, matched=keys, bytes=None)
            done.without_ttl = max(0, keys - expiring)
            if not check:
                answer = session.call("FLUSHDB ASYNC")
                if answer != [b"OK"]:
                    text = b" ".join(answer).decode("utf-8", "replace").strip()
                    raise self.error(f"FLUSHDB failed: {_shorten(text, 300) or 'no answer'}")
                done.removed = keys
        if not check:
            log.info("%s: flushed database %d (%d keys)", self.where, db, keys)
        done.batches = 1
        done.seconds = time.monotonic() - started
        return done

    def used_memory(self, *, settle: float = 0.0, timeout: float = QUERY_TIMEOUT) -> int:
        """The server's ``used_memory`` (bytes, from ``INFO memory``), read once the server
        has no objects left to free in the background (``lazyfree_pending_objects``: what
        UNLINK and FLUSHDB ASYNC hand to a thread), waiting at most ``settle`` seconds for
        that. Raises ``EngineError``."""
        give_up = time.monotonic() + settle
        while True:
            info = parse_info(self._run("INFO memory\n", timeout=timeout, what="INFO").text)
            pending = int(info.get("lazyfree_pending_objects", 0) or 0)
            if not pending or time.monotonic() >= give_up:
                return int(info.get("used_memory", 0) or 0)
            time.sleep(0.05)

    @contextlib.contextmanager
    def _session(self, what: str, timeout: float) -> Iterator[_Session]:
        """One redis-cli connection for ``what``, answering command by command; ``PING``
        first, so an unreachable server or a refused password fails at once, then ``SELECT``
        of the configured database on the connection itself, so a database the server does
        not have fails before any command runs. Timeouts and transport failures become
        ``EngineError`` / the transport's error naming ``what``."""
        self.ping(timeout=min(timeout, 30.0))
        try:
            with self.transport.start(self._cli("--raw"), stdout="stream", env=self._env()) as proc:
                proc.set_timeout(timeout)
                session = _Session(proc, self)
                # redis-cli carries on in database 0 when its own SELECT failed (it says so
                # on stderr only): select again on this connection, before anything else.
                db = self.address.db if self.address else 0
                answer = session.call(f"SELECT {db}")
                if answer != [b"OK"]:
                    text = b" ".join(answer).decode("utf-8", "replace").strip()
                    raise self.database_refused(what, text or "no answer")
                yield session
                proc.close_stdin()
                ended = proc.wait()
                self._check_selected(ended.stderr, what)
        except CommandTimeout as exc:
            raise self.error(f"{what} timed out after {timeout:g}s") from exc
        except TransportError as exc:
            raise transport_failure(exc, f"{self.where}: {what}") from exc

    # --- cache directories ----------------------------------------------------------------

    def clear_directory(
        self,
        paths: list[str] | None = None,
        older_than: float | None = None,
        check: bool = True,
        *,
        timeout: float = 600.0,
    ) -> tuple[int, int]:
        """Delete files under cache directories (older than ``older_than`` seconds): the sum
        of ``clear_files`` over ``paths`` (default: the cache's directories).

        Returns (files, bytes) removed, or that would be in check mode. Raises
        ``EngineError`` for a path that is not a cache directory or when find fails.
        """
        paths = self.cache.directories if paths is None else paths
        files = size = 0
        for path in paths:
            done = self.clear_files(path, check, older_than=older_than, timeout=timeout)
            if done.error:
                raise self.error(f"clearing directory {path} failed: {done.error}")
            files += done.files
            size += done.bytes
        return files, size

    def clear_files(
        self,
        path: str,
        check: bool,
        *,
        patterns: tuple[str, ...] | list[str] = ("*",),
        older_than: float | None = None,
        stop_at: float | None = None,
        timeout: float = 600.0,
        inventory_dir: str | None = None,
    ) -> DirectoryClearing:
        """Delete the regular files below directory ``path`` on the cache's host whose names
        match one of ``patterns`` (find ``-name`` globs) and, with ``older_than`` (seconds),
        that were last modified longer ago; check mode only counts them and their bytes.

        Never leaves ``path``: ``path`` must be absolute, not the root in any spelling nor
        (given ``inventory_dir``) the inventory's folder or above it, without ``..``
        (``cache_directory_problem``); a ``path`` that is a symlink, or whose real path on
        the host differs from it (a symlink on the way), is not followed (``skipped`` says
        so); nor is one removed while find ran (``skipped`` too); find neither
        follows symlinks inside (a link is never a regular file) nor crosses into another
        filesystem (``-xdev``), and deletes relative to the directory it opened. Directories
        are kept. Needs GNU find (``-printf``, fractional ``-mmin``).

        The count streams back file by file: at ``stop_at`` (``time.monotonic()``) find is
        stopped and the result is not ``finished``; ``timeout`` (seconds) is an error. A find
        that could not remove or read something sets ``error`` (the counts stay). Raises
        ``EngineError`` for a refused path or pattern, or the transport's error.
        """
        problem = cache_directory_problem(path, inventory_dir)
        if problem is not None:
            raise self.error(f"refusing to clear {path!r}: {problem}")
        for pattern in patterns:
            if (problem := file_glob_problem(pattern)) is not None:
                raise self.error(f"refusing to clear {path}: {problem}")
        path = normalise_directory(path)
        names: list[str] = []
        for pattern in patterns:
            names += ["-o", "-name", pattern] if names else ["-name", pattern]
        expr = [path, "-xdev", "-type", "f", "(", *names, ")"]
        if older_than is not None:
            expr += ["-mmin", f"+{older_than / 60:.4f}"]
        # "SIZE:" before -delete (the size needs the file), "x" and a line end once it is gone:
        # a file find could not delete leaves its "SIZE:" without an "x".
        expr += ["-printf", "%s:"] + ([] if check else ["-delete"]) + ["-printf", "x\\n"]
        done = DirectoryClearing(path=path, check=check)
        started = time.monotonic()
        limit = timeout if stop_at is None else min(timeout, max(0.001, stop_at - started))
        try:
            with self.transport.start(
                ["sh", "-c", _FIND_IN_DIR, "sh", *expr], stdout="stream"
            ) as proc:
                proc.set_timeout(limit)
                pending = b""
                try:
                    while chunk := proc.read():
                        lines = (pending + chunk).split(b"\n")
                        pending = lines.pop()
                        for line in lines:
                            *_, size, removed = line.split(b":")
                            if removed == b"x":
                                done.files += 1
                                done.bytes += int(size)
                    result = proc.wait()
                except CommandTimeout:
                    if limit >= timeout:
                        raise
                    done.finished = False  # stop_at came: find was stopped
                else:
                    if result.exit_status == 94:
                        real = stderr_text(result.stderr, 200)
                        done.skipped = _FIND_SKIPS[94] + (f" (it is {real})" if real else "")
                    elif result.exit_status in _FIND_SKIPS:
                        done.skipped = _FIND_SKIPS[result.exit_status]
                    elif not result.ok:
                        done.error = stderr_text(result.stderr) or (
                            f"exit status {result.exit_status}"
                        )
                        done.vanished = _only_vanished(result.stderr)
                        if not self._is_directory(path):
                            done.skipped, done.error = _FIND_SKIPS[95], None
        except CommandTimeout as exc:
            raise self.error(f"clearing directory {path} timed out after {timeout:g}s") from exc
        except TransportError as exc:
            raise transport_failure(exc, f"{self.where}: clearing directory {path}") from exc
        done.seconds = time.monotonic() - started
        log.info(
            "%s: %s %d files (%d bytes) in %s%s",
            self.where,
            "would remove" if check else "removed",
            done.files,
            done.bytes,
            path,
            f" ({done.skipped})" if done.skipped else "",
        )
        return done

    def _is_directory(self, path: str) -> bool:
        """Whether ``path`` is (still) a directory on the cache's host."""
        try:
            return self.transport.run(["test", "-d", path], timeout=30.0).ok
        except TransportError:
            return True  # unknown: keep find's own error

    # --- the application's cache endpoint -------------------------------------------------

    def call_endpoint(
        self,
        url: str,
        *,
        method: str = "POST",
        token: SecretSource | None = None,
        timeout: float = ENDPOINT_TIMEOUT,
    ) -> EndpointCall:
        """Ask the application to clear its own cache: an HTTP ``method`` request to ``url``
        made from this machine (the runner), with ``Authorization: Bearer <token>`` when a
        token source is given. Redirects are not followed (they would carry the token
        elsewhere). Returns the status and time taken (seconds).

        The token is never logged and never part of an error: server text quoted in one has
        it blanked out. Raises ``EngineError`` for a bad URL, a token that cannot travel in a
        header or a failed connection, ``EndpointRefused`` for an answer outside 2xx (its
        ``status`` in the message and the error; a 3xx says redirects are not followed);
        ``CryptoError`` when the token's source cannot be read.
        """
        problem = endpoint_problem(url)
        if problem is not None:
            raise self.error(problem)
        secret = token.resolve() if token is not None else None
        headers = {"User-Agent": "crmmaint cache.clear"}
        if secret is not None and any(b <= 32 or b >= 127 for b in secret):
            raise self.error(
                f"the token from {token.describe()} holds a space, a control or a "
                "non-ASCII character: it cannot be sent in an Authorization header",
                hint="check what the source holds (one line, the token alone)",
            )
        try:
            answer = send_from_runner(
                url,
                method,
                timeout=timeout,
                headers=headers,
                body=b"",
                token=secret.decode("ascii") if secret is not None else None,
            )
        except ProbeError as exc:
            raise self.error(
                exc.message,
                hint="check that the application answers at this URL from this machine",
            ) from None
        status, seconds = answer.status, answer.seconds
        if not 200 <= status < 300:
            reason = f" {answer.reason}" if answer.reason else ""
            if 300 <= status < 400:
                hint = (
                    "crmmaint does not follow redirects (they would carry the token elsewhere):"
                    " configure the URL the endpoint redirects to"
                )
            else:
                hint = _STATUS_HINTS.get(status, "see the application's log for why")
            error = EndpointRefused(
                f"{self.where}: {method} {url} answered {status}{reason}", hint=hint
            )
            error.status = status
            raise error
        log.info("%s: %s %s answered %d in %.0f ms", self.where, method, url, status, seconds * 1e3)
        return EndpointCall(url=url, method=method, status=status, seconds=seconds)


class EndpointRefused(EngineError):
    """The cache endpoint was called and answered outside 2xx (``status``)."""

    status: int = 0


@dataclass
class KeyClearing:
    """What clearing one key pattern (``pattern=None``: the whole database) found and did.

    ``matched``: keys that matched and existed when their batch ran (check mode: what would
    be removed); ``removed``: keys UNLINK removed (0 in check mode); ``without_ttl``: of the
    matched keys, those without a TTL, counted key by key (a flush: from the server's
    keyspace counts); ``bytes``: the ``MEMORY USAGE`` of the matched keys (``None`` for a
    flush); ``ignored``: keys SCAN returned that the pattern does not match here (see
    ``RedisCache.clear_keys``); ``seconds``: wall time; ``finished``: ``False`` when stopped at
    its ``stop_at`` before every matching key was seen. SCAN may return a key twice while the
    server resizes its table: a check-mode count may then count it twice (removing it once
    leaves nothing for the second time to count)."""

    pattern: str | None
    check: bool
    matched: int = 0
    removed: int = 0
    without_ttl: int = 0
    bytes: int | None = 0
    batches: int = 0
    ignored: int = 0
    seconds: float = 0.0
    finished: bool = True


@dataclass
class DirectoryClearing:
    """What clearing one cache directory found and did: ``files`` and ``bytes`` removed (check
    mode: that would be), ``seconds`` of wall time; ``finished`` is ``False`` when stopped at
    its ``stop_at``; ``skipped`` says why the directory was not looked at (missing, a
    symlink, not a directory); ``error`` is what find could not do (the counts stay)."""

    path: str
    check: bool
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    finished: bool = True
    skipped: str | None = None
    error: str | None = None
    #: ``error`` says only that files or folders went away while find ran (another process
    #: removing them at the same time), not that something could not be removed.
    vanished: bool = False


@dataclass(frozen=True)
class EndpointCall:
    """A cache endpoint's answer: ``status`` (2xx) after ``seconds``."""

    url: str
    method: str
    status: int
    seconds: float


class _Session:
    """A redis-cli connection fed over stdin, one command at a time: each command is followed
    by ``ECHO <marker>`` and its answer is the lines before the marker's echo (redis-cli
    prints raw replies, one element a line, and says nothing of where an answer ends)."""

    def __init__(self, proc: Process, cache: RedisCache) -> None:
        self.proc = proc
        self.cache = cache
        self.marker = b"crmmaint-end-" + secrets.token_hex(8).encode()
        self.buffer = b""

    def call(self, command: str) -> list[bytes]:
        """Send one command line; its answer's lines (raw bytes, without line ends)."""
        self.proc.write(command.encode() + b"\nECHO " + self.marker + b"\n")
        token = self.marker + b"\n"
        searched = 0
        while True:
            if self.buffer.startswith(token):  # an answer of no lines
                end = 0
            else:
                found = self.buffer.find(b"\n" + token, searched)
                end = found + 1 if found >= 0 else -1
            if end >= 0:
                reply, self.buffer = self.buffer[:end], self.buffer[end + len(token) :]
                return reply.split(b"\n")[:-1]
            searched = max(0, len(self.buffer) - len(token))
            chunk = self.proc.read()
            if not chunk:
                self.proc.close_stdin()
                ended = self.proc.wait(timeout=KILL_WAIT)
                raise self.cache.error(
                    f"redis-cli ended early: {stderr_text(ended.stderr) or 'no message'}",
                    hint="the server may have gone away; run again once it answers",
                )
            self.buffer += chunk


def _scan_reply(lines: list[bytes], cache: RedisCache) -> tuple[str, list[bytes]]:
    """(next cursor, keys) of a raw ``SCAN`` answer: the cursor, then one key a line (an
    empty line: no keys). Raises ``EngineError`` for an error answer."""
    if not lines or not lines[0].isdigit():
        text = b" ".join(lines).decode("utf-8", "replace").strip()[:300]
        raise cache.error(
            f"SCAN failed: {text or 'no answer'}",
            hint="check the cache's password and that its user may run SCAN",
        )
    return lines[0].decode(), [key for key in lines[1:] if key]


def _passed(moment: float | None) -> bool:
    return moment is not None and time.monotonic() >= moment


def _only_vanished(stderr: bytes) -> bool:
    """find complained only of entries that were gone when it got to them."""
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return bool(lines) and all(line.endswith("No such file or directory") for line in lines)


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to at most about ``limit`` characters at a word's end, ``…`` marking a cut."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(" |,;:") + " …"


def stderr_text(stderr: bytes, limit: int = 400) -> str:
    """The end of a command's stderr for a message: whole lines from the last backwards
    (joined with ``" | "``, a line repeated right after itself said once) while they fit in
    ``limit`` characters, so nothing starts mid-word; one line longer than that is cut at a
    word's end."""
    lines: list[str] = []
    for line in stderr.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line and (not lines or lines[-1] != line):
            lines.append(line)
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        if kept and size + len(line) + 3 > limit:
            kept.append("…")
            break
        kept.append(_shorten(line, limit))
        size += len(kept[-1]) + 3
    return " | ".join(reversed(kept))


def redis_glob(pattern: str) -> Callable[[bytes], bool]:
    """Redis's glob (``*``, ``?``, ``[a-z]``, ``[^…]``, ``\\`` escapes; case-sensitive) as a
    test of a key's bytes, for checking what SCAN's MATCH returned. An unclosed ``[`` set
    ends at the pattern's end, as in Redis."""
    pat = pattern.encode()
    out: list[bytes] = []
    i = 0
    while i < len(pat):
        c = pat[i]
        if c == ord("*"):
            out.append(b".*")
        elif c == ord("?"):
            out.append(b".")
        elif c == ord("\\") and i + 1 < len(pat):
            i += 1
            out.append(re.escape(pat[i : i + 1]))
        elif c == ord("["):
            i += 1
            negate = i < len(pat) and pat[i] == ord("^")
            i += negate
            members: set[int] = set()
            while i < len(pat) and pat[i] != ord("]"):
                if pat[i] == ord("\\") and i + 1 < len(pat):
                    i += 1
                    members.add(pat[i])
                elif i + 2 < len(pat) and pat[i + 1] == ord("-"):
                    low, high = sorted((pat[i], pat[i + 2]))
                    members.update(range(low, high + 1))
                    i += 2
                else:
                    members.add(pat[i])
                i += 1
            if negate:
                members = set(range(256)) - members
            out.append(
                b"[" + b"".join(re.escape(bytes([m])) for m in sorted(members)) + b"]"
                if members
                else b"(?!)"
            )
        else:
            out.append(re.escape(pat[i : i + 1]))
        i += 1
    compiled = re.compile(b"".join(out), re.DOTALL)
    return lambda key: compiled.fullmatch(key) is not None


_STATUS_HINTS = {
    401: "the endpoint refused the token: check the token's source",
    403: "the endpoint refused the token: check the token's source",
    404: "check the endpoint URL",
    405: "the endpoint wants another method: set clear: {method: …}",
}
