"""Recipients and identities: who a per-backup data key is wrapped for, and who can unwrap it.

An X25519 recipient wraps in the manner of age (ephemeral key, HKDF, ChaCha20-Poly1305); a
passphrase recipient wraps under an scrypt-derived key. Byte formats are in docs/keys.md.
"""

from __future__ import annotations

import abc
import atexit
import base64
import binascii
import contextlib
import errno
import hashlib
import logging
import os
import re
import signal
import stat
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from crmmaint.errors import CryptoError, KeyFileError

log = logging.getLogger(__name__)

PUBLIC_PREFIX = "crmpub1"
SECRET_PREFIX = "CRMMAINT-SECRET-KEY-1"
X25519_STANZA = "X25519"
SCRYPT_STANZA = "scrypt"
X25519_WRAP_INFO = b"crmmaint x25519 wrap v1"
SCRYPT_SALT_LABEL = b"crmmaint scrypt wrap v1"
SCRYPT_R = 8
SCRYPT_P = 1
#: scrypt cost of new passphrase stanzas: N = 2**18, r = 8 (256 MiB, about half a second), as
#: age uses. Nothing read from the environment can lower it.
SCRYPT_LOG_N = 18
SCRYPT_LOG_N_MIN = 10
#: The most a stanza may ask for: 2**20 x r 8 = 1 GiB of memory per attempt (22 would be 4 GiB;
#: a stanza is untrusted input).
SCRYPT_LOG_N_MAX = 20
SECRET_COMMAND_TIMEOUT = 60.0

_KEY_LEN = 32
_CHECKSUM_LEN = 4
_WRAPPED_LEN = _KEY_LEN + 16  # data key + Poly1305 tag
_ZERO_NONCE = bytes(12)  # each wrap key is used exactly once, so a fixed nonce is safe


# --- key strings -------------------------------------------------------------------------------


def _checksum(label: bytes, key: bytes) -> bytes:
    return hashlib.sha256(label + key).digest()[:_CHECKSUM_LEN]


def _encode_key(prefix: str, label: bytes, key: bytes) -> str:
    """prefix + base32(key || sha256(label || key)[:4]), unpadded."""
    body = base64.b32encode(key + _checksum(label, key)).decode("ascii").rstrip("=")
    return prefix + (body.lower() if prefix == PUBLIC_PREFIX else body)


def _decode_key(text: str, prefix: str, label: bytes, what: str) -> bytes:
    """Inverse of _encode_key; CryptoError (never echoing `text`) on any mismatch."""
    text = text.strip()
    if not text.upper().startswith(prefix.upper()):
        raise CryptoError(f"not a crmmaint {what}: it must start with {prefix!r}")
    body = text[len(prefix) :].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError):
        raw = b""
    key, checksum = raw[:_KEY_LEN], raw[_KEY_LEN:]
    canonical = base64.b32encode(raw).decode("ascii").rstrip("=")  # unused low bits must be 0
    if (
        len(raw) != _KEY_LEN + _CHECKSUM_LEN
        or checksum != _checksum(label, key)
        or canonical != body
    ):
        raise CryptoError(
            f"malformed crmmaint {what}: wrong length or checksum",
            hint="copy the key again; a character was probably mistyped or cut off",
        )
    return key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(stanza: dict, field: str, length: int | None) -> bytes:
    value = stanza.get(field)
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or (length is not None and len(raw) != length):
        raise CryptoError(f"malformed {stanza.get('type')} key stanza: bad field {field!r}")
    return raw


def _hkdf(key_material: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_LEN, salt=salt, info=info).derive(
        key_material
    )


def _decrypt_wrapped(wrap_key: bytes, body: bytes) -> bytes | None:
    try:
        return ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, body, None)
    except InvalidTag:
        return None


# --- recipients --------------------------------------------------------------------------------


class Recipient(abc.ABC):
    """Someone a data key can be wrapped for; holds no secret that decrypts anything."""

    @abc.abstractmethod
    def wrap(self, data_key: bytes) -> dict:
        """Return a JSON-able stanza (str values, base64 for bytes) holding the wrapped key."""

    @abc.abstractmethod
    def to_string(self) -> str:
        """Return a printable form that never contains a secret."""


