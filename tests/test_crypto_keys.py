"""Recipients, identities, key strings, identity files and secret sources."""

from __future__ import annotations

import base64
import os
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from crmmaint.crypto import (
    PassphraseIdentity,
    PassphraseRecipient,
    X25519Identity,
    X25519Recipient,
    load_identity_file,
    parse_recipient,
    read_secret,
    write_identity_file,
)
from crmmaint.crypto import keys as keys_module
from crmmaint.crypto.keys import _scrypt_wrap, _x25519_shared, _x25519_wrap
from crmmaint.errors import CryptoError, KeyFileError

# RFC 7748 section 6.1: Alice's secret is our ephemeral key, Bob is the recipient.
ALICE_SECRET = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
BOB_SECRET = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
BOB_SECRET_STRING = (
    "CRMMAINT-SECRET-KEY-1LWVQQ7TCJKFEW6PBP6FYHAAO4ZXTXMJJEYMLN7I4F6FSP74I4DVR4CXNQY"
)
BOB_PUBLIC_STRING = "crmpub132pnw7l3pxa3ju23mhbozzbvg47ygq6iln4gotnn7r7bi34ifnhwxwgcty"
DATA_KEY = bytes(range(32, 64))


def bob() -> X25519Identity:
    return X25519Identity(X25519PrivateKey.from_private_bytes(BOB_SECRET))


# --- known answers -----------------------------------------------------------------------------


def test_x25519_rfc7748_shared_secret() -> None:
    assert _x25519_shared(X25519PrivateKey.from_private_bytes(ALICE_SECRET), BOB_PUBLIC) == SHARED


def test_key_strings_known_answer() -> None:
    identity = bob()
    assert identity.to_string() == BOB_SECRET_STRING
    assert identity.recipient().to_string() == BOB_PUBLIC_STRING
    assert X25519Identity.from_string(BOB_SECRET_STRING).recipient().public_bytes == BOB_PUBLIC
    assert parse_recipient(BOB_PUBLIC_STRING) == X25519Recipient(BOB_PUBLIC)


def test_x25519_stanza_known_answer() -> None:
    stanza = _x25519_wrap(BOB_PUBLIC, DATA_KEY, X25519PrivateKey.from_private_bytes(ALICE_SECRET))
    assert stanza == {
        "type": "X25519",
        "epk": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=",
        "body": "QCMlYfSxGOeBgN9O3UWgwweZiVSL8Jr2wfgocORQYXfRw7SmvQraCxv5Qxvk7Eje",
    }
    assert bob().unwrap(stanza) == DATA_KEY


def test_scrypt_stanza_known_answer() -> None:
    stanza = _scrypt_wrap(b"correct horse", DATA_KEY, bytes(range(16)), 10)
    assert stanza == {
        "type": "scrypt",
        "salt": "AAECAwQFBgcICQoLDA0ODw==",
        "log_n": "10",
        "body": "+KsIAvh5GJa32XpXzXuJZJShhPmcUyEfKTBu0ZmaNTP/W43a3QwJoTmWFX5R+t1S",
    }
    assert PassphraseIdentity(b"correct horse").unwrap(stanza) == DATA_KEY


# --- key strings -------------------------------------------------------------------------------


def test_generated_identity_round_trips_through_strings() -> None:
    identity = X25519Identity.generate()
    again = X25519Identity.from_string(identity.to_string())
    assert again.recipient() == identity.recipient()
    public = identity.recipient().to_string()
    assert public.startswith("crmpub1") and public == public.lower()
    assert parse_recipient(public.upper()) == identity.recipient()


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_public_key_typo_is_caught(data: st.DataObject) -> None:
    body = BOB_PUBLIC_STRING[len("crmpub1") :]
    index = data.draw(st.integers(0, len(body) - 1))
    alphabet = "abcdefghijklmnopqrstuvwxyz234567".replace(body[index], "")
    typo = body[:index] + data.draw(st.sampled_from(alphabet)) + body[index + 1 :]
    with pytest.raises(CryptoError):
        parse_recipient("crmpub1" + typo)


