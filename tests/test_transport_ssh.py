"""SSH-only behaviour: host keys, unreachable hosts, connection reuse, pooling, fan-out."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


BECOME_USER = "crmbecome"


@pytest.fixture(scope="session")
def become_user(sshd_hosts):
    """An unprivileged login user with passwordless sudo, authorised with the fixture's key."""
    if shutil.which("sudo") is None or os.geteuid() != 0:
        pytest.fail("become tests need sudo and root: `make test` installs sudo")
    if subprocess.run(["id", BECOME_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", BECOME_USER], check=True)
    # '*' (not the locked '!') so sshd without PAM lets key logins in.
    subprocess.run(["usermod", "-p", "*", BECOME_USER], check=True)
    home = Path(f"/home/{BECOME_USER}")
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    public = Path(sshd_hosts[5].identity_file + ".pub").read_text()
    (ssh_dir / "authorized_keys").write_text(public)
    shutil.chown(ssh_dir, BECOME_USER, BECOME_USER)
    shutil.chown(ssh_dir / "authorized_keys", BECOME_USER, BECOME_USER)
    sudoers = Path(f"/etc/sudoers.d/{BECOME_USER}")
    sudoers.write_text(f"{BECOME_USER} ALL=(ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    return BECOME_USER


def test_become_sudo(sshd_hosts, become_user):
    host = sshd_hosts[5]
    with _transport(host, user=become_user) as plain:
        assert plain.run("id -u").text.strip() != "0"
    with _transport(host, user=become_user, become="sudo") as t:
        assert t.run("id -u", env={"X": "1"}).text.strip() == "0"
        assert t.run("cat", stdin=b"payload over stdin").text == "payload over stdin"
        assert t.run(["sh", "-c", 'printf %s "$X"'], env={"X": "secret"}).text == "secret"


def test_remote_command_keeps_secrets_off_the_command_line():
    line = env_line({"PGPASSWORD": "hunter2 'x'\ny"})
    command = remote_command(["pg_dump", "crm"], env=True, become="sudo")
    assert "hunter2" not in command and "sudo -n --" in command
    assert line.count(b"\n") == 1
    with pytest.raises(ValueError):
        env_line({"BAD NAME": "x"})
