"""Where commands run: this machine or SSH hosts, behind one small ``Transport`` protocol."""

from crmmaint.transport.base import CommandResult, Process, Transport
from crmmaint.transport.local import LocalTransport
from crmmaint.transport.ssh import SSHPool, SSHTarget, SSHTransport, default_pool
from crmmaint.transport.ssh_client import connect_client

__all__ = [
    "CommandResult",
    "LocalTransport",
    "Process",
    "SSHPool",
    "SSHTarget",
    "SSHTransport",
    "Transport",
    "connect_client",
    "default_pool",
]
