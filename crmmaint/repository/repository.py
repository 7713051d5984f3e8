"""The repository: open or create one on a backend, and the operations other layers call.

A ``Repository`` holds the backend, the keys derived from the write key, the config and the
in-memory chunk index. Writing is ``session``; reading is ``manifest`` and ``read_stream``;
maintenance is ``verify`` and ``prune``. Byte formats: docs/format.md.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crmmaint.crypto import ALGORITHMS, Identity, Recipient, derive_repository_keys
from crmmaint.errors import (
    CryptoError,
    IntegrityError,
    ObjectNotFound,
    RepositoryError,
    UnauthenticatedConfig,
)
from crmmaint.repository.backends.base import Backend
from crmmaint.repository.format import (
    BACKUPS_DIR,
    CONFIG,
    DRILLS_DIR,
    FORMAT_NAME,
    FORMAT_VERSION,
    ChunkerParams,
    check_backup_id,
    check_config_values,
    config_mac,
    decode_config,
    drill_name,
    encode_config,
    manifest_name,
    open_json,
    seal_json,
    utc_iso,
    write_key_check,
)
from crmmaint.repository.index import ChunkIndex
from crmmaint.repository.lock import RepositoryLock
from crmmaint.repository.session import StreamInfo, WriteSession

if TYPE_CHECKING:
    from crmmaint.repository.gc import PruneReport
    from crmmaint.repository.reader import Manifest, StreamRanges
    from crmmaint.repository.repair import RepairReport
    from crmmaint.repository.retention import RetentionPolicy
    from crmmaint.repository.verify import VerifyReport

logger = logging.getLogger(__name__)

DEFAULT_PACK_SIZE = 16 << 20
#: zstd level 2: on dump text 10% smaller than level 1 for 3% more CPU; level 3 costs +26% CPU
#: for another 6% (docs/performance.md).
DEFAULT_COMPRESSION_LEVEL = 2
#: zstd levels a repository accepts: 1..19, and -1..-7 (zstd's "fast" levels, cheaper still).
COMPRESSION_LEVELS = (*range(-7, 0), *range(1, 20))
COMPRESSION_HINT = "use a zstd level from 1 (fast) to 19 (small), or -1 to -7 (faster, larger)"


def check_compression_level(level: object) -> int:
    """The zstd level as an int; RepositoryError naming the accepted range otherwise."""
    if isinstance(level, bool) or not isinstance(level, int) or level not in COMPRESSION_LEVELS:
        raise RepositoryError(f"compression level {level!r} not supported", hint=COMPRESSION_HINT)
    return level


_INIT_HINT = "create it with `crmmaint repo init`, or check the repository URL"


@dataclass
class BackupInfo:
    """One committed backup as listed with the write key alone (no content, no facts)."""

    id: str
    source: str
    kind: str
    host: str
    time: float
    size: int
    stored_bytes: int
    dedup_ratio: float
    duration: float
    streams: list[str]
    key_ids: list[str]
    drilled: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


class Repository:
    """An opened repository; create with ``Repository.init`` or ``Repository.open``."""

    def __init__(self, backend: Backend, write_key: bytes, config: dict[str, Any]) -> None:
        self.backend = backend
        self.config = config
        self.id: str = config["id"]
        self.keys = derive_repository_keys(write_key)
        if not hmac.compare_digest(
            write_key_check(self.keys.metadata_key, self.id), str(config.get("write_key_check"))
        ):
            raise CryptoError(
                f"write key does not match repository URL {backend.url}",
                hint="use the write key file made by `crmmaint repo init` for this repository",
            )

        self.chunker = ChunkerParams(**config["chunker"])
        self.compression_level: int = int(config["compression"]["level"])
        #: Seconds ``lock`` waits for a conflicting holder before ``LockError`` (exit 7).
        self.lock_wait: float = 60.0
        self.aead: str = config["aead"]
        self.pack_size: int = int(config["pack_size"])
        self.index = ChunkIndex()
        #: backups whose manifest failed authentication or decoding: id -> why (``backups``)
        self.damaged_manifests: dict[str, str] = {}
        #: data keys already unwrapped, with the identities that did it (reader.unwrap_keys)
        self.unwrapped: dict[bytes, tuple[tuple[Identity, ...], bytes]] = {}

    def __repr__(self) -> str:
        return f"Repository({self.backend.url!r}, id={self.id})"

    # --- create / open ------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        write_key: bytes,
        *,
        chunker: ChunkerParams = ChunkerParams(),
        compression_level: int = DEFAULT_COMPRESSION_LEVEL,
        aead: str = "aes-256-gcm",
        pack_size: int = DEFAULT_PACK_SIZE,
    ) -> Repository:
        """Create the location and write ``config``; refuses an existing repository."""
        if aead not in ALGORITHMS:
            raise RepositoryError(f"unknown AEAD {aead!r}; choose one of {', '.join(ALGORITHMS)}")
        compression_level = check_compression_level(compression_level)
        if not 1 << 20 <= pack_size <= 1 << 30:
            raise RepositoryError(f"pack size {pack_size} out of range (1 MiB .. 1 GiB)")
        backend.create()
        if backend.exists(CONFIG):
            raise RepositoryError(
                f"a repository already exists at {backend.url}",
                hint="open it with its write key, or choose another location",
            )
        repo_id = os.urandom(16).hex()
        keys = derive_repository_keys(write_key)
        config = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "id": repo_id,
            "created": utc_iso(time.time()),
            "chunker": {"algorithm": "fastcdc", **chunker.to_json()},
            "compression": {"algorithm": "zstd", "level": compression_level},
            "aead": aead,
            "pack_size": pack_size,
            "write_key_check": write_key_check(keys.metadata_key, repo_id),
        }
        config["mac"] = config_mac(keys.metadata_key, config)
        backend.store(CONFIG, encode_config(config))
        logger.info("created repository %s at %s", repo_id, backend.url)
        return cls._from_config(backend, write_key, config)

    @classmethod
    def open(cls, backend: Backend, write_key: bytes) -> Repository:
        """Open an existing repository; CryptoError if ``write_key`` is not its key."""
        backend.open()
        try:
            data = backend.load(CONFIG)
        except ObjectNotFound:
            raise RepositoryError(
                f"no crmmaint repository at {backend.url}", hint=_INIT_HINT
            ) from None
        return cls._from_config(backend, write_key, decode_config(data, backend.url))

    @classmethod
    def _from_config(cls, backend: Backend, write_key: bytes, stored: dict[str, Any]) -> Repository:
        """The repository whose ``config`` is ``stored``: its values in range, then the write
        key, then its MAC checked (RepositoryError, CryptoError, IntegrityError)."""
        check_config_values(stored, backend.url)
        config = dict(stored)
        config["chunker"] = {k: v for k, v in config["chunker"].items() if k != "algorithm"}
        repo = cls(backend, write_key, config)
        if "mac" not in stored:
            # Never accepted as is: whoever stores the repository could strip the MAC and
            # change any value within range.
            raise UnauthenticatedConfig(
                f"repository config at {backend.url} carries no MAC (written before crmmaint "
                "authenticated it, or stripped by someone)",
                hint="if you trust its values as they are (`cat` the config object), run "
                "`crmmaint repo upgrade` once to authenticate it",
            )
        if not hmac.compare_digest(config_mac(repo.keys.metadata_key, stored), str(stored["mac"])):
            raise IntegrityError(
                f"repository config at {backend.url} failed authentication: it was changed "
                "by someone other than crmmaint",
                hint="restore the config object from a copy; do not write to this repository "
                "until then",
            )
        return repo

    @classmethod
    def authenticate_config(cls, backend: Backend, write_key: bytes) -> bool:
        """Add the MAC to a config written before configs were authenticated, after checking
        its values and the write key; returns False when it already carries a valid one.

        Only the operator can decide that the current values are the ones crmmaint wrote: this
        is a one-off step they run, never done automatically. Raises as ``open`` does.
        """
        backend.open()
        try:
            stored = decode_config(backend.load(CONFIG), backend.url)
        except ObjectNotFound:
            raise RepositoryError(
                f"no crmmaint repository at {backend.url}", hint=_INIT_HINT
            ) from None
        if "mac" in stored:
            cls._from_config(backend, write_key, stored)  # must verify
            return False
        check_config_values(stored, backend.url)
        keys = derive_repository_keys(write_key)
        if not hmac.compare_digest(
            write_key_check(keys.metadata_key, str(stored.get("id"))),
            str(stored.get("write_key_check")),
        ):
            raise CryptoError(f"write key does not match repository URL {backend.url}")
        stored["mac"] = config_mac(keys.metadata_key, stored)
        backend.store(CONFIG, encode_config(stored))
        logger.info("authenticated the config of %s", backend.url)
        return True

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- locking and index --------------------------------------------------------------------

    def lock(self, *, exclusive: bool, purpose: str) -> RepositoryLock:
        """Shared lock for backups, exclusive for prune; stale locks of dead holders are taken over."""
        owner = f"{socket.gethostname()}:{os.getpid()} {purpose}"
        return RepositoryLock(
            self.backend, exclusive=exclusive, owner=owner, timeout=self.lock_wait
        )

    def refresh_index(self) -> ChunkIndex:
        self.index.refresh(self.backend, self.keys.metadata_key)
        return self.index

    # --- writing ------------------------------------------------------------------------------

    def session(
        self,
        *,
        source: str,
        kind: str,
        host: str,
        recipients: Sequence[Recipient],
        meta: dict[str, Any] | None = None,
    ) -> WriteSession:
        """A write session for one backup; use as a context manager and call ``commit``."""
        return WriteSession(
            self, source=source, kind=kind, host=host, recipients=list(recipients), meta=meta
        )

    # --- listing ------------------------------------------------------------------------------

    def load_manifest_meta(self, backup_id: str) -> dict[str, Any]:
        """The manifest as stored (metadata key only); ObjectNotFound if no such backup."""
        name = manifest_name(check_backup_id(backup_id))
        try:
            blob = self.backend.load(name)
        except ObjectNotFound:
            raise ObjectNotFound(
                f"backup {backup_id} not found in {self.backend.url}",
                hint="list backups with `crmmaint backups`",
            ) from None
        return open_json(self.keys.metadata_key, name, blob)

    def info_from_manifest(self, manifest: dict[str, Any], *, drilled: bool) -> BackupInfo:
        return BackupInfo(
            id=manifest["id"],
            source=manifest["source"],
            kind=manifest["kind"],
            host=manifest["host"],
            time=manifest["time"],
            size=manifest["size"],
            stored_bytes=manifest["stored_bytes"],
            dedup_ratio=manifest["dedup_ratio"],
            duration=manifest["duration"],
            streams=[s["name"] for s in manifest["streams"]],
            key_ids=list(manifest["key_ids"]),
            drilled=drilled,
            meta=dict(manifest["meta"]),
        )

    def backup_ids(self) -> list[str]:
        return sorted(info.name[len(BACKUPS_DIR) :] for info in self.backend.list(BACKUPS_DIR))

    def backups(self, source: str | None = None) -> list[BackupInfo]:
        """Committed backups whose manifests are intact, oldest first; needs only the write key.

        A damaged manifest costs only its own backup: it is left out here, logged once, and
        recorded in ``damaged_manifests`` (``backups list`` shows it, ``repair`` moves it aside).
        """
        drilled = {info.name[len(DRILLS_DIR) :] for info in self.backend.list(DRILLS_DIR)}
        result = []
        for backup_id in self.backup_ids():
            try:
                manifest = self.load_manifest_meta(backup_id)
                info = self.info_from_manifest(manifest, drilled=backup_id in drilled)
            except ObjectNotFound:  # removed by a concurrent prune
                continue
            except (IntegrityError, KeyError, TypeError, ValueError) as exc:
                why = exc.message if isinstance(exc, IntegrityError) else f"malformed ({exc!r})"
                if backup_id not in self.damaged_manifests:
                    # Said by whoever reads damaged_manifests (backups list, prune, restore).
                    logger.debug(
                        "backup %s is damaged and left out (%s); `crmmaint repo repair` moves it aside",
                        backup_id,
                        why,
                    )
                self.damaged_manifests[backup_id] = why
                continue
            self.damaged_manifests.pop(backup_id, None)
            if source is None or info.source == source:
                result.append(info)
        return sorted(result, key=lambda b: (b.time, b.id))

    def damage(self) -> dict[str, str]:
        """Damaged manifests and index segments as found by the last listing and index
        refresh: object name -> why. Empty for a sound repository."""
        found = {manifest_name(b): why for b, why in self.damaged_manifests.items()}
        found.update(self.index.damaged)
        return found

    def mark_drilled(self, backup_id: str, result: dict[str, Any]) -> None:
        """Record a successful drill so prune protects the newest drilled backup."""
        self.load_manifest_meta(backup_id)
        name = drill_name(backup_id)
        record = {"backup_id": backup_id, "time": time.time(), "result": result}
        self.backend.store(
            name, seal_json(self.keys.metadata_key, name, record, algorithm=self.aead)
        )

    def drill_result(self, backup_id: str) -> dict[str, Any] | None:
        name = drill_name(check_backup_id(backup_id))
        try:
            return open_json(self.keys.metadata_key, name, self.backend.load(name))
        except ObjectNotFound:
            return None

    # --- reading, verify, prune (implemented in their own modules) ----------------------------

    def manifest(self, backup_id: str, identities: Sequence[Identity]) -> Manifest:
        """Decrypt a backup's manifest and facts; WrongKeyError if no identity fits."""
        from crmmaint.repository.reader import load_manifest

        return load_manifest(self, backup_id, identities)

    def read_stream(
        self, backup_id: str, name: str, identities: Sequence[Identity]
    ) -> Iterator[bytes]:
        """Plaintext of one stream, in order, every chunk authenticated and its id rechecked."""
        from crmmaint.repository.reader import read_stream

        return read_stream(self, backup_id, name, identities)

    def stream_ranges(
        self, backup_id: str, name: str, identities: Sequence[Identity]
    ) -> StreamRanges:
        """One stream for reading byte ranges (parallel restores); keys and index checked now."""
        from crmmaint.repository.reader import stream_ranges

        return stream_ranges(self, backup_id, name, identities)

    def verify(
        self,
        *,
        read_data: bool = False,
        subset_percent: float | None = None,
        identities: Sequence[Identity] | None = None,
        progress: Callable[[int, int], None] | None = None,
        expected_backups: Iterable[str] = (),
    ) -> VerifyReport:
        """Check metadata consistency; optionally pack hashes and (with identities) every chunk;
        ``expected_backups`` (ids the journal recorded) must be listed or accounted for."""
        from crmmaint.repository.verify import verify

        return verify(
            self,
            read_data=read_data,
            subset_percent=subset_percent,
            identities=identities,
            progress=progress,
            expected_backups=expected_backups,
        )

    def repair(self, *, apply: bool) -> RepairReport:
        """Move damaged objects aside (with ``apply``; else report what would move)."""
        from crmmaint.repository.repair import repair

        return repair(self, apply=apply)

    def prune(self, policy: RetentionPolicy, *, now: float, dry_run: bool) -> PruneReport:
        """Remove backups the policy does not keep, then the data only they referenced."""
        from crmmaint.repository.gc import prune

        return prune(self, policy, now=now, dry_run=dry_run)


__all__ = ["BackupInfo", "ChunkerParams", "Repository", "StreamInfo"]
