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

from crmmaint.engines.host import HostOS, ToolMissing
from crmmaint.engines.packages import PackageUpdate, PendingUpdates
from crmmaint.errors import CrmMaintError
from crmmaint.results import Status, TaskResult, worst
from crmmaint.tasks.api import Estimate, Param, TaskContext, positive, task
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


def judge(
    pending: PendingUpdates,
    *,
    security_warn: int | None,
    security_critical: int | None,
    total_warn: int | None,
    security_age_warn: float | None = None,
    security_age_critical: float | None = None,
) -> list[tuple[Status, str]]:
    """The problems pending updates make, each with its status (none: all is well). The
    ``security_age_*`` thresholds (seconds) apply to the oldest pending security advisory,
    where the package manager dates it (dnf)."""
    problems: list[tuple[Status, str]] = []
    security, total = len(pending.security), len(pending.updates)
    pending_security = f"{plural(security, 'security update')} pending"
    if security_critical is not None and security >= security_critical:
        problems.append(
            (Status.FAILED, f"{pending_security} (security_critical {security_critical})")
        )
    elif security_warn is not None and security >= security_warn:
        problems.append((Status.WARNING, f"{pending_security} (security_warn {security_warn})"))
    age = pending.oldest_security_age_seconds
    if age is not None and security:
        old = f"oldest security advisory {plural(int(age // 86400), 'day')} old"
        if security_age_critical is not None and age >= security_age_critical:
            problems.append((Status.FAILED, old))
        elif security_age_warn is not None and age >= security_age_warn:
            problems.append((Status.WARNING, old))
    if total_warn is not None and total >= total_warn:
        problems.append(
            (Status.WARNING, f"{plural(total, 'update')} pending (total_warn {total_warn})")
        )
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
            int, 1, check=positive, help="warn from this many pending security updates"
        ),
        "security_critical": Param(
            int, None, check=positive, help="fail from this many pending security updates"
        ),
        "total_warn": Param(int, None, check=positive, help="warn from this many updates"),
        "security_age_warn": Param(
            "duration",
            None,
            help="warn when the oldest pending security advisory is this old (dnf dates them;"
            " apt does not)",
        ),
        "security_age_critical": Param(
            "duration", None, help="fail when the oldest pending security advisory is this old"
        ),
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
        "timeout": Param(
            "duration", PACKAGES_TIMEOUT, check=positive, help="seconds each command may take"
        ),
    },
)
def check(ctx: TaskContext) -> TaskResult:
    """Pending package and security updates, and whether the host needs a reboot."""
    p = ctx.params
    refresh = bool(p["refresh"]) and not ctx.check
    try:
        pending = HostOS(ctx.transport).package_updates(
            refresh=refresh, timeout=ctx.time_left(float(p["timeout"]))
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
    if pending.oldest_security_age_seconds is not None:
        metrics["oldest_security_age_seconds"] = pending.oldest_security_age_seconds
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
        security_age_warn=p["security_age_warn"],
        security_age_critical=p["security_age_critical"],
    )
    notes: list[str] = []
    if servers:
        notes.append(f"servers: {_first_names(servers)}")
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


#: What ``patches.apply`` installs: nothing (the default), security updates, or all updates.
APPLY_CHOICES = ("none", "security", "all")
#: Seconds an install may take (downloads, unpacking, maintainer scripts).
APPLY_TIMEOUT = 3600.0
#: The assumed time per package when judging whether an install fits the run's window
#: (seconds; a download, an unpack and its maintainer scripts on a server).
SECONDS_PER_PACKAGE = 10.0


def _some_globs(globs: list[str] | None) -> None:
    if globs is not None and not globs:
        raise ValueError("only: [] names no package; leave `only` out to choose every package")
    for glob in globs or []:
        if not glob.strip():
            raise ValueError("only: an empty glob matches no package")


