"""A restore cut short leaves nothing behind: one that times out (`--timeout 1s`) or is
interrupted (SIGINT, SIGTERM: exit 130) removes its half-made target and its load role or
account, on PostgreSQL, MariaDB, SQLite and a file set, and so does a drill. Real servers, the
CLI as a subprocess, backups big enough that their restore takes several seconds."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from clirun import BIN, run_cli

from crmmaint.engines.mysql import LoadUser
from crmmaint.errors import CommandTimeout
from crmmaint.transport.base import DeadlineTransport
from crmmaint.transport.local import LocalTransport

PG = ["psql", "-X", "-qAt", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
MARIADB = ["mariadb", "--protocol=TCP", "-h", "127.0.0.1", "-uroot", "-N", "--batch"]


def sql(engine: str, statement: str, db: str | None = None) -> str:
    command = [*PG, "-d", db or "postgres"] if engine == "postgresql" else [*MARIADB, db or ""]
    done = subprocess.run(
        [c for c in command if c], input=statement, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def pg_owner(name: str) -> str:
    return sql("postgresql", "SELECT r.rolname FROM pg_database d JOIN pg_roles r "
               f"ON r.oid = d.datdba WHERE d.datname = '{name}'")  # fmt: skip


def pg_databases(like: str) -> set[str]:
    return set(sql("postgresql", f"SELECT datname FROM pg_database WHERE datname LIKE '{like}'")
               .split())  # fmt: skip


def pg_role_exists(role: str) -> bool:
    return bool(sql("postgresql", f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'"))


def my_exists(name: str) -> bool:
    return bool(sql("mysql", f"SHOW DATABASES LIKE '{name}'"))


def my_account_exists(name: str) -> bool:
    return bool(sql("mysql", f"SELECT 1 FROM mysql.user WHERE user = '{name}'"))


class Estate:
    """One source with a big backup in a fresh repository, and how to see what a restore of
    it into ``target`` left behind."""

    def __init__(self, engine: str, root: Path, inventory: Path, source: str, name: str) -> None:
        self.engine, self.root, self.inventory, self.source = engine, root, inventory, source
        self.name = name
        self.owners: set[str] = set()  # load roles seen owning a target while it loaded

    def target(self) -> str:
        """A new target's name; the load roles seen so far are forgotten."""
        self.owners = set()
        tag = uuid.uuid4().hex[:8]
        if self.engine == "sqlite":
            return str(self.root / f"restored_{tag}.sqlite")
        if self.engine == "files":
            return str(self.root / f"restored_{tag}" / "tree")
        return f"crmcut_{tag}"

    def exists(self, target: str) -> bool:
        """Whether the restore has made its target (or, for SQLite, its partial file)."""
        if self.engine == "postgresql":
            found = bool(pg_databases(target))
            if found and (owner := pg_owner(target)):
                self.owners.add(owner)
            return found
        if self.engine == "mysql":
            return my_exists(target)
        if self.engine == "sqlite":
            return bool(self.leftovers(target))
        return Path(target).exists()

    def leftovers(self, target: str) -> list[str]:
        """What a restore into ``target`` left: the target, partial files, load roles."""
        left: list[str] = []
        if self.engine == "postgresql":
            left += [f"database {d}" for d in pg_databases(target)]
            left += [f"role {r}" for r in self.owners if r != "postgres" and pg_role_exists(r)]
        elif self.engine == "mysql":
            left += [f"database {target}"] if my_exists(target) else []
            account = LoadUser(target, "").name
            left += [f"account {account}"] if my_account_exists(account) else []
        elif self.engine == "sqlite":
            path = Path(target)
            left += [str(p) for p in path.parent.glob(path.name + "*")]
        else:
            left += [str(p) for p in Path(target).parent.glob("*")]
        return left

    def drop(self, target: str) -> None:
        if self.engine == "postgresql":
            sql("postgresql", f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")
            for role in self.owners - {"postgres"}:
                sql("postgresql", f"DROP ROLE IF EXISTS {role}")
        elif self.engine == "mysql":
            sql("mysql", f"DROP DATABASE IF EXISTS {target}")
            user = LoadUser(target, "").name
            for host in sql("mysql", f"SELECT host FROM mysql.user WHERE user = '{user}'").split():
                sql("mysql", f"DROP USER IF EXISTS '{user}'@'{host}'")

    def restore(self, target: str, *extra: str) -> list[str]:
        return [str(BIN / "crmmaint"), "restore", f"{self.source}@latest", "--to", target,
                "-i", str(self.inventory), *extra]  # fmt: skip


def _make_source(engine: str, root: Path) -> tuple[dict, str]:
    """Big enough data, made quickly; returns the inventory section and the source's name."""
    name = f"crmbig_{uuid.uuid4().hex[:8]}"
    if engine == "postgresql":
        sql(engine, f"CREATE DATABASE {name}")
        sql(engine, "CREATE TABLE big (id int PRIMARY KEY, note text); INSERT INTO big "
            "SELECT i, md5(i::text) || md5((i * 7)::text) FROM generate_series(1, 1500000) i;",
            name)  # fmt: skip
    elif engine == "mysql":
        sql(engine, f"CREATE DATABASE {name}")
        script = "CREATE TABLE big (id int AUTO_INCREMENT PRIMARY KEY, note varchar(80));"
        script += "INSERT INTO big (note) VALUES (md5(rand()));"
        script += "INSERT INTO big (note) SELECT md5(rand()) FROM big;" * 19
        sql(engine, script, name)
    elif engine == "sqlite":
        # Small to back up, slow to check: the restore's integrity_check walks every index.
        db = sqlite3.connect(root / "big.sqlite")
        db.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, a TEXT, b TEXT, c INT)")
        db.executemany("INSERT INTO big (a, b, c) VALUES (hex(randomblob(16)), "
                       "hex(randomblob(16)), random())", [()] * 150000)  # fmt: skip
        for i, columns in enumerate(["a", "b", "a, b", "c", "b, c", "c, a"]):
            db.execute(f"CREATE INDEX big_{i} ON big ({columns})")
        db.commit()
        db.close()
        return {"databases": {name: {"engine": "sqlite", "path": str(root / "big.sqlite"),
                                     "host": "local"}}}, name  # fmt: skip
    else:
        tree = root / "tree"
        # big enough that no restore of it ends within the 1 s timeout test below (20,000
        # files; 10,000 did on a fast machine, leaving a finished restore, not a cut one)
        for d in range(40):
            (tree / f"d{d}").mkdir(parents=True)
            for f in range(500):
                (tree / f"d{d}" / f"f{f}").write_bytes(os.urandom(4096))
        return {"filesets": {name: {"paths": [str(tree)], "host": "local"}}}, name
    section = {"engine": engine, "host": "local", "name": name, "address": "127.0.0.1",
               "user": "postgres" if engine == "postgresql" else "root"}  # fmt: skip
    return {"databases": {name: section}}, name


