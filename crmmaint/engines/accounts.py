"""Who can reach a host over SSH and who can become root: the script ``HostOS.ssh_access`` runs
and pure functions over its output (no I/O here), producing a ``baselines.Snapshot``.

The script (``ACCESS_SCRIPT``, POSIX sh and coreutils) lists the accounts (``getent passwd``),
asks sshd for its ``AuthorizedKeysFile`` patterns (``sshd -T``, root only; otherwise sshd's
default ``.ssh/authorized_keys .ssh/authorized_keys2``) unless patterns are given, expands them
for every account (``%h`` home, ``%u`` name, ``%U`` uid, ``%%``; a relative path is under the
home) and reads each file that exists, at most ``READ_LIMIT`` bytes, base64-encoded so any name
or content survives the trip. As root it also asks ``sudo -n -l -U NAME`` about every account
with a login shell and classifies each password field (usable, locked, empty: never the hash,
which does not leave the host).

``Match`` blocks of sshd_config are ignored: ``sshd -T`` without ``-C`` prints the global
settings, so a ``Match User x`` block with its own ``AuthorizedKeysFile`` is not seen.

Snapshot sections (``build_snapshot``), every list sorted unless its order means something:

- ``accounts``: ``NAME`` -> ``uid``, ``gid``, ``home``, ``shell``, ``login_shell`` (bool),
  ``password`` (``usable``/``locked``/``empty``/``unusable``, ``None`` when not root);
- ``keys``: ``ACCOUNT SHA256:…`` -> ``account``, ``file``, ``type``, ``bits``, ``comment``,
  ``options`` (in file order, ``environment`` values masked) and ``other_lines``. A key found
  twice for one account is one item: ``file``, ``comment`` and ``options`` are those of its
  first line in sshd's order (files in ``AuthorizedKeysFile`` order, then lines), the line
  sshd tries first; ``other_lines`` lists each further line, in that order, as ``FILE:
  options [...]; comment ...``, so a copy without the first line's restrictions, or a change
  to one, is a change of the item;
- ``files``: ``ACCOUNT PATH`` -> ``account``, ``file``, ``truncated``: each file read, so a new
  file shows even while empty;
- ``unreadable``: ``ACCOUNT PATH`` -> ``account``, ``file``, ``reason``: a file that exists
  (or may: its folder cannot be searched) but could not be read, never taken for an empty one;
- ``unparsed``: ``ACCOUNT PATH:LINE`` -> ``account``, ``file``, ``line``, ``reason`` (never
  any of the line's text: it may be a pasted password or private key);
- ``sudo``: ``NAME`` -> ``via`` (sorted: ``uid 0``, ``group sudo`` …, ``sudoers``) and ``rules`` (sudo's ``-l`` lines, in sudo's order; sudoers files are never
  parsed here). Root itself is not listed: an empty section means no one but root;
- ``settings`` (sshd's): ``AuthorizedKeysFile`` -> ``patterns``, ``source`` (``sshd -T``, ``argument`` or
  ``default``), ``note`` (why sshd -T could not run: then ``AuthorizedKeysCommand`` is
  unknown too); ``AuthorizedKeysCommand`` -> ``command``, ``user`` when set (keys may then come
  from elsewhere);
- ``probe``: ``scope`` -> ``as_root``, ``sudo`` (``asked``, ``not installed``, ``not asked: not
  root``), ``passwords`` (``read``, ``not read: not root``): what this snapshot could not see.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import SSHCertificate, load_ssh_public_identity

if TYPE_CHECKING:
    from crmmaint.baselines import Snapshot


#: sshd's ``AuthorizedKeysFile`` when sshd_config does not set it.
DEFAULT_AUTHORIZED_KEYS = (".ssh/authorized_keys", ".ssh/authorized_keys2")
#: Groups whose members may become root through the distributions' stock sudoers/polkit rules.
ROOT_GROUPS = ("admin", "sudo", "wheel")
#: Shells (by file name) that let no one log in; any other shell, an empty one included (which
#: means /bin/sh), is a login shell.
NO_LOGIN_SHELLS = ("nologin", "false")
#: Bytes read of each authorized_keys file; a longer file is cut there (``truncated``).
READ_LIMIT = 1 << 20
#: The script's exit status when a tool it needs (base64) is missing.
NOT_INSTALLED = 127

#: $1 = bytes to read per file, $2 = sshd_config ("" for sshd's own), $3 = ``given`` (patterns
#: follow) or ``sshd`` (ask sshd -T). Prints one record a line, TAB-separated, anything that may
#: hold a TAB or newline base64-encoded: ``uid``, ``passwd``, ``group``, ``sshd KEYWORD VALUE``,
#: ``sshd_error``, ``source``, ``pattern``, ``file NAME PATH DATA STATUS``, ``unreadable NAME
#: PATH REASON``, ``sudo STATE``, ``sudol NAME OUTPUT``, ``shadow NAME CLASS`` (the TABs in
#: its printf and sed lines are literal). The password hash never leaves the host: awk prints
#: only its class.
ACCESS_SCRIPT = r"""
command -v base64 >/dev/null 2>&1 || exit 127
exec 4>&1
export LC_ALL=C
cap=$(($1 + 1)) config=$2 mode=$3; shift 3
b64() { printf '%s' "$1" | base64 | tr -d '\n'; }
me=$(id -u); echo "uid	$me"
have() { command -v "$1" >/dev/null 2>&1; }
# the accounts, listed once: both uses read the same list (a directory may change)
passwd=$(if have getent; then getent passwd; else cat /etc/passwd; fi)
printf '%s\n' "$passwd" | sed 's/^/passwd	/'
if have getent; then getent group @GROUPS@; else cat /etc/group; fi | sed 's/^/group	/'
sshd=$(command -v sshd 2>/dev/null) || sshd=
for s in /usr/sbin/sshd /usr/local/sbin/sshd /sbin/sshd; do
  [ -n "$sshd" ] && break; [ -x "$s" ] && sshd=$s
