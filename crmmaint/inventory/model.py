"""The inventory: the CRM estate as data (hosts, databases, caches, file sets, repositories).

Loaded from YAML and validated completely before anything runs; every error names the file,
line and field. Secrets are never inline: a password or passphrase is a *source* (``env:NAME``,
``file:/path`` or ``cmd:command``) resolved only when a task needs it. See docs/inventory.md.
"""

from __future__ import annotations

import os
import posixpath
import stat
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crmmaint.assertions import Assertion, parse_assertions
from crmmaint.errors import ConfigError, InventoryError
from crmmaint.units import parse_duration, parse_size
from crmmaint.yamlsource import (
    SourceError,
    check_keys,
    get_field,
    get_str_list,
    line_of,
    load_yaml_file,
    one_of,
    require_mapping,
)

if TYPE_CHECKING:
    from crmmaint.repository.retention import RetentionPolicy

ENGINES = ("postgresql", "mysql", "sqlite")
CONNECTIONS = ("ssh", "local")
TARGET_KINDS = ("hosts", "database", "cache", "fileset", "repository")
SECRET_PREFIXES = ("env:", "file:", "cmd:")


@dataclass(frozen=True)
class SecretSource:
    """Where a secret comes from; its value is read only by ``resolve`` and never stored."""

    spec: str

    def resolve(self) -> bytes:
        from crmmaint.crypto.keys import read_secret

        return read_secret(self.spec)

    def __repr__(self) -> str:
        kind, _, ref = self.spec.partition(":")
        return f"SecretSource({kind}:{ref if kind != 'cmd' else '…'})"

    def describe(self) -> str:
        """Where the secret comes from, for messages: the variable or file it is read from;
        a command's text is not shown (it may hold a secret of its own)."""
        kind, _, ref = self.spec.partition(":")
        if kind == "env":
            return f"environment variable {ref} (env:{ref})"
        if kind == "file":
            return f"file {ref} (file:{ref})"
        return "the output of the inventory's cmd: command"


@dataclass
class Host:
    name: str
    address: str = "127.0.0.1"
    port: int = 22
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    connection: str = "ssh"
    become: str | None = None
    allow_unknown_host_key: bool = False
    connect_timeout: float = 10.0
    groups: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.connection == "local"


@dataclass
class Database:
    name: str
    engine: str
    host: str
    dbname: str | None = None
    address: str | None = None
    port: int | None = None
    user: str | None = None
    password: SecretSource | None = None
    path: str | None = None
    main: bool = False
    groups: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    restore_privilege: str = "least"


#: What ``flush:`` may say: the one thing FLUSHDB may empty, the cache's own Redis database.
FLUSH_SCOPES = ("database",)
#: The HTTP methods a cache endpoint may be called with (``clear: {method: …}``).
ENDPOINT_METHODS = ("POST", "PUT", "DELETE", "PURGE")


@dataclass(frozen=True)
class CacheClearing:
    """What ``cache.clear`` removes from one cache (its ``clear:`` mapping; step parameters
    override it key by key): Redis keys matching ``patterns`` (SCAN + UNLINK), or the whole
    database when ``flush`` is ``"database"``; files in the cache's directories whose names
    match ``files`` (globs, ``*`` when only ``older_than`` is given) and, with ``older_than``
    (seconds), that were last modified longer ago; and a call of the application's own cache
    endpoint (``method`` to ``endpoint``, with ``token`` as a bearer token)."""

    patterns: tuple[str, ...] = ()
    flush: str | None = None
    files: tuple[str, ...] = ()
    older_than: float | None = None
    endpoint: str | None = None
    method: str = "POST"
    token: SecretSource | None = None

    @property
    def empty(self) -> bool:
        return (
            not (self.patterns or self.flush or self.files or self.older_than is not None)
            and not self.endpoint
        )


@dataclass
class Cache:
    name: str
    host: str
    redis: str | None = None
    password: SecretSource | None = None
    directories: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    #: What ``cache.clear`` removes by default (``None``: nothing configured).
    clear: CacheClearing | None = None


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


def cache_directory_problem(path: str) -> str | None:
    """Why ``path`` cannot be a cache directory that ``cache.clear`` empties: it must be
    absolute, not ``/`` and without ``..`` components (a cleared directory is exactly the one
    configured, never a way out of it); ``None`` when it is fine."""
    if not path.startswith("/") or not path.strip("/"):
        return f"cache directory {path!r} must be an absolute path, and not /"
    if ".." in path.split("/"):
        return f"cache directory {path!r} may not hold '..': name the directory itself"
    if any(ch in path for ch in "\0\n\r"):
        return f"cache directory {path!r} may not hold a NUL or a line break"
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


