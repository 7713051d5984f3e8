"""Who can do what in a PostgreSQL database, for ``permissions.review``: the server's roles and
their attributes and memberships, and what ``PUBLIC`` (every role, present and future) may do
with the database, its schemas and its relations.

The server does the work: each query returns one JSON document per item (built with
``json_build_object`` and ordered ``json_agg``), which Python only decodes. A name holds any
character (quotes, tabs, newlines): JSON escapes it, so no separator can break a row. Lists are
sorted ``COLLATE "C"`` (code point order), dates are written in UTC: two calls on an unchanged
server give equal snapshots.

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

#: Relations outside the system schemas on which PUBLIC (grantee 0) holds a privilege; a NULL
#: ACL is the owner-only default (``acldefault``), which grants PUBLIC nothing.
PUBLIC_GRANTS_SQL = f"""
SELECT json_build_array('public_grants', quote_ident(n.nspname) || '.' || quote_ident(c.relname),
         json_build_object(
           'kind', {_KINDS},
           'privileges', json_agg(DISTINCT a.privilege_type ORDER BY a.privilege_type)))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL aclexplode(coalesce(
    c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) a
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_USER_SCHEMAS} AND a.grantee = 0
GROUP BY n.nspname, c.relname, c.relkind
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
SECTIONS = ("roles", "public_grants", "schema_grants", "database_grants")


def postgresql_permissions(engine: PostgreSQLEngine, *, timeout: float) -> Snapshot:
    """The permissions snapshot of ``engine``'s database (``crmmaint.baselines.Snapshot``):

    - ``roles``: every role of the server but the built-in ``pg_*`` ones, by name:
      ``superuser``, ``createrole``, ``createdb``, ``bypassrls``, ``replication``, ``login``
      (bools); ``password`` ``"set"``/``"none"``, or ``"unknown"`` when this session may not
      read ``pg_authid`` (not a superuser); ``valid_until`` (``"2030-01-01T00:00:00Z"``, in
      UTC; ``None``: never expires; ``"-infinity"``: never valid); ``member_of``: the roles
      it is a direct member of, ``pg_*`` ones included, sorted.
    - ``public_grants``: relations (outside ``pg_catalog``, ``information_schema`` and the
      toast and temporary schemas) on which PUBLIC holds a privilege, by ``schema.relation``
      (each part as the server's ``quote_ident`` writes it: quoted only when it must be):
      ``kind`` (``table``, ``view``, ``sequence`` …) and ``privileges`` (sorted).
    - ``schema_grants``: such schemas on which PUBLIC holds a privilege, by name:
      ``privileges`` (sorted; ``["CREATE", "USAGE"]`` for ``public`` on PostgreSQL < 15).
    - ``database_grants``: this database, by name: PUBLIC's ``privileges`` on it (sorted,
      perhaps empty; ``["CONNECT", "TEMPORARY"]`` by default).

    Default privileges (a NULL ACL) count as what they grant. Each query may take ``timeout``
    seconds. Raises ``EngineError`` (naming database and host) when psql fails, the server
    refuses, or a query outlives its timeout.
    """
    (row,) = _ask(engine, READ_AUTHID_SQL, timeout)
    read_authid = row[0] == "t"
    if not read_authid:
        log.info("%s: may not read pg_authid: role passwords reported unknown", engine.where)
    sql = ";\n".join(
        [roles_sql(read_authid), PUBLIC_GRANTS_SQL, SCHEMA_GRANTS_SQL, DATABASE_GRANTS_SQL]
    )
    snapshot: Snapshot = {section: {} for section in SECTIONS}
    for (document,) in _ask(engine, sql, timeout):
        section, key, attributes = json.loads(document)
        snapshot[section][key] = attributes
    return snapshot


def _ask(engine: PostgreSQLEngine, sql: str, timeout: float) -> list[tuple[str, ...]]:
    """Rows of ``sql`` in a read-only session whose ``statement_timeout`` is ``timeout``
    (as ``PgStatistics.ask``)."""
    guard = (
        f"SET statement_timeout = {max(1, int(timeout * 1000))};\n"
        "SET lock_timeout = 5000;\nSET default_transaction_read_only = on;\n"
    )
    return engine.query(guard + sql, timeout=min(timeout + 10, QUERY_TIMEOUT))
