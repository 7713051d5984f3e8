"""Splitting a plain pg_dump at its post-data section, and the parts of a parallel load
(postgresql/sections.py and load.py: pure logic, no server needed)."""

from __future__ import annotations

import io
import itertools
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from crmmaint.engines.postgresql.load import (
    ChainReader,
    CopyPiece,
    Piece,
    PostDataQueue,
    balance,
    plan_pieces,
)
from crmmaint.engines.postgresql.sections import (
    PostDataSplit,
    item_table,
    post_data_items,
    post_data_phases,
)
from crmmaint.errors import RestoreError

PREAMBLE = b"""--
-- PostgreSQL database dump
--

SET statement_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);

"""

MAIN = (
    PREAMBLE
    + b"""--
-- Name: customers; Type: TABLE; Schema: public; Owner: crm
--

CREATE TABLE public.customers (id integer NOT NULL, notes text);

--
-- Data for Name: customers; Type: TABLE DATA; Schema: public; Owner: crm
--

COPY public.customers (id, notes) FROM stdin;
1\tplain row
2\t-- Name: evil; Type: INDEX; Schema: public; Owner: crm
3\tCOPY public.x (a) FROM stdin;
\\.


--
-- Data for Name: empty; Type: TABLE DATA; Schema: public; Owner: crm
--

COPY public.empty (id) FROM stdin;
\\.


--
-- Name: customers_id_seq; Type: SEQUENCE SET; Schema: public; Owner: crm
--

SELECT pg_catalog.setval('public.customers_id_seq', 3, true);


"""
)

POST = b"""--
-- Name: customers customers_pkey; Type: CONSTRAINT; Schema: public; Owner: crm
--

ALTER TABLE ONLY public.customers
    ADD CONSTRAINT customers_pkey PRIMARY KEY (id);


--
-- Name: customers_notes; Type: INDEX; Schema: public; Owner: crm
--

CREATE INDEX customers_notes ON public.customers USING btree (notes);


--
-- Name: deals deals_customer_fkey; Type: FK CONSTRAINT; Schema: public; Owner: crm
--

ALTER TABLE ONLY public.deals
    ADD CONSTRAINT deals_customer_fkey FOREIGN KEY (customer) REFERENCES public.customers(id);


--
-- Name: customers_audit; Type: TRIGGER; Schema: public; Owner: crm
--

CREATE TRIGGER customers_audit AFTER UPDATE ON public.customers FOR EACH ROW EXECUTE FUNCTION public.audit();


--
-- Name: customers_email; Type: INDEX; Schema: public; Owner: crm
--

CREATE INDEX customers_email ON public.customers USING btree (notes);


--
-- PostgreSQL database dump complete
--

"""

DUMP = MAIN + POST
# The "--" line above the first post-data header has already gone to psql: a comment, harmless.
MAIN_OUT, POST_OUT = MAIN + b"--\n", POST[3:]


class Pieces:
    """A reader that hands out the dump in given piece sizes (pipe reads are arbitrary)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.sizes, self.pos = data, sizes or [len(data)], 0

    def read(self, size: int = -1) -> bytes:
        step = self.sizes[self.pos % len(self.sizes)] if self.pos < len(self.data) else 0
        out = self.data[self.pos : self.pos + max(1, min(step, size if size > 0 else step))]
        self.pos += len(out)
        return out


def drain(split: PostDataSplit, size: int = 1 << 20) -> bytes:
    out = []
    while chunk := split.read(size):
        out.append(chunk)
    return b"".join(out)


def test_main_part_stops_before_post_data_and_nothing_is_lost():
    split = PostDataSplit(io.BytesIO(DUMP))
    assert drain(split) == MAIN_OUT
    assert split.post == POST_OUT
    assert b"SET statement_timeout = 0;" in split.preamble
    assert b"CREATE TABLE" not in split.preamble


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=8), st.integers(1, 500))
def test_any_read_boundaries_give_the_same_split(sizes, out_size):
    split = PostDataSplit(Pieces(DUMP, sizes))
    assert drain(split, out_size) == MAIN_OUT
    assert split.post == POST_OUT


def test_a_data_row_that_looks_like_a_header_stays_data():
    split = PostDataSplit(io.BytesIO(DUMP))
    assert b"-- Name: evil; Type: INDEX" in drain(split)


def test_a_dump_without_data_or_post_data_passes_through():
    schema_only = (
        PREAMBLE
        + b"--\n-- Name: t; Type: TABLE; Schema: public; Owner: crm\n--\n\nCREATE TABLE public.t (a int);\n"
    )
    split = PostDataSplit(io.BytesIO(schema_only))
    assert drain(split) == schema_only and split.post == b""


def test_post_data_items_and_phases():
    items = post_data_items(POST_OUT)
    assert [i.kind for i in items] == ["CONSTRAINT", "INDEX", "FK CONSTRAINT", "TRIGGER", "INDEX"]
    assert b"".join(i.sql for i in items).strip() == POST_OUT.strip()
    phases = post_data_phases(POST_OUT)
    assert [(parallel, len(sqls)) for parallel, sqls in phases] == [
        (True, 2),
        (False, 1),
        (True, 1),
    ]
    # Sequential items keep dump order inside one script: the FK before the trigger.
    script = phases[1][1][0]
    assert script.index(b"deals_customer_fkey") < script.index(b"customers_audit")


FREEZABLE = b'''--
-- Name: a; Type: TABLE; Schema: public; Owner: crm
--

CREATE TABLE public.a (
    id integer
);

CREATE TABLE public."Odd ""Name""" (
    id integer
)
INHERITS (public.a);