@dataclass
class FileSet:
    name: str
    host: str
    paths: list[str]
    exclude: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)


#: Seconds a command waits for a conflicting repository lock (``lock_wait``), by default and
#: at most (a week: beyond it, a wait is a hang).
DEFAULT_LOCK_WAIT = 60.0
MAX_LOCK_WAIT = 7 * 86400.0


@dataclass
class RepositorySettings:
    """A repository as the inventory configures it (``repositories:``): where it is, which key
    files and recipients it uses. ``crmmaint.repository.configured`` opens it; the repository
    itself is ``crmmaint.repository.Repository``."""

    name: str
    url: str
    write_key: str | None = None
    recipients: list[str] = field(default_factory=list)
    identity: str | None = None
    passphrase: SecretSource | None = None
    options: dict[str, Any] = field(default_factory=dict)
    default: bool = False
    compression: int | None = None
    #: Seconds a command waits for a conflicting repository lock before giving up (exit 7).
    lock_wait: float = DEFAULT_LOCK_WAIT
    #: What ``prune`` keeps when neither its flags nor its playbook step set a policy.
    retention: RetentionPolicy | None = None


@dataclass
class DrillTarget:
    """Where restore drills of one database or file set run: another host and server, or a
    scratch directory (SQLite, file sets); and the recovery time objective they are held to.
    Unset fields fall back to the source's own. ``database`` is the source's name (a file
    set's when ``kind`` is ``fileset``)."""

    database: str
    host: str | None = None
    address: str | None = None
    port: int | None = None
    user: str | None = None
    password: SecretSource | None = None
    directory: str | None = None
    kind: str = "database"
    #: The recovery time objective in seconds: a drill's whole time (fetch, load, checks,
    #: cleanup) above it is a warning, or a failure when ``rto_exceeded`` is ``fail``.
    rto: float | None = None
    rto_exceeded: str = "warn"
    #: Bytes that must stay free where the scratch copy goes, besides the copy itself.
    min_free: int = 0
    #: A database's own checks of its restored copy (``crmmaint.assertions``).
    assertions: list[Assertion] = field(default_factory=list)


@dataclass
class Target:
    """One thing a task runs against: its kind, its name and the host that owns it."""

    kind: str
    name: str
    host: Host
    obj: Host | Database | Cache | FileSet | RepositorySettings

    @property
    def label(self) -> str:
        return self.name if self.kind == "hosts" else f"{self.name}@{self.host.name}"


@dataclass
class Inventory:
    path: str
    hosts: dict[str, Host] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    databases: dict[str, Database] = field(default_factory=dict)
    caches: dict[str, Cache] = field(default_factory=dict)
    filesets: dict[str, FileSet] = field(default_factory=dict)
    repositories: dict[str, RepositorySettings] = field(default_factory=dict)
    drills: dict[str, DrillTarget] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    # --- lookups ----------------------------------------------------------------------------

    def collection(self, kind: str) -> dict[str, Any]:
        return {
            "hosts": self.hosts,
            "database": self.databases,
            "cache": self.caches,
            "fileset": self.filesets,
            "repository": self.repositories,
        }[kind]

    def names(self, kind: str) -> set[str]:
        """Every name a target selector of ``kind`` may use: objects, groups, ``all``."""
        objs = self.collection(kind)
        names = set(objs) | {"all"}
        for obj in objs.values():
            names.update(getattr(obj, "groups", []))
        if kind == "hosts":
            names |= set(self.groups)
        return names

    def resolve(self, kind: str, selectors: Iterable[str]) -> list[Target]:
        """Expand names, groups and ``all`` into targets, in inventory order, without repeats."""
        objs = self.collection(kind)
        wanted: set[str] = set()
        for sel in selectors:
            if sel == "all":
                wanted |= set(objs)
                continue
            matched = {n for n, o in objs.items() if n == sel or sel in getattr(o, "groups", [])}
            if kind == "hosts":
                matched |= set(self.groups.get(sel, []))
            if not matched:
                raise InventoryError(
                    f"{self.path}: no {kind} named or grouped {sel!r}",
                    hint=f"known: {', '.join(sorted(self.names(kind) - {'all'})) or 'none'}",
                )
            wanted |= matched
        return [self.target(kind, n) for n in objs if n in wanted]

    def target(self, kind: str, name: str) -> Target:
        obj = self.collection(kind)[name]
        host = obj if kind == "hosts" else self.hosts.get(getattr(obj, "host", ""), _RUNNER_HOST)
        return Target(kind, name, host, obj)

    def drill_settings(self, kind: str, name: str) -> DrillTarget:
        """The ``drills:`` entry of the database or file set ``name`` (``kind``), or an
        empty one: where its drills run and the objective they are held to."""
        return self.drills.get(f"{kind}:{name}") or DrillTarget(database=name, kind=kind)

    def drill_fileset(self, name: str) -> tuple[Host, str | None]:
        """The host a drill of file set ``name`` restores on, and the directory its scratch
        copy goes under (``None``: the host's temporary directory)."""
        drill = self.drill_settings("fileset", name)
        host_name = drill.host or self.filesets[name].host
        return self.hosts.get(host_name, _RUNNER_HOST), drill.directory

    def drill_database(self, name: str) -> tuple[Database, Host]:
        """The database entry a drill of ``name`` restores with, and the host it runs on."""
        db = self.databases[name]
        drill = self.drills.get(f"database:{name}")
        if drill is None:
            return db, self.target("database", name).host
        host_name = drill.host or db.host
        host = self.hosts.get(host_name, _RUNNER_HOST)
        path = db.path
        if drill.directory and path:
            path = posixpath.join(drill.directory, posixpath.basename(path))
        scratch = replace(
            db,
            host=host_name,
            address=drill.address or db.address,
            port=drill.port or db.port,
            user=drill.user or db.user,
            password=drill.password or db.password,
            path=path,
        )
        return scratch, host

    def main_database(self) -> Database | None:
        for db in self.databases.values():
            if db.main:
                return db
        return next(iter(self.databases.values()), None)

    def default_repository(self) -> RepositorySettings:
        if not self.repositories:
            raise InventoryError(
                f"{self.path}: no repository configured",
                hint="add a 'repositories:' section (see docs/inventory.md)",
            )
        for repo in self.repositories.values():
            if repo.default:
                return repo
        return next(iter(self.repositories.values()))

    def repository(self, name: str | None) -> RepositorySettings:
        if name is None:
            return self.default_repository()
        if name not in self.repositories:
            raise InventoryError(
                f"{self.path}: no repository named {name!r}",
                hint=f"known: {', '.join(self.repositories) or 'none'}",
            )
        return self.repositories[name]


