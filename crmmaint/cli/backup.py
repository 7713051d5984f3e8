"""Backups: ``backup``, ``verify``, ``prune``, ``backups list`` and ``restore``.

``backup``, ``verify``, ``prune`` and ``restore`` run their tasks through the runner as one-step
playbooks, so they are journaled, honour ``--check`` and report like any playbook run;
``restore`` acts on one target and exits with the code of its failure (the README's table).
"""

from __future__ import annotations

import sys
from typing import Any

from invoke import Collection

from crmmaint.cli.common import (
    OVERRIDE_HELP,
    REPO_HELP,
    command,
    execute_adhoc,
    execute_one,
    helps,
    honour_blackout,
    local_time,
    open_inventory,
    output_after_work,
    typed_here,
)
from crmmaint.errors import ConfigError, RestoreError
from crmmaint.playbook.run import AdhocStep
from crmmaint.reporting.console import print_table, write_json
from crmmaint.repository.configured import open_repository
from crmmaint.repository.retention import MAX_KEEP_WITHIN, RetentionPolicy, bare_number
from crmmaint.units import format_size, parse_duration, plural


@command(
    help=helps(
        database="databases to back up (comma-separated names or groups; default all)",
        fileset="file sets to back up (comma-separated; default all)",
        repository=REPO_HELP,
        check="report what would be backed up; write nothing",
        override=OVERRIDE_HELP,
    ),
    audit="backup",
)
def backup(
    c: Any,
    inventory: str | None = None,
    database: str | None = None,
    fileset: str | None = None,
    repository: str | None = None,
    check: bool = False,
    override: str | None = None,
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
    honour_blackout(c, inv, "backup", override=override, check=check)
    params = {"repository": inv.repository(repository).name} if repository else {}
    steps: list[AdhocStep] = []
    if (database or not fileset) and inv.databases:
        sel = database.split(",") if database else ["all"]
        steps.append(
            AdhocStep("backup databases", "backup.database", {"database": sel}, params, "continue")
        )
    if (fileset or not database) and inv.filesets:
        sel = fileset.split(",") if fileset else ["all"]
        steps.append(
            AdhocStep("backup files", "backup.files", {"fileset": sel}, params, "continue")
        )
    if not steps:
        raise ConfigError("nothing to back up", hint="the inventory has no databases or file sets")
    execute_adhoc(c, inv, "backup", steps, check=check, json=json)


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
    if read_data and read_data_subset is not None:
        raise ConfigError(
            "--read-data reads every object and --read-data-subset a share of them: give one",
            hint="e.g. `crmmaint verify --read-data-subset 10%` each night and "
            "`--read-data` monthly",
        )
    inv = open_inventory(c, inventory)
    repo = inv.repository(repository).name
    params: dict[str, Any] = {"read_data": read_data, "decrypt": decrypt}
    if read_data_subset:
        params["read_data_subset"] = read_data_subset
    step = AdhocStep("verify", "backup.verify", {"repository": [repo]}, params)
    execute_adhoc(c, inv, "verify", [step], check=False, json=json)


@command(
    help=helps(
        repository=REPO_HELP,
        check="show what would be removed and why each backup stays; remove nothing",
        keep_last="keep the N newest",
        keep_hourly="keep the newest of each of the last N hours",
        keep_daily="keep the newest of each of the last N days",
        keep_weekly="… of the last N weeks",
        keep_monthly="… of the last N months",
        keep_quarterly="… of the last N quarters",
        keep_yearly="… of the last N years",
        keep_within="keep every backup at most this old (e.g. 36h, 2d, 1w)",
        override=OVERRIDE_HELP,
    ),
    audit="prune",
)
def prune(
    c: Any,
    inventory: str | None = None,
    repository: str | None = None,
    check: bool = False,
    keep_last: str | None = None,
    keep_hourly: str | None = None,
    keep_daily: str | None = None,
    keep_weekly: str | None = None,
    keep_monthly: str | None = None,
    keep_quarterly: str | None = None,
    keep_yearly: str | None = None,
    keep_within: str | None = None,
    override: str | None = None,
    json: bool = False,
    debug: bool = False,
) -> None:
    """Remove backups outside the retention policy (never the newest, nor the newest drilled).

    The policy is the `--keep-*` flags when any is given, else the repository's
    `retention:` in the inventory; with neither, prune refuses. Prints one row per backup:
    kept or removed, and the rules that keep it.
    """
    counts = {
        "keep_last": keep_last,
        "keep_hourly": keep_hourly,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
        "keep_quarterly": keep_quarterly,
        "keep_yearly": keep_yearly,
    }
    params: dict[str, Any] = {
        key: _whole_number(value, key) for key, value in counts.items() if value is not None
    }
    if keep_within is not None:
        if bare_number(keep_within):
            raise ConfigError(
                f"--keep-within {keep_within!r} has no unit (it would be seconds)",
                hint="units s, m, h, d, w: e.g. --keep-within 36h",
            )
        try:
            params["keep_within"] = parse_duration(keep_within)
        except ValueError as exc:
            raise ConfigError(f"--keep-within: {exc}") from None
    inv = open_inventory(c, inventory)
    honour_blackout(c, inv, "prune", override=override, check=check)
    cfg = inv.repository(repository)
    _check_policy_flags(params, cfg.name, has_retention=cfg.retention is not None)
    step = AdhocStep("prune", "backup.prune", {"repository": [cfg.name]}, params)
    summary = execute_adhoc(c, inv, "prune", [step], check=check, json=json)
    if json:
        return
    for row in summary.results:
        verdicts = (row.result.details or {}).get("backups")
        if verdicts:
            with output_after_work():  # the prune is done: a lost table keeps its code
                _print_verdicts(verdicts, check)


def _print_verdicts(verdicts: list[dict[str, Any]], check: bool) -> None:
    """prune's table: one row per backup, kept or removed, and the rules that keep it."""
    print_table(
        [
            {
                **v,
                "time": _journal_time_shown(v["time"]),
                "drilled": "yes" if v["drilled"] else "",
                "reasons": ", ".join(v["reasons"]) or "-",
            }
            for v in verdicts
        ],
        ["id", "source", "time", "drilled", "decision", "reasons"],
        title="would keep / remove" if check else "kept / removed",
        status_column=None,
    )


def _journal_time_shown(stamp: str) -> str:
    """A time the journal keeps in UTC (``2026-12-01T03:12:35Z``) in local time, as
    ``backups list`` and ``history`` show times."""
    from datetime import UTC, datetime

    try:
        moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return stamp
    return local_time(moment.timestamp())


def _check_policy_flags(params: dict[str, Any], repository: str, *, has_retention: bool) -> None:
    """Refuse, before anything runs or is journaled (exit 3), a prune whose flags set no
    usable policy: none given and no ``retention:`` in the inventory, rules that are all 0,
    or a ``--keep-within`` beyond 100 years (counts are checked with the other arguments)."""
    example = "e.g. `--keep-daily 7 --keep-weekly 4` or `--keep-within 30d`"
    if not params:
        if has_retention:
            return
        raise ConfigError(
            f"no retention policy for repository {repository!r}: refusing to prune",
            hint=f"give --keep-* flags, {example}, or set retention: on the repository in "
            "the inventory (docs/retention.md)",
        )
    within = params.get("keep_within")
    if within is not None and not within <= MAX_KEEP_WITHIN:
        raise ConfigError("--keep-within takes a duration up to 100 years (36500d)", hint=example)
    if RetentionPolicy(**params).is_empty:
        raise ConfigError(
            "the --keep-* flags given set no rule above 0, and prune refuses an empty policy",
            hint=example,
        )


def _whole_number(text: str, key: str) -> int:
    """A ``--keep-*`` count as an int (a negative one is left to the policy to refuse)."""
    try:
        return int(text)
    except ValueError:
        flag = "--" + key.replace("_", "-")
        raise ConfigError(
            f"{flag}: a whole number was expected, got {text!r}", hint=f"e.g. {flag} 7"
        ) from None


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
            "time": local_time(b.time),
            "size": format_size(b.size),
            "new": format_size(b.stored_bytes),
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
            droppable=["host", "new", "dedup", "duration", "size"],
        )
    if damaged:
        print(
            f"{plural(len(damaged), 'damaged backup')} listed last: every other backup is unaffected; "
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
        check="check the keys and say what would be restored where; write nothing",
        timeout="give up after this long, e.g. 2h (default: no limit)",
    ),
    positional=["backup_id"],
    audit="restore",
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
    check: bool = False,
    timeout: str | None = None,
    json: bool = False,
    debug: bool = False,
) -> None:
    """Restore a backup into a new database or directory (refuses to overwrite without --force).

    Runs as a one-step playbook (task `restore.database` or `restore.files`): journaled,
    listed by `history`, and `--check` changes nothing."""
    if not to:
        raise ConfigError(
            "restore needs --to", hint="name a new database, SQLite file or directory"
        )
    if not 1 <= jobs <= 64:
        raise ConfigError(f"--jobs {jobs} is out of range", hint="use 1 to 64 connections")
    seconds = _duration_flag("--timeout", timeout)
    inv = open_inventory(c, inventory)
    cfg = inv.repository(repository)
    source, ref = _restore_source(cfg, backup_id)
    kind, _, name = source.partition(":")
    section = {"database": inv.databases, "fileset": inv.filesets}.get(kind)
    if section is None:
        raise RestoreError(f"backup {backup_id} has unknown source kind {kind!r}")
    if name not in section:
        what = "database" if kind == "database" else "file set"
        raise ConfigError(
            f"backup {backup_id} is of {what} {name!r}, which the inventory does not list"
        )
    to = typed_here(inv, kind, name, to)
    params: dict[str, Any] = {"backup": ref, "to": to, "force": force, "repository": cfg.name}
    if identity:
        params["identity"] = identity
    if kind == "database":
        params["jobs"] = jobs
    task = "restore.database" if kind == "database" else "restore.files"
    step = AdhocStep("restore", task, {kind: [name]}, params, timeout=seconds)
    execute_one(c, inv, "restore", step, check=check, json=json)


