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

``RestoreScript`` uses it to refuse client commands in a dump (only where the client would run
one) and, in a least-privilege load (an account that may not name another as the definer of a
view, routine, trigger or event), to turn each ``DEFINER=user@host`` in a statement's head into
``DEFINER=CURRENT_USER``; ``InsertRowCounter`` (mysql.py) to count the rows a dump holds.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from crmmaint.engines.base import Reader
from crmmaint.engines.scriptlex import QueueReader, ScriptPiece, StreamLexer

#: Code bytes of a statement kept before its first string (a CREATE's head fits easily).
MAX_HEAD = 4096

#: A whole string or quoted name, by its opening quote.
QUOTED = {
    b"'": re.compile(rb"'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'", re.DOTALL),
    b'"': re.compile(rb'"[^"\\]*(?:(?:\\.|"")[^"\\]*)*"', re.DOTALL),
    b"`": re.compile(rb"`[^`]*(?:``[^`]*)*`"),
}
#: The same under ``NO_BACKSLASH_ESCAPES``: a backslash is an ordinary character in a string.
QUOTED_NBE = {
    b"'": re.compile(rb"'[^']*(?:''[^']*)*'"),
    b'"': re.compile(rb'"[^"]*(?:""[^"]*)*"'),
    b"`": QUOTED[b"`"],
}
#: What ends an unfinished string, identifier or comment, from inside it.
_CLOSER = {
    b"'": re.compile(rb"\\.|''|'", re.DOTALL),
    b'"': re.compile(rb'\\.|""|"', re.DOTALL),
    b"`": re.compile(rb"``|`"),
    b"*/": re.compile(rb"\*/"),
    b"\n": re.compile(rb"\n"),
}
_CLOSER_NBE = _CLOSER | {b"'": re.compile(rb"''|'"), b'"': re.compile(rb'""|"')}


@functools.cache
def _modes(no_backslash_escapes: bool, ansi_quotes: bool) -> tuple[dict, dict]:
    """(whole-quote patterns, closers) under a ``sql_mode``: ``NO_BACKSLASH_ESCAPES`` takes the
    escapes out of strings, ``ANSI_QUOTES`` makes ``"…"`` a quoted name (no escapes either)."""
    quoted = dict(QUOTED_NBE if no_backslash_escapes else QUOTED)
    closers = dict(_CLOSER_NBE if no_backslash_escapes else _CLOSER)
    if ansi_quotes:
        quoted[b'"'], closers[b'"'] = QUOTED_NBE[b'"'], _CLOSER_NBE[b'"']
    return quoted, closers


@functools.cache
def quoted_pattern(no_backslash_escapes: bool, ansi_quotes: bool = False) -> re.Pattern[bytes]:
    """Any whole string or quoted name, under the given ``sql_mode`` (strip them to count
    what lies outside)."""
    quoted, _ = _modes(no_backslash_escapes, ansi_quotes)
    return re.compile(b"|".join(p.pattern for p in quoted.values()), re.DOTALL)


#: A statement that sets ``sql_mode`` or saves it in a user variable, as mariadb-dump writes
#: them around routines and triggers (``/*!50003 SET sql_mode = '…' */``) and at the top.
_SQL_MODE_SET = re.compile(
    rb"(?:@@(?:session\.)?|session\s+)?(sql_mode|@\w+)\s*:?=\s*"
    rb"('(?:[^'\\]|\\.|'')*'|@@(?:session\.)?sql_mode|@\w+)",
    re.IGNORECASE,
)
#: ``sql_mode`` words that put ``ANSI_QUOTES`` on (it alone, or a combination mode with it).
_ANSI_QUOTES_MODES = {b"ANSI_QUOTES", b"ANSI", b"DB2", b"MAXDB", b"MSSQL", b"ORACLE", b"POSTGRESQL"}
#: Statements this short are kept whole to look for a ``sql_mode`` change.
_SMALL_STATEMENT = 1024
_DELIMITER_LINE = re.compile(rb"[ \t]*delimiter[ \t]+(\S+)[^\n]*(?:\n|$)", re.IGNORECASE)
_SPACE = re.compile(rb"[ \t\r\n\f\v]+")
_ACCOUNT_PART = re.compile(rb"(?:DEFINER\s*=|@)\s*$", re.IGNORECASE)


