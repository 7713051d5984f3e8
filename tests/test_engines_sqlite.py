"""SQLite adapter through LocalTransport: online backup, integrity_check, restore round trip."""

from __future__ import annotations

import io
import os
import sqlite3

import pytest

from crmmaint.engines import RestoreTargetExists, compare_facts, engine_for
from crmmaint.engines.sqlite import SQLiteEngine
from crmmaint.errors import EngineError
from crmmaint.inventory import Database
from crmmaint.transport.local import LocalTransport


@pytest.fixture
def source(tmp_path) -> SQLiteEngine:
    path = tmp_path / "crm db's.sqlite"  # a space and a quote in the path on purpose
    con = sqlite3.connect(path)
    con.executescript(
        '''
        PRAGMA journal_mode = WAL;
        CREATE TABLE customers (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE);
        CREATE TABLE "odd ""name""" (id INTEGER PRIMARY KEY, cid INTEGER REFERENCES customers(id));
        CREATE INDEX customers_name ON customers (lower(name));
        CREATE VIEW names AS SELECT name FROM customers;
        '''
    )
    con.executemany("INSERT INTO customers (name) VALUES (?)", [(f"n{i}",) for i in range(2000)])
    con.executemany('INSERT INTO "odd ""name""" VALUES (?, ?)', [(i, i) for i in range(1, 11)])
    con.commit()
    con.close()
    engine = engine_for(
        Database(name="crm", engine="sqlite", host="local", path=str(path)), LocalTransport()
    )
    assert isinstance(engine, SQLiteEngine)
    return engine


def dump_all(engine: SQLiteEngine) -> tuple[bytes, dict]:
    out = io.BytesIO()
    with engine.dump(timeout=60) as stream:
        while chunk := stream.read(1 << 16):
            out.write(chunk)
        facts = stream.finish()
    return out.getvalue(), facts


def test_queries_and_facts(source):
    assert source.ping() < 10
    assert source.facts()["journal_mode"] == "wal"
    assert source.tables() == ["customers", 'odd "name"']
    assert source.row_counts() == {"customers": 2000, 'odd "name"': 10}
    with pytest.raises(EngineError, match="no such table"):
        source.query("SELECT * FROM nope")


def test_missing_file_is_an_error_and_not_created(tmp_path):
    path = tmp_path / "absent.db"
    engine = engine_for(
        Database(name="x", engine="sqlite", host="local", path=str(path)), LocalTransport()
    )
    with pytest.raises(EngineError):
        engine.ping()
    with pytest.raises(EngineError, match="no such database file") as info, engine.dump():
        pass
    assert info.value.retryable is False  # a retry cannot bring the file back
    assert not path.exists()


def test_backup_restore_round_trip_and_temp_copy_removed(source, tmp_path, monkeypatch):
    temp = tmp_path / "tmp"  # a temp directory of its own: other tests' backups use /tmp
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    data, facts = dump_all(source)
    assert list(temp.iterdir()) == []
    assert data.startswith(b"SQLite format 3\0")
    assert facts["row_counts"] == source.row_counts()
    assert facts["schema_fingerprint"] == source.schema_fingerprint()
    restored = source.restore(io.BytesIO(data), target_name="restored.db")
    assert compare_facts(facts, restored) == []
    assert os.stat(restored["path"]).st_mode & 0o777 == 0o600
    with pytest.raises(RestoreTargetExists):
        source.restore(io.BytesIO(data), target_name="restored.db")
    again = source.restore(io.BytesIO(data), target_name=str(tmp_path / "restored.db"), force=True)
    assert compare_facts(facts, again) == []
    source.drop("restored.db")
    assert not os.path.exists(restored["path"])
    with pytest.raises(EngineError, match="source"):
        source.restore(io.BytesIO(data), target_name=source.path, force=True)


def test_corrupt_source_fails_the_dump(source):
    with open(source.path, "r+b") as f:
        f.seek(4096)  # the b-tree page header of the first table's root page
        f.write(b"\xff" * 16)
    with pytest.raises(EngineError, match="integrity_check"), source.dump() as stream:
        while stream.read():
            pass
        stream.finish()
    with open(source.path, "wb") as f:
        f.write(b"not a database" * 1000)
    with pytest.raises(EngineError, match="online backup"), source.dump():
        pass


def test_corrupt_restore_stream_is_refused(source):
    data, _ = dump_all(source)
    broken = data[:4096] + os.urandom(4096) + data[8192:]
    with pytest.raises(EngineError):
        source.restore(io.BytesIO(broken), target_name="broken.db")
    assert not os.path.exists(os.path.join(os.path.dirname(source.path), "broken.db"))
