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

from collections.abc import Callable
from typing import Any

from crmmaint import baselines
from crmmaint.errors import CrmMaintError
from crmmaint.results import Status, TaskResult
from crmmaint.tasks.api import Param, TaskContext, positive, task

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
    "default_grants": "default PUBLIC grant",
    "definer_functions": "SECURITY DEFINER function",
    "definer_routines": "SQL SECURITY DEFINER routine",
    "owners": "owner",
    "probe": "review",
}

Finding = tuple[str, list[str]]


def _names(items: dict[str, dict[str, Any]], test: Callable[[dict[str, Any]], bool]) -> list[str]:
    return sorted(k for k, v in items.items() if test(v))


#: PostgreSQL's built-in roles that reach every table or the server's files and programs
#: (docs: "Predefined Roles"): a membership in one is as much access as a superuser's to data.
POWERFUL_ROLES = frozenset(
    {
        "pg_read_all_data", "pg_write_all_data", "pg_execute_server_program",
        "pg_read_server_files", "pg_write_server_files", "pg_database_owner",
    }
)  # fmt: skip


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
        (
            "powerful built-in roles",
            sorted(
                f"{name} ({', '.join(sorted(set(r.get('member_of') or []) & POWERFUL_ROLES))})"
                for name, r in roles.items()
                if set(r.get("member_of") or []) & POWERFUL_ROLES
            ),
        ),
        ("PUBLIC grants on", sorted(snapshot.get("public_grants", {}))),
        (
            "PUBLIC may run SECURITY DEFINER",
            _names(snapshot.get("definer_functions", {}), lambda f: bool(f.get("public_execute"))),
        ),
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


def say_findings(findings: list[Finding]) -> str:
    """``superuser: postgres, alice; any host: app@%`` (at most ``MESSAGE_NAMES`` names each)."""
    parts = []
    for what, names in findings:
        more = f" +{len(names) - MESSAGE_NAMES}" if len(names) > MESSAGE_NAMES else ""
        parts.append(f"{what}: {', '.join(names[:MESSAGE_NAMES])}{more}")
    return "; ".join(parts)


def _check_patterns(patterns: list[str] | None) -> None:
    """sshd's ``AuthorizedKeysFile`` tokens are ``%h``, ``%u``, ``%U`` and ``%%`` (sshd
    refuses any other, so a pattern with one reads nothing sshd would); an empty list, and a
    ``..`` or ``.`` component, are refused (sshd's default is had by leaving it out)."""
    if patterns is not None and not patterns:
        raise ValueError(
            "authorized_keys: [] names no file; leave authorized_keys out to use sshd's own"
        )
    for pattern in patterns or []:
        if any(part in (".", "..") for part in pattern.split("/")):
            raise ValueError(f"authorized_keys: {pattern!r}: write it without . or .. parts")
        if not pattern.strip():
            raise ValueError("authorized_keys: an empty pattern names no file")
        rest = pattern.replace("%%", "")
        for i, ch in enumerate(rest):
            if ch == "%" and rest[i + 1 : i + 2] not in ("h", "u", "U"):
                raise ValueError(
                    f"authorized_keys: {pattern!r} has {rest[i : i + 2]!r}; sshd knows %h (home),"
                    " %u (user), %U (uid) and %% only"
                )


def _check_sshd_config(path: str | None) -> None:
    """An absolute, plainly spelt path on the host (``config_path_problem``, as config
    drift's files)."""
    from crmmaint.engines.config_files import config_path_problem

    problem = None if path is None else config_path_problem(path)
    if problem:
        raise ValueError(f"sshd_config: {problem}")


def _sshd_note(snapshot: baselines.Snapshot) -> str | None:
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
) -> TaskResult:
    review = baselines.review(
        ctx.journal, "permissions", ctx.target, snapshot, run_id=ctx.run_id, check=ctx.check
    )
    counts = {section: len(items) for section, items in sorted(snapshot.items())}
    details = ctx.read_only_details(
        what=what,
        findings={w: names for w, names in findings},
        counts=counts,
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
            None,
            item_type=str,
            check=_check_patterns,
            help="hosts: authorized_keys file patterns in sshd's syntax (%h home, %u user;"
            " relative to the home); default: sshd's own AuthorizedKeysFile",
        ),
        "sshd_config": Param(
            str,
            None,
            check=_check_sshd_config,
            help="hosts: sshd's configuration file (absolute), if not the default",
        ),
        "timeout": Param(
            "duration", REVIEW_TIMEOUT, check=positive, help="seconds the review may take"
        ),
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
        authorized_keys=p["authorized_keys"],
        sshd_config=p["sshd_config"],
        timeout=ctx.time_left(float(p["timeout"])),
    )
    note = _sshd_note(snapshot)
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
        return _result(ctx, snapshot, postgresql_findings(snapshot), "roles")
    if engine.engine == "mysql":
        from crmmaint.engines.mysql_permissions import mysql_permissions

        snapshot = mysql_permissions(engine, timeout=timeout)  # type: ignore[arg-type]
        return _result(ctx, snapshot, mysql_findings(snapshot), "accounts")
    return TaskResult.skipped(
        f"{engine.engine} has no roles or grants: who can read {ctx.target.name} is the file's"
        " owner and mode on its host",
        details=ctx.read_only_details(),
    )