def test_key_string_unused_bits_must_be_zero() -> None:
    """The last base32 character carries 2 unused bits; a typo there must not pass."""
    assert BOB_PUBLIC_STRING.endswith("y")
    with pytest.raises(CryptoError):
        parse_recipient(BOB_PUBLIC_STRING[:-1] + "z")


@pytest.mark.parametrize(
    "text",
    ["", "age1abc", BOB_PUBLIC_STRING[:-1], BOB_PUBLIC_STRING + "q", BOB_SECRET_STRING],
)
def test_parse_recipient_rejects(text: str) -> None:
    with pytest.raises(CryptoError):
        parse_recipient(text)


def test_secret_string_typo_is_caught_without_echo() -> None:
    broken = BOB_SECRET_STRING[:30] + ("A" if BOB_SECRET_STRING[30] != "A" else "B")
    broken += BOB_SECRET_STRING[31:]
    with pytest.raises(CryptoError) as info:
        X25519Identity.from_string(broken)
    assert BOB_SECRET_STRING[21:40] not in str(info.value)


# --- wrapping ----------------------------------------------------------------------------------


def test_x25519_wrap_unwrap_and_stanza_shape() -> None:
    identity = X25519Identity.generate()
    stanza = identity.recipient().wrap(DATA_KEY)
    assert all(isinstance(v, str) for v in stanza.values())
    assert len(base64.b64decode(stanza["epk"])) == 32
    assert len(base64.b64decode(stanza["body"])) == 48
    assert identity.unwrap(stanza) == DATA_KEY
    assert X25519Identity.generate().unwrap(stanza) is None
    assert identity.recipient().wrap(DATA_KEY) != stanza  # fresh ephemeral key each time


def test_x25519_rejects_all_zero_shared_secret() -> None:
    with pytest.raises(CryptoError, match="all-zero"):
        X25519Recipient(bytes(32)).wrap(DATA_KEY)
    stanza = {"type": "X25519", "epk": base64.b64encode(bytes(32)).decode(), "body": "A" * 64}
    with pytest.raises(CryptoError, match="all-zero"):
        X25519Identity.generate().unwrap(stanza)


def test_identity_ignores_other_stanza_types() -> None:
    x = X25519Identity.generate()
    scrypt_stanza = PassphraseRecipient(b"pw").wrap(DATA_KEY)
    assert x.unwrap(scrypt_stanza) is None
    assert PassphraseIdentity(b"pw").unwrap(x.recipient().wrap(DATA_KEY)) is None
    assert x.unwrap({"type": "ssh-ed25519"}) is None


def test_malformed_stanza_is_a_crypto_error() -> None:
    with pytest.raises(CryptoError, match="malformed"):
        X25519Identity.generate().unwrap({"type": "X25519", "epk": "!!", "body": ""})


def test_passphrase_right_and_wrong() -> None:
    stanza = PassphraseRecipient(b"correct horse").wrap(DATA_KEY)
    assert stanza["log_n"] == "10"  # conftest lowers the cost for this process only
    assert PassphraseIdentity(b"correct horse").unwrap(stanza) == DATA_KEY
    assert PassphraseIdentity(b"wrong horse").unwrap(stanza) is None
    assert PassphraseIdentity(b"x").recipient().to_string() == "passphrase (scrypt)"


