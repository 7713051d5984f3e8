"""A repository on a read-only file system (a real read-only bind mount: ``chmod`` does not
stop root): writing fails with exit 6 and one line saying what, where and what to do, never
``internal error`` (exit 70) from the cleanup of the failed write; objects stay readable.

Needs root and ``mount`` (skipped without)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import run_cli, run_here
from estates import sqlite_estate

from crmmaint.errors import BackendError
from crmmaint.repository.backends.local import LocalBackend


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` mounted read-only over itself for the block; unmounted after."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root and mount(8)")
    bound = subprocess.run(["mount", "--bind", str(directory), str(directory)], capture_output=True)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.decode().strip()}")
    try:
        subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(directory)], check=True, capture_output=True
        )
        with pytest.raises(OSError):  # it is read-only indeed, for root too
            (directory / "probe").write_text("x")
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_a_write_to_a_read_only_repository_is_one_backend_error(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    backend.create()
    backend.store("config", b"before")
    with read_only(backend.root):
        for name in ("config", "data/ab/cd"):
            with pytest.raises(BackendError) as err:
                backend.store(name, b"after")
            message = str(err.value)
            assert "\n" not in message and err.value.exit_code == 6
            assert f"cannot write {name} to {backend.url}" in message
            assert "read-only" in message and "remount" in message
            assert err.value.retryable is False
            assert "Errno" not in message  # not the unlink error of the cleanup
        assert backend.load("config") == b"before"  # reading still works
        assert [o.name for o in backend.list()] == ["config"]
    assert list((backend.root / ".tmp").iterdir()) == []  # nothing left behind


@pytest.fixture
def estate(tmp_path: Path) -> Path:
    root = sqlite_estate(tmp_path, customers=20)
    (root / "book.yml").write_text(
        "name: book\nsteps:\n  - name: work\n    task: shell.command\n"
        "    with: {commands: ['true']}\n    hosts: all\n"
    )
    inv = str(root / "inventory.yml")
    for args in (
        ("keys", "generate", "--output", str(root / "keys" / "ops.key")),
        ("repo", "init"),
    ):
        done = run_here(*args, "-i", inv, cwd=root)
        assert done.returncode == 0, done.stderr
    return root


def test_backup_and_scheduler_say_the_repository_is_read_only(estate: Path) -> None:
    inv = str(estate / "inventory.yml")
    doc = (estate / "inventory.yml").read_text()
    (estate / "inventory.yml").write_text(
        doc + "schedule:\n  timezone: UTC\n  windows:\n    nightly: {playbook: book.yml, "
        "every: daily, at: '00:00', length: 24h}\n"
    )
    with read_only(estate / "repo"):
        for args in (("backup",), ("scheduler", "--once")):
            done = run_cli(*args, "-i", inv, cwd=estate)
            said = done.stderr + done.stdout
            assert done.returncode == 6, said
            assert "internal error" not in said and "Traceback" not in said, said
            assert "read-only" in said and "repo" in said, said
    again = run_cli("backup", "-i", inv, cwd=estate)  # writable again: the repository is intact
    assert again.returncode == 0, again.stderr