#: The machine crmmaint runs on; owns repositories and objects with ``host: local``.
_RUNNER_HOST = Host(name="local", connection="local", address="127.0.0.1")


# --- loading ---------------------------------------------------------------------------------

_TOP = {
    "hosts", "groups", "databases", "caches", "filesets", "repositories", "drills", "vars", "settings",
}  # fmt: skip
_DRILL_KEYS = {
    "host", "address", "port", "user", "password", "directory", "rto", "rto_exceeded",
    "min_free", "assertions",
}  # fmt: skip
#: What a file set's drill entry may set: where its scratch directory goes, and its objective.
_FILESET_DRILL_KEYS = {"host", "directory", "rto", "rto_exceeded", "min_free"}
_HOST_KEYS = {
    "address", "port", "user", "identity_file", "known_hosts", "connection", "become",
    "allow_unknown_host_key", "connect_timeout", "groups", "vars",
}  # fmt: skip
_DB_KEYS = {
    "engine", "host", "name", "address", "port", "user", "password", "path", "main", "groups", "vars",
    "restore_privilege",
}  # fmt: skip
#: How restores and drills load SQL: ``least`` as a temporary role that owns only the new
#: database (docs/engines.md), ``full`` as the configured user (for dumps that need more).
RESTORE_PRIVILEGES = ("least", "full")
_CACHE_KEYS = {"host", "redis", "password", "directories", "groups", "clear"}
_FILESET_KEYS = {"host", "paths", "exclude", "groups"}
_REPO_KEYS = {
    "url", "write_key", "recipients", "identity", "passphrase", "endpoint_url", "region",
    "identity_file", "known_hosts", "connect_timeout", "allow_unknown_host_key", "default",
    "compression", "lock_wait", "retention",
}  # fmt: skip
_REPO_OPTION_KEYS = _REPO_KEYS - {
    "url",
    "write_key",
    "recipients",
    "identity",
    "passphrase",
    "default",
    "compression",
    "lock_wait",
    "retention",
}


def _check_trusted(path: Path) -> None:
    """An inventory names the hosts crmmaint reaches and the ``cmd:`` secrets it runs: refuse
    one that another user owns (root excepted) or that group or others may write."""
    try:
        st = path.stat()
    except OSError:
        return  # reported, with its place, when the file is read
    if not stat.S_ISREG(st.st_mode):
        raise InventoryError(
            f"{path}: not a regular file: an inventory is a YAML file",
            hint="pass -i FILE with the inventory's path; see docs/inventory.md",
        )
    owners = {os.geteuid(), 0}
    if st.st_uid not in owners or st.st_mode & 0o022:
        why = (
            f"owned by uid {st.st_uid}" if st.st_uid not in owners else
            f"writable by {'group and others' if st.st_mode & 0o022 == 0o022 else 'group' if st.st_mode & 0o020 else 'others'}"
        )  # fmt: skip
        raise InventoryError(
            f"{path}: refusing an inventory {why}: it decides which hosts are reached and which "
            "cmd: secrets run",
            hint=f"use your own copy, or `chmod go-w {path}`",
        )


