"""Split a plain pg_dump stream at its post-data section, so a restore can build indexes and
constraints on several connections (as ``pg_restore -j`` does) while the data still streams.

With ``freeze=True`` (a restore that loads in one transaction) every ``COPY … FROM stdin;`` of a
table the stream itself created becomes ``COPY … FROM stdin WITH (FREEZE);``: the rows are
written frozen and all-visible, so the index builds and the row counts that follow do not
rewrite every page to set hint bits (13-23% faster on the benchmark's dump, docs/performance.md).
PostgreSQL allows FREEZE only for a table created in the current transaction and never for a
partitioned parent, so tables not created in the stream, and ``PARTITION BY`` parents, keep a
plain COPY.

pg_dump's plain format heads every object with a comment ``-- Name: …; Type: INDEX; …`` (data
with ``-- Data for Name: …; Type: TABLE DATA; …``). ``PostDataSplit`` passes everything up to the
first post-data object through unchanged, skipping over ``COPY`` blocks without looking at their
rows, and keeps the post-data DDL (small: statements, no data) aside. ``post_data_phases`` then
groups that DDL into phases: runs of independent single-table items (indexes, primary keys,
unique and check constraints) that may run in parallel, and everything else in dump order.
"""

from __future__ import annotations

import heapq
import itertools
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from crmmaint.engines.base import Reader
from crmmaint.errors import RestoreError

#: Object types of pg_dump's data section.
DATA_TYPES = frozenset({b"TABLE DATA", b"SEQUENCE SET", b"BLOB", b"BLOBS", b"BLOB DATA"})
#: Types that start the post-data section once data has been seen.
POST_DATA_TYPES = frozenset(
    {
        b"CONSTRAINT",
        b"INDEX",
        b"FK CONSTRAINT",
        b"INDEX ATTACH",
        b"TRIGGER",
        b"RULE",
        b"POLICY",
        b"EVENT TRIGGER",
        b"MATERIALIZED VIEW DATA",
        b"PUBLICATION TABLE",
    }
)
#: Post-data items that touch one table and depend on nothing but the data: safe in parallel
#: (foreign keys lock two tables and could deadlock, so they stay sequential).
PARALLEL_TYPES = frozenset({"INDEX", "CONSTRAINT"})

_HEADER = re.compile(rb"^-- (?:Data for )?Name: .*?; Type: ([A-Z ]+);")
#: One SQL identifier as pg_dump writes it: quoted (with doubled quotes) or bare.
IDENT = rb'(?:"(?:[^"]|"")*"|[^\s."(]+)'
_QUALIFIED = IDENT + rb"(?:\." + IDENT + rb")?"  # schema.table or table
_CREATE_TABLE = re.compile(rb"^CREATE (?:UNLOGGED )?TABLE (" + _QUALIFIED + rb") ")
_COPY_LINE = re.compile(rb"^COPY (" + _QUALIFIED + rb") .*FROM stdin;\n$")
_COPY_END = b"\n\\.\n"


def _with_freeze(copy_line: bytes) -> bytes:
    """``COPY t (…) FROM stdin;\\n`` -> ``COPY t (…) FROM stdin WITH (FREEZE);\\n``."""
    return copy_line[: -len(b";\n")] + b" WITH (FREEZE);\n"


_READ = 1 << 20