def test_production_scrypt_cost_is_not_lowered_by_the_environment() -> None:
    """A CLI run with any CRMMAINT_* variable set still writes scrypt stanzas at log_n 18."""
    code = (
        "from crmmaint.crypto.keys import PassphraseRecipient;"
        "print(PassphraseRecipient(b'pw').wrap(bytes(32))['log_n'])"
    )
    env = {**os.environ, "CRMMAINT_TEST_WEAK_KDF": "1", "CRMMAINT_SCRYPT_LOG_N": "10"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "18"


@pytest.mark.parametrize("log_n", ["9", "21", "22", "23", "40", "-1", "x", "²", "1" * 5000, " 18"])
def test_passphrase_refuses_out_of_range_work_factor(log_n: str) -> None:
    stanza = PassphraseRecipient(b"pw").wrap(DATA_KEY) | {"log_n": log_n}
    with pytest.raises(CryptoError, match="log_n"):
        PassphraseIdentity(b"pw").unwrap(stanza)


def test_empty_passphrase_refused() -> None:
    with pytest.raises(CryptoError):
        PassphraseRecipient(b"")


# --- secrets never shown -----------------------------------------------------------------------


def test_reprs_hide_secrets() -> None:
    identity = bob()
    secret_body = BOB_SECRET_STRING[len("CRMMAINT-SECRET-KEY-1") :]
    for shown in (repr(identity), str(identity), repr(identity.recipient())):
        assert secret_body not in shown and BOB_SECRET.hex() not in shown
    assert BOB_PUBLIC_STRING in repr(identity)
    for obj in (PassphraseIdentity(b"hunter22"), PassphraseRecipient(b"hunter22")):
        assert "hunter22" not in repr(obj) and "hunter22" not in str(obj)


# --- identity files ----------------------------------------------------------------------------


def test_identity_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "identity.txt"
    identity = X25519Identity.generate()
    write_identity_file(path, identity)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# crmmaint identity, created ")
    assert lines[1] == f"# public key: {identity.recipient().to_string()}"
    assert lines[2] == identity.to_string()
    assert load_identity_file(path).recipient() == identity.recipient()


def test_an_identity_file_makes_one_missing_folder_at_most(tmp_path: Path) -> None:
    """`keys/ops.key` beside the inventory makes `keys/` (0700); a path whose folders are
    missing further up (a typo) or whose folder is a file is refused, and nothing is made."""
    identity = X25519Identity.generate()
    write_identity_file(tmp_path / "keys" / "ops.key", identity)
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    with pytest.raises(KeyFileError, match="does not exist"):
        write_identity_file(tmp_path / "typo" / "keys" / "ops.key", identity)
    (tmp_path / "file").write_text("")
    with pytest.raises(KeyFileError, match="is not a folder"):
        write_identity_file(tmp_path / "file" / "ops.key", identity)
    assert sorted(os.listdir(tmp_path)) == ["file", "keys"]


def test_identity_file_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "identity.txt"
    first, second = X25519Identity.generate(), X25519Identity.generate()
    write_identity_file(path, first)
    with pytest.raises(KeyFileError, match="already exists"):
        write_identity_file(path, second)
    assert load_identity_file(path).recipient() == first.recipient()
    write_identity_file(path, second, overwrite=True)
    assert load_identity_file(path).recipient() == second.recipient()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["identity.txt"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_open_identity_file_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "identity.txt"
    identity = X25519Identity.generate()
    write_identity_file(path, identity)
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_identity_file(path)
    assert f"chmod 600 {path}" in str(info.value)
    assert identity.to_string() not in str(info.value)


def test_missing_identity_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        load_identity_file(tmp_path / "nope")


@pytest.mark.parametrize(
    "content",
    ["", "# only a comment\n", f"{BOB_SECRET_STRING}\n{BOB_SECRET_STRING}\n", "garbage\n"],
)
def test_malformed_identity_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "identity.txt"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="malformed"):
        load_identity_file(path)


def test_malformed_identity_file_does_not_echo_secret(tmp_path: Path) -> None:
    path = tmp_path / "identity.txt"
    path.write_text(BOB_SECRET_STRING[:-2] + "\n")
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as info:
        load_identity_file(path)
    assert BOB_SECRET_STRING[21:50] not in str(info.value)


# --- secret sources ----------------------------------------------------------------------------


def test_read_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMMAINT_PASSPHRASE", "s3cret value")
    assert read_secret("env:CRMMAINT_PASSPHRASE") == b"s3cret value"
    with pytest.raises(CryptoError, match="CRMMAINT_UNSET"):
        read_secret("env:CRMMAINT_UNSET")


def test_read_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    path.write_bytes(b"line one\n\n")
    path.chmod(0o600)
    assert read_secret(f"file:{path}") == b"line one\n"
    path.write_bytes(b"no newline")
    assert read_secret(f"file:{path}") == b"no newline"
    with pytest.raises(KeyFileError, match="not found"):
        read_secret(f"file:{tmp_path / 'missing'}")


@pytest.mark.parametrize("which", ["secret", "identity", "write key"])
def test_key_and_secret_files_others_can_read_or_that_are_links_are_refused(
    tmp_path: Path, which: str
) -> None:
    """Checked on the open file: a group-readable file, or a link (which could be swapped
    between a check and the read), is refused, not warned about."""
    from crmmaint.repository.configured import load_write_key, write_write_key

    path = tmp_path / "key"
    if which == "identity":
        write_identity_file(path, X25519Identity.generate())
    elif which == "write key":
        write_write_key(path)
    else:
        path.write_bytes(b"hunter2\n")
    load = {
        "secret": lambda p: read_secret(f"file:{p}"),
        "identity": load_identity_file,
        "write key": load_write_key,
    }[which]
    path.chmod(0o600)
    load(path)
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="readable by group or others"):
        load(path)
    path.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(KeyFileError, match="is a symbolic link"):
        load(link)