def load_inventory(path: str | Path) -> Inventory:
    """Load and validate an inventory file; ``InventoryError`` with file:line on any problem.

    Relative paths inside it resolve against its folder, made absolute here (without following
    symlinks), so ``-i .demo/inventory.yml`` and ``-i /abs/.demo/inventory.yml`` mean the same.
    """
    p = Path(os.path.abspath(Path(path).expanduser()))
    _check_trusted(p)
    try:
        data = load_yaml_file(p)
        if data is None:
            data = {}
        return _build(data, p)
    except SourceError as exc:
        where = f"{p}:{exc.line}" if exc.line else str(p)
        hint = (
            "see docs/inventory.md"
            if exc.message != "file not found"
            else ("pass -i FILE, set CRMMAINT_INVENTORY, or run `crmmaint demo` for a sample")
        )
        raise InventoryError(f"{where}: {exc.message}", hint=hint) from exc


def _build(data: Any, path: Path) -> Inventory:
    require_mapping(data, "the inventory")
    check_keys(data, _TOP, "the inventory")
    base = path.parent
    inv = Inventory(path=str(path))
    inv.vars = dict(get_field(data, "vars", dict, default={}))
    inv.settings = _settings(data)

    for name, spec in _section(data, "hosts"):
        inv.hosts[name] = _host(name, spec, base)
    groups = _section_raw(data, "groups")
    for gname in groups:
        members = get_str_list(groups, gname)
        for member in members:
            if member not in inv.hosts:
                raise SourceError(
                    f"group {gname!r} names unknown host {member!r}", line_of(groups, gname), gname
                )
        inv.groups[gname] = members
    for name, spec in _section(data, "databases"):
        inv.databases[name] = _database(name, spec, base, inv)
    for name, spec in _section(data, "caches"):
        inv.caches[name] = _cache(name, spec, inv)
    for name, spec in _section(data, "filesets"):
        inv.filesets[name] = _fileset(name, spec, inv)
    for name, spec in _section(data, "repositories"):
        inv.repositories[name] = _repository(name, spec, base)
    drills = _section_raw(data, "drills")
    for name, spec in _section(data, "drills"):
        kind, _, source = name.rpartition(":")
        kind = kind or "database"
        known = inv.filesets if kind == "fileset" else inv.databases
        if kind not in ("database", "fileset") or source not in known:
            hint = (
                f" (did you mean fileset:{source}?)"
                if kind == "database" and source in inv.filesets
                else ""
            )
            raise SourceError(
                f"drills names unknown source {name!r}{hint}: a database name, database:NAME "
                f"or fileset:NAME (databases: {', '.join(inv.databases) or 'none'}; file sets: "
                f"{', '.join(inv.filesets) or 'none'})",
                line_of(drills, name),
                name,
            )
        if f"{kind}:{source}" in inv.drills:
            raise SourceError(
                f"drills has two entries for {kind} {source!r} ({source!r} and "
                f"'database:{source}' name the same database): keep one",
                line_of(drills, name),
                name,
            )
        inv.drills[f"{kind}:{source}"] = _drill(kind, source, spec, base, inv)
    _check_name_clashes(inv, data)
    if not (inv.hosts or inv.databases or inv.caches or inv.filesets or inv.repositories):
        raise SourceError(
            "the inventory names no hosts, databases, caches, file sets or repositories: "
            "is this the right file?"
        )
    return inv


def _settings(data: dict) -> dict[str, Any]:
    """The ``settings:`` section: ``journal``, a path (relative to the inventory's folder)."""
    settings = get_field(data, "settings", dict, default={})
    check_keys(settings, {"journal"}, "settings")
    journal = get_field(settings, "journal", str)
    if journal is not None and not journal.strip():
        raise SourceError(
            "settings: journal must be a path, not empty", line_of(settings, "journal")
        )
    return dict(settings)


def _section_raw(data: dict, key: str) -> dict:
    value = data.get(key)
    if value is None:
        return {}
    section = require_mapping(value, f"section {key!r}", line_of(data, key))
    for name in section:
        _check_name(name, key, line_of(section, name))
    return section


