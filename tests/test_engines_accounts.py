"""SSH access and root (crmmaint/engines/accounts.py, ``HostOS.ssh_access``): the authorized_keys
parser and fingerprints against ssh-keygen, and the snapshot read from this machine and from a
real sshd on 127.0.0.x. Keys are written under tmp_path only; the machine's accounts and its
/root/.ssh are never changed."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_engines_host
from hypothesis import given, settings
from hypothesis import strategies as st

from crmmaint.engines import accounts
from crmmaint.engines.accounts import (
    AccessProbe,
    Account,
    AuthorizedKey,
    UnparsedLine,
    build_snapshot,
    fingerprint,
    parse_authorized_keys,
    parse_options,
    parse_probe,
    parse_sudo_list,
)
from crmmaint.engines.host import HostOS
from crmmaint.transport import LocalTransport, SSHTransport

KEY_SPECS = [("rsa", 2048), ("rsa", 3072), ("ecdsa", 256), ("ecdsa", 384), ("ed25519", 256)]


@pytest.fixture(scope="module")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    """Public key files made by ssh-keygen, one per (type, bits) of ``KEY_SPECS``."""
    directory = tmp_path_factory.mktemp("keys")
    made = {}
    for kind, bits in KEY_SPECS:
        path = directory / f"{kind}{bits}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, "-b", str(bits), "-N", "", "-C", f"{kind} key",
             "-f", str(path)],
            check=True,
        )  # fmt: skip
        made[(kind, bits)] = path.with_suffix(".pub")
    return made


def keygen_fingerprint(path: Path) -> tuple[int, str]:
    """(bits, fingerprint) as ``ssh-keygen -l`` prints them."""
    out = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True).stdout
    bits, fp = out.split()[:2]
    return int(bits), fp


# --- the parser ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", KEY_SPECS, ids=[f"{k}{b}" for k, b in KEY_SPECS])
def test_fingerprint_and_bits_match_ssh_keygen(ssh_keys, spec) -> None:
    path = ssh_keys[spec]
    (key,) = parse_authorized_keys(path.read_text())
    assert isinstance(key, AuthorizedKey)
    assert (key.bits, key.fingerprint) == keygen_fingerprint(path)
    assert key.type == path.read_text().split()[0]
    assert key.comment == f"{spec[0]} key"
    assert key.options == ()


def test_options_with_quoted_commas_spaces_and_quotes(ssh_keys) -> None:
    public = ssh_keys[("ed25519", 256)].read_text().strip()
    line = (
        'from="10.0.0.1,10.0.0.2",command="echo \\"a, b\\" c",no-pty,'
        f'environment="TOKEN=s3cr3t value",permitopen="h:1"\t {public}'
    )
    (key,) = parse_authorized_keys(f"# a comment\n\n   \n{line}\n")
    assert isinstance(key, AuthorizedKey)
    assert key.line == 4
    assert key.options == (
        'from="10.0.0.1,10.0.0.2"',
        'command="echo \\"a, b\\" c"',
        "no-pty",
        'environment="TOKEN=***"',
        'permitopen="h:1"',
    )
    assert key.comment == "ed25519 key"
    assert "s3cr3t" not in repr(key)


def test_a_key_type_that_looks_like_options_is_still_a_key(ssh_keys) -> None:
    """sshd first tries the line as a key, then as options + key: `restrict ssh-ed25519 …`."""
    public = ssh_keys[("ed25519", 256)].read_text().strip()
    (plain, restricted) = parse_authorized_keys(f"{public}\nrestrict {public}\n")
    assert isinstance(plain, AuthorizedKey) and plain.options == ()
    assert isinstance(restricted, AuthorizedKey) and restricted.options == ("restrict",)


def test_lines_sshd_would_skip_are_unparsed_without_their_text(ssh_keys) -> None:
    public = ssh_keys[("ed25519", 256)].read_text().strip()
    kind, blob, _ = public.split(" ", 2)
    other_blob = ssh_keys[("rsa", 2048)].read_text().split()[1]
    junk_rsa = base64.b64encode(b"\x00\x00\x00\x07ssh-rsa junk").decode()
    private_body = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW"
    text = "\n".join(
        [
            "just some words here",  # 1: no key at all
            f"{kind} {blob[:-8]}",  # 2: a cut blob (bad base64)
            f"ssh-rsa {blob}",  # 3: the blob names another type
            f'from="1.2.3.4 {public}',  # 4: unterminated quote
            private_body,  # 5: no space: shows nothing
            f"ssh-rsa {junk_rsa}",  # 6: names its type, but is no RSA key
            f"ssh-ed25519 {other_blob}",  # 7
        ]
    )
    entries = parse_authorized_keys(text)
    assert all(isinstance(e, UnparsedLine) for e in entries)
    assert [e.line for e in entries] == [1, 2, 3, 4, 5, 6, 7]
    by_line = {e.line: e for e in entries if isinstance(e, UnparsedLine)}
    assert by_line[1].reason == "no key"
    assert by_line[4].reason == "unterminated quote in options"
    assert by_line[6].reason == "invalid key"
    assert "just" not in repr(entries)  # a line's text is never kept


def test_unknown_and_security_key_types() -> None:
    def ssh_string(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    sk = ssh_string(b"sk-ssh-ed25519@openssh.com") + ssh_string(b"\x01" * 32) + ssh_string(b"ssh:")
    odd = ssh_string(b"ssh-future@example.com") + ssh_string(b"whatever")
    text = (
        f"sk-ssh-ed25519@openssh.com {base64.b64encode(sk).decode()} yubi\n"
        f"no-pty ssh-future@example.com {base64.b64encode(odd).decode()}\n"
    )
    sk_key, odd_key = parse_authorized_keys(text)
    assert isinstance(sk_key, AuthorizedKey) and sk_key.bits == 256  # as ssh-keygen -l says
    assert isinstance(odd_key, AuthorizedKey) and odd_key.bits is None
    assert odd_key.type == "ssh-future@example.com" and odd_key.options == ("no-pty",)
    assert odd_key.fingerprint == fingerprint(odd)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_the_parser_never_raises(text: str) -> None:
    for entry in parse_authorized_keys(text):
        assert isinstance(entry, AuthorizedKey | UnparsedLine)


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


_blob_part = st.one_of(
    st.binary(max_size=70).map(_ssh_string),
    st.sampled_from([b"nistp256", b"nistp384", b"nistp521", b"\x04" + b"\x01" * 64]).map(
        _ssh_string
    ),
    st.binary(max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([*sorted(accounts._LOADABLE_TYPES), "sk-ecdsa-sha2-nistp256@openssh.com"]),
    st.lists(_blob_part, max_size=6),
)
def test_broken_blobs_of_known_types_never_raise(key_type: str, parts: list[bytes]) -> None:
    blob = _ssh_string(key_type.encode()) + b"".join(parts)
    (entry,) = parse_authorized_keys(f"{key_type} {base64.b64encode(blob).decode()} c")
    assert isinstance(entry, (AuthorizedKey, UnparsedLine))


_option_value = st.text(st.characters(blacklist_characters='"\\\n\r'), max_size=12)
_option = st.one_of(
    st.sampled_from(["no-pty", "restrict", "no-port-forwarding", "cert-authority"]),
    st.builds(
        lambda name, value: f'{name}="{value}"',
        st.sampled_from(["from", "command"]),
        _option_value.map(lambda v: v.replace("x", '\\"')),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_option, min_size=1, max_size=5))
def test_options_round_trip(options: list[str]) -> None:
    assert parse_options(",".join(options)) == options


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(blacklist_characters='"\\\n\r,='), min_size=1, max_size=8),
       _option_value)  # fmt: skip
def test_environment_values_never_show(name: str, value: str) -> None:
    (option,) = parse_options(f'environment="{name}={value}"')
    assert option == f'environment="{name}=***"'


def test_sudo_list() -> None:
    allowed = (
        "Matching Defaults entries for alice on vm:\n    env_reset, use_pty\n\n"
        "User alice may run the following commands on vm:\n"
        "    (ALL : ALL) ALL\n    (root) NOPASSWD: /usr/bin/systemctl restart crm\n"
    )
    assert parse_sudo_list(allowed) == [
        "(ALL : ALL) ALL",
        "(root) NOPASSWD: /usr/bin/systemctl restart crm",
    ]
    assert parse_sudo_list("User bob is not allowed to run sudo on vm.\n") is None
    assert parse_sudo_list("") is None


def test_who_can_become_root() -> None:
    probe = AccessProbe(
        as_root=True,
        accounts=[
            Account("root", 0, 0, "/root", "/bin/bash"),
            Account("toor", 0, 0, "/root", "/bin/sh"),
            Account("alice", 1000, 1000, "/home/alice", "/bin/bash"),
            Account("bob", 1001, 10, "/home/bob", "/bin/bash"),  # primary group wheel
            Account("carol", 1002, 1002, "/home/carol", "/bin/bash"),
            Account("daemon", 1, 1, "/usr/sbin", "/usr/sbin/nologin"),
        ],
        groups={"sudo": (27, ["alice", "ghost"]), "wheel": (10, []), "users": (100, ["carol"])},
        sudo="asked",
        sudo_lists={
            "alice": "User alice may run the following commands on h:\n    (ALL) ALL\n",
            "carol": "User carol may run the following commands on h:\n    (postgres) psql\n",
            "bob": "User bob is not allowed to run sudo on h.\n",
        },
    )
    sudo = build_snapshot(probe)["sudo"]
    assert sudo == {
        "alice": {"via": ["group sudo", "sudoers"], "rules": ["(ALL) ALL"]},
        "bob": {"via": ["group wheel"], "rules": []},
        "carol": {"via": ["sudoers"], "rules": ["(postgres) psql"]},
        "ghost": {"via": ["group sudo"], "rules": []},
        "toor": {"via": ["uid 0"], "rules": []},
    }


def test_probe_records_survive_any_name_and_content() -> None:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    name = b"/k/we\tird\nname \xff"
    content = b"x" * 10 + b"\nssh-ed25519 AAAA cut here"
    out = "\n".join(
        [
            "uid\t0",
            "passwd\troot:x:0:0:root:/root:/bin/bash",
            "passwd\tbroken line",
            f"file\troot\t{b64(name)}\t{b64(content)}\t0",
            f"file\troot\t{b64(b'/k/failed')}\t\t1",
            f"unreadable\troot\t{b64(b'/k/dir')}\ta directory",
            "sudo\tnot installed",
            "garbage",
        ]
    ).encode()
    probe = parse_probe(out, read_limit=12)
    assert [a.name for a in probe.accounts] == ["root"]
    (kf,) = probe.files
    assert kf.path == "/k/we\tird\nname \\xff"
    assert kf.data == b"x" * 10 + b"\n" and kf.truncated  # cut back to the last whole line
    assert probe.unreadable == [
        ("root", "/k/failed", "read failed"),
        ("root", "/k/dir", "a directory"),
    ]
    snapshot = build_snapshot(probe)
    assert snapshot["probe"]["scope"] == {
        "as_root": True,
        "sudo": "not installed",
        "passwords": "not read: not root",
    }
    assert snapshot["files"][f"root {kf.path}"]["truncated"] is True


# --- HostOS.ssh_access on this machine and over SSH -----------------------------------------

#: The fixture: this machine, and an SSH host (sshd on 127.0.0.x).
host_os = test_engines_host.host_os


def test_keys_come_and_go(host_os: HostOS, tmp_path: Path, ssh_keys) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    pattern = [str(keys / "%u"), "%h/.ssh/../.ssh/authorized_keys"]
    before = host_os.ssh_access(authorized_keys=pattern)
    assert not any(item["file"].startswith(str(keys)) for item in before["keys"].values())

    rsa, ecdsa = ssh_keys[("rsa", 3072)], ssh_keys[("ecdsa", 384)]
    (keys / "root").write_text(
        f"# ours\n{rsa.read_text()}"
        f'no-agent-forwarding,environment="PGPASSWORD=hunter2" {ecdsa.read_text()}'
        "nonsense line that is long\n"
    )
    after = host_os.ssh_access(authorized_keys=pattern)
    added = {k: v for k, v in after["keys"].items() if k not in before["keys"]}
    rsa_fp, ecdsa_fp = keygen_fingerprint(rsa)[1], keygen_fingerprint(ecdsa)[1]
    assert added == {
        f"root {rsa_fp}": {
            "account": "root", "file": str(keys / "root"), "type": "ssh-rsa", "bits": 3072,
            "comment": "rsa key", "options": [], "other_lines": [],
        },
        f"root {ecdsa_fp}": {
            "account": "root", "file": str(keys / "root"), "type": "ecdsa-sha2-nistp384",
            "bits": 384, "comment": "ecdsa key",
            "options": ["no-agent-forwarding", 'environment="PGPASSWORD=***"'], "other_lines": [],
        },
    }  # fmt: skip
    assert "hunter2" not in repr(after)
    assert after["files"][f"root {keys / 'root'}"] == {
        "account": "root",
        "file": str(keys / "root"),
        "truncated": False,
    }
    assert after["unparsed"][f"root {keys / 'root'}:4"]["reason"] == "no key"
    assert "nonsense" not in str(after)  # an unparsed line's text is never kept
    assert after["settings"]["AuthorizedKeysFile"]["source"] == "argument"
    assert after["settings"]["AuthorizedKeysFile"]["patterns"] == pattern
    assert "root" not in after["sudo"]
    assert after["accounts"]["root"]["uid"] == 0
    assert after["probe"]["scope"]["as_root"] is True

    (keys / "root").write_text(rsa.read_text())
    again = host_os.ssh_access(authorized_keys=pattern)
    assert f"root {ecdsa_fp}" not in again["keys"] and f"root {rsa_fp}" in again["keys"]
    assert not any(k.startswith(f"root {keys}") for k in again["unparsed"])
    assert again == host_os.ssh_access(authorized_keys=pattern)  # deterministic


def test_patterns_expand_like_sshd(host_os: HostOS, tmp_path: Path, ssh_keys) -> None:
    """``%u``, ``%U``, ``%h``, ``%%`` and a space in a path; a key in two files of one account
    is one item."""
    base = tmp_path / "pct % dir"
    (base / "root-0").mkdir(parents=True)
    public = ssh_keys[("ed25519", 256)].read_text()
    (base / "root-0" / "keys").write_text(public)
    (base / "nobody%65534").write_text(public)
    (base / "home_root").write_text(public)
    patterns = [
        str(base).replace("%", "%%") + "/%u-%U/keys",
        str(base).replace("%", "%%") + "/%u%%%U",
        str(base).replace("%", "%%") + "/home_%u",
    ]
    snapshot = host_os.ssh_access(authorized_keys=patterns)
    fp = keygen_fingerprint(ssh_keys[("ed25519", 256)])[1]
    assert snapshot["keys"][f"root {fp}"]["file"] == str(base / "root-0" / "keys")
    other = f"{base / 'home_root'}: options []; comment {' '.join(public.split()[2:])}"
    assert snapshot["keys"][f"root {fp}"]["other_lines"] == [other]
    assert snapshot["keys"][f"nobody {fp}"]["file"] == str(base / "nobody%65534")


def test_every_line_of_a_key_counts(host_os: HostOS, tmp_path: Path, ssh_keys) -> None:
    """sshd reads each line of a key: an unrestricted copy after a restricted line, or a
    change to a copy's options or comment, changes the key's item; a line moved by an edit
    elsewhere does not."""
    keys = tmp_path / "keys"
    keys.mkdir()
    public = " ".join(ssh_keys[("ed25519", 256)].read_text().split()[:2])
    other = " ".join(ssh_keys[("rsa", 2048)].read_text().split()[:2])
    fp = keygen_fingerprint(ssh_keys[("ed25519", 256)])[1]

    def item(*lines: str) -> dict:
        (keys / "root").write_text("".join(f"{line}\n" for line in lines))
        return host_os.ssh_access(authorized_keys=[str(keys / "%u")])["keys"][f"root {fp}"]

    restricted = f'command="/usr/bin/backup",no-pty {public} backup'
    alone = item(restricted)
    assert alone["other_lines"] == [] and alone["options"] == [
        'command="/usr/bin/backup"',
        "no-pty",
    ]
    copied = item(restricted, f"{public} backup")
    assert copied != alone
    assert copied["other_lines"] == [f"{keys / 'root'}: options []; comment backup"]
    changed = item(restricted, f'command="/bin/sh" {public} attacker')
    assert changed["other_lines"] == [
        f'{keys / "root"}: options [command="/bin/sh"]; comment attacker'
    ]
    assert item(f"{other} unrelated", restricted, f"{public} backup") == copied


def test_a_directory_is_unreadable_not_empty(host_os: HostOS, tmp_path: Path) -> None:
    (tmp_path / "keys" / "root").mkdir(parents=True)
    snapshot = host_os.ssh_access(authorized_keys=[str(tmp_path / "keys" / "%u")])
    path = str(tmp_path / "keys" / "root")
    assert snapshot["unreadable"][f"root {path}"] == {
        "account": "root",
        "file": path,
        "reason": "a directory",
    }
    assert f"root {path}" not in snapshot["files"]


def test_sshd_config_of_a_real_sshd(sshd_hosts) -> None:
    """``sshd -T -f`` the test host's own config: its absolute AuthorizedKeysFile applies to
    every account, and the session's client key shows for root and nobody alike."""
    sshd = sshd_hosts[3]
    with SSHTransport(sshd.name, sshd.address, **sshd.ssh_options()) as transport:
        snapshot = HostOS(transport).ssh_access(sshd_config=str(sshd.workdir / "sshd_config"))
    assert snapshot["settings"]["AuthorizedKeysFile"] == {
        "patterns": [sshd.authorized_keys, ".ssh/authorized_keys"],
        "source": "sshd -T",
        "note": None,
    }
    assert "AuthorizedKeysCommand" not in snapshot["settings"]
    client = Path(sshd.identity_file + ".pub")
    fp = keygen_fingerprint(client)[1]
    for account in ("root", "nobody"):
        item = snapshot["keys"][f"{account} {fp}"]
        assert item["file"] == sshd.authorized_keys and item["type"] == "ssh-ed25519"


