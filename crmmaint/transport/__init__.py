"""Where commands run: this machine or SSH hosts, behind one small ``Transport`` protocol.

``TransportPool`` (pool.py) gives one transport per inventory host for a run or a command;
``SSHTarget`` and ``connect`` (ssh_client.py) are how every SSH connection is described and opened.
"""

from crmmaint.transport.base import CommandResult, Process, Transport
from crmmaint.transport.local import LocalTransport
from crmmaint.transport.pool import TransportFactory, TransportPool, default_transport_factory
from crmmaint.transport.ssh import SSHPool, SSHTransport, default_pool
from crmmaint.transport.ssh_client import SSHTarget, connect, connect_client

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
