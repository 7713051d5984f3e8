"""Restore drills on demand (`crmmaint drill`) and their history (`crmmaint drills`): every
engine and a file set restored into scratch copies, checked, timed against the recovery time
objective and removed; what a drill must refuse. Real PostgreSQL and MariaDB, the CLI as a
subprocess."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from clirun import run_cli, run_here
from estates import MAIN_REPOSITORY, sqlite_crm

PG = ["psql", "-X", "-qAt", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
MARIADB = ["mariadb", "--protocol=TCP", "-h", "127.0.0.1", "-uroot", "-N", "--batch"]


def pg(statement: str, db: str = "postgres") -> str:
    done = subprocess.run([*PG, "-d", db], input=statement, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def maria(statement: str, db: str = "") -> str:
    done = subprocess.run(
        [c for c in [*MARIADB, db] if c], input=statement, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def scratch_databases(tag: str) -> list[str]:
    """Scratch databases of this estate's drills still on either server."""
    like = f"crmdrill_{tag}%"
    return (
        pg(f"SELECT datname FROM pg_database WHERE datname LIKE '{like}'").split()
        + maria(f"SHOW DATABASES LIKE '{like}'").split()
    )


class Estate:
    def __init__(self, root: Path, tag: str) -> None:
        self.root, self.tag = root, tag
        self.inventory = root / "inventory.yml"
        self.drills = root / "drills"

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli(*args, "-i", str(self.inventory))

    def write(self, **drills: dict) -> None:
        """Rewrite the inventory with these ``drills:`` entries besides the scratch folders."""
        doc = yaml.safe_load(self.inventory.read_text())
        doc["drills"] = {**self.base_drills, **drills}
        self.inventory.write_text(yaml.safe_dump(doc))


@pytest.fixture(scope="module")
def estate(tmp_path_factory) -> Iterator[Estate]:
    """PostgreSQL, MariaDB and SQLite databases and a file set, each backed up once."""
    root = tmp_path_factory.mktemp("drill")
    tag = uuid.uuid4().hex[:6]
    pgname, myname = f"drpg{tag}", f"drmy{tag}"
    pg(f"CREATE DATABASE {pgname}")
    pg("CREATE TABLE customers (id serial PRIMARY KEY, name text);"
       "INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 500) g;"
       # a load that takes a moment, for the drill killed during it
       "CREATE TABLE activities (id int PRIMARY KEY, note text);"
       "INSERT INTO activities SELECT g, md5(g::text) FROM generate_series(1, 300000) g;"
       # what a hostile backup may hold: a view calling a function that takes the session's
       # own rights back (RESET ROLE) and calls what only a superuser may
       "CREATE FUNCTION escalate() RETURNS int LANGUAGE plpgsql AS $$BEGIN RESET ROLE; "
       "RETURN length(pg_read_file('/etc/hostname')); END$$;"
       "CREATE VIEW sneaky AS SELECT escalate() AS n;",
       pgname)  # fmt: skip
    maria(f"CREATE DATABASE {myname}")
    maria("CREATE TABLE customers (id int AUTO_INCREMENT PRIMARY KEY, name varchar(20));"
          "INSERT INTO customers (name) SELECT concat('c', seq) FROM seq_1_to_500;", myname)  # fmt: skip
    sqlite_crm(root / "crm.sqlite", customers=300)
    (root / "files" / "sub").mkdir(parents=True)
    (root / "files" / "a.txt").write_text("attachment\n" * 100)
    (root / "files" / "sub" / "b.bin").write_bytes(bytes(range(256)) * 10)
    (root / "files" / "sub" / "b.bin").chmod(0o640)
    (root / "files" / "link").symlink_to("sub/b.bin")  # checked: its target
    (root / "drills").mkdir()
    estate = Estate(root, tag)
    estate.base_drills = {
        "lite": {"directory": str(root / "drills")},
        "fileset:files": {"directory": str(root / "drills")},
    }
    doc = {
        "settings": {"journal": "journal.sqlite"},
        "hosts": {"local": {"connection": "local"}},
        "databases": {
            "pg": {"engine": "postgresql", "name": pgname, "address": "127.0.0.1",
                   "user": "postgres", "main": True},
            "my": {"engine": "mysql", "name": myname, "address": "127.0.0.1", "user": "root"},
            "lite": {"engine": "sqlite", "path": "crm.sqlite"},
        },
        "filesets": {"files": {"paths": ["files"]}},
        "repositories": {"main": dict(MAIN_REPOSITORY)},
        "drills": estate.base_drills,
    }  # fmt: skip
    estate.inventory.write_text(yaml.safe_dump(doc))
    (root / "keys").mkdir()
    generated = run_here("keys", "generate", "--output", str(root / "keys" / "ops.key"))
    assert generated.returncode == 0, generated.stderr
    assert estate.cli("repo", "init").returncode == 0
    done = estate.cli("backup")
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        yield estate
    finally:
        pg(f"DROP DATABASE IF EXISTS {pgname} WITH (FORCE)")
        maria(f"DROP DATABASE IF EXISTS {myname}")
        for name in scratch_databases(tag):
            if name in pg("SELECT datname FROM pg_database").split():
                pg(f"DROP DATABASE {name} WITH (FORCE)")
            else:
                maria(f"DROP DATABASE {name}")


