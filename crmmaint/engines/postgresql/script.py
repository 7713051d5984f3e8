"""A streaming lexer for psql scripts (pg_dump's plain format) that knows where statements end.

A line of a dump can be a statement, part of a string, of a dollar-quoted function body, of a
quoted identifier, of a comment or a row of ``COPY`` data; which one it is cannot be read from
the line alone. ``PgScriptLexer`` walks the script with the lexical rules psql itself uses to
cut statements (psqlscan.l): ``'…'`` strings with doubled quotes, ``E'…'`` strings with
backslash escapes, ``"…"`` identifiers, ``$tag$…$tag$`` bodies, ``--`` and nested ``/* */``
comments, parentheses, and the ``BEGIN … END`` of an SQL-standard function body (a ``;`` ends
a statement only outside all of them), then the data of a ``COPY … FROM stdin`` up to its
``\\.`` line. It yields the script back in pieces, each marked with what it is
(``ScriptPiece``), and keeps no more than one line (capped) plus one held statement in memory.

pg_dump writes ``standard_conforming_strings = on`` at the top of every dump, and crmmaint pins
it on every session (``SESSION_PINS``); the lexer reads ``'…'`` strings that way. A forged script
that turns it off can make the lexer and the server disagree about where a string ends; what
such a script can do is then bounded by the privileges it loads with, not by this lexer.

``RestoreScript`` uses it to drop pg_dump's own ``\\restrict`` lines (psql runs the restore in
restricted mode) and, in a least-privilege restore, the dump's ``ALTER … OWNER TO`` and ``ALTER
DEFAULT PRIVILEGES FOR ROLE`` statements (the loading role may not act for other roles), each
recognised between statements or as a whole statement, never inside a body, string or row.
"""

from __future__ import annotations

import itertools
import re
import secrets

from crmmaint.engines.base import Reader
from crmmaint.engines.scriptlex import QueueReader, ScriptPiece, StreamLexer

#: Depth-0 words kept per statement (for ``COPY … FROM stdin`` and statement recognition).
MAX_WORDS = 64

#: Tokens that change the lexer's state in a statement or between statements. A word is an
#: identifier or keyword (``$`` may follow its first character); a dollar quote's tag must not.
_TOKEN = re.compile(
    rb"""(?P<word>[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)
    |(?P<num>[0-9]+)
    |(?P<dollar>\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$)
    |(?P<punct>[;'"().\\])
    |(?P<comment>--|/\*)""",
    re.VERBOSE,
)
_SPACE = re.compile(rb"[ \t\r\n\f\v]+")
_BLOCK = re.compile(rb"/\*|\*/")
_ESTRING_STOP = re.compile(rb"['\\]")
_COPY_END = b"\n\\.\n"

#: ``CREATE [OR REPLACE] FUNCTION|PROCEDURE``: psql tracks ``BEGIN … END`` only in these.
_ROUTINE_HEADS = ((b"CREATE", b"FUNCTION"), (b"CREATE", b"PROCEDURE"))
_ROUTINE_HEADS_OR = (
    (b"CREATE", b"OR", b"REPLACE", b"FUNCTION"),
    (b"CREATE", b"OR", b"REPLACE", b"PROCEDURE"),
)


class Statement:
    """What the lexer learnt about one top-level statement: its depth-0 tokens (words
    upper-cased, at most ``MAX_WORDS``; quoted identifiers as ``b'"'``, numbers as ``b'0'``,
    a parenthesised group as ``b'('``) and whether it starts a ``COPY … FROM stdin``."""

    def __init__(self) -> None:
        self.tokens: list[bytes] = []
        self.paren = 0
        self.begin = 0

    def add(self, token: bytes) -> None:
        if len(self.tokens) < MAX_WORDS:
            self.tokens.append(token)

    @property
    def copy_from_stdin(self) -> bool:
        tokens = self.tokens
        if not tokens or tokens[0] != b"COPY":
            return False
        return any(a == b"FROM" and b == b"STDIN" for a, b in itertools.pairwise(tokens))

    @property
    def routine(self) -> bool:
        head = tuple(t for t in self.tokens[:4])
        return head[:2] in _ROUTINE_HEADS or head[:4] in _ROUTINE_HEADS_OR


