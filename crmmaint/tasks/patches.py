"""Patch checks: pending package and security updates per host, and whether it needs a reboot.

The host adapter asks apt (a simulated ``dist-upgrade``) or dnf what an upgrade would install
(``HostOS.package_updates``); this module decides what that means: security updates past
``security_warn`` warn, past ``security_critical`` fail, a pending reboot warns, and the
packages of the estate's servers (databases, caches, web servers, sshd) are named first.
``patches.check`` only reads and runs the same in check mode; it leaves the package lists as
they are unless ``refresh: true`` (never in check mode).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from typing import Any

from crmmaint.engines.host import PROBE_TIMEOUT, HostOS, ToolMissing
from crmmaint.engines.packages import PackageUpdate, PendingUpdates
from crmmaint.errors import CrmMaintError
from crmmaint.results import Status, TaskResult, worst
from crmmaint.tasks.api import Param, TaskContext, task
from crmmaint.units import format_elapsed, plural

log = logging.getLogger(__name__)

#: The packages of the servers a CRM estate runs (name globs, apt and dnf spellings).
SERVER_PACKAGES = (
    "postgresql*", "mariadb*", "mysql*", "redis*", "nginx*", "apache2*", "httpd*",
    "openssh-server",
)  # fmt: skip

#: Seconds the package commands may take (apt's simulation reads every list; dnf is slower).
PACKAGES_TIMEOUT = 300.0

#: Packages named in the message, at most.
MESSAGE_NAMES = 5


def highlighted(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The names that match any of the glob ``patterns``, in their order."""
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _positive(value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"expected a count of at least 1, got {value}")


def judge(
    pending: PendingUpdates,
    *,
    security_warn: int | None,
    security_critical: int | None,
    total_warn: int | None,
) -> list[tuple[Status, str]]:
    """The problems pending updates make, each with its status (none: all is well)."""
    problems: list[tuple[Status, str]] = []
    security, total = len(pending.security), len(pending.updates)
    if security_critical is not None and security >= security_critical:
        problems.append((Status.FAILED, f"{plural(security, 'security update')} pending"))
    elif security_warn is not None and security >= security_warn:
        problems.append((Status.WARNING, f"{plural(security, 'security update')} pending"))
    if total_warn is not None and total >= total_warn:
        problems.append((Status.WARNING, f"{plural(total, 'update')} pending"))
    if pending.reboot_required:
        why = f" (for {', '.join(pending.reboot_packages)})" if pending.reboot_packages else ""
        problems.append((Status.WARNING, f"reboot required{why}"))
    return problems


def _package(update: PackageUpdate, servers: set[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": update.name,
        "current": update.current,
        "candidate": update.candidate,
        "origin": update.origin,
        "security": update.security,
        "server": update.name in servers,
    }
    if update.severity is not None:
        entry["severity"] = update.severity
    return entry


@task(
    "patches.check",
    targets="hosts",
    params={
        "security_warn": Param(
            int, 1, check=_positive, help="warn from this many pending security updates"
        ),
        "security_critical": Param(
            int, None, check=_positive, help="fail from this many pending security updates"
        ),
        "total_warn": Param(int, None, check=_positive, help="warn from this many updates"),
        "refresh": Param(
            bool,
            False,
            help="update the package lists first (apt-get update / dnf makecache; root and"
            " network needed; never in check mode). Off: the lists are as fresh as the host's"
            " own updates make them, and the result says how old they are",
        ),
        "highlight": Param(
            list, list(SERVER_PACKAGES), item_type=str, help="package name globs named first"
        ),
        "timeout": Param("duration", PACKAGES_TIMEOUT, help="seconds each command may take"),
    },
)
def check(ctx: TaskContext) -> TaskResult:
    """Pending package and security updates, and whether the host needs a reboot."""
    p = ctx.params
    refresh = bool(p["refresh"]) and not ctx.check
    try:
        pending = HostOS(ctx.transport).package_updates(
            refresh=refresh, timeout=ctx.time_left(float(p["timeout"] or PROBE_TIMEOUT))
        )
    except ToolMissing as exc:
        return TaskResult.skipped(f"{ctx.target.name}: {exc}", details=ctx.read_only_details())
    except CrmMaintError as exc:
        return TaskResult.from_error(exc, ctx.target.name, details=ctx.read_only_details())

    names = [u.name for u in pending.updates]
    servers = highlighted(names, p["highlight"])
    server_set = set(servers)
    metrics: dict[str, float] = {
        "updates_pending": len(pending.updates),
        "security_updates": len(pending.security),
        "reboot_required": int(pending.reboot_required),
        "server_updates": len(servers),
        "updates_held": len(pending.held),
        "updates_deferred": len(pending.deferred),
    }
    if pending.lists_age_seconds is not None:
        metrics["lists_age_seconds"] = pending.lists_age_seconds
    # Server packages first, then security updates, then the rest (each in the tool's order).
    ordered = sorted(pending.updates, key=lambda u: (u.name not in server_set, not u.security))
    details = ctx.read_only_details(
        manager=pending.manager,
        packages=[_package(u, server_set) for u in ordered],
        highlighted=servers,
        held=pending.held,
        deferred=pending.deferred,
        obsoleting=pending.obsoleting,
        reboot_packages=pending.reboot_packages,
        refreshed=refresh,
        refresh_skipped_in_check_mode=bool(p["refresh"]) and ctx.check,
    )

    problems = judge(
        pending,
        security_warn=p["security_warn"],
        security_critical=p["security_critical"],
        total_warn=p["total_warn"],
    )
    notes: list[str] = []
    if servers:
        more = f" and {len(servers) - MESSAGE_NAMES} more" if len(servers) > MESSAGE_NAMES else ""
        notes.append(f"servers: {', '.join(servers[:MESSAGE_NAMES])}{more}")
    if pending.held:
        notes.append(f"{len(pending.held)} kept back")
    if pending.deferred:
        notes.append(f"{len(pending.deferred)} deferred by phasing")
    if pending.lists_age_seconds is not None:
        notes.append(f"package lists {format_elapsed(pending.lists_age_seconds)} old")
    if not problems:
        summary = f"{plural(len(pending.updates), 'update')} pending"
        if pending.updates:
            summary += f" ({len(pending.security)} security)"
        return TaskResult.ok("; ".join([summary, *notes]), metrics=metrics, details=details)
    status = worst([s for s, _ in problems])
    total = f"{plural(len(pending.updates), 'update')} in all"
    message = "; ".join([*(m for _, m in problems), total, *notes])
    return TaskResult(status, message, metrics=metrics, details=details)
