"""Where commands run: this machine or SSH hosts, behind one small ``Transport`` protocol.

``TransportPool`` (pool.py) gives one transport per inventory host for a run or a command;
``SSHTarget`` and ``connect`` (ssh_client.py) are how every SSH connection is described and opened.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crmmaint.transport.base import CommandResult, Process, Transport
from crmmaint.transport.local import LocalTransport
from crmmaint.transport.pool import TransportFactory, TransportPool, default_transport_factory

if TYPE_CHECKING:
    from crmmaint.transport.ssh import SSHPool, SSHTransport, default_pool
    from crmmaint.transport.ssh_client import SSHTarget, connect, connect_client

#: The SSH names, imported on first use: paramiko takes a tenth of a second to load, and a
#: command that reaches no SSH host (most on one machine) need not pay it.
_SSH_NAMES = {
    "SSHPool": "crmmaint.transport.ssh",
    "SSHTransport": "crmmaint.transport.ssh",
    "default_pool": "crmmaint.transport.ssh",
    "SSHTarget": "crmmaint.transport.ssh_client",
    "connect": "crmmaint.transport.ssh_client",
    "connect_client": "crmmaint.transport.ssh_client",
}


def __getattr__(name: str) -> Any:
    module = _SSH_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CommandResult",
    "LocalTransport",
    "Process",
    "SSHPool",
    "SSHTarget",
    "SSHTransport",
    "Transport",
    "TransportFactory",
    "TransportPool",
    "connect",
    "connect_client",
    "default_pool",
    "default_transport_factory",
]
