"""``indexes.optimize`` against the real servers: real bloat made by bulk updates and deletes,
rebuilt concurrently while another session keeps querying; leftovers of failed rebuilds;
a lock that is not granted in time; work that would not fit the run's deadline; check mode
that changes nothing. Pure parts (the B-tree size estimate, duplicate detection) are tested
without a server."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from crmmaint.engines.postgresql.maintenance import estimated_btree_bytes
from crmmaint.inventory import Database, Host, Inventory
from crmmaint.journal import Journal
from crmmaint.playbook import load_playbook_text
from crmmaint.playbook.run import run_playbook
from crmmaint.results import Status
from tests.clirun import run_cli

PSQL = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"]


def psql(dbname: str, sql: str) -> str:
    out = subprocess.run([*PSQL, "-d", dbname], input=sql.encode(), capture_output=True)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode()


BLOAT = """
CREATE TABLE deals (id bigserial PRIMARY KEY, customer int, amount numeric, note text);
CREATE TABLE tickets (id bigserial PRIMARY KEY, customer int, subject text);
INSERT INTO deals (customer, amount, note)
  SELECT (g * 7919) % 10000, g % 1000, md5(g::text) FROM generate_series(1, 120000) g;
INSERT INTO tickets (customer, subject)
  SELECT (g * 31) % 5000, md5(g::text) FROM generate_series(1, 120000) g;
