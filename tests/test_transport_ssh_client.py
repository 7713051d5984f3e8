"""connect_client against real sshd: host-key rules and connection errors."""

from __future__ import annotations

import time

import pytest

from crmmaint.errors import ConnectError, HostKeyError
from crmmaint.transport.ssh_client import connect_client


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