CREATE TABLE public.parent (
    id integer
)
PARTITION BY RANGE (id);

CREATE UNLOGGED TABLE public.u (id integer);

--
-- Data for Name: a; Type: TABLE DATA; Schema: public; Owner: crm
--

COPY public.a (id) FROM stdin;
1
\\.

COPY public."Odd ""Name""" (id) FROM stdin;
\\.

COPY public.parent (id) FROM stdin;
\\.

COPY public.u (id) FROM stdin;
COPY public.x (id) FROM stdin;
\\.

COPY public.elsewhere (id) FROM stdin;
\\.

'''


def test_freeze_rewrites_copies_of_tables_created_in_the_stream_only():
    split = PostDataSplit(io.BytesIO(FREEZABLE), freeze=True)
    out = drain(split)
    copies = [line for line in out.split(b"\n") if line.startswith(b"COPY public.")]
    assert copies == [
        b"COPY public.a (id) FROM stdin WITH (FREEZE);",
        b'COPY public."Odd ""Name""" (id) FROM stdin WITH (FREEZE);',
        b"COPY public.parent (id) FROM stdin;",  # a partitioned parent: FREEZE is an error
        b"COPY public.u (id) FROM stdin WITH (FREEZE);",
        b"COPY public.x (id) FROM stdin;",  # a data row, not a statement
        b"COPY public.elsewhere (id) FROM stdin;",  # not created here
    ]
    assert split.frozen == 3
    assert out.replace(b" WITH (FREEZE);", b";") == FREEZABLE


def test_without_freeze_the_stream_is_unchanged():
    assert drain(PostDataSplit(io.BytesIO(FREEZABLE))) == FREEZABLE


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 120), min_size=1, max_size=6))
def test_freeze_is_independent_of_read_boundaries(sizes):
    whole = drain(PostDataSplit(io.BytesIO(FREEZABLE), freeze=True))
    assert drain(PostDataSplit(Pieces(FREEZABLE, sizes), freeze=True), 7) == whole


# --- parallel data loads: pieces of COPY blocks ---------------------------------------------


def ranges_over(data: bytes, step: int = 5):
    """An ``open_range`` over bytes in memory that hands out small, uneven reads."""

    def open_range(start: int, end: int):
        return Pieces(data[start:end], [step, step * 3 + 1])

    return open_range


def copy_block(rows: list[bytes], table: bytes = b"public.t") -> bytes:
    return (
        b"COPY " + table + b" (a, b) FROM stdin;\n" + b"".join(r + b"\n" for r in rows) + b"\\.\n"
    )


def run_pieces(data: bytes, start: int, end: int, cuts: list[int], created: set[bytes]):
    bounds = [None, *cuts, None]
    out = []
    for a, b in itertools.pairwise(bounds):
        piece = Piece(0, start, end, a, b)
        reader = CopyPiece(piece, ranges_over(data, 7), created)
        out.append(drain(reader))
    return out


def body_of(scripts: list[bytes]) -> bytes:
    """The rows of every piece's script, in order (each is ``COPY …;\\n rows \\\\.\\n``)."""
    return b"".join(s.split(b"FROM stdin;\n", 1)[1][: -len(b"\\.\n")] for s in scripts if s)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.binary(min_size=0, max_size=40).map(lambda b: b.replace(b"\n", b"\\n")), max_size=30
    ),
    st.lists(st.integers(0, 10_000), max_size=6),
    st.integers(0, 50),
)
def test_pieces_cover_every_row_once_for_any_cuts(rows, raw_cuts, lead):
    head = b"x" * lead
    block = copy_block(rows)
    data = head + block + b"tail"
    start, end = lead, lead + len(block)
    cuts = sorted({start + 1 + c % (len(block) - 1) for c in raw_cuts if len(block) > 1})
    scripts = run_pieces(data, start, end, cuts, created=set())
    assert body_of(scripts) == b"".join(r + b"\n" for r in rows)
    for script in scripts:
        if script:
            assert script.startswith(b"COPY public.t (a, b) FROM stdin;\n")
            assert script.endswith(b"\\.\n") and not script.startswith(b"BEGIN")


def test_pieces_keep_empty_rows_and_row_order():
    rows = [b"1\tone", b"", b"3\tthree", b"4\t" + b"x" * 100, b"5\tfive"]
    block = copy_block(rows)
    scripts = run_pieces(block, 0, len(block), [30, 60, 90], created=set())
    assert body_of(scripts) == b"".join(r + b"\n" for r in rows)


def test_a_whole_block_of_a_created_table_is_truncated_and_frozen():
    block = copy_block([b"1\ta", b"2\tb"], table=b'public."Odd ""T"""')
    reader = CopyPiece(Piece(0, 0, len(block)), ranges_over(block), {b'public."Odd ""T"""'})
    script = drain(reader)
    assert script == (
        b'BEGIN;\nTRUNCATE ONLY public."Odd ""T""";\n'
        b'COPY public."Odd ""T""" (a, b) FROM stdin WITH (FREEZE);\n1\ta\n2\tb\n\\.\nCOMMIT;\n'
    )
    assert reader.frozen
    plain = drain(CopyPiece(Piece(0, 0, len(block)), ranges_over(block), set()))
    assert plain == block


def test_a_piece_that_is_not_a_copy_block_is_refused():
    data = b"SELECT 1;\nSELECT 2;\n\\.\n"
    reader = CopyPiece(Piece(0, 0, len(data)), ranges_over(data), set())
    try:
        drain(reader)
    except RestoreError as exc:
        assert "COPY line" in str(exc)
    else:
        raise AssertionError("no error")


def test_plan_pieces_cuts_only_big_blocks_and_balance_spreads_them():
    sections = [(100, 100 + 400), (600, 620), (700, 740)]
    assert all(p.whole for p in plan_pieces(sections, 2, min_piece=50))
    pieces = plan_pieces(sections, 4, min_piece=50)
    big = [p for p in pieces if p.section == 0]
    assert len(big) == 8 and big[0].cut_from is None and big[-1].cut_to is None
    assert all(a.cut_to == b.cut_from for a, b in itertools.pairwise(big))
    assert [p.whole for p in pieces if p.section != 0] == [True, True]
    bins = balance([p.size for p in pieces], 4)
    totals = [sum(pieces[i].size for i in b) for b in bins]
    assert sorted(i for b in bins for i in b) == list(range(len(pieces)))
    assert max(totals) - min(totals) <= 50
    assert all(b == sorted(b) for b in bins)
    assert balance([5], 4) == [[0]]


def test_chain_reader_opens_lazily_and_honours_cancel():
    opened = []

    def part(data: bytes):
        def open_it():
            opened.append(data)
            return io.BytesIO(data)

        return open_it

    cancel = threading.Event()
    chain = ChainReader([b"a", part(b"bc"), b"", part(b"d")], cancel)
    assert chain.read(10) == b"a" and opened == []
    assert chain.read(10) == b"bc" and opened == [b"bc"]
    cancel.set()
    try:
        chain.read(10)
    except RestoreError as exc:
        assert "cancelled" in str(exc)
    else:
        raise AssertionError("not cancelled")
    assert opened == [b"bc"]


def test_item_table_names_the_table_of_indexes_and_keys():
    items = post_data_items(POST_OUT)
    assert [item_table(i.sql) for i in items] == [
        b"public.customers",
        b"public.customers",
        b"public.deals",
        None,  # a trigger: not an item the queue schedules early
        b"public.customers",
    ]
    odd = b'CREATE UNIQUE INDEX "x y" ON ONLY public."Odd ""T""" USING btree (a);\n'
    assert item_table(odd) == b'public."Odd ""T"""'


def test_post_data_queue_hands_out_items_as_tables_load():
    queue = PostDataQueue(
        [
            b"CREATE INDEX i1 ON public.a USING btree (x);",
            b"ALTER TABLE ONLY public.b ADD CONSTRAINT k PRIMARY KEY (id);",
            b"GRANT ALL;",
        ]
    )
    got: list[bytes | None] = []
    taker = threading.Thread(target=lambda: got.append(queue.take()))
    taker.start()
    taker.join(0.2)
    assert taker.is_alive()  # nothing loaded yet: it waits
    queue.loaded([b"public.b"])
    taker.join(5)
    assert got == [b"ALTER TABLE ONLY public.b ADD CONSTRAINT k PRIMARY KEY (id);"]
    queue.loaded([], everything=True)
    assert {queue.take(), queue.take()} == {
        b"CREATE INDEX i1 ON public.a USING btree (x);",
        b"GRANT ALL;",
    }
    assert queue.take() is None


def test_post_data_queue_cancel_releases_waiters():
    queue = PostDataQueue([b"CREATE INDEX i ON public.a USING btree (x);"])
    got: list[bytes | None] = []
    taker = threading.Thread(target=lambda: got.append(queue.take()))
    taker.start()
    queue.cancel()
    taker.join(5)
    assert got == [None]
