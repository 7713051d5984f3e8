"""One contract for every engine that restores: PostgreSQL and MariaDB (the real servers),
SQLite and file sets (through LocalTransport). Each source is dumped, restored into a new target
and compared with ``compare_facts``; an existing target, the source's own name, invalid names
and a load that fails midway are handled the same way by all (``RestoreRoutine.run_restore``).

Redis is not here: crmmaint clears caches, it never backs one up or restores one.
Targets get unique names (others use the same servers at the same time) and are removed.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import secrets
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crmmaint.engines import engine_for
from crmmaint.engines.base import DatabaseEngine, DumpLayout, Facts, compare_facts
from crmmaint.engines.files import FileSetSource
from crmmaint.errors import EngineError, IntegrityError, RestoreError, RestoreTargetExists
from crmmaint.inventory import Database, FileSet
from crmmaint.transport.local import LocalTransport

ENGINES = ["postgresql", "mysql", "sqlite", "files"]

PSQL = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"]
MARIADB = ["mariadb", "--protocol=TCP", "-h", "127.0.0.1", "-uroot", "--batch", "-N"]

PG_SCHEMA = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, note text);
CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers(id), total numeric);
CREATE INDEX customers_name ON customers (lower(name));
CREATE VIEW customer_names AS SELECT id, name FROM customers;
INSERT INTO customers (name, note)
  SELECT 'n' || g, E'tab\\there, "quoted"\\nline ' || repeat('x', 40) FROM generate_series(1, 1500) g;
INSERT INTO orders SELECT g, 1 + g % 1500, g * 1.5 FROM generate_series(1, 400) g;
"""

MY_SCHEMA = """
CREATE TABLE customers (id int AUTO_INCREMENT PRIMARY KEY, name varchar(100) NOT NULL,
                        note text);
CREATE TABLE orders (id int PRIMARY KEY, customer_id int, total decimal(10, 2),
                     FOREIGN KEY (customer_id) REFERENCES customers(id));
CREATE INDEX customers_name ON customers (name);
CREATE VIEW customer_names AS SELECT id, name FROM customers;
INSERT INTO customers (name, note)
  SELECT concat('n', seq), concat('a),(b''\\\\\\n\\t(', repeat('x', 40)) FROM seq_1_to_1500;
INSERT INTO orders SELECT seq, 1 + seq % 1500, seq * 1.5 FROM seq_1_to_400;
"""

#: What a damaged stream continues with after its first half: bytes no loader accepts.
JUNK = hashlib.shake_256(b"crmmaint engine contract").digest(16384)


