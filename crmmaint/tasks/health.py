"""Health checks: hosts (load, memory, disks), services, HTTP endpoints and databases.

Every probe runs on the target's host through the host adapter (``engines/host.py``, Linux
commands over the host's transport, each with a timeout), so a check behaves the same locally
and over SSH. This module decides what is healthy; the adapter knows how to ask. All checks are
read-only and run unchanged in check mode.
"""

from __future__ import annotations

import logging
from typing import Any

from crmmaint.engines import http_probe
from crmmaint.engines.host import PROBE_TIMEOUT, HostError, HostOS, ToolMissing
from crmmaint.engines.http_probe import ProbeError
from crmmaint.errors import CrmMaintError
from crmmaint.results import Status, TaskResult, worst
from crmmaint.tasks.api import Param, TaskContext, task
from crmmaint.units import plural

log = logging.getLogger(__name__)


# --- health.host -----------------------------------------------------------------------------


@task(
    "health.host",
    targets="hosts",
    params={
        "disk_warn": Param("percent", 80.0, help="warn when a filesystem is this full"),
        "disk_crit": Param("percent", 90.0, help="fail when a filesystem is this full"),
        "load_warn": Param(float, 2.0, help="warn when the 5-minute load per core reaches this"),
        "memory_warn": Param("percent", 10.0, help="warn when available memory falls below this"),
        "mounts": Param(list, None, item_type=str, help="check only these mount points"),
    },
)
def host(ctx: TaskContext) -> TaskResult:
    """Load, available memory and free space of every real filesystem on a host."""
    p = ctx.params
    host_os = HostOS(ctx.transport)
    try:
        load = host_os.load_average(timeout=ctx.time_left(PROBE_TIMEOUT))
        cpus = host_os.cpu_count(timeout=ctx.time_left(PROBE_TIMEOUT))
        mem = host_os.memory(timeout=ctx.time_left(PROBE_TIMEOUT))
        disks = host_os.disks(p["mounts"], timeout=ctx.time_left(PROBE_TIMEOUT))
    except CrmMaintError as exc:
        return TaskResult.from_error(exc, ctx.target.name, details=ctx.read_only_details())

    metrics: dict[str, float] = {
        "load1": load[0],
        "load5": load[1],
        "load15": load[2],
        "cpus": cpus,
        "load5_per_core": round(load[1] / cpus, 3),
    }
    problems: list[tuple[Status, str]] = []
    if load[1] / cpus >= p["load_warn"]:
        problems.append(
            (Status.WARNING, f"load {load[1]:.2f} on {cpus} cores ({load[1] / cpus:.2f}/core)")
        )
    total, available = mem.get("MemTotal", 0), mem.get("MemAvailable", mem.get("MemFree", 0))
    if total:
        avail_pct = 100.0 * available / total
        metrics.update(
            mem_available_pct=round(avail_pct, 2),
            mem_total_bytes=total,
            mem_available_bytes=available,
        )
        if avail_pct < p["memory_warn"]:
            problems.append((Status.WARNING, f"memory {avail_pct:.1f}% available"))
    for d in disks:
        metrics[f"disk_used_pct:{d.mount}"] = round(d.used_pct, 2)
        metrics[f"disk_free_bytes:{d.mount}"] = d.available_bytes
        if d.used_pct >= p["disk_crit"]:
            problems.append((Status.FAILED, f"disk {d.mount} {d.used_pct:.0f}% full"))
        elif d.used_pct >= p["disk_warn"]:
            problems.append((Status.WARNING, f"disk {d.mount} {d.used_pct:.0f}% full"))

    details = ctx.read_only_details(
        disks=[
            {"mount": d.mount, "filesystem": d.filesystem, "size_bytes": d.size_bytes,
             "used_pct": round(d.used_pct, 2)}
            for d in disks
        ],
    )  # fmt: skip
    if not problems:
        return TaskResult.ok(
            f"load {load[1]:.2f}/{cpus} cores, memory {metrics.get('mem_available_pct', 0):.0f}%"
            f" available, {plural(len(disks), 'filesystem')} below {p['disk_warn']:.0f}%",
            metrics=metrics,
            details=details,
        )
    status = worst([s for s, _ in problems])
    return TaskResult(status, "; ".join(m for _, m in problems), metrics=metrics, details=details)


# --- health.service --------------------------------------------------------------------------


def split_host_port(spec: str) -> tuple[str, int]:
    """``"db1:5432"`` or ``"[::1]:5432"`` -> (host, port); ``ValueError`` otherwise."""
    host, sep, port = spec.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {spec!r}")
    return host, int(port)


