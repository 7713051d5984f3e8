"""Permission review: who can reach the CRM's data, compared with what a person accepted.

Per database (PostgreSQL: ``engines/postgresql/permissions.py``; MariaDB:
``engines/mysql_permissions.py``) and per host (SSH keys and sudo: ``HostOS.ssh_access``),
the engine reduces what it finds to a snapshot; this module names what deserves a look
(superusers, roles that create roles or databases or bypass row-level security, grants to
PUBLIC, login roles without a password or whose password never expires; accounts with
global privileges, reachable from any host or without a password; SSH keys and accounts
that can become root) and compares the snapshot with the accepted baseline
(``crmmaint.baselines``): anything added, removed or changed since is a warning naming the
role, account or key, until ``crmmaint baseline accept permissions`` after a person looked.

It only reads; check mode reads the same and records nothing. Password hashes are never read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from crmmaint import baselines
from crmmaint.errors import CrmMaintError
from crmmaint.results import Status, TaskResult
from crmmaint.tasks.api import Param, TaskContext, task

log = logging.getLogger(__name__)

#: Seconds the review's queries or host script may take.
REVIEW_TIMEOUT = 120.0
#: Names listed per finding in the message, at most (the details have them all).
MESSAGE_NAMES = 3
#: The word for a snapshot section's items in messages.
NOUNS = {
    "roles": "role",
    "public_grants": "PUBLIC grant on",
    "schema_grants": "PUBLIC grant on schema",
    "database_grants": "grants of",
    "accounts": "account",
    "keys": "key",
    "sudo": "sudo for",
    "unreadable": "unreadable",
    "unparsed": "unparsed line",
    "settings": "sshd setting",
    "files": "authorized_keys file",
    "probe": "review",
}

Finding = tuple[str, list[str]]


def _names(items: dict[str, dict[str, Any]], test: Callable[[dict[str, Any]], bool]) -> list[str]:
    return sorted(k for k, v in items.items() if test(v))


def postgresql_findings(snapshot: baselines.Snapshot) -> list[Finding]:
    """What a reviewer should look at in a PostgreSQL snapshot: (what, names) pairs, empty
    ones left out. "Never expires": a login role with a password and no ``VALID UNTIL``."""
    roles = snapshot.get("roles", {})
    found = [
        ("superuser", _names(roles, lambda r: bool(r.get("superuser")))),
        ("can create roles", _names(roles, lambda r: bool(r.get("createrole")))),
        ("can create databases", _names(roles, lambda r: bool(r.get("createdb")))),
        ("bypass row-level security", _names(roles, lambda r: bool(r.get("bypassrls")))),
        (
            "login without a password",
            _names(roles, lambda r: bool(r.get("login")) and r.get("password") == "none"),
        ),
        (
            "password never expires",
            _names(
                roles,
                lambda r: (
                    bool(r.get("login"))
                    and r.get("password") == "set"
                    and r.get("valid_until") is None
                ),
            ),
        ),
        ("PUBLIC grants on", sorted(snapshot.get("public_grants", {}))),
    ]
    return [(what, names) for what, names in found if names]


#: MariaDB authentication plugins that take no password by design (the OS or a key proves
#: who connects), so an empty password there is not an open door.
PASSWORDLESS_PLUGINS = frozenset({"unix_socket", "auth_socket", "gssapi", "auth_gssapi_client"})


def mysql_findings(snapshot: baselines.Snapshot) -> list[Finding]:
    """What a reviewer should look at in a MariaDB/MySQL snapshot (see ``postgresql_findings``)."""
    accounts = snapshot.get("accounts", {})
    found = [
        ("global privileges", _names(accounts, lambda a: bool(a.get("global_privileges")))),
        ("any host", _names(accounts, lambda a: bool(a.get("any_host")))),
        (
            "no password",
            _names(
                accounts,
                lambda a: (
                    a.get("password") == "none"
                    and not a.get("role")
                    and not a.get("locked")
                    and a.get("auth") not in PASSWORDLESS_PLUGINS
                ),
            ),
        ),
    ]
    return [(what, names) for what, names in found if names]


def host_findings(snapshot: baselines.Snapshot) -> list[Finding]:
    """What a reviewer should look at on a host: the accounts with SSH keys (and how many),
    the accounts that can become root, files that could not be read."""
    keys = snapshot.get("keys", {})
    per_account: dict[str, int] = {}
    for key in keys.values():
        account = str(key.get("account", "?"))
        per_account[account] = per_account.get(account, 0) + 1
    found = [
        (
            "SSH keys",
            [f"{a} ({n})" if n > 1 else a for a, n in sorted(per_account.items())],
        ),
        ("can become root", sorted(snapshot.get("sudo", {}))),
        ("unreadable", sorted(snapshot.get("unreadable", {}))),
    ]
    return [(what, names) for what, names in found if names]


#: The name prefix of the roles (PostgreSQL) and accounts (MariaDB) crmmaint's own
#: least-privilege restores create (``engines/postgresql/roles.py``, ``engines/mysql.py``).
RESTORE_ROLE_PREFIX = "crmmaint_load_"
#: Seconds a restore role's login may still run for: its lease (``LOAD_ROLE_VALID``, a day)
#: and the 10-minute margin it is created with.
RESTORE_ROLE_LEASE = 86400 + 600
_POWERS = ("superuser", "createrole", "createdb", "bypassrls", "replication")


def _lease_ends(valid_until: Any) -> float | None:
    from datetime import datetime

    if not isinstance(valid_until, str):
        return None
    try:
        return datetime.fromisoformat(valid_until.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def set_aside_restore_roles(
    snapshot: baselines.Snapshot, now: float
) -> tuple[baselines.Snapshot, list[str]]:
    """``snapshot`` without the roles and accounts crmmaint's own restores made, and their
    names: they come and go with every drill and are no one's access. Only those that look
    exactly as crmmaint leaves them are set aside: a PostgreSQL ``crmmaint_load_*`` role with
    none of superuser/createrole/createdb/bypassrls/replication, no memberships, and either no
    login or a login whose ``VALID UNTIL`` ends within a restore's lease; a MariaDB
    ``crmmaint_load_*`` account that is locked and has no global privilege. A role that
    merely borrows the name keeps being reviewed. Memberships in a set-aside role (the
    restoring user is made a member of it) are left out of the other roles' ``member_of``."""
    out = {section: dict(items) for section, items in snapshot.items()}
    aside: list[str] = []
    roles = out.get("roles", {})
    for name, role in list(roles.items()):
        ends = _lease_ends(role.get("valid_until"))
        if (
            name.startswith(RESTORE_ROLE_PREFIX)
            and not any(role.get(power) for power in _POWERS)
            and not role.get("member_of")
            and (not role.get("login") or (ends is not None and ends <= now + RESTORE_ROLE_LEASE))
        ):
            aside.append(name)
            del roles[name]
    if aside:
        for name, role in roles.items():
            members = role.get("member_of")
            if isinstance(members, list) and set(members) & set(aside):
                roles[name] = {**role, "member_of": [m for m in members if m not in aside]}
    accounts = out.get("accounts", {})
    for key, account in list(accounts.items()):
        if (
            key.startswith(f"'{RESTORE_ROLE_PREFIX}")
            and account.get("locked") is True
            and not account.get("global_privileges")
            and not account.get("role")
        ):
            aside.append(key)
            del accounts[key]
            out.get("database_grants", {}).pop(key, None)
    return out, sorted(aside)


