"""The Transport protocol: run commands on a host, stream their output, copy files.

Orchestration lives here once (timeouts, stdin feeding, stderr capture, result building);
implementations only start a process and hand back its pipes (see ``Process``).

Commands are argument lists (quoted by the transport when a shell is involved) or, as a str,
a shell snippet run with ``sh -c``. Payloads such as SQL travel over stdin, never on the command
line, so they appear neither in process listings nor in logs.
"""

from __future__ import annotations

import abc
import logging
import shlex
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Literal

from crmmaint.errors import CommandTimeout, TransportError
from crmmaint.units import format_size

log = logging.getLogger(__name__)

Command = str | Sequence[str]

#: What a started command's stdout is for, decided when it starts (``Transport.start``):
#: ``"stream"``: the caller reads it; the command is held back by the pipe while the caller is
#: busy or has not started reading yet (backpressure), and no byte is ever dropped.
#: ``"collect"``: the caller only feeds stdin (a load); stdout is kept for ``wait()``'s result up
#: to ``COLLECT_STDOUT_LIMIT`` and the rest is counted and discarded, so it can never block.
StdoutMode = Literal["stream", "collect"]

#: stderr kept per command (its tail): enough for error messages, bounded for chatty commands.
STDERR_LIMIT = 64 * 1024
#: stdout of a ``stdout="collect"`` command kept for ``wait()``'s result; the rest is discarded.
COLLECT_STDOUT_LIMIT = 16 << 20
#: stdout ``Transport.run`` keeps (it is for small outputs; a longer one is an error, and the
#: caller should stream it with ``start``): 400 MB of output once cost 873 MB of memory.
RUN_STDOUT_LIMIT = 64 << 20
#: Read-ahead buffered for a caller streaming stdout; beyond it the command waits (backpressure).
#: 2 MiB keeps a backup's pump fed (8 MiB was no faster and held 6 MB more at its peak).
STDOUT_HIGH_WATER = 2 << 20
#: How long a killed command may take to go away before we stop waiting for it.
KILL_GRACE = 5.0
#: How long a task may still spend removing what it made (a half-loaded restore target, its
#: load role) once its step timed out or the run was interrupted: its cleanup commands run
#: through ``Transport.for_cleanup`` with this long, and the runner waits this long for them.
CLEANUP_GRACE = 60.0
CHUNK = 1 << 20


def command_text(command: Command) -> str:
    """A command as one shell line: a str as is, an argument list quoted."""
    return command if isinstance(command, str) else shlex.join(command)


def short(text: str, limit: int = 80) -> str:
    """The first ``limit`` characters of a command, for messages; a command that holds a
    script (``sh -c '…'`` over several lines) as its first line and the script's length."""
    if "\n" in text:
        lines = text.count("\n") + 1
        return f"{short(text.split(chr(10), 1)[0].rstrip(), limit)}… ({lines}-line script)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class CommandResult:
    """The outcome of one finished command. ``stdout`` is empty when it was streamed."""

    host: str
    command: str
    exit_status: int
    stdout: bytes
    stderr: bytes
    duration: float
    #: Bytes of a ``stdout="collect"`` command's output past ``COLLECT_STDOUT_LIMIT``, discarded.
    stdout_dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def stderr_tail(self, limit: int = 400) -> str:
        """The end of stderr, one line, for error messages: its lines joined with ``" | "``,
        a line repeated right after itself said once (redis-cli prints its connection error
        twice, and a failure is said once)."""
        tail = self.stderr.decode("utf-8", "replace").strip()[-limit:]
        lines = [line for line in tail.splitlines() if line.strip()]
        return " | ".join(line for i, line in enumerate(lines) if i == 0 or line != lines[i - 1])


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

    def set_timeout(self, seconds: float) -> None:
        """Kill the command ``seconds`` from now if still running; then read/write/wait raise
        ``CommandTimeout``. Bounds a whole stream, not only the final ``wait``."""
        raise NotImplementedError

    def readinto_file(self, out: BinaryIO, size: int = 1 << 20) -> int:
        """Copy all of stdout to ``out``; returns the byte count."""
        total = 0
        while chunk := self.read(size):
            out.write(chunk)
            total += len(chunk)
        return total