@pytest.fixture(scope="module", params=["postgresql", "mysql", "sqlite", "files"])
def estate(request, tmp_path_factory) -> Iterator[Estate]:
    engine = request.param
    root = tmp_path_factory.mktemp(f"cut-{engine}")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HOME", str(root / "home"))
        section, name = _make_source(engine, root)
        keys = root / "keys"
        inv = {
            "settings": {"journal": str(root / "journal.sqlite")},
            "hosts": {"local": {"connection": "local"}},
            **section,
            "repositories": {"main": {"url": str(root / "repo"), "identity": str(keys / "o.key"),
                                      "write_key": str(keys / "write.key"),
                                      "recipients": [f"file:{keys / 'o.pub'}"]}},
        }  # fmt: skip
        path = root / "inventory.yml"
        path.write_text(yaml.safe_dump(inv))
        keys.mkdir()
        generated = run_cli("keys", "generate", "--output", str(keys / "o.key"))
        (keys / "o.pub").write_text(generated.stdout.strip() + "\n")
        assert run_cli("repo", "init", "-i", str(path)).returncode == 0
        kind = "fileset" if engine == "files" else "database"
        done = run_cli("backup", "-i", str(path))
        assert done.returncode == 0, done.stdout + done.stderr
        try:
            yield Estate(engine, root, path, f"{kind}:{name}", name)
        finally:
            if engine in ("postgresql", "mysql"):
                force = " WITH (FORCE)" if engine == "postgresql" else ""
                sql(engine, f"DROP DATABASE IF EXISTS {name}{force}")


