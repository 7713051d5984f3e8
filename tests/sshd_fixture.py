"""Real OpenSSH ``sshd`` processes on 127.0.0.x for tests (a pytest plugin).

``sshd_hosts``: six session-wide hosts on 127.0.0.2 .. 127.0.0.7, each with its own ed25519 host
key, one shared client key and one shared known_hosts file listing them all.
``sshd_factory``: dedicated hosts (127.0.0.20 and up) for destructive tests, torn down after.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SSHD = "/usr/sbin/sshd"
SESSION_HOST_COUNT = 6
READY_TIMEOUT = 10.0

_CONFIG = """\
ListenAddress {address}:{port}
HostKey {host_key_file}
PidFile {workdir}/sshd.pid
AuthorizedKeysFile {authorized_keys} .ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel ERROR
MaxStartups 100:30:200
MaxSessions 50
Subsystem sftp internal-sftp
# bash sources ~/.bashrc for ssh commands only at SHLVL < 2; a developer's .bashrc (pyenv init)
# would otherwise add 0.2 s to every command.
SetEnv SHLVL=1
"""


def write_ed25519_key(path: Path) -> str:
    """Write a new private key (OpenSSH format, 0600) and its .pub; returns the public line."""
    key = Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = public.decode()
    path.with_name(path.name + ".pub").write_text(line + "\n")
    return line


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


@dataclass
class SshdHost:
    """One running sshd: what a test needs to connect, and switches to break it."""

    name: str
    address: str
    port: int
    user: str
    identity_file: str
    known_hosts: str
    host_key_file: str
    process: subprocess.Popen | None = None
    workdir: Path = field(default=Path("."), repr=False)
    authorized_keys: str = field(default="", repr=False)
    _original_host_key: bytes | None = field(default=None, repr=False)
    _original_public: bytes = field(default=b"", repr=False)

    @property
    def known_hosts_line(self) -> str:
        public = Path(self.host_key_file + ".pub").read_text().split()
        return f"[{self.address}]:{self.port} {public[0]} {public[1]}"

    def ssh_options(self) -> dict:
        """Keyword arguments for ``connect_client`` / ``SSHTransport`` (after the address)."""
        return {
            "port": self.port,
            "user": self.user,
            "identity_file": self.identity_file,
            "known_hosts": self.known_hosts,
        }

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start sshd (again) on the same address, port and host key; wait until it answers."""
        if self.is_running():
            return
        config = self.workdir / "sshd_config"
        config.write_text(
            _CONFIG.format(
                address=self.address,
                port=self.port,
                host_key_file=self.host_key_file,
                workdir=self.workdir,
                authorized_keys=self.authorized_keys,
            )
        )
        log = (self.workdir / "sshd.log").open("ab")
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        self._wait_ready()

    def stop(self) -> None:
        """Stop the listener: new connections are refused (open sessions end on their own)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def rotate_host_key(self) -> None:
        """Give the host a new key (known_hosts keeps the old one): clients see a changed key."""
        if self._original_host_key is None:
            self._original_host_key = Path(self.host_key_file).read_bytes()
            self._original_public = Path(self.host_key_file + ".pub").read_bytes()
        self.stop()
        write_ed25519_key(Path(self.host_key_file))
        self.start()

    def restore_host_key(self) -> None:
        """Undo ``rotate_host_key``."""
        if self._original_host_key is None:
            return
        self.stop()
        Path(self.host_key_file).write_bytes(self._original_host_key)
        Path(self.host_key_file + ".pub").write_bytes(self._original_public)
        self._original_host_key = None
        self.start()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                break
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.address, self.port), timeout=1) as sock,
            ):
                if sock.recv(8).startswith(b"SSH-"):
                    return
            time.sleep(0.05)
        log = (self.workdir / "sshd.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(
            f"sshd for {self.name} on {self.address}:{self.port} did not start: {log}"
        )


@dataclass
class _ClientKeys:
    user: str
    identity_file: str
    authorized_keys: str


def _require_sshd() -> None:
    if not os.access(SSHD, os.X_OK):
        pytest.fail(
            f"{SSHD} not found: the SSH tests need a real OpenSSH server "
            "(apt-get install openssh-server, or run `make test`, which installs it)",
            pytrace=False,
        )
    # sshd refuses to start without its privilege separation directory (Debian layout).
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)


def _client_keys(directory: Path) -> _ClientKeys:
    directory.mkdir(parents=True, exist_ok=True)
    identity = directory / "id_ed25519"
    public = write_ed25519_key(identity)
    authorized = directory / "authorized_keys"
    authorized.write_text(public + "\n")
    return _ClientKeys(pwd.getpwuid(os.getuid()).pw_name, str(identity), str(authorized))


def _make_host(
    name: str, address: str, workdir: Path, keys: _ClientKeys, known_hosts: Path
) -> SshdHost:
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = workdir / "ssh_host_ed25519_key"
    write_ed25519_key(host_key)
    host = SshdHost(
        name=name,
        address=address,
        port=0,
        user=keys.user,
        identity_file=keys.identity_file,
        known_hosts=str(known_hosts),
        host_key_file=str(host_key),
        workdir=workdir,
        authorized_keys=keys.authorized_keys,
    )
    for attempt in range(5):
        host.port = _free_port(address)
        try:
            host.start()
            break
        except RuntimeError:
            if attempt == 4:
                raise
    with known_hosts.open("a") as f:
        f.write(host.known_hosts_line + "\n")
    return host


@pytest.fixture(scope="session")
def sshd_client_keys(tmp_path_factory) -> _ClientKeys:
    _require_sshd()
    return _client_keys(tmp_path_factory.mktemp("ssh-client"))


@pytest.fixture(scope="session")
def sshd_hosts(tmp_path_factory, sshd_client_keys) -> Iterator[list[SshdHost]]:
    """Six running sshd hosts, ``sshd1`` .. ``sshd6`` on 127.0.0.2 .. 127.0.0.7."""
    base = tmp_path_factory.mktemp("sshd")
    known_hosts = base / "known_hosts"
    known_hosts.touch()
    hosts: list[SshdHost] = []
    try:
        for i in range(SESSION_HOST_COUNT):
            hosts.append(
                _make_host(
                    f"sshd{i + 1}",
                    f"127.0.0.{i + 2}",
                    base / f"sshd{i + 1}",
                    sshd_client_keys,
                    known_hosts,
                )
            )
        yield hosts
    finally:
        for host in hosts:
            host.stop()


@pytest.fixture
def sshd_host(sshd_hosts) -> Iterator[SshdHost]:
    """The first session host, started again if an earlier test stopped it."""
    host = sshd_hosts[0]
    host.start()
    yield host


_factory_counter = itertools.count()


@pytest.fixture
def sshd_factory(tmp_path, sshd_client_keys) -> Iterator[Callable[[], SshdHost]]:
    """Start dedicated sshd hosts (own known_hosts file each) that a test may break."""
    made: list[SshdHost] = []

    def make() -> SshdHost:
        n = next(_factory_counter)
        name = f"sshd-extra{n}"
        workdir = tmp_path / name
        workdir.mkdir()
        known_hosts = workdir / "known_hosts"
        known_hosts.touch()
        host = _make_host(name, f"127.0.0.{20 + n % 200}", workdir, sshd_client_keys, known_hosts)
        made.append(host)
        return host

    try:
        yield make
    finally:
        for host in made:
            host.stop()
