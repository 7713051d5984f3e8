"""PostgreSQL adapter against the real local server (127.0.0.1:5432) through LocalTransport."""

from __future__ import annotations

import io
import os
import secrets
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmmaint.engines import RestoreTargetExists, compare_facts, engine_for
from crmmaint.engines.base import DumpLayout
from crmmaint.engines.postgresql import CopyRowCounter, PostgreSQLEngine
from crmmaint.engines.postgresql import load as pgload
from crmmaint.errors import EngineError, IntegrityError, RestoreError
from crmmaint.inventory import Database, SecretSource
from crmmaint.transport.local import LocalTransport

SCHEMA = r'''
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE, note text);
CREATE TABLE "Odd ""Name""" (id int PRIMARY KEY, customer_id int REFERENCES customers(id));
CREATE TABLE empty_one (k text);
CREATE INDEX customers_lower_name ON customers (lower(name));
CREATE VIEW customer_names AS SELECT id, name FROM customers;
INSERT INTO customers (name, email, note)
  SELECT 'n' || g, 'e' || g || '@example.org', E'tab\there\nnew "q",\\.' FROM generate_series(1, 3000) g;
INSERT INTO "Odd ""Name""" SELECT g, g FROM generate_series(1, 10) g;
'''


PSQL = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"]


def psql(dbname: str, sql: str) -> str:
    out = subprocess.run(
        [*PSQL, "-d", dbname],
        input=sql.encode(),
        capture_output=True,
        check=True,
    )
    return out.stdout.decode()