def interrupted(
    command: list[str], sig: int, started: Callable[[], bool], delay: float = 0.5
) -> tuple[int, str]:
    """Run ``command``, send ``sig`` ``delay`` seconds after ``started()`` holds (the load is
    under way); returns the exit code and stderr."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not started():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the restore never made its target"
            time.sleep(0.05)
        time.sleep(delay)
        assert proc.poll() is None, "the restore ended before it could be interrupted"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def test_a_restore_that_times_out_leaves_nothing(estate: Estate) -> None:
    target = estate.target()
    try:
        done = subprocess.run(estate.restore(target, "--timeout", "1s"), capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 2, f"not cut by the timeout: {done.stdout + done.stderr}"
        assert estate.leftovers(target) == [], done.stderr
        assert "timed out after 1s" in done.stdout + done.stderr
        assert "could not" not in done.stderr, done.stderr
    finally:
        estate.drop(target)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_restore_leaves_nothing(estate: Estate, sig: int) -> None:
    target = estate.target()
    try:
        code, err = interrupted(estate.restore(target), sig, lambda: estate.exists(target))
        assert estate.leftovers(target) == [], err
        assert code == 130, err
        assert "could not" not in err and "timed out" not in err, err
        if estate.engine == "postgresql":
            assert estate.owners - {"postgres"}, "no load role seen owning the target"
    finally:
        estate.drop(target)


@pytest.mark.parametrize("estate", ["postgresql"], indirect=True)
def test_an_interrupted_drill_leaves_nothing(estate: Estate) -> None:
    book = estate.root / f"drill_{uuid.uuid4().hex[:8]}.yml"
    step = {"name": "drill", "task": "drill.restore", "database": "all"}
    book.write_text(yaml.safe_dump({"name": "drill", "steps": [step]}))
    scratch = f"crmdrill\\_{estate.name}\\_%"  # this estate's drills only
    estate.target()

    def started() -> bool:
        return any([estate.exists(name) for name in pg_databases(scratch)])

    command = [str(BIN / "crmmaint"), "run", str(book), "-i", str(estate.inventory)]
    try:
        code, err = interrupted(command, signal.SIGTERM, started)
        assert pg_databases(scratch) == set(), err
        assert estate.owners - {"postgres"}, "no load role seen owning the scratch database"
        assert [r for r in estate.owners - {"postgres"} if pg_role_exists(r)] == [], err
        assert code == 130, err
        assert "could not" not in err, err
        # the evidence: the drill cut short, with the backup and the copy it was making
        listed = run_cli("drills", "--json", "--limit", "1", "-i", str(estate.inventory))
        (row,) = json.loads(listed.stdout)
        assert row["status"] == "interrupted" and row["backup"] and row["scratch"], row
        assert row["scratch"].startswith(f"crmdrill_{estate.name}_"), row
    finally:
        for name in pg_databases(scratch):
            estate.drop(name)


@pytest.mark.parametrize("estate", ["postgresql"], indirect=True)
def test_an_interrupted_backup_says_what_it_cut_short_and_leaves_the_repository_whole(
    estate: Estate,
) -> None:
    """Ctrl-C during a backup: exit 130, one line naming the step and target cut short and the
    run journaled as interrupted with its step; no lock left, no backup half-written, and the
    repository verifies."""
    inv = str(estate.inventory)
    before = run_cli("backups", "list", "--json", "-i", inv).stdout

    def dumping() -> bool:
        found = subprocess.run(["pgrep", "-f", f"pg_dump.*{estate.name}"], capture_output=True)
        return bool(found.stdout)

    command = [str(BIN / "crmmaint"), "backup", "-i", inv]
    # soon after pg_dump starts: on a quiet machine the 1.5M-row dump ends within 0.5 s
    code, err = interrupted(command, signal.SIGINT, dumping, delay=0.1)
    assert code == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("crmmaint: interrupted: step 'backup databases' cut short on "), err
    assert estate.name in last and "journaled as interrupted" in last, err
    run = json.loads(run_cli("show", "--json", "-i", inv).stdout)
    assert run["status"] == "interrupted" and run["playbook"] == "backup", run
    (row,) = run["results"]
    assert row["status"] == "failed" and row["duration"] > 0, row
    assert list((estate.root / "repo" / "locks").glob("*")) == []
    assert run_cli("backups", "list", "--json", "-i", inv).stdout == before
    done = run_cli("verify", "-i", inv)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_cleanup_view_runs_after_its_attempt_was_stopped() -> None:
    """What the restores above rely on: once an attempt's commands were killed (or its
    deadline passed), its cleanup view still runs commands, until it too is stopped; a
    refusal says why."""
    with LocalTransport("local") as pooled:
        view = DeadlineTransport(pooled, time.monotonic() - 1)
        view.kill_all("the run was interrupted")
        with pytest.raises(CommandTimeout, match="not starting 'true': the run was interrupted"):
            view.run(["true"])
        cleanup = view.for_cleanup(30)
        assert view.cleaning and cleanup.run(["true"]).ok
        view.kill_all("its cleanup was stopped", cleanup=True)
        with pytest.raises(CommandTimeout, match="its cleanup was stopped"):
            cleanup.run(["true"])
        with pytest.raises(CommandTimeout, match="its cleanup was stopped"):
            view.for_cleanup(30).run(["true"])
        assert pooled.for_cleanup(30) is pooled  # no deadline: itself


@pytest.mark.parametrize("estate", ["sqlite"], indirect=True)
def test_an_interrupted_sqlite_backup_leaves_no_plain_copy(
    estate: Estate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The online-backup copy of a SQLite database (plain data, in the temp directory) is
    removed when the backup is interrupted: its removal runs as cleanup, which an interrupt
    does not refuse (it was left behind, the database whole and unencrypted)."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    command = [str(BIN / "crmmaint"), "backup", "-i", str(estate.inventory)]
    code, err = interrupted(command, signal.SIGINT, lambda: any(temp.glob("crmmaint-sqlite.*")))
    assert code == 130, err
    assert list(temp.iterdir()) == [], err


@pytest.mark.parametrize("estate", ["sqlite"], indirect=True)
def test_a_backup_interrupted_while_it_waits_for_the_lock_leaves_nothing(
    estate: Estate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a newcomer: Ctrl-C while a backup waited for the repository's lock left the
    SQLite copy (the whole database, unencrypted) in the temp dir, and a warning after the
    last line; then the process lived on until the lock came free. The lock is taken before
    the dump starts (nothing is made while it waits), and its wait ends on the interrupt."""
    from crmmaint.repository.backends.local import LocalBackend
    from crmmaint.repository.lock import RepositoryLock

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    held = RepositoryLock(LocalBackend(estate.root / "repo"), exclusive=True, owner="a prune")
    held.acquire()
    try:
        began = time.monotonic()
        command = [str(BIN / "crmmaint"), "backup", "-i", str(estate.inventory)]
        code, err = interrupted(command, signal.SIGINT, lambda: time.monotonic() > began + 3)
        took = time.monotonic() - began
    finally:
        held.release()
    assert code == 130, err
    # at once, not when the lock came free (the lock wait ends on the interrupt too)
    assert took < 15, (took, err)
    assert list(temp.iterdir()) == [], err
    assert err.strip().splitlines()[-1].startswith("crmmaint: interrupted"), err