@functools.cache
def _code_pattern(delimiter: bytes) -> re.Pattern[bytes]:
    """Tokens that matter in code: quotes, comments, versioned-comment ends, the delimiter."""
    return re.compile(
        rb"(?P<quote>['\"`])|(?P<version>/\*M?!\d*)|(?P<block>/\*)|(?P<vend>\*/)"
        rb"|(?P<line>--(?=[ \t\r\n\f\v]|$)|\#)|(?P<command>\\)"
        rb"|(?P<delim>" + re.escape(delimiter) + rb")",
        re.MULTILINE,
    )


@functools.cache
def _skip_pattern(
    delimiter: bytes, no_backslash_escapes: bool = False, ansi_quotes: bool = False
) -> re.Pattern[bytes]:
    """A run of statement text that changes nothing (plain code, whole strings and quoted
    names), matched in one call: data lines are mostly that."""
    first = delimiter[:1]
    stops = re.escape(b"'\"`/*#-\\" + first)
    lone = [rb"-(?!-)", rb"/(?!\*)", rb"\*(?!/)"]  # not a comment's start or end
    lone = [alt for alt in lone if not alt.lstrip(b"\\").startswith(first)]
    table, _ = _modes(no_backslash_escapes, ansi_quotes)
    strings = [table[q].pattern for q in (b"'", b'"', b"`")]
    alternatives = [rb"[^" + stops + rb"]+", *strings, *lone]
    return re.compile(rb"(?:" + b"|".join(alternatives) + rb")*", re.DOTALL)


