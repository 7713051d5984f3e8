"""What a PostgreSQL database holds, asked of its catalog: the SQL behind a drill's facts
(tables, exact row counts, schema fingerprint, sequences) and the server figures, with the
quoting that SQL needs. Plain text and functions: the engine runs them through psql.
"""

from __future__ import annotations

import csv
import io

_USER_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'"
)

TABLES_SQL = f"""
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND {_USER_SCHEMAS} ORDER BY 1, 2
"""

# One row per schema object: kind, qualified name, canonical definition. search_path is set to
# pg_catalog first so every expression is printed fully qualified, whatever the session's path.
SCHEMA_SQL = f"""
SET search_path = pg_catalog;
SELECT 'relation', n.nspname || '.' || c.relname, c.relkind::text || ' ' || c.relpersistence::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_USER_SCHEMAS}
UNION ALL
SELECT 'column', n.nspname || '.' || c.relname || '.' || a.attname,
       concat_ws(' ', format_type(a.atttypid, a.atttypmod),
                 CASE WHEN a.attnotnull THEN 'NOT NULL' END,
                 'DEFAULT ' || pg_get_expr(d.adbin, d.adrelid),
                 NULLIF(a.attidentity, '')::text, NULLIF(a.attgenerated, '')::text,
                 'COLLATE ' || NULLIF(co.collname, 'default'),
                 '#' || rank() OVER (PARTITION BY c.oid ORDER BY a.attnum))
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  LEFT JOIN pg_collation co ON co.oid = a.attcollation
  WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
    AND {_USER_SCHEMAS}
UNION ALL
SELECT 'constraint', n.nspname || '.' || c.relname || '.' || k.conname, pg_get_constraintdef(k.oid)
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_SCHEMAS}
UNION ALL
SELECT 'index', n.nspname || '.' || c.relname, pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_SCHEMAS}
UNION ALL
SELECT 'view', n.nspname || '.' || c.relname, md5(pg_get_viewdef(c.oid))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('v', 'm') AND {_USER_SCHEMAS}
UNION ALL
SELECT 'trigger', n.nspname || '.' || c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND {_USER_SCHEMAS}
UNION ALL
SELECT 'sequence', n.nspname || '.' || c.relname,
       concat_ws(' ', format_type(s.seqtypid, NULL), s.seqincrement, s.seqmin, s.seqmax)
  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_SCHEMAS};
RESET search_path;
"""

SEQUENCES_SQL = """
SELECT schemaname || '.' || sequencename, coalesce(last_value::text, '') FROM pg_sequences
WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1
"""

FACTS_SQL = """
SELECT current_setting('server_version'), pg_database_size(current_database()),
       (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()),
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
       current_setting('max_connections'),
       extract(epoch FROM now() - pg_postmaster_start_time())::bigint,
       pg_encoding_to_char(d.encoding), d.datcollate, d.datctype
FROM pg_database d WHERE d.datname = current_database()
"""

#: How many tables one ``count(*)`` statement covers.
COUNT_BATCH = 200


def quote_ident(name: str) -> str:
    """An SQL identifier, double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """An SQL string literal (standard_conforming_strings on, the default since 9.1)."""
    return "'" + value.replace("'", "''") + "'"


def table_key(schema: str, table: str) -> str:
    """A table's name in the facts: ``schema.table``, a part double-quoted (quotes doubled)
    when it holds a ``.``, so ``a."b.c"`` and ``"a.b".c`` stay two tables; any other name is
    written as before (facts recorded by older backups keep matching)."""

    def part(name: str) -> str:
        return '"' + name.replace('"', '""') + '"' if "." in name else name

    return f"{part(schema)}.{part(table)}"


def count_sql(tables: list[tuple[str, str]]) -> str:
    """One statement counting every row of ``tables`` (schema, name), each ``ONLY`` itself."""
    parts = [
        f"SELECT {quote_literal(table_key(s, t))}, count(*) "
        f"FROM ONLY {quote_ident(s)}.{quote_ident(t)}"
        for s, t in tables
    ]
    return "\nUNION ALL ".join(parts)


def parse_csv(text: str) -> list[tuple[str, ...]]:
    """Rows of psql's ``--csv`` output, every value a string."""
    return [tuple(row) for row in csv.reader(io.StringIO(text))]
