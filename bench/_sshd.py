"""Real sshd hosts on 127.0.0.2 and up for benchmarks, reusing the test fixture's code.

``tests/sshd_fixture.py`` starts the hosts (own host key each, one client key, one shared
known_hosts); this module only wraps it in a context manager that works outside pytest.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

import sshd_fixture  # noqa: E402  (needs the tests folder on sys.path)
from sshd_fixture import SshdHost  # noqa: E402

__all__ = ["SshdHost", "sshd_hosts"]

#: Loopback only: the first host is 127.0.0.2, so at most 253 hosts.
MAX_HOSTS = 253


@contextlib.contextmanager
def sshd_hosts(count: int, workdir: Path) -> Iterator[list[SshdHost]]:
    """Start ``count`` sshd hosts (``sshd1`` on 127.0.0.2 …) under ``workdir``; stop them after."""
    if not 1 <= count <= MAX_HOSTS:
        raise ValueError(f"between 1 and {MAX_HOSTS} hosts on 127.0.0.0/8, not {count}")
    if not os.access(sshd_fixture.SSHD, os.X_OK):
        raise SystemExit(f"{sshd_fixture.SSHD} not found: apt-get install openssh-server")
    if os.geteuid() == 0:  # sshd's privilege separation directory (Debian layout)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    keys = sshd_fixture._client_keys(workdir / "client")
    known_hosts = workdir / "known_hosts"
    known_hosts.touch()
    hosts: list[SshdHost] = []
    try:
        for i in range(count):
            name = f"sshd{i + 1}"
            hosts.append(
                sshd_fixture._make_host(name, f"127.0.0.{i + 2}", workdir / name, keys, known_hosts)
            )
        yield hosts
    finally:
        for host in hosts:
            host.stop()