#: Unicode categories no inventory name may hold: control characters (a newline splits a
#: TSV row or a log line), format characters (U+202E turns the rest of a line around),
#: line and paragraph separators, surrogates, private-use and unassigned code points.
_NAME_FORBIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _check_name(name: Any, section: str, line: int | None) -> None:
    """A name in ``section`` (a host, group, database, cache, file set, repository or
    drill) is printed in listings, journal rows and messages and typed in flags: it must be
    text without control or format characters, commas (flags take names comma-separated) or
    surrounding spaces. Raises ``SourceError`` at ``line``."""
    what = f"a name in section {section!r}"
    if not isinstance(name, str):
        raise SourceError(f"{what} must be text, not {name!r}", line, str(name))
    bad = next((ch for ch in name if unicodedata.category(ch) in _NAME_FORBIDDEN), None)
    if bad is not None:
        raise SourceError(
            f"{what}, {name!r}, holds the character U+{ord(bad):04X}: names are printed in "
            "listings and messages, so they may not hold control or format characters",
            line,
            name,
        )
    if not name.strip():
        raise SourceError(f"{what} must not be empty, got {name!r}", line, name)
    if "," in name or name != name.strip():
        raise SourceError(
            f"{what}, {name!r}, may not hold a comma (flags take names comma-separated) or "
            "begin or end with a space",
            line,
            name,
        )


def _section(data: dict, key: str) -> list[tuple[str, dict]]:
    section = _section_raw(data, key)
    out = []
    for name, spec in section.items():
        if spec is None:
            spec = {}
        require_mapping(
            spec, f"{key[:-1] if key != 'caches' else 'cache'} {name!r}", line_of(section, name)
        )
        out.append((name, spec))
    return out


def _host(name: str, spec: dict, base: Path) -> Host:
    what = f"host {name!r}"
    check_keys(spec, _HOST_KEYS, what)
    connection = one_of(
        get_field(spec, "connection", str, default="ssh"), CONNECTIONS, "connection", spec
    )
    if name in ("local", "localhost") and "connection" not in spec:
        connection = "local"
    port = _port(spec, what, default=22)
    become = get_field(spec, "become", str)
    if become is not None:
        one_of(become, ("sudo",), "become", spec)
    return Host(
        name=name,
        address=_address(spec, default="127.0.0.1" if connection == "local" else name),
        port=port,
        user=get_field(spec, "user", str),
        identity_file=_path(get_field(spec, "identity_file", str), base),
        known_hosts=_path(get_field(spec, "known_hosts", str), base),
        connection=connection,
        become=become,
        allow_unknown_host_key=get_field(spec, "allow_unknown_host_key", bool, default=False),
        connect_timeout=_connect_timeout(spec, what, default=10.0),
        groups=get_str_list(spec, "groups"),
        vars=dict(get_field(spec, "vars", dict, default={})),
    )


def _address(spec: dict, default: str | None = None) -> str | None:
    """The ``address:`` field, a host name or IP address: text without spaces or control
    characters that does not begin with ``-`` (it is passed to ssh, psql, mariadb and
    redis-cli, which would read it as an option); ``default`` when unset. Raises
    ``SourceError``."""
    address = get_field(spec, "address", str)
    if address is None:
        return default
    if (
        not address
        or address.startswith("-")
        or any(ch.isspace() or unicodedata.category(ch) in _NAME_FORBIDDEN for ch in address)
    ):
        raise SourceError(
            f"address {address!r} is not a host name or IP address (no spaces, control "
            "characters or leading '-')",
            line_of(spec, "address"),
            "address",
        )
    return address


def _owner(spec: dict, what: str, inv: Inventory) -> str:
    host = get_field(spec, "host", str, default="local")
    if host != "local" and host not in inv.hosts:
        raise SourceError(
            f"{what} names unknown host {host!r} (known: {', '.join(inv.hosts) or 'none'})",
            line_of(spec, "host"),
            "host",
        )
    return host


def _database(name: str, spec: dict, base: Path, inv: Inventory) -> Database:
    what = f"database {name!r}"
    check_keys(spec, _DB_KEYS, what)
    engine = one_of(
        get_field(spec, "engine", str, required=True, what=what), ENGINES, "engine", spec
    )
    host = _owner(spec, what, inv)
    path = get_field(spec, "path", str)
    if engine == "sqlite":
        if path is None:
            raise SourceError(f"{what}: a sqlite database needs 'path'", line_of(spec), "path")
        if inv.hosts.get(host, _RUNNER_HOST).is_local:
            path = _path(path, base)
    elif path is not None:
        raise SourceError(
            f"{what}: 'path' is only for sqlite; use 'name'", line_of(spec, "path"), "path"
        )
    port = _port(spec, what)
    main = get_field(spec, "main", bool, default=False)
    groups = get_str_list(spec, "groups")
    if main and "main" not in groups:
        groups.append("main")  # playbooks name the main database as `database: main`
    return Database(
        name=name,
        engine=engine,
        host=host,
        dbname=get_field(spec, "name", str, default=name if engine != "sqlite" else None),
        address=_address(spec),
        port=port,
        user=get_field(spec, "user", str),
        password=_secret(spec, "password", what),
        path=path,
        main=main,
        groups=groups,
        vars=dict(get_field(spec, "vars", dict, default={})),
        restore_privilege=one_of(
            get_field(spec, "restore_privilege", str, default="least"),
            RESTORE_PRIVILEGES,
            "restore_privilege",
            spec,
        ),
    )


