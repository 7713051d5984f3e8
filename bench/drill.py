"""Drill benchmark: a whole ``crmmaint drill`` against a plain ``psql -f dump.sql``.

On the generated CRM database of the backup benchmark (bench/crmgen.py; ``--scale 1`` is about
1 GB of plain dump), backed up once with crmmaint, it compares:

- the floor: ``createdb`` + ``psql -f dump.sql`` into a new database (the dump written
  beforehand, not timed), then ``dropdb``: what a sysadmin's hand-made restore test costs
  without any check;
- ``crmmaint drill database:SRC``: fetch, decrypt, decompress and load the backup into a
  scratch database, read back and compare its tables, row counts, schema, sequences and
  each table's content, drop it: the whole drill, as a subprocess.

Printed: wall time, ratio to the floor, CPU and peak RSS (as bench/backup.py measures them),
and the drill's phase times from its own result. Target (issue): the whole drill within
**1.25x** of the plain load.

    .venv/bin/python bench/drill.py --quick            # ~200 MB of dump, for iteration
    .venv/bin/python bench/drill.py --scale 1 --runs 2  # the figures (~1 GB)
    options: --runs N (best wall time, highest RSS)  --reuse  --keep  --output FILE
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import crmgen  # noqa: E402
from backup import CRMMAINT, PG, SRC, Bench, Result, best, drop_db, loadavg, sh, table  # noqa: E402

TARGET_DRILL = 1.25
FLOOR_DB = "crmbench_drill_psql"


def inventory(work: Path, env: dict[str, str]) -> None:
    """An inventory of the benchmark database and a repository, keys made, repository made."""
    db = {"engine": "postgresql", "host": "local", "address": "127.0.0.1", "port": 5432,
          "user": "postgres"}  # fmt: skip
    doc = {
        "hosts": {"local": {"connection": "local"}},
        "databases": {SRC: db},
        "repositories": {
            "bench": {
                "url": "crmmaint-repo",
                "write_key": "keys/write.key",
                "recipients": ["file:keys/ops.pub"],
                "identity": "keys/ops.key",
            },
        },
        "settings": {"journal": "journal.sqlite"},
    }
    (work / "inv.yml").write_text(json.dumps(doc, indent=1))
    (work / "keys").mkdir(exist_ok=True)
    cm = shlex.quote(CRMMAINT)
    sh(f"{cm} keys generate --output keys/ops.key", env, work)
    sh(f"{cm} repo init -i inv.yml", env, work)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = about 1 GB of plain dump")
    ap.add_argument("--quick", action="store_true", help="scale 0.2 (about 200 MB)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--runs", type=int, default=1, help="repeat each; keep the best wall time")
    ap.add_argument("--reuse", action="store_true", help="reuse the source database if generated")
    ap.add_argument("--keep", action="store_true", help="keep the work folder and databases")
    ap.add_argument("--output", help="also write the table to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.scale = 0.2
    for tool in ("pg_dump", "psql", "createdb", "dropdb", "/usr/bin/time"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed")
    (BENCH / ".work").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="drill-", dir=BENCH / ".work"))
    out: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        out.append(text)

    import os

    env = dict(os.environ, PGHOST="127.0.0.1", PGUSER="postgres", PGPORT="5432")
    bench = Bench(work, env)
    try:
        say(crmgen.ensure(SRC, args.scale, seed=args.seed, reuse=args.reuse))
        inventory(work, env)
        sh(f"{shlex.quote(CRMMAINT)} backup -i inv.yml", env, work)
        sh(f"pg_dump -Fp {PG} -d {SRC} > dump.sql", env, work)
        size = (work / "dump.sql").stat().st_size
        floor_cmd = (
            f"createdb {PG} {FLOOR_DB} && psql -q -X -v ON_ERROR_STOP=1 {PG} -d {FLOOR_DB} "
            f"-f dump.sql > /dev/null && dropdb {PG} {FLOOR_DB}"
        )
        drill_cmd = f"{shlex.quote(CRMMAINT)} drill database:{SRC} -i inv.yml --json"
        say(f"\n(load average before: {loadavg()})")
        floors: list[Result] = []
        drills: list[Result] = []
        for _ in range(args.runs):
            floors.append(bench.run("createdb + psql -f dump.sql + dropdb (floor)", floor_cmd))
            drills.append(bench.run("crmmaint drill (whole drill)", drill_cmd))
        floor, drill = best(floors), best(drills)
        doc = json.loads(drill.stdout)
        (row,) = doc["results"]
        phases = row["details"]["phases"]
        for phase, seconds in phases.items():
            drill.extra[f"{phase} s"] = seconds
        say(
            table(
                f"restore drill ({size / 1e6:.0f} MB plain dump)", [floor, drill], floor.wall, size
            )
        )
        ratio = drill.wall / floor.wall
        met = "met" if ratio <= TARGET_DRILL else "NOT met"
        say(f"\nwhole drill / plain load: {ratio:.2f}x (target <= {TARGET_DRILL}x: {met})")
        say("drill phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
        say(f"drill result: {row['status']}: {row['message']}")
    finally:
        if args.output:
            Path(args.output).write_text("\n".join(out) + "\n")
        drop_db(FLOOR_DB)
        if args.keep:
            print(f"\nkept {work} and {SRC}")
        else:
            drop_db(SRC)
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
