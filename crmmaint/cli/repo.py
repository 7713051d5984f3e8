"""Looking after a repository itself: ``repo init``, ``repo unlock``, ``repo repair``, ``repo upgrade``."""

from __future__ import annotations

from typing import Any

from invoke import Collection

from crmmaint.cli.common import REPO_HELP, audit_begins, command, helps, open_inventory
from crmmaint.errors import ConfigError
from crmmaint.reporting.console import visible, write_json
from crmmaint.repository.configured import init_repository, open_repository
from crmmaint.units import plural


@command(name="init", help=helps(repository=REPO_HELP), audit="repo init")
def repo_init(
    c: Any, inventory: str | None = None, repository: str | None = None, debug: bool = False
) -> None:
    """Create the repository and its write key (0600) where the inventory says."""
    inv = open_inventory(c, inventory)
    cfg = inv.repository(repository)
    audit_begins(c, inv, [f"repository:{cfg.name}"])
    print(init_repository(cfg))


@command(
    name="unlock",
    help=helps(
        repository=REPO_HELP, force="also remove the locks of processes running on this host"
    ),
    audit="repo unlock",
)
def repo_unlock(
    c: Any,
    inventory: str | None = None,
    repository: str | None = None,
    force: bool = False,
    debug: bool = False,
) -> None:
    """Remove the repository's locks and the scheduler's, except ones of processes here.

    Unreadable lock objects go too. A lock whose process runs on this host is kept (exit 7)
    unless --force is given."""
    from crmmaint.repository.configured import backend_for
    from crmmaint.repository.lock import break_locks

    inv = open_inventory(c, inventory)
    cfg = inv.repository(repository)
    audit_begins(c, inv, [f"repository:{cfg.name}"])
    backend = backend_for(cfg)
    backend.open()
    try:
        removed = break_locks(backend, force=force)
    finally:
        backend.close()
    for lock in removed:
        print(_removed_line(lock))
    print(f"{plural(len(removed), 'lock')} removed")


def _removed_line(lock: dict[str, Any]) -> str:
    """``removed scheduler lock scheduler/lock/ab12 of db1 pid 4242 (scheduler main)``; the
    record's words through ``visible`` (an object planted in the repository may hold any)."""
    where = f"{lock.get('namespace', 'repository')} lock {visible(str(lock.get('object', '')))}"
    if lock.get("unreadable"):
        return f"removed unreadable {where}"
    owner = f" ({visible(str(lock['owner']))})" if lock.get("owner") else ""
    return (
        f"removed {where} of {visible(str(lock.get('host')))} pid "
        f"{visible(str(lock.get('pid')))}{owner}"
    )


@command(
    name="repair",
    help=helps(
        repository=REPO_HELP,
        apply="move the damaged objects aside (without it: show what would be done, change nothing)",
    ),
    audit="repo repair",
    dry_run=lambda k: not k.get("apply"),
)
def repo_repair(
    c: Any,
    inventory: str | None = None,
    repository: str | None = None,
    apply: bool = False,
    json: bool = False,
    debug: bool = False,
) -> None:
    """Move damaged manifests, index segments, key objects and drill records aside.

    The backups they leave unrestorable move with them, so every intact backup lists, prunes
    and restores."""
    inv = open_inventory(c, inventory)
    cfg = inv.repository(repository)
    audit_begins(c, inv, [f"repository:{cfg.name}"])
    with open_repository(cfg) as repo:
        report = repo.repair(apply=apply)
    if json:
        write_json(vars(report))
        return
    verb = "moved aside" if apply else "would move aside"
    if report.chunks_recovered:
        print(
            f"{'indexed' if apply else 'would index'} {plural(report.chunks_recovered, 'chunk')} again "
            "from pack trailers"
        )
    if report.chunks_dropped:
        print(
            f"{'dropped' if apply else 'would drop'} {plural(report.chunks_dropped, 'chunk')} under "
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
            f"dry run: {plural(len(report.move_aside), 'object')} to move aside; run "
            "`crmmaint repo repair --apply`"
        )
    else:
        print(
            f"{plural(len(report.move_aside), 'object')} moved to damaged/ ({len(report.backups_moved)} "
            "backup(s)); the next prune frees the data only they referenced"
        )
    if report.leftovers_removed:
        print(f"removed {plural(report.leftovers_removed, 'leftover')} of killed writers")


@command(name="upgrade", help=helps(repository=REPO_HELP), audit="repo upgrade")
def repo_upgrade(
    c: Any, inventory: str | None = None, repository: str | None = None, debug: bool = False
) -> None:
    """Authenticate a repository config written before configs carried a MAC.

    Once, and only if you trust its values as they are."""
    from crmmaint.repository import Repository
    from crmmaint.repository.configured import backend_for, load_write_key

    inv = open_inventory(c, inventory)
    cfg = inv.repository(repository)
    key = load_write_key(cfg.write_key) if cfg.write_key else None
    if key is None:
        raise ConfigError(f"repository {cfg.name!r} has no write_key", hint="add 'write_key: PATH'")
    audit_begins(c, inv, [f"repository:{cfg.name}"])
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


def register(ns: Collection) -> None:
    """Add the command group to the CLI collection."""
    ns.add_collection(Collection("repo", repo_init, repo_unlock, repo_repair, repo_upgrade))