def say_findings(findings: list[Finding]) -> str:
    """``superuser: postgres, alice; any host: app@%`` (at most ``MESSAGE_NAMES`` names each)."""
    parts = []
    for what, names in findings:
        more = f" +{len(names) - MESSAGE_NAMES}" if len(names) > MESSAGE_NAMES else ""
        parts.append(f"{what}: {', '.join(names[:MESSAGE_NAMES])}{more}")
    return "; ".join(parts)


def _check_patterns(patterns: list[str]) -> None:
    """sshd's ``AuthorizedKeysFile`` tokens are ``%h``, ``%u``, ``%U`` and ``%%`` (sshd
    refuses any other, so a pattern with one reads nothing sshd would)."""
    for pattern in patterns:
        if not pattern.strip():
            raise ValueError("authorized_keys: an empty pattern names no file")
        rest = pattern.replace("%%", "")
        for i, ch in enumerate(rest):
            if ch == "%" and rest[i + 1 : i + 2] not in ("h", "u", "U"):
                raise ValueError(
                    f"authorized_keys: {pattern!r} has {rest[i : i + 2]!r}; sshd knows %h (home),"
                    " %u (user), %U (uid) and %% only"
                )


def _check_absolute(path: str | None) -> None:
    if path is not None and not path.startswith("/"):
        raise ValueError(f"sshd_config: {path!r} is not an absolute path on the host")


