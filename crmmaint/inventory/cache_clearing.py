"""What ``cache.clear`` may be told to remove: the checks of a Redis key pattern, a cache file
name glob, a cache directory and an application's cache endpoint, and the reading of a cache's
``clear:`` mapping. The loader, ``cache.clear``'s step parameters and ``engines/redis.py``
(again, just before it acts) all check with the same functions.
"""

from __future__ import annotations

import posixpath
import re
from urllib.parse import parse_qs, unquote, urlsplit

from crmmaint.inventory.fields import _secret
from crmmaint.inventory.model import ENDPOINT_METHODS, FLUSH_SCOPES, CacheClearing
from crmmaint.units import parse_duration
from crmmaint.yamlsource import (
    SourceError,
    check_keys,
    get_field,
    get_str_list,
    line_of,
    one_of,
    require_mapping,
)

#: The largest database number a Redis server can have (its ``databases`` is an int).
MAX_REDIS_DB = 2**31 - 2
_DB_NUMBER = re.compile(r"[0-9]{1,10}")


def parse_redis_url(url: str) -> tuple[str | None, int | None, str | None, int, bool]:
    """(host, port, socket, db, tls) of a cache's ``redis`` URL: ``redis://host:port/db``,
    ``rediss://`` (TLS) or ``unix:///path/to.sock?db=N``; a missing host is 127.0.0.1, a
    missing port 6379, a missing db 0. Raises ``ValueError`` saying what is wrong: another
    scheme, a port out of range, a database that is not a number of 0 or more (``/abc``,
    ``/5/6``, ``/0x6``, ``/6.0``, ``/-1``), a password in the URL."""
    if not isinstance(url, str) or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValueError("a redis URL is one string without spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{url!r} must be a redis://, rediss:// or unix:// URL")
    if parts.password is not None or parts.username is not None:
        raise ValueError("put no password in the redis URL; use 'password: env:NAME'")
    query = parse_qs(parts.query, keep_blank_values=True)
    dbs = query.get("db", [])
    if len(dbs) > 1:
        raise ValueError(f"{url!r} gives db= more than once")
    if parts.scheme == "unix":
        socket = unquote(parts.path)
        if not socket.startswith("/") or parts.netloc:
            raise ValueError(f"{url!r}: a socket URL is unix:///absolute/path.sock?db=N")
        return None, None, socket, _db_number(dbs[0] if dbs else "0", url), False
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535") from None
    if port == 0:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if path and dbs:
        raise ValueError(f"{url!r} gives the database twice (path and db=)")
    db = _db_number(path or (dbs[0] if dbs else "0"), url)
    return parts.hostname or "127.0.0.1", port or 6379, None, db, parts.scheme == "rediss"


def _db_number(text: str, url: str) -> int:
    if not _DB_NUMBER.fullmatch(text) or int(text) > MAX_REDIS_DB:
        raise ValueError(
            f"{url!r}: the database must be one number of 0 or more (redis://host:port/3), "
            f"not {text!r}"
        )
    return int(text)


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a cache's ``redis`` URL (see ``parse_redis_url``), or ``None``."""
    try:
        parse_redis_url(url)
    except ValueError as exc:
        return str(exc)
    return None


def file_glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be a cache file name glob (matched against file names, never
    paths: no ``/``, no ``..``, not empty, no NUL or line break), or ``None`` when it can."""
    if not isinstance(pattern, str) or not pattern:
        return "a file name glob must be a non-empty string"
    if "/" in pattern or ".." in pattern:
        return (
            f"file name glob {pattern!r} may not hold '/' or '..': it matches file names "
            "inside the cache's directories (e.g. '*.cache'), never a path"
        )
    if any(ch in pattern for ch in "\0\n\r"):
        return f"file name glob {pattern!r} may not hold a NUL or a line break"
    return None


def key_pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be a Redis key pattern for SCAN MATCH (empty, or holding a NUL
    or line break, which a key pattern read from YAML holds only by mistake), or ``None``."""
    if not isinstance(pattern, str) or not pattern:
        return "a key pattern must be a non-empty string (e.g. 'session:*')"
    if any(ch in pattern for ch in "\0\n\r"):
        return f"key pattern {pattern!r} may not hold a NUL or a line break"
    return None


def normalise_directory(path: str) -> str:
    """``path`` as ``cache.clear`` compares and uses it: ``posixpath.normpath`` with a leading
    ``//`` made ``/`` (POSIX lets ``//`` mean something else; nothing here needs it)."""
    norm = posixpath.normpath(path) if path else path
    return "/" + norm.lstrip("/") if norm.startswith("/") else norm


