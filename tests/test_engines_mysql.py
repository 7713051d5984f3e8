"""MariaDB adapter against the real local server (127.0.0.1:3306) through LocalTransport."""

from __future__ import annotations

import io
import secrets
import subprocess

import pytest

from crmmaint.engines import RestoreTargetExists, compare_facts, engine_for
from crmmaint.engines.mysql import InsertRowCounter, MySQLEngine, parse_batch
from crmmaint.errors import EngineError
from crmmaint.inventory import Database
from crmmaint.transport.local import LocalTransport

SCHEMA = r"""
CREATE TABLE customers (id int AUTO_INCREMENT PRIMARY KEY, name varchar(100) NOT NULL UNIQUE,
                        note text, data blob);
CREATE TABLE `odd``name` (id int PRIMARY KEY, cid int, FOREIGN KEY (cid) REFERENCES customers(id));
CREATE TABLE empty_one (k int);
CREATE VIEW customer_names AS SELECT id, name FROM customers;
INSERT INTO customers (name, note, data)
  SELECT concat('n', seq), 'a),(b''\\\n\t(', unhex('00FF2728') FROM seq_1_to_2000;
INSERT INTO `odd``name` SELECT seq, seq FROM seq_1_to_10;
"""


def mariadb(sql: str, database: str | None = None) -> str:
    args = ["mariadb", "--protocol=TCP", "-h", "127.0.0.1", "-uroot", "--batch"]
    out = subprocess.run(
        args + ([database] if database else []), input=sql.encode(), capture_output=True, check=True
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
        mariadb(f"DROP DATABASE IF EXISTS `{n}`")


@pytest.fixture(scope="module")
def source_db():
    """One source database for the module; tests that write to it undo their writes."""
    name = f"crmtest_{secrets.token_hex(4)}"
    mariadb(f"CREATE DATABASE `{name}`")
    mariadb(SCHEMA, name)
    yield name
    mariadb(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def source(source_db) -> MySQLEngine:
    db = Database(name="crm", engine="mysql", host="local", dbname=source_db, address="127.0.0.1")
    db.user = "root"
    engine = engine_for(db, LocalTransport())
    assert isinstance(engine, MySQLEngine)
    return engine


def dump_all(engine: MySQLEngine) -> tuple[bytes, dict]:
    out = io.BytesIO()
    with engine.dump(timeout=60) as stream:
        while chunk := stream.read(1 << 16):
            out.write(chunk)
        facts = stream.finish()
    return out.getvalue(), facts


def test_queries_and_facts(source):
    assert 0 < source.ping() < 10
    facts = source.facts()
    assert "MariaDB" in facts["version"] and facts["max_connections"] > 0
    assert source.tables() == ["customers", "empty_one", "odd`name"]
    assert source.row_counts() == {"customers": 2000, "empty_one": 0, "odd`name": 10}
    assert source.query("SELECT note, NULL FROM customers LIMIT 1") == [("a),(b'\\\n\t(", "NULL")]
    with pytest.raises(EngineError, match="no_such_table"):
        source.query("SELECT * FROM no_such_table")


def test_dump_facts_from_stream_and_restore(source, scratch_names):
    data, facts = dump_all(source)
    assert facts["row_counts"] == source.row_counts()
    assert facts["tables"] == source.tables()
    assert facts["schema_fingerprint"] == source.schema_fingerprint()
    restored = source.restore(io.BytesIO(data), target_name=scratch_names())
    assert compare_facts(facts, restored) == []


def test_facts_describe_the_dump_despite_concurrent_writes(source, scratch_names):
    out = io.BytesIO()
    try:
        with source.dump(timeout=60) as stream:
            out.write(stream.read(1 << 16))
            mariadb(
                "INSERT INTO customers (name) SELECT concat('late', seq) FROM seq_1_to_50",
                source.db.dbname,
            )
            while chunk := stream.read():
                out.write(chunk)
            facts = stream.finish()
    finally:
        mariadb("DELETE FROM customers WHERE name LIKE 'late%'", source.db.dbname)
    restored = source.restore(io.BytesIO(out.getvalue()), target_name=scratch_names())
    # Whatever the dump holds, its facts say exactly that (counted from the stream).
    assert restored["row_counts"] == facts["row_counts"]


def test_restore_refusals(source, scratch_names):
    data, facts = dump_all(source)
    target = scratch_names()
    mariadb(f"CREATE DATABASE `{target}`")
    with pytest.raises(RestoreTargetExists):
        source.restore(io.BytesIO(data), target_name=target)
    assert (
        compare_facts(facts, source.restore(io.BytesIO(data), target_name=target, force=True)) == []
    )
    with pytest.raises(EngineError, match="source database"):
        source.restore(io.BytesIO(data), target_name=source.db.dbname, force=True)


def test_broken_restore_fails_and_drops_target(source, scratch_names):
    target = scratch_names()
    with pytest.raises(EngineError, match="restore into"):
        source.restore(io.BytesIO(b"CREATE TABLE t (x int);\nNOT SQL;\n"), target_name=target)
    assert not source.exists(target)


def test_failing_and_killed_dumps(source):
    missing = source.for_database(f"crmtest_missing_{secrets.token_hex(3)}")
    with pytest.raises(EngineError), missing.dump() as stream:
        while stream.read():
            pass
        stream.finish()
    with pytest.raises(EngineError, match="killed"), source.dump() as stream:
        stream.kill()
        while stream.read():
            pass
        stream.finish()


def test_insert_counter_handles_both_layouts_and_tricky_strings():
    dump = (
        b"CREATE TABLE `e` (\n  `k` int\n);\n"
        b"INSERT INTO `a` VALUES (1,'x),(y'),(2,'it''s \\' ('),(3,NULL);\n"
        b"INSERT INTO `a``b` VALUES\n(1,0xFF),\n(2,'(('),\n(3,'');\n"
        b"INSERT INTO `a` VALUES (4,'z');\n"
    )
    for size in (1, 3, 17, 4096):
        counter = InsertRowCounter()
        for i in range(0, len(dump), size):
            counter.feed(dump[i : i + size])
        counter.feed(b"")
        assert counter.counts == {"e": 0, "a": 4, "a`b": 3}, size


def test_parse_batch_unescapes():
    assert parse_batch(b"a\\tb\tc\\nd\\\\\n\n1\tNULL\n") == [("a\tb", "c\nd\\"), ("1", "NULL")]


ROUTINES = r"""DELIMITER //
CREATE TABLE audit (id int, note text)//
INSERT INTO audit VALUES (1, 'DEFINER=`root`@`localhost` stays data')//
CREATE VIEW audit_view AS SELECT id FROM audit//
CREATE TRIGGER audit_note BEFORE INSERT ON audit FOR EACH ROW SET NEW.note = concat('t;', NEW.note)//
CREATE PROCEDURE add_audit(IN n int) BEGIN INSERT INTO audit VALUES (n, 'DEFINER=`x`@`y`;
second line'); END//
CREATE FUNCTION plus_one(x int) RETURNS int DETERMINISTIC RETURN x + 1//
CREATE EVENT audit_purge ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM audit WHERE id < 0//
"""


@pytest.mark.parametrize("privilege", ["least", "full"])
def test_routines_views_triggers_and_events_restore_least_privileged(scratch_names, privilege):
    """A least-privilege restore loads as an account limited to the new database; the dump's
    DEFINER clauses (statement heads only, never data) name that account, so every routine,
    view, trigger and event is created and works. ``full`` keeps the dump's definers."""
    name, copy = scratch_names(), scratch_names()
    mariadb(f"CREATE DATABASE `{name}`")
    args = ["mariadb", "--protocol=TCP", "-h", "127.0.0.1", "-uroot", name]
    statements = ROUTINES.replace(";\n", "//\n").replace(
        "second line'); END//", "second line'); END//"
    )
    script = "DELIMITER //\n" + statements.replace(
        "VALUES (n, 'DEFINER=`x`@`y`//", "VALUES (n, 'DEFINER=`x`@`y`;"
    )
    subprocess.run(args, input=script.encode(), check=True, capture_output=True)
    db = Database(name="crm", engine="mysql", host="local", dbname=name, address="127.0.0.1",
                  user="root", restore_privilege=privilege)  # fmt: skip
    engine = engine_for(db, LocalTransport())
    dump, facts = dump_all(engine)
    restored = engine.restore(io.BytesIO(dump), target_name=copy)
    assert compare_facts(facts, restored) == []
    definers = mariadb(
        "SELECT DISTINCT definer FROM information_schema.routines WHERE routine_schema = "
        f"'{copy}' UNION SELECT definer FROM information_schema.views WHERE table_schema = "
        f"'{copy}' UNION SELECT definer FROM information_schema.triggers WHERE trigger_schema "
        f"= '{copy}' UNION SELECT definer FROM information_schema.events WHERE event_schema = "
        f"'{copy}'"
    ).split()[1:]
    if privilege == "least":
        assert len(definers) == 1 and definers[0].startswith("crmmaint_load_"), definers
    else:
        assert all(d.startswith("root@") for d in definers), definers
    notes = mariadb(
        "CALL add_audit(7); SELECT plus_one(1); SELECT note FROM audit ORDER BY id", copy
    )
    assert "DEFINER=`root`@`localhost` stays data" in notes  # data is never rewritten
    assert "t;DEFINER=`x`@`y`;\\nsecond line" in notes  # nor a routine's body
    engine.drop(copy)
    left = mariadb(f"SELECT count(*) FROM mysql.user WHERE user LIKE 'crmmaint_load%' AND user = "
                   f"'{definers[0].split('@')[0]}'")  # fmt: skip
    assert left.split()[-1] == "0"  # dropping the target drops its load account


def test_system_versioned_tables_are_in_the_facts(scratch_names):
    """A system-versioned table is a table like any other to a drill (its current rows; the
    history is not in a dump)."""
    name, copy = scratch_names(), scratch_names()
    mariadb(f"CREATE DATABASE `{name}`")
    mariadb("CREATE TABLE sv (id int PRIMARY KEY, v int) WITH SYSTEM VERSIONING;"
            "INSERT INTO sv VALUES (1, 1), (2, 2), (3, 3); DELETE FROM sv WHERE id = 3;", name)  # fmt: skip
    db = Database(name="crm", engine="mysql", host="local", dbname=name, address="127.0.0.1",
                  user="root")  # fmt: skip
    engine = engine_for(db, LocalTransport())
    dump, facts = dump_all(engine)
    assert facts["row_counts"] == {"sv": 2}
    restored = engine.restore(io.BytesIO(dump), target_name=copy)
    assert compare_facts(facts, restored) == [] and restored["row_counts"] == {"sv": 2}