@task(
    "health.service",
    targets="hosts",
    params={
        "systemd": Param(list, None, item_type=str, help="units that must be active"),
        "process": Param(list, None, item_type=str, help="process names that must run (pgrep -x)"),
        "tcp": Param(list, None, item_type=str, help="host:port that must accept connections"),
        "systemd_optional": Param(bool, False, help="skip unit checks where systemd is absent"),
        "tcp_timeout": Param("duration", 3.0, help="seconds to wait for each TCP connect"),
    },
)
def service(ctx: TaskContext) -> TaskResult:
    """Are the host's services up: systemd units active, processes running, ports open.

    Without parameters the checks come from the host's ``vars.services`` mapping.
    """
    p = dict(ctx.params)
    defaults = ctx.target.obj.vars.get("services") if hasattr(ctx.target.obj, "vars") else None
    if isinstance(defaults, dict) and not any(p[k] for k in ("systemd", "process", "tcp")):
        for key in ("systemd", "process", "tcp", "systemd_optional"):
            if defaults.get(key) is not None:
                p[key] = defaults[key]
    units, names, ports = p["systemd"] or [], p["process"] or [], p["tcp"] or []
    if not (units or names or ports):
        return TaskResult.skipped(
            "no services to check (give systemd/process/tcp, or set vars.services on the host)",
            details=ctx.read_only_details(),
        )

    checks: list[dict[str, Any]] = []
    host_os = HostOS(ctx.transport)
    try:
        if units:
            checks += _check_units(ctx, host_os, units, bool(p["systemd_optional"]))
        if names:
            checks += _check_processes(ctx, host_os, names)
        for spec in ports:
            checks.append(_check_tcp(ctx, host_os, spec, float(p["tcp_timeout"])))
    except CrmMaintError as exc:
        return TaskResult.from_error(exc, ctx.target.name, details=ctx.read_only_details())

    down = [c for c in checks if c["status"] == "down"]
    metrics = {"checks": len(checks), "down": len(down)}
    details = ctx.read_only_details(checks=checks)
    if down:
        return TaskResult.failed(
            "down: " + ", ".join(f"{c['kind']} {c['name']} ({c['state']})" for c in down),
            metrics=metrics,
            details=details,
        )
    up = [c for c in checks if c["status"] == "up"]
    message = f"{len(up)} up: " + ", ".join(f"{c['kind']} {c['name']}" for c in up)
    if skipped := [c for c in checks if c["status"] == "skipped"]:
        message += f"; {len(skipped)} not checked ({skipped[0]['state']})"
    return TaskResult.ok(message, metrics=metrics, details=details)


def _check_units(
    ctx: TaskContext, host_os: HostOS, units: list[str], optional: bool
) -> list[dict[str, Any]]:
    try:
        states = host_os.unit_states(units, timeout=ctx.time_left(PROBE_TIMEOUT))
    except ToolMissing:
        status = "skipped" if optional else "down"
        return [
            {"kind": "systemd", "name": u, "status": status, "state": "systemctl not available"}
            for u in units
        ]
    return [
        {
            "kind": "systemd",
            "name": u,
            "status": "up" if state == "active" else "down",
            "state": state or "unknown",
        }
        for u, state in zip(units, states, strict=True)
    ]


def _check_processes(ctx: TaskContext, host_os: HostOS, names: list[str]) -> list[dict[str, Any]]:
    counts = host_os.process_counts(names, timeout=ctx.time_left(PROBE_TIMEOUT))
    return [
        {
            "kind": "process",
            "name": n,
            "status": "up" if count else "down",
            "state": f"{count} running" if count else "not running",
        }
        for n, count in zip(names, counts, strict=True)
    ]


def _check_tcp(ctx: TaskContext, host_os: HostOS, spec: str, timeout: float) -> dict[str, Any]:
    try:
        addr, port = split_host_port(spec)
    except ValueError as exc:
        return {"kind": "tcp", "name": spec, "status": "down", "state": str(exc)}
    probe = host_os.tcp_probe(
        addr, port, connect_timeout=timeout, timeout=ctx.time_left(timeout + PROBE_TIMEOUT)
    )
    if probe.open:
        elapsed_ms = round(probe.seconds * 1000, 1)
        return {"kind": "tcp", "name": spec, "status": "up", "state": f"open ({elapsed_ms} ms)"}
    state = "timed out" if probe.timed_out else "refused or unreachable"
    return {"kind": "tcp", "name": spec, "status": "down", "state": state}


# --- health.http -----------------------------------------------------------------------------


def expand_url(url: str, ctx: TaskContext) -> str:
    """Fill ``{host}`` (inventory name) and ``{address}`` so one step can check every host."""
    return http_probe.expand_url(url, ctx.target.host)