@pytest.fixture(scope="module")
def drilled(estate: Estate) -> tuple[set[str], subprocess.CompletedProcess]:
    """One `crmmaint drill --json` of every source (the scratch databases there were before)."""
    before = set(scratch_databases(""))  # other estates' drills may come and go meanwhile
    return before, estate.cli("drill", "--json")


def test_every_source_is_drilled_checked_timed_and_cleaned_up(estate: Estate, drilled) -> None:
    before, done = drilled
    assert done.returncode == 0, done.stdout + done.stderr
    results = {r["target"]: r for r in json.loads(done.stdout)["results"]}
    assert set(results) == {"pg@local", "my@local", "lite@local", "files@local"}
    for target, row in results.items():
        assert row["status"] == "ok", (target, row["message"])
        phases = row["details"]["phases"]
        assert list(phases) == ["preflight", "restore", "verify", "cleanup"], phases
        assert row["metrics"]["drill_seconds"] >= sum(phases.values()) - 0.01
    assert "300500 rows, schema and contents identical" in results["pg@local"]["message"]
    # Each table's content: the restored copy read back the way the backup read the source.
    for target, tables in {"pg@local": 2, "my@local": 1, "lite@local": 1}.items():
        content = [
            c for c in results[target]["details"]["checks"] if c["check"].startswith("content")
        ]
        assert len(content) >= tables and all(c["ok"] for c in content), (target, content)
    assert "2 files, contents identical" in results["files@local"]["message"]
    # Nothing left behind: no scratch database on either server, no file, no directory.
    made = {r["details"]["scratch"] for r in results.values()}
    assert made & before == set() and made & set(scratch_databases("")) == set()
    assert list(estate.drills.iterdir()) == []
    # The evidence: every backup marked drilled, every drill in `drills`.
    listed = json.loads(estate.cli("backups", "list", "--json").stdout)
    assert all(b["drilled"] for b in listed), listed
    history = json.loads(estate.cli("drills", "--json").stdout)
    assert {d["source"] for d in history[:4]} == {
        "database:pg", "database:my", "database:lite", "fileset:files"
    }  # fmt: skip
    assert all(d["status"] == "ok" and d["restore_seconds"] > 0 for d in history[:4])
    table = estate.cli("drills").stdout.splitlines()
    assert table[0].split("\t") == [
        "when", "source", "backup", "on", "status", "restore", "total", "rto", "run"
    ]  # fmt: skip


