"""Backup commands: ``keys``, ``repo``, ``backup``, ``backups list``, ``restore``, ``verify``, ``prune``.

``backup``, ``verify`` and ``prune`` run their tasks through the runner as a one-step playbook, so
they are journaled, honour ``--check`` and report like any playbook run. ``restore`` streams a
backup out of the repository into a new database or directory.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from invoke import Collection

from crmmaint.cli_common import command, execute, helps, open_inventory
from crmmaint.crypto import X25519Identity, load_identity_file, write_identity_file
from crmmaint.errors import ConfigError, RestoreError
from crmmaint.inventory import Inventory
from crmmaint.reporting.console import print_table, write_json
from crmmaint.repository.configured import (
    identities_for,
    init_repository,
    load_write_key,
    open_repository,
    recipients_for,
)

REPO_HELP = "repository name from the inventory (default: the default repository)"


# --- keys --------------------------------------------------------------------------------------


@command(
    name="generate",
    help=helps(output="where to write the identity (private key, 0600)", force="overwrite"),
)
def keys_generate(c: Any, output: str, force: bool = False, debug: bool = False) -> None:
    """Create an X25519 identity file (0600) and print its public recipient string."""
    identity = X25519Identity.generate()
    pub_path = Path(output).with_suffix(".pub")
    if pub_path == Path(output):
        raise ConfigError(f"{output}: name the identity file other than *.pub")
    if (pub_path.exists() or pub_path.is_symlink()) and not force:
        raise ConfigError(
            f"{pub_path} exists (the public key goes beside the identity)",
            hint="choose another name, or pass --force to replace both",
        )
    write_identity_file(output, identity, overwrite=force)
    public = identity.recipient().to_string()
    # Never through a link planted where the public key goes: replace the name itself.
    with contextlib.suppress(FileNotFoundError):
        if force and pub_path.is_symlink():
            pub_path.unlink()
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"# crmmaint recipient for {output}\n{public}\n")
    print(public)
    print(
        f"identity: {output} (keep it offline or on the drill host); public key: {pub_path}",
        file=sys.stderr,
    )


@command(name="show", help=helps(identity="identity file"), positional=["identity"])
def keys_show(c: Any, identity: str, debug: bool = False) -> None:
    """Print the public recipient string of an identity file."""
    print(load_identity_file(identity).recipient().to_string())


@command(name="check", help=helps(repository=REPO_HELP, identity="identity file to test"))
def keys_check(
    c: Any,
    inventory: str | None = None,
    repository: str | None = None,
    identity: str | None = None,
    json: bool = False,
    debug: bool = False,
) -> None:
    """Check the repository's write key, recipients and (if given) identity without decrypting data."""
    inv = open_inventory(c, inventory)
    cfg = inv.repository(repository)
    checks: list[dict[str, str]] = []
    load_write_key(cfg.write_key or "")
    checks.append({"check": "write key", "result": f"{cfg.write_key}: ok (0600)"})
    recipients = recipients_for(cfg)
    checks.append({"check": "recipients", "result": f"{len(recipients)} valid"})
    if identity or cfg.identity:
        ids = identities_for(cfg, identity)
        publics = {r.to_string() for r in recipients}
        matching = [i for i in ids if i.recipient().to_string() in publics]
        if not matching:
            raise ConfigError(
                f"repository {cfg.name!r}: the identity is not one of its recipients",
                hint="backups are not encrypted to it; use the identity whose public key is listed",
            )
        checks.append({"check": "identity", "result": "matches a recipient"})
    if json:
        write_json(checks)
    else:
        for row in checks:
            print(f"{row['check']}: {row['result']}")


# --- repo ------------------------------------------------------------------------------------


@command(name="init", help=helps(repository=REPO_HELP))
def repo_init(
    c: Any, inventory: str | None = None, repository: str | None = None, debug: bool = False
) -> None:
    """Create the repository and its write key (0600) where the inventory says."""
    inv = open_inventory(c, inventory)
    print(init_repository(inv.repository(repository)))