def _cache(name: str, spec: dict, inv: Inventory) -> Cache:
    what = f"cache {name!r}"
    check_keys(spec, _CACHE_KEYS, what)
    redis = get_field(spec, "redis", str)
    if redis is not None and not redis.startswith(("redis://", "rediss://", "unix://")):
        raise SourceError(
            f"{what}: 'redis' must be a redis:// URL", line_of(spec, "redis"), "redis"
        )
    if redis and "@" in redis.split("//", 1)[1].split("/", 1)[0]:
        raise SourceError(
            f"{what}: put no password in the redis URL; use 'password: env:NAME'",
            line_of(spec, "redis"),
            "redis",
        )
    dirs = get_str_list(spec, "directories")
    if redis is None and not dirs:
        raise SourceError(f"{what} needs 'redis' or 'directories'", line_of(spec), "redis")
    host = _owner(spec, what, inv)
    local = inv.hosts.get(host, _RUNNER_HOST).is_local
    for i, d in enumerate(dirs):
        # On a local host relative to the inventory's folder, as file sets are; ".." is
        # refused before it could be folded away.
        if local and not d.startswith("/") and ".." not in d.split("/"):
            d = dirs[i] = _path(d, Path(inv.path).parent) or d
        problem = cache_directory_problem(d.rstrip("/") or "/")
        if problem is not None:
            raise SourceError(f"{what}: {problem}", line_of(spec, "directories"), "directories")
    return Cache(
        name=name,
        host=host,
        redis=redis,
        password=_secret(spec, "password", what),
        directories=[d.rstrip("/") for d in dirs],
        groups=get_str_list(spec, "groups"),
        clear=_cache_clearing(spec, what, redis is not None, bool(dirs)),
    )


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


def _fileset(name: str, spec: dict, inv: Inventory) -> FileSet:
    what = f"file set {name!r}"
    check_keys(spec, _FILESET_KEYS, what)
    paths = get_str_list(spec, "paths")
    if not paths:
        raise SourceError(f"{what} needs 'paths'", line_of(spec), "paths")
    for p in paths:
        if (
            not p.startswith("/")
            and not inv.hosts.get(_owner(spec, what, inv), _RUNNER_HOST).is_local
        ):
            raise SourceError(
                f"{what}: remote path {p!r} must be absolute", line_of(spec, "paths"), "paths"
            )
    base = Path(inv.path).parent
    host = _owner(spec, what, inv)
    if inv.hosts.get(host, _RUNNER_HOST).is_local:
        paths = [_path(p, base) or p for p in paths]
    return FileSet(
        name=name,
        host=host,
        paths=paths,
        exclude=get_str_list(spec, "exclude"),
        groups=get_str_list(spec, "groups"),
    )


