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
unique and check constraints) that may run in parallel, and everything else in dump order;
``item_table`` names the table such an item is built on. Loading on several connections is
``pgload``'s part.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from crmmaint.engines.base import Reader

#: The session settings at the top of a plain dump kept for the other connections (pg_dump
#: writes well under 2 KiB of them).
MAX_PREAMBLE = 64 << 10

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
COPY_LINE = re.compile(rb"^COPY (" + _QUALIFIED + rb") .*FROM stdin;\n$")
_COPY_END = b"\n\\.\n"


def with_freeze(copy_line: bytes) -> bytes:
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
            elif not self._seen_header and len(self.preamble) < MAX_PREAMBLE:
                # pg_dump's preamble is a few SET lines; a text without object headers (not
                # pg_dump's) stops being copied here rather than grow one copy per line.
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
        match = COPY_LINE.match(line)
        if match is None or match.group(1) not in self.created:
            return line
        self.frozen += 1
        return with_freeze(line)

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