def _restore_source(cfg: Any, ref: str) -> tuple[str, str]:
    """``(source, backup)`` of a restore's backup reference: ``database:crm@latest`` names
    its source; an id (or a unique prefix) is looked up in the repository."""
    from crmmaint.tasks.restore import find_backup

    if ref.endswith("@latest") and ":" in ref:
        return ref[: -len("@latest")], "latest"
    with open_repository(cfg, reading=f"restore {ref}") as repo:
        backup = find_backup(repo, ref)
    return backup.source, backup.id


def _duration_flag(flag: str, value: str | None) -> float | None:
    from crmmaint.units import parse_duration

    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"{flag} {value!r}: {exc}") from None
    if not MIN_TIMEOUT <= seconds <= MAX_TIMEOUT:
        raise ConfigError(
            f"{flag} {value!r} is out of range: give from 1s to 100 years",
            hint="e.g. 90s, 45m, 2h",
        )
    return seconds


#: The shortest and longest ``--timeout`` (seconds): below a second nothing can even start
#: (a restore's first command is cut short), beyond a century is no limit at all.
MIN_TIMEOUT = 1.0
MAX_TIMEOUT = 100 * 365 * 86400.0


def register(ns: Collection) -> None:
    """Add these commands to the CLI collection."""
    ns.add_task(backup)
    ns.add_task(verify)
    ns.add_task(prune)
    ns.add_task(restore)
    ns.add_collection(Collection("backups", backups_list))