@pytest.fixture
def scratch_names():
    made: list[str] = []

    def name() -> str:
        made.append(f"crmtest_{secrets.token_hex(4)}")
        return made[-1]

    yield name
    for n in made:
        psql("postgres", f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')


@pytest.fixture(scope="module")
def source_db():
    """One source database for the module; tests that write to it undo their writes."""
    name = f"crmtest_{secrets.token_hex(4)}"
    psql("postgres", f'CREATE DATABASE "{name}"')
    psql(name, SCHEMA)
    yield name
    psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def source(source_db) -> PostgreSQLEngine:
    db = Database(
        name="crm", engine="postgresql", host="local", dbname=source_db, address="127.0.0.1"
    )
    db.user = "postgres"
    engine = engine_for(db, LocalTransport())
    assert isinstance(engine, PostgreSQLEngine)
    return engine


def dump_all(engine: PostgreSQLEngine) -> tuple[bytes, dict]:
    out = io.BytesIO()
    with engine.dump(timeout=60) as stream:
        while chunk := stream.read(1 << 16):
            out.write(chunk)
        facts = stream.finish()
    return out.getvalue(), facts


def test_queries_and_facts(source):
    assert 0 < source.ping() < 10
    facts = source.facts()
    assert facts["version"].startswith("15") and facts["size_bytes"] > 0
    assert facts["max_connections"] >= facts["connections"] >= 1
    assert source.tables() == ['public.Odd "Name"', "public.customers", "public.empty_one"]
    assert source.row_counts() == {
        'public.Odd "Name"': 10,
        "public.customers": 3000,
        "public.empty_one": 0,
    }
    # Values with tabs, newlines, quotes and commas survive the CSV round trip.
    assert source.query("SELECT note, NULL FROM public.customers LIMIT 1") == [
        ('tab\there\nnew "q",\\.', ""),
    ]
    assert source.sequences()["public.customers_id_seq"] >= 3000  # other tests may add rows


def test_query_error_names_engine_database_and_stderr(source):
    with pytest.raises(EngineError) as err:
        source.query("SELECT * FROM no_such_table")
    text = str(err.value)
    assert "postgresql" in text and "'crm'" in text and "localhost" in text
    assert "no_such_table" in text


def test_dump_facts_match_source_and_restore_equals(source, scratch_names):
    data, facts = dump_all(source)
    assert facts["row_counts"] == source.row_counts()
    assert facts["tables"] == source.tables()
    assert facts["schema_fingerprint"] == source.schema_fingerprint()
    assert facts["sequences"] == source.sequences()
    assert facts["bytes"] == len(data)
    target = scratch_names()
    restored = source.restore(io.BytesIO(data), target_name=target)
    assert compare_facts(facts, restored) == []
    assert restored["schema_fingerprint"] == facts["schema_fingerprint"]


def test_concurrent_write_does_not_change_snapshot_facts(source, scratch_names):
    out = io.BytesIO()
    try:
        with source.dump(timeout=60) as stream:
            # The snapshot is exported and facts taken; these rows commit before pg_dump reads.
            psql(
                source.db.dbname,
                "INSERT INTO customers (name) SELECT 'late' FROM generate_series(1, 500)",
            )
            while chunk := stream.read():
                out.write(chunk)
            facts = stream.finish()  # also checks the stream's COPY rows equal the snapshot's
        assert source.row_counts()["public.customers"] == 3500
    finally:
        psql(source.db.dbname, "DELETE FROM customers WHERE name = 'late'")
    assert facts["row_counts"]["public.customers"] == 3000
    restored = source.restore(io.BytesIO(out.getvalue()), target_name=scratch_names())
    assert restored["row_counts"]["public.customers"] == 3000


PARTITIONED = r'''
CREATE TABLE events (id int NOT NULL, kind text) PARTITION BY RANGE (id);
CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (1000);
CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (1000) TO (2000);
CREATE TABLE notes (body text);
CREATE TABLE "Odd ""Notes""" (extra int) INHERITS (notes);
CREATE UNLOGGED TABLE scratch (k int);
INSERT INTO events SELECT g, 'k' || g FROM generate_series(0, 1999) g;
INSERT INTO notes VALUES ('plain');
INSERT INTO "Odd ""Notes""" VALUES ('child', 1);
INSERT INTO scratch SELECT generate_series(1, 50);
CREATE INDEX events_kind ON events (kind);
'''


def test_restore_loads_frozen_rows_of_partitions_children_and_odd_names(scratch_names):
    """COPY … WITH (FREEZE) for every table the dump creates, never for a partitioned parent."""
    src = scratch_names()
    psql("postgres", f'CREATE DATABASE "{src}"')
    psql(src, PARTITIONED)
    db = Database(name="crm", engine="postgresql", host="local", dbname=src, address="127.0.0.1")
    db.user = "postgres"
    engine = engine_for(db, LocalTransport())
    data, facts = dump_all(engine)
    target = scratch_names()
    restored = engine.restore(io.BytesIO(data), target_name=target)
    assert compare_facts(facts, restored) == []
    assert restored["row_counts"]["public.events_high"] == 1000
    frozen = psql(
        target,
        "CREATE EXTENSION pg_visibility;"
        "SELECT c.relname, bool_and(v.all_frozen) FROM pg_class c,"
        " LATERAL pg_visibility_map(c.oid) v WHERE c.relkind = 'r' AND c.relnamespace ="
        " 'public'::regnamespace GROUP BY 1 ORDER BY 1",
    )
    assert frozen.splitlines() == [
        'Odd "Notes"|t',
        "events_high|t",
        "events_low|t",
        "notes|t",
        "scratch|t",
    ]
    parallel = scratch_names()
    again = engine.restore(io.BytesIO(b""), target_name=parallel, layout=layout_of(data, facts))
    assert compare_facts(facts, again) == []
    # Without one transaction the tables are not created in the loading one: no FREEZE.
    plain = scratch_names()
    engine.restore(io.BytesIO(data), target_name=plain, single_transaction=False)
    assert psql(plain, "SELECT count(*) FROM events").strip() == "2000"


def layout_of(data: bytes, facts: dict, fail_from: int | None = None) -> DumpLayout:
    def open_range(start: int, end: int):
        if fail_from is not None and end > fail_from:
            raise IntegrityError(f"chunk at {fail_from} does not authenticate")
        return io.BytesIO(data[start:end])

    layout = DumpLayout.from_facts(facts, len(data), open_range)
    assert layout is not None
    return layout


CONTENT = "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM customers t"


def test_parallel_restore_in_pieces_equals_the_source(source, scratch_names, monkeypatch):
    """Tables on four connections, the big one cut at row boundaries into pieces."""
    monkeypatch.setattr(pgload, "MIN_PIECE", 4096)
    data, facts = dump_all(source)
    assert len(facts["copy_sections"]) == 3
    pieces = pgload.plan_pieces(layout_of(data, facts).sections, 4)
    assert sum(p.section == 1 for p in pieces) >= 5  # customers, cut into pieces
    target = scratch_names()
    layout = layout_of(data, facts)
    restored = source.restore(io.BytesIO(b""), target_name=target, layout=layout, jobs=4)
    assert compare_facts(facts, restored) == []
    assert psql(target, CONTENT) == psql(source.db.dbname, CONTENT)
    # Sequences, indexes and constraints came after the data: all there.
    assert (
        psql(target, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'").strip() == "4"
    )


def test_parallel_restore_failure_cancels_the_other_connection_and_drops(source, scratch_names):
    data, facts = dump_all(source)
    target = scratch_names()
    broken = layout_of(data, facts, fail_from=facts["copy_sections"][1][0] + 10)
    with pytest.raises(IntegrityError, match="does not authenticate"):
        source.restore(io.BytesIO(b""), target_name=target, layout=broken, timeout=60)
    assert not source.exists(target)


def test_restore_into_existing_refuses_without_force(source, scratch_names):
    data, facts = dump_all(source)
    target = scratch_names()
    psql("postgres", f'CREATE DATABASE "{target}"')
    with pytest.raises(RestoreTargetExists) as err:
        source.restore(io.BytesIO(data), target_name=target)
    assert isinstance(err.value, EngineError) and isinstance(err.value, RestoreError)
    restored = source.restore(io.BytesIO(data), target_name=target, force=True)
    assert compare_facts(facts, restored) == []
    with pytest.raises(EngineError):
        source.restore(io.BytesIO(data), target_name=source.db.dbname, force=True)
    with pytest.raises(EngineError):
        source.restore(io.BytesIO(data), target_name="bad name; drop")


def test_broken_restore_stream_fails_and_leaves_no_database(source, scratch_names):
    target = scratch_names()
    with pytest.raises(EngineError, match="restore into"):
        source.restore(
            io.BytesIO(b"CREATE TABLE t (x int);\nNOT SQL AT ALL;\n"), target_name=target
        )
    assert not source.exists(target)


BAD_POST_DATA = b"""SET client_encoding = 'UTF8';
--
-- Name: t; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.t (id integer);

--
-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.t (id) FROM stdin;
1
\\.

--
-- Name: t_a; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX t_a ON public.t USING btree (id);

--
-- Name: t_b; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX t_b ON public.t USING btree (no_such_column);

--
-- Name: t_c; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX t_c ON public.t USING btree (id);
"""


def test_failing_post_data_item_fails_the_restore_and_drops_it(source, scratch_names):
    target = scratch_names()
    with pytest.raises(EngineError, match="no_such_column"):
        source.restore(io.BytesIO(BAD_POST_DATA), target_name=target, timeout=60)
    assert not source.exists(target)


def test_dump_of_missing_database_fails(source):
    missing = source.for_database(f"crmtest_missing_{secrets.token_hex(3)}")
    with pytest.raises(EngineError, match="does not exist"), missing.dump() as stream:
        stream.read()


def test_killed_dump_fails_at_finish(source):
    with pytest.raises(EngineError, match="killed"), source.dump() as stream:
        stream.kill()
        while stream.read():
            pass
        stream.finish()


def test_abandoned_dump_raises(source):
    with pytest.raises(EngineError, match="before the end"), source.dump() as stream:
        stream.read(10)


def test_password_travels_in_env_not_argv(source, monkeypatch):
    secret = f"pw-{secrets.token_hex(6)}"
    monkeypatch.setenv("CRMTEST_PG_PASSWORD", secret)
    source.db.password = SecretSource("env:CRMTEST_PG_PASSWORD")
    seen: list[tuple[bytes, bytes, bytes]] = []
    with source.dump() as stream:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
                with open(f"/proc/{pid}/environ", "rb") as f:
                    environ = f.read()
            except OSError:
                continue
            program = os.path.basename(cmdline.split(b"\0")[0])
            if program in (b"pg_dump", b"psql") and source.db.dbname.encode() in cmdline:
                seen.append((program, cmdline, environ))
        while stream.read():
            pass
        stream.finish()
    # The snapshot session runs throughout; a small pg_dump may be done before we look.
    assert b"psql" in {program for program, _, _ in seen}
    for _pid, cmdline, environ in seen:
        assert secret.encode() not in cmdline
        assert f"PGPASSWORD={secret}".encode() in environ.split(b"\0")


def test_lock_wait_hits_dump_timeout(source):
    holder = subprocess.Popen(
        ["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", source.db.dbname],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        holder.stdin.write(b"BEGIN; LOCK TABLE customers IN ACCESS EXCLUSIVE MODE; SELECT 1;\n")
        holder.stdin.flush()
        psql(source.db.dbname, "SELECT 1")  # give the lock a moment to be taken
        with pytest.raises(EngineError), source.dump(timeout=2) as stream:
            while stream.read():
                pass
            stream.finish()
    finally:
        holder.kill()
        holder.wait()


def test_copy_row_counter_across_chunk_boundaries():
    dump = (
        b"SET x = 1;\nCOPY public.a (id) FROM stdin;\n1\n2\n3\n\\.\n\n"
        b'COPY "s p"."B""q" (id) FROM stdin;\n\\.\nCOPY public.c (v) FROM stdin;\nx\\\\.\ny\n\\.\n'
    )
    for size in (1, 2, 3, 5, 7, 64):
        counter = CopyRowCounter()
        for i in range(0, len(dump), size):
            counter.feed(dump[i : i + size])
        assert counter.counts == {"public.a": 3, 's p.B"q': 0, "public.c": 2}, size
        blocks = [dump[start:end] for start, end in counter.sections]
        assert blocks == [
            b"COPY public.a (id) FROM stdin;\n1\n2\n3\n\\.\n",
            b'COPY "s p"."B""q" (id) FROM stdin;\n\\.\n',
            b"COPY public.c (v) FROM stdin;\nx\\\\.\ny\n\\.\n",
        ], size


@given(st.lists(st.integers(1, 200), max_size=20))
def test_copy_row_counter_does_not_depend_on_where_chunks_end(cuts):
    """Any split of the stream counts the same rows and finds the same sections as one piece."""
    dump = b"".join(
        b"SET x = %d;\nCOPY public.t%d (id, v) FROM stdin;\n" % (i, i)
        + b"".join(b"%d\tva\\.lue \\N\n" % r for r in range(i * 3))
        + b"\\.\n\n\n"
        for i in range(6)
    )
    whole = CopyRowCounter()
    whole.feed(dump)
    split = CopyRowCounter()
    at = 0
    for cut in cuts:
        split.feed(dump[at : at + cut])
        at += cut
    split.feed(dump[at:])
    assert split.counts == whole.counts == {f"public.t{i}": i * 3 for i in range(6)}
    assert split.sections == whole.sections and len(whole.sections) == 6