class ProcessPipes(abc.ABC):
    """The raw pipes of one started command: all a transport implementation provides.

    ``PipeProcess`` builds everything else (timeouts, stderr capture, results) on these hooks.
    """

    @abc.abstractmethod
    def write_stdin(self, data: bytes) -> None:
        """Write all of ``data``; ``OSError`` if the command no longer reads."""

    @abc.abstractmethod
    def close_stdin(self) -> None: ...

    @abc.abstractmethod
    def read_stdout(self, size: int) -> bytes:
        """Block for up to ``size`` bytes; ``b""`` at end of output."""

    @abc.abstractmethod
    def read_stderr(self, size: int) -> bytes: ...

    @abc.abstractmethod
    def wait_exit(self, timeout: float | None) -> int | None:
        """The exit status (128+N for signal N), or None if still running after ``timeout``."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Kill the command and everything it started."""

    @abc.abstractmethod
    def release(self) -> None:
        """Free pipes and channels (the command has exited or was killed)."""


class TailBuffer:
    """Keeps the last ``limit`` bytes written to it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._lock = threading.Lock()

    def append(self, data: bytes) -> None:
        with self._lock:
            self._chunks.append(data)
            self._size += len(data)
            while self._size - len(self._chunks[0]) >= self.limit:
                self._size -= len(self._chunks.popleft())

    def getvalue(self) -> bytes:
        with self._lock:
            return b"".join(self._chunks)[-self.limit :]


class _StdoutPump:
    """Reads stdout in a thread, in one of two modes fixed when the command starts.

    Streaming (the caller reads): at most ``STDOUT_HIGH_WATER`` is buffered and the command is
    held back beyond that from its first byte on, however late the caller starts reading; no
    byte is ever dropped. Collecting (nobody reads before ``wait``): up to ``limit`` bytes are
    kept for the result (None: all) and the rest counted in ``dropped`` and discarded, so a
    command whose output nobody reads never blocks the caller feeding its stdin. A streaming
    caller that gives up early (``stop_streaming``) turns the rest into collecting.
    """

    def __init__(
        self, source: ProcessPipes, *, streaming: bool, limit: int | None, label: str
    ) -> None:
        self._source = source
        self._limit = limit
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.dropped = 0
        self._streaming = streaming
        self._eof = False
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._pump, name=f"stdout {label}", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        try:
            while chunk := self._source.read_stdout(CHUNK):
                with self._cond:
                    while self._streaming and self._size >= STDOUT_HIGH_WATER:
                        self._cond.wait()
                    if (
                        not self._streaming
                        and self._limit is not None
                        and self._size + len(chunk) > self._limit
                    ):
                        self.dropped += len(chunk)
                        continue
                    self._chunks.append(chunk)
                    self._size += len(chunk)
                    self._cond.notify_all()
        except OSError as exc:
            self.error = exc
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def read(self, size: int) -> bytes:
        with self._cond:
            while not self._chunks and not self._eof:
                self._cond.wait()
            if not self._chunks:
                return b""
            chunk = self._chunks.popleft()
            if len(chunk) > size:
                self._chunks.appendleft(chunk[size:])
                chunk = chunk[:size]
            self._size -= len(chunk)
            self._cond.notify_all()
            return chunk

    def stop_streaming(self) -> None:
        """The caller is done reading: keep what remains (up to the limit) for the result."""
        with self._cond:
            self._streaming = False
            self._cond.notify_all()

    def remaining(self) -> bytes:
        with self._cond:
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            return data


class PipeProcess(Process):
    """A ``Process`` over raw ``ProcessPipes``: the one implementation of the orchestration."""

    def __init__(
        self,
        host: str,
        command: str,
        pipes: ProcessPipes,
        *,
        stdout: StdoutMode,
        stdout_limit: int | None = COLLECT_STDOUT_LIMIT,
    ) -> None:
        self.host = host
        self.command = command
        self.pipes = pipes
        self.stdout_mode = stdout
        self._started = time.monotonic()
        self._stderr = TailBuffer(STDERR_LIMIT)
        self._stdout = _StdoutPump(
            pipes, streaming=stdout == "stream", limit=stdout_limit, label=host
        )
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, name=f"stderr {host}", daemon=True
        )
        self._stderr_thread.start()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._deadline: float | None = None
        self._limit: float | None = None
        self._timed_out = threading.Event()
        self._killed_at: float | None = None
        self._result: CommandResult | None = None

    def _drain_stderr(self) -> None:
        try:
            while chunk := self.pipes.read_stderr(CHUNK):
                self._stderr.append(chunk)
        except OSError as exc:
            log.debug("%s: reading stderr of %s failed: %s", self.host, short(self.command), exc)

    # -- timeouts ---------------------------------------------------------------------------

    def set_timeout(self, seconds: float) -> None:
        with self._lock:
            deadline = time.monotonic() + seconds
            if self._result is not None or (
                self._deadline is not None and self._deadline <= deadline
            ):
                return
            if self._timer is not None:
                self._timer.cancel()
            self._deadline, self._limit = deadline, seconds
            self._timer = threading.Timer(seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            if self._result is not None:
                return
            self._timed_out.set()
            self._killed_at = time.monotonic()
        # The CommandTimeout this ends in is the one place the failure is said.
        log.debug(
            "%s: command %r exceeded its %gs timeout, killing it",
            self.host,
            short(self.command),
            self._limit,
        )
        self.kill()

    def _timeout_error(self) -> CommandTimeout:
        tail = CommandResult(
            self.host, self.command, -1, b"", self._stderr.getvalue(), 0
        ).stderr_tail()
        return CommandTimeout(
            f"{self.host}: command {short(self.command)!r} did not finish within "
            f"{self._limit:g}s and was killed" + (f"; stderr: {tail}" if tail else ""),
            hint="raise the step's timeout (or the task's timeout parameter) if the command is"
            " only slow, or find out why it hangs",
        )

    # -- Process ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._timed_out.is_set():
            raise self._timeout_error()
        try:
            self.pipes.write_stdin(data)
        except OSError as exc:
            if self._timed_out.is_set():
                raise self._timeout_error() from exc
            raise TransportError(
                f"{self.host}: command {short(self.command)!r} stopped reading its input ({exc})",
                hint="see the command's exit status and stderr for why it ended early",
            ) from exc

    def close_stdin(self) -> None:
        try:
            self.pipes.close_stdin()
        except OSError as exc:
            log.debug("%s: closing stdin of %s: %s", self.host, short(self.command), exc)

    def read(self, size: int = CHUNK) -> bytes:
        if self.stdout_mode != "stream":
            raise RuntimeError(
                f"{short(self.command)!r} was started with stdout={self.stdout_mode!r}: its "
                "output is in wait()'s result; start it with stdout='stream' to read it"
            )
        data = self._stdout.read(size)
        if not data:
            if self._timed_out.is_set():
                raise self._timeout_error()
            if self._stdout.error is not None:
                raise TransportError(
                    f"{self.host}: reading output of {short(self.command)!r} failed: "
                    f"{self._stdout.error}",
                    hint="the connection to the host may have dropped",
                ) from self._stdout.error
        return data

    def kill(self) -> None:
        self.pipes.kill()

    def wait(self, timeout: float | None = None) -> CommandResult:
        if timeout is not None:
            self.set_timeout(timeout)
        self._stdout.stop_streaming()
        status = None
        while status is None:
            status = self.pipes.wait_exit(0.2)
            killed_at = self._killed_at
            if (
                status is None
                and killed_at is not None
                and time.monotonic() > killed_at + KILL_GRACE
            ):
                log.warning("%s: %r did not go away after kill", self.host, short(self.command))
                break
        # Output ends shortly after exit, unless a background child still holds the pipes.
        grace = KILL_GRACE if self._timed_out.is_set() else None
        self._stdout.thread.join(grace)
        self._stderr_thread.join(grace if grace is not None else KILL_GRACE)
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if self._timed_out.is_set():
                raise self._timeout_error()
            self._result = CommandResult(
                host=self.host,
                command=self.command,
                exit_status=-1 if status is None else status,
                stdout=self._stdout.remaining(),
                stderr=self._stderr.getvalue(),
                duration=time.monotonic() - self._started,
                stdout_dropped=self._stdout.dropped,
            )
        if self._stdout.dropped:
            log.debug(
                "%s: discarded %d bytes of collected output of %r past the limit",
                self.host,
                self._stdout.dropped,
                short(self.command),
            )
        return self._result

    def release(self) -> None:
        """End of the ``start`` block: kill the command if still running, free the pipes."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
        if self.pipes.wait_exit(0) is None:
            log.debug("%s: killing %r at the end of its block", self.host, short(self.command))
            self.pipes.kill()
            self.pipes.wait_exit(KILL_GRACE)
        self._stdout.stop_streaming()
        self._stdout.thread.join(KILL_GRACE)
        self._stderr_thread.join(KILL_GRACE)
        self.pipes.release()


