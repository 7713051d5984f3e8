"""Loading a plain pg_dump on several connections: the parts of a parallel restore.

``plan_pieces`` and ``balance`` decide which COPY blocks (``copy_sections`` a backup recorded)
each connection loads; ``CopyPiece`` turns one block, or a piece of a big one cut at row
boundaries, into a script for its own transaction; ``ChainReader`` feeds a connection its parts
one after another, opening each when reached; ``PostDataQueue`` hands post-data items to the
connections as their tables finish loading; ``run_together`` runs one task per connection and
turns the first failure into cancelling the others. Pure logic and threads: the engine
(``engine.py``) supplies the psql processes.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from crmmaint.engines.base import Reader
from crmmaint.engines.postgresql.script import PgScriptLexer
from crmmaint.engines.postgresql.sections import COPY_LINE, item_table, with_freeze
from crmmaint.errors import RestoreError

_READ = 1 << 20


class Cancelled(RestoreError):
    """Raised by a reader whose restore was given up (another connection failed); leaving the
    loader with it kills that connection's client."""


class ChainReader:
    """Reads byte strings and readers (opened lazily, when reached) one after another.

    ``cancel`` set from another thread makes the next ``read`` raise ``Cancelled``, which the
    loader reports as the client having stopped reading.
    """

    def __init__(
        self, parts: Iterable[bytes | Callable[[], Reader]], cancel: threading.Event | None = None
    ) -> None:
        self._parts = iter(parts)
        self._current: Reader | None = None
        self._cancel = cancel

    def read(self, size: int = _READ) -> bytes:
        while True:
            if self._cancel is not None and self._cancel.is_set():
                raise Cancelled("restore cancelled: another connection failed")
            if self._current is not None:
                data = self._current.read(size)
                if data:
                    return data
                self._current = None
            part = next(self._parts, None)
            if part is None:
                return b""
            if isinstance(part, bytes):
                if part:
                    return part
                continue
            self._current = part()


@dataclass(frozen=True)
class Piece:
    """Part of one COPY block ``[start, end)`` loaded in its own transaction: the rows that
    begin in ``[cut_from, cut_to)`` (``None``: from the first row / to the last). A row begins
    at the first line start at or after a cut, so neighbouring pieces meet exactly."""

    section: int
    start: int
    end: int
    cut_from: int | None = None
    cut_to: int | None = None

    @property
    def whole(self) -> bool:
        return self.cut_from is None and self.cut_to is None

    @property
    def size(self) -> int:
        return (self.cut_to or self.end) - (self.cut_from or self.start)


#: No piece of a COPY block is smaller than this (each costs a transaction and a range read).
MIN_PIECE = 32 << 20
#: Blocks are cut into pieces only when restoring on at least this many connections.
SPLIT_FROM_JOBS = 4