class X25519Recipient(Recipient):
    """An X25519 public key (`crmpub1...`)."""

    __slots__ = ("_public",)

    def __init__(self, public_bytes: bytes) -> None:
        if len(public_bytes) != _KEY_LEN:
            raise CryptoError("an X25519 public key is 32 bytes")
        self._public = bytes(public_bytes)

    @classmethod
    def from_string(cls, text: str) -> X25519Recipient:
        """Parse a `crmpub1...` string, checking its checksum."""
        return cls(_decode_key(text, PUBLIC_PREFIX, b"crmmaint public key v1", "public key"))

    @property
    def public_bytes(self) -> bytes:
        return self._public

    def to_string(self) -> str:
        return _encode_key(PUBLIC_PREFIX, b"crmmaint public key v1", self._public)

    def wrap(self, data_key: bytes) -> dict:
        return _x25519_wrap(self._public, data_key, X25519PrivateKey.generate())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, X25519Recipient) and other._public == self._public

    def __hash__(self) -> int:
        return hash((X25519Recipient, self._public))

    def __repr__(self) -> str:
        return f"X25519Recipient({self.to_string()!r})"


def _x25519_wrap(recipient_pub: bytes, data_key: bytes, ephemeral: X25519PrivateKey) -> dict:
    """Wrap `data_key` for `recipient_pub` using the given ephemeral key (fixed in tests)."""
    _check_data_key(data_key)
    eph_pub = ephemeral.public_key().public_bytes_raw()
    shared = _x25519_shared(ephemeral, recipient_pub)
    wrap_key = _hkdf(shared, eph_pub + recipient_pub, X25519_WRAP_INFO)
    body = ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, data_key, None)
    return {"type": X25519_STANZA, "epk": _b64(eph_pub), "body": _b64(body)}