def test_the_drill_report_is_one_page_an_auditor_can_read(
    estate: Estate, drilled, tmp_path
) -> None:
    """`drill report` as Markdown and as self-contained HTML: each drill with its backup,
    where it ran, who ran it, its phase times and each check with expected and found
    values; the HTML is rendered by headless Chromium with its tables on the page."""
    import shutil

    assert drilled[1].returncode == 0  # one drill of each source at least
    md = estate.cli("drill", "report", "--since", "1h")
    assert md.returncode == 0, md.stderr
    text = md.stdout
    assert text.startswith("# Restore drill report"), text[:200]
    for source in ("database:pg", "database:my", "database:lite", "fileset:files"):
        assert f"| {source} |" in text.replace("\\", ""), source
    assert "| rows in public.customers | 500 | 500 | ok |" in text.replace("\\", "")
    assert "| files with the same sha256 and size | 2 | 2 | ok |" in text
    assert "| files with the same mode | 2 | 2 | ok |" in text
    assert "| symbolic links to the same target | 1 | 1 | ok |" in text
    assert "| restore |" in text and "run by" in text
    page = tmp_path / "drills.html"
    done = estate.cli("drill", "report", "--since", "1h", "--output", str(page))
    assert done.returncode == 0 and str(page) in done.stdout, done.stdout + done.stderr
    html = page.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert html.count('<table class="checks">') >= 4 and '<table id="latest">' in html
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is needed (make test installs it: scripts/services.sh)")
    shots = {}
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    for name, doc in (("report", page), ("blank", blank)):
        shot = tmp_path / f"{name}.png"
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600",
             f"--screenshot={shot}", doc.as_uri()],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip
        shots[name] = shot.read_bytes()
    assert shots["report"].startswith(b"\x89PNG")
    assert len(shots["report"]) > 5 * len(shots["blank"])  # tables and text, not an empty page
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert dom.count("<table") == html.count("<table") and "rows in public.customers" in dom
    bad = estate.cli("drill", "report", "--output", str(tmp_path / "r.pdf"))
    assert bad.returncode == 3 and ".html or .md" in bad.stderr


def test_a_drill_over_its_objective_warns_or_fails_as_configured(estate: Estate) -> None:
    done = estate.cli("drill", "fileset:files", "--rto", "1ms")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "over its recovery time objective of 0.001s" in done.stdout, done.stdout
    estate.write(**{"fileset:files": {"directory": str(estate.drills), "rto": "1ms",
                                      "rto_exceeded": "fail"}})  # fmt: skip
    try:
        done = estate.cli("drill", "files")
        assert done.returncode == 2, done.stdout + done.stderr
        assert "over its recovery time objective" in done.stdout
        # the command's objective wins over the inventory's
        assert estate.cli("drill", "files", "--rto", "1h").returncode == 0
    finally:
        estate.write()
    assert list(estate.drills.iterdir()) == []


def test_a_target_the_drill_did_not_create_is_refused_and_left_alone(estate: Estate) -> None:
    taken = f"crmdrill_taken_{estate.tag}"
    pg(f"CREATE DATABASE {taken}")
    try:
        pg("CREATE TABLE precious (id int); INSERT INTO precious VALUES (1);", taken)
        done = estate.cli("drill", "pg", "--target", taken)
        assert done.returncode == 6, done.stdout + done.stderr
        assert "exists" in done.stdout + done.stderr
        assert "force" not in done.stdout + done.stderr  # a drill has no such thing
        assert pg("SELECT count(*) FROM precious", taken) == "1"
    finally:
        pg(f"DROP DATABASE {taken} WITH (FORCE)")
    kept = estate.drills / "kept"
    (kept / "mine").mkdir(parents=True)
    done = estate.cli("drill", "files", "--target", str(kept))
    assert done.returncode == 6, done.stdout + done.stderr
    assert (kept / "mine").is_dir()
    (kept / "mine").rmdir()
    kept.rmdir()


