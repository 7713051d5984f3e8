"""Where commands run: this machine or SSH hosts, behind one small ``Transport`` protocol."""

from crmmaint.transport.base import CommandResult, Process, Transport
from crmmaint.transport.ssh_client import connect_client

__all__ = ["CommandResult", "Process", "Transport", "connect_client"]