done
use_sshd=
if [ -z "$sshd" ]; then echo "sshd_error	sshd not installed"
else
  if [ -n "$config" ]; then out=$("$sshd" -T -f "$config" 2>&1 </dev/null)
  else out=$("$sshd" -T 2>&1 </dev/null); fi
  if [ $? = 0 ]; then
    printf '%s\n' "$out" | sed -n 's/^\(authorizedkeys[a-z]*\) /sshd	\1	/p'
    use_sshd=1
  else printf 'sshd_error	%s\n' "$(printf '%s\n' "$out" | sed -n '/./{p;q;}')"; fi
fi
if [ "$mode" = given ]; then echo "source	argument"
elif [ -n "$use_sshd" ]; then
  echo "source	sshd -T"
  line=$(printf '%s\n' "$out" | sed -n 's/^authorizedkeysfile //p')
  set -f; set -- $line; set +f
  [ "$*" = none ] && set --
else echo "source	default"; set -- @DEFAULT_KEYS@; fi
for p do echo "pattern	$(b64 "$p")"; done
# expand PATTERN HOME NAME UID -> $out (sshd's percent_expand, then relative to the home)
expand() {
  rest=$1 out=
  while :; do
    case $rest in
      *%*) out=$out${rest%%\%*}; rest=${rest#*%}; c=${rest%"${rest#?}"}; rest=${rest#?}
           case $c in h) out=$out$2;; u) out=$out$3;; U) out=$out$4;; %) out=$out%;;
             *) out=$out%$c;; esac;;
      *) out=$out$rest; break;;
    esac
  done
  case $out in /*) ;; *) out=$2/$out;; esac
}
# absent PATH: true when PATH surely does not exist (its nearest existing folder is searchable)
absent() {
  d=${1%/*}
  while [ -n "$d" ] && [ ! -e "$d" ]; do d=${d%/*}; done
  [ -z "$d" ] || [ ! -d "$d" ] || [ -x "$d" ]
}
if ! have sudo; then echo "sudo	not installed"
elif [ "$me" != 0 ]; then echo "sudo	not asked: not root"
else echo "sudo	asked"; fi
printf '%s\n' "$passwd" |
while IFS=: read -r name _pw uid _gid _gecos home shell; do
  [ -n "$name" ] || continue
  for p do
    expand "$p" "$home" "$name" "$uid"; f=$out
    if [ -e "$f" ]; then
      if [ -d "$f" ]; then why="a directory"
      elif [ ! -f "$f" ]; then why="not a regular file"
      elif [ ! -r "$f" ]; then why="permission denied"
      else
        printf 'file	%s	%s	' "$name" "$(b64 "$f")"
        st=$( { { head -c "$cap" -- "$f" 2>/dev/null </dev/null; echo $? >&3; } |
                base64 | tr -d '\n' >&4; } 3>&1 )
        printf '	%s\n' "$st"
        continue
      fi
      printf 'unreadable	%s	%s	%s\n' "$name" "$(b64 "$f")" "$why"
    elif ! absent "$f"; then
      printf 'unreadable	%s	%s	%s\n' "$name" "$(b64 "$f")" "a folder on its path cannot be searched"
    fi
  done
  if [ "$me" = 0 ] && [ "$name" != root ] && have sudo; then
    case ${shell##*/} in @NOLOGIN@) ;; *)
      printf 'sudol	%s	%s\n' "$name" \
        "$(sudo -n -l -U "$name" 2>/dev/null </dev/null | base64 | tr -d '\n')";;
    esac
  fi