def test_keep_leaves_the_scratch_copy_and_says_where(estate: Estate) -> None:
    target = estate.drills / "inspect"
    done = estate.cli("drill", "fileset:files", "--keep", "--target", str(target), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads(done.stdout)["results"]
    assert row["details"]["scratch"] == str(target) and row["details"]["kept"]
    assert f"the copy is kept: {target} on local" in row["message"]
    # private: the folders above the files, which the archive does not hold, are made 0755
    assert target.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in target.rglob("*") if p.is_file() and not p.is_symlink()) == [
        "a.txt",
        "b.bin",
    ]
    subprocess.run(["rm", "-rf", str(target)], check=True)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nosuch"], "no database or file set 'nosuch'"),
        (["table:pg"], "unknown source 'table:pg'"),
        (["fileset:pg"], "no database or file set 'fileset:pg'"),
        (["pg", "my", "--target", "x"], "--target names one backup or copy, but 2 sources"),
        (["--backup", "20250101T000000.000000Z-abcdef12"], "--backup names one backup"),
        (["pg", "--rto", "0s"], "--rto '0s' is out of range"),
        (["pg", "--rto", "soon"], "--rto: "),
        (["pg", "--timeout", "0"], "--timeout '0' is out of range"),
    ],
)
def test_drill_arguments_are_checked_before_anything_runs(
    estate: Estate, args: list[str], says: str
) -> None:
    before = estate.cli("history", "--json").stdout
    done = estate.cli("drill", *args)
    assert done.returncode == 3, done.stdout + done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert estate.cli("history", "--json").stdout == before


def test_drills_since_and_check_mode(estate: Estate) -> None:
    done = estate.cli("drill", "pg", "--check")
    assert done.returncode == 0 and "would restore backup" in done.stdout, done.stdout
    assert scratch_databases(estate.tag) == []
    recent = json.loads(estate.cli("drills", "--since", "1h", "--json").stdout)
    assert recent and all(d["status"] in ("ok", "warning", "failed") for d in recent)
    assert "check" not in {d["message"][:5] for d in recent}  # check-mode runs are not drills
    assert estate.cli("drills", "--since", "soon").returncode == 3


def test_a_name_that_is_a_database_and_a_file_set_must_say_which(tmp_path: Path) -> None:
    sqlite_crm(tmp_path / "crm.sqlite", customers=10)
    (tmp_path / "files").mkdir()
    doc = {
        "hosts": {"local": {"connection": "local"}},
        "databases": {"crm": {"engine": "sqlite", "path": "crm.sqlite"}},
        "filesets": {"crm": {"paths": ["files"]}},
        "repositories": {"main": dict(MAIN_REPOSITORY)},
    }
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(doc))
    done = run_cli("drill", "crm", "-i", str(tmp_path / "inventory.yml"))
    assert done.returncode == 3 and "write database:crm or fileset:crm" in done.stderr


