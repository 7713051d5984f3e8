"""health.* tasks on this machine through the real LocalTransport, and their pure parsers.

``make_ctx`` (a TaskContext built by hand: real transport, tmp journal) is shared with the
logs, capacity and demo task tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crmmaint.inventory import Database, Host, Inventory
from crmmaint.journal import Journal
from crmmaint.results import Status, TaskResult
from crmmaint.tasks.api import REGISTRY, TaskContext, load_task_modules
from crmmaint.tasks.health import split_host_port
from crmmaint.transport import SSHTransport
from crmmaint.transport.base import Transport
from crmmaint.transport.local import LocalTransport

load_task_modules()


def make_ctx(
    task_name: str,
    params: dict[str, Any] | None = None,
    *,
    inventory: Inventory | None = None,
    kind: str = "hosts",
    name: str = "local",
    journal: Journal | None = None,
    check: bool = False,
    transport: Transport | None = None,
) -> TaskContext:
    """A context as the runner builds it: validated params, a LocalTransport per host (or the
    given transport, for SSH)."""
    if inventory is None:
        inventory = Inventory(path="/nonexistent/inventory.yml")
        inventory.hosts["local"] = Host(name="local", connection="local")
    spec = REGISTRY[task_name]
    return TaskContext(
        target=inventory.target(kind, name),
        inventory=inventory,
        params=spec.validate_params(params or {}),
        check=check,
        journal=journal,
        run_id=None,
        step="test",
        transport_for=lambda host: transport or LocalTransport(host.name),
    )


def run_task(task_name: str, params: dict[str, Any] | None = None, **kw: Any) -> TaskResult:
    ctx = make_ctx(task_name, params, **kw)
    return REGISTRY[task_name].func(ctx)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "journal.sqlite") as j:
        yield j


# --- parsers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("db1:5432", ("db1", 5432)), ("[::1]:6379", ("::1", 6379)), ("10.0.0.1:1", ("10.0.0.1", 1))],
)
def test_split_host_port(spec: str, expected: tuple[str, int]) -> None:
    assert split_host_port(spec) == expected


@pytest.mark.parametrize("spec", ["db1", ":5432", "db1:0", "db1:70000", "db1:http"])
def test_split_host_port_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        split_host_port(spec)


# --- health.host -----------------------------------------------------------------------------

RELAXED = {"disk_warn": "100%", "disk_crit": "100%", "load_warn": 1000.0, "memory_warn": "0%"}


def test_host_ok_reports_load_memory_and_disks() -> None:
    result = run_task("health.host", RELAXED)
    assert result.status is Status.OK, result.message
    for metric in ("load1", "load5", "load15", "cpus", "mem_available_pct", "disk_used_pct:/"):
        assert metric in result.metrics
    assert 0 < result.metrics["mem_available_pct"] <= 100
    assert result.details["read_only"] is True
    assert any(d["mount"] == "/" for d in result.details["disks"])


def test_host_warns_naming_the_mount() -> None:
    result = run_task("health.host", {**RELAXED, "disk_warn": "0%", "mounts": ["/"]})
    assert result.status is Status.WARNING
    assert "disk / " in result.message


def test_host_fails_past_disk_crit() -> None:
    result = run_task("health.host", {**RELAXED, "disk_crit": "0%", "mounts": ["/"]})
    assert result.status is Status.FAILED
    assert "disk / " in result.message and "full" in result.message


def test_host_warns_on_load_and_memory() -> None:
    result = run_task("health.host", {**RELAXED, "load_warn": 0.0, "memory_warn": "100%"})
    assert result.status is Status.WARNING
    assert "load" in result.message and "memory" in result.message


def test_host_unknown_mount_fails() -> None:
    result = run_task("health.host", {"mounts": ["/no/such/mount"]})
    assert result.status is Status.FAILED
    assert "/no/such/mount" in result.message


def test_host_runs_in_check_mode() -> None:
    result = run_task("health.host", RELAXED, check=True)
    assert result.status is Status.OK
    assert result.details["check_mode"] is True


# --- health.service --------------------------------------------------------------------------


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[str]:
    """A running process with a distinctive name (a copy of sleep) for pgrep -x."""
    exe = shutil.which("sleep")
    assert exe is not None
    name = "crmtest-sleeps"  # comm holds at most 15 characters
    shutil.copy(exe, tmp_path / name)
    proc = subprocess.Popen([str(tmp_path / name), "30"])
    try:
        yield name
    finally:
        proc.kill()
        proc.wait()


def test_service_ok_for_process_and_open_port(sleeper: str, listening_port: int) -> None:
    result = run_task(
        "health.service", {"process": [sleeper], "tcp": [f"127.0.0.1:{listening_port}"]}
    )
    assert result.status is Status.OK, result.message
    assert result.metrics == {"checks": 2, "down": 0}


def test_service_fails_naming_what_is_down(sleeper: str, closed_port: int) -> None:
    result = run_task(
        "health.service",
        {"process": [sleeper, "crmtest-absent"], "tcp": [f"127.0.0.1:{closed_port}"]},
    )
    assert result.status is Status.FAILED
    assert "process crmtest-absent" in result.message
    assert f"tcp 127.0.0.1:{closed_port}" in result.message
    assert sleeper not in result.message


def test_service_address_and_port_are_not_interpolated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = run_task("health.service", {"tcp": [f"127.0.0.1;touch {marker}:22"]})
    assert result.status is Status.FAILED
    assert not marker.exists()


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="systemd is running here")
def test_service_without_systemd() -> None:
    result = run_task("health.service", {"systemd": ["crm-web.service"]})
    assert result.status is Status.FAILED
    assert "systemctl not available" in result.message
    optional = run_task(
        "health.service", {"systemd": ["crm-web.service"], "systemd_optional": True}
    )
    assert optional.status is Status.OK
    assert "not checked" in optional.message


def test_service_takes_checks_from_host_vars(listening_port: int) -> None:
    inv = Inventory(path="/nonexistent/inventory.yml")
    inv.hosts["local"] = Host(
        name="local",
        connection="local",
        vars={"services": {"tcp": [f"127.0.0.1:{listening_port}"]}},
    )
    assert run_task("health.service", inventory=inv).status is Status.OK
    assert run_task("health.service").status is Status.SKIPPED


# --- health.http -----------------------------------------------------------------------------


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


@pytest.mark.parametrize("where", [pytest.param("target", marks=needs_curl), "runner"])
def test_http_ok_and_metrics(http_url: str, where: str) -> None:
    result = run_task("health.http", {"url": f"{http_url}/200", "from": where})
    assert result.status is Status.OK, result.message
    assert result.metrics["status"] == 200
    assert result.metrics["latency_ms"] >= 0


@pytest.mark.parametrize("where", [pytest.param("target", marks=needs_curl), "runner"])
def test_http_unexpected_status_fails(http_url: str, where: str) -> None:
    result = run_task("health.http", {"url": f"{http_url}/503", "from": where})
    assert result.status is Status.FAILED
    assert "503" in result.message
    expected = run_task(
        "health.http", {"url": f"{http_url}/503", "expect_status": 503, "from": where}
    )
    assert expected.status is Status.OK


@needs_curl
def test_http_slow_warns_and_unreachable_fails(http_url: str, closed_port: int) -> None:
    slow = run_task("health.http", {"url": f"{http_url}/200", "latency_warn": 0})
    assert slow.status is Status.WARNING
    down = run_task("health.http", {"url": f"http://127.0.0.1:{closed_port}/", "timeout": "5s"})
    assert down.status is Status.FAILED
    assert f"127.0.0.1:{closed_port}" in down.message


def test_http_fills_in_the_host_address(http_url: str) -> None:
    port = http_url.rsplit(":", 1)[1]
    result = run_task(
        "health.http",
        {"url": f"http://{{address}}:{port}/204", "from": "runner", "expect_status": 204},
    )
    assert result.status is Status.OK
    assert result.details["url"] == f"http://127.0.0.1:{port}/204"


def test_http_without_url_is_skipped() -> None:
    assert run_task("health.http").status is Status.SKIPPED


# --- health.database (real PostgreSQL and MariaDB) -------------------------------------------


def _db_inventory(db: Database) -> Inventory:
    inv = Inventory(path="/nonexistent/inventory.yml")
    inv.hosts["local"] = Host(name="local", connection="local")
    inv.databases[db.name] = db
    return inv


POSTGRES = Database(
    name="pg", engine="postgresql", host="local", dbname="postgres", address="127.0.0.1",
    port=5432, user="postgres",
)  # fmt: skip
MARIADB = Database(
    name="maria", engine="mysql", host="local", dbname="mysql", address="127.0.0.1", port=3306,
    user="root",
)  # fmt: skip


@pytest.mark.parametrize("db", [POSTGRES, MARIADB], ids=["postgresql", "mariadb"])
def test_database_ok_and_warning(db: Database) -> None:
    inv = _db_inventory(db)
    result = run_task("health.database", inventory=inv, kind="database", name=db.name)
    assert result.status is Status.OK, result.message
    for metric in ("latency_ms", "connections", "max_connections", "size_bytes"):
        assert metric in result.metrics
    busy = run_task(
        "health.database", {"connections_warn": "0%"}, inventory=inv, kind="database", name=db.name
    )
    assert busy.status is Status.WARNING
    assert "connections in use" in busy.message


@pytest.mark.parametrize("db", [POSTGRES, MARIADB], ids=["postgresql", "mariadb"])
def test_database_unreachable_fails_with_engine_error(db: Database, closed_port: int) -> None:
    down = Database(**{**db.__dict__, "port": closed_port})
    result = run_task(
        "health.database", inventory=_db_inventory(down), kind="database", name=db.name
    )
    assert result.status is Status.FAILED
    assert f"{db.engine} database" in result.message


# --- over SSH (real sshd on 127.0.0.x) -------------------------------------------------------


@pytest.fixture
def ssh_inventory(sshd_hosts: list[Any]) -> Iterator[tuple[Inventory, Transport]]:
    host = sshd_hosts[0]
    inv = Inventory(path="/nonexistent/inventory.yml")
    inv.hosts["app1"] = Host(name="app1", address=host.address, port=host.port, connection="ssh")
    transport = SSHTransport("app1", host.address, **host.ssh_options())
    try:
        yield inv, transport
    finally:
        transport.close()


def test_host_and_service_checks_over_ssh(
    ssh_inventory: tuple[Inventory, Transport], listening_port: int, closed_port: int
) -> None:
    inv, transport = ssh_inventory
    kw: dict[str, Any] = {"inventory": inv, "name": "app1", "transport": transport}
    assert run_task("health.host", RELAXED, **kw).status is Status.OK
    up = run_task("health.service", {"tcp": [f"127.0.0.1:{listening_port}"]}, **kw)
    assert up.status is Status.OK, up.message
    down = run_task("health.service", {"process": ["crmtest-absent"]}, **kw)
    assert down.status is Status.FAILED and "crmtest-absent" in down.message