class PgScriptLexer(StreamLexer):
    """Cut a psql script into ``ScriptPiece`` s (see the module docstring): iterate once over
    the ``source`` reader, or ``feed`` it chunks. ``statement`` describes the statement the
    latest ``"statement"`` piece belongs to (valid until the next statement starts)."""

    def __init__(self, source: Reader | None = None) -> None:
        super().__init__(source)
        self._mode = "gap"  # gap | statement | data
        self._inner: str | None = None  # squote | estring | dquote | dollar | block | line
        self._tag = b""
        self._block_depth = 0
        self._data_line_start = True  # the next data byte starts a line of the COPY block
        self.statement = Statement()

    @property
    def _data_mode(self) -> bool:
        return self._mode == "data"

    def _state(self) -> tuple[object, ...]:
        return self._mode, self._inner

    def _step(self, buf: bytes, pos: int, end: int) -> tuple[int, list[ScriptPiece]]:
        if self._mode == "data":
            return self._data(buf, pos, end)
        if self._inner is not None:
            return self._inside(buf, pos, end)
        return self._code(buf, pos, end)

    def _piece(
        self, kind: str, buf: bytes, start: int, end: int, last: bool = False
    ) -> ScriptPiece:
        return ScriptPiece(
            kind, buf[start:end], self._offset + start, last, self._inner is not None
        )

    # --- data -------------------------------------------------------------------------------

    def _data(self, buf: bytes, pos: int, end: int) -> tuple[int, list[ScriptPiece]]:
        if self._data_line_start and (
            buf.startswith(b"\\.\n", pos) or (self._eof and buf[pos:end] == b"\\.")
        ):
            stop = min(pos + 3, end)
            self._mode = "gap"
            return stop, [self._piece("data", buf, pos, stop, last=True)]
        found = buf.find(_COPY_END, pos, end)
        if found >= 0:
            stop = found + len(_COPY_END)
            self._mode = "gap"
            return stop, [self._piece("data", buf, pos, stop, last=True)]
        if self._eof:  # a block the script never ends: psql would fail it too
            self._mode = "gap"
            return end, [self._piece("data", buf, pos, end, last=True)]
        # Hold back only a tail that may begin the terminator (most chunks end mid-row: the
        # whole chunk is handed on uncopied).
        hold = next((k for k in (3, 2, 1) if buf.startswith(_COPY_END[:k], end - k)), 0)
        stop = end - hold
        if stop <= pos:
            return pos, []
        self._data_line_start = buf[stop - 1 : stop] == b"\n"
        return stop, [self._piece("data", buf, pos, stop)]

    # --- inside a string, identifier, body or comment ---------------------------------------

    def _inside(self, buf: bytes, pos: int, end: int) -> tuple[int, list[ScriptPiece]]:
        """Up to the end of the string, identifier, body or comment under way."""
        stop, wait = self._closer(buf, pos, end)
        kind = "statement" if self._mode == "statement" else "gap"
        if stop < 0:
            wait = self._safe_end(buf, pos, end, len(self._tag) if self._inner == "dollar" else 2)
            return wait, [self._piece(kind, buf, pos, wait)] if wait > pos else []
        if wait:
            return stop, [self._piece(kind, buf, pos, stop)] if stop > pos else []
        self._inner = None
        return stop, [self._piece(kind, buf, pos, stop)]

    def _closer(self, buf: bytes, pos: int, end: int) -> tuple[int, bool]:
        """Where the construct under way ends (-1: not before ``end``), and whether the lexer
        must wait for more script to tell (a quote or backslash at the very end of a slice)."""
        inner = self._inner
        if inner == "squote" or inner == "dquote":
            quote = b"'" if inner == "squote" else b'"'
            at = pos
            while (q := buf.find(quote, at, end)) >= 0:
                if q + 1 == end and not self._eof and buf[end - 1 : end] != b"\n":
                    return q, True  # a doubled quote may straddle the slice
                if buf.startswith(quote, q + 1) and q + 1 < end:
                    at = q + 2  # a doubled quote stands for itself
                    continue
                return q + 1, False
            return -1, False
        if inner == "estring":
            at = pos
            while (match := _ESTRING_STOP.search(buf, at, end)) is not None:
                q = match.start()
                if q + 1 == end and not self._eof:
                    return q, True
                if match.group() == b"\\":
                    at = q + 2  # the escaped byte, whatever it is
                    continue
                if buf.startswith(b"'", q + 1):
                    at = q + 2
                    continue
                return q + 1, False
            return -1, False
        if inner == "line":
            nl = buf.find(b"\n", pos, end)
            return (nl + 1 if nl >= 0 else -1), False
        if inner == "dollar":
            q = buf.find(self._tag, pos, end)
            return (q + len(self._tag) if q >= 0 else -1), False
        at = pos  # a block comment, nested
        while (match := _BLOCK.search(buf, at, end)) is not None:
            at = match.end()
            self._block_depth += 1 if match.group() == b"/*" else -1
            if self._block_depth == 0:
                return at, False
        return -1, False

    # --- code: between statements and in one ------------------------------------------------

    def _code(self, buf: bytes, pos: int, end: int) -> tuple[int, list[ScriptPiece]]:
        if self._mode == "gap":
            space = _SPACE.match(buf, pos, end)
            if space:
                return space.end(), [self._piece("gap", buf, pos, space.end())]
            if end - pos < 2 and self._safe_end(buf, pos, end, 2) == pos:
                return pos, []  # one byte of a "--" or "/*" perhaps
            if buf.startswith(b"--", pos) or buf.startswith(b"\\", pos):
                self._inner = "line"  # a comment, or a psql meta-command: up to the line's end
                return pos, []
            if buf.startswith(b"/*", pos):
                self._inner, self._block_depth = "block", 1
                return pos + 2, [self._piece("gap", buf, pos, pos + 2)]
            self._mode = "statement"
            self.statement = Statement()
        return self._statement(buf, pos, end)

    def _statement(self, buf: bytes, pos: int, end: int) -> tuple[int, list[ScriptPiece]]:
        """Lex statement text from ``pos`` until its ``;``, a string or comment, or ``end``."""
        st = self.statement
        start = pos
        previous_word = b""
        # Mid-line (a slice of a very long line), a token near the end may continue in the
        # next chunk: stop before it and wait.
        limit = self._safe_end(buf, pos, end, 256)
        while True:
            match = _TOKEN.search(buf, pos, end)
            if match is None or match.start() >= limit:
                stop = limit if match is None else max(pos, match.start())
                return stop, [self._piece("statement", buf, start, stop)] if stop > start else []
            kind = match.lastgroup
            token = match.group()
            pos = match.end()
            if kind == "word":
                word = token.upper()
                previous_word = word
                if st.paren == 0:
                    st.add(word)
                    if st.routine:
                        if word == b"BEGIN" or (word == b"CASE" and st.begin):
                            st.begin += 1
                        elif word == b"END" and st.begin:
                            st.begin -= 1
                continue
            if kind == "num":
                if st.paren == 0:
                    st.add(b"0")
                previous_word = b""
                continue
            if kind == "dollar":
                self._inner, self._tag = "dollar", token
                return pos, [self._piece("statement", buf, start, pos)]
            if kind == "comment":
                if token == b"--":
                    self._inner = "line"
                else:
                    self._inner, self._block_depth = "block", 1
                return pos, [self._piece("statement", buf, start, pos)]
            # punctuation
            if token == b"'":
                e_prefix = (
                    previous_word == b"E"
                    and match.start() > 0
                    and buf[match.start() - 1 : match.start()] in b"Ee"
                )
                self._inner = "estring" if e_prefix else "squote"
                return pos, [self._piece("statement", buf, start, pos)]
            previous_word = b""
            if token == b'"':
                if st.paren == 0:
                    st.add(b'"')
                self._inner = "dquote"
                return pos, [self._piece("statement", buf, start, pos)]
            if token == b"(":
                if st.paren == 0:
                    st.add(b"(")
                st.paren += 1
            elif token == b")":
                st.paren = max(0, st.paren - 1)
            elif token == b".":
                if st.paren == 0:
                    st.add(b".")
            elif token == b"\\":
                # psql takes a backslash outside quotes for a meta-command up to the line's end
                self._inner = "line"
                return pos, [self._piece("statement", buf, start, pos)]
            elif token == b";" and st.paren == 0 and st.begin == 0:
                self._mode = "gap"
                pieces = [self._piece("statement", buf, start, pos, last=True)]
                if st.copy_from_stdin:
                    # psql reads the rows from the line after the statement's.
                    nl = buf.find(b"\n", pos, end)
                    stop = end if nl < 0 else nl + 1
                    pieces.append(self._piece("gap", buf, pos, stop))
                    self._mode = "data"
                    self._data_line_start = True
                    pos = stop
                return pos, pieces


