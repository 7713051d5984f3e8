"""Sealed envelope, data-key wrapping and repository keys: vectors, round trips, tampering."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from crmmaint.crypto import (
    ALGORITHMS,
    PassphraseIdentity,
    PassphraseRecipient,
    RepositoryKeys,
    X25519Identity,
    chunk_id,
    derive_repository_keys,
    new_data_key,
    new_write_key,
    open_sealed,
    seal,
    unwrap_data_key,
    wrap_data_key,
)
from crmmaint.crypto.envelope import OVERHEAD, _seal_with_nonce
from crmmaint.errors import CryptoError, IntegrityError, WrongKeyError

KEY = bytes(range(32))
NONCE = bytes(range(100, 112))
PLAINTEXT = b"crmmaint test vector"
AAD = b"chunk 01"
SEAL_VECTORS = {
    "aes-256-gcm": "016465666768696a6b6c6d6e6f2b69b30b188038ea1e163a9bae451c9821b669"
    "78241fd44a80ab91b666791a3c089f18e2",
    "chacha20-poly1305": "026465666768696a6b6c6d6e6f5763d6a7f9cc1826dbaa700c86a9aef613b2fd"
    "4682a5c61e6e5b35a51e7bc6b817d7c710",
}

# --- known answers -----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_seal_known_answer(algorithm: str) -> None:
    blob = _seal_with_nonce(KEY, PLAINTEXT, aad=AAD, algorithm=algorithm, nonce=NONCE)
    assert blob.hex() == SEAL_VECTORS[algorithm]
    assert open_sealed(KEY, blob, aad=AAD, name="v") == PLAINTEXT


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_seal_layout_matches_plain_aead(algorithm: str) -> None:
    """An independent reader: id || nonce || AEAD(key, nonce, pt, aad = id || caller aad)."""
    blob = _seal_with_nonce(KEY, PLAINTEXT, aad=AAD, algorithm=algorithm, nonce=NONCE)
    cipher = AESGCM if algorithm == "aes-256-gcm" else ChaCha20Poly1305
    assert blob[1:13] == NONCE
    assert cipher(KEY).decrypt(blob[1:13], blob[13:], blob[:1] + AAD) == PLAINTEXT
    assert len(blob) == len(PLAINTEXT) + OVERHEAD


def _hkdf_sha256(ikm: bytes, info: bytes) -> bytes:
    """RFC 5869 with no salt, written out so the vector does not rest on our own code."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_repository_keys_known_answer() -> None:
    keys = derive_repository_keys(bytes(range(32)))
    assert keys.chunk_id_key.hex() == (
        "e21ba16011d107ba8ed2658b6a40affba4d6003b8b5d7d14c91b909d87a9536c"
    )
    assert keys.metadata_key.hex() == (
        "c40b176b49210afdd993a1d5a9b1a1f0f25ab2f5b4bc69fe0a53745fd19188ca"
    )
    assert keys.chunk_id_key == _hkdf_sha256(bytes(range(32)), b"crmmaint chunk-id v1")
    assert keys.metadata_key == _hkdf_sha256(bytes(range(32)), b"crmmaint metadata v1")


def test_chunk_id_known_answer() -> None:
    keys = derive_repository_keys(bytes(range(32)))
    assert chunk_id(keys.chunk_id_key, b"hello crmmaint").hex() == (
        "f6d05e4002ee9ad2e182edb61422a249f66d46fd1aa6de8ec603e33b1e590b6f"
    )


def test_chunk_id_depends_on_key_and_data() -> None:
    a, b = new_write_key(), new_write_key()
    assert chunk_id(a, b"x") != chunk_id(b, b"x")
    assert chunk_id(a, b"x") != chunk_id(a, b"y")
    assert len(chunk_id(a, b"")) == 32


def test_repository_keys_hide_secrets_and_check_length() -> None:
    keys = derive_repository_keys(new_write_key())
    assert isinstance(keys, RepositoryKeys)
    assert keys.chunk_id_key != keys.metadata_key
    assert keys.chunk_id_key.hex() not in repr(keys)
    with pytest.raises(ValueError):
        derive_repository_keys(b"short")


def test_new_keys_are_random_32_bytes() -> None:
    assert len(new_data_key()) == len(new_write_key()) == 32
    assert new_data_key() != new_data_key()


# --- round trips and tampering -----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    plaintext=st.binary(max_size=2048),
    aad=st.binary(max_size=64),
    algorithm=st.sampled_from(ALGORITHMS),
)
def test_round_trip(plaintext: bytes, aad: bytes, algorithm: str) -> None:
    blob = seal(KEY, plaintext, aad=aad, algorithm=algorithm)
    assert blob[0] == ALGORITHMS.index(algorithm) + 1
    assert open_sealed(KEY, blob, aad=aad, name="c") == plaintext


def test_nonces_differ() -> None:
    assert seal(KEY, b"same", aad=b"") != seal(KEY, b"same", aad=b"")