def cache_directory_problem(path: str, inventory_dir: str | None = None) -> str | None:
    """Why ``path`` cannot be a cache directory that ``cache.clear`` empties, or ``None``.

    It must be absolute, hold no ``..`` component, NUL or line break, and, once normalised
    (``/.``, ``//`` and ``/./.`` are all ``/``), be neither the root nor, when
    ``inventory_dir`` is given, the inventory's own folder or a folder above it (whose
    clearing would take the inventory, the journal and the secrets' files with it)."""
    if not isinstance(path, str) or not path:
        return "a cache directory must be a non-empty absolute path"
    if any(ch in path for ch in "\0\n\r"):
        return f"cache directory {path!r} may not hold a NUL or a line break"
    if ".." in path.split("/"):
        return f"cache directory {path!r} may not hold '..': name the directory itself"
    if not path.startswith("/"):
        return f"cache directory {path!r} must be an absolute path"
    norm = normalise_directory(path)
    if norm == "/":
        return f"cache directory {path!r} is the root directory: name the cache's own directory"
    if inventory_dir:
        folder = normalise_directory(inventory_dir)
        if folder == norm or folder.startswith(norm.rstrip("/") + "/"):
            return (
                f"cache directory {path!r} is the inventory's folder {folder} or holds it: "
                "name the cache's own directory"
            )
    return None


def endpoint_problem(url: str) -> str | None:
    """Why ``url`` cannot be a cache endpoint: an ``http://`` or ``https://`` URL with a host
    and no user or password in it (the token goes in a header, from ``token:``)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return f"endpoint is not a URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"endpoint {url!r} must be an http:// or https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        return "endpoint: put no user or password in the URL; give 'token: env:NAME' instead"
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        return f"endpoint {url!r} may not hold spaces or control characters"
    return None


_CLEAR_KEYS = {"patterns", "flush", "files", "older_than", "endpoint", "method", "token"}


def _cache_clearing(spec: dict, what: str, has_redis: bool, has_dirs: bool) -> CacheClearing | None:
    """A cache's ``clear:`` mapping (``None`` when absent), each key checked against what the
    cache has: key patterns and ``flush`` need ``redis``, ``files`` and ``older_than`` need
    ``directories``, ``method`` and ``token`` need ``endpoint``. Raises ``SourceError`` at
    the line of the key at fault."""
    raw = spec.get("clear")
    if raw is None:
        return None
    where = f"{what} clear"
    require_mapping(raw, where, line_of(spec, "clear"))
    check_keys(raw, _CLEAR_KEYS, where)
    if not raw:
        raise SourceError(
            f"{where}: sets nothing to clear; give patterns, files, older_than or endpoint, "
            "or leave clear out",
            line_of(spec, "clear"),
            "clear",
        )

    def fail(key: str, message: str) -> SourceError:
        return SourceError(f"{where}: {message}", line_of(raw, key), key)

    def needs(key: str, present: bool, other: str) -> None:
        if key in raw and not present:
            raise fail(key, f"{key!r} needs {other!r} on the cache")

    patterns = get_str_list(raw, "patterns")
    files = get_str_list(raw, "files")
    for key, values, check in (
        ("patterns", patterns, key_pattern_problem),
        ("files", files, file_glob_problem),
    ):
        if key in raw and not values:
            raise fail(key, f"{key!r} is empty; list at least one, or leave it out")
        for value in values:
            problem = check(value)
            if problem is not None:
                raise fail(key, problem)
    flush = get_field(raw, "flush", str)
    if flush is not None:
        one_of(flush, FLUSH_SCOPES, "flush", raw)
        if patterns:
            raise fail(
                "flush",
                "'flush: database' removes every key of the database; give it or "
                "'patterns', not both",
            )
    older_than = get_field(raw, "older_than", (str, int, float))
    if older_than is not None:
        try:
            older_than = parse_duration(older_than)
        except ValueError as exc:
            raise fail("older_than", f"older_than: {exc}") from None
        if older_than == float("inf"):
            raise fail("older_than", "older_than is too large")
    endpoint = get_field(raw, "endpoint", str)
    if endpoint is not None and (problem := endpoint_problem(endpoint)) is not None:
        raise fail("endpoint", problem)
    method = get_field(raw, "method", str, default="POST").upper()
    one_of(method, ENDPOINT_METHODS, "method", raw)
    needs("patterns", has_redis, "redis")
    needs("flush", has_redis, "redis")
    needs("files", has_dirs, "directories")
    needs("older_than", has_dirs, "directories")
    needs("method", endpoint is not None, "endpoint")
    needs("token", endpoint is not None, "endpoint")
    return CacheClearing(
        patterns=tuple(patterns),
        flush=flush,
        files=tuple(files),
        older_than=older_than,
        endpoint=endpoint,
        method=method,
        token=_secret(raw, "token", where),
    )