CREATE INDEX deals_customer ON deals (customer);
CREATE INDEX deals_customer_again ON deals (customer);
CREATE INDEX deals_customer_amount ON deals (customer, amount);
CREATE INDEX tickets_customer ON tickets (customer);
UPDATE deals SET customer = customer + 1 WHERE id % 4 <> 0;
DELETE FROM deals WHERE id % 3 = 0;
UPDATE tickets SET customer = customer + 1 WHERE id % 4 <> 0;
DELETE FROM tickets WHERE id % 3 = 0;
ANALYZE;
"""


@pytest.fixture
def bloated() -> Iterator[str]:
    """A database of two tables whose indexes are mostly dead space."""
    name = f"crmtest_ix_{secrets.token_hex(4)}"
    psql("postgres", f'CREATE DATABASE "{name}"')
    psql(name, BLOAT)
    yield name
    psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _inventory(tmp_path: Path, dbname: str) -> Inventory:
    host = Host(name="local", connection="local")
    db = Database(name="crm", engine="postgresql", host="local", address="127.0.0.1",
                  user="postgres", dbname=dbname)  # fmt: skip
    return Inventory(path=str(tmp_path / "inventory.yml"), hosts={"local": host},
                     databases={"crm": db})  # fmt: skip


def _optimize(
    tmp_path: Path, dbname: str, params: str = "{min_size: 1MB}", **kw
) -> tuple[Status, str, dict]:
    inventory = _inventory(tmp_path, dbname)
    book = load_playbook_text(
        f"steps: [{{name: optimize, task: indexes.optimize, database: crm, with: {params}}}]",
        inventory,
    )
    journal = kw.pop("journal", None)
    summary = run_playbook(book, inventory, journal, **kw)
    (row,) = summary.results
    return (
        row.result.status,
        row.result.message,
        row.result.details | {"metrics": row.result.metrics},
    )


@contextlib.contextmanager
def holding(dbname: str, sql: str) -> Iterator[None]:
    """Another session that has run ``sql`` (a ``BEGIN`` and what it takes: a lock, a
    snapshot) and keeps its transaction open until the block ends."""
    holder = subprocess.Popen([*PSQL, "-d", dbname], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write(f"{sql}; SELECT 'held';\n")
    holder.stdin.flush()
    while (line := holder.stdout.readline()) and line.strip() != "held":
        pass  # what ``sql`` printed
    assert line.strip() == "held"
    try:
        yield
    finally:
        holder.stdin.write("ROLLBACK;\n")
        holder.stdin.close()
        holder.wait(30)


#: Sessions of crmmaint's maintenance statements still on the server, in this database.
OURS_SQL = ("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE"
            " 'crmmaint maintenance%' AND datname = current_database()")  # fmt: skip
#: A transaction that holds a snapshot, which REINDEX CONCURRENTLY waits for.
SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM deals"


def _sizes(dbname: str) -> dict[str, int]:
    rows = psql(
        dbname,
        "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'i'",
    )
    return {name: int(size) for name, size in (line.split("|") for line in rows.split())}


def test_bloated_indexes_shrink_while_queries_go_on(tmp_path: Path, bloated: str) -> None:
    before = _sizes(bloated)
    errors: list[str] = []
    latencies: list[float] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            start = time.monotonic()
            out = subprocess.run(
                [*PSQL, "-d", bloated, "-c",
                 "SELECT count(*) FROM deals WHERE customer BETWEEN 10 AND 20"],
                capture_output=True,
            )  # fmt: skip
            latencies.append(time.monotonic() - start)
            if out.returncode:
                errors.append(out.stderr.decode())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        status, message, details = _optimize(tmp_path, bloated)
    finally:
        stop.set()
        thread.join()
    assert status == Status.CHANGED, message
    assert not errors and latencies  # the table answered throughout
    after = _sizes(bloated)
    rebuilt = {a["object"].split(".")[1] for a in details["actions"] if a["kind"] == "reindex"}
    assert {"deals_pkey", "deals_customer_amount", "tickets_pkey"} <= rebuilt
    for name in rebuilt:
        assert after[name] < before[name] * 0.7, (name, before[name], after[name])
    assert details["metrics"]["bytes_reclaimed"] == sum(a["reclaimed"] for a in details["actions"])
    assert details["metrics"]["bytes_reclaimed"] > 0
    assert details["method"] == "bloat estimated from the catalog statistics"
    assert message.startswith("bloat estimated from the catalog statistics: ")
    # reported, never dropped
    kinds = {(f["kind"], f["object"]) for f in details["findings"]}
    assert ("duplicate", "public.deals_customer_again") in kinds
    assert ("redundant", "public.deals_customer") in kinds
    assert "deals_customer_again" in after and "deals_customer" in after
    vacuumed = {a["object"] for a in details["actions"] if a["kind"] == "vacuum"}
    assert vacuumed == {"public.deals", "public.tickets"}
    assert int(psql(bloated, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'deals'"
                    ).strip() or 0) < 1000  # fmt: skip
    # nothing is rebuilt again (a VACUUM may run again while the server's statistics have not
    # yet counted the last one's work)
    _, again, again_details = _optimize(tmp_path, bloated)
    assert not [a for a in again_details["actions"] if a["kind"] != "vacuum"], again


def test_odd_names_are_quoted(tmp_path: Path, bloated: str) -> None:
    """Schemas, tables and indexes whose names need quoting (spaces, dots, quotes, another
    script) are rebuilt, vacuumed and reported like any other."""
    psql(
        bloated,
        'CREATE SCHEMA "S p.";'
        'CREATE TABLE "S p."."T ""1"".x" (id int PRIMARY KEY, k text);'
        'CREATE INDEX "ix ""q"" ünï" ON "S p."."T ""1"".x" (k);'
        'CREATE INDEX "ix ""q"" ünï_again" ON "S p."."T ""1"".x" (k);'
        'INSERT INTO "S p."."T ""1"".x" SELECT g, md5(g::text)'
        " FROM generate_series(1, 40000) g;"
        'DELETE FROM "S p."."T ""1"".x" WHERE id % 5 <> 0; ANALYZE;',
    )
    status, message, details = _optimize(tmp_path, bloated, "{min_size: 0}")
    assert status == Status.CHANGED and not details["failed"], message
    done = {(a["kind"], a["object"]) for a in details["actions"]}
    assert ("reindex", 'S p..ix "q" ünï') in done
    assert ("vacuum", 'S p..T "1".x') in done
    findings = {(f["kind"], f["object"]) for f in details["findings"]}
    assert ("duplicate", 'S p..ix "q" ünï_again') in findings


def test_pgstattuple_measures_when_installed(tmp_path: Path, bloated: str) -> None:
    """pgstatindex counts dead entries as used space: after a VACUUM removed them, the pages
    they leave half empty are the bloat."""
    psql(bloated, "CREATE EXTENSION pgstattuple; VACUUM deals; VACUUM tickets")
    status, message, details = _optimize(tmp_path, bloated, "{min_size: 1MB, rebuild: false}")
    assert details["method"] == "bloat from pgstattuple"
    assert message.startswith("bloat from pgstattuple: ")
    proposed = {a["object"] for a in details["proposed"] if a["kind"] == "reindex"}
    assert "public.deals_pkey" in proposed
    assert all("pgstattuple" in a["reason"] for a in details["proposed"]
               if a["kind"] == "reindex")  # fmt: skip
    assert status == Status.OK and "proposed (rebuild: false)" in message


def test_check_mode_changes_nothing(tmp_path: Path, bloated: str) -> None:
    def state() -> str:
        return psql(
            bloated,
            "SELECT string_agg(c.relname || ':' || pg_relation_filenode(c.oid) || ':'"
            " || pg_relation_size(c.oid), ',' ORDER BY c.relname) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public';"
            "SELECT md5(string_agg(d::text, ',' ORDER BY id)) FROM deals d;",
        )

    before = state()
    status, message, details = _optimize(tmp_path, bloated, check=True)
    assert status == Status.CHANGED and message.count("would run") == 1  # would change
    assert {a["kind"] for a in details["actions"]} == {"reindex", "vacuum"}
    assert all(a["statement"] for a in details["actions"])
    assert state() == before


def test_leftover_and_invalid_indexes(tmp_path: Path, bloated: str) -> None:
    """A ``_ccnew`` leftover is dropped; an invalid index that cannot be rebuilt (its
    duplicates remain) fails on its own, and the copy its rebuild left is dropped too."""
    for name in ("tickets_subject_ccnew", "tickets_subject_unique"):
        out = subprocess.run(
            [*PSQL, "-d", bloated, "-c",
             f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON tickets ((customer % 2))"],
            capture_output=True,
        )  # fmt: skip
        assert out.returncode != 0  # duplicates: the index stays behind, invalid
    status, message, details = _optimize(tmp_path, bloated)
    assert status == Status.WARNING, message
    done = {(a["kind"], a["object"]) for a in details["actions"]}
    assert ("drop_leftover", "public.tickets_subject_ccnew") in done
    (failed,) = details["failed"]
    assert failed["object"] == "public.tickets_subject_unique"
    assert "could not create unique index" in failed["error"]
    assert "Key (" not in failed["error"] and "DETAIL" not in failed["error"]  # no row values
    left = _sizes(bloated)
    assert "tickets_subject_ccnew" not in left
    assert not [n for n in left if "_ccnew" in n], left
    assert details["metrics"]["invalid_indexes"] == 2
    assert ("reindex", "public.deals_pkey") in done  # the rest went on


def test_lock_timeout_fails_that_index_only(tmp_path: Path, bloated: str) -> None:
    with holding(bloated, "BEGIN; LOCK TABLE tickets IN SHARE UPDATE EXCLUSIVE MODE"):
        status, _, details = _optimize(tmp_path, bloated, "{min_size: 1MB, lock_timeout: 1s}")
    assert status == Status.WARNING
    failed = {a["object"] for a in details["failed"]}
    assert "public.tickets_pkey" in failed
    assert all(f["error"] for f in details["failed"])
    assert any("lock timeout" in f["error"] for f in details["failed"])
    done = {a["object"] for a in details["actions"]}
    assert "public.deals_pkey" in done and not failed & done
    assert not [n for n in _sizes(bloated) if "_ccnew" in n]  # nothing left behind


def test_a_long_transaction_blocks_a_rebuild_without_piling_up_copies(
    tmp_path: Path, bloated: str
) -> None:
    """A transaction open in another session makes REINDEX CONCURRENTLY wait after it made
    its copy: the rebuild fails at lock_timeout, the copy that cannot be dropped yet is named
    in the result, and later runs drop it before rebuilding again (never a second copy). The
    index's name is long and not ASCII, so PostgreSQL truncates its copy's name by bytes."""
    long_name = "ü" * 31
    psql(bloated, f'ALTER INDEX deals_customer_amount RENAME TO "{long_name}"')
    with holding(bloated, SNAPSHOT):
        status, message, details = _optimize(tmp_path, bloated,
                                             "{min_size: 1MB, lock_timeout: 2s}")  # fmt: skip
        assert status == Status.WARNING, message
        assert details["failed"]
        stays = [f for f in details["failed"] if "until the next run drops it" in f["error"]]
        assert stays, details["failed"]
        copies = [n for n in _sizes(bloated) if "_ccnew" in n]
        assert copies and len(copies) == len(stays)
        assert any(c.startswith("ü") for c in copies)  # the truncated name was found
        again = _optimize(tmp_path, bloated, "{min_size: 1MB, lock_timeout: 2s}")[2]
        assert len([n for n in _sizes(bloated) if "_ccnew" in n]) <= len(copies)
        assert not [
            a
            for a in again["actions"] + again["failed"]
            if a["kind"] == "reindex"
            and a["object"] in {"public.deals_pkey", f"public.{long_name}"}
        ]
    status, message, details = _optimize(tmp_path, bloated, "{min_size: 1MB, lock_timeout: 2s}")
    assert not [n for n in _sizes(bloated) if "_ccnew" in n], message
    dropped = [a for a in details["actions"] if a["kind"] == "drop_leftover"]
    assert dropped and not details["failed"]
    assert psql(bloated, OURS_SQL).strip() == "0"  # nothing of ours still runs on the server


def test_an_interrupted_rebuild_is_cancelled_on_the_server(tmp_path: Path, bloated: str) -> None:
    """SIGTERM while REINDEX CONCURRENTLY waits for an old transaction: crmmaint exits 130,
    and nothing of it goes on running on the server (killing psql alone would leave the
    statement running until it finished by itself)."""
    inv = tmp_path / "inventory.yml"
    inv.write_text(
        "hosts: {local: {connection: local}}\n"
        f"databases: {{crm: {{engine: postgresql, host: local, address: 127.0.0.1,"
        f" user: postgres, name: {bloated}}}}}\n"
        f"settings: {{journal: {tmp_path / 'journal.sqlite'}}}\n"
    )
    book = tmp_path / "book.yml"
    book.write_text("steps: [{name: optimize, task: indexes.optimize, database: all,"
                    " with: {min_size: 1MB, lock_timeout: 5m}}]\n")  # fmt: skip
    with holding(bloated, SNAPSHOT):
        _interrupt_a_waiting_rebuild(bloated, book, inv)
    _optimize(tmp_path, bloated)  # the next run drops what the interrupted one left
    assert not [n for n in _sizes(bloated) if "_ccnew" in n]


def _interrupt_a_waiting_rebuild(bloated: str, book: Path, inv: Path) -> None:
    """``crmmaint run`` of ``book``, SIGTERM once its rebuild waits on the server; it ends
    with 130 and leaves nothing of its own running there."""
    import os
    import signal

    run = subprocess.Popen(
        [str(Path(sys.executable).parent / "crmmaint"), "run", str(book), "-i", str(inv)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(200):  # until its rebuild waits on the server
            if psql(bloated, OURS_SQL).strip() != "0":
                break
            time.sleep(0.1)
        else:
            pytest.fail("the rebuild never started")
        os.kill(run.pid, signal.SIGTERM)
        out, err = run.communicate(timeout=120)
        assert run.returncode == 130, out + err
        assert psql(bloated, OURS_SQL).strip() == "0"  # cancelled on the server, not left running
    finally:
        if run.poll() is None:
            run.kill()


def test_work_that_would_not_fit_is_skipped(tmp_path: Path, bloated: str) -> None:
    """Past rebuilds were slow (1 kB/s, recorded in the journal): a rebuild would take hours,
    and the run has half an hour left."""
    with Journal(tmp_path / "journal.sqlite") as journal:
        journal.state_set("database:crm:rate:reindex", [1000.0])
        ends = datetime.now().astimezone() + timedelta(minutes=30)
        checked = _optimize(tmp_path, bloated, journal=journal, ends_at=ends, check=True)[2]
        assert [s for s in checked["skipped"] if s["kind"] == "reindex"]  # check mode says so
        status, message, details = _optimize(tmp_path, bloated, journal=journal, ends_at=ends)
    assert status == Status.WARNING
    reindex_skipped = [s for s in details["skipped"] if s["kind"] == "reindex"]
    assert reindex_skipped and not [a for a in details["actions"] if a["kind"] == "reindex"]
    why = reindex_skipped[0]["why"]
    assert "would take about" in why and "last 1 run" in why
    assert f"{ends:%H:%M}" in why and "window ends" in why
    assert "skipped" in message


def test_cli_check_then_run_exit_codes(tmp_path: Path, bloated: str) -> None:
    inv = tmp_path / "inventory.yml"
    inv.write_text(
        "hosts: {local: {connection: local}}\n"
        "databases:\n"
        f"  crm: {{engine: postgresql, host: local, address: 127.0.0.1, user: postgres,"
        f" name: {bloated}}}\n"
        f"settings: {{journal: {tmp_path / 'journal.sqlite'}}}\n"
    )
    book = tmp_path / "book.yml"
    book.write_text(
        "steps: [{name: optimize, task: indexes.optimize, database: all, with: {min_size: 1MB}}]\n"
    )
    check = run_cli("run", str(book), "-i", str(inv), "--check")
    assert check.returncode == 0, check.stderr
    assert "would run" in check.stdout
    done = run_cli("run", str(book), "-i", str(inv), "--for", "1h")
    assert done.returncode == 0, done.stderr
    assert "indexes rebuilt" in done.stdout and "reclaimed" in done.stdout
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "steps: [{name: optimize, task: indexes.optimize, database: all,"
        " with: {bloat_threshold: lots}}]\n"
    )
    refused = run_cli("run", str(bad), "-i", str(inv))
    assert refused.returncode == 3 and "bloat_threshold" in refused.stderr


# --- pure parts ----------------------------------------------------------------------------


def test_btree_estimate_matches_a_fresh_index(bloated: str) -> None:
    """A freshly built index is within 25% of the estimate (so bloat under that is never
    mistaken for bloat at the default 30%)."""
    psql(bloated, "REINDEX INDEX deals_pkey; ANALYZE deals")
    size = _sizes(bloated)["deals_pkey"]
    rows = int(psql(bloated, "SELECT reltuples::bigint FROM pg_class WHERE relname = 'deals'"))
    estimate = estimated_btree_bytes(rows, 8, 8192, 90)
    assert abs(estimate - size) / size < 0.25, (estimate, size)


def test_btree_estimate_grows_with_rows_and_width() -> None:
    small = estimated_btree_bytes(1000, 8, 8192, 90)
    assert estimated_btree_bytes(0, 8, 8192, 90) == 3 * 8192  # meta, one leaf, one inner
    assert estimated_btree_bytes(100000, 8, 8192, 90) > small
    assert estimated_btree_bytes(1000, 64, 8192, 90) > small
    assert estimated_btree_bytes(1000, 8, 8192, 50) >= small


# --- MariaDB -------------------------------------------------------------------------------

MARIADB = ["mariadb", "-h", "127.0.0.1", "-u", "root", "--batch", "--skip-column-names"]


def mariadb(sql: str) -> str:
    out = subprocess.run(MARIADB, input=sql.encode(), capture_output=True)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode()


@pytest.fixture
def my_bloated() -> Iterator[str]:
    """A table whose rows were mostly deleted (free space in its own tablespace), with a
    duplicate and a redundant key."""
    name = f"crmtest_ix_{secrets.token_hex(4)}"
    mariadb(
        f"CREATE DATABASE `{name}`; USE `{name}`;"
        "CREATE TABLE deals (id int AUTO_INCREMENT PRIMARY KEY, customer int, note varchar(200),"
        " KEY by_customer (customer), KEY by_customer_again (customer),"
        " KEY by_customer_note (customer, note)) ENGINE=InnoDB;"
        "CREATE TABLE small (id int PRIMARY KEY) ENGINE=InnoDB;"
        "INSERT INTO deals (customer, note) SELECT seq % 1000, repeat(md5(seq), 5)"
        " FROM seq_1_to_60000;"
        "DELETE FROM deals WHERE id > 6000;"
    )
    # purge frees the deleted pages in the background: wait until the server says so
    for _ in range(100):
        mariadb(f"ANALYZE TABLE `{name}`.deals")
        free = mariadb(
            "SELECT DATA_FREE / (DATA_LENGTH + INDEX_LENGTH + DATA_FREE) FROM"
            f" information_schema.TABLES WHERE TABLE_SCHEMA = '{name}' AND TABLE_NAME = 'deals'"
        )
        if float(free) > 0.3:
            break
        time.sleep(0.1)
    yield name
    mariadb(f"DROP DATABASE IF EXISTS `{name}`")


def _my_optimize(tmp_path: Path, dbname: str, check: bool = False) -> tuple[Status, str, dict]:
    host = Host(name="local", connection="local")
    db = Database(name="crm", engine="mysql", host="local", address="127.0.0.1", user="root",
                  dbname=dbname)  # fmt: skip
    inventory = Inventory(path=str(tmp_path / "inventory.yml"), hosts={"local": host},
                          databases={"crm": db})  # fmt: skip
    book = load_playbook_text(
        "steps: [{name: optimize, task: indexes.optimize, database: crm, with: {min_size: 1MB}}]",
        inventory,
    )
    (row,) = run_playbook(book, inventory, None, check=check).results
    return (
        row.result.status,
        row.result.message,
        row.result.details | {"metrics": row.result.metrics},
    )


def test_mariadb_optimize_analyze_and_keys(tmp_path: Path, my_bloated: str) -> None:
    def checksum() -> str:
        return mariadb(f"CHECKSUM TABLE `{my_bloated}`.deals, `{my_bloated}`.small EXTENDED")

    before = checksum()
    status, message, details = _my_optimize(tmp_path, my_bloated, check=True)
    assert status == Status.CHANGED and "would run" in message
    assert checksum() == before
    status, message, details = _my_optimize(tmp_path, my_bloated)
    assert status == Status.CHANGED, message
    done = {(a["kind"], a["object"]) for a in details["actions"]}
    assert ("analyze", my_bloated) in done
    assert ("optimize", f"{my_bloated}.deals") in done
    assert ("optimize", f"{my_bloated}.small") not in done  # under min_size
    optimized = next(a for a in details["actions"] if a["kind"] == "optimize")
    assert "InnoDB rebuilds the table" in optimized["reason"]
    assert optimized["reclaimed"] > 0 and "recreate" in optimized["note"]
    assert checksum() == before  # the rows are the same rows
    findings = {(f["kind"], f["object"]) for f in details["findings"]}
    assert ("duplicate", f"{my_bloated}.deals.by_customer_again") in findings
    assert ("redundant", f"{my_bloated}.deals.by_customer") in findings
    keys = mariadb(f"SHOW INDEX FROM `{my_bloated}`.deals")
    assert "by_customer_again" in keys  # reported, never dropped


# --- SQLite --------------------------------------------------------------------------------


def _lite(tmp_path: Path, path: Path, params: str = "{min_size: 1MB}", check: bool = False):
    host = Host(name="local", connection="local")
    db = Database(name="crm", engine="sqlite", host="local", path=str(path))
    inventory = Inventory(path=str(tmp_path / "inventory.yml"), hosts={"local": host},
                          databases={"crm": db})  # fmt: skip
    book = load_playbook_text(
        f"steps: [{{name: optimize, task: indexes.optimize, database: crm, with: {params}}}]",
        inventory,
    )
    (row,) = run_playbook(book, inventory, None, check=check).results
    return row.result.status, row.result.message, row.result.details


def _sqlite_file(path: Path) -> Path:
    subprocess.run(
        ["sqlite3", str(path)],
        input=b"CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);"
        b"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 30000)"
        b" INSERT INTO t SELECT x, hex(randomblob(60)) FROM c;"
        b"CREATE INDEX t_v ON t (v); DELETE FROM t WHERE id > 6000;",
        check=True,
    )
    return path


def test_sqlite_vacuum_when_the_free_list_is_large(tmp_path: Path) -> None:
    path = _sqlite_file(tmp_path / "crm.sqlite")
    before = path.read_bytes()
    status, message, details = _lite(tmp_path, path, check=True)
    assert status == Status.CHANGED and path.read_bytes() == before  # check mode: unchanged
    assert {a["kind"] for a in details["actions"]} == {"analyze", "vacuum_file"}
    status, message, details = _lite(tmp_path, path)
    assert status == Status.CHANGED, message
    assert "quick_check: ok" in details["notes"]
    assert path.stat().st_size < len(before) / 2
    rows = subprocess.run(["sqlite3", str(path), "SELECT count(*) FROM t"], capture_output=True)
    assert rows.stdout.strip() == b"6000"
    status, message, details = _lite(tmp_path, path)
    assert [a["kind"] for a in details["actions"]] == ["analyze"]  # nothing left to vacuum


def test_sqlite_damaged_file_is_reported_not_rewritten(tmp_path: Path) -> None:
    path = _sqlite_file(tmp_path / "crm.sqlite")
    subprocess.run(["sqlite3", str(path), "VACUUM"], check=True)
    data = bytearray(path.read_bytes())
    page = 4096
    data[page * 3 + 100 : page * 3 + 400] = b"\xff" * 300  # an index page, scrambled
    path.write_bytes(bytes(data))
    status, message, _ = _lite(tmp_path, path)
    assert status == Status.FAILED and "quick_check" in message
    assert path.read_bytes() == bytes(data)