def _feed_stdin(proc: Process, stdin: bytes | BinaryIO, failures: list[BaseException]) -> None:
    """Write ``stdin`` then close it; a failing source kills the command (no partial input)."""
    try:
        if isinstance(stdin, bytes | bytearray | memoryview):
            view = memoryview(stdin)
            for offset in range(0, len(view), CHUNK):
                proc.write(bytes(view[offset : offset + CHUNK]))
        else:
            while chunk := stdin.read(CHUNK):
                proc.write(chunk)
    except TransportError as exc:
        # The command ended early or timed out; its exit status and wait() tell the story.
        log.debug("stdin not fully written: %s", exc)
    except BaseException as exc:
        failures.append(exc)
        proc.kill()
        return
    proc.close_stdin()


class Transport(abc.ABC):
    """Where commands run: this machine (``LocalTransport``) or an SSH host (``SSHTransport``)."""

    #: The inventory name of the host, used in every message.
    host: str

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
        failures: list[BaseException] = []
        with self._started(command, env, stdout="collect", stdout_limit=RUN_STDOUT_LIMIT) as proc:
            if timeout is not None:
                proc.set_timeout(timeout)
            feeder = None
            if stdin is None:
                proc.close_stdin()
            else:
                feeder = threading.Thread(
                    target=_feed_stdin, args=(proc, stdin, failures), name=f"stdin {self.host}"
                )
                feeder.start()
            try:
                result = proc.wait()
            finally:
                if feeder is not None:
                    feeder.join()
        if failures:
            raise failures[0]
        if result.stdout_dropped:
            # "by": the total, rounded, could read the same as the limit
            over = len(result.stdout) + result.stdout_dropped - RUN_STDOUT_LIMIT
            raise TransportError(
                f"{self.host}: output of {short(result.command)!r} exceeded "
                f"{format_size(RUN_STDOUT_LIMIT)} by {format_size(max(over, 1))} and was not kept",
                hint="this command's output is too large to collect; it must be streamed",
            )
        if check and not result.ok:
            raise TransportError(
                f"{self.host}: command {short(result.command)!r} failed with exit status "
                f"{result.exit_status}: {result.stderr_tail() or '(no stderr)'}",
            )
        return result

    @contextmanager
    def start(
        self,
        command: Command,
        *,
        stdout: StdoutMode,
        env: Mapping[str, str] | None = None,
    ) -> Iterator[Process]:
        """Start a command for streaming stdin and/or stdout (dumps, restores, sessions).

        ``stdout`` says, before the first byte arrives, what its output is for: ``"stream"``
        when the caller reads it with ``read()`` (the command then waits for the reader however
        late it starts: nothing is dropped), ``"collect"`` when the caller only feeds stdin and
        looks at the output in ``wait()``'s result (bounded by ``COLLECT_STDOUT_LIMIT``).
        """
        if stdout not in ("stream", "collect"):
            raise ValueError(f"stdout must be 'stream' or 'collect', not {stdout!r}")
        with self._started(command, env, stdout=stdout, stdout_limit=COLLECT_STDOUT_LIMIT) as proc:
            yield proc

    @contextmanager
    def _started(
        self,
        command: Command,
        env: Mapping[str, str] | None,
        *,
        stdout: StdoutMode,
        stdout_limit: int | None,
    ) -> Iterator[PipeProcess]:
        text = command_text(command)
        log.debug("%s: starting %s (stdout: %s)", self.host, short(text), stdout)
        proc = PipeProcess(
            self.host, text, self._spawn(command, env), stdout=stdout, stdout_limit=stdout_limit
        )
        try:
            yield proc
        finally:
            proc.release()

    def _spawn(self, command: Command, env: Mapping[str, str] | None) -> ProcessPipes:
        """Start ``command`` and return its raw pipes: the one hook implementations write."""
        raise NotImplementedError

    def for_cleanup(self, seconds: float) -> Transport:
        """Where to run the commands that remove what a task made when it failed (a half-made
        restore target): a transport bound by a deadline answers a view whose commands may run
        until ``seconds`` from now, even after its own deadline passed or its commands were
        killed; a plain transport has no deadline and answers itself."""
        return self

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


