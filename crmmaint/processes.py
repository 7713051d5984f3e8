"""Processes of this machine, as records name them: whether the process a lock, a running
drill or a run was written by is still the one alive (a PID reused since does not count).

A record is ``this_process()``: the machine's name, the PID and the process's start time in
clock ticks since boot (Linux ``/proc``; ``None`` elsewhere, where the PID alone decides).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def pid_namespace() -> str:
    """Which pid namespace we run in: containers sharing a hostname must not judge each
    other's pids. Empty where /proc does not tell (then the hostname alone decides)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc``), or ``None``
    where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22 of the whole line: starttime
    except (OSError, IndexError, ValueError):
        return None


def this_process() -> dict[str, Any]:
    """What identifies this process on this machine: ``machine``, ``pid_namespace``, ``pid``,
    ``pid_started``."""
    return {
        "machine": socket.gethostname(),
        "pid_namespace": pid_namespace(),
        "pid": os.getpid(),
        "pid_started": process_start(os.getpid()),
    }


def still_running(record: Mapping[str, Any]) -> bool:
    """Whether the process ``record`` (``this_process``) names may still be running: it ran
    on another machine (which this one cannot look at), or its process is alive and the same
    one. A record without a PID is taken as running (nothing says it is not)."""
    if record.get("machine") != socket.gethostname():
        return True
    if record.get("pid_namespace", pid_namespace()) != pid_namespace():
        return True  # another container on this host: its PIDs are not ours to judge
    pid = record.get("pid")
    if pid is None:
        return True
    if not isinstance(pid, int) or not pid_alive(pid):
        return False
    started = process_start(pid)
    known = record.get("pid_started")
    return started is None or known is None or started == known
