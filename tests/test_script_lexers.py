"""The dump lexers (pgscript, myscript) against scripts built from the constructs that fool a
line matcher: strings, quoted identifiers, dollar-quoted bodies, comments and COPY data that
hold semicolons, newlines, quotes and fake statements. Property: whatever the chunking, the
lexer hands the script back byte for byte and finds exactly the statements it was built of."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from crmmaint.engines.myscript import MyScriptLexer
from crmmaint.engines.myscript import RestoreScript as MyRestoreScript
from crmmaint.engines.postgresql.script import PgScriptLexer, RestoreScript, is_ownership_statement


class Trickle:
    """A reader that hands out at most ``n`` bytes per read (chunk boundaries anywhere)."""

    def __init__(self, data: bytes, n: int) -> None:
        self._buf = io.BytesIO(data)
        self._n = n

    def read(self, size: int = -1) -> bytes:
        return self._buf.read(self._n)


def read_all(reader, size: int = 333) -> bytes:
    out = []
    while chunk := reader.read(size):
        out.append(chunk)
    return b"".join(out)


def lex(lexer) -> tuple[bytes, list[bytes], list[bytes]]:
    """(the script re-joined, its statements, its COPY data blocks)."""
    whole, statements, blocks, current, data = [], [], [], b"", b""
    for piece in lexer:
        whole.append(piece.data)
        if piece.kind == "statement":
            current += piece.data
            if piece.last:
                statements.append(current)
                current = b""
        elif piece.kind == "data":
            data += piece.data
            if piece.last:
                blocks.append(data)
                data = b""
    return b"".join(whole), statements, blocks


# --- PostgreSQL -------------------------------------------------------------------------------

text = st.text(alphabet="ab;'\"$\\\n\t -/*().", max_size=12)
pg_fragment = st.one_of(
    st.sampled_from(
        ["x", "foo", "BEGIN", "END", "CASE", "E", "e", "42", "(", ")", ",", "public.t"]
    ),
    text.map(lambda t: "'" + t.replace("'", "''") + "'"),
    text.map(lambda t: "E'" + t.replace("\\", "\\\\").replace("'", "\\'") + "'"),
    text.map(lambda t: '"' + t.replace('"', '""') + '"'),
    text.filter(lambda t: "$q$" not in t + "$").map(lambda t: "$q$" + t + "\n\\.\n$q$"),
    text.map(lambda t: "$$" + t.replace("$", "") + "$$"),
    text.map(lambda t: "-- " + t.replace("\n", " ") + "\n"),
    text.map(lambda t: "/* " + t.replace("*/", "").replace("/*", "") + " /* nested */ */"),
    st.just("(a; b)"),
)
pg_statement = st.lists(pg_fragment, max_size=6).map(
    lambda parts: "SELECT " + " ".join(p if p not in ("(", ")") else "x" for p in parts) + ";"
)
copy_row = st.text(alphabet="ab\t;'\\.$ ", max_size=10).map(
    lambda t: t.replace("\\", "\\\\")  # COPY text escapes backslashes: no row is "\."
)
pg_copy = st.lists(copy_row, max_size=4).map(lambda rows: "".join(r + "\n" for r in rows))
pg_gap = st.sampled_from(["\n", "\n\n", "-- Name: t; Type: TABLE; -- ;\n", "/* ; */\n", "  "])
routine = st.just(
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN 1 > 0 "
    "THEN 1 ELSE 2 END; SELECT 2; END;"
)


@st.composite
def pg_scripts(draw):
    statements, blocks, parts = [], [], []
    for _ in range(draw(st.integers(1, 6))):
        parts.append(draw(pg_gap))
        kind = draw(st.sampled_from(["stmt", "stmt", "copy", "routine"]))
        if kind == "copy":
            stmt = 'COPY public."we;ird" (id, "col\nwith newline") FROM stdin;'
            data = draw(pg_copy) + "\\.\n"
            parts += [stmt, "\n", data]
            blocks.append(data.encode())
        else:
            stmt = draw(routine if kind == "routine" else pg_statement)
            parts.append(stmt)
        statements.append(stmt.encode())
        parts.append("\n")
    return "".join(parts).encode(), statements, blocks


@settings(max_examples=300, deadline=None)
@given(pg_scripts(), st.sampled_from([1, 2, 3, 5, 17, 4096]))
def test_pg_lexer_finds_the_statements_it_was_built_of(script, chunk):
    data, statements, blocks = script
    whole, found, found_blocks = lex(PgScriptLexer(Trickle(data, chunk)))
    assert whole == data
    assert found == statements
    assert found_blocks == blocks


def test_pg_ownership_statements_are_recognised_as_whole_statements_only():
    body = (
        "CREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $b$ SELECT '\n"
        "ALTER TABLE public.t OWNER TO evil;\n'::text $b$;\n"
    )
    script = (
        "SET client_encoding = 'UTF8';\n" + body
        + "ALTER TABLE public.t OWNER TO crm;\n"
        + 'ALTER FUNCTION public."odd name"(integer, text) OWNER TO "CRM owner";\n'
        + "ALTER LARGE OBJECT 16385 OWNER TO crm;\n"
        + "ALTER OPERATOR CLASS public.c USING btree OWNER TO crm;\n"
        + "ALTER DEFAULT PRIVILEGES FOR ROLE crm IN SCHEMA public GRANT SELECT ON TABLES TO app;\n"
        + "ALTER TABLE public.t RENAME COLUMN owner TO \"to\";\n"
        + "COMMENT ON TABLE public.t IS 'ALTER TABLE public.t OWNER TO x;';\n"
        + "COPY public.t (v) FROM stdin;\nALTER TABLE public.t OWNER TO data;\n\\.\n"
    ).encode()  # fmt: skip
    for chunk in (1, 7, 1 << 20):
        out = RestoreScript(Trickle(script, chunk), drop_ownership=True)
        kept = read_all(out).partition(b"\n")[2]
        assert out.dropped == 5
        assert b"OWNER TO crm" not in kept and b"CRM owner" not in kept
        assert b"DEFAULT PRIVILEGES" not in kept
        for survivor in (body.encode(), b'RENAME COLUMN owner TO "to"', b"OWNER TO x;'",
                         b"OWNER TO data;\n\\.\n"):  # fmt: skip
            assert survivor in kept


def test_pg_ownership_rule():
    def tokens(*words: str) -> list[bytes]:
        return [w.encode() for w in words]

    assert is_ownership_statement(tokens("ALTER", "TABLE", "PUBLIC", ".", "T", "OWNER", "TO", "X"))
    assert is_ownership_statement(tokens("ALTER", "SCHEMA", '"', "OWNER", "TO", '"'))
    assert not is_ownership_statement(
        tokens("ALTER", "TABLE", "T", "RENAME", "COLUMN", "OWNER", "TO", '"')
    )
    assert not is_ownership_statement(tokens("ALTER", "ROLE", "X", "OWNER", "TO", "Y"))
    # ALTER OPERATOR crm.=== (integer, integer) OWNER TO x: the symbol is no token
    assert is_ownership_statement(tokens("ALTER", "OPERATOR", "CRM", ".", "(", "OWNER", "TO", "X"))
    assert is_ownership_statement(tokens("ALTER", "OPERATOR", "(", "OWNER", "TO", "X"))
    assert not is_ownership_statement(tokens("SELECT", "OWNER", "TO", "X"))


def test_pg_lexer_is_linear_on_a_huge_line():
    """A forged script of one 8 MiB line (no newline) is lexed in slices, not re-joined."""
    data = b"SELECT " + b"x, " * (8 << 18) + b"1;"
    whole, found, _ = lex(PgScriptLexer(Trickle(data, 1 << 16)))
    assert whole == data and found == [data]


# --- MariaDB ----------------------------------------------------------------------------------

my_text = st.text(alphabet="ab;'\"`\\\n\t -#/*().", max_size=12)
my_fragment = st.one_of(
    st.sampled_from(["x", "INSERT", "VALUES", "(1)", ",", "DEFINER", "/*!40101 SET x=1 */"]),
    my_text.map(lambda t: "'" + t.replace("\\", "\\\\").replace("'", "\\'") + "'"),
    my_text.map(lambda t: "'" + t.replace("\\", "\\\\").replace("'", "''") + "'"),
    my_text.map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '""') + '"'),
    my_text.map(lambda t: "`" + t.replace("`", "``") + "`"),
    my_text.map(lambda t: "-- " + t.replace("\n", " ") + "\n"),
    my_text.map(lambda t: "# " + t.replace("\n", " ") + "\n"),
    my_text.map(lambda t: "/* " + t.replace("*/", "").replace("/*", "") + " */"),
)


@st.composite
def my_scripts(draw):
    statements, parts = [], []
    delimiter = ";"
    for _ in range(draw(st.integers(1, 6))):
        parts.append(draw(st.sampled_from(["\n", "-- c;\n", "/* ; */\n", "# ;\n"])))
        if draw(st.booleans()):
            delimiter = draw(st.sampled_from([";", ";;", "//", "$$"]))
            parts.append(f"DELIMITER {delimiter}\n")
        body = " ".join(draw(st.lists(my_fragment, max_size=6)))
        if delimiter != ";":
            body += " ; still inside"
        stmt = "SELECT " + body + delimiter
        parts += [stmt, "\n"]
        statements.append(stmt.encode())
    return "".join(parts).encode(), statements


@settings(max_examples=300, deadline=None)
@given(my_scripts(), st.sampled_from([1, 2, 3, 5, 17, 4096]))
def test_mariadb_lexer_finds_the_statements_it_was_built_of(script, chunk):
    data, statements = script
    whole, found, _ = lex(MyScriptLexer(Trickle(data, chunk)))
    assert whole == data
    assert found == statements


def test_definer_clauses_are_rewritten_in_statement_heads_only():
    script = (
        b"INSERT INTO `t` VALUES (1,'CREATE DEFINER=`root`@`localhost` PROCEDURE');\n"
        b"DELIMITER ;;\n"
        b"/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`127.0.0.1`*/ /*!50003 TRIGGER tr BEFORE "
        b"INSERT ON t FOR EACH ROW SET NEW.v = 'DEFINER=`a`@`b`' */;;\n"
        b"CREATE DEFINER=`odd``user`@`%` PROCEDURE `p`()\nBEGIN SELECT '\n"
        b"CREATE DEFINER=`root`@`localhost` FUNCTION'; END ;;\n"
        b"DELIMITER ;\n"
        b"/*!50001 CREATE ALGORITHM=UNDEFINED */\n"
        b"/*!50013 DEFINER='root'@'localhost' SQL SECURITY DEFINER */\n"
        b"/*!50001 VIEW `v` AS select 1 AS `DEFINER=x@y` */;\n"
    )
    for chunk in (1, 5, 1 << 20):
        out = MyRestoreScript(Trickle(script, chunk), describe=RuntimeError, rewrite_definers=True)
        kept = read_all(out)
        assert out.rewritten == 3
        assert kept.count(b"DEFINER=CURRENT_USER") == 3
        for survivor in (b"(1,'CREATE DEFINER=`root`@`localhost` PROCEDURE')",
                         b"SET NEW.v = 'DEFINER=`a`@`b`'",
                         b"'\nCREATE DEFINER=`root`@`localhost` FUNCTION'",
                         b"AS `DEFINER=x@y`"):  # fmt: skip
            assert survivor in kept


@st.composite
def restricted_dumps(draw):
    """A dump with pg_dump's own \\restrict lines between statements, and the same text inside
    a function body, a string and COPY rows, which must survive."""
    parts, expected = [], []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["restrict", "stmt", "body", "copy", "long"]))
        if kind == "restrict":
            parts.append(draw(st.sampled_from(["\\restrict abc123\n", "\\unrestrict abc123\n"])))
            continue
        if kind == "stmt":
            text = "SELECT 1;\n"
        elif kind == "body":
            text = "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT '\n\\restrict k\n' $$;\n"
        elif kind == "copy":
            text = "COPY public.t (a) FROM stdin;\n\\\\restrict abc\n\\N\n\\.\n"
        else:
            text = "SELECT '" + "y" * 70000 + "\n\\restrict abc123';\n"
        parts.append(text)
        expected.append(text)
    return "".join(parts).encode(), "".join(expected).encode()


@settings(max_examples=100, deadline=None)
@given(restricted_dumps(), st.lists(st.integers(1, 100_000), min_size=1, max_size=8),
       st.sampled_from([1, 7, 7000]))  # fmt: skip
def test_a_restore_script_drops_only_the_dumps_own_restrict_lines(dump, reads, chunk):
    """Any split of the stream and any read sizes: the script opens with our own \\restrict,
    then is the dump byte for byte without its own \\restrict / \\unrestrict lines, and the same
    text in a body, a string or a row is kept."""
    data, expected = dump
    script = RestoreScript(Trickle(data, chunk))
    out, i = [], 0
    while piece := script.read(reads[i % len(reads)]):
        out.append(piece)
        i += 1
    first, _, rest = b"".join(out).partition(b"\n")
    assert first.startswith(b"\\restrict ") and len(first) == len(b"\\restrict ") + 32
    assert rest == expected


def test_a_load_role_lapses_with_its_restore():
    """A restore cut off before its cleanup (a step timeout, SIGTERM) leaves a role whose
    login lapses soon after the restore's own deadline."""
    import re as _re

    from crmmaint.engines.postgresql import LOAD_ROLE_VALID, LoadRole

    def until(sql: str) -> str:
        return _re.search(r"VALID UNTIL '([^']+)'", sql).group(1)

    assert until(LoadRole().create_sql(0, 3600)) == "1970-01-01 01:10:00+00"
    assert until(LoadRole().create_sql(0)) == "1970-01-02 00:00:00+00" and LOAD_ROLE_VALID == 86400