@command(name="unlock", help=helps(repository=REPO_HELP))
def repo_unlock(
    c: Any, inventory: str | None = None, repository: str | None = None, debug: bool = False
) -> None:
    """Remove every lock of the repository (only when their processes are gone)."""
    from crmmaint.repository.configured import backend_for
    from crmmaint.repository.lock import break_locks

    inv = open_inventory(c, inventory)
    backend = backend_for(inv.repository(repository))
    backend.open()
    try:
        removed = break_locks(backend)
    finally:
        backend.close()
    for lock in removed:
        print(f"removed lock of {lock.get('host')} pid {lock.get('pid')} ({lock.get('owner', '')})")
    print(f"{len(removed)} lock(s) removed")


@command(
    name="repair",
    help=helps(
        repository=REPO_HELP,
        apply="move the damaged objects aside (without it: show what would be done, change nothing)",
    ),
)
def repo_repair(
    c: Any,
    inventory: str | None = None,
    repository: str | None = None,
    apply: bool = False,
    json: bool = False,
    debug: bool = False,
) -> None:
    """Move damaged manifests, index segments, key objects and drill records aside (and the
    backups they leave unrestorable), so every intact backup lists, prunes and restores."""
    inv = open_inventory(c, inventory)
    with open_repository(inv.repository(repository)) as repo:
        report = repo.repair(apply=apply)
    if json:
        write_json(vars(report))
        return
    verb = "moved aside" if apply else "would move aside"
    if report.chunks_recovered:
        print(
            f"{'indexed' if apply else 'would index'} {report.chunks_recovered} chunk(s) again "
            "from pack trailers"
        )
    if report.chunks_dropped:
        print(
            f"{'dropped' if apply else 'would drop'} {report.chunks_dropped} chunk(s) under "
            "damaged or missing keys from the index (the next backup stores them again)"
        )
    for name in report.packs_unrecoverable:
        print(f"cannot index {name} again: damaged, or written before packs had trailers")
    for name, why in report.move_aside.items():
        print(f"{verb} {name}: {why}")
    if report.clean:
        print(
            "nothing to repair: every manifest, index segment, key object and drill record is "
            "intact (`crmmaint verify --read-data` checks the packs)"
        )
    elif not apply:
        print(
            f"dry run: {len(report.move_aside)} object(s) to move aside; run "
            "`crmmaint repo repair --apply`"
        )
    else:
        print(
            f"{len(report.move_aside)} object(s) moved to damaged/ ({len(report.backups_moved)} "
            "backup(s)); the next prune frees the data only they referenced"
        )
    if report.leftovers_removed:
        print(f"removed {report.leftovers_removed} leftover(s) of killed writers")


@command(name="upgrade", help=helps(repository=REPO_HELP))
def repo_upgrade(
    c: Any, inventory: str | None = None, repository: str | None = None, debug: bool = False
) -> None:
    """Authenticate a repository config written before configs carried a MAC (once, and only
    if you trust its values as they are)."""
    from crmmaint.repository import Repository
    from crmmaint.repository.configured import backend_for, load_write_key

    inv = open_inventory(c, inventory)
    cfg = inv.repository(repository)
    key = load_write_key(cfg.write_key) if cfg.write_key else None
    if key is None:
        raise ConfigError(f"repository {cfg.name!r} has no write_key", hint="add 'write_key: PATH'")
    backend = backend_for(cfg)
    try:
        done = Repository.authenticate_config(backend, key)
    finally:
        backend.close()
    print(
        f"authenticated the config of {cfg.url}"
        if done
        else f"the config of {cfg.url} is already authenticated"
    )


# --- backup, verify, prune via the runner ------------------------------------------------------


def _adhoc(
    c: Any, inv: Inventory, name: str, steps: list[dict[str, Any]], *, check: bool, json: bool
) -> None:
    from crmmaint.playbook import load_playbook_text

    text = yaml.safe_dump({"name": name, "window": "adhoc", "steps": steps}, sort_keys=False)
    execute(c, inv, load_playbook_text(text, inv, source=f"<{name}>"), check=check, json=json)


