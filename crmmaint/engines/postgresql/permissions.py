"""Who can do what in a PostgreSQL database, for ``permissions.review``: the server's roles and
their attributes and memberships; what ``PUBLIC`` (every role, present and future) may do with
the database, its schemas, its relations and their columns, and will get on objects made from
now on (default privileges); the SECURITY DEFINER functions (run with their owner's rights by
whoever may execute them); and the roles other than the database's owner that own its
relations or schemas (an owner may do anything with what it owns).

The server does the work: each query returns one JSON document per item (built with
``json_build_object`` and ordered ``json_agg``), which Python only decodes. A name holds any
character (quotes, tabs, newlines): JSON escapes it, so no separator can break a row. Lists are
sorted ``COLLATE "C"`` (code point order), as are each section's keys (in Python, which sorts
strings by code point too); dates are written in UTC: two calls on an unchanged server give
equal snapshots, in the same order.

No password hash is read: ``pg_authid.rolpassword IS NOT NULL`` is computed on the server, and
only when this session may read ``pg_authid`` (a superuser, or a role granted SELECT on it);
otherwise every role's ``password`` is ``"unknown"``. Queries run as in ``statistics.py``:
through ``PostgreSQLEngine.query`` (its session pinned, ``search_path`` ``pg_catalog,
pg_temp``), read-only, with a ``statement_timeout`` of their own.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from crmmaint.engines.base import QUERY_TIMEOUT
from crmmaint.engines.postgresql.catalog import _USER_SCHEMAS

if TYPE_CHECKING:
    from crmmaint.baselines import Snapshot
    from crmmaint.engines.postgresql.engine import PostgreSQLEngine

log = logging.getLogger(__name__)

#: Whether this session may read ``pg_authid`` (whether a role has a password).
READ_AUTHID_SQL = "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')"

_ROLE_ITEM = """
SELECT json_build_array('roles', r.rolname, json_build_object(
         'superuser', r.rolsuper, 'createrole', r.rolcreaterole, 'createdb', r.rolcreatedb,
         'bypassrls', r.rolbypassrls, 'replication', r.rolreplication, 'login', r.rolcanlogin,
         'password', {password},
         'valid_until', CASE
             WHEN r.rolvaliduntil IS NULL OR r.rolvaliduntil = 'infinity' THEN NULL
             WHEN r.rolvaliduntil = '-infinity' THEN '-infinity'
             ELSE to_char(r.rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') END,
         'member_of', coalesce((
             SELECT json_agg(DISTINCT g.rolname COLLATE "C" ORDER BY g.rolname COLLATE "C")
             FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
             WHERE m.member = r.oid), '[]'::json)))
FROM {source} r
WHERE r.rolname NOT LIKE 'pg\\_%'
"""


def roles_sql(read_authid: bool) -> str:
    """One row per role (the built-in ``pg_*`` ones left out): ``["roles", name, attributes]``.
    ``read_authid``: whether the session may read ``pg_authid`` (else ``password`` is
    ``"unknown"``; ``pg_roles`` shows every password as ``********``)."""
    if read_authid:
        # Only the test leaves the server: the hash itself is never selected.
        password = "CASE WHEN r.rolpassword IS NOT NULL THEN 'set' ELSE 'none' END"
        return _ROLE_ITEM.format(password=password, source="pg_authid")
    return _ROLE_ITEM.format(password="'unknown'", source="pg_roles")


#: The relation kinds a grant on a relation can name, as the snapshot calls them.
_KINDS = (
    "CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table' "
    "WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' "
    "WHEN 'f' THEN 'foreign table' END"
)

#: Relations outside the system schemas on which PUBLIC (grantee 0) holds a privilege on the
#: relation or on one of its columns; a NULL ACL is the owner-only default (``acldefault``),
#: which grants PUBLIC nothing, and a NULL column ACL grants nothing beyond the relation's.
PUBLIC_GRANTS_SQL = f"""
SELECT json_build_array('public_grants', quote_ident(n.nspname) || '.' || quote_ident(c.relname),
         json_build_object(
           'kind', {_KINDS},
           'privileges', coalesce(t.privileges, '[]'::json),
           'columns', coalesce(col.columns, '[]'::json)))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
    SELECT json_agg(DISTINCT a.privilege_type ORDER BY a.privilege_type) AS privileges
    FROM aclexplode(coalesce(c.relacl, acldefault(
        CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) a
    WHERE a.grantee = 0) t ON true
LEFT JOIN LATERAL (
    SELECT json_agg(DISTINCT (quote_ident(att.attname) || ':' || a.privilege_type) COLLATE "C"
                    ORDER BY (quote_ident(att.attname) || ':' || a.privilege_type) COLLATE "C")
             AS columns
    FROM pg_attribute att CROSS JOIN LATERAL aclexplode(att.attacl) a
    WHERE att.attrelid = c.oid AND att.attnum > 0 AND NOT att.attisdropped
      AND a.grantee = 0) col ON true
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_USER_SCHEMAS}
  AND (t.privileges IS NOT NULL OR col.columns IS NOT NULL)
"""

#: What ``pg_default_acl.defaclobjtype`` applies to, as the snapshot calls it (``ALTER DEFAULT
#: PRIVILEGES … ON TABLES``), and the ``acldefault`` code of that kind of object.
_DEFAULT_OBJECTS = (
    "CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' "
    "WHEN 'f' THEN 'functions' WHEN 'T' THEN 'types' WHEN 'n' THEN 'schemas' "
    "WHEN 'L' THEN 'large objects' ELSE d.defaclobjtype::text END"
)
_DEFAULT_CODE = (
    "CASE d.defaclobjtype WHEN 'S' THEN 's' WHEN 'L' THEN 'L' ELSE d.defaclobjtype END::\"char\""
)

#: Default privileges (``ALTER DEFAULT PRIVILEGES``) of this database that change what PUBLIC
#: gets on objects made from now on: an entry for all schemas replaces the built-in default
#: (``acldefault``: EXECUTE on functions, USAGE on types), an entry for one schema adds to it.
#: So an entry is reported when PUBLIC's privileges in it differ from the built-in default
#: (all schemas) or are not empty (one schema); a revoked built-in default shows as ``[]``.
DEFAULT_GRANTS_SQL = f"""
SELECT json_build_array('default_grants',
         quote_ident(r.rolname) || ' ' || coalesce(quote_ident(n.nspname), '*') || ' '
           || {_DEFAULT_OBJECTS},
         json_build_object(
           'role', r.rolname, 'schema', n.nspname, 'objects', {_DEFAULT_OBJECTS},
           'privileges', coalesce(p.privileges, '[]'::json)))
FROM pg_default_acl d
JOIN pg_roles r ON r.oid = d.defaclrole
LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
LEFT JOIN LATERAL (
    SELECT json_agg(DISTINCT a.privilege_type ORDER BY a.privilege_type) AS privileges,
           array_agg(DISTINCT a.privilege_type ORDER BY a.privilege_type) AS list
    FROM aclexplode(d.defaclacl) a WHERE a.grantee = 0) p ON true
LEFT JOIN LATERAL (
    SELECT array_agg(DISTINCT a.privilege_type ORDER BY a.privilege_type) AS list
    FROM aclexplode(acldefault({_DEFAULT_CODE}, d.defaclrole)) a
    WHERE a.grantee = 0 AND d.defaclnamespace = 0) b ON true
WHERE p.list IS DISTINCT FROM b.list
"""

#: SECURITY DEFINER functions and procedures outside the system schemas: they run with their
#: owner's rights whoever calls them (EXECUTE to PUBLIC is the built-in default).
DEFINER_FUNCTIONS_SQL = f"""
SELECT json_build_array('definer_functions',
         quote_ident(n.nspname) || '.' || quote_ident(p.proname)
           || '(' || pg_get_function_identity_arguments(p.oid) || ')',
         json_build_object(
           'owner', o.rolname,
           'public_execute', EXISTS (
               SELECT FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
               WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'),
           'search_path', (
               SELECT substr(s, length('search_path=') + 1) FROM unnest(p.proconfig) s
               WHERE s LIKE 'search\\_path=%' LIMIT 1)))
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_roles o ON o.oid = p.proowner
WHERE p.prosecdef AND {_USER_SCHEMAS}
"""

#: Roles other than this database's owner that own a relation or a schema (outside the system
#: schemas) of it; ``pg_database_owner`` (the owner of ``public`` since PostgreSQL 15) stands
#: for the database's owner and is left out too.
OWNERS_SQL = f"""
WITH owned AS (
    SELECT c.relowner AS owner, n.nspname AS schema, 'relation' AS what
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_USER_SCHEMAS}
    UNION
    SELECT n.nspowner, n.nspname, 'schema' FROM pg_namespace n
    WHERE {_USER_SCHEMAS} AND n.nspname <> 'pg_temp')
SELECT json_build_array('owners', r.rolname, json_build_object(
         'relations_in', coalesce(json_agg(DISTINCT o.schema COLLATE "C"
             ORDER BY o.schema COLLATE "C") FILTER (WHERE o.what = 'relation'), '[]'::json),
         'schemas', coalesce(json_agg(DISTINCT o.schema COLLATE "C"
             ORDER BY o.schema COLLATE "C") FILTER (WHERE o.what = 'schema'), '[]'::json)))
FROM owned o JOIN pg_roles r ON r.oid = o.owner
WHERE r.oid <> (SELECT datdba FROM pg_database WHERE datname = current_database())
  AND r.rolname <> 'pg_database_owner'
GROUP BY r.rolname
"""

#: Schemas outside the system ones on which PUBLIC holds a privilege (on PostgreSQL < 15 the
#: default ACL of ``public`` grants PUBLIC USAGE and CREATE).
SCHEMA_GRANTS_SQL = f"""
SELECT json_build_array('schema_grants', n.nspname, json_build_object(
         'privileges', json_agg(DISTINCT a.privilege_type ORDER BY a.privilege_type)))
FROM pg_namespace n
CROSS JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
WHERE {_USER_SCHEMAS} AND n.nspname <> 'pg_temp' AND a.grantee = 0
GROUP BY n.nspname
"""

#: This database, with what PUBLIC may do with it (an empty list: nothing).
DATABASE_GRANTS_SQL = """
SELECT json_build_array('database_grants', d.datname, json_build_object(
         'privileges', coalesce((
             SELECT json_agg(DISTINCT a.privilege_type ORDER BY a.privilege_type)
             FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
             WHERE a.grantee = 0), '[]'::json)))
FROM pg_database d WHERE d.datname = current_database()
"""

#: The sections of a snapshot, each present (perhaps empty) in every one.
SECTIONS = (
    "roles",
    "public_grants",
    "schema_grants",
    "database_grants",
    "default_grants",
    "definer_functions",
    "owners",
)


def postgresql_permissions(engine: PostgreSQLEngine, *, timeout: float) -> Snapshot:
    """The permissions snapshot of ``engine``'s database (``crmmaint.baselines.Snapshot``):

    - ``roles``: every role of the server but the built-in ``pg_*`` ones, by name:
      ``superuser``, ``createrole``, ``createdb``, ``bypassrls``, ``replication``, ``login``
      (bools); ``password`` ``"set"``/``"none"``, or ``"unknown"`` when this session may not
      read ``pg_authid`` (not a superuser); ``valid_until`` (``"2030-01-01T00:00:00Z"``, in
      UTC; ``None``: never expires; ``"-infinity"``: never valid); ``member_of``: the roles
      it is a direct member of, ``pg_*`` ones included, sorted.
    - ``public_grants``: relations (outside ``pg_catalog``, ``information_schema`` and the
      toast and temporary schemas) on which PUBLIC holds a privilege, on the relation or on
      one of its columns, by ``schema.relation`` (each part as the server's ``quote_ident``
      writes it: quoted only when it must be): ``kind`` (``table``, ``view``, ``sequence``
      …), ``privileges`` (on the relation, sorted, perhaps empty) and ``columns`` (sorted
      ``column:PRIVILEGE`` entries, the column as ``quote_ident`` writes it:
      ``["name:SELECT", "\\"e:mail\\":SELECT"]``; ``[]``: no column-level grant to PUBLIC).
    - ``schema_grants``: such schemas on which PUBLIC holds a privilege, by name:
      ``privileges`` (sorted; ``["CREATE", "USAGE"]`` for ``public`` on PostgreSQL < 15).
    - ``database_grants``: this database, by name: PUBLIC's ``privileges`` on it (sorted,
      perhaps empty; ``["CONNECT", "TEMPORARY"]`` by default).
    - ``default_grants``: this database's default privileges (``ALTER DEFAULT PRIVILEGES [FOR
      ROLE r] [IN SCHEMA s] …``) that change what PUBLIC gets on objects made from now on,
      by ``role schema objects`` (role and schema as ``quote_ident`` writes them, ``*`` for
      all schemas; ``objects``: ``tables``, ``sequences``, ``functions``, ``types``,
      ``schemas``): ``role``, ``schema`` (``None``: all schemas), ``objects`` and
      ``privileges`` (what the entry gives PUBLIC, sorted). An entry for all schemas is
      listed when it differs from the built-in default (which gives PUBLIC EXECUTE on
      functions and USAGE on types): ``privileges`` ``[]`` there is a revoked default. An
      entry for one schema adds to that, so it is listed when it gives PUBLIC something.
    - ``definer_functions``: SECURITY DEFINER functions and procedures (outside the system
      schemas), by ``schema.name(arguments)`` (``pg_get_function_identity_arguments``:
      ``public.f(a integer, b text)``): ``owner`` (whose rights it runs with),
      ``public_execute`` (whether PUBLIC may call it: the built-in default unless revoked)
      and ``search_path`` (the one pinned with ``SET search_path``, ``None``: the caller's,
      which the caller may fill with objects of its own).
    - ``owners``: the roles other than the database's owner that own a relation or a schema
      (outside the system schemas) of this database, by name: ``relations_in`` (the schemas
      in which it owns a relation, sorted) and ``schemas`` (the schemas it owns, sorted).
      Kept coarse on purpose, so that making or dropping a table is no change: a new owner,
      or an owner in a new schema, is; a relation moving between two roles already listed
      in its schema is not.

    Built-in default privileges (a NULL ACL) count as what they grant. Each query may take
    ``timeout`` seconds. Raises ``EngineError`` (naming database and host) when psql fails,
    the server refuses, or a query outlives its timeout.
    """
    (row,) = _ask(engine, READ_AUTHID_SQL, timeout)
    read_authid = row[0] == "t"
    if not read_authid:
        log.info("%s: may not read pg_authid: role passwords reported unknown", engine.where)
    queries = [
        roles_sql(read_authid),
        PUBLIC_GRANTS_SQL,
        SCHEMA_GRANTS_SQL,
        DATABASE_GRANTS_SQL,
        DEFAULT_GRANTS_SQL,
        DEFINER_FUNCTIONS_SQL,
        OWNERS_SQL,
    ]
    sql = ";\n".join(queries)
    snapshot: Snapshot = {section: {} for section in SECTIONS}
    for (document,) in _ask(engine, sql, timeout):
        section, key, attributes = json.loads(document)
        snapshot[section][key] = attributes
    return {section: dict(sorted(items.items())) for section, items in snapshot.items()}


def _ask(engine: PostgreSQLEngine, sql: str, timeout: float) -> list[tuple[str, ...]]:
    """Rows of ``sql`` in a read-only session whose ``statement_timeout`` is ``timeout``
    (as ``PgStatistics.ask``)."""
    guard = (
        f"SET statement_timeout = {max(1, int(timeout * 1000))};\n"
        "SET lock_timeout = 5000;\nSET default_transaction_read_only = on;\n"
    )
    return engine.query(guard + sql, timeout=min(timeout + 10, QUERY_TIMEOUT))