class DeadlineTransport(Transport):
    """One task attempt's view of a pooled transport: every command started through it is
    killed at ``deadline`` (a ``time.monotonic()`` instant) at the latest, and ``kill_all``
    stops the ones still running, on the host (over SSH: the remote process group), when the
    runner gives up on the attempt. ``for_cleanup`` gives the attempt's cleanup a view of its
    own, with its own time. Closing a view leaves the pooled transport open."""

    def __init__(self, inner: Transport, deadline: float | None) -> None:
        self.inner = inner
        self.host = inner.host
        self.deadline = deadline
        self._live: set[PipeProcess] = set()
        self._lock = threading.Lock()
        #: Why commands are killed and refused (``kill_all``), None while they may run.
        self._stopped: str | None = None
        self._cleanups: list[DeadlineTransport] = []
        #: Why cleanup views are killed and refused too (``kill_all(cleanup=True)``).
        self._cleanup_stopped: str | None = None

    def _spawn(self, command: Command, env: Mapping[str, str] | None) -> ProcessPipes:
        stopped = self._stopped
        if stopped is not None:
            raise CommandTimeout(
                f"{self.host}: not starting {short(command_text(command))!r}: {stopped}"
            )
        return self.inner._spawn(command, env)

    @contextmanager
    def _started(
        self,
        command: Command,
        env: Mapping[str, str] | None,
        *,
        stdout: StdoutMode,
        stdout_limit: int | None,
    ) -> Iterator[PipeProcess]:
        with super()._started(command, env, stdout=stdout, stdout_limit=stdout_limit) as proc:
            if self.deadline is not None:
                proc.set_timeout(max(0.001, self.deadline - time.monotonic()))
            with self._lock:
                stopped = self._stopped
                if stopped is None:
                    self._live.add(proc)
            if stopped is not None:  # kill_all ran between the spawn and now
                log.debug("%s: killing %r: %s", self.host, short(proc.command), stopped)
                proc.kill()
            try:
                yield proc
            finally:
                with self._lock:
                    self._live.discard(proc)

    def for_cleanup(self, seconds: float) -> Transport:
        """A view of the same pooled transport whose commands may run until ``seconds`` from
        now, whether or not this view's deadline passed or ``kill_all`` stopped it; only
        ``kill_all(cleanup=True)`` stops it (the runner giving up on the cleanup too)."""
        view = DeadlineTransport(self.inner, time.monotonic() + seconds)
        with self._lock:
            if self._cleanup_stopped is not None:
                view._stopped = self._cleanup_stopped
            self._cleanups.append(view)
        return view

    @property
    def cleaning(self) -> bool:
        """Whether the attempt has asked for a cleanup view (it is removing what it made)."""
        with self._lock:
            return bool(self._cleanups)

    def kill_all(self, reason: str = "its step timed out", *, cleanup: bool = False) -> int:
        """Kill every command still running and refuse new ones, saying ``reason`` ("its step
        timed out", "the run was interrupted"); with ``cleanup`` the commands of the
        ``for_cleanup`` views as well. Returns how many commands were killed."""
        with self._lock:
            if self._stopped is None:
                self._stopped = reason
            live = list(self._live)
            self._live.clear()  # each is killed once, however often kill_all is called
            cleanups = list(self._cleanups) if cleanup else []
            if cleanup and self._cleanup_stopped is None:
                self._cleanup_stopped = reason
        for proc in live:  # the caller's result says why (a timeout, an interrupt)
            log.debug("%s: killing %r: %s", self.host, short(proc.command), reason)
            proc.kill()
        return len(live) + sum(view.kill_all(reason) for view in cleanups)

    def put(self, local_path: str, remote_path: str, *, mode: int | None = None) -> None:
        self.inner.put(local_path, remote_path, mode=mode)

    def get(self, remote_path: str, local_path: str) -> None:
        self.inner.get(remote_path, local_path)

    def close(self) -> None:
        """The pooled transport stays open for the rest of the run."""
