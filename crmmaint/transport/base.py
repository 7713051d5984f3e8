"""The Transport protocol: run commands on a host, stream their output, copy files.

Orchestration lives here once (timeouts, stdin feeding, stderr capture, result building);
implementations only start a process and hand back its pipes (see ``Process``).

Commands are argument lists (quoted by the transport when a shell is involved) or, as a str,
a shell snippet run with ``sh -c``. Payloads such as SQL travel over stdin, never on the command
line, so they appear neither in process listings nor in logs.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

Command = str | Sequence[str]


@dataclass
class CommandResult:
    """The outcome of one finished command. ``stdout`` is empty when it was streamed."""

    host: str
    command: str
    exit_status: int
    stdout: bytes
    stderr: bytes
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def stderr_tail(self, limit: int = 400) -> str:
        """The end of stderr, one line, for error messages."""
        tail = self.stderr.decode("utf-8", "replace").strip()[-limit:]
        return " | ".join(line for line in tail.splitlines() if line.strip())


class Process(abc.ABC):
    """A started command: write stdin, read stdout as a stream, then wait.

    ``stderr`` is drained in the background into a bounded buffer so a chatty command never
    blocks. Leaving the ``Transport.start`` context kills the process if it is still running.
    """

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Send bytes to the command's stdin."""

    @abc.abstractmethod
    def close_stdin(self) -> None:
        """Signal end of input."""

    @abc.abstractmethod
    def read(self, size: int = 1 << 20) -> bytes:
        """Read up to ``size`` bytes of stdout; ``b""`` at end of output."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> CommandResult:
        """Wait for exit; raises ``CommandTimeout`` after ``timeout`` seconds (and kills)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop the command now."""

    def readinto_file(self, out: BinaryIO, size: int = 1 << 20) -> int:
        """Copy all of stdout to ``out``; returns the byte count."""
        total = 0
        while chunk := self.read(size):
            out.write(chunk)
            total += len(chunk)
        return total


class Transport(abc.ABC):
    """Where commands run: this machine (``LocalTransport``) or an SSH host (``SSHTransport``)."""

    #: The inventory name of the host, used in every message.
    host: str

    @abc.abstractmethod
    def run(
        self,
        command: Command,
        *,
        stdin: bytes | BinaryIO | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run to completion, collecting stdout (for small outputs only).

        With ``check=True`` a non-zero exit raises ``TransportError`` naming host, command and
        the tail of stderr. ``env`` values are passed without appearing on the command line.
        """

    @abc.abstractmethod
    @contextmanager
    def start(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
    ) -> Iterator[Process]:
        """Start a command for streaming stdin and/or stdout (dumps, restores)."""

    @abc.abstractmethod
    def put(self, local_path: str, remote_path: str, *, mode: int | None = None) -> None:
        """Copy a local file to the host (atomically: temp name, then rename)."""

    @abc.abstractmethod
    def get(self, remote_path: str, local_path: str) -> None:
        """Copy a file from the host."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. Idempotent."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