def _repository(name: str, spec: dict, base: Path) -> RepositorySettings:
    what = f"repository {name!r}"
    check_keys(spec, _REPO_KEYS, what)
    url = get_field(spec, "url", str, required=True, what=what)
    if "://" not in url:
        url = "file://" + str(_path(url, base))
    scheme = url.split("://", 1)[0]
    if scheme not in ("file", "s3", "sftp"):
        raise SourceError(
            f"{what}: url scheme {scheme!r} not supported (file, s3, sftp)",
            line_of(spec, "url"),
            "url",
        )
    if (
        scheme != "file"
        and "@" in url.split("://", 1)[1].split("/", 1)[0]
        and ":" in url.split("://", 1)[1].split("@", 1)[0]
    ):
        raise SourceError(f"{what}: put no password in the URL", line_of(spec, "url"), "url")
    options = {k: spec[k] for k in _REPO_OPTION_KEYS if spec.get(k) is not None}
    for key in ("endpoint_url", "region", "identity_file", "known_hosts"):
        get_field(spec, key, str)
    get_field(spec, "allow_unknown_host_key", bool)
    if "connect_timeout" in options:
        options["connect_timeout"] = _connect_timeout(spec, what)
    for key in ("identity_file", "known_hosts"):
        if key in options:
            options[key] = _path(str(options[key]), base)
    recipients = get_str_list(spec, "recipients")
    compression = get_field(spec, "compression", int, what=what)
    if compression is not None:
        from crmmaint.repository.repository import COMPRESSION_HINT, COMPRESSION_LEVELS

        if compression not in COMPRESSION_LEVELS:
            raise SourceError(
                f"{what}: compression {compression} is not a zstd level crmmaint accepts "
                f"({COMPRESSION_HINT})",
                line_of(spec, "compression"),
                "compression",
            )
    lock_wait = DEFAULT_LOCK_WAIT
    if spec.get("lock_wait") is not None:
        try:
            lock_wait = parse_duration(spec["lock_wait"])
        except ValueError as exc:
            raise SourceError(
                f"{what}: lock_wait: {exc}", line_of(spec, "lock_wait"), "lock_wait"
            ) from None
        if lock_wait > MAX_LOCK_WAIT:
            raise SourceError(
                f"{what}: lock_wait is at most {MAX_LOCK_WAIT / 86400:g} days",
                line_of(spec, "lock_wait"),
                "lock_wait",
            )
    return RepositorySettings(
        name=name,
        url=url,
        write_key=_path(get_field(spec, "write_key", str), base),
        recipients=[_recipient_ref(r, base) for r in recipients],
        identity=_path(get_field(spec, "identity", str), base),
        passphrase=_secret(spec, "passphrase", what),
        options=options,
        default=get_field(spec, "default", bool, default=False),
        compression=compression,
        lock_wait=lock_wait,
        retention=_retention(spec, what),
    )


def _retention(spec: dict, what: str) -> RetentionPolicy | None:
    """A repository's ``retention:`` as a policy (None when absent), checked key by key so an
    error names the line of the key at fault: unknown keys, negative or non-whole counts,
    durations ``parse_duration`` refuses. An empty mapping is refused (it keeps nothing)."""
    from crmmaint.repository.retention import RetentionPolicy

    raw = spec.get("retention")
    if raw is None:
        return None
    where = f"{what} retention"
    require_mapping(raw, where, line_of(spec, "retention"))
    for key, value in raw.items():
        try:
            RetentionPolicy.from_mapping({key: value}, where=where)
        except ConfigError as exc:
            raise SourceError(_with_hint(exc), line_of(raw, key), str(key)) from None
    try:
        policy = RetentionPolicy.from_mapping(raw, where=where)
    except ConfigError as exc:  # the same rule spelt with - and _
        raise SourceError(_with_hint(exc), line_of(spec, "retention"), "retention") from None
    if policy.is_empty:
        raise SourceError(
            f"{where} sets no keep-* rule above 0, and prune refuses an empty policy; "
            "set e.g. keep-daily: 7, or leave retention out",
            line_of(spec, "retention"),
            "retention",
        )
    return policy


def _with_hint(exc: ConfigError) -> str:
    return exc.message if exc.hint is None else f"{exc.message}; {exc.hint}"


def _drill(kind: str, name: str, spec: dict, base: Path, inv: Inventory) -> DrillTarget:
    what = f"drill target {kind}:{name}"
    check_keys(spec, _FILESET_DRILL_KEYS if kind == "fileset" else _DRILL_KEYS, what)
    host = _owner(spec, what, inv) if "host" in spec else None
    owner = inv.filesets[name].host if kind == "fileset" else inv.databases[name].host
    directory = get_field(spec, "directory", str)
    if directory is not None and inv.hosts.get(host or owner, _RUNNER_HOST).is_local:
        directory = _path(directory, base)
    if directory is not None and not directory.startswith("/"):
        raise SourceError(
            f"{what}: directory must be an absolute path on its host, not {directory!r}",
            line_of(spec, "directory"),
            "directory",
        )
    rto = get_field(spec, "rto", (str, int, float))
    if rto is not None:
        try:
            rto = parse_duration(rto)
        except ValueError as exc:
            raise SourceError(f"{what}: rto: {exc}", line_of(spec, "rto"), "rto") from None
        if not 0 < rto <= 366 * 86400:
            raise SourceError(
                f"{what}: rto must be more than 0 and at most a year", line_of(spec, "rto"), "rto"
            )
    min_free = get_field(spec, "min_free", (str, int), default=0)
    try:
        min_free = parse_size(min_free)
    except ValueError as exc:
        raise SourceError(
            f"{what}: min_free: {exc}", line_of(spec, "min_free"), "min_free"
        ) from None
    exceeded = get_field(spec, "rto_exceeded", str, default="warn")
    one_of(exceeded, ("warn", "fail"), "rto_exceeded", spec)
    assertions = []
    if "assertions" in spec:
        try:
            assertions = parse_assertions(spec["assertions"])
        except ValueError as exc:
            raise SourceError(f"{what}: {exc}", line_of(spec, "assertions"), "assertions") from None
    return DrillTarget(
        database=name,
        assertions=assertions,
        host=host,
        address=_address(spec),
        port=_port(spec, what),
        user=get_field(spec, "user", str),
        password=_secret(spec, "password", what),
        directory=directory,
        kind=kind,
        rto=rto,
        rto_exceeded=exceeded,
        min_free=min_free,
    )


