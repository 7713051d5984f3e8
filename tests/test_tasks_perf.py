"""perf.report against the real PostgreSQL, MariaDB and Redis of this machine and a real HTTP
server on 127.0.0.1 (``http_url`` of net_fixture), in-process and once through the CLI; and its
pure parts (statement text, percentiles, counter changes).

Each test makes its own database (``crmtest_perf_<random>``), so parallel test processes on
the same servers do not see each other's sessions.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from clirun import run_cli
from estates import sqlite_crm
from test_tasks_health import run_task

from crmmaint.engines.postgresql.statistics import STATEMENT_TEXT_LIMIT, statement_text
from crmmaint.inventory import Cache, Database, Host, Inventory
from crmmaint.journal import Journal
from crmmaint.playbook import load_playbook
from crmmaint.results import Status, TaskResult
from crmmaint.tasks.perf import CounterChange, counter_change, percentile

PSQL = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"]
MARIADB = ["mariadb", "--protocol=TCP", "-h", "127.0.0.1", "-uroot", "--batch", "-N"]
REDIS = ["redis-cli", "-h", "127.0.0.1", "-p", "6379"]
#: Thresholds no healthy test server passes (a fresh database has read few blocks).
QUIET = {"cache_hit_warn": "0%", "latency_warn": "30s"}


def psql(dbname: str, sql: str) -> str:
    done = subprocess.run(
        [*PSQL, "-A", "-t", "-d", dbname], input=sql, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def mariadb(sql: str) -> str:
    done = subprocess.run(MARIADB, input=sql, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def preloaded() -> bool:
    """Whether this machine's PostgreSQL preloads pg_stat_statements."""
    return "pg_stat_statements" in psql("postgres", "SHOW shared_preload_libraries")


