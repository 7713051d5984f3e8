"""Valid schemas whose dump text looks like something else: a column or table name with a
newline, function and procedure bodies holding lines that read as a COPY header, a data block
or an INSERT, comments on objects with the same. `pg_dump | psql` and `mariadb-dump | mariadb`
round-trip each; so must crmmaint: backup, restore (every --jobs path), identical rows and
schema, and a drill that passes. Run through the installed CLI against the real servers."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from clirun import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PG = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-At"]
MY = ["mariadb", "--protocol=TCP", "-h127.0.0.1", "-uroot", "-N", "--batch"]


def sql(engine: str, text: str, db: str | None = None) -> str:
    command = (
        [*PG, "-d", db or "postgres"] if engine == "postgresql" else [*MY, *([db] if db else [])]
    )
    done = subprocess.run(command, input=text, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


#: The issue's four inputs (and their kin), as SQL per engine.
PG_CASES = {
    "column with a newline": (
        'CREATE TABLE x (id int PRIMARY KEY, "col\nwith newline" int);'
        "INSERT INTO x SELECT generate_series(1, 5);"
    ),
    "function body with a fake COPY block": (
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;"
        "CREATE FUNCTION fake_dump() RETURNS text LANGUAGE sql AS $body$ SELECT '\n"
        "COPY public.t (id, v) FROM stdin;\n1\tfake\n\\.\n'::text $body$;"
    ),
    "comment and constraint with fake headers": (
        "CREATE TABLE h (id int PRIMARY KEY, v text CHECK (v <> '\n-- Name: h_idx; Type: INDEX; "
        "Schema: public; Owner: -\n'));"
        "INSERT INTO h SELECT g, 'x' FROM generate_series(1, 20) g;"
        "CREATE INDEX h_v ON h (v);"
        "COMMENT ON TABLE h IS E'\\n-- Data for Name: h; Type: TABLE DATA;\\nCOPY public.h (id) "
        "FROM stdin;\\n';"
    ),
    "schema and table names that join to the same dotted name": (
        'CREATE SCHEMA a; CREATE TABLE a."b.c" (id int); INSERT INTO a."b.c" VALUES (1);'
        'CREATE SCHEMA "a.b"; CREATE TABLE "a.b".c (id int);'
        'INSERT INTO "a.b".c VALUES (1), (2), (3), (4), (5);'
    ),
    "quoted table name with a newline and a tab": (
        'CREATE TABLE "new\nline\tname" (id int PRIMARY KEY);'
        'INSERT INTO "new\nline\tname" SELECT generate_series(1, 7);'
        'CREATE INDEX ON "new\nline\tname" (id);'
    ),
}
MY_CASES = {
    "procedure body with an INSERT line": [
        "CREATE TABLE audit (id int, note text)",
        "INSERT INTO audit VALUES (1, 'first')",
        "CREATE PROCEDURE reset_audit() BEGIN\n"
        "INSERT INTO `audit` VALUES (1,'reset'),(2,'again');\nEND",
    ],
    "table name with a newline": [
        "CREATE TABLE `new\nline` (id INT)",
        "INSERT INTO `new\nline` VALUES (1),(2),(3),(4)",
    ],
    "routine lines that read as client commands": [
        "CREATE TABLE leads (id int PRIMARY KEY, status text, source text)",
        "INSERT INTO leads VALUES (1, 'open', 'web')",
        "CREATE PROCEDURE close_leads() BEGIN\nUPDATE leads SET\nstatus = 'closed',\n"
        "source = 'x'\nWHERE id > 0;\nEND",
    ],
    "a system-versioned table": [
        "CREATE TABLE sv (id int PRIMARY KEY, v int) WITH SYSTEM VERSIONING",
        "INSERT INTO sv VALUES (1, 1), (2, 2), (3, 3)",
        "UPDATE sv SET v = v + 1",
        "DELETE FROM sv WHERE id = 3",
    ],
    "a table with an invisible column": [
        "CREATE TABLE inv (a int PRIMARY KEY, b int INVISIBLE)",
        "INSERT INTO inv (a, b) VALUES (1, 2), (2, 3)",
    ],
    "routines made under NO_BACKSLASH_ESCAPES": [
        "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')",
        "CREATE TABLE a (id int PRIMARY KEY, x text)",
        "INSERT INTO a VALUES (1, 'one')",
        "CREATE TABLE b (id int PRIMARY KEY, y int)",
        "INSERT INTO b VALUES (1, 1), (2, 2), (3, 3)",
        "CREATE TABLE z (id int PRIMARY KEY, x text)",
        "INSERT INTO z VALUES (1, 'z')",
        "CREATE PROCEDURE p() SELECT 'a\\', 'b\\'",
        "CREATE TRIGGER a_t BEFORE INSERT ON a FOR EACH ROW SET NEW.x = 'path\\'",
        "CREATE TRIGGER z_t BEFORE INSERT ON z FOR EACH ROW SET NEW.x = "
        "CONCAT('p\\', ';;\nINSERT INTO `b` VALUES (7),(8),(9);;\n"
        "CREATE DEFINER=`bob`@`h` PROCEDURE x;;\n')",
    ],
    "trigger and view holding statement text": [
        "CREATE TABLE m (id int PRIMARY KEY, v text)",
        "INSERT INTO m VALUES (1, 'a;\nINSERT INTO `m` VALUES (9,''x'');'), (2, 'b')",
        "CREATE TRIGGER m_ins BEFORE INSERT ON m FOR EACH ROW "
        "SET NEW.v = 'INSERT INTO `m` VALUES (3);'",
        "CREATE VIEW m_view AS SELECT id, 'CREATE TABLE `zz` (' AS fake FROM m",
    ],
}


def my_script(statements: list[str]) -> str:
    """Routines hold ';': the statements are separated by another delimiter."""
    return "DELIMITER //\n" + "".join(f"{s}//\n" for s in statements) + "DELIMITER ;\n"


def build(engine: str, name: str, schema: str) -> None:
    if engine == "postgresql":
        sql(engine, f'CREATE DATABASE "{name}"')
        sql(engine, schema, name)
    else:
        sql(engine, f"CREATE DATABASE `{name}`")
        sql(engine, schema, name)


def drop(engine: str, name: str) -> None:
    if engine == "postgresql":
        sql(engine, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        sql(engine, f"DROP DATABASE IF EXISTS `{name}`")


def contents(engine: str, db: str) -> dict[str, str]:
    """Every table's rows (as text, in order) and the schema objects' text, as the server
    describes them (names of any shape are listed hex-encoded)."""
    out = {}
    if engine == "postgresql":
        listed = sql(engine, "SELECT encode(convert_to(quote_ident(relname), 'UTF8'), 'hex') "
                     "FROM pg_class WHERE relkind = 'r' "
                     "AND relnamespace = 'public'::regnamespace ORDER BY 1", db)  # fmt: skip
        for table in (bytes.fromhex(h).decode() for h in listed.split()):
            out[table] = sql(engine, f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY "
                             f"t::text), '')) FROM public.{table} t", db)  # fmt: skip
        for what, query in {
            "functions": "SELECT string_agg(pg_get_functiondef(oid), '' ORDER BY proname) FROM "
            "pg_proc WHERE pronamespace = 'public'::regnamespace",
            "comments": "SELECT string_agg(description, '' ORDER BY description) FROM "
            "pg_description d JOIN pg_class c ON c.oid = d.objoid "
            "WHERE c.relnamespace = 'public'::regnamespace",
            "constraints": "SELECT string_agg(pg_get_constraintdef(oid), ',' ORDER BY conname) "
            "FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
            "indexes": "SELECT string_agg(indexdef, ',' ORDER BY indexname) FROM pg_indexes "
            "WHERE schemaname = 'public'",
        }.items():
            out[what] = sql(engine, query, db)
        return out
    listed = sql(engine, "SELECT HEX(table_name) FROM information_schema.tables WHERE "
                 "table_schema = DATABASE() AND table_type IN ('BASE TABLE', 'SYSTEM VERSIONED') "
                 "ORDER BY 1", db)  # fmt: skip
    for table in (bytes.fromhex(h).decode() for h in listed.split()):
        ident = "`" + table.replace("`", "``") + "`"
        out[table] = sql(engine, f"SELECT * FROM {ident} ORDER BY 1", db)
    for what, query in {
        "routines": "SELECT group_concat(routine_definition ORDER BY routine_name) FROM "
        "information_schema.routines WHERE routine_schema = DATABASE()",
        "triggers": "SELECT group_concat(action_statement ORDER BY trigger_name) FROM "
        "information_schema.triggers WHERE trigger_schema = DATABASE()",
        "views": "SELECT group_concat(view_definition ORDER BY table_name) FROM "
        "information_schema.views WHERE table_schema = DATABASE()",
    }.items():
        out[what] = sql(engine, query, db).replace(f"`{db}`.", "")
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """One identity, journal and repository per engine for the whole module (each case backs up
    its own database as its own source): the cases test dumps and loads, not repository setup."""
    root = tmp_path_factory.mktemp("shapes")
    keys = root / "keys"
    keys.mkdir()
    made = run_cli("keys", "generate", "--output", str(keys / "ops.key"))
    assert made.returncode == 0, made.stderr
    (keys / "ops.pub").write_text(made.stdout.strip() + "\n")
    return root


def inventory(root: Path, engine: str, name: str) -> Path:
    """An inventory with database ``name`` as its main database and the engine's repository
    (initialised by the first case that uses it)."""
    keys = root / "keys"
    path = root / f"inventory-{name}.yml"
    path.write_text(yaml.safe_dump({
        "settings": {"journal": str(root / "journal.sqlite")},
        "hosts": {"local": {"connection": "local"}},
        "databases": {name: {"engine": engine, "host": "local", "name": name,
                             "address": "127.0.0.1", "main": True,
                             "user": "postgres" if engine == "postgresql" else "root"}},
        "repositories": {"main": {"url": str(root / f"repo-{engine}"),
                                  "write_key": str(keys / f"write-{engine}.key"),
                                  "recipients": [f"file:{keys / 'ops.pub'}"],
                                  "identity": str(keys / "ops.key")}},
    }))  # fmt: skip
    if not (root / f"repo-{engine}").exists():
        done = run_cli("repo", "init", "-i", str(path))
        assert done.returncode == 0, done.stderr
    return path


def round_trip(root: Path, engine: str, schema: str, *, jobs: tuple[int, ...]) -> None:
    """Backup, restore with each of ``jobs`` (PostgreSQL; MariaDB loads one stream), compare,
    drill."""
    name = f"crmshape_{uuid.uuid4().hex[:8]}"
    build(engine, name, schema)
    copies = []
    try:
        inv = inventory(root, engine, name)
        done = run_cli("backup", "-i", str(inv))
        assert done.returncode == 0, done.stdout + done.stderr
        expected = contents(engine, name)
        for n in jobs if engine == "postgresql" else (2,):
            copy = f"{name}_j{n}"
            copies.append(copy)
            done = run_cli("restore", f"database:{name}@latest", "--to", copy, "--jobs", str(n),
                           "-i", str(inv))  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            assert contents(engine, copy) == expected, f"--jobs {n}"
        book = root / "drill.yml"
        book.write_text(yaml.safe_dump({"name": "drill", "steps": [
            {"name": "drill", "task": "drill.restore", "database": "main"}]}))  # fmt: skip
        drilled = run_cli("run", str(book), "-i", str(inv))
        assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    finally:
        for db in [name, *copies]:
            drop(engine, db)


@pytest.mark.parametrize("case", sorted(PG_CASES))
def test_postgresql_dump_structure_round_trips(workspace, case):
    # --jobs 1 (one connection) and 4 (big tables split); the drill restores with the default 2.
    round_trip(workspace, "postgresql", PG_CASES[case], jobs=(1, 4))


@pytest.mark.parametrize("case", sorted(MY_CASES))
def test_mariadb_dump_structure_round_trips(workspace, case):
    round_trip(workspace, "mysql", my_script(MY_CASES[case]), jobs=(1,))


# --- the kind: schemas built from hostile pieces ---------------------------------------------

DUMPISH = [
    "\nCOPY public.t (id, v) FROM stdin;\n1\tfake\n\\.\n",
    "\n-- Name: t_idx; Type: INDEX; Schema: public; Owner: -\n",
    "\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: -\n",
    "\n\\restrict abc123\n",
    "\n\\unrestrict abc123\n",
    "\nALTER TABLE public.t OWNER TO postgres;\n",
    "\nINSERT INTO `t` VALUES (1,'x'),(2,'y');\n",
    "\nCREATE TABLE `t` (\n",
    "\nDELIMITER ;;\n",
    "\nstatus\n",
    "\n/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/\n",
    "\n\\.\n",
    ";",
    "'",
    '"',
    "$$",
]
ident = st.text(alphabet="abXY_é€\n\t \"';$-", min_size=1, max_size=8)
dumpish = st.lists(st.sampled_from(DUMPISH), min_size=1, max_size=3).map("".join)
value = st.one_of(dumpish, st.text(alphabet="ab\n\t\\.;'\"$é", max_size=12))


def pg_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def pg_ident(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


@st.composite
def pg_schemas(draw) -> str:
    table, first, second = draw(st.lists(ident, min_size=3, max_size=3, unique=True))
    rows = draw(st.lists(value, max_size=3))
    body = draw(dumpish)
    t, a, b = pg_ident(table), pg_ident(first), pg_ident(second)
    statements = [
        f"CREATE TABLE public.{t} ({a} int PRIMARY KEY, {b} text CHECK ({b} <> {pg_literal(body)} OR true))",
        *(f"INSERT INTO public.{t} VALUES ({i}, {pg_literal(v)})" for i, v in enumerate(rows)),
        f"CREATE INDEX ON public.{t} ({b})",
        f"COMMENT ON TABLE public.{t} IS {pg_literal(draw(dumpish))}",
        "CREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $fn$ SELECT "
        f"{pg_literal(body.replace('$fn$', ''))}::text $fn$",
        f"CREATE VIEW public.v AS SELECT {a}, {pg_literal(draw(dumpish))} AS fake_col FROM public.{t}",
    ]
    return ";\n".join(statements) + ";\n"


def my_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def my_ident(text: str) -> str:
    return "`" + text.replace("`", "``") + "`"


my_name = ident.map(lambda t: t.strip() or "x").filter(lambda t: not t.endswith(" "))


@st.composite
def my_schemas(draw) -> list[str]:
    table, first, second = draw(st.lists(my_name, min_size=3, max_size=3, unique_by=str.lower))
    rows = draw(st.lists(value, max_size=3))
    t, a, b = my_ident(table), my_ident(first), my_ident(second)
    line = draw(dumpish).replace("\n", " ")
    return [
        f"CREATE TABLE {t} ({a} int PRIMARY KEY, {b} text)",
        *(f"INSERT INTO {t} VALUES ({i}, {my_literal(v)})" for i, v in enumerate(rows)),
        f"CREATE PROCEDURE p() BEGIN\n-- {line}\nSELECT {my_literal(draw(dumpish))} INTO @x;\n"
        f"UPDATE {t} SET\n{b} = {b}\nWHERE {a} < 0;\nEND",
        f"CREATE TRIGGER trg BEFORE INSERT ON {t} FOR EACH ROW SET NEW.{b} = "
        f"concat({my_literal(draw(dumpish))}, NEW.{b})",
        f"CREATE VIEW v AS SELECT {a}, {my_literal(draw(dumpish))} AS fake_col FROM {t}",
    ]


_SLOW = settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SLOW
@given(schema=pg_schemas())
def test_postgresql_hostile_schemas_round_trip(workspace, schema):
    round_trip(workspace, "postgresql", schema, jobs=(4,))  # and the drill's default 2


@_SLOW
@given(schema=my_schemas())
def test_mariadb_hostile_schemas_round_trip(workspace, schema):
    round_trip(workspace, "mysql", my_script(schema), jobs=(1,))
