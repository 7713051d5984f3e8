"""A small local estate for CLI tests: a SQLite CRM, a file set and a repository entry with its
key paths (keys and repository not made yet), written as ``inventory.yml`` in a folder."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import yaml


def sqlite_estate(root: Path, *, customers: int = 2000, deals: int = 0) -> Path:
    """Write the estate into ``root``: ``crm.sqlite`` with ``customers`` rows (and a ``deals``
    table with ``deals`` rows when > 0), ``files/a.txt``, and ``inventory.yml`` naming them,
    the repository ``repo`` and keys under ``keys/``. Returns ``root``."""
    db = sqlite3.connect(root / "crm.sqlite")
    db.execute("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT)")
    db.executemany("INSERT INTO customers(name) VALUES (?)", [(f"c{i}",) for i in range(customers)])
    if deals:
        db.execute(
            "CREATE TABLE deals(id INTEGER PRIMARY KEY,"
            " customer INTEGER REFERENCES customers(id), amount INT)"
        )
        db.executemany(
            "INSERT INTO deals(customer, amount) VALUES (?, ?)",
            [(i % customers + 1, i) for i in range(deals)],
        )
    db.commit()
    db.close()
    (root / "files").mkdir()
    (root / "files" / "a.txt").write_text("attachment\n" * 100)
    inv = {
        "settings": {"journal": "journal.sqlite"},
        "hosts": {"local": {"connection": "local"}},
        "databases": {"crm": {"engine": "sqlite", "path": "crm.sqlite", "main": True}},
        "filesets": {"files": {"paths": ["files"]}},
        "repositories": {
            "main": {
                "url": "repo",
                "write_key": "keys/write.key",
                "recipients": ["file:keys/ops.pub"],
                "identity": "keys/ops.key",
            }
        },
    }
    (root / "inventory.yml").write_text(yaml.safe_dump(inv))
    return root