@task(
    "health.http",
    targets="hosts",
    params={
        "url": Param(str, None, help="URL to request; {host} and {address} are filled in"),
        "expect_status": Param(int, 200, help="HTTP status that counts as healthy"),
        "timeout": Param("duration", 10.0, help="give up after this long"),
        "latency_warn": Param("duration", None, help="warn when the response takes longer"),
        "from": Param(str, "target", choices=("target", "runner"), help="where the request starts"),
        "follow_redirects": Param(bool, False, help="follow 3xx responses"),
    },
)
def http(ctx: TaskContext) -> TaskResult:
    """Does an HTTP endpoint answer with the expected status, fast enough.

    The request is made on the target host with curl, or here with ``from: runner``. Without
    ``url`` the host's ``vars.health_url`` is used.
    """
    p = ctx.params
    raw = p["url"] or getattr(ctx.target.obj, "vars", {}).get("health_url")
    if not raw:
        return TaskResult.skipped(
            "no url to check (give url, or set vars.health_url on the host)",
            details=ctx.read_only_details(),
        )
    url = expand_url(str(raw), ctx)
    # what messages, details and the journal show: no query string, no credentials
    shown = http_probe.shown_url(url)
    if (why := http_probe.url_problem(url)) is not None:
        return TaskResult.failed(why, retryable=False)
    timeout = ctx.time_left(p["timeout"]) or p["timeout"]
    try:
        if p["from"] == "runner":
            status, latency = http_probe.request_from_runner(url, timeout, p["follow_redirects"])
        else:
            status, latency = _http_from_host(ctx, url, timeout, p["follow_redirects"])
    except (HostError, ProbeError) as exc:
        failed = TaskResult.from_error(exc, shown, details=ctx.read_only_details(url=shown))
        failed.message = failed.message.replace(url, shown)
        return failed

    latency_ms = round(latency * 1000, 1)
    metrics = {"status": status, "latency_ms": latency_ms}
    details = ctx.read_only_details(url=shown, made_from=p["from"])
    if status != p["expect_status"]:
        return TaskResult.failed(
            f"{shown} answered {status}, expected {p['expect_status']}",
            metrics=metrics,
            details=details,
        )
    if p["latency_warn"] is not None and latency >= p["latency_warn"]:
        return TaskResult.warning(
            f"{shown} answered {status} in {latency_ms:.0f} ms"
            f" (slower than {p['latency_warn'] * 1000:.0f} ms)",
            metrics=metrics,
            details=details,
        )
    return TaskResult.ok(
        f"{shown} answered {status} in {latency_ms:.0f} ms", metrics=metrics, details=details
    )


def _http_from_host(ctx: TaskContext, url: str, timeout: float, follow: bool) -> tuple[int, float]:
    try:
        return HostOS(ctx.transport).http_status(
            url,
            max_time=timeout,
            follow_redirects=follow,
            timeout=ctx.time_left(timeout + PROBE_TIMEOUT),
        )
    except ToolMissing as exc:
        raise HostError(f"{exc.message}; install it or use from: runner") from exc


# --- health.database -------------------------------------------------------------------------


@task(
    "health.database",
    targets="database",
    params={
        "connections_warn": Param(
            "percent", 80.0, help="warn when this share of max connections is used"
        ),
        "latency_warn": Param(
            "duration", 1.0, help="warn when connect + trivial query takes longer"
        ),
    },
)
def database(ctx: TaskContext) -> TaskResult:
    """Can we connect and query; connections against the maximum; size."""
    from crmmaint.engines import engine_for

    p = ctx.params
    try:
        engine = engine_for(ctx.target.obj, ctx.transport)
        latency = engine.ping(timeout=ctx.time_left(PROBE_TIMEOUT) or PROBE_TIMEOUT)
        facts = engine.facts(timeout=ctx.time_left(PROBE_TIMEOUT) or PROBE_TIMEOUT)
    except CrmMaintError as exc:
        return TaskResult.from_error(exc, details=ctx.read_only_details())

    metrics: dict[str, float] = {"latency_ms": round(latency * 1000, 1)}
    problems: list[str] = []
    if facts.get("size_bytes") is not None:
        metrics["size_bytes"] = int(facts["size_bytes"])
    if facts.get("connections") is not None:
        metrics["connections"] = int(facts["connections"])
    if facts.get("uptime") is not None:
        metrics["uptime_s"] = int(facts["uptime"])
    # max_connections is a server-wide limit: compare it with the server's connections.
    connections = facts.get("server_connections", facts.get("connections"))
    limit = facts.get("max_connections")
    if connections is not None and limit:
        pct = 100.0 * connections / limit
        metrics.update(max_connections=int(limit), connections_pct=round(pct, 1))
        if pct >= p["connections_warn"]:
            problems.append(f"{connections} of {limit} connections in use ({pct:.0f}%)")
    if latency >= p["latency_warn"]:
        problems.append(f"query took {latency * 1000:.0f} ms")

    details = ctx.read_only_details(engine=ctx.target.obj.engine, version=facts.get("version"))
    summary = f"{ctx.target.obj.engine} {facts.get('version') or ''}".rstrip()
    summary += f", query {latency * 1000:.0f} ms"
    if problems:
        return TaskResult.warning("; ".join(problems), metrics=metrics, details=details)
    return TaskResult.ok(summary, metrics=metrics, details=details)
