"""The inventory: the CRM estate as data (hosts, databases, caches, file sets, repositories).

Loaded from YAML and validated completely before anything runs; every error names the file,
line and field. Secrets are never inline: a password or passphrase is a *source* (``env:NAME``,
``file:/path`` or ``cmd:command``) resolved only when a task needs it. See docs/inventory.md.

``model`` holds the dataclasses and their lookups, ``load`` reads and validates the YAML (with
``fields``, the readers every section shares), ``cache_clearing`` the checks of what
``cache.clear`` may remove. The names other modules use are re-exported here.
"""

from crmmaint.inventory.cache_clearing import (
    cache_directory_problem,
    endpoint_problem,
    file_glob_problem,
    key_pattern_problem,
    normalise_directory,
    parse_redis_url,
    redis_url_problem,
)
from crmmaint.inventory.fields import MAX_CONNECT_TIMEOUT, _check_name
from crmmaint.inventory.load import load_inventory
from crmmaint.inventory.model import (
    CONNECTIONS,
    DEFAULT_LOCK_WAIT,
    ENDPOINT_METHODS,
    ENGINES,
    FLUSH_SCOPES,
    MAX_LOCK_WAIT,
    RESTORE_PRIVILEGES,
    SECRET_PREFIXES,
    TARGET_KINDS,
    Cache,
    CacheClearing,
    Database,
    DrillTarget,
    FileSet,
    Host,
    Inventory,
    RepositorySettings,
    SecretSource,
    Target,
    describe,
)

__all__ = [
    "CONNECTIONS",
    "DEFAULT_LOCK_WAIT",
    "ENDPOINT_METHODS",
    "ENGINES",
    "FLUSH_SCOPES",
    "MAX_CONNECT_TIMEOUT",
    "MAX_LOCK_WAIT",
    "RESTORE_PRIVILEGES",
    "SECRET_PREFIXES",
    "TARGET_KINDS",
    "Cache",
    "CacheClearing",
    "Database",
    "DrillTarget",
    "FileSet",
    "Host",
    "Inventory",
    "RepositorySettings",
    "SecretSource",
    "Target",
    "_check_name",
    "cache_directory_problem",
    "describe",
    "endpoint_problem",
    "file_glob_problem",
    "key_pattern_problem",
    "load_inventory",
    "normalise_directory",
    "parse_redis_url",
    "redis_url_problem",
]
