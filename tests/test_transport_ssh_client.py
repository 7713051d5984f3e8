"""SSHTarget, and connect()/connect_client against real sshd: host-key rules and connection errors."""

from __future__ import annotations

import time

import pytest

from crmmaint.errors import ConnectError, HostKeyError
from crmmaint.inventory import Host
from crmmaint.repository.backends import open_backend
from crmmaint.transport.ssh import SSHPool, SSHTransport
from crmmaint.transport.ssh_client import SSHTarget, connect, connect_client


def test_connects_with_known_key(sshd_host):
    client = connect_client(sshd_host.address, label=sshd_host.name, **sshd_host.ssh_options())
    try:
        _, out, _ = client.exec_command("echo hi")
        assert out.read() == b"hi\n"
    finally:
        client.close()


def test_unknown_key_refused(sshd_host, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.touch()
    options = sshd_host.ssh_options() | {"known_hosts": str(empty)}
    with pytest.raises(HostKeyError) as info:
        connect_client(sshd_host.address, label=sshd_host.name, **options)
    message = str(info.value)
    assert sshd_host.name in message
    assert f"ssh-keyscan -p {sshd_host.port} {sshd_host.address}" in message
    assert "SHA256:" in message


def test_unknown_key_allowed_by_opt_in(sshd_host, tmp_path):
    options = sshd_host.ssh_options() | {"known_hosts": str(tmp_path / "missing")}
    client = connect_client(sshd_host.address, allow_unknown_host_key=True, **options)
    try:
        _, out, _ = client.exec_command("echo opted-in")
        assert out.read() == b"opted-in\n"  # connected and authenticated, not just constructed
    finally:
        client.close()


def test_changed_key_refused_even_with_opt_in(sshd_factory):
    host = sshd_factory()
    host.rotate_host_key()
    for allow in (False, True):
        with pytest.raises(HostKeyError, match=r"changed.*man-in-the-middle.*ssh-keygen"):
            connect_client(
                host.address, label=host.name, allow_unknown_host_key=allow, **host.ssh_options()
            )


def test_stopped_host_is_connect_error(sshd_factory):
    host = sshd_factory()
    host.stop()
    started = time.monotonic()
    with pytest.raises(ConnectError, match=f"{host.address}:{host.port}"):
        connect_client(host.address, connect_timeout=2, **host.ssh_options())
    assert time.monotonic() - started < 2.5


def test_wrong_identity_is_connect_error(sshd_host, tmp_path):
    from sshd_fixture import write_ed25519_key

    other = tmp_path / "other_key"
    write_ed25519_key(other)
    options = sshd_host.ssh_options() | {"identity_file": str(other)}
    with pytest.raises(ConnectError, match="authentication as root failed"):
        connect_client(sshd_host.address, label=sshd_host.name, **options)


# --- SSHTarget: the connection arguments, written once ---------------------------------------


def test_target_from_inventory_host():
    host = Host(
        "db1",
        address="10.0.0.5",
        port=2222,
        user="crm",
        identity_file="~/.ssh/crm",
        known_hosts="/etc/crm/known_hosts",
        become="sudo",
        allow_unknown_host_key=True,
        connect_timeout=3.0,
    )
    assert SSHTarget.from_host(host) == SSHTarget(
        "db1", "10.0.0.5", 2222, "crm", "~/.ssh/crm", "/etc/crm/known_hosts", 3.0, "sudo", True
    )
    assert SSHTarget.from_host(host).where == "db1 (10.0.0.5:2222)"


def test_target_refuses_unknown_become():
    with pytest.raises(ValueError, match="become must be 'sudo'"):
        SSHTarget("db1", "10.0.0.5", become="su")
    with pytest.raises(ValueError, match="become must be 'sudo'"):
        SSHTransport("db1", "10.0.0.5", become="doas")


def test_transport_pool_and_sftp_backend_share_the_target():
    target = SSHTarget("app1", "10.0.0.11", 22, "crm", connect_timeout=4.0)
    assert SSHTransport.from_target(target).target == target
    assert SSHTransport("app1", "10.0.0.11", user="crm", connect_timeout=4.0).target == target
    with SSHPool() as pool:
        assert pool.transport(target) is pool.get(
            "app1", "10.0.0.11", 22, "crm", connect_timeout=4.0
        )
        with pytest.raises(ValueError, match="already pooled"):
            pool.transport(SSHTarget("app1", "10.0.0.12"))
    backend = open_backend(
        "sftp://backup@10.0.0.5:2200/srv/repo", known_hosts="/k", connect_timeout=7
    )
    assert backend.target == SSHTarget(  # type: ignore[attr-defined]
        "repository sftp://backup@10.0.0.5:2200/srv/repo",
        "10.0.0.5",
        2200,
        "backup",
        known_hosts="/k",
        connect_timeout=7,
    )


def test_connect_takes_a_target(sshd_host):
    target = SSHTarget(sshd_host.name, sshd_host.address, **sshd_host.ssh_options())
    client = connect(target)
    try:
        _, out, _ = client.exec_command("echo target")
        assert out.read() == b"target\n"
    finally:
        client.close()