def _x25519_shared(private: X25519PrivateKey, peer_pub: bytes) -> bytes:
    """X25519 shared secret; CryptoError for low-order points (all-zero secret)."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_pub))
    except ValueError as exc:  # cryptography refuses an all-zero result
        raise CryptoError("X25519 key agreement gave an all-zero secret: bad public key") from exc
    if shared == bytes(_KEY_LEN):
        raise CryptoError("X25519 key agreement gave an all-zero secret: bad public key")
    return shared


def _scrypt_wrap_key(passphrase: bytes, salt: bytes, log_n: int) -> bytes:
    kdf = Scrypt(
        salt=SCRYPT_SALT_LABEL + salt, length=_KEY_LEN, n=1 << log_n, r=SCRYPT_R, p=SCRYPT_P
    )
    return kdf.derive(passphrase)


def _scrypt_wrap(passphrase: bytes, data_key: bytes, salt: bytes, log_n: int) -> dict:
    """Wrap `data_key` under scrypt(passphrase); salt and log_n fixed in tests."""
    _check_data_key(data_key)
    body = ChaCha20Poly1305(_scrypt_wrap_key(passphrase, salt, log_n)).encrypt(
        _ZERO_NONCE, data_key, None
    )
    return {"type": SCRYPT_STANZA, "salt": _b64(salt), "log_n": str(log_n), "body": _b64(body)}


def _check_passphrase(passphrase: bytes) -> bytes:
    if not isinstance(passphrase, bytes | bytearray):
        raise TypeError("passphrase must be bytes")
    if not passphrase:
        raise CryptoError("empty passphrase refused")
    return bytes(passphrase)


def _check_data_key(data_key: bytes) -> None:
    if len(data_key) != _KEY_LEN:
        raise CryptoError("a data key is 32 bytes")


class PassphraseRecipient(Recipient):
    """Wraps a data key under a key derived from a passphrase with scrypt."""

    __slots__ = ("_passphrase",)

    def __init__(self, passphrase: bytes) -> None:
        self._passphrase = _check_passphrase(passphrase)

    def wrap(self, data_key: bytes) -> dict:
        return _scrypt_wrap(self._passphrase, data_key, os.urandom(16), SCRYPT_LOG_N)

    def to_string(self) -> str:
        return "passphrase (scrypt)"

    def __repr__(self) -> str:
        return "PassphraseRecipient(<passphrase hidden>)"


# --- identities --------------------------------------------------------------------------------


class Identity(abc.ABC):
    """A secret that can unwrap data keys wrapped for its recipient."""

    @abc.abstractmethod
    def unwrap(self, stanza: dict) -> bytes | None:
        """Return the data key, or None when the stanza is not for this identity."""

    @abc.abstractmethod
    def recipient(self) -> Recipient:
        """Return the matching recipient (what backups are wrapped for)."""


class X25519Identity(Identity):
    """An X25519 private key (`CRMMAINT-SECRET-KEY-1...`)."""

    __slots__ = ("_private", "_public")

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self._public = private.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> X25519Identity:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_string(cls, text: str) -> X25519Identity:
        """Parse a `CRMMAINT-SECRET-KEY-1...` string, checking its checksum."""
        raw = _decode_key(text, SECRET_PREFIX, b"crmmaint secret key v1", "secret key")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def to_string(self) -> str:
        return _encode_key(
            SECRET_PREFIX, b"crmmaint secret key v1", self._private.private_bytes_raw()
        )

    def recipient(self) -> X25519Recipient:
        return X25519Recipient(self._public)

    def unwrap(self, stanza: dict) -> bytes | None:
        if stanza.get("type") != X25519_STANZA:
            return None
        eph_pub = _unb64(stanza, "epk", _KEY_LEN)
        body = _unb64(stanza, "body", _WRAPPED_LEN)
        shared = _x25519_shared(self._private, eph_pub)
        return _decrypt_wrapped(_hkdf(shared, eph_pub + self._public, X25519_WRAP_INFO), body)

    def __repr__(self) -> str:
        return f"X25519Identity(public={self.recipient().to_string()!r})"


class PassphraseIdentity(Identity):
    """Unwraps scrypt stanzas with a passphrase."""

    __slots__ = ("_passphrase",)

    def __init__(self, passphrase: bytes) -> None:
        self._passphrase = _check_passphrase(passphrase)

    def recipient(self) -> PassphraseRecipient:
        return PassphraseRecipient(self._passphrase)

    def unwrap(self, stanza: dict) -> bytes | None:
        if stanza.get("type") != SCRYPT_STANZA:
            return None
        salt = _unb64(stanza, "salt", 16)
        body = _unb64(stanza, "body", _WRAPPED_LEN)
        log_n_text = stanza.get("log_n")
        if not (isinstance(log_n_text, str) and re.fullmatch(r"[0-9]{1,3}", log_n_text)):
            raise CryptoError("malformed scrypt key stanza: bad field 'log_n'")
        log_n = int(log_n_text)
        if not SCRYPT_LOG_N_MIN <= log_n <= SCRYPT_LOG_N_MAX:
            raise CryptoError(
                f"scrypt key stanza asks for work factor log_n={log_n}, outside the accepted "
                f"{SCRYPT_LOG_N_MIN}..{SCRYPT_LOG_N_MAX}: refusing (damaged or hostile backup header)"
            )
        return _decrypt_wrapped(_scrypt_wrap_key(self._passphrase, salt, log_n), body)

    def __repr__(self) -> str:
        return "PassphraseIdentity(<passphrase hidden>)"


def parse_recipient(text: str) -> Recipient:
    """Parse a recipient public key string (`crmpub1...`)."""
    if not isinstance(text, str) or not text.strip().lower().startswith(PUBLIC_PREFIX):
        raise CryptoError(
            f"not a recipient public key: expected a string starting with {PUBLIC_PREFIX!r}",
            hint="copy it from the `# public key:` line of the identity file",
        )
    return X25519Recipient.from_string(text)


# --- identity files ----------------------------------------------------------------------------


def write_identity_file(
    path: str | Path, identity: X25519Identity, *, overwrite: bool = False
) -> None:
    """Write a 0600 identity file: comments (creation time, public key), then the secret line."""
    path = Path(path)
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = (
        f"# crmmaint identity, created {created}\n"
        f"# public key: {identity.recipient().to_string()}\n"
        f"{identity.to_string()}\n"
    ).encode("ascii")
    if path.is_dir():
        raise KeyFileError(
            f"{path} is a directory: an identity is written to a file",
            hint=f"name the file, e.g. {path / 'ops.key'}",
        )
    folder = path.parent
    if not folder.is_dir():
        # One missing folder (`keys/` beside the inventory) is made, private; a path whose
        # folders are missing further up is more likely a typo than a place for a key.
        if folder.exists() or not folder.parent.is_dir():
            raise KeyFileError(
                f"cannot create identity file {path}: "
                + (
                    f"{folder} is not a folder"
                    if folder.exists()
                    else f"{folder.parent} does not exist"
                ),
                hint="create the folder first, or give another --output",
            )
        folder.mkdir(mode=0o700)
    target = path.with_name(f".{path.name}.tmp{os.getpid()}") if overwrite else path
    try:
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"identity file {path} already exists: refusing to overwrite it",
            hint="move it away first, or give --force if replacing it is really meant",
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot create identity file {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(target, path)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def load_identity_file(path: str | Path) -> X25519Identity:
    """Load an identity file, refusing one that group or others can read."""
    path = Path(path)
    raw = read_private_file(
        path,
        "identity file",
        missing_hint="check the path, or generate a new identity (older backups need the old one)",
    )
    try:
        content = raw.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"identity file {path} is malformed (not ASCII text)") from None
    lines = [line.strip() for line in content.splitlines()]
    secrets = [line for line in lines if line and not line.startswith("#")]
    if len(secrets) != 1:
        raise KeyFileError(
            f"identity file {path} is malformed: expected exactly one secret key line, "
            f"found {len(secrets)}"
        )
    try:
        return X25519Identity.from_string(secrets[0])
    except CryptoError as exc:
        raise KeyFileError(f"identity file {path} is malformed: {exc.message}") from None


# --- secret sources ----------------------------------------------------------------------------


def _strip_newline(data: bytes) -> bytes:
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    return data


#: Largest key or secret file read (they are a few hundred bytes).
MAX_SECRET_FILE = 1 << 20


def read_private_file(path: str | Path, what: str, *, missing_hint: str | None = None) -> bytes:
    """The bytes of a key or secret file that only its owner can read.

    Opened without following a symlink and checked on the open file (``fstat``), so nothing
    can swap it between the check and the read. Raises ``KeyFileError`` naming ``what`` and the
    path when it is missing, a link, not a regular file, or readable by group or others.
    """
    p = Path(path).expanduser()
    try:
        # O_NONBLOCK: a FIFO planted as a key file must not hang the open (it is refused below).
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileError(f"{what} {p} not found", hint=missing_hint) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyFileError(
                f"{what} {p} is a symbolic link", hint="point to the file itself, not a link"
            ) from None
        raise KeyFileError(f"cannot read {what} {p}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise KeyFileError(f"{what} {p} is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"{what} {p} is readable by group or others (mode {st.st_mode & 0o777:o})",
                hint=f"run `chmod 600 {p}`",
            )
        return fh.read(MAX_SECRET_FILE)


#: ``cmd:`` secret commands still running, each its own process group (killed as a whole).
_SECRET_COMMANDS: set[subprocess.Popen[bytes]] = set()
_SECRET_COMMANDS_LOCK = threading.Lock()


def _run_secret_command(command: str) -> subprocess.CompletedProcess[bytes]:
    """Run a ``cmd:`` secret's shell command, in a process group of its own, so that what it
    starts (``sh -c 'sleep 100'``, a pipeline) is killed with it: after
    ``SECRET_COMMAND_TIMEOUT`` seconds (raising ``subprocess.TimeoutExpired``), and when
    crmmaint exits while it runs (a caller that gave up waiting, e.g. ``inventory check
    --connect``'s time guard). The session and terminal stay crmmaint's (a pinentry prompt
    still reaches the user)."""
    proc = subprocess.Popen(
        command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0
    )
    with _SECRET_COMMANDS_LOCK:
        _SECRET_COMMANDS.add(proc)
    try:
        out, err = proc.communicate(timeout=SECRET_COMMAND_TIMEOUT)
    except BaseException:
        _kill_group(proc)
        proc.communicate()
        raise
    finally:
        with _SECRET_COMMANDS_LOCK:
            _SECRET_COMMANDS.discard(proc)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@atexit.register
def _kill_running_secret_commands() -> None:
    """At exit, no ``cmd:`` secret command is left running behind crmmaint."""
    with _SECRET_COMMANDS_LOCK:
        running = list(_SECRET_COMMANDS)
    for proc in running:
        _kill_group(proc)


def read_secret(spec: str) -> bytes:
    """Read a secret from `env:NAME`, `file:/path` or `cmd:command`; literals are refused."""
    kind, sep, arg = spec.partition(":")
    if not sep or kind not in ("env", "file", "cmd") or not arg:
        # Never echo `spec`: it may be the secret itself.
        raise CryptoError(
            "a secret must be given as env:NAME, file:/path or cmd:COMMAND; "
            "a literal secret is refused so it stays out of configs, history and process lists"
        )
    if kind == "env":
        text = os.environ.get(arg)
        value = os.fsencode(text) if text else b""
        if not value:
            raise CryptoError(
                f"secret source env:{arg}: the variable is unset or empty",
                hint=f"set {arg} in the environment crmmaint runs in (cron and systemd units "
                "start with almost none), or use file: or cmd:",
            )
        return value
    if kind == "file":
        value = _strip_newline(
            read_private_file(
                arg,
                "secret source file",
                missing_hint=f"create {arg} holding the secret (mode 0600), or correct the "
                "file: path in the inventory",
            )
        )
        if not value:
            raise CryptoError(f"secret source file:{arg}: the file is empty")
        return value
    try:
        result = _run_secret_command(arg)
    except subprocess.TimeoutExpired:
        raise CryptoError(
            f"secret source cmd: timed out after {SECRET_COMMAND_TIMEOUT:.0f}s"
        ) from None
    # Neither the command line nor its output is echoed: either may contain the secret.
    if result.returncode != 0:
        raise CryptoError(
            f"secret source cmd: the command failed with exit status {result.returncode}",
            hint="run the command by hand to see its error",
        )
    value = _strip_newline(result.stdout)
    if not value:
        raise CryptoError("secret source cmd: the command printed nothing")
    return value
