"""SFTP backend (paramiko): objects as files below a remote directory.

The SSH connection is an ``SSHTarget`` opened by ``crmmaint.transport.ssh_client.connect``, so host
keys are checked against known_hosts exactly as for commands (unknown or changed keys are refused unless
allowed). A store writes ``<path>/.tmp/<random>.tmp`` and renames it into place with
``posix-rename@openssh.com``, so readers never see a partial object. Every operation checks an
SFTP channel out of a small pool over the one SSH connection: a channel is never used by two
threads at once, nor re-entered while a pipelined write on it awaits its acknowledgements.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import posixpath
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import paramiko

from crmmaint.errors import BackendError, ObjectNotFound, RepositoryMissing, TransportError
from crmmaint.repository.backends.base import (
    TEMP_DIR,
    Backend,
    ObjectInfo,
    SourceReadError,
    check_name,
    check_prefix,
    read_source,
)
from crmmaint.transport.ssh_client import SSHTarget, connect

logger = logging.getLogger(__name__)

COPY_BUFFER = 1 << 20
READ_CHUNK = 1 << 20
_NETWORK_ERRORS = (paramiko.SSHException, EOFError, ConnectionError, TimeoutError)


@dataclass
class SFTPOptions:
    """The repository's ``options`` for an SFTP URL: how to reach and trust the server (the
    ``SSHTarget`` fields a URL does not carry); unknown host keys are refused by default."""

    identity_file: str | None = None
    known_hosts: str | None = None
    connect_timeout: float = 10.0
    allow_unknown_host_key: bool = False


class SFTPBackend(Backend):
    """One remote directory, e.g. ``sftp://backup@10.0.0.5:22/srv/crm-repo``."""

    def __init__(
        self,
        host: str,
        path: str,
        user: str | None = None,
        port: int = 22,
        options: SFTPOptions | None = None,
    ) -> None:
        self.host, self.port, self.user = host, port, user
        self.root = "/" + path.strip("/")
        self.options = options or SFTPOptions()
        who = f"{user}@" if user else ""
        self.url = f"sftp://{who}{host}:{port}{self.root}"
        #: The server, as messages name it ("repository sftp://…").
        self.target = SSHTarget(
            f"repository {self.url}", host, port, user, **dataclasses.asdict(self.options)
        )
        self._lock = threading.Lock()
        self._client: Any = None
        self._idle: list[paramiko.SFTPClient] = []
        self._dirs: set[str] = set()

    def __repr__(self) -> str:
        return f"SFTPBackend({self.url!r})"

    # -- connection --------------------------------------------------------------------------

    def _connect(self) -> Any:
        try:
            return connect(self.target)
        except TransportError as exc:
            raise BackendError(f"cannot connect to repository {self.url}: {exc}") from exc

    @contextmanager
    def _channel(self) -> Iterator[paramiko.SFTPClient]:
        """Check an SFTP channel out of the pool (opening one if none is idle) for one operation."""
        with self._lock:
            if self._client is not None and not _alive(self._client):
                logger.info("SSH connection for %s was lost; reconnecting", self.url)
                self._drop_connection()
            if self._client is None:
                self._client = self._connect()
            channel = self._idle.pop() if self._idle else None
            if channel is None:
                try:
                    channel = self._client.open_sftp()
                except (*_NETWORK_ERRORS, OSError) as exc:
                    raise BackendError(
                        f"cannot start SFTP on {self.url}: {exc}",
                        hint="check that the server's sshd enables the sftp subsystem",
                    ) from exc
        try:
            yield channel
        except _NETWORK_ERRORS:
            channel.close()  # a broken channel never goes back to the pool
            raise
        except BaseException:
            with self._lock:
                self._idle.append(channel)
            raise
        with self._lock:
            self._idle.append(channel)

    def open(self) -> None:
        try:
            with self._channel() as sftp:
                st = sftp.stat(self.root)
        except FileNotFoundError as exc:
            raise RepositoryMissing(
                f"repository location {self.url} does not exist",
                hint="run `crmmaint repo init` to create it, or check the path",
            ) from exc
        except (*_NETWORK_ERRORS, OSError) as exc:
            raise self._error(exc, "open", None) from exc
        if not stat.S_ISDIR(st.st_mode or 0):
            raise BackendError(f"repository location {self.url} is not a directory")
        logger.debug("opened %s", self.url)

    def create(self) -> None:
        """Create the remote directory (mode 0700) and its temp area, like ``mkdir -p``."""
        try:
            with self._channel() as sftp:
                self._makedirs(sftp, self.root, 0o700)
                self._makedirs(sftp, posixpath.join(self.root, TEMP_DIR), 0o700)
        except (*_NETWORK_ERRORS, OSError) as exc:
            raise self._error(exc, "create", None) from exc
        self.open()

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    def _drop_connection(self) -> None:
        """Close pooled channels and the SSH connection; the caller holds the lock."""
        for channel in self._idle:
            try:
                channel.close()
            except Exception:  # a dead channel must not mask the close of the rest
                logger.debug("closing SFTP channel of %s failed", self.url, exc_info=True)
        self._idle.clear()
        self._dirs.clear()
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- objects -----------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return posixpath.join(self.root, check_name(name, self.url))

    def _makedirs(self, sftp: paramiko.SFTPClient, directory: str, mode: int = 0o700) -> None:
        if directory in self._dirs or directory == "/":
            return
        try:
            if stat.S_ISDIR(sftp.stat(directory).st_mode or 0):
                self._dirs.add(directory)
                return
        except FileNotFoundError:
            pass
        self._makedirs(sftp, posixpath.dirname(directory), mode)
        try:
            sftp.mkdir(directory, mode)
        except OSError:
            # Another writer may have made it meanwhile; only a missing directory is an error.
            if not stat.S_ISDIR(sftp.stat(directory).st_mode or 0):
                raise
        self._dirs.add(directory)

    def store(self, name: str, data: bytes) -> None:
        self._write(name, lambda out: out.write(data))

    def store_file(self, name: str, fileobj: BinaryIO, size: int | None = None) -> None:
        def copy(out: paramiko.SFTPFile) -> None:
            while chunk := read_source(fileobj, COPY_BUFFER):
                out.write(chunk)

        self._write(name, copy)

    def _write(self, name: str, fill: Callable[[paramiko.SFTPFile], object]) -> None:
        """Write a temp file in ``.tmp/`` then rename it into place; no partial object remains.

        An error raised by the caller's source stream propagates unchanged after the cleanup.
        """
        path = self._path(name)
        temp = posixpath.join(self.root, TEMP_DIR, f"{uuid.uuid4().hex}.tmp")
        try:
            with self._channel() as sftp:
                try:
                    self._makedirs(sftp, posixpath.dirname(temp), 0o700)
                    self._makedirs(sftp, posixpath.dirname(path))
                    with sftp.open(temp, "wb") as out:
                        out.chmod(0o600)  # objects are the owner's alone, whatever the umask
                        out.set_pipelined(True)
                        fill(out)
                    sftp.posix_rename(temp, path)
                except BaseException:
                    try:
                        sftp.remove(temp)
                    except Exception:  # best effort: the temp area is never listed
                        logger.debug("could not remove temp file %s on %s", temp, self.url)
                    raise
        except SourceReadError as exc:
            raise exc.__cause__ from None  # type: ignore[misc]
        except (*_NETWORK_ERRORS, OSError) as exc:
            raise self._error(exc, "write", name) from exc

    def load(self, name: str, offset: int = 0, size: int | None = None) -> bytes:
        path = self._path(name)
        try:
            with self._channel() as sftp, sftp.open(path, "rb") as src:
                total = src.stat().st_size or 0
                end = total if size is None else min(total, offset + size)
                if end <= offset:
                    return b""
                # readv pipelines the requests (a plain read waits for each 32 KiB block); small
                # chunks avoid paramiko's quadratic buffer growth on one large read.
                chunks = [(at, min(READ_CHUNK, end - at)) for at in range(offset, end, READ_CHUNK)]
                return b"".join(src.readv(chunks))
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"object {name} not found in {self.url}") from exc
        except (*_NETWORK_ERRORS, OSError) as exc:
            raise self._error(exc, "read", name) from exc

    def info(self, name: str) -> ObjectInfo | None:
        path = self._path(name)
        try:
            with self._channel() as sftp:
                st = sftp.stat(path)
        except FileNotFoundError:
            return None
        except (*_NETWORK_ERRORS, OSError) as exc:
            raise self._error(exc, "stat", name) from exc
        return ObjectInfo(name, st.st_size or 0) if stat.S_ISREG(st.st_mode or 0) else None

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            with self._channel() as sftp:
                sftp.remove(path)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"cannot delete {name}: not found in {self.url}") from exc
        except (*_NETWORK_ERRORS, OSError) as exc:
            raise self._error(exc, "delete", name) from exc

    def move(self, src: str, dst: str) -> None:
        src_path, dst_path = self._path(src), self._path(dst)
        if self.info(src) is None:
            raise ObjectNotFound(f"cannot move {src}: not found in {self.url}")
        try:
            with self._channel() as sftp:
                self._makedirs(sftp, posixpath.dirname(dst_path))
                sftp.posix_rename(src_path, dst_path)
        except (*_NETWORK_ERRORS, OSError) as exc:
            raise self._error(exc, "move", f"{src} to {dst}") from exc

    def remove_stale_temp(self, older_than: float) -> int:
        temp = posixpath.join(self.root, TEMP_DIR)
        removed = 0
        try:
            with self._channel() as sftp:
                try:
                    entries = sftp.listdir_attr(temp)
                except FileNotFoundError:
                    return 0
                for entry in entries:
                    if stat.S_ISREG(entry.st_mode or 0) and (entry.st_mtime or 0) < older_than:
                        try:
                            sftp.remove(posixpath.join(temp, entry.filename))
                            removed += 1
                        except FileNotFoundError:
                            continue
        except (*_NETWORK_ERRORS, OSError) as exc:
            logger.warning("cannot remove leftovers in %s/%s: %s", self.url, TEMP_DIR, exc)
        return removed

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix, self.url)
        base = prefix.rpartition("/")[0]
        try:
            yield from self._walk(base + "/" if base else "", prefix)
        except (*_NETWORK_ERRORS, OSError) as exc:
            raise self._error(exc, "list", prefix or "/") from exc

    def _walk(self, rel: str, prefix: str) -> Iterator[ObjectInfo]:
        # The channel goes back to the pool before yielding: callers often delete while listing.
        try:
            with self._channel() as sftp:
                entries = sftp.listdir_attr(posixpath.join(self.root, rel))
        except FileNotFoundError:
            return
        for entry in entries:
            name = rel + entry.filename
            mode = entry.st_mode or 0
            if not rel and entry.filename == TEMP_DIR:
                continue
            if stat.S_ISDIR(mode):
                if name.startswith(prefix) or prefix.startswith(name + "/"):
                    yield from self._walk(name + "/", prefix)
            elif stat.S_ISREG(mode) and name.startswith(prefix):
                yield ObjectInfo(name, entry.st_size or 0)

    def _error(self, exc: BaseException, action: str, name: str | None) -> BackendError:
        what = f"{action} {name} in {self.url}" if name else f"{action} {self.url}"
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return BackendError(f"disk full: cannot {what}: free space on the server, then retry")
        if isinstance(exc, PermissionError):
            return BackendError(
                f"permission denied: cannot {what}",
                hint="check ownership and permissions of the remote directory for this user",
            )
        if isinstance(exc, _NETWORK_ERRORS):
            return BackendError(
                f"connection to {self.host}:{self.port} failed: cannot {what}: {exc or type(exc).__name__}",
                hint="check that the host is up and reachable, then retry",
            )
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        if action == "write" and reason.strip().lower() == "failure":
            # SFTP v3 reports a full disk or exhausted quota only as a generic failure.
            return BackendError(
                f"cannot {what}: the server reported a failure",
                hint="check free space and quota on the server, and the directory's permissions",
            )
        return BackendError(f"cannot {what}: {reason}")


def _alive(client: paramiko.SSHClient) -> bool:
    transport = client.get_transport()
    return transport is not None and transport.is_active()