#: The longest ``connect_timeout`` accepted, in seconds: a connection not made within an hour
#: will not be made, and a larger number is more likely a typo than a wish.
MAX_CONNECT_TIMEOUT = 3600.0


def _port(spec: dict, what: str, default: int | None = None) -> int | None:
    port = get_field(spec, "port", int, default=default)
    if port is not None and not 0 < port < 65536:
        raise SourceError(
            f"port {port} out of range 1-65535 in {what}", line_of(spec, "port"), "port"
        )
    return port


def _connect_timeout(spec: dict, what: str, default: float | None = None) -> float | None:
    """Seconds, more than 0 and at most ``MAX_CONNECT_TIMEOUT`` (YAML has already refused
    ``.inf``, ``.nan`` and integers too long to read)."""
    value = get_field(spec, "connect_timeout", (int, float), default=default)
    if value is not None and not 0 < value <= MAX_CONNECT_TIMEOUT:
        raise SourceError(
            f"connect_timeout {value:g} out of range in {what}: more than 0 and at most"
            f" {MAX_CONNECT_TIMEOUT:g} seconds",
            line_of(spec, "connect_timeout"),
            "connect_timeout",
        )
    return None if value is None else float(value)


def _recipient_ref(ref: str, base: Path) -> str:
    """A recipient is a public key string, or ``file:PATH`` of one (resolved relative)."""
    if ref.startswith("file:"):
        return "file:" + str(_path(ref[5:], base))
    return ref


def _secret(spec: dict, key: str, what: str) -> SecretSource | None:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(SECRET_PREFIXES):
        raise SourceError(
            f"{what}: inline secrets are not allowed in {key!r}; use env:NAME, file:/path or cmd:COMMAND",
            line_of(spec, key),
            key,
        )
    return SecretSource(value)


def _path(value: str | None, base: Path) -> str | None:
    """``value`` made absolute against ``base`` (the inventory's folder), ``..`` folded but no
    symlink followed: a path may name a link on another host, and what a configured link means
    is for the code that reads it to decide (a file set follows it)."""
    if value is None:
        return None
    p = Path(os.path.expandvars(value)).expanduser()
    return str(p if p.is_absolute() else Path(os.path.normpath(base / p)))


def _check_name_clashes(inv: Inventory, data: dict) -> None:
    for gname in inv.groups:
        if gname in inv.hosts:
            raise SourceError(
                f"group {gname!r} has the same name as a host",
                line_of(data.get("groups"), gname),
                gname,
            )


def describe(inv: Inventory) -> dict[str, Any]:
    """A secret-free summary for ``inventory check`` and reports."""
    return {
        "path": inv.path,
        "hosts": {
            n: {
                "address": h.address,
                "port": h.port,
                "connection": h.connection,
                "groups": h.groups,
            }
            for n, h in inv.hosts.items()
        },
        "databases": {
            n: {"engine": d.engine, "host": d.host, "name": d.dbname or d.path}
            for n, d in inv.databases.items()
        },
        "caches": {
            n: {
                "host": c.host,
                "redis": c.redis,
                "directories": c.directories,
                "clear": _describe_clearing(c.clear),
            }
            for n, c in inv.caches.items()
        },
        "filesets": {n: {"host": f.host, "paths": f.paths} for n, f in inv.filesets.items()},
        "repositories": {
            n: {
                "url": r.url,
                "recipients": len(r.recipients),
                "retention": r.retention.describe() if r.retention else None,
            }
            for n, r in inv.repositories.items()
        },
    }


def _describe_clearing(clear: CacheClearing | None) -> dict[str, Any] | None:
    """A cache's ``clear:`` for ``describe``: the token by its source, never its value."""
    if clear is None:
        return None
    out: dict[str, Any] = {
        "patterns": list(clear.patterns),
        "flush": clear.flush,
        "files": list(clear.files),
        "older_than": clear.older_than,
        "endpoint": clear.endpoint,
    }
    if clear.endpoint:
        out["method"] = clear.method
        out["token"] = clear.token.describe() if clear.token else None
    return {k: v for k, v in out.items() if v not in (None, [])}
