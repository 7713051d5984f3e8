"""Open a repository as the inventory configures it: backend, write key, recipients, identities.

Shared by the backup tasks and the CLI so that every path reads keys the same way: key files must
be 0600, public keys may be given inline or as ``file:PATH``, and a passphrase comes only from a
secret source. Nothing here logs or returns a secret.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crmmaint.crypto import (
    Identity,
    PassphraseIdentity,
    PassphraseRecipient,
    Recipient,
    load_identity_file,
    new_write_key,
    parse_recipient,
    read_private_file,
)
from crmmaint.errors import ConfigError, KeyFileError, WrongKeyError
from crmmaint.inventory import RepositorySettings
from crmmaint.yamlsource import read_regular_file

WRITE_KEY_HEADER = "# crmmaint repository write key: keep it 0600; it cannot decrypt backups"


def write_write_key(path: str | Path) -> bytes:
    """Create a new write key file (0600, never overwritten) and return the key."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = new_write_key()
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"write key {p} already exists",
            hint="each repository has one write key; reuse it, or choose another path",
        ) from None
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{WRITE_KEY_HEADER}\n{base64.b64encode(key).decode()}\n")
    return key


def load_write_key(path: str | Path) -> bytes:
    """Read a write key file; refuses one that others can read."""
    p = Path(path).expanduser()
    raw = read_private_file(
        p,
        "write key",
        missing_hint="run `crmmaint repo init` to create the repository and its write key",
    )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(
            f"write key {p} is malformed (not text)", hint="restore it from your key backup"
        ) from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    try:
        key = base64.b64decode(lines[0], validate=True) if len(lines) == 1 else b""
    except ValueError:
        key = b""
    if len(key) != 32:
        raise KeyFileError(f"write key {p} is malformed", hint="restore it from your key backup")
    return key


def recipients_for(cfg: RepositorySettings) -> list[Recipient]:
    """The repository's recipients; a passphrase counts as one when configured."""
    out: list[Recipient] = []
    for ref in cfg.recipients:
        text = ref
        if ref.startswith("file:"):
            try:
                lines = read_regular_file(ref[5:]).decode("utf-8", "replace").splitlines()
            except OSError as exc:
                raise ConfigError(
                    f"repository {cfg.name!r}: cannot read recipient file {ref[5:]}: {exc.strerror}"
                ) from None
            keys = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
            if not keys:
                raise ConfigError(f"repository {cfg.name!r}: recipient file {ref[5:]} holds no key")
            out.extend(parse_recipient(k) for k in keys)
            continue
        out.append(parse_recipient(text))
    if cfg.passphrase is not None:
        out.append(PassphraseRecipient(cfg.passphrase.resolve()))
    if not out:
        raise ConfigError(
            f"repository {cfg.name!r} has no recipients",
            hint="add 'recipients:' (public keys from `crmmaint keys generate`) or 'passphrase:'",
        )
    return out


def identities_for(cfg: RepositorySettings, identity_file: str | None = None) -> list[Identity]:
    """Identities that can decrypt: the given or configured identity file, and/or a passphrase."""
    out: list[Identity] = []
    path = identity_file or cfg.identity or os.environ.get("CRMMAINT_IDENTITY")
    if path:
        out.append(load_identity_file(path))
    if cfg.passphrase is not None:
        out.append(PassphraseIdentity(cfg.passphrase.resolve()))
    if not out:
        raise KeyFileError(
            f"repository {cfg.name!r}: no identity to decrypt with",
            hint="pass --identity FILE, set CRMMAINT_IDENTITY, or add 'identity:' to the repository",
        )
    return out


def check_keys(cfg: RepositorySettings, identity_file: str | None = None) -> list[dict[str, str]]:
    """Check a repository's keys without touching the repository or decrypting anything: the
    write key file (present, 0600, well formed), the recipients (each one parses), and, when an
    identity is given or configured, that it is one of the recipients.

    Returns one ``{"check": ..., "result": ...}`` row per check passed. Raises the first
    failure: ``KeyFileError`` (write key or identity file), ``WrongKeyError`` (an identity
    that is not a recipient), ``ConfigError`` (no write key configured, recipients) or
    ``CryptoError`` (a passphrase source); none carries a secret. Shared by ``keys check`` and ``inventory check --connect``.
    """
    checks: list[dict[str, str]] = []
    if not cfg.write_key:
        raise ConfigError(
            f"repository {cfg.name!r} has no write_key",
            hint="add 'write_key: PATH' (created by `crmmaint repo init`)",
        )
    load_write_key(cfg.write_key)
    checks.append({"check": "write key", "result": f"{cfg.write_key}: ok (0600)"})
    recipients = recipients_for(cfg)
    checks.append({"check": "recipients", "result": f"{len(recipients)} valid"})
    if identity_file or cfg.identity:
        ids = identities_for(cfg, identity_file)
        publics = {r.to_string() for r in recipients}
        if not any(i.recipient().to_string() in publics for i in ids):
            raise WrongKeyError(
                f"repository {cfg.name!r}: identity {identity_file or cfg.identity} is not one "
                "of its recipients",
                hint="backups are not encrypted to it; use the identity whose public key is listed",
            )
        checks.append({"check": "identity", "result": "matches a recipient"})
    return checks


def backend_for(cfg: RepositorySettings):
    from crmmaint.repository.backends import open_backend

    return open_backend(cfg.url, **cfg.options)


@contextmanager
def open_repository(cfg: RepositorySettings, *, reading: str | None = None) -> Iterator[object]:
    """Open the configured repository for the duration of the block.

    ``reading`` names what the block reads (``"restore database:crm"``): the block then holds a
    shared repository lock, so a prune (exclusive) cannot delete what it reads, and waits for
    one that runs (``LockError``, exit 7, after the lock timeout). Backups take their own
    shared lock in the write session; prune its exclusive one.
    """
    from crmmaint.repository import Repository

    if not cfg.write_key:
        raise ConfigError(
            f"repository {cfg.name!r} has no write_key",
            hint="add 'write_key: PATH' (created by `crmmaint repo init`)",
        )
    key = load_write_key(cfg.write_key)
    backend = backend_for(cfg)
    backend.open()
    try:
        repo = Repository.open(backend, key)
        if cfg.compression is not None:  # this inventory's choice for what it writes
            repo.compression_level = cfg.compression
        repo.lock_wait = cfg.lock_wait
        if reading is None:
            yield repo
        else:
            with repo.lock(exclusive=False, purpose=reading):
                yield repo
    finally:
        backend.close()


def init_repository(cfg: RepositorySettings) -> str:
    """Create the repository and, when absent, its write key; returns what was done."""
    from crmmaint.repository import Repository
    from crmmaint.repository.repository import DEFAULT_COMPRESSION_LEVEL

    if not cfg.write_key:
        raise ConfigError(
            f"repository {cfg.name!r} has no write_key path", hint="add 'write_key: PATH'"
        )
    created_key = not Path(cfg.write_key).exists()
    key = write_write_key(cfg.write_key) if created_key else load_write_key(cfg.write_key)
    backend = backend_for(cfg)
    try:
        level = DEFAULT_COMPRESSION_LEVEL if cfg.compression is None else cfg.compression
        repo = Repository.init(backend, key, compression_level=level)
    finally:
        backend.close()
    done = f"initialised {cfg.url} (zstd level {repo.compression_level})"
    return done + (f"; new write key {cfg.write_key}" if created_key else "")