def psql(dbname: str, sql: str) -> str:
    done = subprocess.run([*PSQL, "-d", dbname], input=sql, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def mariadb(sql: str, database: str | None = None) -> str:
    command = MARIADB + ([database] if database else [])
    done = subprocess.run(command, input=sql, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class Case:
    """One engine under the contract: a source holding data, and how to see its targets
    without crmmaint."""

    kind: str
    restorer: DatabaseEngine | FileSetSource
    #: The source's own name, as a restore target would name it.
    source_target: str
    invalid_targets: list[str]
    #: A unique name no target has yet.
    new_target: Callable[[], str]
    #: What exists of a target (a database, a file and its partial copies, a directory and its
    #: staging copies); empty when nothing is left.
    leftovers: Callable[[str], list[str]]
    #: Make a target exist, holding a marker; and tell whether the marker is still there.
    occupy: Callable[[str], None]
    marked: Callable[[str], bool]
    #: Remove a target without crmmaint (test cleanup).
    remove: Callable[[str], None]
    #: The source's facts now, to show it is untouched.
    source_facts: Callable[[], Facts]
    made: list[str] = field(default_factory=list)
    #: The server's own databases: refused even with force, and left as they are.
    reserved_targets: list[str] = field(default_factory=list)

    def restore(
        self, stream, target: str, *, force: bool = False, layout: DumpLayout | None = None
    ) -> Facts:
        if isinstance(self.restorer, FileSetSource):
            return self.restorer.restore(stream, target, force, timeout=120)
        return self.restorer.restore(
            stream, target_name=target, force=force, timeout=120, layout=layout
        )

    def target(self) -> str:
        self.made.append(self.new_target())
        return self.made[-1]


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def postgresql_case(tmp: Path) -> Iterator[Case]:
    name = unique("crmcontract")
    psql("postgres", f'CREATE DATABASE "{name}"')
    psql(name, PG_SCHEMA)
    db = Database(name="crm", engine="postgresql", host="local", dbname=name, address="127.0.0.1")
    db.user = "postgres"
    engine = engine_for(db, LocalTransport())

    def leftovers(target: str) -> list[str]:
        return psql(
            "postgres", f"SELECT datname FROM pg_database WHERE datname = '{target}'"
        ).split()

    def remove(target: str) -> None:
        try:
            engine.drop(target)  # removes its load role too
        finally:
            psql("postgres", f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')

    def occupy(target: str) -> None:
        psql("postgres", f'CREATE DATABASE "{target}"')
        psql(target, "CREATE TABLE marker (x int)")

    def marked(target: str) -> bool:
        return psql(target, "SELECT to_regclass('public.marker') IS NOT NULL").strip() == "t"

    yield Case(
        kind="postgresql",
        restorer=engine,
        source_target=name,
        invalid_targets=["bad name; drop", "", "1digit", "x" * 64, "dash-name", "new\nline"],
        reserved_targets=["postgres", "template0", "template1", "Template1"],
        new_target=lambda: unique("crmcontract_t"),
        leftovers=leftovers,
        occupy=occupy,
        marked=marked,
        remove=remove,
        source_facts=engine.snapshot_facts,
    )
    psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def mysql_case(tmp: Path) -> Iterator[Case]:
    name = unique("crmcontract")
    mariadb(f"CREATE DATABASE `{name}`")
    mariadb(MY_SCHEMA, name)
    db = Database(name="crm", engine="mysql", host="local", dbname=name, address="127.0.0.1")
    db.user = "root"
    engine = engine_for(db, LocalTransport())

    def leftovers(target: str) -> list[str]:
        return mariadb(f"SHOW DATABASES LIKE '{target}'").split()

    def remove(target: str) -> None:
        try:
            engine.drop(target)  # removes its load user too
        finally:
            mariadb(f"DROP DATABASE IF EXISTS `{target}`")

    def occupy(target: str) -> None:
        mariadb(f"CREATE DATABASE `{target}`")
        mariadb("CREATE TABLE marker (x int)", target)

    def marked(target: str) -> bool:
        return bool(mariadb(f"SHOW TABLES FROM `{target}` LIKE 'marker'").strip())

    yield Case(
        kind="mysql",
        restorer=engine,
        source_target=name,
        invalid_targets=["bad name; drop", "", "1digit", "x" * 64, "dash-name", "back`tick"],
        reserved_targets=["mysql", "sys", "performance_schema", "information_schema"],
        new_target=lambda: unique("crmcontract_t"),
        leftovers=leftovers,
        occupy=occupy,
        marked=marked,
        remove=remove,
        source_facts=engine.snapshot_facts,
    )
    mariadb(f"DROP DATABASE IF EXISTS `{name}`")


def sqlite_case(tmp: Path) -> Iterator[Case]:
    path = tmp / "crm source.sqlite"
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE customers (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
                                note TEXT);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id));
        CREATE INDEX customers_name ON customers (lower(name));
        CREATE VIEW customer_names AS SELECT id, name FROM customers;
        """
    )
    con.executemany(
        "INSERT INTO customers (name, note) VALUES (?, ?)",
        [(f"n{i}", f"note {i} " + "x" * 60) for i in range(3000)],
    )
    con.executemany("INSERT INTO orders VALUES (?, ?)", [(i, 1 + i % 3000) for i in range(400)])
    con.commit()
    con.close()
    engine = engine_for(
        Database(name="crm", engine="sqlite", host="local", path=str(path)), LocalTransport()
    )

    def leftovers(target: str) -> list[str]:
        return glob.glob(glob.escape(target) + "*")

    def remove(target: str) -> None:
        for found in leftovers(target):
            os.remove(found)

    def occupy(target: str) -> None:
        made = sqlite3.connect(target)
        made.execute("CREATE TABLE marker (x int)")
        made.commit()
        made.close()

    def marked(target: str) -> bool:
        found = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
        try:
            return bool(
                found.execute("SELECT 1 FROM sqlite_master WHERE name = 'marker'").fetchall()
            )
        finally:
            found.close()

    yield Case(
        kind="sqlite",
        restorer=engine,
        source_target=str(path),
        invalid_targets=["", "dir/", "nul\0byte", "/"],
        new_target=lambda: str(tmp / f"{unique('restored')}.sqlite"),
        leftovers=leftovers,
        occupy=occupy,
        marked=marked,
        remove=remove,
        source_facts=engine.snapshot_facts,
    )


def files_case(tmp: Path) -> Iterator[Case]:
    root = tmp / "attachments"
    (root / "2024" / "invoices").mkdir(parents=True)
    for i in range(12):
        (root / "2024" / "invoices" / f"invoice {i}.pdf").write_bytes(
            hashlib.shake_256(b"%d" % i).digest(3000 + 700 * i)
        )
    (root / "readme.txt").write_text("customer attachments\n")
    (root / "2024" / "empty").write_bytes(b"")
    source = FileSetSource(FileSet(name="att", host="local", paths=[str(root)]), LocalTransport())

    def leftovers(target: str) -> list[str]:
        parent, base = os.path.split(target)
        return glob.glob(glob.escape(target) + "*") + glob.glob(
            os.path.join(glob.escape(parent), "." + glob.escape(base) + ".crmmaint-*")
        )

    def remove(target: str) -> None:
        for found in leftovers(target):
            shutil.rmtree(found, ignore_errors=True)

    def occupy(target: str) -> None:
        os.makedirs(target)
        Path(target, "marker").write_text("old content\n")

    def marked(target: str) -> bool:
        return Path(target, "marker").exists()

    def source_facts() -> Facts:
        with source.dump(timeout=60) as stream:
            while stream.read():
                pass
            return stream.finish()

    yield Case(
        kind="files",
        restorer=source,
        source_target=str(root),
        invalid_targets=["", "relative/dir", "/", "/tmp/..", "/."],
        new_target=lambda: str(tmp / unique("restored")),
        leftovers=leftovers,
        occupy=occupy,
        marked=marked,
        remove=remove,
        source_facts=source_facts,
    )


CASES = {
    "postgresql": postgresql_case,
    "mysql": mysql_case,
    "sqlite": sqlite_case,
    "files": files_case,
}


@pytest.fixture(scope="module", params=ENGINES)
def engine_case(request, tmp_path_factory) -> Iterator[Case]:
    tmp = tmp_path_factory.mktemp(request.param)
    yield from CASES[request.param](tmp)


@pytest.fixture
def case(engine_case: Case) -> Iterator[Case]:
    """The engine's case; every target a test names is removed afterwards."""
    yield engine_case
    made, engine_case.made = engine_case.made, []
    for target in made:
        engine_case.remove(target)


@pytest.fixture(scope="module")
def dumped(engine_case: Case) -> tuple[bytes, Facts]:
    """The source's dump and the facts it recorded (taken once per engine)."""
    with engine_case.restorer.dump(timeout=120) as stream:
        data = b"".join(iter(stream.read, b""))
        facts = stream.finish()
    return data, facts


class Counted(io.RawIOBase):
    """A stream that counts what was read of it (a refused restore reads nothing)."""

    def __init__(self, data: bytes) -> None:
        self.inner = io.BytesIO(data)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.read_bytes += len(data)
        return data


class FailsMidway(io.RawIOBase):
    """A stream whose source fails after half its bytes, as a repository read does at a chunk
    that does not authenticate."""

    def __init__(self, data: bytes) -> None:
        self.inner = io.BytesIO(data)
        self.limit = len(data) // 2

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.inner.tell() >= self.limit:
            raise IntegrityError("object data/ab/cd failed authentication")
        return self.inner.read(min(size if size >= 0 else 4096, 4096))


def layout_of(data: bytes, facts: Facts) -> DumpLayout | None:
    """Random access to the dump where its facts say where its table data lies (PostgreSQL)."""
    return DumpLayout.from_facts(facts, len(data), lambda a, b: io.BytesIO(data[a:b]))


def test_dump_restore_into_a_new_target_gives_equal_facts(case, dumped):
    data, facts = dumped
    target = case.target()
    restored = case.restore(io.BytesIO(data), target, layout=layout_of(data, facts))
    assert compare_facts(facts, restored) == []


def test_an_existing_target_is_refused_without_force_and_replaced_with_it(case, dumped):
    data, facts = dumped
    target = case.target()
    case.occupy(target)
    stream = Counted(data)
    with pytest.raises(RestoreTargetExists) as refused:
        case.restore(stream, target)
    assert isinstance(refused.value, RestoreError) and isinstance(refused.value, EngineError)
    assert refused.value.exit_code == 6
    assert stream.read_bytes == 0 and case.marked(target)
    restored = case.restore(io.BytesIO(data), target, force=True)
    assert compare_facts(facts, restored) == []
    assert not case.marked(target)


def test_the_source_is_refused_as_a_target_even_with_force(case, dumped):
    data, facts = dumped
    stream = Counted(data)
    with pytest.raises(EngineError, match="refusing to restore over the source"):
        case.restore(stream, case.source_target, force=True)
    assert stream.read_bytes == 0
    assert compare_facts(facts, case.source_facts()) == []


def test_system_databases_are_refused_even_with_force_and_in_check_mode(case, dumped):
    """A forced restore into `template1`, `mysql` or `sys` would drop the server's own
    database: refused before anything is read, also by the preflight `--check` runs."""
    data, _ = dumped
    for name in case.reserved_targets:
        stream = Counted(data)
        with pytest.raises(RestoreError, match="system database"):
            case.restore(stream, name, force=True)
        assert stream.read_bytes == 0, name
        with pytest.raises(RestoreError, match="system database"):
            case.restorer.preflight(name, force=True)
    if case.kind == "postgresql":
        assert psql("template1", "SELECT 1").strip() == "1"
    if case.kind == "mysql":
        assert mariadb("SELECT count(*) > 0 FROM mysql.user").strip() == "1"


def test_invalid_target_names_are_refused_before_anything_is_read(case, dumped):
    data, _ = dumped
    for name in case.invalid_targets:
        stream = Counted(data)
        with pytest.raises((EngineError, RestoreError)):
            case.restore(stream, name, force=True)
        assert stream.read_bytes == 0, name


def test_a_source_that_fails_midway_leaves_no_target(case, dumped):
    """The load's own error is the one raised, and the half-loaded target is gone."""
    data, _ = dumped
    target = case.target()
    with pytest.raises(IntegrityError, match="failed authentication"):
        case.restore(FailsMidway(data), target)
    assert case.leftovers(target) == []


def test_a_corrupted_stream_leaves_no_target(case, dumped):
    data, _ = dumped
    target = case.target()
    with pytest.raises(EngineError):
        case.restore(io.BytesIO(data[: len(data) // 2] + JUNK), target)
    assert case.leftovers(target) == []


def test_a_failed_forced_restore_leaves_the_old_target_or_none(case, dumped):
    """Never a half-loaded one: engines that replace by dropping first leave none, those that
    swap a complete copy in leave the old one as it was."""
    data, _ = dumped
    target = case.target()
    case.occupy(target)
    with pytest.raises(IntegrityError):
        case.restore(FailsMidway(data), target, force=True)
    left = case.leftovers(target)
    assert left == [] or (left == [target] and case.marked(target)), left


def test_an_interrupt_after_the_load_while_its_facts_are_read_leaves_no_target(
    case, dumped, monkeypatch
):
    """Found by a newcomer: Ctrl-C just after the load left a whole target journaled as
    interrupted, and the next restore refused the name as taken. Whatever ends the restore
    before it returns (here while it reads the loaded copy's facts) removes the target."""
    data, facts = dumped

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(case.restorer), "restored_facts", interrupted)
    target = case.target()
    with pytest.raises(KeyboardInterrupt):
        case.restore(io.BytesIO(data), target, layout=layout_of(data, facts))
    assert case.leftovers(target) == []
