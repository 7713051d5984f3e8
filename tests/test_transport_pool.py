"""TransportPool: one transport per host for a run or a command, chosen by connection, all closed."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from crmmaint.inventory import Host
from crmmaint.transport import LocalTransport, SSHPool, SSHTarget, SSHTransport
from crmmaint.transport.pool import TransportPool, default_transport_factory


class FakeTransport:
    def __init__(self, host: str, fail_close: bool = False) -> None:
        self.host = host
        self.closed = False
        self.fail_close = fail_close

    def close(self) -> None:
        self.closed = True
        if self.fail_close:
            raise OSError("socket gone")


def test_one_transport_per_host_made_on_first_use_and_closed():
    made: list[FakeTransport] = []

    def factory(host: Host) -> FakeTransport:
        made.append(FakeTransport(host.name))
        return made[-1]

    with TransportPool(factory) as transports:  # type: ignore[arg-type]
        assert made == [] and len(transports) == 0
        first = transports.get(Host("a"))
        assert transports.get(Host("a")) is first and transports(Host("a")) is first
        transports(Host("b"))
        assert [t.host for t in made] == ["a", "b"] and len(transports) == 2
    assert all(t.closed for t in made) and len(transports) == 0


def test_concurrent_requests_for_one_host_make_one_transport_and_others_do_not_wait():
    calls: list[str] = []
    slow_started = threading.Event()

    def factory(host: Host) -> FakeTransport:
        calls.append(host.name)
        if host.name == "slow":
            slow_started.set()
            time.sleep(0.5)  # a slow connect to one host
        return FakeTransport(host.name)

    transports = TransportPool(factory)  # type: ignore[arg-type]
    with ThreadPoolExecutor(8) as pool:
        slow = [pool.submit(transports.get, Host("slow")) for _ in range(4)]
        assert slow_started.wait(5)
        started = time.monotonic()
        assert transports.get(Host("fast")).host == "fast"
        assert time.monotonic() - started < 0.4
        assert len({id(f.result()) for f in slow}) == 1
    assert sorted(calls) == ["fast", "slow"]
    transports.close_all()


def test_a_failing_close_is_logged_and_the_rest_still_closed(caplog):
    made = {name: FakeTransport(name, fail_close=name == "a") for name in ("a", "b")}
    transports = TransportPool(lambda host: made[host.name])  # type: ignore[arg-type, return-value]
    transports.get(Host("a"))
    transports.get(Host("b"))
    with caplog.at_level(logging.WARNING, logger="crmmaint.transport.pool"):
        transports.close_all()
    assert made["a"].closed and made["b"].closed
    assert "closing the transport of a failed" in caplog.text


def test_default_factory_picks_local_or_ssh_without_connecting():
    ssh_pool = SSHPool()
    factory = default_transport_factory(ssh_pool)
    local = factory(Host("runner", connection="local"))
    assert isinstance(local, LocalTransport) and local.host == "runner"
    host = Host("db1", address="10.0.0.5", port=2222, user="crm", become="sudo")
    remote = factory(host)
    assert isinstance(remote, SSHTransport) and remote.connect_count == 0
    assert remote.target == SSHTarget.from_host(host)
    assert factory(host) is remote and len(ssh_pool) == 1


def test_default_factory_refuses_an_invalid_become():
    with TransportPool() as transports, pytest.raises(ValueError, match="become"):
        transports.get(Host("db1", become="su"))


def test_pool_runs_commands_locally_and_over_ssh(sshd_host):
    ssh = Host(
        sshd_host.name, connection="ssh", address=sshd_host.address, **sshd_host.ssh_options()
    )
    with TransportPool() as transports:
        assert transports.get(Host("runner", connection="local")).run("echo here").text == "here\n"
        remote = transports.get(ssh)
        assert remote.run("echo there").text == "there\n"
        assert remote.run("true").ok and remote.connect_count == 1  # type: ignore[attr-defined]
    assert remote._client is None  # type: ignore[attr-defined]  # closed with the pool