def test_authorized_keys_command_is_reported(sshd_hosts, tmp_path: Path) -> None:
    sshd = sshd_hosts[3]
    config = tmp_path / "sshd_config"
    config.write_text(
        (sshd.workdir / "sshd_config").read_text()
        + "AuthorizedKeysCommand /usr/local/bin/keys-from-ldap %u\n"
        + "AuthorizedKeysCommandUser nobody\n"
    )
    snapshot = HostOS(LocalTransport("local")).ssh_access(sshd_config=str(config))
    assert snapshot["settings"]["AuthorizedKeysCommand"] == {
        "command": "/usr/local/bin/keys-from-ldap %u",
        "user": "nobody",
    }


def test_a_config_sshd_refuses_falls_back_to_the_default(tmp_path: Path) -> None:
    config = tmp_path / "sshd_config"
    config.write_text("NoSuchKeyword yes\n")
    snapshot = HostOS(LocalTransport("local")).ssh_access(sshd_config=str(config))
    item = snapshot["settings"]["AuthorizedKeysFile"]
    assert item["patterns"] == list(accounts.DEFAULT_AUTHORIZED_KEYS)
    assert item["source"] == "default" and item["note"]


# --- the script as an unprivileged user -----------------------------------------------------


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder in /tmp anyone may search (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="crmmaint-accounts-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_as_an_unprivileged_user_nothing_is_taken_for_empty(open_dir: Path, tmp_path) -> None:
    secret = open_dir / "nobody"
    secret.write_text("ssh-ed25519 AAAA\n")
    secret.chmod(0o600)  # root's: nobody cannot read it
    hidden = tmp_path / "hidden"  # under root's 0700 pytest folder
    patterns = [str(open_dir / "%u"), str(hidden / "%u"), str(open_dir / "absent-%u")]
    res = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "sh", "-c", accounts.ACCESS_SCRIPT, "sh", str(accounts.READ_LIMIT), "", "given",
         *patterns],
        capture_output=True, cwd="/", timeout=30, check=True,
    )  # fmt: skip
    snapshot = build_snapshot(parse_probe(res.stdout))
    unreadable = {k: v["reason"] for k, v in snapshot["unreadable"].items()}
    assert unreadable[f"nobody {secret}"] == "permission denied"
    assert unreadable[f"nobody {hidden / 'nobody'}"] == "a folder on its path cannot be searched"
    assert not any("absent-" in key for key in unreadable)
    assert snapshot["probe"]["scope"] == {
        "as_root": False,
        "sudo": "not asked: not root",
        "passwords": "not read: not root",
    }
    assert all(item["password"] is None for item in snapshot["accounts"].values())
