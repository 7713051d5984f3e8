"""How to reach and trust an SSH server (``SSHTarget``), and the one ``connect()`` that opens it.

Shared by ``SSHTransport`` (commands on inventory hosts) and the SFTP storage backend: both
describe the server as an ``SSHTarget`` (``SSHTarget.from_host(inventory_host)`` or
``SSHTarget(label, address, port, user, **sftp_options)``) and open it with ``connect(target)``,
so the connection arguments are spelled out here only.

Host keys come from one known_hosts file (given, else ``~/.ssh/known_hosts``; ``[host]:port``
entries and hashed names work). An unknown key is refused unless the inventory opts in for that
host; a changed key is always refused. No SSH agent is used; default key files are tried only
when no identity file is given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paramiko

from crmmaint.errors import ConnectError, HostKeyError

if TYPE_CHECKING:
    from crmmaint.inventory import Host

log = logging.getLogger(__name__)

#: Seconds between SSH keepalive packets, so idle pooled connections survive NAT and firewalls.
KEEPALIVE_INTERVAL = 30


class _UnknownHostKey(Exception):
    """Raised by the reject policy, carrying the key the host offered."""

    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__(key.get_name())
        self.key = key


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise _UnknownHostKey(key)


class _AcceptUnknown(paramiko.MissingHostKeyPolicy):
    """Inventory opt-in: trust an unknown key for this connection only (never saved)."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        log.warning(
            "accepting unknown %s host key %s for %s (allow_unknown_host_key is set)",
            key.get_name(),
            key.fingerprint,
            hostname,
        )


@dataclass(frozen=True)
class SSHTarget:
    """Everything needed to reach, trust and use one SSH server; equal targets are one server.

    ``host``: the name every message and log line uses (an inventory host name, or
    ``"repository sftp://…"``); ``address``/``port``: where sshd listens; ``user``: the login
    (``None``: the local user name); ``identity_file``: the only private key offered (``None``:
    the default ``~/.ssh/id_*`` files); ``known_hosts``: the file the host key must be in
    (``None``: ``~/.ssh/known_hosts``); ``connect_timeout``: seconds for each of TCP connect,
    banner, key exchange and authentication, and for opening a channel;
    ``allow_unknown_host_key``: accept a key missing from known_hosts for this connection (a
    changed key is always refused); ``become``: ``"sudo"`` to run commands through ``sudo -n``
    (commands only, not SFTP), or ``None``.

    Raises ``ValueError`` when ``become`` is neither ``"sudo"`` nor ``None``.
    """

    host: str
    address: str
    port: int = 22
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    connect_timeout: float = 10.0
    become: str | None = None
    allow_unknown_host_key: bool = False

    def __post_init__(self) -> None:
        if self.become not in (None, "sudo"):
            raise ValueError(
                f"host {self.host}: become must be 'sudo' or unset, not {self.become!r}"
            )

    @classmethod
    def from_host(cls, host: Host) -> SSHTarget:
        """The target of an inventory host (``connection: ssh``), with its SSH settings."""
        return cls(
            host=host.name,
            address=host.address,
            port=host.port,
            user=host.user,
            identity_file=host.identity_file,
            known_hosts=host.known_hosts,
            connect_timeout=host.connect_timeout,
            become=host.become,
            allow_unknown_host_key=host.allow_unknown_host_key,
        )

    @property
    def where(self) -> str:
        """``name (address:port)``, as messages name the server."""
        return f"{self.host} ({self.address}:{self.port})"


def _key_file_type(key: paramiko.PKey) -> str:
    name = key.get_name()
    return "ecdsa" if name.startswith("ecdsa") else name.removeprefix("ssh-")


def known_hosts_name(address: str, port: int) -> str:
    """The name OpenSSH writes in known_hosts for this address and port."""
    return address if port == 22 else f"[{address}]:{port}"


def keyscan(address: str, port: int) -> str:
    """The ``ssh-keyscan`` command that prints the host keys of ``address:port`` as known_hosts
    lines (``-p`` only for a port other than 22, as docs/transports.md shows it)."""
    return f"ssh-keyscan {address}" if port == 22 else f"ssh-keyscan -p {port} {address}"


def connect_client(
    address: str,
    port: int = 22,
    user: str | None = None,
    *,
    label: str | None = None,
    **options: Any,
) -> paramiko.SSHClient:
    """``connect()`` for callers that hold loose arguments: ``options`` are ``SSHTarget``'s
    keyword fields, ``label`` its ``host`` (default: the address)."""
    return connect(SSHTarget(label or address, address, port, user, **options))