done
if [ "$me" = 0 ]; then
  if have getent; then getent shadow; else cat /etc/shadow; fi 2>/dev/null | awk -F: '
    { p = $2; c = "unusable"
      if (p == "") c = "empty"
      else if (p ~ /^[!*]/) c = "locked"
      else if (p ~ /^\$/ || (length(p) == 13 && p ~ /^[.\/0-9A-Za-z]+$/)) c = "usable"
      print "shadow\t" $1 "\t" c }'
fi
true
""".replace("@GROUPS@", " ".join(ROOT_GROUPS))
ACCESS_SCRIPT = ACCESS_SCRIPT.replace("@DEFAULT_KEYS@", " ".join(DEFAULT_AUTHORIZED_KEYS)).replace(
    "@NOLOGIN@", "|".join(NO_LOGIN_SHELLS)
)


# --- authorized_keys lines -----------------------------------------------------------------


@dataclass(frozen=True)
class AuthorizedKey:
    """One key line of an authorized_keys file."""

    line: int  # 1-based
    type: str
    blob: bytes
    comment: str
    #: Options as written, in file order, ``environment`` values masked.
    options: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    @property
    def bits(self) -> int | None:
        return key_bits(self.type, self.blob)


@dataclass(frozen=True)
class UnparsedLine:
    """A line that is neither blank, a comment nor a key sshd would accept: its number and
    why, never its text (it may be a pasted password or a private key's body)."""

    line: int
    reason: str


def fingerprint(blob: bytes) -> str:
    """OpenSSH's fingerprint of a key blob, as ``ssh-keygen -l`` prints it: ``SHA256:`` and
    the unpadded base64 of the blob's SHA-256."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def key_bits(key_type: str, blob: bytes) -> int | None:
    """The key's size as ``ssh-keygen -l`` gives it (RSA/DSA modulus bits, ECDSA curve bits,
    256 for ed25519, security keys included), ``None`` for a type ``cryptography`` cannot
    load (certificates give their key's size)."""
    try:
        loaded = load_ssh_public_identity(key_type.encode() + b" " + base64.b64encode(blob))
    except (ValueError, TypeError, OverflowError, NotImplementedError, UnsupportedAlgorithm):
        return None
    key: Any = loaded.public_key() if isinstance(loaded, SSHCertificate) else loaded
    if isinstance(key, (rsa.RSAPublicKey, dsa.DSAPublicKey)):
        return key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return 256
    if isinstance(key, ed448.Ed448PublicKey):
        return 456
    return None


#: Key types ``cryptography`` reads: a blob of one of them that it cannot load is broken (sshd
#: would refuse it too). Other types are taken on their word (the blob names its type).
_LOADABLE_TYPES = frozenset(
    {
        "ssh-rsa", "ssh-dss", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
    }
)  # fmt: skip
_SPACE = " \t"


def _blob_type(blob: bytes) -> str | None:
    """The type name a key blob starts with (an SSH string), ``None`` when there is none."""
    if len(blob) < 4:
        return None
    (size,) = struct.unpack(">I", blob[:4])
    if size == 0 or size > 64 or len(blob) < 4 + size:
        return None
    return blob[4 : 4 + size].decode("ascii", "replace")


def _read_key(text: str) -> tuple[str, bytes, str] | None:
    """``TYPE BASE64 [COMMENT]`` -> (type, blob, comment), ``None`` unless the base64 decodes
    to a blob that names ``TYPE`` (as sshkey_read checks)."""
    key_type, rest = _word(text)
    encoded, comment = _word(rest)
    if not key_type or not encoded:
        return None
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    if _blob_type(blob) != key_type:
        return None
    return key_type, blob, comment.strip(_SPACE + "\r")


def _word(text: str) -> tuple[str, str]:
    """(the first word, the text after it) split at spaces and tabs, blanks before each
    removed."""
    text = text.lstrip(_SPACE)
    end = next((i for i, ch in enumerate(text) if ch in _SPACE), len(text))
    return text[:end], text[end:].lstrip(_SPACE)


def split_options(text: str) -> tuple[str, str] | None:
    """Split a line at the end of its options (sshd's ``advance_past_options``): the first
    space or tab outside double quotes, ``\\"`` being a quote inside them. ``None`` for an
    unterminated quote."""
    quoted, i = False, 0
    while i < len(text) and (quoted or text[i] not in _SPACE):
        if text[i] == "\\" and text[i + 1 : i + 2] == '"':
            i += 1
        elif text[i] == '"':
            quoted = not quoted
        i += 1
    if quoted:
        return None
    return text[:i], text[i:]


def parse_options(text: str) -> list[str]:
    """Comma-separated options -> each option's text, in order; commas inside double quotes
    do not split (``from="a,b",no-pty`` is two options). ``environment="NAME=value"`` becomes
    ``environment="NAME=***"``: its value may be a secret."""
    options: list[str] = []
    quoted, start, i = False, 0, 0
    while i <= len(text):
        ch = text[i] if i < len(text) else ","
        if ch == "\\" and text[i + 1 : i + 2] == '"':
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            if i > start:
                options.append(_mask_option(text[start:i]))
            start = i + 1
        i += 1
    return options


def _mask_option(option: str) -> str:
    name, eq, value = option.partition("=")
    if not eq or name.lower() != "environment":
        return option
    variable = value.strip('"').partition("=")[0] if "=" in value else ""
    return f'{name}="{variable}=***"' if variable else f'{name}="***"'


def parse_authorized_keys(text: str) -> list[AuthorizedKey | UnparsedLine]:
    """An authorized_keys file -> its key lines and the lines sshd would skip, in file order,
    per sshd(8) AUTHORIZED_KEYS FILE FORMAT: ``[options] type base64 [comment]``. Blank lines
    and ``#`` comments are left out. Never raises, whatever the text."""
    entries: list[AuthorizedKey | UnparsedLine] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r").lstrip(_SPACE)
        if not line.strip(_SPACE) or line.startswith("#"):
            continue
        key = _read_key(line)
        options: list[str] = []
        reason = "no key"
        if key is None:
            split = split_options(line)
            if split is None:
                reason = "unterminated quote in options"
            else:
                options = parse_options(split[0])
                key = _read_key(split[1])
        if key is not None and key[0] in _LOADABLE_TYPES and key_bits(key[0], key[1]) is None:
            key, reason = None, "invalid key"
        if key is None:
            entries.append(UnparsedLine(number, reason))
        else:
            entries.append(AuthorizedKey(number, key[0], key[1], key[2], tuple(options)))
    return entries


# --- the script's output -------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """One ``passwd`` entry."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str

    @property
    def login_shell(self) -> bool:
        return self.shell.rsplit("/", 1)[-1] not in NO_LOGIN_SHELLS


@dataclass(frozen=True)
class KeysFile:
    """An authorized_keys file read on the host (``data`` cut at the read limit)."""

    account: str
    path: str
    data: bytes
    truncated: bool


@dataclass
class AccessProbe:
    """The records of ``ACCESS_SCRIPT``'s output, decoded."""

    as_root: bool = False
    accounts: list[Account] = field(default_factory=list)
    #: group name -> (gid, member names)
    groups: dict[str, tuple[int | None, list[str]]] = field(default_factory=dict)
    #: sshd -T keywords (lower case) -> value
    sshd: dict[str, str] = field(default_factory=dict)
    sshd_error: str | None = None
    source: str = "default"
    patterns: list[str] = field(default_factory=list)
    files: list[KeysFile] = field(default_factory=list)
    #: (account, path, reason)
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)
    sudo: str = "not installed"
    #: account -> ``sudo -l -U`` output
    sudo_lists: dict[str, str] = field(default_factory=dict)
    #: account -> password class; empty when shadow was not read
    passwords: dict[str, str] = field(default_factory=dict)


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _text(data: bytes) -> str:
    """Bytes from the host as JSON-safe text: invalid UTF-8 shown as ``\\xNN``."""
    return data.decode("utf-8", "backslashreplace")


