"""The storage backend ABC: a flat namespace of named, immutable objects.

Names are ``/``-separated relative paths such as ``data/3f/3f0c…`` or ``backups/2026…``. Every
``store`` is atomic: a reader sees the whole object or none of it, never a prefix (local: temp
file, fsync, rename; S3: one PUT or a completed multipart upload; SFTP: temp name, rename).
Backends know nothing of crypto or the repository format.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from crmmaint.errors import BackendError

#: Top-level directory where local and SFTP backends stage temp files; never a valid object name.
TEMP_DIR = ".tmp"


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int


class Backend(abc.ABC):
    """One repository location. Errors are ``BackendError`` / ``ObjectNotFound`` naming the URL."""

    #: Human-readable location without credentials, e.g. ``s3://bucket/prefix``.
    url: str

    #: Largest single upload before a backend switches to multipart (S3); informational elsewhere.
    @property
    def part_size(self) -> int:
        return 64 << 20

    @abc.abstractmethod
    def open(self) -> None:
        """Connect, and check the location exists (``BackendError`` with a hint if not)."""

    def create(self) -> None:
        """Create the location (directory or prefix) for ``repo init``. Default: ``open``."""
        self.open()

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. Idempotent."""

    @abc.abstractmethod
    def store(self, name: str, data: bytes) -> None:
        """Write an object atomically, replacing any object of that name."""

    def store_file(self, name: str, fileobj: BinaryIO, size: int | None = None) -> None:
        """Write an object from a file-like object; backends override to bound memory."""
        self.store(name, fileobj.read())

    def remove_stale_temp(self, older_than: float) -> int:
        """Remove what killed writers left behind, started before ``older_than`` (unix time):
        temp files in ``.tmp/`` (local, SFTP), unfinished multipart uploads (S3). Call only
        while holding the repository exclusively. Returns how many were removed; a failure to
        remove one is logged by the backend, not raised. Default: nothing to remove."""
        return 0

    @abc.abstractmethod
    def load(self, name: str, offset: int = 0, size: int | None = None) -> bytes:
        """Read an object, or ``size`` bytes of it from ``offset`` (ranged read)."""

    @abc.abstractmethod
    def info(self, name: str) -> ObjectInfo | None:
        """Size of an object, or None when it does not exist."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove an object; ``ObjectNotFound`` when absent."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose names start with ``prefix`` (a directory such as ``data/``), any order."""

    @abc.abstractmethod
    def move(self, src: str, dst: str) -> None:
        """Rename an object (used for quarantine and lock handover)."""

    def exists(self, name: str) -> bool:
        return self.info(name) is not None

    def __enter__(self) -> Backend:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_name(name: str, url: str) -> str:
    """Reject names that could escape the location or collide with temp files."""
    parts = name.split("/")
    if not name or name.startswith("/") or "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise BackendError(
            f"invalid object name {name!r} for {url}: use a relative path like 'data/ab/cd'"
        )
    if parts[0] == TEMP_DIR:
        raise BackendError(f"invalid object name {name!r} for {url}: {TEMP_DIR}/ is reserved")
    return name


def check_prefix(prefix: str, url: str) -> str:
    """A list prefix is a name or the start of one (``""``, ``data/``, ``data/3f``)."""
    if prefix.startswith("/") or "\0" in prefix or ".." in prefix.split("/"):
        raise BackendError(f"invalid list prefix {prefix!r} for {url}")
    return prefix


class SourceReadError(Exception):
    """Internal marker: the caller's stream failed (the cause), not the backend.

    ``store_file`` re-raises the cause unchanged after cleaning up, so a failing source is never
    reported as a storage error.
    """


def read_source(fileobj: BinaryIO, size: int) -> bytes:
    """``fileobj.read(size)``, with any failure wrapped in ``SourceReadError``."""
    try:
        return fileobj.read(size) or b""
    except BaseException as exc:
        raise SourceReadError from exc