@command(
    help=helps(
        database="databases to back up (comma-separated names or groups; default all)",
        fileset="file sets to back up (comma-separated; default all)",
        repository=REPO_HELP,
        check="report what would be backed up; write nothing",
    )
)
def backup(
    c: Any,
    inventory: str | None = None,
    database: str | None = None,
    fileset: str | None = None,
    repository: str | None = None,
    check: bool = False,
    json: bool = False,
    debug: bool = False,
) -> None:
    """Back up databases and file sets into the repository (encrypted, deduplicated)."""
    for flag, value in (("--database", database), ("--fileset", fileset)):
        if value is not None and not [v for v in value.split(",") if v.strip()]:
            raise ConfigError(
                f"{flag} names nothing", hint=f"give a name from the inventory, or leave {flag} out"
            )
    inv = open_inventory(c, inventory)
    params = {"repository": repository} if repository else {}
    steps: list[dict[str, Any]] = []
    if (database or not fileset) and inv.databases:
        sel = database.split(",") if database else ["all"]
        steps.append(
            {
                "name": "backup databases",
                "task": "backup.database",
                "database": sel,
                "with": params,
                "on_failure": "continue",
            }
        )
    if (fileset or not database) and inv.filesets:
        sel = fileset.split(",") if fileset else ["all"]
        steps.append(
            {
                "name": "backup files",
                "task": "backup.files",
                "fileset": sel,
                "with": params,
                "on_failure": "continue",
            }
        )
    if not steps:
        raise ConfigError("nothing to back up", hint="the inventory has no databases or file sets")
    _adhoc(c, inv, "backup", steps, check=check, json=json)


@command(
    help=helps(
        repository=REPO_HELP,
        read_data="download every object and check its hash",
        read_data_subset="check only this share of the data (e.g. 10%), rotating across runs",
        decrypt="also decrypt and decompress every chunk (needs the identity)",
    )
)
def verify(
    c: Any,
    inventory: str | None = None,
    repository: str | None = None,
    read_data: bool = False,
    read_data_subset: str | None = None,
    decrypt: bool = False,
    json: bool = False,
    debug: bool = False,
) -> None:
    """Check that the repository is intact."""
    inv = open_inventory(c, inventory)
    repo = inv.repository(repository).name
    params: dict[str, Any] = {"read_data": read_data, "decrypt": decrypt}
    if read_data_subset:
        params["read_data_subset"] = read_data_subset
    _adhoc(
        c,
        inv,
        "verify",
        [{"name": "verify", "task": "backup.verify", "repository": [repo], "with": params}],
        check=False,
        json=json,
    )


@command(
    help=helps(
        repository=REPO_HELP,
        check="show what would be removed; remove nothing",
        keep_last="keep the N newest",
        keep_daily="keep the newest of each of the last N days",
        keep_weekly="… of the last N weeks",
        keep_monthly="… of the last N months",
        keep_quarterly="… of the last N quarters",
        keep_yearly="… of the last N years",
    )
)
def prune(
    c: Any,
    inventory: str | None = None,
    repository: str | None = None,
    check: bool = False,
    keep_last: int = 0,
    keep_daily: int = 7,
    keep_weekly: int = 4,
    keep_monthly: int = 12,
    keep_quarterly: int = 0,
    keep_yearly: int = 3,
    json: bool = False,
    debug: bool = False,
) -> None:
    """Remove backups outside the retention policy (never the newest, nor the newest drilled)."""
    inv = open_inventory(c, inventory)
    repo = inv.repository(repository).name
    params = {
        "keep_last": keep_last,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
        "keep_quarterly": keep_quarterly,
        "keep_yearly": keep_yearly,
    }
    _adhoc(
        c,
        inv,
        "prune",
        [{"name": "prune", "task": "backup.prune", "repository": [repo], "with": params}],
        check=check,
        json=json,
    )


# --- listing and restore ---------------------------------------------------------------------