def parse_probe(data: bytes, *, read_limit: int = READ_LIMIT) -> AccessProbe:
    """``ACCESS_SCRIPT``'s output -> ``AccessProbe``; unknown or garbled records are skipped.

    ``read_limit`` must be what the script was given: a file's data longer than it was cut,
    and is cut back to its last whole line (a cut key line would read as a broken one).
    """
    probe = AccessProbe()
    for record in data.split(b"\n"):
        tag, _, rest = record.partition(b"\t")
        fields = rest.split(b"\t")
        kind = tag.decode("ascii", "replace")
        if kind == "uid":
            probe.as_root = rest.strip() == b"0"
        elif kind == "passwd":
            account = _parse_passwd(_text(rest))
            if account is not None:
                probe.accounts.append(account)
        elif kind == "group":
            name, _, gid, members = [*_text(rest).split(":", 3), "", "", ""][:4]
            users = [m for m in members.strip().split(",") if m]
            probe.groups[name] = (int(gid) if gid.isdigit() else None, users)
        elif kind == "sshd" and len(fields) >= 2:
            probe.sshd[_text(fields[0]).lower()] = _text(b"\t".join(fields[1:])).strip()
        elif kind == "sshd_error":
            probe.sshd_error = _text(rest).strip() or "sshd -T failed"
        elif kind == "source":
            probe.source = _text(rest).strip()
        elif kind == "pattern":
            probe.patterns.append(_text(_unb64(rest.decode("ascii", "replace"))))
        elif kind == "file" and len(fields) == 4:
            content = _unb64(fields[2].decode("ascii", "replace"))
            truncated = len(content) > read_limit
            if truncated:
                content = content[:read_limit]
                content = content[: content.rfind(b"\n") + 1]
            path = _text(_unb64(fields[1].decode("ascii", "replace")))
            account = _text(fields[0])
            if fields[3].strip() != b"0":
                probe.unreadable.append((account, path, "read failed"))
            else:
                probe.files.append(KeysFile(account, path, content, truncated))
        elif kind == "unreadable" and len(fields) >= 3:
            path = _text(_unb64(fields[1].decode("ascii", "replace")))
            probe.unreadable.append((_text(fields[0]), path, _text(fields[2]).strip()))
        elif kind == "sudo":
            probe.sudo = _text(rest).strip()
        elif kind == "sudol" and len(fields) == 2:
            probe.sudo_lists[_text(fields[0])] = _text(_unb64(fields[1].decode("ascii", "replace")))
        elif kind == "shadow" and len(fields) == 2:
            probe.passwords[_text(fields[0])] = _text(fields[1]).strip()
    return probe