class MyScriptLexer(StreamLexer):
    """Cut a mariadb script into ``ScriptPiece`` s (kinds ``gap`` and ``statement``; see
    ``scriptlex``): iterate once over the ``source`` reader, or ``feed`` it chunks. ``head``
    is the head of the statement the latest ``statement`` piece belongs to, ``head_open``
    whether it may still grow (module docstring)."""

    def __init__(self, source: Reader | None = None) -> None:
        super().__init__(source)
        self._in_statement = False
        self._inner: bytes | None = None  # the closer awaited: ' " ` */ or \n (a comment)
        self.head_open = True  # no string has started in this statement yet
        self.delimiter = b";"
        self._code = _code_pattern(b";")
        self._skip = _skip_pattern(b";")
        #: ``NO_BACKSLASH_ESCAPES`` is in the session's ``sql_mode`` (the client reads strings
        #: without backslash escapes then; mariadb-dump sets it around routines made under it).
        self.no_backslash_escapes = False
        self.ansi_quotes = False  # ``"…"`` is a quoted name, not a string
        self._mode_vars: dict[bytes, tuple[bool, bool]] = {}  # user variables holding a saved mode
        self._small: list[bytes] | None = None  # a short statement's text, to look at its end
        self.head = b""
        self._head_end = 0
        #: Backslash client commands seen outside strings and comments so far.
        self.commands = 0

    def _state(self) -> tuple[object, ...]:
        return self._in_statement, self._inner

    def _step(self, buf: bytes, pos: int, end: int) -> tuple[int, list[ScriptPiece]]:
        if self._inner is not None:
            return self._inside(buf, pos, end)
        if self._in_statement:
            return self._statement(buf, pos, end)
        return self._gap(buf, pos, end)

    def _piece(
        self, buf: bytes, start: int, end: int, last: bool = False, inner: bool = False
    ) -> ScriptPiece:
        kind = "statement" if self._in_statement else "gap"
        data = buf[start:end]
        if self._in_statement and self._small is not None:
            self._small.append(data)
            if sum(map(len, self._small)) > _SMALL_STATEMENT:
                self._small = None
        return ScriptPiece(kind, data, self._offset + start, last, inner)

    def _statement_done(self) -> None:
        """Follow ``sql_mode`` (``SET sql_mode = '…'``, ``SET @saved = @@sql_mode``,
        ``SET sql_mode = @saved``), as the client does: it decides how strings are read."""
        text = b"".join(self._small) if self._small is not None else b""
        self._small = None
        if b"sql_mode" not in text.lower():
            return
        code = re.sub(rb"/\*M?!\d*|\*/", b" ", text).strip()
        if code[:3].upper() != b"SET":
            return
        for target, value in _SQL_MODE_SET.findall(code):
            if value.startswith(b"'"):
                upper = value.upper()
                words = set(re.split(rb"[',\s]+", upper))
                mode = (b"NO_BACKSLASH_ESCAPES" in words, bool(words & _ANSI_QUOTES_MODES))
            elif value.lower().lstrip(b"@").removeprefix(b"session.") == b"sql_mode":
                mode = self.modes
            else:
                mode = self._mode_vars.get(value.lower(), (False, False))
            if target.startswith(b"@"):
                self._mode_vars[target.lower()] = mode
            elif mode != self.modes:
                self.no_backslash_escapes, self.ansi_quotes = mode
                self._skip = _skip_pattern(self.delimiter, *mode)

    @property
    def modes(self) -> tuple[bool, bool]:
        """(``NO_BACKSLASH_ESCAPES``, ``ANSI_QUOTES``) in the session's ``sql_mode`` now."""
        return self.no_backslash_escapes, self.ansi_quotes

    def _gap(self, buf: bytes, pos: int, end: int) -> tuple[int, list[ScriptPiece]]:
        space = _SPACE.match(buf, pos, end)
        if space:
            return space.end(), [self._piece(buf, pos, space.end())]
        at_line_start = pos == 0 or buf[pos - 1 : pos] == b"\n"
        if at_line_start and (match := _DELIMITER_LINE.match(buf, pos, end)):
            self.delimiter = match.group(1)
            self._code = _code_pattern(self.delimiter)
            self._skip = _skip_pattern(self.delimiter, *self.modes)
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
        self._small = []
        self._head_end = self._offset + pos  # script offset the head reaches
        return pos, []

    def _statement(self, buf: bytes, pos: int, end: int) -> tuple[int, list[ScriptPiece]]:
        start = pos
        limit = self._safe_end(buf, pos, end, 64)
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
                self._statement_done()
                self._in_statement = False
                return pos, [piece]
            if kind == "quote":
                quote = match.group()
                whole = _modes(*self.modes)[0][quote].match(buf, match.start(), end)
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
            if kind == "command" and not buf.startswith(b"-", pos):
                # A client command (\\g, \\e, \\! …) outside strings; ``\\-`` is the sandbox
                # mode current mariadb-dump asks for in its first line: it only restricts.
                self.commands += 1
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
        pattern = _modes(*self.modes)[1][closer]
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
        return stop, [self._piece(buf, pos, stop, inner=True)] if stop > pos else []


_QUOTED_NAME = rb"`(?:[^`]|``)*`|'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\""
#: ``DEFINER = user@host`` with each side quoted or bare, as a keyword (not inside a quoted
#: name: identifiers are matched first and kept).
_DEFINER = re.compile(
    rb"(?P<name>`(?:[^`]|``)*`)"
    rb"|(?<![\w$])DEFINER\s*=\s*(?:" + _QUOTED_NAME + rb"|[\w.$]+)"
    rb"\s*@\s*(?:" + _QUOTED_NAME + rb"|[\w.%$:-]+)",
    re.IGNORECASE,
)


