"""Encryption for backups: recipients and identities (keys), the sealed-blob envelope, and the
repository keys derived from the write key. Byte formats are specified in docs/keys.md."""

from crmmaint.crypto.envelope import (
    ALGORITHMS,
    RepositoryKeys,
    chunk_id,
    derive_repository_keys,
    new_data_key,
    new_write_key,
    open_sealed,
    seal,
    unwrap_data_key,
    wrap_data_key,
)
from crmmaint.crypto.keys import (
    Identity,
    PassphraseIdentity,
    PassphraseRecipient,
    Recipient,
    X25519Identity,
    X25519Recipient,
    load_identity_file,
    parse_recipient,
    read_private_file,
    read_secret,
    write_identity_file,
)

__all__ = [
    "ALGORITHMS",
    "Identity",
    "PassphraseIdentity",
    "PassphraseRecipient",
    "Recipient",
    "RepositoryKeys",
    "X25519Identity",
    "X25519Recipient",
    "chunk_id",
    "derive_repository_keys",
    "load_identity_file",
    "new_data_key",
    "new_write_key",
    "open_sealed",
    "parse_recipient",
    "read_private_file",
    "read_secret",
    "seal",
    "unwrap_data_key",
    "wrap_data_key",
    "write_identity_file",
]
