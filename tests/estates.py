"""A small local estate for CLI tests: a SQLite CRM, a file set and a repository entry with its
key paths (keys and repository not made yet), written as ``inventory.yml`` in a folder."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import yaml

#: The repository every estate here names: ``repo`` beside the inventory, keys under ``keys/``.
MAIN_REPOSITORY = {
    "url": "repo",
    "write_key": "keys/write.key",
    "recipients": ["file:keys/ops.pub"],
    "identity": "keys/ops.key",
}


def estate_inventory(databases: dict | None = None, **sections: object) -> dict:
    """An inventory document: journal ``journal.sqlite``, the ``local`` host, ``databases``
    (default: the SQLite ``crm``), the repository ``main`` (``MAIN_REPOSITORY``), and any
    other ``sections`` as given (``filesets=…``, ``caches=…``; a section given replaces)."""
    return {
        "settings": {"journal": "journal.sqlite"},
        "hosts": {"local": {"connection": "local"}},
        "databases": databases
        if databases is not None
        else {"crm": {"engine": "sqlite", "path": "crm.sqlite", "main": True}},
        "repositories": {"main": dict(MAIN_REPOSITORY)},
        **sections,
    }


def sqlite_crm(path: Path, *, customers: int = 2000, deals: int = 0) -> Path:
    """A SQLite CRM at ``path``: ``customers`` rows (and a ``deals`` table with ``deals`` rows
    when > 0)."""
    db = sqlite3.connect(path)
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
    return path


def sqlite_estate(root: Path, *, customers: int = 2000, deals: int = 0) -> Path:
    """Write the estate into ``root``: ``crm.sqlite`` with ``customers`` rows (and a ``deals``
    table with ``deals`` rows when > 0), ``files/a.txt``, and ``inventory.yml`` naming them,
    the repository ``main`` and keys under ``keys/``. Returns ``root``."""
    sqlite_crm(root / "crm.sqlite", customers=customers, deals=deals)
    (root / "files").mkdir()
    (root / "files" / "a.txt").write_text("attachment\n" * 100)
    inv = estate_inventory(filesets={"files": {"paths": ["files"]}})
    (root / "inventory.yml").write_text(yaml.safe_dump(inv))
    return root
