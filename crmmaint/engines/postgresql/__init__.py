"""PostgreSQL: backups with pg_dump, restores with psql, facts from the catalog.

- ``engine.py``: ``PostgreSQLEngine``, what the rest of crmmaint talks to: queries, facts,
  dump, restore (one stream, or tables on several connections) and drop;
- ``catalog.py``: the SQL a drill's facts come from (tables, row counts, schema fingerprint,
  sequences) and quoting;
- ``roles.py``: the throwaway role a least-privilege restore loads with (``LoadRole``);
- ``script.py``: reading a psql script (pg_dump's plain format) the way psql does, and the
  filter a restore feeds it through, since a backup is untrusted input;
- ``sections.py``: where things lie in a plain dump: the ``COPY`` blocks of table data
  (counted and recorded as a backup streams, ``CopyRowCounter``) and the post-data section
  (indexes, constraints) split off as a restore streams, to be built in parallel;
- ``load.py``: loading one dump on several connections: which tables each loads, feeding them,
  handing out index builds as tables finish, cancelling all when one fails.
"""

from __future__ import annotations

from crmmaint.engines.postgresql.engine import PostgreSQLEngine
from crmmaint.engines.postgresql.roles import LOAD_ROLE_PREFIX, LOAD_ROLE_VALID, LoadRole
from crmmaint.engines.postgresql.sections import CopyRowCounter

__all__ = ["LOAD_ROLE_PREFIX", "LOAD_ROLE_VALID", "CopyRowCounter", "LoadRole", "PostgreSQLEngine"]