def test_a_copy_left_by_a_killed_drill_is_removed_by_the_next(estate: Estate) -> None:
    """`kill -9` during the load leaves the scratch database (nothing can run after it);
    the next drill of that database removes it, and says so. A running drill's copy is
    never taken for a leftover (each drill records itself as running in the journal)."""
    import os
    import signal
    import time

    from clirun import BIN

    before = set(scratch_databases("pg_"))
    proc = subprocess.Popen(
        [str(BIN / "crmmaint"), "drill", "pg", "-i", str(estate.inventory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (made := set(scratch_databases("pg_")) - before):
            assert proc.poll() is None, "the drill ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    (left,) = made
    assert left in scratch_databases("pg_")  # nothing removed it
    done = estate.cli("drill", "pg", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads(done.stdout)["results"]
    assert row["details"]["leftovers_removed"] == [left], row
    assert f"that earlier drills (killed, or on another machine) left: {left}" in row["message"]
    assert left not in scratch_databases("pg_")


def test_a_drill_is_running_while_its_process_is_the_same_one() -> None:
    """What keeps two drills from removing each other's copies: a recorded drill counts as
    running while its process lives (and is the same process, not a reused PID), and
    always when it ran on another machine."""
    import socket

    from crmmaint.processes import still_running as _running
    from crmmaint.processes import this_process

    me = this_process()
    assert _running(me)
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not _running({**me, "pid": dead.pid, "pid_started": None})
    assert not _running({**me, "pid_started": me["pid_started"] + 1})  # a reused PID
    assert _running({**me, "pid": dead.pid, "machine": socket.gethostname() + "-other"})
    assert not _running({**me, "pid": "x"})


def test_a_drill_without_room_is_refused_before_anything_moves(estate: Estate) -> None:
    """Preflight: free space where the copy goes against the backup's size, a quarter more
    and the `drills:` entry's floor; the server's version against the backup's. A refusal
    fails the drill with its reason, and nothing is restored."""
    estate.write(
        lite={"directory": str(estate.drills), "min_free": "1000 TiB"},
        **{"fileset:files": {"directory": str(estate.drills), "min_free": "1000 TiB"}},
    )
    try:
        done = estate.cli("drill", "lite", "files", "--json")
        checked = estate.cli("drill", "pg", "my", "--check", "--json")  # the same preflight
        assert done.returncode == 2, done.stdout + done.stderr
        rows = {r["target"]: r for r in json.loads(done.stdout)["results"]}
        for target in ("lite@local", "files@local"):
            assert rows[target]["status"] == "failed"
            message = rows[target]["message"]
            assert "refused before anything was restored" in message, message
            assert "needed" in message and "the floor of 1000 TiB" in message, message
        assert list(estate.drills.iterdir()) == []
        assert checked.returncode == 0, checked.stdout + checked.stderr
        for row in json.loads(checked.stdout)["results"]:
            said = " ".join(row["details"]["preflight"])
            assert "can load a dump of" in said and "free on" in said, said
            assert row["details"]["scratch"] not in scratch_databases("")
    finally:
        estate.write()


@pytest.mark.parametrize(
    ("engine", "version", "major"),
    [
        ("postgresql", "16.4 (Debian 16.4-1.pgdg120+1)", (16,)),
        ("postgresql", "9.6.24", (9, 6)),
        ("postgresql", "17beta1", (17,)),
        ("mysql", "10.11.6-MariaDB-0+deb12u1", (10, 11)),
        ("mysql", "8.0.36", (8, 0)),
        ("mysql", "", None),
    ],
)
def test_version_major(engine: str, version: str, major: tuple[int, ...] | None) -> None:
    from crmmaint.engines.base import version_major

    assert version_major(engine, version) == major


def test_the_report_escapes_what_it_shows() -> None:
    """A message, a name or a host is untrusted text in the report: HTML is escaped, a
    Markdown cell cannot be ended or marked up, a control character is shown as an escape."""
    from crmmaint.reporting.drill_report import render

    hostile = "a|b <script>alert(1)</script> **x** \x1b[2J"
    drill = {
        "run": 1, "started": 0.0, "source": "database:crm", "backup": hostile,
        "repository": "main", "on": hostile, "scratch": "s", "kept": False, "status": "failed",
        "message": hostile, "restore_seconds": 1.0, "drill_seconds": 2.0,
        "phases": {"restore": 1.0}, "rto": 60.0, "preflight": [hostile],
        "checks": [{"check": hostile, "expected": 1, "found": 2, "ok": False}],
        "problems": [hostile], "user": "ops", "machine": "m",
    }  # fmt: skip
    html = render([drill], "html", now=10.0)
    assert "<script>" not in html and "&lt;script&gt;" in html and "\x1b" not in html
    md = render([drill], "md", now=10.0)
    assert "<script>" not in md and "a\\|b" in md and "\\*\\*x" in md and "\x1b" not in md
    assert "DIFFERS" in md and "FAILED" in md
    assert render([], "md", now=10.0).count("No drills in this period") == 1


def test_assertions_check_the_copy_as_its_owner_and_name_what_failed(
    estate: Estate, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    null_names = {"query": "select count(*) from customers where name is null", "expect": "== 0"}
    estate.write(
        pg={"assertions": [
            null_names,
            {"name": "recent activity", "query": "select now() - interval '1 hour'",
             "expect": ">= backup_time - 1 day"},
            {"query": "select max(id) from customers", "expect": "> 500"},
            # run as the copy's owner: a superuser-only function the backup's view calls fails
            {"query": "select n from sneaky", "expect": "!= null"},
            # logged in as that role: there is no superuser to go back to
            {"query": "reset role; select current_setting('is_superuser')", "expect": "== 'off'"},
            {"query": "select ''", "expect": "== ''"},
            # a query's own COMMIT does not end the read-only session
            {"query": "commit; select current_setting('transaction_read_only')",
             "expect": "== 'on'"},
        ]},
        my={"assertions": [null_names, {"query": "select name from customers where id = 1",
                                        "expect": "== 'c1'"},
                           {"name": "shell", "query": f"select 1;\nsystem touch {marker}",
                            "expect": "== 1"},
                           {"name": "binary", "query": "select x'01'", "expect": "== 1"}]},
        lite={"assertions": [{"query": "select count(*) from customers", "expect": ">= 300"},
                             {"query": "select null", "expect": "== null"},
                             # on stdin, a line with a dot is a shell command writing any file
                             {"name": "trace", "query": f"select 1;\n.trace {marker}\nselect 1",
                              "expect": "== 1"}]},
    )  # fmt: skip
    try:
        done = estate.cli("drill", "pg", "my", "lite", "--json")
    finally:
        estate.write()
    assert done.returncode == 2, done.stdout + done.stderr
    results = {r["target"]: r for r in json.loads(done.stdout)["results"]}
    my_row = results["my@local"]
    assert my_row["status"] == "failed" and not marker.exists(), my_row["message"]
    problem, binary = my_row["details"]["problems"]
    assert problem.startswith("assertion failed: shell: select 1;"), problem
    assert problem.endswith("the query holds a client command: only SQL runs, expected == 1")
    assert "the query's value is not text (binary data?)" in binary, binary
    lite_row = results["lite@local"]
    (problem,) = lite_row["details"]["problems"]
    assert problem.startswith("assertion failed: trace: select 1;") and "error:" in problem
    assert not marker.exists()
    pg_row = results["pg@local"]
    assert pg_row["status"] == "failed"
    checks = {c["check"]: c for c in pg_row["details"]["checks"] if "assertion" in c["check"]}
    assert checks["assertion: select count(*) from customers where name is null"]["ok"]
    assert checks["assertion: recent activity"]["ok"]
    failed = checks["assertion: select max(id) from customers"]
    assert (failed["ok"], failed["found"], failed["expected"]) == (False, "500", "> 500")
    sneaky = checks["assertion: select n from sneaky"]
    assert not sneaky["ok"] and "permission denied" in sneaky["found"], sneaky
    problems = pg_row["details"]["problems"]
    assert "assertion failed: select max(id) from customers gave 500, expected > 500" in problems
    assert len(problems) == 2, problems
    # the scratch copy went all the same
    assert pg_row["details"]["scratch"] not in scratch_databases("")
    # the report shows each assertion with its query, expected and found values
    report = estate.cli("drill", "report", "--since", "1d").stdout
    assert "| assertion: recent activity (`select now() - interval '1 hour'`) |" in report
    assert "| assertion: select max(id) from customers | \\> 500 | 500 | DIFFERS |" in report
    assert (
        "| assertion: select n from sneaky | != null | error: permission denied for function"
        in report
    )


@pytest.mark.parametrize(
    "assertions",
    [
        [{"query": "\\! touch /tmp/crmmaint-never", "expect": "== 1"}],
        [{"query": "select 1"}],
        [{"query": "select 1", "expect": "= 1"}],
        [{"query": "select 1", "expect": "< null"}],
        [{"query": "select 1", "expect": ">= backup_time - soon"}],
        [{"query": "", "expect": "== 1"}],
        [{"query": "select 1", "expect": "== 1", "other": 1}],
        "select 1",
    ],
)
def test_a_malformed_assertion_is_refused_with_its_place(estate: Estate, assertions) -> None:
    estate.write(pg={"assertions": assertions})
    try:
        done = estate.cli("drill", "pg", "--check")
    finally:
        estate.write()
    assert done.returncode == 3, done.stdout + done.stderr
    assert "assertion" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) <= 3, done.stderr


def test_a_file_set_drills_on_a_drill_host_over_ssh(estate: Estate, sshd_host, tmp_path) -> None:
    """The file set lives here; its drill restores and checks it on another host (a real
    sshd, its own host key), into that host's drill directory, and removes it there."""
    where = tmp_path / "remote-drills"
    where.mkdir()
    doc = yaml.safe_load(estate.inventory.read_text())
    doc["hosts"]["drillhost"] = {
        "address": sshd_host.address, "port": sshd_host.port, "user": sshd_host.user,
        "identity_file": str(sshd_host.identity_file), "known_hosts": str(sshd_host.known_hosts),
    }  # fmt: skip
    doc["drills"]["fileset:files"] = {"host": "drillhost", "directory": str(where)}
    # beside the estate's inventory: its relative paths (journal, keys, files) still hold
    inventory = estate.root / "inventory-drillhost.yml"
    inventory.write_text(yaml.safe_dump(doc))
    done = run_cli("drill", "fileset:files", "--json", "-i", str(inventory))
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads(done.stdout)["results"]
    assert row["details"]["on"] == "drillhost", row["details"]
    assert row["details"]["scratch"].startswith(str(where) + "/crmdrill_files_")
    checks = {c["check"]: c for c in row["details"]["checks"]}
    assert all(c["ok"] for c in checks.values()), checks
    assert checks["symbolic links to the same target"]["found"] == 1
    assert list(where.iterdir()) == []  # removed on the drill host


def test_copies_left_long_ago_on_any_machine_are_removed_by_the_next_drill(
    estate: Estate,
) -> None:
    """A drill killed on another machine (or one whose journal was lost) left copies no
    journal here knows: those of this source whose name says they are over a day old go;
    a kept copy, a fresh one and anything not shaped like a scratch name stay."""
    stamp = "20200101000000"
    old_pg, old_my = f"crmdrill_pg_{stamp}_abc123", f"crmdrill_my_{stamp}_abc123"
    spared_pg = [f"crmdrill_pg_{stamp}_abc123_kept", "crmdrill_pg_mine",
                 f"crmdrill_pg_{time_stamp(0)}_abc123"]  # fmt: skip
    for name in [old_pg, *spared_pg]:
        pg(f'CREATE DATABASE "{name}"')
    maria(f"CREATE DATABASE `{old_my}`")
    old_file = estate.drills / f"crmdrill_lite_{stamp}_abc123"
    old_file.write_bytes(b"")
    old_dir = estate.drills / f"crmdrill_files_{stamp}_abc123"
    (old_dir / "srv").mkdir(parents=True)
    kept_dir = estate.drills / f"crmdrill_files_{stamp}_abc123_kept"
    kept_dir.mkdir()
    try:
        done = estate.cli("drill", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        removed = {
            r["target"]: r["details"].get("leftovers_removed")
            for r in json.loads(done.stdout)["results"]
        }
        assert removed == {"pg@local": [old_pg], "my@local": [old_my],
                           "lite@local": [str(old_file)], "files@local": [str(old_dir)]}  # fmt: skip
        left = pg("SELECT datname FROM pg_database WHERE datname LIKE 'crmdrill_pg_%'").split()
        assert old_pg not in left and set(spared_pg) <= set(left)
        assert maria(f"SHOW DATABASES LIKE '{old_my}'") == ""
        assert not old_file.exists() and not old_dir.exists() and kept_dir.exists()
    finally:
        for name in [old_pg, *spared_pg]:
            pg(f'DROP DATABASE IF EXISTS "{name}"')
        maria(f"DROP DATABASE IF EXISTS `{old_my}`")
        subprocess.run(["rm", "-rf", str(old_file), str(old_dir), str(kept_dir)], check=True)


def time_stamp(ago: float) -> str:
    import time

    return time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() - ago))


@pytest.mark.parametrize(
    ("name", "stale"),
    [
        ("crmdrill_crm_20200101000000_abcdef", True),
        ("/var/tmp/crmdrill_crm_20200101000000_abcdef", True),
        ("crmdrill_crm_20200101000000_abcdef_kept", False),
        ("crmdrill_crm_x_20200101000000_abcdef", False),  # source crm_x, not crm
        ("crmdrill_crm_20200101000000_ABCDEF", False),
        ("crmdrill_crm_20201399000000_abcdef", False),  # no such time
        ("crm_20200101000000_abcdef", False),
    ],
)
def test_stale_scratch_names(name: str, stale: bool) -> None:
    import time

    from crmmaint.tasks.restore import stale_scratch

    assert stale_scratch([name], "crm", time.time()) == ([name] if stale else [])
    fresh = f"crmdrill_crm_{time_stamp(3600)}_abcdef"
    assert stale_scratch([fresh], "crm", time.time()) == []


def test_a_missing_drill_directory_is_refused_and_not_made(estate: Estate) -> None:
    missing = estate.root / "no-such-drills" / "deeper"
    estate.write(**{"fileset:files": {"directory": str(missing)}})
    try:
        done = estate.cli("drill", "fileset:files")
    finally:
        estate.write()
    assert done.returncode == 6, done.stdout + done.stderr
    assert f"the drill directory {missing} does not exist on local" in done.stdout
    assert not missing.parent.exists()


def test_two_drills_entries_for_one_database_are_refused(estate: Estate) -> None:
    estate.write(lite={"rto": "1h"}, **{"database:lite": {"rto": "2h"}})
    try:
        done = estate.cli("drills")
    finally:
        estate.write()
    assert done.returncode == 3 and "drills has two entries for database 'lite'" in done.stderr


def test_the_inventory_flag_may_come_before_drill_report(estate: Estate, drilled) -> None:
    done = run_cli("-i", str(estate.inventory), "drill", "report", "--since", "1d")
    assert done.returncode == 0 and done.stdout.startswith("# Restore drill report"), done.stderr


def test_a_copy_named_with_target_left_by_a_killed_drill_is_said_once(estate: Estate) -> None:
    """A drill never removes a copy it did not name: one named with --target that a killed
    drill left is said in the next drill's result, once, and left where it is."""
    from crmmaint.journal import Journal
    from crmmaint.processes import this_process

    name = f"nc_target_{estate.tag}"
    pg(f'CREATE DATABASE "{name}"')
    gone = {**this_process(), "pid": 999_999_999}  # a process that is not running
    with Journal(estate.root / "journal.sqlite") as journal:
        journal.state_set(f"drill:database:pg:{name}", {"scratch": name, **gone})
    try:
        first, second = estate.cli("drill", "pg", "--json"), estate.cli("drill", "pg", "--json")
        assert first.returncode == 0 and second.returncode == 0, first.stdout + second.stdout
        (row,) = json.loads(first.stdout)["results"]
        assert row["details"]["leftovers_kept"] == [name]
        assert f"a drill killed earlier left {name} (named with --target" in row["message"]
        (again,) = json.loads(second.stdout)["results"]
        assert "leftovers_kept" not in again["details"] and "WARNING" not in second.stderr
        assert name in pg("SELECT datname FROM pg_database").split()
    finally:
        pg(f'DROP DATABASE IF EXISTS "{name}"')


def test_a_backup_of_another_source_is_named_as_such(estate: Estate) -> None:
    listed = json.loads(estate.cli("backups", "list", "--json").stdout)
    mine = next(b["id"] for b in listed if b["source"] == "database:my")
    done = estate.cli("drill", "pg", "--backup", mine)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"backup '{mine}' is a backup of database:my, not of database:pg" in done.stdout


def test_an_assertion_leaves_the_step_time_to_remove_the_copy(estate: Estate, tmp_path) -> None:
    """A query that would outlast the step is stopped a minute before the step's end, so the
    copy is removed within the step; the drill fails naming the query."""
    book = tmp_path / "drill.yml"
    book.write_text(yaml.safe_dump({"name": "drill", "steps": [{
        "name": "drill", "task": "drill.restore", "database": "pg", "timeout": "68s",
        "with": {"assertions": [{"query": "select pg_sleep(120)", "expect": "!= null"}]},
    }]}))  # fmt: skip
    before = set(scratch_databases(""))
    done = estate.cli("run", str(book), "--json")
    assert done.returncode == 2, done.stdout + done.stderr
    (row,) = json.loads(done.stdout)["results"]
    assert "assertion failed: select pg_sleep(120) gave error:" in row["message"], row["message"]
    assert "statement timeout" in row["message"], row["message"]
    assert row["details"]["scratch"] not in set(scratch_databases("")) - before


def test_scratch_names_are_ascii_whatever_the_source_is_called() -> None:
    import re
    import time

    from crmmaint.tasks.restore import scratch_name

    class Source:
        name = "nc_ünï-x.y"

    made = scratch_name(Source(), time.time())
    assert re.fullmatch(r"crmdrill_nc__n__x_y_\d{14}_[0-9a-f]{6}", made), made