#: Object kinds of ``ALTER <kind> <name> OWNER TO <role>`` (pg_dump writes one per owned object).
_OWNED_KINDS = {
    (b"TABLE",), (b"SEQUENCE",), (b"VIEW",), (b"MATERIALIZED", b"VIEW"), (b"FUNCTION",),
    (b"PROCEDURE",), (b"ROUTINE",), (b"AGGREGATE",), (b"TYPE",), (b"DOMAIN",), (b"SCHEMA",),
    (b"FOREIGN", b"TABLE"), (b"SERVER",), (b"FOREIGN", b"DATA", b"WRAPPER"),
    (b"TEXT", b"SEARCH", b"CONFIGURATION"), (b"TEXT", b"SEARCH", b"DICTIONARY"),
    (b"COLLATION",), (b"CONVERSION",), (b"OPERATOR",), (b"OPERATOR", b"CLASS"),
    (b"OPERATOR", b"FAMILY"), (b"LARGE", b"OBJECT"), (b"PUBLICATION",), (b"SUBSCRIPTION",),
    (b"EVENT", b"TRIGGER"), (b"STATISTICS",), (b"LANGUAGE",), (b"PROCEDURAL", b"LANGUAGE"),
    (b"DATABASE",),
}  # fmt: skip


def _is_name(tokens: list[bytes]) -> bool:
    """``ident (. ident)* [(args)]`` (operator class names end with ``USING method``)."""
    if tokens and tokens[-1] == b"(":
        tokens = tokens[:-1]
    if len(tokens) >= 3 and tokens[-2] == b"USING":
        tokens = tokens[:-2]
    if not tokens or len(tokens) % 2 == 0:
        return False
    for i, token in enumerate(tokens):
        if i % 2 == 1:
            if token != b".":
                return False
        elif token == b"." or token == b"(":
            return False
    return True