def _parse_passwd(line: str) -> Account | None:
    parts = line.split(":")
    if len(parts) < 7 or not parts[0] or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    return Account(parts[0], int(parts[2]), int(parts[3]), parts[5], parts[6])


def parse_sudo_list(text: str) -> list[str] | None:
    """``sudo -l -U NAME`` output -> the rules NAME may run (``(ALL : ALL) ALL`` …, in sudo's
    order), ``None`` when sudo lets NAME run nothing."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "may run the following commands" in line:
            return [rule.strip() for rule in lines[i + 1 :] if rule.strip()]
    return None


# --- the snapshot ----------------------------------------------------------------------------


def build_snapshot(probe: AccessProbe) -> Snapshot:
    """``AccessProbe`` -> the ``Snapshot`` described in this module's docstring."""
    snapshot: Snapshot = {
        name: {}
        for name in ("accounts", "keys", "files", "unreadable", "unparsed", "sudo", "settings")
    }
    for account in probe.accounts:
        snapshot["accounts"].setdefault(
            account.name,
            {
                "uid": account.uid,
                "gid": account.gid,
                "home": account.home,
                "shell": account.shell,
                "login_shell": account.login_shell,
                "password": probe.passwords.get(account.name) if probe.passwords else None,
            },
        )
    _add_keys(snapshot, probe.files)
    for account_name, path, reason in probe.unreadable:
        item = {"account": account_name, "file": path, "reason": reason}
        snapshot["unreadable"].setdefault(f"{account_name} {path}", item)
    snapshot["sudo"] = _root_capable(probe)
    snapshot["settings"] = _sshd_settings(probe)
    snapshot["probe"] = {
        "scope": {
            "as_root": probe.as_root,
            "sudo": probe.sudo,
            "passwords": "read" if probe.passwords else "not read: not root",
        }
    }
    return snapshot


