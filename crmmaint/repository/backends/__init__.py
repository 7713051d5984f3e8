"""Storage backends behind one ABC, chosen by URL.

``open_backend(url, **options)`` maps ``file:///abs/path`` (or a plain path) to ``LocalBackend``,
``s3://bucket/prefix`` to ``S3Backend`` and ``sftp://user@host:port/path`` to ``SFTPBackend``.
It only builds the object: call ``open()`` (or use it as a context manager) to connect.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import unquote, urlsplit

from crmmaint.errors import BackendError
from crmmaint.repository.backends.base import Backend, ObjectInfo

__all__ = ["SCHEMES", "Backend", "ObjectInfo", "open_backend"]

SCHEMES = ("file", "s3", "sftp")


def open_backend(url: str, **options: Any) -> Backend:
    """Build the backend for ``url``; unknown schemes and options raise ``BackendError``."""
    if "://" not in url:
        return _local(url, options)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BackendError(
                f"file URL {url!r} names host {parts.netloc!r}: use file:///abs/path"
            )
        return _local(unquote(parts.path), options)
    if scheme == "s3":
        from crmmaint.repository.backends.s3 import S3Backend, S3Options

        if not parts.netloc:
            raise BackendError(f"S3 URL {url!r} has no bucket: use s3://bucket/prefix")
        return S3Backend(parts.netloc, unquote(parts.path), _options(S3Options, options, "s3"))
    if scheme == "sftp":
        from crmmaint.repository.backends.sftp import SFTPBackend, SFTPOptions

        if not parts.hostname or not parts.path.strip("/"):
            raise BackendError(
                f"SFTP URL {url!r} needs a host and a path: use sftp://user@host:port/path"
            )
        try:
            port = parts.port or 22
        except ValueError as exc:
            raise BackendError(f"SFTP URL {url!r} has an invalid port") from exc
        if parts.password:
            raise BackendError("SFTP URLs must not carry a password: use identity_file")
        return SFTPBackend(
            host=parts.hostname,
            port=port,
            user=unquote(parts.username) if parts.username else None,
            path=unquote(parts.path),
            options=_options(SFTPOptions, options, "sftp"),
        )
    raise BackendError(
        f"unsupported repository URL scheme {parts.scheme!r} in {_redact(url)}",
        hint="use one of: file:///abs/path (or a plain path), s3://bucket/prefix, sftp://user@host:port/path",
    )


def _local(path: str, options: dict[str, Any]) -> Backend:
    from crmmaint.repository.backends.local import LocalBackend

    if options:
        raise BackendError(f"the local backend takes no options, got: {', '.join(sorted(options))}")
    if not path:
        raise BackendError("empty repository path")
    return LocalBackend(path)


def _options(cls: type, options: dict[str, Any], scheme: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise BackendError(
            f"unknown {scheme} backend option{'' if len(unknown) == 1 else 's'}: {', '.join(unknown)}",
            hint=f"known options: {', '.join(sorted(known))}",
        )
    return cls(**{k: v for k, v in options.items() if v is not None})


def _redact(url: str) -> str:
    """Drop any user:password part before a URL goes into a message."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()
    return url
