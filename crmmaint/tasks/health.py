"""Health checks: hosts (load, memory, disks), services, HTTP endpoints and databases.

Every probe runs on the target's host through its transport (Linux commands, each with a
timeout), so a check behaves the same locally and over SSH. All checks are read-only and run
unchanged in check mode.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from crmmaint.errors import CrmMaintError
from crmmaint.results import Status, TaskResult, worst
from crmmaint.tasks.api import Param, TaskContext, task
from crmmaint.transport.base import Command, CommandResult

log = logging.getLogger(__name__)

#: Seconds any single probe command may take.
PROBE_TIMEOUT = 30.0

#: Filesystems that hold no persistent data; their usage says nothing about capacity.
PSEUDO_FILESYSTEMS = frozenset(
    {
        "tmpfs", "devtmpfs", "udev", "proc", "sysfs", "devpts", "cgroup", "cgroup2", "none",
        "shm", "efivarfs", "securityfs", "debugfs", "tracefs", "mqueue", "hugetlbfs", "pstore",
        "bpf", "configfs", "fusectl", "binfmt_misc", "autofs", "ramfs", "nsfs", "overlay-tmp",
    }
)  # fmt: skip
PSEUDO_MOUNT_ROOTS = ("/proc", "/sys", "/dev", "/run", "/snap")


# --- shared probes (also used by capacity.disk) ----------------------------------------------


@dataclass(frozen=True)
class DiskUsage:
    """One mounted filesystem as ``df -P -k`` reports it, in bytes."""

    filesystem: str
    mount: str
    size_bytes: int
    used_bytes: int
    available_bytes: int

    @property
    def used_pct(self) -> float:
        """Used share of what non-root users can fill (df's "Capacity" column, unrounded)."""
        usable = self.used_bytes + self.available_bytes
        return 100.0 * self.used_bytes / usable if usable else 0.0


def parse_df(text: str) -> list[DiskUsage]:
    """Parse ``df -P -k`` output, skipping pseudo filesystems and repeated (bind) mounts."""
    disks: list[DiskUsage] = []
    seen: set[tuple[str, int, int]] = set()
    for line in text.splitlines()[1:]:
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[1].isdigit():
            continue
        fs, blocks, used, avail, _cap, mount = parts
        if fs in PSEUDO_FILESYSTEMS or int(blocks) == 0:
            continue
        if any(mount == r or mount.startswith(r + "/") for r in PSEUDO_MOUNT_ROOTS):
            continue
        key = (fs, int(blocks), int(used))
        if key in seen:  # a bind mount of a filesystem already listed
            continue
        seen.add(key)
        disks.append(DiskUsage(fs, mount, int(blocks) * 1024, int(used) * 1024, int(avail) * 1024))
    return disks


def disk_usage(ctx: TaskContext, mounts: list[str] | None = None) -> list[DiskUsage]:
    """Filesystems of the target's host (only ``mounts`` when given); raises ``ProbeError``."""
    res = probe(ctx, ["df", "-P", "-k"], what="df")
    disks = parse_df(res.text)
    if mounts:
        missing = sorted(set(mounts) - {d.mount for d in disks})
        if missing:
            raise ProbeError(f"no mounted filesystem at {', '.join(missing)}")
        disks = [d for d in disks if d.mount in mounts]
    return disks


class ProbeError(CrmMaintError):
    """A probe command failed; the task reports it as a failed result."""


def probe(
    ctx: TaskContext, command: Command, *, what: str, timeout: float = PROBE_TIMEOUT
) -> CommandResult:
    """Run a read-only probe on the target's host, bounded by the step's timeout too; a
    non-zero exit raises ``ProbeError``."""
    res = ctx.transport.run(command, timeout=ctx.time_left(timeout))
    if not res.ok:
        raise ProbeError(
            f"{what} failed (exit {res.exit_status}): {res.stderr_tail() or 'no output'}"
        )
    return res


def read_only_details(ctx: TaskContext, **details: Any) -> dict[str, Any]:
    """Details every health result carries: the check is read-only and ran in check mode too."""
    return {"read_only": True, "check_mode": ctx.check, **details}


# --- health.host -----------------------------------------------------------------------------


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """``/proc/loadavg`` -> (load1, load5, load15)."""
    one, five, fifteen = text.split()[:3]
    return float(one), float(five), float(fifteen)


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` -> {field: bytes}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            factor = 1024 if len(fields) > 1 and fields[1] == "kB" else 1
            out[name.strip()] = int(fields[0]) * factor
    return out


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
    try:
        load = parse_loadavg(
            probe(ctx, ["cat", "/proc/loadavg"], what="reading /proc/loadavg").text
        )
        cpus = int(probe(ctx, ["getconf", "_NPROCESSORS_ONLN"], what="getconf").text.strip() or 1)
        mem = parse_meminfo(probe(ctx, ["cat", "/proc/meminfo"], what="reading /proc/meminfo").text)
        disks = disk_usage(ctx, p["mounts"])
    except CrmMaintError as exc:
        return TaskResult.failed(
            f"{ctx.target.name}: {exc.message}", details=read_only_details(ctx)
        )

    cpus = max(cpus, 1)
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

    details = read_only_details(
        ctx,
        disks=[
            {"mount": d.mount, "filesystem": d.filesystem, "size_bytes": d.size_bytes,
             "used_pct": round(d.used_pct, 2)}
            for d in disks
        ],
    )  # fmt: skip
    if not problems:
        return TaskResult.ok(
            f"load {load[1]:.2f}/{cpus} cores, memory {metrics.get('mem_available_pct', 0):.0f}%"
            f" available, {len(disks)} filesystems below {p['disk_warn']:.0f}%",
            metrics=metrics,
            details=details,
        )
    status = worst([s for s, _ in problems])
    return TaskResult(status, "; ".join(m for _, m in problems), metrics=metrics, details=details)


# --- health.service --------------------------------------------------------------------------

#: Reports one ``systemctl is-active`` state per unit, or exits 127 when systemd is not running.
_SYSTEMD_SCRIPT = (
    "command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ] || exit 127; "
    'for u; do printf "%s\\n" "$(systemctl is-active -- "$u" 2>/dev/null || true)"; done'
)
#: Prints one process count per name (``pgrep -x``), or exits 127 when pgrep is missing.
_PROCESS_SCRIPT = (
    'command -v pgrep >/dev/null 2>&1 || exit 127; for p; do pgrep -x -- "$p" | wc -l; done'
)
#: Connects to $1:$2 within $3 seconds with bash's /dev/tcp (else ``nc -z``); the address and
#: port are arguments, never interpolated into the script.
_TCP_SCRIPT = (
    "if command -v bash >/dev/null 2>&1; then"
    ' exec timeout "$3" bash -c \'exec 3<>"/dev/tcp/$1/$2"\' bash "$1" "$2"; fi; '
    'command -v nc >/dev/null 2>&1 || exit 127; exec nc -z -w "$3" "$1" "$2"'
)
#: Runs "$@" if its program exists on the host, else exits 127 (as over SSH, also locally).
_IF_INSTALLED = 'command -v "$1" >/dev/null 2>&1 || exit 127; exec "$@"'


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
            details=read_only_details(ctx),
        )

    checks: list[dict[str, Any]] = []
    try:
        if units:
            checks += _check_units(ctx, units, bool(p["systemd_optional"]))
        if names:
            checks += _check_processes(ctx, names)
        for spec in ports:
            checks.append(_check_tcp(ctx, spec, float(p["tcp_timeout"])))
    except CrmMaintError as exc:
        return TaskResult.failed(
            f"{ctx.target.name}: {exc.message}", details=read_only_details(ctx)
        )

    down = [c for c in checks if c["status"] == "down"]
    metrics = {"checks": len(checks), "down": len(down)}
    details = read_only_details(ctx, checks=checks)
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


def _check_units(ctx: TaskContext, units: list[str], optional: bool) -> list[dict[str, Any]]:
    res = ctx.transport.run(
        ["sh", "-c", _SYSTEMD_SCRIPT, "sh", *units], timeout=ctx.time_left(PROBE_TIMEOUT)
    )
    if res.exit_status == 127:
        status = "skipped" if optional else "down"
        return [
            {"kind": "systemd", "name": u, "status": status, "state": "systemctl not available"}
            for u in units
        ]
    if not res.ok:
        raise ProbeError(f"systemctl failed (exit {res.exit_status}): {res.stderr_tail()}")
    states = res.text.splitlines() + [""] * len(units)
    return [
        {
            "kind": "systemd",
            "name": u,
            "status": "up" if state == "active" else "down",
            "state": state or "unknown",
        }
        for u, state in zip(units, states, strict=False)
    ]


def _check_processes(ctx: TaskContext, names: list[str]) -> list[dict[str, Any]]:
    res = ctx.transport.run(
        ["sh", "-c", _PROCESS_SCRIPT, "sh", *names], timeout=ctx.time_left(PROBE_TIMEOUT)
    )
    if res.exit_status == 127:
        raise ProbeError("pgrep not available; install procps")
    if not res.ok:
        raise ProbeError(f"pgrep failed (exit {res.exit_status}): {res.stderr_tail()}")
    counts = [int(line.strip() or 0) for line in res.text.splitlines()] + [0] * len(names)
    return [
        {
            "kind": "process",
            "name": n,
            "status": "up" if count else "down",
            "state": f"{count} running" if count else "not running",
        }
        for n, count in zip(names, counts, strict=False)
    ]


def _check_tcp(ctx: TaskContext, spec: str, timeout: float) -> dict[str, Any]:
    try:
        addr, port = split_host_port(spec)
    except ValueError as exc:
        return {"kind": "tcp", "name": spec, "status": "down", "state": str(exc)}
    seconds = f"{max(timeout, 0.1):g}"
    started = time.monotonic()
    res = ctx.transport.run(
        ["sh", "-c", _TCP_SCRIPT, "sh", addr, str(port), seconds],
        timeout=ctx.time_left(timeout + PROBE_TIMEOUT),
    )
    if res.exit_status == 127:
        raise ProbeError("neither bash nor nc available for TCP checks")
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    if res.ok:
        return {"kind": "tcp", "name": spec, "status": "up", "state": f"open ({elapsed_ms} ms)"}
    state = "timed out" if res.exit_status == 124 else "refused or unreachable"
    return {"kind": "tcp", "name": spec, "status": "down", "state": state}


# --- health.http -----------------------------------------------------------------------------


def expand_url(url: str, ctx: TaskContext) -> str:
    """Fill ``{host}`` (inventory name) and ``{address}`` so one step can check every host."""
    h = ctx.target.host
    return url.replace("{host}", h.name).replace("{address}", h.address)


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
            details=read_only_details(ctx),
        )
    url = expand_url(str(raw), ctx)
    if not url.startswith(("http://", "https://")):
        return TaskResult.failed(f"url must start with http:// or https://, got {url!r}")
    timeout = ctx.time_left(p["timeout"]) or p["timeout"]
    try:
        if p["from"] == "runner":
            status, latency = _http_from_runner(url, timeout, p["follow_redirects"])
        else:
            status, latency = _http_from_host(ctx, url, timeout, p["follow_redirects"])
    except ProbeError as exc:
        return TaskResult.failed(f"{url}: {exc.message}", details=read_only_details(ctx, url=url))

    latency_ms = round(latency * 1000, 1)
    metrics = {"status": status, "latency_ms": latency_ms}
    details = read_only_details(ctx, url=url, made_from=p["from"])
    if status != p["expect_status"]:
        return TaskResult.failed(
            f"{url} answered {status}, expected {p['expect_status']}",
            metrics=metrics,
            details=details,
        )
    if p["latency_warn"] is not None and latency >= p["latency_warn"]:
        return TaskResult.warning(
            f"{url} answered {status} in {latency_ms:.0f} ms"
            f" (slower than {p['latency_warn'] * 1000:.0f} ms)",
            metrics=metrics,
            details=details,
        )
    return TaskResult.ok(
        f"{url} answered {status} in {latency_ms:.0f} ms", metrics=metrics, details=details
    )


def _http_from_host(ctx: TaskContext, url: str, timeout: float, follow: bool) -> tuple[int, float]:
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"]
    cmd += ["--max-time", f"{timeout:g}"] + (["-L"] if follow else []) + [url]
    res = ctx.transport.run(
        ["sh", "-c", _IF_INSTALLED, "sh", *cmd], timeout=ctx.time_left(timeout + PROBE_TIMEOUT)
    )
    if res.exit_status == 127:
        raise ProbeError(
            f"curl not available on {ctx.target.host.name}; install it or use from: runner"
        )
    if res.exit_status == 28:
        raise ProbeError(f"no answer within {timeout:g}s")
    if not res.ok:
        raise ProbeError(f"curl exit {res.exit_status}: {res.stderr_tail() or 'request failed'}")
    code, _, seconds = res.text.strip().partition(" ")
    return int(code), float(seconds or 0)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _http_from_runner(url: str, timeout: float, follow: bool) -> tuple[int, float]:
    opener = urllib.request.build_opener(*([] if follow else [_NoRedirect()]))
    started = time.monotonic()
    try:
        with opener.open(url, timeout=timeout) as resp:
            resp.read(1 << 16)
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ProbeError(f"request failed: {reason}") from exc
    return status, time.monotonic() - started


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
        return TaskResult.failed(exc.message, details=read_only_details(ctx))

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

    details = read_only_details(ctx, engine=ctx.target.obj.engine, version=facts.get("version"))
    summary = f"{ctx.target.obj.engine} {facts.get('version') or ''}".rstrip()
    summary += f", query {latency * 1000:.0f} ms"
    if problems:
        return TaskResult.warning("; ".join(problems), metrics=metrics, details=details)
    return TaskResult.ok(summary, metrics=metrics, details=details)