def select_updates(
    pending: PendingUpdates,
    apply: str,
    *,
    only: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[PackageUpdate]:
    """The updates ``apply`` (none, security, all) chooses: upgrades of installed packages
    (new packages come in as their dependencies), limited to the ``only`` globs when given,
    minus the ``exclude`` globs. Held and phased updates are never chosen."""
    if apply == "none":
        return []
    chosen = [u for u in pending.updates if apply == "all" or u.security]
    if pending.manager == "apt":
        chosen = [u for u in chosen if u.current is not None]
    if only:
        chosen = [u for u in chosen if highlighted([u.name], only)]
    return [u for u in chosen if not highlighted([u.name], exclude)]


@task(
    "patches.apply",
    targets="hosts",
    params={
        "apply": Param(
            str,
            "none",
            choices=APPLY_CHOICES,
            help="what to install: none (the default: report only), security, or all",
        ),
        "only": Param(
            list,
            None,
            item_type=str,
            check=_some_globs,
            help="only packages matching these globs (leave out: every package)",
        ),
        "exclude": Param(list, [], item_type=str, help="never packages matching these globs"),
        "refresh": Param(bool, False, help="update the package lists first (never in check mode)"),
        "timeout": Param(
            "duration", APPLY_TIMEOUT, check=positive, help="seconds the install may take"
        ),
    },
)
def apply(ctx: TaskContext) -> TaskResult:
    """Install pending updates (security or all) when the step says so and the run is not in
    check mode; records what changed and whether a reboot is now needed. Never reboots."""
    p = ctx.params
    host = HostOS(ctx.transport)
    try:
        pending = host.package_updates(
            refresh=bool(p["refresh"]) and not ctx.check,
            timeout=ctx.time_left(float(p["timeout"])),
        )
    except ToolMissing as exc:
        return TaskResult.skipped(f"{ctx.target.name}: {exc}", details={"check_mode": ctx.check})
    except CrmMaintError as exc:
        return TaskResult.from_error(exc, ctx.target.name, details={"check_mode": ctx.check})
    chosen = select_updates(pending, p["apply"], only=p["only"] or (), exclude=p["exclude"])
    listed = [_package(u, set()) for u in chosen]
    details: dict[str, Any] = {
        "manager": pending.manager,
        "apply": p["apply"],
        "chosen": listed,
        "check_mode": ctx.check,
        "reboot_required": pending.reboot_required,
        "reboot_packages": pending.reboot_packages,
    }
    left = len(pending.updates) - len(chosen)
    if p["apply"] == "none":
        return TaskResult.ok(
            f"nothing applied (apply: none): {plural(len(pending.updates), 'update')} pending"
            f" ({len(pending.security)} security); set apply: security or all to install",
            details=details,
            metrics={
                "updates_pending": len(pending.updates),
                "reboot_required": int(pending.reboot_required),
            },
        )
    if not chosen:
        kind = "security " if p["apply"] == "security" else ""
        unfiltered = select_updates(pending, p["apply"])
        why = ""
        if unfiltered:
            why = f": none of the {plural(len(unfiltered), f'{kind}update')} matches only/exclude"
        return TaskResult.ok(
            f"no {kind}update to apply{why} ({plural(left, 'update')} left)",
            details=details,
            metrics={"updates_applied": 0, "reboot_required": int(pending.reboot_required)},
        )
    names = _names(chosen)
    if ctx.check:
        return TaskResult(
            Status.CHANGED,
            f"would install {plural(len(chosen), 'update')}: {names}",
            details=details,
        )
    fits = ctx.wont_fit(
        f"installing {plural(len(chosen), 'update')}",
        Estimate(
            len(chosen) * SECONDS_PER_PACKAGE,
            f"{SECONDS_PER_PACKAGE:g} s a package (assumed)",
        ),
    )
    if fits is not None:
        return TaskResult(Status.WARNING, fits, details=details)
    try:
        done = host.apply_updates(
            pending.manager, chosen, timeout=ctx.time_left(float(p["timeout"]))
        )
    except CrmMaintError as exc:
        return TaskResult.from_error(exc, ctx.target.name, details=details)
    changed = done.changed
    details.update(
        installed=[
            {"name": n, "before": old, "after": new} for n, (old, new) in sorted(changed.items())
        ],
        not_installed=sorted(u.name for u in chosen if u.name not in changed),
        reboot_required=done.reboot_required,
        reboot_packages=done.reboot_packages,
        seconds=round(done.seconds, 1),
    )
    metrics: dict[str, float] = {
        "updates_applied": len(changed),
        "reboot_required": int(done.reboot_required),
    }
    said = f"installed {plural(len(changed), 'update')}"
    if changed:
        said += f": {_names([u for u in chosen if u.name in changed])}"
    reboot = "; reboot required" if done.reboot_required else ""
    if done.failed is not None:
        missing = len(chosen) - len(changed)
        return TaskResult(
            Status.FAILED,
            f"install failed ({done.failed}); {said}, {missing} not{reboot}",
            details=details,
            metrics=metrics,
        )
    status = Status.CHANGED if changed else Status.OK
    if done.reboot_required:
        status = worst([status, Status.WARNING])
    return TaskResult(status, said + reboot, details=details, metrics=metrics)


def _names(updates: Sequence[PackageUpdate]) -> str:
    return _first_names([u.name for u in updates])


def _first_names(names: Sequence[str]) -> str:
    """The first ``MESSAGE_NAMES`` names, and how many more there are."""
    more = f" and {len(names) - MESSAGE_NAMES} more" if len(names) > MESSAGE_NAMES else ""
    return ", ".join(names[:MESSAGE_NAMES]) + more