def connect(target: SSHTarget) -> paramiko.SSHClient:
    """Connect to ``target`` and authenticate; the client is the caller's to close.

    The host key must be in the target's known_hosts file (unless ``allow_unknown_host_key``;
    a changed key is always refused). The connection sends keepalives every
    ``KEEPALIVE_INTERVAL`` seconds. Raises ``HostKeyError`` (unknown or changed key, unreadable
    known_hosts) or ``ConnectError`` (unreadable identity file, refused, timed out, failed
    handshake or authentication), each naming the server and saying what to check.
    """
    address, port, user = target.address, target.port, target.user
    connect_timeout = target.connect_timeout
    where = target.where
    known_hosts = os.path.expanduser(target.known_hosts or "~/.ssh/known_hosts")
    identity_file = target.identity_file
    if identity_file is not None:
        identity_file = os.path.expanduser(identity_file)
        if not os.access(identity_file, os.R_OK):
            raise ConnectError(
                f"cannot connect to {where}: identity file {identity_file} is missing or unreadable",
                hint="check the host's identity_file in the inventory",
            )

    client = paramiko.SSHClient()
    if os.path.exists(known_hosts):
        try:
            client.load_system_host_keys(known_hosts)
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyError(
                f"cannot read known_hosts file {known_hosts} for {where}: {exc}",
                hint="fix or remove the malformed line",
            ) from exc
    client.set_missing_host_key_policy(
        _AcceptUnknown() if target.allow_unknown_host_key else _RejectUnknown()
    )

    try:
        client.connect(
            address,
            port=port,
            username=user,
            key_filename=identity_file,
            timeout=connect_timeout,
            banner_timeout=connect_timeout,
            auth_timeout=connect_timeout,
            channel_timeout=connect_timeout,
            allow_agent=False,
            look_for_keys=identity_file is None,
        )
    except _UnknownHostKey as exc:
        client.close()
        key = exc.key
        raise HostKeyError(
            f"unknown SSH host key for {where}: the host offered {key.get_name()} "
            f"{key.fingerprint}, which is not in {known_hosts}",
            hint=(
                "verify it before trusting it: compare that fingerprint with the output of "
                f"`ssh-keygen -lf /etc/ssh/ssh_host_{_key_file_type(key)}_key.pub` on the host's "
                "console (or another channel you trust); if they match, add the key: "
                f"`{keyscan(address, port)} >> {known_hosts}`"
            ),
        ) from None
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyError(
            f"host key for {where} changed: {known_hosts} has {exc.expected_key.get_name()} "
            f"{exc.expected_key.fingerprint}, the host offered {exc.key.get_name()} "
            f"{exc.key.fingerprint}; this may be a man-in-the-middle attack, nothing was sent",
            hint=(
                "if the change is expected (host reinstalled, key rotated), verify the new "
                "fingerprint out of band, remove the old entry with "
                f"'ssh-keygen -f {known_hosts} -R \"{known_hosts_name(address, port)}\"' "
                f"and add the new one (`{keyscan(address, port)} >> {known_hosts}`)"
            ),
        ) from exc
    except paramiko.AuthenticationException as exc:
        client.close()
        key_hint = f"the public key of {identity_file}" if identity_file else "your public key"
        raise ConnectError(
            f"authentication as {user or 'the current user'} failed on {where}: {exc}",
            hint=f"check that {key_hint} is in that user's ~/.ssh/authorized_keys on the host",
        ) from exc
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        client.close()
        raise ConnectError(
            f"cannot connect to {where}: connection refused or host unreachable",
            hint=f"check that the host is up, sshd runs and listens on port {port}, and no firewall blocks it",
        ) from exc
    except TimeoutError as exc:
        client.close()
        raise ConnectError(
            f"cannot connect to {where}: no answer within {connect_timeout:g}s",
            hint="check the address, that the host is up, and routing and firewalls on the way",
        ) from exc
    except paramiko.SSHException as exc:
        client.close()
        raise ConnectError(
            f"SSH handshake with {where} failed: {exc}",
            hint=f"check that port {port} on {address} is an SSH server and that it is not overloaded",
        ) from exc
    except OSError as exc:
        client.close()
        raise ConnectError(
            f"cannot connect to {where}: {exc}",
            hint="check the address and the network path to the host",
        ) from exc

    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(KEEPALIVE_INTERVAL)
        # Many small request/response exchanges (channel opens, SFTP): don't let Nagle and
        # delayed ACKs add 40 ms to each.
        with contextlib.suppress(OSError, AttributeError):
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    log.debug("connected to %s as %s", where, user)
    return client