def is_ownership_statement(tokens: list[bytes]) -> bool:
    """Whether a statement's depth-0 tokens (``Statement.tokens``) are ``ALTER <kind> <name>
    OWNER TO <role>``, ``ALTER DEFAULT PRIVILEGES FOR ROLE|USER …`` or ``SET SESSION
    AUTHORIZATION <role>``: statements that act for another role."""
    if tokens[:3] == [b"SET", b"SESSION", b"AUTHORIZATION"]:
        # pg_dump's frame around a grant made by a grantee (WITH GRANT OPTION): the grant
        # then runs as the owner, and the grantee still gets the privilege.
        return tokens[3:4] != [b"DEFAULT"]
    if len(tokens) >= MAX_WORDS or not tokens or tokens[0] != b"ALTER":
        return False
    if tokens[1:4] in ([b"DEFAULT", b"PRIVILEGES", b"FOR"],):
        return True
    if len(tokens) < 5 or tokens[-3:-1] != [b"OWNER", b"TO"] or tokens[-1] == b".":
        return False
    for size in (1, 2, 3):
        kind = tuple(tokens[1 : 1 + size])
        name = tokens[1 + size : -3]
        if kind in _OWNED_KINDS and _is_name(name):
            return True
        if kind == (b"OPERATOR",) and name[-1:] == [b"("] and _is_name(name[:-2] or [b"0"]):
            return True  # schema.=== (left, right): the symbol is no token
    return False


#: A statement held back to see whether it is dropped; longer ones are passed on.
MAX_HELD = 64 << 10


#: pg_dump (15.14+, 16.10+, 17.6+) brackets its output with these meta-command lines.
_DUMP_RESTRICT = re.compile(rb"\\(?:un)?restrict [A-Za-z0-9]+\r?\n?\Z")


class RestoreScript(QueueReader):
    """The script psql is given for a restore: the dump, which a write-key holder may have
    forged, made unable to command psql.

    It opens with ``\\restrict KEY`` (a random key that nothing else knows, and never
    ``\\unrestrict``), so psql itself refuses every backslash command of the dump for the
    whole session, wherever its lexer finds one (``\\!``, ``\\o |cmd``, ``\\copy … program``);
    COPY data is not meta-command text and loads as before. The dump's own ``\\restrict`` /
    ``\\unrestrict`` lines (current pg_dump writes them, with its own key) are dropped: they
    would fail in restricted mode. Only such lines between statements are dropped (found by
    ``PgScriptLexer``): the same text in a function body, string or COPY row is kept. A psql
    too old for ``\\restrict`` fails the restore.

    With ``drop_ownership`` (a least-privilege load) the dump's ownership statements
    (``is_ownership_statement``) are left out too: the loading role may not act for the dump's
    roles, so every object stays owned by it. ``dropped`` counts what was left out.
    """

    def __init__(self, source: Reader, *, drop_ownership: bool = False) -> None:
        super().__init__()
        self._lexer = PgScriptLexer(source)
        self._pieces = iter(self._lexer)
        self._drop_ownership = drop_ownership
        self._held: list[bytes] = []
        self._held_size = 0
        self._out.append(b"\\restrict " + secrets.token_hex(16).encode() + b"\n")
        self.dropped = 0

    def _fill(self) -> None:
        piece = next(self._pieces, None)
        if piece is None:
            self._done = True
            self._out.append(b"".join(self._held))
            self._held = []
        elif data := self._take(piece):
            self._out.append(data)

    def _take(self, piece: ScriptPiece) -> bytes:
        if piece.kind == "gap":
            if piece.data.startswith(b"\\") and _DUMP_RESTRICT.match(piece.data):
                self.dropped += 1
                return b""
            return piece.data
        if piece.kind != "statement" or not self._drop_ownership:
            return piece.data
        tokens = self._lexer.statement.tokens
        if not self._held and (not tokens or tokens[0] not in (b"ALTER", b"SET")):
            return piece.data
        self._held.append(piece.data)
        self._held_size += len(piece.data)
        if piece.last:
            held, self._held, self._held_size = b"".join(self._held), [], 0
            if is_ownership_statement(tokens):
                self.dropped += 1
                return b""
            return held
        if self._held_size > MAX_HELD:
            held, self._held, self._held_size = b"".join(self._held), [], 0
            return held
        return b""
