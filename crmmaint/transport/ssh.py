"""Run commands on an SSH host: one pooled paramiko connection, one channel per command.

Every command runs as ``sh -c SCRIPT`` under a tiny wrapper (see ``remote_command``) that
reports its process group on stderr, so a timeout kills the whole remote pipeline rather than
only closing the channel, and that reads ``env`` from the first line of stdin, so values never
appear in a remote process listing. See docs/transports.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import secrets
import shlex
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from typing import Any

import paramiko

from crmmaint.errors import TransportError
from crmmaint.transport.base import Command, ProcessPipes, Transport, command_text, short
from crmmaint.transport.ssh_client import SSHTarget, connect

log = logging.getLogger(__name__)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Reads one line of `export` statements from stdin (byte by byte: sh's read never reads ahead
# on a pipe), then leaves the rest of stdin to the command.
_ENV_PRELUDE = (
    "__crm_nl='\n'; IFS= read -r __crm_env || exit 125; "
    'eval "$__crm_env"; unset __crm_env __crm_nl; '
)
_KILL_WAIT = 5.0


def env_line(env: Mapping[str, str]) -> bytes:
    """``env`` as one line of shell ``export`` statements (newlines in values survive)."""
    parts = []
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
        if "\0" in value:
            raise ValueError(f"environment variable {name} contains a NUL byte")
        quoted = "'" + value.replace("'", "'\\''").replace("\n", "'\"$__crm_nl\"'") + "'"
        parts.append(f"export {name}={quoted}")
    return ("; ".join(parts) + "\n").encode()


def remote_command(command: Command, *, env: bool = False, become: str | None = None) -> str:
    """The line sent to the remote login shell for ``command``."""
    script = command_text(command)
    if env:
        script = _ENV_PRELUDE + script
    inner = f"sh -c {shlex.quote(script)}"
    if become == "sudo":
        inner = f"sudo -n -- {inner}"
    # sshd makes the login shell a session leader; exec keeps its pid, so $$ is the group.
    return f"echo $$ >&2; exec {inner}"


class _ChannelPipes(ProcessPipes):
    def __init__(self, owner: SSHTransport, channel: paramiko.Channel) -> None:
        self._owner = owner
        self._channel = channel
        self._pgid: int | None = None
        self._pgid_known = threading.Event()
        self._header = b""

    def write_stdin(self, data: bytes) -> None:
        self._channel.sendall(data)

    def close_stdin(self) -> None:
        self._channel.shutdown_write()

    def read_stdout(self, size: int) -> bytes:
        return self._channel.recv(size)

    def read_stderr(self, size: int) -> bytes:
        while not self._pgid_known.is_set():
            data = self._channel.recv_stderr(size)
            self._header += data
            if data and b"\n" not in self._header and len(self._header) < 32:
                continue
            line, newline, rest = self._header.partition(b"\n")
            if newline and line.strip().isdigit():
                self._pgid = int(line)
            else:
                rest = self._header  # not our header: pass it through untouched
            self._pgid_known.set()
            if rest or not data:
                return rest
        return self._channel.recv_stderr(size)

    def wait_exit(self, timeout: float | None) -> int | None:
        if not self._channel.status_event.wait(timeout):
            return None
        status = self._channel.exit_status
        return status  # -1: no exit status (killed by a signal, or the channel was closed)

    def kill(self) -> None:
        if not self._channel.exit_status_ready():
            self._pgid_known.wait(2.0)
            if self._pgid is not None:
                self._owner._kill_group(self._pgid)
        self._close_channel()

    def release(self) -> None:
        self._close_channel()

    def _close_channel(self) -> None:
        """Close the channel; a connection already gone (paramiko's ``EOFError`` when a
        timer's kill comes after the run closed it) took the channel with it."""
        try:
            self._channel.close()
        except (EOFError, OSError, paramiko.SSHException) as exc:
            log.debug("%s: the channel went with its connection (%r)", self._owner.host, exc)


class SSHTransport(Transport):
    """Commands on one SSH host over a single lazily opened, thread-safe connection.

    ``SSHTransport(host, address, port, user, **options)`` takes ``SSHTarget``'s fields (and
    raises its ``ValueError`` for a bad ``become``); ``SSHTransport.from_target(target)`` takes
    the target itself. Nothing connects until the first command.
    """

    def __init__(
        self, host: str, address: str, port: int = 22, user: str | None = None, **options: Any
    ) -> None:
        #: How to reach the host; the connection arguments live only there.
        self.target = SSHTarget(host, address, port, user, **options)
        self.host = host
        #: How many SSH connections this transport opened (1 for a healthy run).
        self.connect_count = 0
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_target(cls, target: SSHTarget) -> SSHTransport:
        """The transport of ``target`` (not connected yet)."""
        return cls(**asdict(target))

    @property
    def address(self) -> str:
        return self.target.address

    @property
    def port(self) -> int:
        return self.target.port

    @property
    def user(self) -> str | None:
        return self.target.user

    @property
    def become(self) -> str | None:
        return self.target.become

    @property
    def connect_timeout(self) -> float:
        return self.target.connect_timeout

    def __repr__(self) -> str:
        return f"SSHTransport({self.host!r}, {self.address}:{self.port})"

    def _connection(self) -> paramiko.SSHClient:
        with self._lock:
            if self._client is not None:
                transport = self._client.get_transport()
                if transport is not None and transport.is_active():
                    return self._client
                log.info("%s: SSH connection lost, reconnecting", self.host)
                self._client.close()
                self._client = None
            self._client = connect(self.target)
            self.connect_count += 1
            return self._client

    def _open_channel(self) -> paramiko.Channel:
        for attempt in (1, 2):
            transport = self._connection().get_transport()
            try:
                assert transport is not None
                return transport.open_session(timeout=self.connect_timeout)
            except (paramiko.SSHException, OSError, EOFError, AssertionError) as exc:
                if attempt == 2 or (transport is not None and transport.is_active()):
                    raise TransportError(
                        f"{self.host}: cannot open an SSH channel to {self.address}:{self.port}: "
                        f"{exc}",
                        hint="check the host's sshd (MaxSessions, load) and its logs",
                    ) from exc
        raise AssertionError("unreachable")

    def _spawn(self, command: Command, env: Mapping[str, str] | None) -> ProcessPipes:
        line = env_line(env) if env else b""
        channel = self._open_channel()
        try:
            channel.exec_command(remote_command(command, env=bool(line), become=self.become))
            if line:
                channel.sendall(line)
        except (paramiko.SSHException, OSError) as exc:
            channel.close()
            raise TransportError(
                f"{self.host}: cannot start {short(command_text(command))!r}: {exc}",
                hint="the SSH connection may have dropped; the next command reconnects",
            ) from exc
        return _ChannelPipes(self, channel)

    def _kill_group(self, pgid: int) -> None:
        """Kill a command's remote process group through a second channel."""
        kill = f"kill -KILL -- -{pgid} 2>/dev/null || kill -KILL {pgid}"
        if self.become == "sudo":
            kill = f"sudo -n -- sh -c {shlex.quote(kill)}"
        try:
            channel = self._open_channel()
            try:
                channel.exec_command(kill)
                channel.status_event.wait(_KILL_WAIT)
            finally:
                channel.close()
        except (TransportError, paramiko.SSHException, OSError, EOFError) as exc:
            # EOFError: paramiko's, when the connection closed meanwhile (a timer's kill
            # after its run ended): the group went with the connection's session.
            log.warning("%s: could not kill remote process group %d: %s", self.host, pgid, exc)

    @contextlib.contextmanager
    def _sftp(self) -> Iterator[paramiko.SFTPClient]:
        channel = self._open_channel()
        try:
            channel.invoke_subsystem("sftp")
            sftp = paramiko.SFTPClient(channel)
        except (paramiko.SSHException, OSError) as exc:
            channel.close()
            raise TransportError(
                f"{self.host}: SFTP is not available on {self.address}:{self.port}: {exc}",
                hint="enable the sftp Subsystem in the host's sshd_config",
            ) from exc
        try:
            yield sftp
        finally:
            sftp.close()

    def put(self, local_path: str, remote_path: str, *, mode: int | None = None) -> None:
        directory, name = posixpath.split(remote_path)
        tmp = posixpath.join(directory, f".{name}.{secrets.token_hex(4)}.crmmaint-tmp")
        with self._sftp() as sftp:
            try:
                sftp.put(local_path, tmp, confirm=True)
                if mode is not None:
                    sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, remote_path)
            except (OSError, paramiko.SSHException) as exc:
                with contextlib.suppress(OSError, paramiko.SSHException):
                    sftp.remove(tmp)
                raise TransportError(
                    f"{self.host}: cannot copy {local_path} to {remote_path}: {exc}",
                    hint=f"check that the local file exists and {directory or '.'} is writable "
                    f"by {self.user or 'the SSH user'} on the host",
                ) from exc

    def get(self, remote_path: str, local_path: str) -> None:
        directory = os.path.dirname(os.path.abspath(local_path))
        with self._sftp() as sftp:
            try:
                fd, tmp = tempfile.mkstemp(
                    prefix=f".{os.path.basename(local_path)}.", dir=directory
                )
                os.close(fd)
                try:
                    sftp.get(remote_path, tmp)
                    os.replace(tmp, local_path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
            except (OSError, paramiko.SSHException) as exc:
                raise TransportError(
                    f"{self.host}: cannot copy {remote_path} to {local_path}: {exc}",
                    hint="check that the remote file exists and is readable by the SSH user",
                ) from exc

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class SSHPool:
    """One ``SSHTransport`` per host name, so a run opens one connection per host.

    Use as a context manager or call ``close_all()`` at the end of the run.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[SSHTarget, SSHTransport]] = {}

    def transport(self, target: SSHTarget) -> SSHTransport:
        """The pooled transport for ``target.host``, made (not connected) on first request.

        Raises ``ValueError`` when that host name is already pooled with other settings.
        """
        with self._lock:
            entry = self._entries.get(target.host)
            if entry is not None:
                if entry[0] != target:
                    raise ValueError(
                        f"host {target.host!r} is already pooled with other settings: {entry[0]}"
                    )
                return entry[1]
            transport = SSHTransport.from_target(target)
            self._entries[target.host] = (target, transport)
            return transport

    def get(
        self, host: str, address: str, port: int = 22, user: str | None = None, **options: Any
    ) -> SSHTransport:
        """``transport()`` for loose arguments (``SSHTarget``'s fields, as ``SSHTransport``)."""
        return self.transport(SSHTarget(host, address, port, user, **options))

    def __len__(self) -> int:
        return len(self._entries)

    def close_all(self) -> None:
        """Close every pooled connection and forget them."""
        with self._lock:
            entries, self._entries = list(self._entries.values()), {}
        for _, transport in entries:
            transport.close()

    def __enter__(self) -> SSHPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()


#: The pool a run uses unless it brings its own; the runner closes it when the run ends.
default_pool = SSHPool()
