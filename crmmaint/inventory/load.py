"""Loading an inventory: a YAML file read and validated completely before anything runs, every
error an ``InventoryError`` that names the file, line and field. Relative paths resolve
against the inventory's folder. See docs/inventory.md.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crmmaint.assertions import parse_assertions
from crmmaint.errors import ConfigError, InventoryError
from crmmaint.inventory.cache_clearing import (
    _cache_clearing,
    cache_directory_problem,
    normalise_directory,
    redis_url_problem,
)
from crmmaint.inventory.fields import (
    _address,
    _check_name,
    _connect_timeout,
    _owner,
    _path,
    _port,
    _secret,
)
from crmmaint.inventory.model import (
    _RUNNER_HOST,
    CONNECTIONS,
    DEFAULT_LOCK_WAIT,
    ENGINES,
    MAX_LOCK_WAIT,
    RESTORE_PRIVILEGES,
    Cache,
    Database,
    DrillTarget,
    FileSet,
    Host,
    Inventory,
    RepositorySettings,
)
from crmmaint.inventory.schedule import load_schedule
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


_TOP = {
    "hosts", "groups", "databases", "caches", "filesets", "repositories", "drills", "vars", "settings",
    "schedule",
}  # fmt: skip
_DRILL_KEYS = {
    "host", "address", "port", "user", "password", "directory", "rto", "rto_exceeded",
    "min_free", "assertions",
}  # fmt: skip
#: What a file set's drill entry may set: where its scratch directory goes, and its objective.
_FILESET_DRILL_KEYS = {"host", "directory", "rto", "rto_exceeded", "min_free"}
_HOST_KEYS = {
    "address", "port", "user", "identity_file", "known_hosts", "connection", "become",
    "allow_unknown_host_key", "connect_timeout", "groups", "vars", "config_files",
}  # fmt: skip
_DB_KEYS = {
    "engine", "host", "name", "address", "port", "user", "password", "path", "main", "groups", "vars",
    "restore_privilege",
}  # fmt: skip
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
    inv.schedule = load_schedule(data, set(inv.repositories))
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
        config_files=_config_files(spec, what),
    )


def _config_files(spec: dict, what: str) -> list[str]:
    """``config_files:``, the paths and globs ``config.drift`` reads on the host: absolute
    (they name files on the host, whatever the inventory's folder), without NUL, spelt plainly
    (no ``.``, ``..`` or ``//``: one file, one spelling); an entry given twice counts once."""
    from crmmaint.engines.config_files import config_path_problem  # engines imports inventory

    paths = get_str_list(spec, "config_files")
    for p in paths:
        problem = config_path_problem(p)
        if problem:
            raise SourceError(
                f"{what}: config_files entry {problem}",
                line_of(spec, "config_files"),
                "config_files",
            )
    return list(dict.fromkeys(paths))


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
    if redis is not None and (problem := redis_url_problem(redis)) is not None:
        raise SourceError(f"{what}: redis: {problem}", line_of(spec, "redis"), "redis")
    dirs = get_str_list(spec, "directories")
    if redis is None and not dirs:
        raise SourceError(f"{what} needs 'redis' or 'directories'", line_of(spec), "redis")
    host = _owner(spec, what, inv)
    local = inv.hosts.get(host, _RUNNER_HOST).is_local
    folder = os.path.abspath(Path(inv.path).parent)
    for i, d in enumerate(dirs):
        # On a local host relative to the inventory's folder, as file sets are; ".." is
        # refused before it could be folded away. "" and "." would be the folder itself,
        # which the check below refuses.
        if local and d and not d.startswith("/") and ".." not in d.split("/"):
            d = _path(d, Path(inv.path).parent) or d
        problem = cache_directory_problem(d, folder)
        if problem is not None:
            raise SourceError(f"{what}: {problem}", line_of(spec, "directories"), "directories")
        dirs[i] = normalise_directory(d)
    return Cache(
        name=name,
        host=host,
        redis=redis,
        password=_secret(spec, "password", what),
        directories=dirs,
        groups=get_str_list(spec, "groups"),
        clear=_cache_clearing(spec, what, redis is not None, bool(dirs)),
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


def _recipient_ref(ref: str, base: Path) -> str:
    """A recipient is a public key string, or ``file:PATH`` of one (resolved relative)."""
    if ref.startswith("file:"):
        return "file:" + str(_path(ref[5:], base))
    return ref


def _check_name_clashes(inv: Inventory, data: dict) -> None:
    for gname in inv.groups:
        if gname in inv.hosts:
            raise SourceError(
                f"group {gname!r} has the same name as a host",
                line_of(data.get("groups"), gname),
                gname,
            )