@command(
    name="list", help=helps(repository=REPO_HELP, source="only this source, e.g. database:crm")
)
def backups_list(
    c: Any,
    inventory: str | None = None,
    repository: str | None = None,
    source: str | None = None,
    json: bool = False,
    debug: bool = False,
) -> None:
    """List backups: size, new bytes, dedup ratio, duration, source, drilled (needs only the write key)."""
    inv = open_inventory(c, inventory)
    with open_repository(inv.repository(repository), reading="list backups") as repo:
        backups = sorted(repo.backups(source=source), key=lambda b: b.time)
        damaged = dict(repo.damaged_manifests)
    rows = [
        {
            "id": b.id,
            "source": b.source,
            "host": b.host,
            "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.time)),
            "size": _mib(b.size),
            "new": _mib(b.stored_bytes),
            "dedup": f"{b.dedup_ratio:.0%}",
            "duration": f"{b.duration:.1f}s",
            "drilled": "yes" if b.drilled else "",
        }
        for b in backups
    ]
    rows += [{"id": backup_id, "source": f"DAMAGED: {why}"} for backup_id, why in damaged.items()]
    if json:
        write_json(
            [{**vars(b), "damaged": None} for b in backups]
            + [{"id": backup_id, "damaged": why} for backup_id, why in damaged.items()]
        )
    else:
        print_table(
            rows,
            ["id", "source", "host", "time", "size", "new", "dedup", "duration", "drilled"],
            title="backups",
            status_column=None,
        )
    if damaged:
        print(
            f"{len(damaged)} damaged backup(s) listed last: every other backup is unaffected; "
            "`crmmaint repo repair` shows what it would move aside",
            file=sys.stderr,
        )


@command(
    help=helps(
        backup_id="backup id (see `crmmaint backups list`), or SOURCE@latest e.g. database:crm@latest",
        to="new database name (or SQLite file, or directory for file sets) to restore into",
        repository=REPO_HELP,
        identity="identity file to decrypt with",
        force="replace an existing target",
        jobs="connections a PostgreSQL restore loads and indexes on (default 2; from 4, big "
        "tables are split across connections)",
    ),
    positional=["backup_id"],
)
def restore(
    c: Any,
    backup_id: str,
    to: str = "",
    inventory: str | None = None,
    repository: str | None = None,
    identity: str | None = None,
    force: bool = False,
    jobs: int = 2,
    debug: bool = False,
) -> None:
    """Restore a backup into a new database or directory (refuses to overwrite without --force)."""
    from crmmaint.playbook.runner import default_transport_factory
    from crmmaint.tasks.restore import find_backup, restore_database, restore_fileset
    from crmmaint.transport.ssh import SSHPool

    if not to:
        raise ConfigError(
            "restore needs --to", hint="name a new database, SQLite file or directory"
        )
    if not 1 <= jobs <= 64:
        raise ConfigError(f"--jobs {jobs} is out of range", hint="use 1 to 64 connections")
    inv = open_inventory(c, inventory)
    cfg = inv.repository(repository)
    identities = identities_for(cfg, identity)
    with open_repository(cfg, reading=f"restore {backup_id}") as repo:
        backup = find_backup(repo, backup_id)
        kind, _, name = backup.source.partition(":")
        pool = SSHPool()
        transports = default_transport_factory(pool)
        try:
            started = time.monotonic()
            if kind == "database":
                if name not in inv.databases:
                    raise ConfigError(
                        f"backup {backup.id} is of database {name!r}, which the inventory does not list"
                    )
                host = inv.target("database", name).host
                facts = restore_database(
                    repo, backup, identities, db=inv.databases[name], transport=transports(host),
                    to=to, force=force, jobs=jobs,
                )  # fmt: skip
                what = f"{len(facts.get('tables', []))} tables, {sum((facts.get('row_counts') or {}).values())} rows"
                if facts.get("owner"):
                    what += f"; loaded as {facts['owner']}, which owns what it created"
            elif kind == "fileset":
                if name not in inv.filesets:
                    raise ConfigError(
                        f"backup {backup.id} is of file set {name!r}, which the inventory does not list"
                    )
                host = inv.target("fileset", name).host
                facts = restore_fileset(
                    repo, backup, identities, fileset=inv.filesets[name],
                    transport=transports(host), to=to, force=force,
                )  # fmt: skip
                what = f"{facts.get('files', 0)} files"
            else:
                raise RestoreError(f"backup {backup.id} has unknown source kind {kind!r}")
        finally:
            pool.close_all()
    print(
        f"restored {backup.id} into {to} on {host.name}: {what} in {time.monotonic() - started:.1f}s"
    )


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def register(ns: Collection) -> None:
    """Add these commands to the CLI collection."""
    ns.add_task(backup)
    ns.add_task(verify)
    ns.add_task(prune)
    ns.add_task(restore)
    ns.add_collection(Collection("keys", keys_generate, keys_show, keys_check))
    ns.add_collection(Collection("repo", repo_init, repo_unlock, repo_repair, repo_upgrade))
    ns.add_collection(Collection("backups", backups_list))
