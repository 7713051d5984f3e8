"""SSH-only behaviour: host keys, unreachable hosts, connection reuse, pooling, fan-out."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from crmmaint.errors import ConnectError, HostKeyError
from crmmaint.transport import SSHPool, SSHTransport
from crmmaint.transport.ssh import env_line, remote_command


def _transport(host, **overrides) -> SSHTransport:
    return SSHTransport(host.name, host.address, **(host.ssh_options() | overrides))


def test_unknown_host_key_refused(sshd_hosts, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.touch()
    host = sshd_hosts[2]
    with _transport(host, known_hosts=str(empty)) as t, pytest.raises(HostKeyError) as info:
        t.run("true")
    assert host.name in str(info.value) and "ssh-keyscan" in str(info.value)


def test_changed_host_key_refused(sshd_factory):
    host = sshd_factory()
    with _transport(host) as t:
        assert t.run("true").ok
    host.rotate_host_key()
    with _transport(host, allow_unknown_host_key=True) as t, pytest.raises(HostKeyError) as info:
        t.run("true")
    assert "changed" in str(info.value) and "ssh-keygen" in str(info.value)
    host.restore_host_key()
    with _transport(host) as t:
        assert t.run("true").ok


def test_stopped_host_is_connect_error_within_timeout(sshd_factory):
    host = sshd_factory()
    host.stop()
    started = time.monotonic()
    with _transport(host, connect_timeout=2) as t, pytest.raises(ConnectError) as info:
        t.run("true")
    assert time.monotonic() - started < 2.5
    assert f"{host.address}:{host.port}" in str(info.value)
    host.start()
    with _transport(host) as t:
        assert t.run("true").ok


def test_one_connection_for_many_commands(sshd_hosts):
    with _transport(sshd_hosts[3]) as t:
        for i in range(20):
            assert t.run(["echo", str(i)]).text == f"{i}\n"
        assert t.connect_count == 1


def test_reconnects_after_connection_loss(sshd_hosts):
    with _transport(sshd_hosts[3]) as t:
        assert t.run("true").ok
        t._client.get_transport().close()  # simulate a dropped connection
        assert t.run("echo again").text == "again\n"
        assert t.connect_count == 2


def test_parallel_commands_on_six_hosts(sshd_hosts):
    with SSHPool() as pool:
        transports = [pool.get(h.name, h.address, **h.ssh_options()) for h in sshd_hosts]
        started = time.monotonic()
        with ThreadPoolExecutor(len(transports)) as executor:
            results = list(
                executor.map(lambda t: t.run("sleep 1; echo $SSH_CONNECTION"), transports)
            )
        assert time.monotonic() - started < 5
        for host, result in zip(sshd_hosts, results, strict=True):
            assert result.ok and f"{host.address} {host.port}" in result.text


def test_pool_reuses_and_checks_settings(sshd_hosts):
    host = sshd_hosts[4]
    pool = SSHPool()
    first = pool.get(host.name, host.address, **host.ssh_options())
    assert pool.get(host.name, host.address, **host.ssh_options()) is first
    with pytest.raises(ValueError, match="other settings"):
        pool.get(host.name, host.address, **(host.ssh_options() | {"connect_timeout": 3}))
    assert first.run("true").ok
    pool.close_all()
    assert len(pool) == 0


@pytest.mark.skipif(shutil.which("sudo") is None, reason="sudo not installed")
def test_become_sudo(sshd_hosts):
    with _transport(sshd_hosts[5], become="sudo") as t:
        assert t.run("id -u", env={"X": "1"}).text.strip() == "0"


def test_remote_command_keeps_secrets_off_the_command_line():
    line = env_line({"PGPASSWORD": "hunter2 'x'\ny"})
    command = remote_command(["pg_dump", "crm"], env=True, become="sudo")
    assert "hunter2" not in command and "sudo -n --" in command
    assert line.count(b"\n") == 1
    with pytest.raises(ValueError):
        env_line({"BAD NAME": "x"})
