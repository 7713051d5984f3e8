"""Run commands on this machine: a subprocess with pipes, in its own process group, that dies
with crmmaint (Linux: the parent-death signal), so a killed backup leaves no dump running."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping

from crmmaint.errors import TransportError
from crmmaint.transport.base import Command, ProcessPipes, Transport, command_text, short

log = logging.getLogger(__name__)


#: Pipe buffer for a command's stdout: large reads, fewer wake-ups on dump-sized streams.
PIPE_SIZE = 1 << 20
#: prctl(2) option: the signal a process gets when the thread that started it exits.
PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[[int, int], int] | None:
    """libc's prctl(2), resolved once before any fork; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()


def die_with_this_process() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when this process dies (even by
    ``kill -9``); None where prctl(2) does not exist.

    The signal follows the *thread* that started the child: every command is started and
    waited for by one task thread, so none outlives its thread on purpose. A pipeline inside a
    ``sh -c`` snippet is not signalled, but its pipes to crmmaint close with it.
    """
    prctl, parent = _PRCTL, os.getpid()
    if prctl is None:
        return None

    def hook() -> None:  # in the child between fork and exec: no locks, no imports
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # this process died before the signal was armed
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _grow_pipe(fileobj: object) -> None:
    """Best effort: a 1 MiB pipe (Linux caps it at /proc/sys/fs/pipe-max-size)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        fcntl.fcntl(fileobj.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # type: ignore[attr-defined]


class _LocalPipes(ProcessPipes):
    def __init__(self, popen: subprocess.Popen) -> None:
        self._popen = popen
        _grow_pipe(popen.stdout)

    def write_stdin(self, data: bytes) -> None:
        assert self._popen.stdin is not None
        self._popen.stdin.write(data)
        self._popen.stdin.flush()

    def close_stdin(self) -> None:
        if self._popen.stdin is not None and not self._popen.stdin.closed:
            self._popen.stdin.close()

    def read_stdout(self, size: int) -> bytes:
        assert self._popen.stdout is not None
        return os.read(self._popen.stdout.fileno(), size)

    def read_stderr(self, size: int) -> bytes:
        assert self._popen.stderr is not None
        return os.read(self._popen.stderr.fileno(), size)

    def wait_exit(self, timeout: float | None) -> int | None:
        try:
            status = self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return 128 - status if status < 0 else status

    def kill(self) -> None:
        # The command leads its own process group: kill its children (sh -c pipelines) too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)

    def release(self) -> None:
        for pipe in (self._popen.stdin, self._popen.stdout, self._popen.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class LocalTransport(Transport):
    """Commands on the machine running crmmaint; a str runs with ``sh -c``, a list is exec'd."""

    def __init__(self, host: str = "localhost") -> None:
        self.host = host

    def _spawn(self, command: Command, env: Mapping[str, str] | None) -> ProcessPipes:
        args = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        try:
            popen = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=None if env is None else {**os.environ, **env},
                start_new_session=True,
                preexec_fn=die_with_this_process(),
            )
        except OSError as exc:
            raise TransportError(
                f"{self.host}: cannot start {short(command_text(command))!r}: {exc}",
                hint="check that the program is installed and on PATH",
            ) from exc
        return _LocalPipes(popen)

    def put(self, local_path: str, remote_path: str, *, mode: int | None = None) -> None:
        _copy_atomic(self.host, local_path, remote_path, mode)

    def get(self, remote_path: str, local_path: str) -> None:
        _copy_atomic(self.host, remote_path, local_path, None)

    def close(self) -> None:
        pass


def _copy_atomic(host: str, source: str, target: str, mode: int | None) -> None:
    """Copy to a temp name next to ``target``, then rename: readers never see a partial file."""
    directory = os.path.dirname(os.path.abspath(target))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", dir=directory)
    except OSError as exc:
        raise TransportError(f"{host}: cannot write into {directory}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise TransportError(f"{host}: cannot copy {source} to {target}: {exc}") from exc