@settings(max_examples=100, deadline=None)
@given(data=st.data(), plaintext=st.binary(max_size=256), algorithm=st.sampled_from(ALGORITHMS))
def test_any_flipped_bit_fails(data: st.DataObject, plaintext: bytes, algorithm: str) -> None:
    blob = bytearray(seal(KEY, plaintext, aad=AAD, algorithm=algorithm))
    index = data.draw(st.integers(0, len(blob) - 1))
    blob[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(IntegrityError, match="object chunk/ab12 failed authentication"):
        open_sealed(KEY, bytes(blob), aad=AAD, name="chunk/ab12")


@settings(max_examples=100, deadline=None)
@given(data=st.data(), plaintext=st.binary(max_size=256))
def test_any_truncation_fails(data: st.DataObject, plaintext: bytes) -> None:
    blob = seal(KEY, plaintext, aad=AAD)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(IntegrityError, match="modified or truncated"):
        open_sealed(KEY, blob[:cut], aad=AAD, name="n")


@settings(max_examples=50, deadline=None)
@given(aad=st.binary(max_size=32), other=st.binary(max_size=32))
def test_wrong_aad_fails(aad: bytes, other: bytes) -> None:
    if aad == other:
        return
    blob = seal(KEY, b"payload", aad=aad)
    with pytest.raises(IntegrityError):
        open_sealed(KEY, blob, aad=other, name="n")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_key_fails(algorithm: str) -> None:
    blob = seal(KEY, b"payload", aad=AAD, algorithm=algorithm)
    with pytest.raises(IntegrityError):
        open_sealed(new_data_key(), blob, aad=AAD, name="n")


def test_appended_bytes_and_algorithm_swap_fail() -> None:
    blob = seal(KEY, b"payload", aad=AAD)
    with pytest.raises(IntegrityError):
        open_sealed(KEY, blob + b"\x00", aad=AAD, name="n")
    for algorithm_id in (0, 2, 3, 255):
        with pytest.raises(IntegrityError):
            open_sealed(KEY, bytes([algorithm_id]) + blob[1:], aad=AAD, name="n")


def test_integrity_error_names_object_and_hints_verify() -> None:
    with pytest.raises(IntegrityError) as info:
        open_sealed(KEY, b"garbage", aad=AAD, name="pack 7f3e")
    assert "pack 7f3e" in str(info.value)
    assert "crmmaint verify --read-data" in str(info.value)
    assert info.value.exit_code == 9


def test_seal_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        seal(KEY, b"x", aad=b"", algorithm="des")
    with pytest.raises(ValueError):
        seal(b"short", b"x", aad=b"")


def test_large_chunk_round_trip() -> None:
    data = bytes(range(256)) * (4 << 12)  # 4 MiB
    blob = seal(KEY, data, aad=b"big")
    assert open_sealed(KEY, blob, aad=b"big", name="big") == data


# --- data keys ---------------------------------------------------------------------------------


def test_wrap_for_several_recipients_each_can_unwrap() -> None:
    identities = [X25519Identity.generate() for _ in range(3)]
    data_key = new_data_key()
    stanzas = wrap_data_key(data_key, [i.recipient() for i in identities])
    assert len(stanzas) == 3
    for identity in identities:
        assert unwrap_data_key(stanzas, [identity], name="b") == data_key


def test_mixed_recipients_and_passphrase() -> None:
    x = X25519Identity.generate()
    data_key = new_data_key()
    stanzas = wrap_data_key(data_key, [x.recipient(), PassphraseRecipient(b"pw")])
    assert unwrap_data_key(stanzas, [PassphraseIdentity(b"pw")], name="b") == data_key
    assert unwrap_data_key(stanzas, [PassphraseIdentity(b"no"), x], name="b") == data_key


def test_wrong_identity_raises_wrong_key_error_describing_stanzas() -> None:
    stanzas = wrap_data_key(
        new_data_key(),
        [
            X25519Identity.generate().recipient(),
            X25519Identity.generate().recipient(),
            PassphraseRecipient(b"secret passphrase"),
        ],
    )
    with pytest.raises(WrongKeyError) as info:
        unwrap_data_key(
            stanzas,
            [X25519Identity.generate(), PassphraseIdentity(b"wrong passphrase")],
            name="backup 2024-05-01",
        )
    message = str(info.value)
    assert "backup 2024-05-01" in message
    assert "2 X25519 recipients and a passphrase" in message
    assert "passphrase" in message and "secret passphrase" not in message
    assert "wrong passphrase" not in message


def test_no_identities_and_no_recipients() -> None:
    stanzas = wrap_data_key(new_data_key(), [X25519Identity.generate().recipient()])
    with pytest.raises(WrongKeyError, match="an X25519 recipient"):
        unwrap_data_key(stanzas, [], name="b")
    with pytest.raises(CryptoError, match="no recipients"):
        wrap_data_key(new_data_key(), [])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_seal_without_encrypt_into_gives_same_bytes(
    algorithm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cryptography < 45 has no encrypt_into; the fallback must write the same format."""

    class PlainAead:
        def __init__(self, algorithm_id: int, key: bytes) -> None:
            self._aead = (AESGCM if algorithm_id == 1 else ChaCha20Poly1305)(key)

        def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
            return self._aead.encrypt(nonce, data, aad)

    monkeypatch.setattr("crmmaint.crypto.envelope._cipher", PlainAead)
    blob = _seal_with_nonce(KEY, PLAINTEXT, aad=AAD, algorithm=algorithm, nonce=NONCE)
    assert blob.hex() == SEAL_VECTORS[algorithm]
