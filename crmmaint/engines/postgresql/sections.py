"""Where things lie in a plain pg_dump stream: its table data and its post-data section.

At backup time ``CopyRowCounter`` counts the rows of every ``COPY`` block as the dump streams
past and records where each block lies (a backup's ``copy_sections``), so a restore can later
read each table's data on its own connection.

At restore time ``PostDataSplit`` splits the stream at its post-data section, so a restore can
build indexes and constraints on several connections (as ``pg_restore -j`` does) while the data
still streams.

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
``load.py``'s part.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import re
from dataclasses import dataclass
from typing import Any

from crmmaint.engines.base import Reader
from crmmaint.engines.postgresql.catalog import table_key
from crmmaint.engines.postgresql.script import PgScriptLexer
from crmmaint.engines.scriptlex import QueueReader

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
        # ENABLE ROW LEVEL SECURITY: pg_dump writes it after the data; loaded before it (the
        # parallel path loads what lies between COPY blocks first), a FORCE'd table's policies
        # would apply to its own rows' owner.
        b"ROW SECURITY",
        b"EVENT TRIGGER",
        b"MATERIALIZED VIEW DATA",
        b"PUBLICATION TABLE",
    }
)
#: Post-data items that touch one table and depend on nothing but the data: safe in parallel
#: (foreign keys lock two tables and could deadlock, so they stay sequential).
PARALLEL_TYPES = frozenset({"INDEX", "CONSTRAINT"})

_HEADER = re.compile(rb"^-- (?:Data for )?Name: .*?; Type: ([A-Z ]+);")
#: One SQL identifier as pg_dump writes it: quoted (with doubled quotes, any character) or bare.
IDENT = rb'(?:"(?:[^"]|"")*"|[^\s."(]+)'
_QUALIFIED = IDENT + rb"(?:\." + IDENT + rb")?"  # schema.table or table
_CREATE_TABLE = re.compile(rb"CREATE (?:UNLOGGED )?TABLE (" + _QUALIFIED + rb")[ (]")
#: A ``COPY … FROM stdin;`` statement (it may span lines: a column name may hold a newline).
COPY_LINE = re.compile(rb"COPY (" + _QUALIFIED + rb") .*FROM stdin;\n?\Z", re.DOTALL)


def with_freeze(copy_line: bytes) -> bytes:
    """``COPY t (…) FROM stdin;[\\n]`` -> ``COPY t (…) FROM stdin WITH (FREEZE);[\\n]``."""
    end = copy_line.rindex(b";")
    return copy_line[:end] + b" WITH (FREEZE)" + copy_line[end:]


class PostDataSplit(QueueReader):
    """A reader over a plain dump that stops where post-data begins (see the module docstring).

    ``preamble`` holds the session settings at the top of the dump (``SET …``), which every
    post-data connection must repeat; ``post`` holds the post-data text once reading is done.
    The dump is walked by ``PgScriptLexer``: object headers are only comments between
    statements, a ``COPY`` block only where psql would read one, whatever a function body,
    string or quoted name holds.
    """

    def __init__(self, source: Reader, *, freeze: bool = False, seen_data: bool = False) -> None:
        super().__init__()
        self._lexer = PgScriptLexer(source)
        self._pieces = iter(self._lexer)
        self._freeze = freeze
        self.created: set[bytes] = set()
        self.frozen = 0
        self._held: list[bytes] = []  # a CREATE TABLE or COPY statement under way
        self._seen_header = False
        self._seen_data = seen_data  # True for a stream that starts inside the data section
        self.preamble = b""
        self.post = b""

    def _fill(self) -> None:
        piece = next(self._pieces, None)
        if piece is None:
            self._done = True
            return
        if piece.kind == "gap" and piece.data.startswith(b"-- "):
            match = _HEADER.match(piece.data)
            if match:
                kind = match.group(1)
                self._seen_header = True
                if kind in DATA_TYPES:
                    self._seen_data = True
                elif self._seen_data and kind in POST_DATA_TYPES:
                    self._take_post(piece.data)
                    return
        if not self._seen_header and len(self.preamble) < MAX_PREAMBLE:
            # pg_dump's preamble is a few SET lines; a text without object headers (not
            # pg_dump's) stops being copied here rather than grow one copy per line.
            self.preamble += piece.data
        if piece.kind != "statement":
            self._out.append(piece.data)
            return
        tokens = self._lexer.statement.tokens
        if not (self._held or (tokens and tokens[0] in (b"CREATE", b"COPY"))):
            self._out.append(piece.data)
            return
        self._held.append(piece.data)
        if piece.last:
            statement, self._held = b"".join(self._held), []
            self._out.append(self._statement(statement, tokens))
        elif sum(map(len, self._held)) > MAX_PREAMBLE:  # a long CREATE: not one to note
            self._out.append(b"".join(self._held))
            self._held = []

    def _statement(self, text: bytes, tokens: list[bytes]) -> bytes:
        """Note the tables this stream creates; ``WITH (FREEZE)`` where it applies."""
        if not self._freeze:
            return text
        if tokens[0] == b"CREATE":
            match = _CREATE_TABLE.match(text)
            partitioned = any(
                a == b"PARTITION" and b == b"BY" for a, b in itertools.pairwise(tokens)
            )
            if match and not partitioned:
                self.created.add(match.group(1))
            return text
        if not self._lexer.statement.copy_from_stdin:
            return text
        match = COPY_LINE.match(text)
        if match is None or match.group(1) not in self.created:
            return text
        self.frozen += 1
        return with_freeze(text)

    def _take_post(self, first: bytes) -> None:
        parts = [first]
        parts += [piece.data for piece in self._pieces]
        self.post = b"".join(parts)
        self._done = True


@dataclass
class PostDataItem:
    kind: str
    sql: bytes


def post_data_items(post: bytes) -> list[PostDataItem]:
    """Cut post-data text into items at pg_dump's object headers (comments between
    statements, found by ``PgScriptLexer``), keeping dump order. An item starts at the
    ``--`` line just above its ``-- Name:`` line."""
    items: list[PostDataItem] = []
    kind, start = "", 0
    previous: tuple[int, bytes] = (-1, b"")  # the gap piece before, and where it starts
    for piece in PgScriptLexer(io.BytesIO(post)):
        if piece.kind == "gap" and piece.data.startswith(b"-- "):
            match = _HEADER.match(piece.data)
            if match:
                at, data = previous
                cut = (
                    at
                    if data == b"--\n" and at + 3 == piece.offset and at >= start
                    else piece.offset
                )
                if cut > start:
                    items.append(PostDataItem(kind, post[start:cut]))
                kind, start = match.group(1).decode("ascii"), cut
        previous = (piece.offset, piece.data)
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


#: The table a ``COPY`` statement names, schema-qualified as pg_dump writes it (a quoted name
#: may hold any character, newlines included).
_COPY_TABLE = re.compile(rb"COPY (" + IDENT + rb")\.(" + IDENT + rb")[ (]", re.DOTALL)


def _unquote(ident: bytes) -> str:
    text = ident.decode("utf-8")
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text


class CopyRowCounter:
    """Counts the data rows of every ``COPY … FROM stdin`` block in a plain pg_dump stream.

    Works chunk by chunk without holding the stream, on ``PgScriptLexer``: a block is one only
    where psql would take it for one (never a function body or string that looks like one), and
    inside it the rows are counted as newlines in C (``bytes.count``) up to the ``\\.`` line.
    ``sections`` records where each block lies in the stream, ``[start, end)`` from its ``COPY``
    statement to just after its terminator, so a restore can later read the tables' data on
    several connections at once. ``checksums`` holds the sha256 of each table's rows as the
    dump wrote them (the block's data without its ``\\.`` line): a drill dumps its restored
    copy again and compares (``DatabaseEngine.content_checksums``).
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._hashes: dict[str, Any] = {}
        self.sections: list[tuple[int, int]] = []
        self._lexer = PgScriptLexer()
        self._statement: list[bytes] = []  # the COPY statement under way
        self._start = 0
        self._table: str | None = None

    def feed(self, chunk: bytes) -> None:
        """Count what ``chunk`` completes; an empty chunk ends the stream."""
        for piece in self._lexer.feed(chunk):
            if piece.kind == "statement":
                tokens = self._lexer.statement.tokens
                if tokens and tokens[0] == b"COPY":
                    if not self._statement:
                        self._start = piece.offset
                    self._statement.append(piece.data)
                    if piece.last:
                        self._begin_block()
            elif piece.kind == "data" and self._table is not None:
                rows = piece.data.count(b"\n")
                if piece.last:
                    ended = piece.data.endswith(b"\\.\n")
                    rows -= 1 if ended else 0
                    self._hashes[self._table].update(piece.data[:-3] if ended else piece.data)
                    self.counts[self._table] += rows
                    self.sections.append((self._start, piece.offset + len(piece.data)))
                    self._table = None
                else:
                    self._hashes[self._table].update(piece.data)
                    self.counts[self._table] += rows

    @property
    def checksums(self) -> dict[str, str]:
        """sha256 (hex) of each table's rows, by table (``table_key``)."""
        return {table: h.hexdigest() for table, h in sorted(self._hashes.items())}

    def _begin_block(self) -> None:
        text, self._statement = b"".join(self._statement), []
        match = _COPY_TABLE.match(text) if self._lexer.statement.copy_from_stdin else None
        if match is None:
            return
        self._table = table_key(_unquote(match.group(1)), _unquote(match.group(2)))
        self.counts.setdefault(self._table, 0)
        self._hashes.setdefault(self._table, hashlib.sha256())
