"""Engine adapters: all engine-specific SQL and client-tool knowledge lives here.

``engine_for(db, transport)`` picks the adapter for an inventory database; ``RedisCache`` and
``FileSetSource`` cover caches and file sets. See docs/engines.md.
"""

from __future__ import annotations

from crmmaint.engines.base import DatabaseEngine, DumpStream, Facts, compare_facts, schema_digest
from crmmaint.errors import EngineError, RestoreTargetExists
from crmmaint.inventory import Database
from crmmaint.transport.base import Transport


def engine_for(db: Database, transport: Transport) -> DatabaseEngine:
    """The adapter for ``db``'s engine, speaking through the transport of its host."""
    if db.engine == "postgresql":
        from crmmaint.engines.postgresql import PostgreSQLEngine

        return PostgreSQLEngine(db, transport)
    if db.engine == "mysql":
        from crmmaint.engines.mysql import MySQLEngine

        return MySQLEngine(db, transport)
    if db.engine == "sqlite":
        from crmmaint.engines.sqlite import SQLiteEngine

        return SQLiteEngine(db, transport)
    raise EngineError(
        f"database {db.name!r}: no engine adapter for {db.engine!r}",
        hint="supported: postgresql, mysql, sqlite",
    )


__all__ = [
    "DatabaseEngine",
    "DumpStream",
    "Facts",
    "RestoreTargetExists",
    "compare_facts",
    "engine_for",
    "schema_digest",
]