def plan_pieces(
    sections: list[tuple[int, int]], jobs: int, *, min_piece: int | None = None
) -> list[Piece]:
    """Cut COPY blocks bigger than a fair share into pieces, so one big table (a CRM's activity
    log is often most of the dump) loads on every connection rather than on one.

    Only from ``SPLIT_FROM_JOBS`` connections: a piece is a plain ``COPY`` (the whole block of a
    created table loads with FREEZE), and on two connections whole tables with FREEZE were
    faster (docs/performance.md: 14.8-15.8 s against 16.3-19.4 s for pieces on 494 MB).
    """
    if jobs < SPLIT_FROM_JOBS:
        return [Piece(index, start, end) for index, (start, end) in enumerate(sections)]
    total = sum(end - start for start, end in sections)
    target = max(MIN_PIECE if min_piece is None else min_piece, total // max(1, jobs * 4))
    pieces: list[Piece] = []
    for index, (start, end) in enumerate(sections):
        count = max(1, (end - start) // target)
        if count == 1:
            pieces.append(Piece(index, start, end))
            continue
        cuts = [start + (end - start) * k // count for k in range(1, count)]
        bounds: list[int | None] = [None, *cuts, None]
        for a, b in itertools.pairwise(bounds):
            pieces.append(Piece(index, start, end, a, b))
    return pieces


_TERMINATOR = b"\\.\n"


class CopyPiece:
    """A reader of one ``Piece`` as a script for its own connection (see ``Piece``).

    A whole block of a table the restore created becomes ``BEGIN; TRUNCATE ONLY t; COPY …
    WITH (FREEZE); COMMIT;``: truncating in the loading transaction is what lets PostgreSQL
    write the rows frozen (the table is empty: the pre-data just created it). A piece of a
    split block is a plain ``COPY`` of its rows, committed on its own; an empty piece (a cut
    inside the last row) sends nothing.
    """

    def __init__(
        self, piece: Piece, open_range: Callable[[int, int], Reader], created: set[bytes]
    ) -> None:
        self.piece = piece
        self._open = open_range
        self._created = created
        self._gen = self._script()
        self.frozen = False
        self.table: bytes | None = None  # as the COPY line names it, once read

    def read(self, size: int = _READ) -> bytes:
        return next(self._gen, b"")

    def _script(self) -> Iterator[bytes]:
        piece = self.piece
        rows_end = piece.end - len(_TERMINATOR)
        if piece.cut_from is None:
            source = self._open(piece.start, rows_end)
            line, data = copy_statement(source)
            position = piece.start + len(line)  # stream offset of data[0]
        else:
            line = self._copy_line()
        match = COPY_LINE.match(line)
        if match is None:
            raise RestoreError(
                f"a COPY section of the backup does not start with a COPY line: {line[:80]!r}"
            )
        self.table = match.group(1)
        if piece.cut_from is not None:
            source = self._open(piece.cut_from - 1, rows_end)
            skipped, data = _first_line(source, b"")  # to the first row starting at the cut
            position = piece.cut_from - 1 + len(skipped)
            if position >= rows_end:
                return  # the cut fell inside the last row: the previous piece has it all
        if piece.whole and match.group(1) in self._created:
            self.frozen = True
            yield b"BEGIN;\nTRUNCATE ONLY " + match.group(1) + b";\n"
            yield with_freeze(line)
        else:
            yield line
        # The piece ends with the row holding byte ``stop``: the next piece starts after it.
        stop = None if piece.cut_to is None else piece.cut_to - 1
        if stop is None or position <= stop:
            while True:
                if data:
                    if stop is not None and position + len(data) > stop:
                        nl = data.find(b"\n", max(0, stop - position))
                        if nl >= 0:
                            yield data[: nl + 1]
                            break
                    position += len(data)
                    yield data
                data = source.read(_READ)
                if not data:
                    break
        yield _TERMINATOR
        if self.frozen:
            yield b"COMMIT;\n"

    def _copy_line(self) -> bytes:
        """The block's COPY statement, for a piece that starts further in."""
        piece = self.piece
        line, _ = copy_statement(self._open(piece.start, min(piece.end, piece.start + (4 << 20))))
        return line


class _Recording:
    """A reader that keeps what it hands out."""

    def __init__(self, source: Reader) -> None:
        self.source = source
        self.seen: list[bytes] = []

    def read(self, size: int = _READ) -> bytes:
        data = self.source.read(size)
        self.seen.append(data)
        return data


def copy_statement(source: Reader) -> tuple[bytes, bytes]:
    """Read a COPY block's head from ``source``: (its ``COPY … FROM stdin;`` statement through
    the end of its line, what was read after that). The statement may span lines (a column
    name may hold a newline), so it is found by ``PgScriptLexer``, not as a line."""
    recording = _Recording(source)
    data_at = None
    for piece in PgScriptLexer(recording):
        if piece.kind == "data":
            data_at = piece.offset
            break
    read = b"".join(recording.seen)
    if data_at is None:
        return read, b""
    return read[:data_at], read[data_at:]


def _first_line(source: Reader, head: bytes) -> tuple[bytes, bytes]:
    """Read ``source`` up to and including its first newline: (line, what was read after it).
    At the end of ``source`` without a newline, the line is all that was read."""
    while b"\n" not in head:
        data = source.read(_READ)
        if not data:
            return head, b""
        head += data
    nl = head.index(b"\n") + 1
    return head[:nl], head[nl:]


def balance(sizes: list[int], jobs: int) -> list[list[int]]:
    """Indexes of ``sizes`` in ``jobs`` bins of similar totals (largest first, into the
    lightest bin); each bin keeps stream order. Empty bins are dropped."""
    heap = [(0, job) for job in range(jobs)]
    bins: list[list[int]] = [[] for _ in range(jobs)]
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        total, job = heapq.heappop(heap)
        bins[job].append(index)
        heapq.heappush(heap, (total + sizes[index], job))
    return [sorted(b) for b in bins if b]


class PostDataQueue:
    """Independent post-data items handed to connections as soon as their table is loaded.

    While one connection still loads a big table, another that has finished its share builds
    the indexes and keys of the tables already loaded (as ``pg_restore -j`` schedules by
    dependency). An item whose table is not known waits until every table is loaded.
    """

    def __init__(self, items: list[bytes]) -> None:
        self._waiting = [(item_table(sql), sql) for sql in items]
        self._loaded: set[bytes] = set()
        self._all_loaded = False
        self._cancelled = False
        self._cond = threading.Condition()

    def loaded(self, tables: Iterable[bytes], *, everything: bool = False) -> None:
        with self._cond:
            self._loaded.update(tables)
            self._all_loaded = self._all_loaded or everything
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def take(self) -> bytes | None:
        """The next item that may run now; waits while items wait for data; None when done."""
        with self._cond:
            while not self._cancelled and self._waiting:
                for index, (table, sql) in enumerate(self._waiting):
                    if self._all_loaded or (table is not None and table in self._loaded):
                        del self._waiting[index]
                        return sql
                self._cond.wait()
            return None


def run_together(
    tasks: list[Callable[[], None]], cancel: threading.Event, queue: PostDataQueue
) -> None:
    """Run ``tasks`` (one per connection) at once. The first failure cancels the others (their
    ``ChainReader`` raises ``Cancelled``, the queue hands out nothing more) and is raised."""
    failures: list[BaseException] = []
    lock = threading.Lock()

    def guarded(task: Callable[[], None]) -> None:
        try:
            task()
        except BaseException as exc:
            with lock:
                failures.append(exc)
            cancel.set()
            queue.cancel()
            raise

    with ThreadPoolExecutor(len(tasks), thread_name_prefix="crmmaint-restore") as pool:
        for future in [pool.submit(guarded, task) for task in tasks]:
            future.exception()
    if failures:
        raise next((e for e in failures if not isinstance(e, Cancelled)), failures[0])