class PostDataSplit:
    """A reader over a plain dump that stops where post-data begins (see the module docstring).

    ``preamble`` holds the session settings at the top of the dump (``SET …``), which every
    post-data connection must repeat; ``post`` holds the post-data text once reading is done.
    """

    def __init__(self, source: Reader, *, freeze: bool = False, seen_data: bool = False) -> None:
        self._source = source
        self._freeze = freeze
        self._creating: bytes | None = None  # the table whose CREATE TABLE is being read
        self._partitioned = False
        self.created: set[bytes] = set()
        self.frozen = 0
        self._buf = b""
        self._out: deque[bytes] = deque()
        self._state = "main"  # main | copy | done
        self._seen_header = False
        self._seen_data = seen_data  # True for a stream that starts inside the data section
        self._eof = False
        self.preamble = b""
        self.post = b""

    def read(self, size: int = _READ) -> bytes:
        while not self._out and self._state != "done":
            self._advance()
        if not self._out:
            return b""
        chunk = self._out.popleft()
        if len(chunk) > size:
            self._out.appendleft(chunk[size:])
            chunk = chunk[:size]
        return chunk

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._source.read(_READ)
        if not data:
            self._eof = True
            return False
        self._buf = self._buf + data if self._buf else data
        return True

    def _advance(self) -> None:
        if self._state == "copy":
            self._advance_copy()
        else:
            self._advance_lines()

    def _advance_copy(self) -> None:
        buf = self._buf
        if buf.startswith(b"\\.\n"):
            end = 3
        else:
            found = buf.find(_COPY_END)
            end = found + len(_COPY_END) if found >= 0 else -1
        if end >= 0:
            self._out.append(buf[:end])
            self._buf = buf[end:]
            self._state = "main"
            return
        keep = len(_COPY_END) - 1
        if len(buf) > keep:
            self._out.append(buf[:-keep])
            self._buf = buf[-keep:]
        if not self._fill():
            self._finish()

    def _advance_lines(self) -> None:
        """Pass DDL lines through one by one until a COPY starts or post-data begins."""
        pos = 0
        buf = self._buf
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            line = buf[pos : nl + 1]
            match = _HEADER.match(line)
            if match:
                kind = match.group(1)
                self._seen_header = True
                if kind in DATA_TYPES:
                    self._seen_data = True
                elif self._seen_data and kind in POST_DATA_TYPES:
                    self._out.append(buf[:pos])
                    self._buf = buf[pos:]
                    self._take_post()
                    return
            elif not self._seen_header:
                self.preamble += line
            if self._freeze:
                self._track_create(line)
            if line.startswith(b"COPY ") and line.rstrip().endswith(b"FROM stdin;"):
                if pos:
                    self._out.append(buf[:pos])
                self._out.append(self._copy_line(line))
                self._buf = buf[nl + 1 :]
                self._state = "copy"
                return
            pos = nl + 1
        if pos:
            self._out.append(buf[:pos])
            self._buf = buf[pos:]
            return
        if not self._fill():
            self._finish()

    def _track_create(self, line: bytes) -> None:
        """Note the tables this stream creates (``CREATE TABLE`` … up to the closing ``;``)."""
        if self._creating is None:
            match = _CREATE_TABLE.match(line)
            if not match:
                return
            self._creating, self._partitioned = match.group(1), False
        if line.startswith(b"PARTITION BY ") or b") PARTITION BY " in line:
            self._partitioned = True
        if line.rstrip().endswith(b";"):
            if not self._partitioned:
                self.created.add(self._creating)
            self._creating = None

    def _copy_line(self, line: bytes) -> bytes:
        """``line`` with ``WITH (FREEZE)`` when freezing applies to its table (module docstring)."""
        if not self._freeze:
            return line
        match = _COPY_LINE.match(line)
        if match is None or match.group(1) not in self.created:
            return line
        self.frozen += 1
        return _with_freeze(line)

    def _take_post(self) -> None:
        parts = [self._buf]
        self._buf = b""
        while self._fill():
            parts.append(self._buf)
            self._buf = b""
        self.post = b"".join(parts)
        self._state = "done"

    def _finish(self) -> None:
        if self._buf:
            self._out.append(self._buf)
            self._buf = b""
        self._state = "done"


@dataclass
class PostDataItem:
    kind: str
    sql: bytes


def post_data_items(post: bytes) -> list[PostDataItem]:
    """Cut post-data text into items at pg_dump's object headers, keeping dump order."""
    items: list[PostDataItem] = []
    kind, start = "", 0
    pos = 0
    while pos < len(post):
        nl = post.find(b"\n", pos)
        end = len(post) if nl < 0 else nl + 1
        match = _HEADER.match(post[pos:end])
        if match:
            # The header block starts at the "--" line just above the "-- Name:" line.
            block = post.rfind(b"--\n", start, pos)
            cut = block if block >= start and block == pos - 3 else pos
            if cut > start:
                items.append(PostDataItem(kind, post[start:cut]))
            kind, start = match.group(1).decode("ascii"), cut
        pos = end
    if start < len(post):
        items.append(PostDataItem(kind, post[start:]))
    return [item for item in items if item.sql.strip()]


def post_data_phases(post: bytes) -> list[tuple[bool, list[bytes]]]:
    """Phases to run in order: ``(parallel, [sql, …])``; a parallel phase's statements are
    independent single-table items, a sequential phase is one script in dump order."""
    phases: list[tuple[bool, list[bytes]]] = []
    for item in post_data_items(post):
        parallel = item.kind in PARALLEL_TYPES
        if phases and phases[-1][0] == parallel:
            if parallel:
                phases[-1][1].append(item.sql)
            else:
                phases[-1][1][0] += item.sql
        else:
            phases.append((parallel, [item.sql]))
    return phases


# --- parallel data loads ------------------------------------------------------------------------


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
            line, data = _first_line(source, b"")
            position = piece.start + len(line)  # stream offset of data[0]
        else:
            line = self._copy_line()
        match = _COPY_LINE.match(line)
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
            yield _with_freeze(line)
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
        """The block's COPY line, for a piece that starts further in (read from a small range)."""
        piece = self.piece
        line, _ = _first_line(self._open(piece.start, min(piece.end, piece.start + 65536)), b"")
        if not line.endswith(b"\n"):
            line, _ = _first_line(self._open(piece.start, piece.end), b"")
        return line


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


_ITEM_TABLE = re.compile(
    rb"^(?:ALTER TABLE (?:ONLY )?(" + _QUALIFIED + rb")"
    rb"|CREATE (?:UNIQUE )?INDEX " + IDENT + rb" ON (?:ONLY )?(" + _QUALIFIED + rb") )",
    re.MULTILINE,
)


def item_table(sql: bytes) -> bytes | None:
    """The table a post-data index or single-table constraint is built on, as pg_dump names it
    (``public.customers``), or None when the statement is not one of those."""
    match = _ITEM_TABLE.search(sql)
    return None if match is None else (match.group(1) or match.group(2))


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