def test_read_secret_cmd() -> None:
    assert read_secret("cmd:printf 'from command\\n'") == b"from command"
    assert read_secret("cmd:echo a | tr a b") == b"b"


def test_read_secret_cmd_failure_does_not_echo() -> None:
    with pytest.raises(CryptoError) as info:
        read_secret("cmd:echo leaked-output; echo leaked-error >&2; exit 3")
    message = str(info.value)
    assert "exit status 3" in message
    assert "leaked" not in message


def _running(token: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", token], capture_output=True, text=True)
    return found.stdout.split()


def _wait_gone(token: str, seconds: float = 5.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := _running(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.parametrize(
    "command",
    ["sleep {t}", "sh -c 'sleep {t}; echo x'", "sleep {t} | cat", "(sleep {t} &) ; sleep {t}"],
)
def test_a_secret_command_past_its_timeout_leaves_nothing_running(command, monkeypatch) -> None:
    """The shell and all it started are killed (a process group), however it nests them."""
    token = f"{secrets.randbelow(10**6) + 10**6}.{secrets.randbelow(999) + 1}"
    monkeypatch.setattr(keys_module, "SECRET_COMMAND_TIMEOUT", 0.5)
    with pytest.raises(CryptoError, match="timed out"):
        read_secret("cmd:" + command.format(t=token))
    assert _wait_gone(token) == []


def test_a_secret_command_still_running_when_crmmaint_exits_is_killed(tmp_path) -> None:
    """A caller that gave up waiting (inventory check --connect's time guard) and exited."""
    token = f"{secrets.randbelow(10**6) + 10**6}.{secrets.randbelow(999) + 1}"
    script = (
        "import threading, time\n"
        "from crmmaint.crypto.keys import read_secret\n"
        f"threading.Thread(target=read_secret, args=('cmd:sleep {token}',), daemon=True).start()\n"
        "time.sleep(0.5)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    assert _wait_gone(token) == []


@pytest.mark.parametrize("spec", ["hunter22", "pass:hunter22", "env:", "hunter:22"])
def test_read_secret_refuses_literal(spec: str) -> None:
    with pytest.raises(CryptoError) as info:
        read_secret(spec)
    assert "env:" in str(info.value) and "file:" in str(info.value) and "cmd:" in str(info.value)
    assert "hunter" not in str(info.value)


def test_a_fifo_or_folder_as_a_key_file_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO must not hang the open (nothing writes to it), a folder is not a key file."""
    from crmmaint.crypto.keys import KeyFileError, read_private_file

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    folder = tmp_path / "folder"
    folder.mkdir(mode=0o700)
    for path in (fifo, folder):
        with pytest.raises(KeyFileError, match="not a regular file"):
            read_private_file(path, "identity file")


def test_keys_generate_writes_no_public_key_through_a_link_or_over_a_file(tmp_path: Path) -> None:
    from clirun import run_cli

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / "b.pub").symlink_to(victim)
    done = run_cli("keys", "generate", "--output", str(tmp_path / "b.key"))
    assert done.returncode == 3 and "b.pub exists" in done.stderr, done.stderr
    assert victim.read_text() == "keep me\n" and not (tmp_path / "b.key").exists()
    forced = run_cli("keys", "generate", "--output", str(tmp_path / "b.key"), "--force")
    assert forced.returncode == 0, forced.stderr
    assert victim.read_text() == "keep me\n"
    assert not (tmp_path / "b.pub").is_symlink() and "crmpub" in (tmp_path / "b.pub").read_text()
