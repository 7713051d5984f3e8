"""Backup benchmark: crmmaint against pg_dump, restic, borg and a zstd+openssl pipe.

On a generated CRM database (bench/crmgen.py; ``--scale 1`` is about 1 GB of plain dump) every
contender runs as a subprocess; wall time and peak RSS of its whole process tree are measured
(tree RSS summed from /proc every 0.1 s, and the largest single process from GNU time's %M).

Scenarios, each printed as a table (wall s, ratio to the floor, MB/s of plain dump, CPU s: the
whole machine's busy CPU-seconds during the run, server backend included, peak RSS):

1. backup: ``pg_dump -Fp > /dev/null`` (the floor, best of runs+1) vs ``crmmaint backup``,
   ``pg_dump | restic backup --stdin``, ``pg_dump | borg create -`` and
   ``pg_dump | zstd -T0 | openssl enc`` (and ``zstd -1``: what compression and encryption
   alone cost here, a bound for any tool that compresses with zstd);
2. restore into a new database: ``psql -f dump.sql`` (the floor) vs ``crmmaint restore``,
   ``restic dump | psql``, ``borg extract --stdout | psql`` and ``pg_restore -j2`` of a
   custom-format archive (the reference that shows the floor can be beaten);
3. dedup: a clustered 1% change (crmgen ``mutate``), then a second backup with each tool; new
   bytes stored as % of the first backup (crmmaint: ``stored_bytes``; restic and borg: growth
   of the repository directory);
4. verify: a third backup after another change, then ``crmmaint verify --read-data`` vs
   ``restic check --read-data`` (the floor) and ``borg check --verify-data``;
5. RSS flatness: ``crmmaint backup`` of a database twice the size into a fresh repository.

Targets (from the issue): backup within 1.3x of the floor, peak RSS < 150 MB and flat when the
database doubles, second backup's new bytes < 3% of the first, restore no slower than psql -f,
verify no slower than restic check --read-data.

    .venv/bin/python bench/backup.py --quick          # ~200 MB of dump, for iteration
    .venv/bin/python bench/backup.py --scale 1 --runs 2   # the full figures (~1 GB)
    options: --runs N (repeat first backups, restores, verify; best wall time, highest RSS)
             --skip-restic --skip-borg --skip-rss --keep --reuse --output FILE
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import crmgen  # noqa: E402

CRMMAINT = str(ROOT / ".venv" / "bin" / "crmmaint")
SRC = "crmbench_src"
DOUBLE = "crmbench_2x"
PASSWORD = "crmbench-password"
PAGE = os.sysconf("SC_PAGE_SIZE")
PG = "-h 127.0.0.1 -p 5432 -U postgres"

TARGET_BACKUP = 1.3
TARGET_RSS_MB = 150.0
TARGET_DEDUP = 3.0


# --- measuring -----------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, now."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
        todo += _children(pid)
    return total


@dataclass
class Result:
    tool: str
    wall: float
    tree_mb: float
    proc_mb: float
    ok: bool = True
    note: str = ""
    stdout: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    cpu: float = 0.0  # busy CPU-seconds of the whole machine meanwhile (server backend included)


def busy_seconds() -> float:
    """CPU-seconds the machine has spent busy since boot (user, nice, system, irq, softirq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.env = env
        self.log = open(work / "bench.log", "a")  # noqa: SIM115

    def run(self, tool: str, command: str, *, check: bool = True) -> Result:
        """Run ``command`` with bash (pipefail) in the work dir; measure wall time and RSS."""
        fd, timefile = tempfile.mkstemp(dir=self.work, suffix=".time")
        os.close(fd)
        argv = ["/usr/bin/time", "-f", "%M", "-o", timefile]
        argv += ["bash", "-o", "pipefail", "-c", command]
        self.log.write(f"\n$ {command}\n")
        self.log.flush()
        peak = 0
        started, busy = time.monotonic(), busy_seconds()
        proc = subprocess.Popen(
            argv,
            cwd=self.work,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.1):
                peak = max(peak, tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        assert proc.stdout
        stdout = proc.stdout.read().decode(errors="replace")
        rc = proc.wait()
        wall, cpu = time.monotonic() - started, busy_seconds() - busy
        done.set()
        sampler.join()
        self.log.write(stdout)
        self.log.write(f"[{tool}: rc {rc}, {wall:.2f}s]\n")
        self.log.flush()
        try:
            proc_kb = int(Path(timefile).read_text().split()[-1])
        except (ValueError, IndexError):
            proc_kb = 0
        os.unlink(timefile)
        res = Result(tool, wall, peak / 1e6, proc_kb / 1e3, ok=rc == 0, stdout=stdout, cpu=cpu)
        if rc != 0:
            res.note = f"FAILED rc={rc} (see {self.work / 'bench.log'})"
            if check:
                raise SystemExit(f"{tool} failed (rc {rc}): {command}\nsee {self.work}/bench.log")
        return res


def best(runs: list[Result]) -> Result:
    """The fastest run, with the highest peak RSS of all runs (noise only ever adds time)."""
    fastest = min(runs, key=lambda r: r.wall)
    res = Result(
        fastest.tool,
        fastest.wall,
        max(r.tree_mb for r in runs),
        max(r.proc_mb for r in runs),
        ok=all(r.ok for r in runs),
        stdout=fastest.stdout,
        cpu=fastest.cpu,
    )
    if len(runs) > 1:
        res.note = "(best of " + ", ".join(f"{r.wall:.1f}" for r in runs) + ")"
    return res


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


def sh(command: str, env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"setup failed: {command}\n{proc.stderr[-3000:]}")
    return proc.stdout


def drop_db(name: str) -> None:
    crmgen.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);')


# --- printing ------------------------------------------------------------------------------


def table(title: str, rows: list[Result], floor: float, size: int, cols: str = "") -> str:
    lines = [
        f"\n## {title}",
        f"{'tool':<40} {'wall s':>8} {'x floor':>8} {'MB/s':>8} {'CPU s':>7} {'tree RSS MB':>12} "
        f"{'max proc MB':>12}  {cols}",
    ]
    for r in rows:
        mbs = size / 1e6 / r.wall if r.wall else 0
        extra = "  ".join(f"{k} {v:.1f}" for k, v in r.extra.items())
        lines.append(
            f"{r.tool:<40} {r.wall:>8.1f} {r.wall / floor:>8.2f} {mbs:>8.1f} {r.cpu:>7.1f} "
            f"{r.tree_mb:>12.0f} {r.proc_mb:>12.0f}  {extra} {r.note}".rstrip()
        )
    return "\n".join(lines)


# --- the benchmark -------------------------------------------------------------------------


class Scenario:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        env = dict(os.environ)
        env.update(
            RESTIC_PASSWORD=PASSWORD,
            RESTIC_CACHE_DIR=str(work / "restic-cache"),
            BORG_PASSPHRASE=PASSWORD,
            BORG_BASE_DIR=str(work / "borg-base"),
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
            BENCH_PASSWORD=PASSWORD,
            PGHOST="127.0.0.1",
            PGUSER="postgres",
            PGPORT="5432",
        )
        self.bench = Bench(work, env)
        self.env = env
        self.out: list[str] = []
        self.summary: list[tuple[str, bool | None, str]] = []
        self.tools = ["crmmaint"]
        if not args.skip_restic:
            self.tools.append("restic")
        if not args.skip_borg:
            self.tools.append("borg")
        self.repo_sizes: dict[str, list[int]] = {t: [] for t in self.tools}
        self.stored: list[int] = []

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.out.append(text)

    def target(self, what: str, met: bool | None, detail: str) -> None:
        self.summary.append((what, met, detail))

    # --- setup ---

    def inventory(self) -> None:
        db = {"engine": "postgresql", "host": "local", "address": "127.0.0.1", "port": 5432}
        db["user"] = "postgres"
        text = {
            "hosts": {"local": {"connection": "local"}},
            "databases": {SRC: dict(db), DOUBLE: dict(db)},
            "repositories": {
                "bench": {
                    "url": "crmmaint-repo",
                    "write_key": "keys/write.key",
                    "recipients": ["file:keys/ops.pub"],
                    "identity": "keys/ops.key",
                    "default": True,
                },
                "bench2x": {
                    "url": "crmmaint-repo-2x",
                    "write_key": "keys/write2x.key",
                    "recipients": ["file:keys/ops.pub"],
                    "identity": "keys/ops.key",
                },
            },
            "settings": {"journal": "journal.sqlite"},
        }
        (self.work / "inv.yml").write_text(json.dumps(text, indent=1))
        (self.work / "keys").mkdir(exist_ok=True)
        cm = shlex.quote(CRMMAINT)
        sh(f"{cm} keys generate --output keys/ops.key", self.env, self.work)
        sh(f"{cm} repo init -i inv.yml", self.env, self.work)
        sh(f"{cm} repo init -i inv.yml --repository bench2x", self.env, self.work)
        if "restic" in self.tools:
            sh("restic init -q -r restic-repo", self.env, self.work)
        if "borg" in self.tools:
            sh("borg init -e repokey-blake2 borg-repo", self.env, self.work)
        for t in self.tools:
            self.repo_sizes[t].append(du(self.work / self.repo_dir(t)))

    @staticmethod
    def repo_dir(tool: str) -> str:
        return {"crmmaint": "crmmaint-repo", "restic": "restic-repo", "borg": "borg-repo"}[tool]

    def source(self, name: str, scale: float) -> None:
        self.say(crmgen.ensure(name, scale, seed=self.args.seed, reuse=self.args.reuse))

    def mark_mutated(self, name: str) -> None:
        crmgen.psql("postgres", f"COMMENT ON DATABASE \"{name}\" IS 'mutated';")

    # --- commands ---

    def backup_commands(self, label: str) -> dict[str, str]:
        dump = f"pg_dump -Fp {PG} -d {SRC}"
        cmds = {
            "crmmaint": f"{shlex.quote(CRMMAINT)} backup -i inv.yml --database {SRC}",
            "restic": f"{dump} | restic -q -r restic-repo backup --stdin --stdin-filename dump.sql",
            "borg": f"{dump} | borg create borg-repo::{label} -",
        }
        return {t: c for t, c in cmds.items() if t in self.tools}

    def crmmaint_backups(self, repository: str = "bench") -> list[dict]:
        out = sh(
            f"{shlex.quote(CRMMAINT)} backups list -i inv.yml --repository {repository} --json",
            self.env,
            self.work,
        )
        return sorted(json.loads(out), key=lambda b: b["time"])

    def reset_repo(self, tool: str) -> None:
        """An empty repository again (for a repeated first backup)."""
        cm = shlex.quote(CRMMAINT)
        shutil.rmtree(self.work / self.repo_dir(tool))
        if tool == "crmmaint":
            (self.work / "keys" / "write.key").unlink()
            sh(f"{cm} repo init -i inv.yml", self.env, self.work)
        elif tool == "restic":
            shutil.rmtree(self.work / "restic-cache", ignore_errors=True)
            sh("restic init -q -r restic-repo", self.env, self.work)
        else:
            shutil.rmtree(self.work / "borg-base", ignore_errors=True)
            sh("borg init -e repokey-blake2 borg-repo", self.env, self.work)
        self.repo_sizes[tool][-1] = du(self.work / self.repo_dir(tool))

    def backups(self, label: str, title: str, *, first: bool) -> dict[str, Result]:
        """Each tool backs up once (``first``: ``--runs`` times, each into an empty repository,
        interleaved with the floor); the best wall time and the highest RSS are reported."""
        self.say(f"\n(load average before {title}: {loadavg()})")
        dump = f"pg_dump -Fp {PG} -d {SRC}"
        commands = {"floor": f"{dump} > /dev/null", **self.backup_commands(label)}
        if first:
            # What compressing and encrypting alone cost on this machine (no chunking, ids,
            # dedup or facts): a bound on what any tool that compresses with zstd can reach.
            commands["pipe"] = (
                f"{dump} | zstd -q -T0 | openssl enc -aes-256-ctr -pbkdf2 "
                "-pass env:BENCH_PASSWORD > pipe.zst.enc"
            )
            commands["pipe1"] = (
                f"{dump} | zstd -q -1 -T0 | openssl enc -aes-256-ctr -pbkdf2 "
                "-pass env:BENCH_PASSWORD > pipe1.zst.enc"
            )
        names = {
            "floor": "pg_dump -Fp > /dev/null (floor)",
            "pipe": "pg_dump | zstd -T0 | openssl enc",
            "pipe1": "pg_dump | zstd -1 -T0 | openssl enc",
        }
        runs: dict[str, list[Result]] = {t: [] for t in commands}
        for n in range(self.args.runs if first else 1):
            for tool, command in commands.items():
                if n and tool in self.repo_sizes:
                    self.reset_repo(tool)
                runs[tool].append(self.bench.run(names.get(tool, tool), command))
                if n == 0 and tool in self.repo_sizes:
                    self.repo_sizes[tool].append(0)
                if tool in self.repo_sizes:
                    self.repo_sizes[tool][-1] = du(self.work / self.repo_dir(tool))
        runs["floor"].append(self.bench.run(names["floor"], commands["floor"]))
        results = {t: best(rs) for t, rs in runs.items()}
        floor = results["floor"]
        latest = self.crmmaint_backups()[-1]
        size = latest["size"]
        self.stored.append(latest["stored_bytes"])
        for tool, r in results.items():
            if tool in self.repo_sizes:
                grew = self.repo_sizes[tool][-1] - self.repo_sizes[tool][-2]
                r.extra["stored MB"] = grew / 1e6
        results["crmmaint"].extra["stored MB"] = latest["stored_bytes"] / 1e6
        results["crmmaint"].extra["in-task s"] = latest["duration"]
        if first:
            results["pipe"].extra["stored MB"] = du(self.work / "pipe.zst.enc") / 1e6
            results["pipe1"].extra["stored MB"] = du(self.work / "pipe1.zst.enc") / 1e6
        order = ["crmmaint", "restic", "borg", "pipe", "pipe1"]  # floor first, then these
        rows = [floor] + [results[t] for t in order if t in results]
        self.say(table(f"{title} ({size / 1e6:.0f} MB plain dump)", rows, floor.wall, size))
        return results

    def restores(self) -> None:
        self.say(f"\n(load average before restore: {loadavg()})")
        size = (self.work / "dump.sql").stat().st_size
        psql = "psql -X -q -v ON_ERROR_STOP=1 -o /dev/null " + PG
        targets = {
            "psql -f dump.sql (floor)": (
                "crmbench_r_psql",
                f"createdb {PG} crmbench_r_psql && {psql} -d crmbench_r_psql -f dump.sql",
            ),
            "pg_restore -j2 (custom archive)": (
                "crmbench_r_pgrestore",
                f"createdb {PG} crmbench_r_pgrestore && "
                f"pg_restore -j2 {PG} -d crmbench_r_pgrestore dump.custom",
            ),
            "crmmaint": (
                "crmbench_r_crmmaint",
                f"{shlex.quote(CRMMAINT)} restore database:{SRC}@latest --to crmbench_r_crmmaint "
                "-i inv.yml",
            ),
            "restic": (
                "crmbench_r_restic",
                f"createdb {PG} crmbench_r_restic && "
                f"restic -q -r restic-repo dump latest /dump.sql | {psql} -d crmbench_r_restic",
            ),
            "borg": (
                "crmbench_r_borg",
                f"createdb {PG} crmbench_r_borg && "
                f"borg extract --stdout borg-repo::first | {psql} -d crmbench_r_borg",
            ),
        }
        runs: dict[str, list[Result]] = {}
        for _ in range(self.args.runs):
            for tool, (db, command) in targets.items():
                if tool in ("restic", "borg") and tool not in self.tools:
                    continue
                drop_db(db)
                runs.setdefault(tool, []).append(self.bench.run(tool, command))
                drop_db(db)
        rows = [best(rs) for rs in runs.values()]
        floor = rows[0].wall
        self.say(
            table(
                f"restore into a new database ({size / 1e6:.0f} MB plain dump)", rows, floor, size
            )
        )
        crm = next(r for r in rows if r.tool == "crmmaint")
        pgr = rows[1]
        self.target(
            "restore no slower than psql -f",
            crm.wall <= floor,
            f"{crm.wall:.1f}s vs {floor:.1f}s ({crm.wall / floor:.2f}x; pg_restore -j2 "
            f"{pgr.wall:.1f}s, {pgr.wall / floor:.2f}x)",
        )

    def verify(self) -> None:
        self.say(f"\n(load average before verify: {loadavg()})")
        size = sum(b["stored_bytes"] for b in self.crmmaint_backups())
        cm = shlex.quote(CRMMAINT)
        commands = {
            "restic check --read-data (floor)": "restic -q -r restic-repo check --read-data",
            "crmmaint verify --read-data": f"{cm} verify --read-data -i inv.yml",
            "crmmaint verify --read-data --decrypt": f"{cm} verify --read-data --decrypt -i inv.yml",
            "borg check --verify-data": "borg check --verify-data borg-repo",
        }
        if "restic" not in self.tools:
            del commands["restic check --read-data (floor)"]
        if "borg" not in self.tools:
            del commands["borg check --verify-data"]
        runs: dict[str, list[Result]] = {}
        for _ in range(self.args.runs):
            for tool, command in commands.items():
                runs.setdefault(tool, []).append(self.bench.run(tool, command))
        rows = [best(rs) for rs in runs.values()]
        floor = rows[0].wall
        self.say(
            table(
                f"verify over three backups (MB/s of crmmaint's {size / 1e6:.0f} MB stored)",
                rows,
                floor,
                size,
            )
        )
        if "restic" in self.tools:
            crm = rows[1]
            self.target(
                "verify --read-data no slower than restic check --read-data",
                crm.wall <= floor,
                f"{crm.wall:.1f}s vs {floor:.1f}s ({crm.wall / floor:.2f}x)",
            )

    def dedup(self, first: dict[str, Result], second: dict[str, Result]) -> None:
        lines = ["\n## dedup: second backup after a clustered 1% change"]
        lines.append(f"{'tool':<40} {'first MB':>10} {'new MB':>10} {'new % of first':>15}")
        pct: dict[str, float] = {}
        for tool in self.tools:
            a = first[tool].extra["stored MB"]
            b = second[tool].extra["stored MB"]
            pct[tool] = 100 * b / a if a else 0
            lines.append(f"{tool:<40} {a:>10.1f} {b:>10.2f} {pct[tool]:>14.2f}%")
        self.say("\n".join(lines))
        detail = f"{pct['crmmaint']:.2f}%" + "".join(
            f", {t} {pct[t]:.2f}%" for t in self.tools if t != "crmmaint"
        )
        self.target(
            f"second backup new bytes < {TARGET_DEDUP}%", pct["crmmaint"] < TARGET_DEDUP, detail
        )

    def rss_flat(self, first: Result, scale: float) -> None:
        double = scale * 2
        self.say(f"\n(generating {DOUBLE} at scale {double} for the RSS check)")
        self.source(DOUBLE, double)
        self.say(f"(load average before RSS check: {loadavg()})")
        r = self.bench.run(
            f"crmmaint backup, scale {double}",
            f"{shlex.quote(CRMMAINT)} backup -i inv.yml --database {DOUBLE} --repository bench2x",
        )
        size2 = self.crmmaint_backups("bench2x")[-1]["size"]
        size1 = self.crmmaint_backups()[0]["size"]
        first.tool = f"crmmaint backup, scale {scale}"
        lines = ["\n## peak RSS when the database doubles (first backups, fresh repositories)"]
        lines.append(
            f"{'run':<40} {'dump MB':>8} {'wall s':>8} {'tree RSS MB':>12} {'max proc MB':>12}"
        )
        for res, size in ((first, size1), (r, size2)):
            lines.append(
                f"{res.tool:<40} {size / 1e6:>8.0f} {res.wall:>8.1f} {res.tree_mb:>12.0f} "
                f"{res.proc_mb:>12.0f}"
            )
        self.say("\n".join(lines))
        flat = r.tree_mb <= max(first.tree_mb * 1.1, first.tree_mb + 10)
        self.target(
            "peak RSS flat when the database doubles",
            flat,
            f"{first.tree_mb:.0f} MB -> {r.tree_mb:.0f} MB (tree), "
            f"{first.proc_mb:.0f} -> {r.proc_mb:.0f} MB (largest process)",
        )
        if not self.args.keep:
            drop_db(DOUBLE)

    def run(self) -> None:
        args = self.args
        self.say(
            f"# crmmaint backup benchmark: scale {args.scale}, {os.cpu_count()} CPUs, "
            f"load average {loadavg()}, {time.strftime('%Y-%m-%d %H:%M')}"
        )
        self.source(SRC, args.scale)
        self.inventory()
        # The dump files double as a warm-up: the database is in the page cache afterwards.
        sh(f"pg_dump -Fp {PG} -d {SRC} -f dump.sql", self.env, self.work)
        sh(f"pg_dump -Fc {PG} -d {SRC} -f dump.custom", self.env, self.work)
        first = self.backups("first", "backup (first, into empty repositories)", first=True)
        floor = first["floor"].wall
        crm = first["crmmaint"]
        self.target(
            f"backup within {TARGET_BACKUP}x of pg_dump",
            crm.wall <= TARGET_BACKUP * floor,
            f"{crm.wall:.1f}s vs {floor:.1f}s ({crm.wall / floor:.2f}x)"
            + "".join(
                f", {t} {first[t].wall / floor:.2f}x"
                for t in ("restic", "borg", "pipe", "pipe1")
                if t in first
            ),
        )
        self.target(
            f"peak RSS < {TARGET_RSS_MB:.0f} MB",
            crm.tree_mb < TARGET_RSS_MB,
            f"{crm.tree_mb:.0f} MB process tree (crmmaint + psql + pg_dump), largest process "
            f"{crm.proc_mb:.0f} MB",
        )
        self.restores()
        self.mark_mutated(SRC)
        touched = crmgen.mutate(SRC, round_no=1, seed=args.seed)
        self.say(f"\n(clustered change 1: {touched})")
        second = self.backups(
            "second", "second backup (after the clustered 1% change)", first=False
        )
        self.dedup(first, second)
        touched = crmgen.mutate(SRC, round_no=2, seed=args.seed)
        self.say(f"\n(clustered change 2: {touched})")
        self.backups("third", "third backup (after another clustered change)", first=False)
        self.verify()
        if not args.skip_rss:
            self.rss_flat(crm, args.scale)
        self.say("\n## targets")
        for what, met, detail in self.summary:
            mark = {True: "MET   ", False: "MISSED", None: "n/a   "}[met]
            self.say(f"{mark} {what}: {detail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = about 1 GB of plain dump")
    ap.add_argument("--quick", action="store_true", help="scale 0.2 (about 200 MB)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--runs", type=int, default=1, help="repeat first backups, restores, verify; keep the best"
    )
    ap.add_argument("--skip-restic", action="store_true")
    ap.add_argument("--skip-borg", action="store_true")
    ap.add_argument("--skip-rss", action="store_true", help="no doubled database for the RSS check")
    ap.add_argument("--keep", action="store_true", help="keep databases and bench/.work/backup-*")
    ap.add_argument("--reuse", action="store_true", help="reuse an unmutated source database")
    ap.add_argument("--output", help="also write the tables to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.scale = 0.2
    for tool in ("pg_dump", "psql", "pg_restore", "createdb", "zstd", "openssl", "/usr/bin/time"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed")
    if not args.skip_restic and not shutil.which("restic"):
        raise SystemExit("restic is not installed (apt-get install restic), or pass --skip-restic")
    if not args.skip_borg and not shutil.which("borg"):
        raise SystemExit("borg is not installed (apt-get install borgbackup), or pass --skip-borg")
    (BENCH / ".work").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="backup-", dir=BENCH / ".work"))
    scenario = Scenario(args, work)
    try:
        scenario.run()
    finally:
        if args.output:
            Path(args.output).write_text("\n".join(scenario.out) + "\n")
        if args.keep:
            print(f"\nkept {work} and the crmbench_* databases")
        else:
            for db in (
                SRC,
                DOUBLE,
                "crmbench_r_psql",
                "crmbench_r_pgrestore",
                "crmbench_r_crmmaint",
                "crmbench_r_restic",
                "crmbench_r_borg",
            ):
                drop_db(db)
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