def _add_keys(snapshot: Snapshot, files: list[KeysFile]) -> None:
    keys = snapshot["keys"]
    for kf in files:
        snapshot["files"].setdefault(
            f"{kf.account} {kf.path}",
            {"account": kf.account, "file": kf.path, "truncated": kf.truncated},
        )
        for entry in parse_authorized_keys(_text(kf.data)):
            if isinstance(entry, UnparsedLine):
                snapshot["unparsed"][f"{kf.account} {kf.path}:{entry.line}"] = {
                    "account": kf.account,
                    "file": kf.path,
                    "line": entry.line,
                    "reason": entry.reason,
                }
                continue
            key = f"{kf.account} {entry.fingerprint}"
            if key in keys:  # sshd reads each line of a key: a copy may drop a restriction
                keys[key]["other_lines"].append(_key_line(kf.path, entry))
                continue
            keys[key] = {
                "account": kf.account,
                "file": kf.path,
                "type": entry.type,
                "bits": entry.bits,
                "comment": entry.comment,
                "options": list(entry.options),
                "other_lines": [],
            }


def _key_line(path: str, entry: AuthorizedKey) -> str:
    """Another line of a key already listed, as ``FILE: options [a, b]; comment c`` (no line
    number: lines moved by edits elsewhere in the file are no change)."""
    return f"{path}: options [{', '.join(entry.options)}]; comment {entry.comment}"


def _root_capable(probe: AccessProbe) -> dict[str, dict[str, Any]]:
    via: dict[str, set[str]] = {}
    for account in probe.accounts:
        if account.uid == 0 and account.name != "root":
            via.setdefault(account.name, set()).add("uid 0")
    for group, (gid, members) in probe.groups.items():
        if group not in ROOT_GROUPS:
            continue
        names = set(members) | {a.name for a in probe.accounts if gid is not None and a.gid == gid}
        for name in names - {"root"}:
            via.setdefault(name, set()).add(f"group {group}")
    rules: dict[str, list[str]] = {}
    for name, text in probe.sudo_lists.items():
        allowed = parse_sudo_list(text)
        if allowed is not None and name != "root":
            via.setdefault(name, set()).add("sudoers")
            rules[name] = allowed
    return {
        name: {"via": sorted(reasons), "rules": rules.get(name, [])}
        for name, reasons in sorted(via.items())
    }


def _sshd_settings(probe: AccessProbe) -> dict[str, dict[str, Any]]:
    items: dict[str, dict[str, Any]] = {
        "AuthorizedKeysFile": {
            "patterns": probe.patterns,
            "source": probe.source,
            "note": probe.sshd_error,
        }
    }
    command = probe.sshd.get("authorizedkeyscommand", "none")
    if command and command != "none":
        user = probe.sshd.get("authorizedkeyscommanduser", "none")
        items["AuthorizedKeysCommand"] = {"command": command, "user": user}
    return items
