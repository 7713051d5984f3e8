"""Local directory backend: one file per object, written atomically.

A store writes a temp file under ``<root>/.tmp/`` (same filesystem), fsyncs it, renames it into
place and fsyncs the target directory, so a crash leaves either the old object or the new one.
Temp files left by a killed process live only in ``.tmp/`` and never appear in ``list()``.

A write that fails (a read-only file system, permission denied, disk full, quota exceeded, an
I/O error) raises ``BackendError`` (exit 6) saying what, where and what to do; removing its
temp file afterwards is best effort, so a second failure (``unlink`` on a read-only file system
fails too) never hides the first.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from crmmaint.errors import BackendError, ObjectNotFound, RepositoryMissing
from crmmaint.repository.backends.base import (
    TEMP_DIR,
    Backend,
    ObjectInfo,
    SourceReadError,
    check_name,
    check_prefix,
    read_source,
)

logger = logging.getLogger(__name__)

COPY_BUFFER = 1 << 20
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class LocalBackend(Backend):
    """Objects as files below ``root``; directories are created on demand."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = f"file://{self.root}"
        self._temp = self.root / TEMP_DIR

    def __repr__(self) -> str:
        return f"LocalBackend({self.url!r})"

    def open(self) -> None:
        if not self.root.is_dir():
            raise RepositoryMissing(
                f"repository location {self.url} does not exist or is not a directory",
                hint="run `crmmaint repo init` to create it, or check the path",
            )
        # Writability is not required here: restores and drills may read a read-only copy.

    def create(self) -> None:
        """Create the directory (mode 0700) and its temp area; an existing directory is kept."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._temp.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise BackendError(
                f"cannot create repository location {self.url}: {exc.strerror}"
            ) from exc
        self.open()

    def close(self) -> None:
        pass

    def _path(self, name: str) -> Path:
        return self.root / check_name(name, self.url)

    def store(self, name: str, data: bytes) -> None:
        self._write(name, lambda out: out.write(data))

    def store_file(self, name: str, fileobj: BinaryIO, size: int | None = None) -> None:
        def copy(out: BinaryIO) -> None:
            while chunk := read_source(fileobj, COPY_BUFFER):
                out.write(chunk)

        self._write(name, copy)

    def _write(self, name: str, fill: Callable[[BinaryIO], object]) -> None:
        """Write via a temp file in ``.tmp/``, then rename into place; never leaves a partial object."""
        path = self._path(name)
        temp = self._temp / f"{uuid.uuid4().hex}.tmp"
        try:
            self._temp.mkdir(mode=0o700, exist_ok=True)
            _makedirs_private(path.parent)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                fill(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
            _fsync_dir(path.parent)
        except BaseException as exc:
            with contextlib.suppress(OSError):  # best effort: the first error is the one to say
                temp.unlink(missing_ok=True)
            if isinstance(exc, SourceReadError):
                raise exc.__cause__ from None  # type: ignore[misc]
            if isinstance(exc, OSError):
                raise self._write_error(name, exc) from exc
            raise

    def _write_error(self, name: str, exc: OSError) -> BackendError:
        """One line for a failed write of ``name``: what, where, what to do."""
        if exc.errno in _NO_SPACE:
            full = "quota exceeded" if exc.errno == errno.EDQUOT else "disk full"
            return BackendError(
                f"{full} writing {name} to {self.url}: free space or move the repository "
                "to a larger filesystem, then retry (no partial object was left)"
            )
        if exc.errno == errno.EROFS:
            return BackendError(
                f"cannot write {name} to {self.url}: the file system is read-only",
                hint="remount it read-write (every command takes a lock in the repository, "
                "reading ones too), or point the repository at a writable location",
                retryable=False,
            )
        if exc.errno in (errno.EACCES, errno.EPERM):
            return BackendError(
                f"permission denied writing {name} to {self.url}",
                hint="check ownership and permissions of the repository directory",
                retryable=False,
            )
        return BackendError(f"cannot write {name} to {self.url}: {exc.strerror or exc}")

    def load(self, name: str, offset: int = 0, size: int | None = None) -> bytes:
        path = self._path(name)
        try:
            with open(path, "rb") as src:
                if offset:
                    src.seek(offset)
                return src.read() if size is None else src.read(size)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"object {name} not found in {self.url}") from exc
        except OSError as exc:
            raise BackendError(
                f"cannot read {name} from {self.url}: {exc.strerror or exc}"
            ) from exc

    def info(self, name: str) -> ObjectInfo | None:
        try:
            st = self._path(name).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise BackendError(f"cannot stat {name} in {self.url}: {exc.strerror or exc}") from exc
        return ObjectInfo(name, st.st_size) if stat.S_ISREG(st.st_mode) else None

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            if path.is_dir():
                raise FileNotFoundError(name)
            path.unlink()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"cannot delete {name}: not found in {self.url}") from exc
        except OSError as exc:
            raise BackendError(
                f"cannot delete {name} from {self.url}: {exc.strerror or exc}"
            ) from exc

    def move(self, src: str, dst: str) -> None:
        src_path, dst_path = self._path(src), self._path(dst)
        if not src_path.is_file():
            raise ObjectNotFound(f"cannot move {src}: not found in {self.url}")
        try:
            _makedirs_private(dst_path.parent)
            os.replace(src_path, dst_path)
            _fsync_dir(dst_path.parent)
            if dst_path.parent != src_path.parent:
                _fsync_dir(src_path.parent)
        except OSError as exc:
            raise BackendError(
                f"cannot move {src} to {dst} in {self.url}: {exc.strerror or exc}"
            ) from exc

    def remove_stale_temp(self, older_than: float) -> int:
        removed = 0
        try:
            entries = list(os.scandir(self._temp))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < older_than:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                logger.warning("cannot remove leftover %s in %s: %s", entry.name, self.url, exc)
        return removed

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix, self.url)
        # Start the walk at the deepest directory the prefix names completely.
        base = prefix.rpartition("/")[0]
        start = self.root / base if base else self.root
        try:
            yield from self._walk(start, f"{base}/" if base else "", prefix)
        except OSError as exc:
            raise BackendError(
                f"cannot list {prefix or '/'} in {self.url}: {exc.strerror or exc}"
            ) from exc

    def _walk(self, directory: Path, rel: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            name = rel + entry.name
            if not rel and entry.name == TEMP_DIR:
                continue
            if entry.is_dir(follow_symlinks=False):
                if name.startswith(prefix) or prefix.startswith(name + "/"):
                    yield from self._walk(Path(entry.path), name + "/", prefix)
            elif entry.is_file(follow_symlinks=False) and name.startswith(prefix):
                try:
                    yield ObjectInfo(name, entry.stat(follow_symlinks=False).st_size)
                except FileNotFoundError:
                    continue  # deleted while listing


def _makedirs_private(directory: Path) -> None:
    """Create ``directory`` and its missing parents as 0700 each (``mkdir(parents=True)``
    would make the parents with the umask's mode): objects are the owner's alone."""
    if directory.is_dir():
        return
    _makedirs_private(directory.parent)
    directory.mkdir(mode=0o700, exist_ok=True)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: fsync the directory entry (best effort where unsupported)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