@pytest.fixture
def pg_db() -> Iterator[str]:
    name = f"crmtest_perf_{secrets.token_hex(4)}"
    psql("postgres", f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def maria_db() -> Iterator[str]:
    name = f"crmtest_perf_{secrets.token_hex(4)}"
    mariadb(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        mariadb(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "journal.sqlite") as j:
        yield j


def inventory(*databases: Database, caches: tuple[Cache, ...] = (), **vars: Any) -> Inventory:
    inv = Inventory(path="/nonexistent/inventory.yml")
    inv.hosts["local"] = Host(name="local", connection="local", vars=dict(vars))
    inv.databases.update((db.name, db) for db in databases)
    inv.caches.update((c.name, c) for c in caches)
    return inv


def pg(dbname: str) -> Database:
    return Database(name="pg", engine="postgresql", host="local", dbname=dbname,
                    address="127.0.0.1", port=5432, user="postgres")  # fmt: skip


def maria(dbname: str) -> Database:
    return Database(name="maria", engine="mysql", host="local", dbname=dbname,
                    address="127.0.0.1", port=3306, user="root")  # fmt: skip


REDIS_CACHE = Cache(name="sessions", host="local", redis="redis://127.0.0.1:6379/0")


def report(kind: str, name: str, inv: Inventory, params: dict | None = None, **kw) -> TaskResult:
    return run_task("perf.report", {**QUIET, **(params or {})}, inventory=inv, kind=kind,
                    name=name, **kw)  # fmt: skip


def journaled(journal: Journal, kind: str, name: str, result: TaskResult) -> None:
    """Record ``result`` as the runner does (under the target's label), so the next report
    finds it as the previous run."""
    run = journal.start_run("test")
    label = name if kind == "hosts" else f"{name}@local"
    journal.record(run, step="perf", task="perf.report", target_kind=kind, target=label,
                   host="local", result=result, started=time.time(), duration=0.1)  # fmt: skip
    journal.finish_run(run, result.status)


def everything(result: TaskResult) -> str:
    """All a result says (what the journal would keep)."""
    return json.dumps([result.message, result.metrics, result.details], default=str)


@contextlib.contextmanager
def open_transaction(dbname: str, literal: str) -> Iterator[None]:
    """Another session of ``dbname`` inside a transaction whose last statement holds
    ``literal``, idle until the block ends."""
    proc = subprocess.Popen(
        [*PSQL, "-A", "-t", "-d", dbname], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(f"BEGIN;\nSELECT '{literal}';\n")
        proc.stdin.flush()
        assert select.select([proc.stdout], [], [], 30)[0], "psql did not answer"
        assert literal in proc.stdout.readline()
        yield
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        # The server ends the session a moment after its client left.
        others = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{dbname}'"
        for _ in range(100):
            if psql("postgres", others) == "0":
                break
            time.sleep(0.1)


# --- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("SELECT * FROM t WHERE id = $1", "SELECT * FROM t WHERE id = $1"),
        ("create role r1 password 'pw-secret'", "create role r1 password ?"),
        ("comment on table t is E'it''s Ann\\'s'", "comment on table t is ?"),
        ("do $body$ begin raise 'x'; end $body$", "do ?"),
        (
            "select 42, 1.5e3, t1.c2 from t1 -- Ann Smith\nwhere x",
            "select ?, ?, t1.c2 from t1 where x",
        ),
        ('select "Ann\'s table".id /* 555-1234 */ from x', 'select "Ann\'s table".id from x'),
        ("insert into t values ('cut in the mid", "insert into t values (?"),
        ("select   a,\n\n  b", "select a, b"),
    ],
)
def test_statement_text_blanks_literals(raw: str, shown: str) -> None:
    assert statement_text(raw) == shown


def test_statement_text_is_cut() -> None:
    text = statement_text("select " + ", ".join(f"c{i}" for i in range(200)))
    assert len(text) == STATEMENT_TEXT_LIMIT and text.endswith("…")


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([1.0], 99) == 1.0
    values = [float(i) for i in range(1, 21)]
    assert percentile(values, 95) == pytest.approx(19.05)
    assert percentile(values, 100) == 20.0 and percentile(values, 0) == 1.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_counter_change() -> None:
    now = 1_000_000.0
    assert counter_change(None, 5, now) is None
    grew = counter_change((now - 100, 10), 30, now, counted_seconds=10_000)
    assert grew == CounterChange(20, 100, "the previous run") and grew.per_second == 0.2
    # went down: reset since; all of it counts, over the time counted
    assert counter_change((now - 100, 50), 7, now, 40) == CounterChange(7, 40, "the server started")
    # restarted since the previous run (counted for less time), though it grew past it
    assert counter_change((now - 100, 5), 9, now, 40) == CounterChange(9, 40, "the server started")


# --- PostgreSQL ------------------------------------------------------------------------------


def test_postgresql_figures_and_a_long_transaction(pg_db: str, journal: Journal) -> None:
    literal = f"Ann Example {secrets.token_hex(6)}"
    inv = inventory(pg(pg_db))
    psql(pg_db, "CREATE TABLE customers(id int, name text); INSERT INTO customers VALUES (1, 'x')")
    with open_transaction(pg_db, literal):
        time.sleep(0.6)
        result = report("database", "pg", inv, {"long_transaction": "500ms"}, journal=journal)
        checked = report("database", "pg", inv, {"long_transaction": "500ms"}, check=True)
    assert result.status is Status.WARNING, result.message
    m = result.metrics
    assert m["pg_long_transactions"] == 1
    assert 0.6 <= m["pg_oldest_transaction_seconds"] < 60
    assert 0 <= m["pg_cache_hit_ratio"] <= 1 and m["pg_blocks_hit"] > 0
    assert m["pg_transactions"] > 0 and m["pg_standbys"] == 0
    assert "replication_lag_seconds" not in m
    assert result.message.startswith("postgresql: 1 transaction open over 0.5s (oldest ")
    assert "no replication" in result.message and "\n" not in result.message
    (open_,) = result.details["transactions"]
    assert open_["state"] == "idle in transaction" and open_["application"] == "psql"
    assert result.details["replication"]["role"] == "primary"
    # what the other session ran is nowhere: not in the result, nor in the journal
    assert literal not in everything(result)
    journaled(journal, "database", "pg", result)
    assert literal not in (journal.path.read_bytes() + _wal(journal)).decode("utf-8", "replace")
    # the same in check mode, which it says
    assert checked.status is Status.WARNING and checked.details["check_mode"] is True
    assert result.details["check_mode"] is False
    # the transaction ended: nothing long-running; the transactions since the previous run
    later = report("database", "pg", inv, {"long_transaction": "500ms"}, journal=journal)
    assert later.status is Status.OK, later.message
    assert later.metrics["pg_long_transactions"] == 0
    assert later.metrics["pg_oldest_transaction_seconds"] == 0
    assert later.metrics["pg_transactions_since_last_run"] >= 0
    assert "transactions/s since the previous run" in later.message


def _wal(journal: Journal) -> bytes:
    wal = Path(f"{journal.path}-wal")
    return wal.read_bytes() if wal.exists() else b""


def test_postgresql_thresholds_warn(pg_db: str) -> None:
    result = report("database", "pg", inventory(pg(pg_db)), {"cache_hit_warn": "100%"})
    if result.metrics.get("pg_cache_hit_ratio", 1) < 1:
        assert result.status is Status.WARNING
        assert "(below 100%)" in result.message


def test_pg_stat_statements_not_installed(pg_db: str) -> None:
    result = report("database", "pg", inventory(pg(pg_db)))
    assert result.status is Status.OK, result.message
    statements = result.details["statements"]
    assert statements["state"] == "not installed" and statements["top"] == []
    assert "CREATE EXTENSION pg_stat_statements" in statements["how_to_enable"]
    assert "pg_stat_statements not installed" in result.message


@pytest.mark.skipif(preloaded(), reason="pg_stat_statements is preloaded here")
def test_pg_stat_statements_installed_but_not_loaded(pg_db: str) -> None:
    psql(pg_db, "CREATE EXTENSION pg_stat_statements")
    result = report("database", "pg", inventory(pg(pg_db)))
    assert result.status is Status.OK, result.message
    statements = result.details["statements"]
    assert statements["state"] == "not loaded" and statements["version"]
    assert statements["how_to_enable"].startswith("add pg_stat_statements to shared_preload")
    assert "pg_stat_statements not loaded" in result.message


@pytest.mark.skipif(not preloaded(), reason="pg_stat_statements is not preloaded here")
def test_pg_stat_statements_top_statements(pg_db: str) -> None:
    literal = f"Ann Example {secrets.token_hex(6)}"
    psql(pg_db, "CREATE EXTENSION pg_stat_statements")
    psql(pg_db, "CREATE TABLE customers(id int, name text)")
    for _ in range(3):
        psql(pg_db, f"SELECT count(*) FROM customers WHERE name = '{literal}'")
    result = report("database", "pg", inventory(pg(pg_db)), {"top": 50})
    statements = result.details["statements"]
    assert statements["state"] == "available", statements
    ours = [s for s in statements["top"] if "FROM customers WHERE name" in s["text"]]
    assert ours and ours[0]["text"].endswith("name = $1") and ours[0]["calls"] >= 3
    assert ours[0]["queryid"] and ours[0]["total_seconds"] >= 0
    assert literal not in everything(result)


def test_pg_stat_statements_unreadable_leaves_the_other_figures(pg_db: str) -> None:
    """A user the view is not granted to (a monitoring role without pg_monitor)."""
    role = f"crmtest_perf_{secrets.token_hex(4)}"
    psql(pg_db, f"CREATE ROLE {role} LOGIN; CREATE EXTENSION pg_stat_statements;"
                " REVOKE SELECT ON pg_stat_statements FROM PUBLIC")  # fmt: skip
    try:
        db = Database(**{**pg(pg_db).__dict__, "user": role})
        result = report("database", "pg", inventory(db))
    finally:
        psql("postgres", f"DROP ROLE {role}")
    assert result.status is Status.WARNING, result.message
    assert "pg_stat_statements unreadable (see details.statements.error)" in result.message
    assert "permission denied" in result.details["statements"]["error"]
    assert "pg_cache_hit_ratio" in result.metrics and "pg_long_transactions" in result.metrics


# --- MariaDB ---------------------------------------------------------------------------------


def test_mariadb_figures_and_slow_queries_since_the_last_run(
    maria_db: str, journal: Journal
) -> None:
    inv = inventory(maria(maria_db))
    first = report("database", "maria", inv, journal=journal)
    assert first.status is Status.OK, first.message
    m = first.metrics
    assert 0 <= m.get("mysql_buffer_pool_hit_ratio", 0) <= 1
    assert m["mysql_slow_queries"] >= 0 and m["mysql_threads_connected"] >= 1
    assert m["mysql_uptime_seconds"] > 0 and m["mysql_long_query_time_seconds"] >= 0
    assert "slow queries since the server started" in first.message
    journaled(journal, "database", "maria", first)
    mariadb("SET SESSION long_query_time = 0; SELECT 1; SELECT 2;")  # two slow queries
    second = report("database", "maria", inv, {"slow_queries_warn": 2}, journal=journal)
    assert second.metrics["mysql_slow_queries_since_last_run"] >= 2
    assert second.metrics["mysql_slow_queries"] >= m["mysql_slow_queries"] + 2
    assert second.metrics["mysql_queries_per_second"] > 0
    assert second.status is Status.WARNING, second.message
    assert "slow queries since the previous run (long_query_time" in second.message
    assert "(warn at 2)" in second.message


# --- Redis -----------------------------------------------------------------------------------


def test_redis_figures_and_evictions_since_the_last_run(journal: Journal) -> None:
    key = f"crmtest:perf:{secrets.token_hex(4)}"
    subprocess.run([*REDIS, "SET", key, "v", "EX", "60"], check=True, capture_output=True)
    subprocess.run([*REDIS, "GET", key], check=True, capture_output=True)
    inv = inventory(caches=(REDIS_CACHE,))
    first = report("cache", "sessions", inv, journal=journal)
    assert first.status is Status.OK, first.message
    m = first.metrics
    assert 0 < m["redis_hit_ratio"] <= 1 and m["redis_used_memory_bytes"] > 0
    assert m["redis_evicted_keys"] >= 0 and "redis_evicted_keys_since_last_run" not in m
    assert "evicted since the server started" in first.message
    journaled(journal, "cache", "sessions", first)
    second = report("cache", "sessions", inv, journal=journal)
    assert second.metrics["redis_evicted_keys_since_last_run"] == 0  # no maxmemory: none
    assert "0 keys evicted since the previous run" in second.message
    strict = report("cache", "sessions", inv, {"evictions_warn": 0}, journal=journal)
    assert strict.status is Status.WARNING and "(warn at 0)" in strict.message


def test_cache_without_redis_is_skipped() -> None:
    inv = inventory(caches=(Cache(name="files", host="local", directories=["/tmp/x"]),))
    assert report("cache", "files", inv).status is Status.SKIPPED


# --- SQLite ----------------------------------------------------------------------------------


def test_sqlite_reports_size_and_free_pages(tmp_path: Path) -> None:
    path = sqlite_crm(tmp_path / "crm.sqlite", customers=100)
    db = Database(name="crm", engine="sqlite", host="local", path=str(path))
    result = report("database", "crm", inventory(db))
    assert result.status is Status.OK, result.message
    assert result.metrics["sqlite_size_bytes"] == path.stat().st_size
    assert result.metrics["sqlite_free_pages"] == 0
    assert "no performance statistics" in result.message


# --- HTTP ------------------------------------------------------------------------------------


def test_http_latency_percentiles(http_url: str) -> None:
    result = report("hosts", "local", inventory(), {"urls": [f"{http_url}/200"], "requests": 10})
    assert result.status is Status.OK, result.message
    m = result.metrics
    assert 0 < m["http_p50_seconds"] <= m["http_p95_seconds"] <= m["http_p99_seconds"]
    assert m["http_p99_seconds"] <= m["http_max_seconds"] < 5
    assert m["http_requests"] == 10 and m["http_failed_requests"] == 0
    assert result.message.startswith(f"http: {http_url}/200 p50 ")
    (endpoint,) = result.details["endpoints"]
    assert endpoint["requests"] == 10 and endpoint["p95_seconds"] == m["http_p95_seconds"]
    slow = report("hosts", "local", inventory(), {"urls": [f"{http_url}/200"], "requests": 3,
                                                  "latency_warn": 0})  # fmt: skip
    assert slow.status is Status.WARNING and "p95 warn at 0 ms" in slow.message


def test_http_from_host_vars_and_several_urls(http_url: str) -> None:
    port = http_url.rsplit(":", 1)[1]
    inv = inventory(health_url=f"http://{{address}}:{port}/204")
    result = report("hosts", "local", inv, {"requests": 2})
    assert result.status is Status.OK, result.message
    assert result.details["endpoints"][0]["url"] == f"http://127.0.0.1:{port}/204"
    both = report("hosts", "local", inv, {"urls": [f"{http_url}/200", f"{http_url}/503"],
                                          "requests": 2})  # fmt: skip
    assert both.status is Status.WARNING and "2 answered 503" in both.message
    assert both.metrics["http_error_responses"] == 2 and both.metrics["http_requests"] == 4
    assert f"http_p95_seconds:{http_url}/503" in both.metrics


def test_http_unanswered_fails_and_stops_early(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/"
    result = report("hosts", "local", inventory(), {"urls": [url], "timeout": "2s"})
    assert result.status is Status.FAILED
    assert url in result.message and "did not answer" in result.message
    assert result.metrics["http_failed_requests"] == 3  # FAILURES_IN_A_ROW, not all 20


def test_http_without_url_is_skipped() -> None:
    assert report("hosts", "local", inventory()).status is Status.SKIPPED


# --- the shipped playbook and a run through the CLI ------------------------------------------


def test_weekly_playbook_has_the_perf_step() -> None:
    step = load_playbook("weekly", None).step("performance figures")
    assert step.task == "perf.report" and "perf" in step.tags
    assert set(step.selectors) == {"database", "cache", "hosts"}


def test_cli_run_records_the_figures_in_the_journal(
    tmp_path: Path, pg_db: str, maria_db: str, http_url: str
) -> None:
    sqlite_crm(tmp_path / "crm.sqlite", customers=50)
    server = {"host": "local", "address": "127.0.0.1"}
    inv = {
        "settings": {"journal": "journal.sqlite"},
        "hosts": {"local": {"connection": "local", "vars": {"health_url": f"{http_url}/200"}}},
        "databases": {
            "pg": {"engine": "postgresql", "name": pg_db, "port": 5432, "user": "postgres",
                   **server},
            "maria": {"engine": "mysql", "name": maria_db, "port": 3306, "user": "root", **server},
            "crm": {"engine": "sqlite", "host": "local", "path": "crm.sqlite"},
        },
        "caches": {"sessions": {"host": "local", "redis": "redis://127.0.0.1:6379/0"}},
    }  # fmt: skip
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inv))
    book = {
        "name": "perf",
        "steps": [{"name": "figures", "task": "perf.report", "database": "all", "cache": "all",
                   "hosts": "all", "with": {**QUIET, "requests": 5}}],
    }  # fmt: skip
    (tmp_path / "book.yml").write_text(yaml.safe_dump(book))
    done = run_cli("run", str(tmp_path / "book.yml"), "-i", str(tmp_path / "inventory.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    shown = run_cli("show", "-i", str(tmp_path / "inventory.yml"), "--json")
    assert shown.returncode == 0, shown.stderr
    results = {r["target"].removesuffix("@local"): r for r in json.loads(shown.stdout)["results"]}
    assert {r["status"] for r in results.values()} == {"ok"}, results
    expected = {
        "pg": "pg_cache_hit_ratio",
        "maria": "mysql_buffer_pool_hit_ratio",
        "crm": "sqlite_size_bytes",
        "sessions": "redis_used_memory_bytes",
        "local": "http_p95_seconds",
    }
    for target, metric in expected.items():
        assert metric in results[target]["metrics"], (target, results[target])
    with Journal(tmp_path / "journal.sqlite") as j:
        ((_, ratio),) = j.metric_history("perf.report", "pg@local", "pg_cache_hit_ratio")
        assert 0 <= ratio <= 1
        assert j.metric_history("perf.report", "local", "http_p95_seconds")
    # The next run finds the counters of this one: changes since the previous run.
    again = run_cli("run", str(tmp_path / "book.yml"), "-i", str(tmp_path / "inventory.yml"))
    assert again.returncode == 0, again.stdout + again.stderr
    shown = run_cli("show", "-i", str(tmp_path / "inventory.yml"), "--json")
    results = {r["target"].removesuffix("@local"): r for r in json.loads(shown.stdout)["results"]}
    assert "mysql_slow_queries_since_last_run" in results["maria"]["metrics"]
    assert "redis_evicted_keys_since_last_run" in results["sessions"]["metrics"]
    assert "pg_transactions_per_second" in results["pg"]["metrics"]
