"""A streaming lexer for MariaDB/MySQL dump scripts that knows where statements end.

The mariadb client cuts a script into statements at its delimiter (``;``, or what a
``DELIMITER`` line sets, as mariadb-dump does around routines and triggers), outside
``'…'`` and ``"…"`` strings (backslash escapes and doubled quotes), `` `…` `` identifiers and
``-- ``, ``#`` and ``/* */`` comments; the text of a versioned comment (``/*!50003 … */``,
``/*M!100101 … */``) is code. ``MyScriptLexer`` walks a script by the same rules, reading
whole lines (a slice of a line past ``MAX_LINE``), and yields it back in ``ScriptPiece`` s.

For each statement it keeps its head, the code text before its first string literal (at most
``MAX_HEAD`` bytes): enough to tell an ``INSERT`` and its table or find a ``DEFINER`` clause,
never a value. A script run under ``NO_BACKSLASH_ESCAPES`` reads strings differently; dumps
do not set it for data, and a forged script that does is bounded by the rights it loads with.

``DefinerFilter`` is the first user: a least-privilege restore loads as a user that may not
name another account as the definer of a view, routine, trigger or event, so each
``DEFINER=user@host`` in a statement's head becomes ``DEFINER=CURRENT_USER``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from crmmaint.engines.base import Reader
from crmmaint.engines.pgscript import ScriptPiece

_READ = 1 << 20
MAX_LINE = 1 << 20
#: Code bytes of a statement kept before its first string (a CREATE's head fits easily).
MAX_HEAD = 4096

_STRING = {
    b"'": re.compile(rb"'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'", re.DOTALL),
    b'"': re.compile(rb'"[^"\\]*(?:(?:\\.|"")[^"\\]*)*"', re.DOTALL),
    b"`": re.compile(rb"`[^`]*(?:``[^`]*)*`"),
}
#: What ends an unfinished string, identifier or comment, from inside it.
_CLOSER = {
    b"'": re.compile(rb"\\.|''|'", re.DOTALL),
    b'"': re.compile(rb'\\.|""|"', re.DOTALL),
    b"`": re.compile(rb"``|`"),
    b"*/": re.compile(rb"\*/"),
    b"\n": re.compile(rb"\n"),
}
_DELIMITER_LINE = re.compile(rb"[ \t]*delimiter[ \t]+(\S+)[^\n]*(?:\n|$)", re.IGNORECASE)
_SPACE = re.compile(rb"[ \t\r\n\f\v]+")
_ACCOUNT_PART = re.compile(rb"(?:DEFINER\s*=|@)\s*$", re.IGNORECASE)


def _code_pattern(delimiter: bytes) -> re.Pattern[bytes]:
    """Tokens that matter in code: quotes, comments, versioned-comment ends, the delimiter."""
    return re.compile(
        rb"(?P<quote>['\"`])|(?P<version>/\*M?!\d*)|(?P<block>/\*)|(?P<vend>\*/)"
        rb"|(?P<line>--(?=[ \t\r\n\f\v]|$)|\#)|(?P<delim>" + re.escape(delimiter) + rb")",
        re.MULTILINE,
    )


def _skip_pattern(delimiter: bytes) -> re.Pattern[bytes]:
    """A run of statement text that changes nothing (plain code, whole strings and quoted
    names), matched in one call: data lines are mostly that."""
    first = delimiter[:1]
    stops = re.escape(b"'\"`/*#-" + first)
    lone = [rb"-(?!-)", rb"/(?!\*)", rb"\*(?!/)"]  # not a comment's start or end
    lone = [alt for alt in lone if not alt.lstrip(b"\\").startswith(first)]
    strings = [_STRING[q].pattern for q in (b"'", b'"', b"`")]
    alternatives = [rb"[^" + stops + rb"]+", *strings, *lone]
    return re.compile(rb"(?:" + b"|".join(alternatives) + rb")*", re.DOTALL)


class MyScriptLexer:
    """Cut a mariadb script read from ``source`` into ``ScriptPiece`` s (kinds ``gap`` and
    ``statement``, see ``pgscript.ScriptPiece``). ``head`` is the head of the statement the
    latest ``statement`` piece belongs to (module docstring)."""

    def __init__(self, source: Reader) -> None:
        self._source = source
        self._buf = b""
        self._eof = False
        self._offset = 0
        self._stalled = False
        self._in_statement = False
        self._inner: bytes | None = None  # the closer awaited: ' " ` */ or \n (a comment)
        self.head_open = True  # no string has started in this statement yet
        self.delimiter = b";"
        self._code = _code_pattern(b";")
        self._skip = _skip_pattern(b";")
        self.head = b""
        self._head_end = 0

    def __iter__(self) -> Iterator[ScriptPiece]:
        while (end := self._ready()) is not None:
            yield from self._lex(end)

    def _ready(self) -> int | None:
        while True:
            buf = self._buf
            if self._eof:
                return len(buf) if buf else None
            if not self._stalled:
                nl = buf.rfind(b"\n")
                if nl >= 0:
                    return nl + 1
                if len(buf) >= MAX_LINE:
                    return len(buf) - max(64, len(self.delimiter))
            chunk = self._source.read(_READ)
            self._stalled = False
            if not chunk:
                self._eof = True
            else:
                self._buf = buf + chunk if buf else chunk

    def _lex(self, end: int) -> Iterator[ScriptPiece]:
        buf = self._buf
        pos = 0
        while pos < end:
            state = (self._in_statement, self._inner)
            if self._inner is not None:
                moved, pieces = self._inside(buf, pos, end)
            elif self._in_statement:
                moved, pieces = self._statement(buf, pos, end)
            else:
                moved, pieces = self._gap(buf, pos, end)
            yield from pieces
            if moved == pos and not pieces and state == (self._in_statement, self._inner):
                break
            pos = moved
        self._stalled = pos == 0
        self._offset += pos
        self._buf = buf[pos:]

    def _piece(self, buf: bytes, start: int, end: int, last: bool = False) -> ScriptPiece:
        kind = "statement" if self._in_statement else "gap"
        return ScriptPiece(kind, buf[start:end], self._offset + start, last)

    def _gap(self, buf: bytes, pos: int, end: int) -> tuple[int, list[ScriptPiece]]:
        space = _SPACE.match(buf, pos, end)
        if space:
            return space.end(), [self._piece(buf, pos, space.end())]
        at_line_start = pos == 0 or buf[pos - 1 : pos] == b"\n"
        if at_line_start and (match := _DELIMITER_LINE.match(buf, pos, end)):
            self.delimiter = match.group(1)
            self._code = _code_pattern(self.delimiter)
            self._skip = _skip_pattern(self.delimiter)
            return match.end(), [self._piece(buf, pos, match.end())]
        if buf.startswith((b"--", b"#"), pos) and (
            buf.startswith(b"#", pos) or end - pos < 3 or buf[pos + 2 : pos + 3] in b" \t\r\n\f\v"
        ):
            self._inner = b"\n"
            return pos, []
        if buf.startswith(b"/*", pos) and not buf.startswith((b"/*!", b"/*M!"), pos):
            self._inner = b"*/"
            return pos + 2, [self._piece(buf, pos, pos + 2)]
        self._in_statement, self.head_open, self.head = True, True, b""
        self._head_end = self._offset + pos  # script offset the head reaches
        return pos, []

    def _statement(self, buf: bytes, pos: int, end: int) -> tuple[int, list[ScriptPiece]]:
        start = pos
        limit = end if (self._eof or buf[end - 1 : end] == b"\n") else end - 64
        while True:
            if not self.head_open:
                pos = self._skip.match(buf, pos, limit).end()  # type: ignore[union-attr]
            match = self._code.search(buf, pos, end)
            if match is None or match.start() >= limit:
                stop = limit if match is None else max(pos, match.start())
                stop = max(stop, start)
                self._grow_head(buf, start, stop)
                return stop, [self._piece(buf, start, stop)] if stop > start else []
            kind = match.lastgroup
            pos = match.end()
            if kind == "delim":
                self._grow_head(buf, start, pos)
                piece = self._piece(buf, start, pos, last=True)
                self._in_statement = False
                return pos, [piece]
            if kind == "quote":
                quote = match.group()
                whole = _STRING[quote].match(buf, match.start(), end)
                if quote != b"`":
                    self._grow_head(buf, start, match.start())
                    # A quoted account name (DEFINER='root'@'%') is still the head.
                    if not _ACCOUNT_PART.search(self.head[-64:]):
                        self.head_open = False
                if whole is not None and (whole.end() < end or self._eof):
                    pos = whole.end()
                    continue
                self._grow_head(buf, start, pos)
                self._inner = quote
                return pos, [self._piece(buf, start, pos)]
            if kind == "block":
                self._grow_head(buf, start, pos)
                self._inner = b"*/"
                return pos, [self._piece(buf, start, pos)]
            if kind == "line":
                self._grow_head(buf, start, match.start())
                self._inner = b"\n"
                return pos, [self._piece(buf, start, pos)]
            # versioned comments' marks: code either side

    def _grow_head(self, buf: bytes, start: int, stop: int) -> None:
        """Add ``buf[start:stop]`` to the head, less what it already holds (by offset)."""
        start = max(start, self._head_end - self._offset)
        if self.head_open and len(self.head) < MAX_HEAD and stop > start:
            self.head += buf[start : min(stop, start + MAX_HEAD - len(self.head))]
        self._head_end = max(self._head_end, self._offset + stop)

    def _inside(self, buf: bytes, pos: int, end: int) -> tuple[int, list[ScriptPiece]]:
        """Up to the end of the string, identifier or comment under way. A statement's head
        runs on through identifiers and comments and ends where its first string starts."""
        closer = self._inner
        assert closer is not None
        quoted = closer in (b"'", b'"', b"`")
        pattern = _CLOSER[closer]
        at = pos
        stop = -1
        while (match := pattern.search(buf, at, end)) is not None:
            if match.end() == end and not self._eof and buf[end - 1 : end] != b"\n":
                break  # an escape or a doubled quote may continue past the slice
            if quoted and len(match.group()) == 2:
                at = match.end()  # an escape or a doubled quote: still inside
                continue
            stop = match.end()
            self._inner = None
            break
        if stop < 0:
            safe = self._eof or buf[end - 1 : end] == b"\n"
            stop = end if safe else max(pos, end - 2)
        if self._in_statement:
            self._grow_head(buf, pos, stop)
        return stop, [self._piece(buf, pos, stop)] if stop > pos else []


_QUOTED_NAME = rb"`(?:[^`]|``)*`|'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\""
#: ``DEFINER = user@host`` with each side quoted or bare, as a keyword (not inside a quoted
#: name: identifiers are matched first and kept).
_DEFINER = re.compile(
    rb"(?P<name>`(?:[^`]|``)*`)"
    rb"|(?<![\w$])DEFINER\s*=\s*(?:" + _QUOTED_NAME + rb"|[\w.$]+)"
    rb"\s*@\s*(?:" + _QUOTED_NAME + rb"|[\w.%$:-]+)",
    re.IGNORECASE,
)


class DefinerFilter:
    """A reader over a mariadb script whose ``DEFINER=user@host`` clauses, in statement heads
    only, say ``DEFINER=CURRENT_USER``: the loading user then owns the views, routines,
    triggers and events it creates. ``rewritten`` counts the clauses changed."""

    def __init__(self, source: Reader) -> None:
        self._lexer = MyScriptLexer(source)
        self._pieces = iter(self._lexer)
        self._held: list[bytes] = []
        self._out = b""
        self._done = False
        self.rewritten = 0

    def read(self, size: int = _READ) -> bytes:
        while len(self._out) < size and not self._done:
            piece = next(self._pieces, None)
            if piece is None:
                self._done = True
                self._out += self._release()
                break
            self._out += self._take(piece)
        out, self._out = self._out[:size], self._out[size:]
        return out

    def _take(self, piece: ScriptPiece) -> bytes:
        if piece.kind != "statement":
            return piece.data
        head_open = self._lexer.head_open
        if not self._held and not head_open and not piece.last:
            return piece.data
        self._held.append(piece.data)
        if piece.last or not head_open or len(self._lexer.head) >= MAX_HEAD:
            return self._release()
        return b""

    def _release(self) -> bytes:
        held, self._held = b"".join(self._held), []
        if b"DEFINER" not in held[: MAX_HEAD + 256].upper():
            return held
        head = self._lexer.head
        if not head or not held.startswith(head):
            return held
        return _DEFINER.sub(self._definer, head) + held[len(head) :]

    def _definer(self, match: re.Match[bytes]) -> bytes:
        if match.group("name"):
            return match.group()
        self.rewritten += 1
        return b"DEFINER=CURRENT_USER"
