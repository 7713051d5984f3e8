"""Splitting a plain pg_dump at its post-data section (pure logic: no server needed)."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from crmmaint.engines.pgsections import PostDataSplit, post_data_items, post_data_phases

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
