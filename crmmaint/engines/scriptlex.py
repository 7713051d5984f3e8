"""What the dump lexers (``postgresql/script.py``, ``myscript.py``) share: the pieces they
yield and the streaming frame that feeds them whole lines, in pull mode (from a reader) or push
mode (chunks handed to ``feed`` as a dump streams past)."""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from crmmaint.engines.base import Reader

_READ = 1 << 20
#: Script text without a newline is lexed in slices once this much has gathered (a forged
#: one-line script must not grow one buffer); a lexer holds back the last bytes of a slice
#: where a token may continue.
MAX_LINE = 1 << 20


@dataclass
class ScriptPiece:
    """A piece of the script, in order; joined, the pieces are the script byte for byte.

    ``kind``: ``"gap"`` (whitespace, comments and client command lines between statements),
    ``"statement"`` (part of one SQL statement, up to and with its terminator), ``"data"``
    (part of a ``COPY … FROM stdin`` block's rows, with its ``\\.`` line). ``last`` marks the
    final piece of a statement or data block; ``inner`` a piece inside a string, quoted name or
    comment that began in an earlier piece. ``offset`` is where the piece starts (bytes).
    """

    kind: str
    data: bytes
    offset: int
    last: bool = False
    inner: bool = False


class StreamLexer(abc.ABC):
    """The frame: a buffer of script, lexed up to the last whole line (``_lexable``) by the
    subclass's ``_step``; what a token needs beyond that waits for more script."""

    def __init__(self, source: Reader | None = None) -> None:
        self._source = source
        self._buf = b""
        self._eof = False
        self._offset = 0  # script offset of self._buf[0]
        self._stalled = False  # the last pass could not move: wait for more script

    def __iter__(self) -> Iterator[ScriptPiece]:
        """Pull mode: read the source given to the constructor to its end."""
        assert self._source is not None, "a lexer made for feed() has no source to read"
        while True:
            end = self._lexable()
            if end is not None:
                yield from self._lex(end)
                continue
            if self._eof:
                return
            chunk = self._source.read(_READ)
            self._stalled = False
            if not chunk:
                self._eof = True
            else:
                self._buf = self._buf + chunk if self._buf else chunk

    def feed(self, chunk: bytes) -> Iterator[ScriptPiece]:
        """Push mode: the pieces ``chunk`` completes (an empty chunk ends the script)."""
        if not chunk:
            self._eof = True
        else:
            self._buf = self._buf + chunk if self._buf else chunk
        self._stalled = False
        while (end := self._lexable()) is not None:
            yield from self._lex(end)

    def _lexable(self) -> int | None:
        """How much of the buffer may be lexed now: whole lines (``_data_mode``: all but the
        bytes that may begin its terminator), everything at the end of the script; None when
        more script is needed first, or none is left, or the last pass could not move."""
        buf = self._buf
        if self._stalled or not buf:
            return None
        if self._eof:
            return len(buf)
        if self._data_mode:
            return len(buf) if len(buf) > 3 else None
        nl = buf.rfind(b"\n")
        if nl >= 0:
            return nl + 1
        return len(buf) if len(buf) >= MAX_LINE else None

    def _lex(self, end: int) -> Iterator[ScriptPiece]:
        """Lex ``self._buf[:end]`` with ``_step`` until it can move no further."""
        buf = self._buf
        pos = 0
        # Code is lexed in whole lines (a comment or client command line is one piece) even
        # when a data block that ended in this pass was handed on up to ``end``.
        lines_end = end if self._eof else buf.rfind(b"\n", 0, end) + 1
        sliced = lines_end == 0 and end >= MAX_LINE  # one line longer than MAX_LINE
        while pos < end:
            limit = end
            if not self._data_mode and not sliced:
                if pos >= lines_end:
                    break
                limit = lines_end
            state = self._state()
            moved, pieces = self._step(buf, pos, limit)
            yield from pieces
            if moved == pos and not pieces and state == self._state():
                break
            pos = moved
        self._stalled = pos == 0
        self._offset += pos
        self._buf = buf[pos:]

    def _safe_end(self, buf: bytes, pos: int, end: int, keep: int) -> int:
        """Where a search that found nothing may stop: ``end`` at a line's end or the script's,
        else ``keep - 1`` bytes back (they may begin what was searched for)."""
        if self._eof or buf[end - 1 : end] == b"\n":
            return end
        return max(pos, end - keep + 1)

    @property
    def _data_mode(self) -> bool:
        return False

    @abc.abstractmethod
    def _state(self) -> tuple[object, ...]:
        """What a step may change besides the position (a step that changes it has moved)."""

    @abc.abstractmethod
    def _step(self, buf: bytes, pos: int, end: int) -> tuple[int, list[ScriptPiece]]:
        """Lex from ``pos`` (at most to ``end``): the new position and the pieces made."""


class QueueReader(abc.ABC):
    """A reader over chunks a subclass queues in ``_out`` (``_fill`` queues more, or sets
    ``_done``): what the restore filters and the post-data split hand on."""

    def __init__(self) -> None:
        self._out: deque[bytes] = deque()
        self._done = False

    def read(self, size: int = _READ) -> bytes:
        while not self._out and not self._done:
            self._fill()
        if not self._out:
            return b""
        chunk = self._out.popleft()
        if len(chunk) > size:
            self._out.appendleft(chunk[size:])
            chunk = chunk[:size]
        return chunk

    @abc.abstractmethod
    def _fill(self) -> None:
        """Queue the next output in ``_out``, or set ``_done`` at the end."""
