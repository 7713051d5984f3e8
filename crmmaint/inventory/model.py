"""The inventory's model: the CRM estate as data (hosts, databases, caches, file sets,
repositories, drill targets) and the lookups that turn names, groups and ``all`` into targets.

Secrets are never inline: a password or passphrase is a ``SecretSource`` (``env:NAME``,
``file:/path`` or ``cmd:command``) resolved only when a task needs it. ``load.py`` builds an
``Inventory`` from YAML; see docs/inventory.md.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from crmmaint.assertions import Assertion
from crmmaint.errors import InventoryError
from crmmaint.inventory.schedule import ScheduleSettings

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
    #: Configuration files ``config.drift`` watches: absolute paths and globs on the host.
    config_files: list[str] = field(default_factory=list)

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


#: How restores and drills load SQL: ``least`` as a temporary role that owns only the new
#: database (docs/engines.md), ``full`` as the configured user (for dumps that need more).
RESTORE_PRIVILEGES = ("least", "full")


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
    #: The ``schedule:`` section (windows, blackouts); ``None`` when the inventory has none.
    schedule: ScheduleSettings | None = None

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


def describe(inv: Inventory) -> dict[str, Any]:
    """A secret-free summary for ``inventory check`` and reports (``schedule`` only when the
    inventory has one)."""
    out = _describe(inv)
    if inv.schedule is not None:
        out["schedule"] = {
            "timezone": inv.schedule.timezone,
            "catch_up": inv.schedule.catch_up,
            "windows": {w.name: {"playbook": w.playbook, "every": w.every}
                        for w in inv.schedule.windows},
            "blackouts": len(inv.schedule.blackouts),
        }  # fmt: skip
    return out


def _describe(inv: Inventory) -> dict[str, Any]:
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
