"""PostgreSQL: backups with pg_dump, restores with psql, facts from the catalog.

- ``engine.py``: ``PostgreSQLEngine``, what the rest of crmmaint talks to: queries, facts,
  dump, restore (one stream, or tables on several connections) and drop;
- ``script.py``: reading a psql script (pg_dump's plain format) the way psql does, and the
  filter a restore feeds it through, since a backup is untrusted input;
- ``sections.py``: where things lie in a plain dump: the ``COPY`` blocks of table data
  (recorded at backup time) and the post-data section (indexes, constraints) split off at
  restore time so it can be built in parallel;
- ``load.py``: loading one dump on several connections: which tables each loads, feeding them,
  handing out index builds as tables finish, cancelling all when one fails.
"""

from __future__ import annotations

from crmmaint.engines.postgresql.engine import (
    LOAD_ROLE_PREFIX,
    LOAD_ROLE_VALID,
    CopyRowCounter,
    LoadRole,
    PostgreSQLEngine,
)

__all__ = ["LOAD_ROLE_PREFIX", "LOAD_ROLE_VALID", "CopyRowCounter", "LoadRole", "PostgreSQLEngine"]
