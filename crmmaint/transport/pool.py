"""One transport per inventory host for one run: chosen, made on first use, all closed at the end.

The runner and CLI commands that reach hosts (``restore``, say) share this::

    with TransportPool() as transports:        # local hosts: LocalTransport; others: SSH
        transports.get(host).run(["uname", "-r"])
    # every transport it made is closed here

``TransportPool(factory)`` takes another way of making a host's transport (tests pass fakes);
``default_transport_factory()`` is the usual one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from crmmaint.transport.base import Transport
from crmmaint.transport.local import LocalTransport

if TYPE_CHECKING:
    from crmmaint.inventory import Host
    from crmmaint.transport.ssh import SSHPool

__all__ = ["TransportFactory", "TransportPool", "default_transport_factory"]

log = logging.getLogger(__name__)

#: Makes the transport of one inventory host (not connected yet); a pool calls it once per host.
TransportFactory = Callable[["Host"], Transport]


def default_transport_factory(pool: SSHPool | None = None) -> TransportFactory:
    """The usual factory: a host with ``connection: local`` gets a ``LocalTransport``, any other
    an ``SSHTransport`` for ``SSHTarget.from_host(host)`` from ``pool`` (default: a new
    ``SSHPool``, made with the first SSH host: the SSH modules load only then). Making a
    transport does not connect; the first command does."""
    pools: list[SSHPool] = [pool] if pool is not None else []
    lock = threading.Lock()

    def factory(host: Host) -> Transport:
        if host.is_local:
            return LocalTransport(host.name)
        from crmmaint.transport.ssh import SSHPool
        from crmmaint.transport.ssh_client import SSHTarget

        with lock:
            if not pools:
                pools.append(SSHPool())
        return pools[0].transport(SSHTarget.from_host(host))

    return factory


class TransportPool:
    """The transports of one run or one command, one per host name, made by ``factory``
    (default: ``default_transport_factory()``) when a host is first asked for.

    Thread-safe: workers may ask for hosts concurrently, and connecting to one host does not
    hold up the others. Use it as a context manager, or call ``close_all()`` when done.
    """

    def __init__(self, factory: TransportFactory | None = None) -> None:
        self._factory = factory if factory is not None else default_transport_factory()
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}
        self._transports: dict[str, Transport] = {}

    def get(self, host: Host) -> Transport:
        """The transport of ``host``, made on the first call for its name and reused after.

        Raises what the factory raises (``ValueError`` for an invalid ``become``, say); SSH
        connection errors come later, from the first command.
        """
        with self._lock:
            host_lock = self._host_locks.setdefault(host.name, threading.Lock())
        with host_lock:  # connecting to one host does not hold up the others
            transport = self._transports.get(host.name)
            if transport is None:
                transport = self._factory(host)
                self._transports[host.name] = transport
            return transport

    #: A pool is itself a ``Callable[[Host], Transport]``: ``transports(host)`` is ``get(host)``.
    __call__ = get

    def __len__(self) -> int:
        """How many transports the pool holds (hosts asked for since the last ``close_all``)."""
        return len(self._transports)

    def close_all(self) -> None:
        """Close every transport made so far and forget them; a failing close is logged, not
        raised. Asking for a host afterwards makes a new transport."""
        with self._lock:
            transports, self._transports = list(self._transports.items()), {}
        for name, transport in transports:
            try:
                transport.close()
            except Exception:
                log.warning("closing the transport of %s failed", name, exc_info=True)

    def __enter__(self) -> TransportPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()
