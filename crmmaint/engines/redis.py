"""Caches: Redis through redis-cli on the cache's host, and cache directories through find.

Clearing by pattern uses SCAN (never KEYS) and UNLINK in batches; a whole-database flush
(FLUSHDB of the configured database only) happens only when explicitly allowed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from crmmaint.engines.base import transport_failure
from crmmaint.errors import CommandTimeout, EngineError, TransportError
from crmmaint.inventory import Cache
from crmmaint.transport.base import CommandResult, Process, Transport

log = logging.getLogger(__name__)

QUERY_TIMEOUT = 60.0
#: Keys per UNLINK command.
UNLINK_BATCH = 500

# $1 = directory; the rest is find's expression. A missing directory holds nothing to clear.
_FIND_IN_DIR = 'test -d "$1" || exit 0; exec find "$@"'


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
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        if parts.scheme == "unix":
            return cls(socket=unquote(parts.path), db=int(query.get("db", ["0"])[0]))
        path_db = parts.path.strip("/")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(path_db or query.get("db", ["0"])[0]),
            tls=parts.scheme == "rediss",
        )

    def args(self) -> list[str]:
        args = ["-s", self.socket] if self.socket else ["-h", str(self.host), "-p", str(self.port)]
        if self.tls:
            args.append("--tls")
        return [*args, "-n", str(self.db)]


def quote_arg(value: bytes) -> str:
    """One argument for redis-cli's stdin parser: double-quoted, non-printables as \\xHH."""
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

    def error(self, what: str, *, hint: str | None = None) -> EngineError:
        return EngineError(f"{self.where}: {what}", hint=hint)

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
        unreachable = result.stderr.startswith(b"Could not connect")
        if unreachable or not result.ok or result.text.startswith(_FAILED_REPLIES):
            detail = result.stderr_tail() or result.text.strip()[:300]
            raise self.error(f"{what} failed: {detail}")
        return result

    # --- health ---------------------------------------------------------------------------

    def ping(self, *, timeout: float = 30.0) -> float:
        """``PING``; returns the round trip in seconds. A configured password the server did
        not accept fails it too: redis-cli says ``AUTH failed`` and goes on without one, which
        a server that needs no password answers."""
        start = time.monotonic()
        result = self._run("PING\n", timeout=timeout, what="PING")
        refused = result.stderr_tail()
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

    # --- clearing -------------------------------------------------------------------------

    def clear(
        self,
        pattern: str | None,
        check: bool,
        *,
        allow_flush: bool = False,
        timeout: float = 600.0,
    ) -> int:
        """Remove keys matching ``pattern`` (SCAN + UNLINK); in check mode only count them.

        ``pattern=None`` means the whole database and needs ``allow_flush`` (FLUSHDB of the
        configured database; other databases of the server are never touched).
        """
        if pattern is None:
            if not allow_flush:
                raise self.error(
                    "refusing to clear every key without a pattern",
                    hint="give a key pattern, or allow a flush of this database explicitly",
                )
            count = int(self._run("DBSIZE\n", what="DBSIZE").text.strip() or 0)
            if not check:
                self._run("FLUSHDB ASYNC\n", timeout=timeout, what="FLUSHDB")
                log.info("%s: flushed database %d (%d keys)", self.where, self.address.db, count)
            return count
        return self._scan_unlink(pattern, check, timeout)

    def _scan_unlink(self, pattern: str, check: bool, timeout: float) -> int:
        scan = self._cli("--scan", "--pattern", pattern)
        found = removed = 0
        try:
            with contextlib.ExitStack() as stack:
                scanner = stack.enter_context(
                    self.transport.start(scan, stdout="stream", env=self._env())
                )
                scanner.set_timeout(timeout)
                unlinker = None
                if not check:
                    unlinker = stack.enter_context(
                        self.transport.start(self._cli(), stdout="collect", env=self._env())
                    )
                    unlinker.set_timeout(timeout)
                batch: list[bytes] = []
                pending = b""
                while chunk := scanner.read():
                    lines = (pending + chunk).split(b"\n")
                    pending = lines.pop()
                    found += len(lines)
                    if unlinker is not None:
                        batch += lines
                        while len(batch) >= UNLINK_BATCH:
                            self._unlink(unlinker, batch[:UNLINK_BATCH])
                            batch = batch[UNLINK_BATCH:]
                if pending:
                    found += 1
                    batch.append(pending)
                result = scanner.wait()
                if not result.ok:
                    raise self.error(f"SCAN failed: {result.stderr_tail()}")
                if unlinker is not None:
                    if batch:
                        self._unlink(unlinker, batch)
                    unlinker.close_stdin()
                    removed = self._unlinked(unlinker.wait())
        except CommandTimeout as exc:
            raise self.error(f"clearing {pattern!r} timed out after {timeout}s") from exc
        except TransportError as exc:
            raise transport_failure(exc, f"{self.where}: clearing {pattern!r}") from exc
        verb = "would unlink" if check else "unlinked"
        log.info(
            "%s: %s %d keys matching %r", self.where, verb, found if check else removed, pattern
        )
        return found if check else removed

    def _unlinked(self, done: CommandResult) -> int:
        replies = done.stdout.decode("utf-8", "replace").split()
        if not done.ok or any(not r.isdigit() for r in replies):
            detail = done.stderr_tail() or " ".join(replies)[:200]
            raise self.error(f"UNLINK failed: {detail}")
        return sum(int(r) for r in replies)

    @staticmethod
    def _unlink(proc: Process, keys: list[bytes]) -> None:
        proc.write(("UNLINK " + " ".join(quote_arg(k) for k in keys) + "\n").encode())

    # --- cache directories ----------------------------------------------------------------

    def clear_directory(
        self,
        paths: list[str] | None = None,
        older_than: float | None = None,
        check: bool = True,
        *,
        timeout: float = 600.0,
    ) -> tuple[int, int]:
        """Delete files under cache directories (older than ``older_than`` seconds).

        Returns (files, bytes) removed, or that would be in check mode. Needs GNU find
        (``-printf``, fractional ``-mmin``); directories themselves are kept.
        """
        paths = self.cache.directories if paths is None else paths
        files = size = 0
        for path in paths:
            if not path.startswith("/") or path.rstrip("/") == "":
                raise self.error(
                    f"refusing to clear {path!r}: cache directories must be absolute and not /"
                )
            expr = [path, "-xdev", "-type", "f"]
            if older_than is not None:
                expr += ["-mmin", f"+{older_than / 60:.4f}"]
            expr += ["-printf", "%s\\n"]
            if not check:
                expr.append("-delete")
            try:
                result = self.transport.run(
                    ["sh", "-c", _FIND_IN_DIR, "sh", *expr], timeout=timeout
                )
            except TransportError as exc:
                raise transport_failure(exc, f"{self.where}: clearing directory {path}") from exc
            sizes = [int(line) for line in result.text.split()]
            files += len(sizes)
            size += sum(sizes)
            if not result.ok:
                raise self.error(f"clearing directory {path} failed: {result.stderr_tail()}")
        return files, size