#: Named commands of the mariadb/mysql client, which it runs when a statement starts with one
#: (`delimiter` is the lexer's: dumps of routines use it), and XA statements (a prepared XA
#: transaction outlives the load and keeps its locks): mariadb-dump writes none of them.
_CLIENT_COMMAND = re.compile(
    rb"(?:connect|use|edit|ego|go|system|source|tee|notee|pager|nopager|charset|prompt|"
    rb"rehash|status|print|clear|help|quit|exit|warnings|nowarning|xa)(?:[ \t\r\n;]|\Z)",
    re.IGNORECASE,
)
#: Head bytes that decide whether a statement starts with a client command.
_COMMAND_LOOKAHEAD = 64


class RestoreScript(QueueReader):
    """The script the mariadb client is given for a restore: the dump, which a write-key holder
    may have forged, made unable to command the client; read it like a file.

    The client runs in ``--sandbox`` (no ``\\!``, ``system``, ``source``, ``tee``), and this
    refuses, by raising ``describe(message)`` before the client has seen it, a statement that
    starts with a client command (``connect`` another server, ``use`` another database, …) and
    a backslash command anywhere outside strings and comments (``\\e`` starts an editor on the
    rest of the dump): mariadb-dump writes neither. Found by ``MyScriptLexer``: a routine body
    whose line begins ``status = …`` is no command. With ``rewrite_definers`` (a
    least-privilege load) each ``DEFINER=user@host`` in a statement's head becomes
    ``DEFINER=CURRENT_USER``: the loading account then is the definer of the views, routines,
    triggers and events it creates. ``rewritten`` counts the clauses changed.
    """

    def __init__(
        self,
        source: Reader,
        *,
        describe: Callable[[str], Exception],
        rewrite_definers: bool = False,
    ) -> None:
        super().__init__()
        self._lexer = MyScriptLexer(source)
        self._pieces = iter(self._lexer)
        self._describe = describe
        self._rewrite = rewrite_definers
        self._held: list[bytes] = []
        self._decided = False  # the statement under way was checked for a client command
        self.rewritten = 0

    def _fill(self) -> None:
        piece = next(self._pieces, None)
        if piece is None:
            self._done = True
            self._out.append(self._release(last=True))
        elif data := self._take(piece):
            self._out.append(data)

    def _take(self, piece: ScriptPiece) -> bytes:
        lexer = self._lexer
        if lexer.commands:
            raise self._describe(
                f"the dump holds a client command (a backslash outside strings) near byte "
                f"{piece.offset}, which mariadb-dump never writes: refusing to restore it "
                "(a forged backup?)"
            )
        if piece.kind != "statement":
            return piece.data
        self._held.append(piece.data)
        head = lexer.head
        full = not lexer.head_open or len(head) >= MAX_HEAD
        if not self._decided and (piece.last or full or len(head) >= _COMMAND_LOOKAHEAD):
            self._check(head)
        if piece.last or (self._decided and (full or not self._rewrite)):
            return self._release(last=piece.last)
        return b""

    def _check(self, head: bytes) -> None:
        self._decided = True
        if _CLIENT_COMMAND.match(head):
            word = head[:20].decode("utf-8", "replace")
            raise self._describe(
                f"the dump holds a client command or XA statement ({word!r}…), which "
                "mariadb-dump never writes: refusing to restore it (a forged backup?)"
            )

    def _release(self, *, last: bool) -> bytes:
        held, self._held = b"".join(self._held), []
        head = self._lexer.head
        if last:
            self._decided = False
        if not self._rewrite or not head or not held.startswith(head):
            return held
        if b"DEFINER" not in head.upper():
            return held
        return _DEFINER.sub(self._definer, head) + held[len(head) :]

    def _definer(self, match: re.Match[bytes]) -> bytes:
        if match.group("name"):
            return match.group()
        self.rewritten += 1
        return b"DEFINER=CURRENT_USER"