def _sshd_note(ctx: TaskContext, snapshot: baselines.Snapshot) -> str | None:
    """Why sshd's own setting could not be read, when that matters: the review then read
    sshd's default files (or, with ``sshd_config`` given, fails: a wrong file is a mistake)."""
    setting = snapshot.get("settings", {}).get("AuthorizedKeysFile", {})
    if setting.get("source") != "default":
        return None
    return str(setting.get("note") or "sshd -T could not run")


def _result(
    ctx: TaskContext,
    snapshot: baselines.Snapshot,
    findings: list[Finding],
    what: str,
    note: str | None = None,
    aside: list[str] | None = None,
) -> TaskResult:
    if aside:
        said = f"{len(aside)} crmmaint restore role{'s' if len(aside) != 1 else ''} set aside"
        note = f"{note}; {said}" if note else said
    review = baselines.review(
        ctx.journal, "permissions", ctx.target, snapshot, run_id=ctx.run_id, check=ctx.check
    )
    counts = {section: len(items) for section, items in sorted(snapshot.items())}
    details = ctx.read_only_details(
        what=what,
        findings={w: names for w, names in findings},
        counts=counts,
        restore_roles_set_aside=aside or [],
        **review.details(),
    )
    metrics: dict[str, float] = {f"permissions_{s}": n for s, n in counts.items()}
    metrics["permissions_changes"] = len(review.changes) if review.baseline else 0
    message = "; ".join(p for p in (note, say_findings(findings), review.summary(NOUNS)) if p)
    status = Status.OK if review.clean else Status.WARNING
    return TaskResult(status, f"{what}: {message}", metrics=metrics, details=details)


@task(
    "permissions.review",
    targets=("database", "hosts"),
    params={
        "authorized_keys": Param(
            list,
            [],
            item_type=str,
            check=_check_patterns,
            help="hosts: authorized_keys file patterns in sshd's syntax (%h home, %u user;"
            " relative to the home); default: sshd's own AuthorizedKeysFile",
        ),
        "sshd_config": Param(
            str,
            None,
            check=_check_absolute,
            help="hosts: sshd's configuration file (absolute), if not the default",
        ),
        "timeout": Param("duration", REVIEW_TIMEOUT, help="seconds the review may take"),
    },
)
def review(ctx: TaskContext) -> TaskResult:
    """Who can reach the data: database roles and grants, SSH keys and sudo, against the
    accepted baseline."""
    try:
        if ctx.target.kind == "hosts":
            return _host(ctx)
        return _database(ctx)
    except CrmMaintError as exc:
        return TaskResult.from_error(exc, ctx.target.name, details=ctx.read_only_details())


def _host(ctx: TaskContext) -> TaskResult:
    from crmmaint.engines.host import HostOS

    p = ctx.params
    snapshot = HostOS(ctx.transport).ssh_access(
        authorized_keys=p["authorized_keys"] or None,
        sshd_config=p["sshd_config"],
        timeout=ctx.time_left(float(p["timeout"])),
    )
    note = _sshd_note(ctx, snapshot)
    if note is not None and p["sshd_config"]:
        return TaskResult(
            Status.FAILED,
            f"ssh and sudo: sshd -T -f {p['sshd_config']} failed ({note}): fix sshd_config, or"
            " leave it out to use sshd's own",
            details=ctx.read_only_details(),
        )
    if note is not None:
        note = f"sshd's AuthorizedKeysFile unknown ({note}): read sshd's default files"
    return _result(ctx, snapshot, host_findings(snapshot), "ssh and sudo", note)


def _database(ctx: TaskContext) -> TaskResult:
    from crmmaint.engines import engine_for

    engine = engine_for(ctx.target.obj, ctx.transport)
    timeout = ctx.time_left(float(ctx.params["timeout"])) or REVIEW_TIMEOUT
    if engine.engine == "postgresql":
        from crmmaint.engines.postgresql.permissions import postgresql_permissions

        snapshot = postgresql_permissions(engine, timeout=timeout)  # type: ignore[arg-type]
        snapshot, aside = set_aside_restore_roles(snapshot, time.time())
        return _result(ctx, snapshot, postgresql_findings(snapshot), "roles", aside=aside)
    if engine.engine == "mysql":
        from crmmaint.engines.mysql_permissions import mysql_permissions

        snapshot = mysql_permissions(engine, timeout=timeout)  # type: ignore[arg-type]
        snapshot, aside = set_aside_restore_roles(snapshot, time.time())
        return _result(ctx, snapshot, mysql_findings(snapshot), "accounts", aside=aside)
    return TaskResult.skipped(
        f"{engine.engine} has no roles or grants: who can read {ctx.target.name} is the file's"
        " owner and mode on its host",
        details=ctx.read_only_details(),
    )
