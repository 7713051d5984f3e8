"""config.drift: masking of secret values (crmmaint/engines/config_files.py), the host script's
output parser, the diff and verdict, and live runs over a real sshd host: no baseline, accept,
a changed file with its password masked (in neither the journal's bytes nor the output), a
missing file, a new file a glob matches, check mode recording nothing; a symlink to a file
named ``shadow`` masked by its target's name; path spellings and ``files: []`` refused."""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from clirun import run_cli
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_tasks_health import make_ctx

from crmmaint.baselines import Baselines, Review, compare
from crmmaint.engines.config_files import (
    MASK,
    ConfigFile,
    config_path_problem,
    is_secret_name,
    mask_text,
    normal_path,
    parse_config_files,
)
from crmmaint.errors import InventoryError, PlaybookError
from crmmaint.inventory import load_inventory
from crmmaint.journal import Journal
from crmmaint.playbook import load_playbook_text, plan
from crmmaint.playbook.runner import Runner
from crmmaint.results import Status
from crmmaint.tasks.config_drift import build_snapshot, describe, file_diff

# --- secret names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "password", "db_password", "DB_PASSWORD", "PGPASSWORD", "MYSQL_PWD", "passwd", "pass",
        "db.pass", "spring.datasource.password", "secret", "client_secret", "SECRET_KEY",
        "token", "api_token", "apiKey", "api-key", "API_KEY", "private_key", "aws_access_key_id",
        "access_key", "credentials", "requirepass", "masterauth", "REDISCLI_AUTH", "auth",
        "Authorization", "key", "encryption_key", "ssl_passphrase_command",
        # a word ending in pass/pwd/passwd/pw
        "dbpass", "adminpwd", "mysqlpasswd", "rootpw", "MYSQLPASS", "smtpPass", "ldap_bindpw",
    ],
)  # fmt: skip
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "port", "host", "user", "max_connections", "ssl_key_file", "SSLCertificateKeyFile",
        "keyspace", "authentication_timeout", "PasswordAuthentication", "password_encryption",
        "HostKey", "auth_type", "listen_addresses", "bind", "proxy_cache_bypass", "compass",
        "dbpass_file", "adminpwd_path",
    ],
)  # fmt: skip
def test_harmless_names(name: str) -> None:
    assert not is_secret_name(name)


# --- masking, by syntax ---------------------------------------------------------------------

#: (line, the secret in it, what the masked line must still show)
CASES = [
    ("password = hunter2two", "hunter2two", "password = ***"),  # ini, postgresql.conf, my.cnf
    ("password=hunter2two", "hunter2two", "password=***"),
    ("  password = 'with space'", "with space", "password = '***'"),
    ("requirepass foobared99", "foobared99", "requirepass ***"),  # redis.conf
    ('masterauth "two words"', "two words", 'masterauth "***"'),
    ("# requirepass commented1", "commented1", "# requirepass ***"),
    ("DB_PASSWORD=envsecret1", "envsecret1", "DB_PASSWORD=***"),  # .env
    ("export PGPASSWORD='shellpw1'", "shellpw1", "export PGPASSWORD='***'"),
    ('export API_TOKEN="tok en1"', "tok en1", 'export API_TOKEN="***"'),
    ("  password: yamlsecret1", "yamlsecret1", "  password: ***"),  # YAML
    ("- api_key: yamlkey123", "yamlkey123", "- api_key: ***"),
    ('{"user": "bob", "password": "jsonpw1", "port": 5432}', "jsonpw1", '"user": "bob"'),
    ('{"a": 1, "token": "t0k3n", "secret": "s3cr3t"}', "t0k3n", '"a": 1'),
    ('{"a": 1, "token": "t0k3n", "secret": "s3cr3t"}', "s3cr3t", '"token": "***"'),
    ("<password>xmlsecret</password>", "xmlsecret", "<password>***</password>"),
    ('<add key="DbPassword" value="netsecret"/>', "netsecret", 'key="DbPassword"'),
    ('<property name="db.password">propsecret</property>', "propsecret", "db.password"),
    ("url = postgresql://crm:urlsecret@db1:5432/crm", "urlsecret", "postgresql://crm:***@db1"),
    ("REDIS_URL=redis://:redissecret@cache:6379/0", "redissecret", "redis://:***@cache"),
    ("dsn: mysql://u:p@ss@w0rd@db/crm", "p@ss@w0rd", "mysql://u:***@db"),
    (
        "primary_conninfo = 'host=db1 user=rep password=libpqpw port=5432'",
        "libpqpw",
        "host=db1 user=rep password=***",
    ),
    ("Server=db;User Id=sa;Password=adopw;", "adopw", "Server=db;User Id=sa;Password=***"),
    ("jdbc:postgresql://db/crm?user=a&password=querypw", "querypw", "user=a&password=***"),
    ("proxy_set_header Authorization 'Bearer abcdefghijklmnop';", "abcdefghijklmnop", "Bearer"),
    ("aws = AKIAABCDEFGHIJKLMNOP", "AKIAABCDEFGHIJKLMNOP", "aws = ***"),
    ("$dbconfig['db_password'] = 'phppw1';", "phppw1", "$dbconfig['db_password'] = '***';"),
    ("define('DB_PASSWORD', 'wppw1');", "wppw1", "define('DB_PASSWORD', '***');"),
    ("'db_password' => 'suitepw1',", "suitepw1", "'db_password' => '***',"),
    ("ExecStart=/usr/bin/app --password clipw1 -v", "clipw1", "--password ***"),
    ("ExecStart=/usr/bin/app --api-token=clitok1", "clitok1", "--api-token=***"),
    ("user app on >aclsecret ~* +@all", "aclsecret", "user app on >***"),
    ('PASS="abc"def', "def", "PASS=***"),  # shell concatenation: the whole rest
    # a key whose word ends in pass/pwd/passwd (PHP, shell)
    ("$dbpass = 'phpsecret';", "phpsecret", "$dbpass = '***';"),
    ('$adminpwd = "admsecret";', "admsecret", '$adminpwd = "***";'),
    ("mysqlpasswd=mysecret1", "mysecret1", "mysqlpasswd=***"),
    ("rootpw plainroot1", "plainroot1", "rootpw ***"),  # slapd.conf
    # a directive's secret-looking argument: the value after it
    ("proxy_set_header X-Api-Key apikeyval1;", "apikeyval1", "proxy_set_header X-Api-Key ***"),
    ('add_header Authorization "Bearer x9";', "x9", 'add_header Authorization "Bearer ***";'),
    ("RequestHeader set X-Auth-Token hdrtok1", "hdrtok1", "RequestHeader set X-Auth-Token ***"),
    ('Header set "X-Secret" "hsec1" early', "hsec1", 'Header set "X-Secret" "***" early'),
    ("#proxy_set_header X-Api-Key oldkey1;", "oldkey1", "#proxy_set_header X-Api-Key ***"),
    ("CREATE ROLE app LOGIN PASSWORD 'sqlpw1';", "sqlpw1", "CREATE ROLE app LOGIN PASSWORD '***';"),
    # hashes and verifiers by shape, whatever the file
    ("root:$6$saltsalt$hashhashhash:19000:0:99999:7:::", "saltsalt$hashhashhash", "root:***:19000"),
    ("admin:$apr1$abc$hashhash", "abc$hashhash", "admin:$apr1$***"),
    ("u:$2b$12$abcdefghijklmnopqrstuv", "12$abcdefghijklmnopqrstuv", "u:$2b$***"),
    ("u:$y$j9T$salt$hashhash", "j9T$salt$hashhash", "u:$y$***"),
    ("h = $argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", "m=65536,t=3,p=4$c2FsdA$aGFzaA", "$argon2id$***"),
    ("olcRootPW: {SSHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "olcRootPW: ***"),
    ("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "bob:{SHA}***"),
    ("olduser:abJnggxhB/yWI", "abJnggxhB/yWI", "olduser:***"),  # DES htpasswd
    ("olduser:abJnggxhB/yWI:19000::::::", "abJnggxhB/yWI", "olduser:***:19000"),  # shadow
    ('"app" "md5d41d8cd98f00b204e9800998ecf8427e"', "d41d8cd98f00b204e9800998ecf8427e", '"app" "md5***"'),
    ("ALTER ROLE app PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$c3Q=:c2U='", "c2FsdA==$c3Q=:c2U=", "PASSWORD '***'"),
    ('"app" "SCRAM-SHA-256$4096:c2FsdA==$c3Q=:c2U="', "c2FsdA==$c3Q=:c2U=", '"app" "SCRAM-SHA-256$***"'),
]  # fmt: skip


@pytest.mark.parametrize(("line", "secret", "kept"), CASES)
def test_masking_by_syntax(line: str, secret: str, kept: str) -> None:
    masked, count = mask_text(line)
    assert secret not in masked, masked
    assert MASK in masked and count == 1
    assert kept in masked, masked


@pytest.mark.parametrize(
    "line",
    [
        "port = 5432",
        "max_connections = 200",
        "ssl_key_file = '/etc/ssl/private/server.key'",
        "PasswordAuthentication no",
        "password_encryption = scram-sha-256",
        "host all all 10.0.0.0/8 scram-sha-256",
        "bind 127.0.0.1 -::1",
        "url = https://crm.example.com/login",
        "# The password below is read at start",
        "# Set the api key below, see the wiki",
        "proxy_cache_bypass $http_pragma;",
        "daemon:*:19000:0:99999:7:::",
        "nobody:!:19000::::::",
        "root:x:0:0:root:/root:/bin/bash",
        'echo "$1$2"',
        "local all all md5",
    ],
)
def test_ordinary_lines_stay(line: str) -> None:
    assert mask_text(line) == (line, 0)


def test_multiline_blocks_are_masked_and_lines_stay_aligned() -> None:
    text = "\n".join(
        [
            "credentials:",
            "  user: alice",
            "  nested:",
            "    deep: nestedsecret",
            "private_key: |",
            "  blockline1",
            "  blockline2",
            "after: visible",
            "key_pem = -----BEGIN RSA PRIVATE KEY-----",
            "MIIEpemsecret1",
            "pemsecret2",
            "-----END RSA PRIVATE KEY----- tail",
            '"k": "-----BEGIN PRIVATE KEY-----\\ninlinepem\\n-----END PRIVATE KEY-----"',
            "[credentials]",
            "admin = iniSecret",
            "[server]",
            "port = 1",
        ]
    )
    masked, count = mask_text(text)
    for secret in ("nestedsecret", "blockline", "pemsecret", "inlinepem", "iniSecret", "alice"):
        assert secret not in masked, masked
    lines = masked.split("\n")
    assert len(lines) == len(text.split("\n"))
    assert lines[0] == "credentials:" and lines[7] == "after: visible"
    assert lines[11] == "-----END RSA PRIVATE KEY----- tail"
    assert lines[-2:] == ["[server]", "port = 1"]
    assert count == 9


@pytest.mark.parametrize(
    ("name", "line", "secret"),
    [
        ("/root/.pgpass", "db1:5432:crm:crm:pgpass:word", "pgpass:word"),
        ("/etc/nginx/.htpasswd", "admin:$apr1$abc$hashhash", "$apr1$abc$hashhash"),
    ],
)
def test_colon_files_by_name(name: str, line: str, secret: str) -> None:
    masked, _ = mask_text(line, name)
    assert secret not in masked and masked.startswith(line[: line.index(secret)])


@pytest.mark.parametrize(
    ("target", "line", "secret"),
    [
        ("shadow", "root:plaintextish:odd", "plaintextish"),  # not shadow-shaped: the name rules
        ("/root/.pgpass", "db1:5432:crm:crm:topsecret9", "topsecret9"),
        ("htpasswd", "admin:clearpass", "clearpass"),
    ],
)
def test_colon_files_by_a_symlinks_target_name(target: str, line: str, secret: str) -> None:
    # the configured name says nothing; a name the link leads through does
    assert secret in mask_text(line, "/etc/conf2/accounts.conf")[0]
    masked, count = mask_text(line, "/etc/conf2/accounts.conf", ("other.conf", target))
    assert secret not in masked and count == 1
    item = build_snapshot(
        [_file("/etc/conf2/accounts.conf", line + "\n", names=("hop", target))], max_size=1000
    )["files"]["/etc/conf2/accounts.conf"]
    assert secret not in item["text"] and item["masked_lines"] == 1


# --- masking, properties --------------------------------------------------------------------

_PRINTABLE = "".join(c for c in string.printable if c not in "\r\n\t\x0b\x0c")
#: Syntax templates and the characters a secret in them may hold (as the format allows).
TEMPLATES = [
    ("password = {}", _PRINTABLE),
    ("db_password={}", _PRINTABLE),
    ("requirepass {}", _PRINTABLE),
    ("export MYSQL_PWD={}", _PRINTABLE),
    ("  secret_key: {}", _PRINTABLE),
    ('{{"user": "u", "password": "{}", "port": 1}}', _PRINTABLE.replace('"', "").replace("\\", "")),
    ("<password>{}</password>", _PRINTABLE.replace("<", "")),
    ("DATABASE_URL=postgres://crm:{}@db1:5432/crm", string.ascii_letters + string.digits + "-._~!$&'()*+,;=%@"),
    ("conninfo = 'host=db1 password={} port=5432'", string.ascii_letters + string.digits + "!#$%&()*+,-./:;<=>?@[]^_`{|}~"),
    ("Authorization: Bearer {}", string.ascii_letters + string.digits + "._~+/=-"),
    ("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----", string.ascii_letters + string.digits + "+/="),
    ("$dbpass = '{}';", _PRINTABLE.replace("'", "").replace("\\", "")),
    ('$adminpwd = "{}";', _PRINTABLE.replace('"', "").replace("\\", "")),
    ("MYSQLPASSWD={}", _PRINTABLE),
    ("proxy_set_header X-Api-Key {};", _PRINTABLE),
    ("  # proxy_set_header X-Api-Key {};", _PRINTABLE),
    ('add_header Authorization "Bearer {}";', _PRINTABLE.replace('"', "").replace("\\", "")),
    ("RequestHeader set X-Auth-Token {}", _PRINTABLE),
    ("CREATE ROLE app LOGIN PASSWORD '{}';", _PRINTABLE.replace("'", "").replace("\\", "")),
]  # fmt: skip


@st.composite
def secret_lines(draw: st.DrawFn) -> tuple[str, str]:
    template, alphabet = draw(st.sampled_from(TEMPLATES))
    secret = draw(st.text(alphabet=alphabet, min_size=8, max_size=40))
    assume(secret == secret.strip() and secret not in template.format(""))
    assume("***" not in secret)
    return template.format(secret), secret


@settings(max_examples=400, deadline=None)
@given(secret_lines(), st.lists(st.sampled_from(["port = 5432", "", "# note", "a: b"])))
def test_generated_secrets_never_survive(case: tuple[str, str], context: list[str]) -> None:
    line, secret = case
    text = "\n".join([*context, line, *context])
    masked, _ = mask_text(text)
    assert secret not in masked
    assert mask_text(masked)[0] == masked


_CRYPT = string.ascii_letters + string.digits + "./"
#: Hash-shaped fields: a prefix that may stay, and the alphabet of what follows it.
HASH_SHAPES = [
    ("$1$", _CRYPT + "$"), ("$5$", _CRYPT + "$"), ("$6$", _CRYPT + "$"), ("$6$rounds=5000$", _CRYPT),
    ("$y$", _CRYPT + "$"), ("$2b$", _CRYPT + "$"), ("$2y$", _CRYPT + "$"), ("$apr1$", _CRYPT + "$"),
    ("$argon2id$", _CRYPT + "$=,"), ("$pbkdf2-sha256$", _CRYPT + "$"), ("{SSHA}", _CRYPT + "+="),
    ("{SHA}", _CRYPT + "+="), ("{CRYPT}$6$", _CRYPT + "$"), ("SCRAM-SHA-256$", _CRYPT + "$:+="),
    ("md5", "0123456789abcdef"),
]  # fmt: skip
#: Where a hash may sit: shadow, htpasswd, pgbouncer userlist.txt, SQL, LDIF, any key.
HASH_PLACES = [
    "{user}:{hash}:19000:0:99999:7:::", "{user}:!{hash}:19000::::::", "{user}:{hash}",
    '"{user}" "{hash}"', "ALTER ROLE {user} PASSWORD '{hash}';", "userPassword: {hash}",
    "  hashed = {hash}", "{user} {hash}",
]  # fmt: skip


@st.composite
def hash_lines(draw: st.DrawFn) -> tuple[str, str]:
    prefix, alphabet = draw(st.sampled_from(HASH_SHAPES))
    size = 32 if prefix == "md5" else draw(st.integers(8, 60))
    body = draw(st.text(alphabet=alphabet, min_size=size, max_size=size))
    user = draw(st.text(alphabet=string.ascii_lowercase + "_-", min_size=1, max_size=12))
    line = draw(st.sampled_from(HASH_PLACES)).format(user=user, hash=prefix + body)
    assume(body not in prefix and body not in user)
    return line, body


@settings(max_examples=400, deadline=None)
@given(hash_lines(), st.sampled_from(["", "/etc/app/accounts.conf", "/etc/x/userlist.txt"]))
def test_hash_shaped_fields_are_masked_whatever_the_file(case: tuple[str, str], path: str) -> None:
    line, body = case
    masked, count = mask_text(line, path)
    assert body not in masked and count == 1
    assert mask_text(masked, path) == (masked, 0)


#: Directive lines: a directive, arguments, a secret-looking header or key, its value.
_DIRECTIVES = [
    "proxy_set_header",
    "add_header",
    "RequestHeader set",
    "Header always set",
    "grpc_set_header",
]
_SECRET_ARGS = [
    "X-Api-Key",
    "X-Auth-Token",
    "Authorization",
    "X-Secret",
    "api_key",
    "Proxy-Authorization",
]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["", "  ", "# ", "#"]),
    st.sampled_from(_DIRECTIVES),
    st.sampled_from(_SECRET_ARGS),
    st.sampled_from(["{}", '"{}"', "'{}'", '"Bearer {}"', "'Basic {}'"]),
    st.text(alphabet=string.ascii_letters + string.digits + "+/=_.~-", min_size=6, max_size=40),
    st.sampled_from([";", "", " always;", " env=x"]),
)
def test_directive_values_after_secret_arguments_never_survive(
    lead: str, directive: str, arg: str, form: str, secret: str, tail: str
) -> None:
    assume(secret not in f"{lead}{directive} {arg} {form}{tail}".replace("{}", ""))
    # the documented gap: in a comment of plain words, a plain word after a plain secret word
    # is prose ("# The password below …")
    prose = lead.strip() and directive.startswith("Header ") and arg == "Authorization"
    assume(not (prose and form == "{}" and re.fullmatch(r"[a-z]+\.?", secret)))
    line = f"{lead}{directive} {arg} {form.format(secret)}{tail}"
    text = f"port = 1\n{line}\nlisten 80;"
    masked, count = mask_text(text)
    assert secret not in masked and count == 1
    assert masked.split("\n")[0] == "port = 1" and masked.split("\n")[2] == "listen 80;"
    assert mask_text(masked) == (masked, 0)


#: Words masking reacts to, mixed with quotes and separators: idempotence and alignment hold
#: whatever their order.
_VOCABULARY = [
    "password", "token", "X-Api-Key", "dbpass", "requirepass", "proxy_set_header", "Bearer",
    "Authorization", "key", " ", " ", "  ", "\t", "=", ":", ";", "'", '"', "#", "$6$", "{SSHA}",
    "md5", "abcdefgh12", "0123456789abcdef", "value", "x", "--", "-", "<password>", "</password>",
    "\n", "[secret]", "://u:", "@", "SCRAM-SHA-256$", "$",
]  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_VOCABULARY), max_size=40))
def test_masking_of_secret_vocabulary_is_idempotent(words: list[str]) -> None:
    text = "".join(words)
    masked, count = mask_text(text)
    assert mask_text(masked)[0] == masked
    assert masked.count("\n") == text.count("\n")
    assert 0 <= count <= text.count("\n") + 1


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_masking_keeps_line_count_and_is_idempotent(text: str) -> None:
    masked, count = mask_text(text)
    assert len(masked.split("\n")) == len(text.split("\n"))
    assert mask_text(masked)[0] == masked
    assert 0 <= count <= len(text.split("\n"))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "password: |", "  blockline", "creds:", "  a: b", "[secret]", "x = y", "[other]",
                "-----BEGIN EC PRIVATE KEY-----", "-----END EC PRIVATE KEY-----", "plain",
                "  - item", "token = 'a'b", 'k = "unterminated',
            ]
        ),
        max_size=30,
    )
)  # fmt: skip
def test_block_rules_are_idempotent(lines: list[str]) -> None:
    text = "\n".join(lines)
    masked, _ = mask_text(text)
    assert mask_text(masked)[0] == masked
    assert masked.count("\n") == text.count("\n")


# --- the host script's output ---------------------------------------------------------------


def _record(*fields: str | bytes) -> bytes:
    return b"".join((f if isinstance(f, bytes) else f.encode()) + b"\0" for f in fields)


def test_parse_records_of_every_kind() -> None:
    import base64
    import hashlib

    body = b"password = x\n"
    good = hashlib.sha256(body).hexdigest()
    data = b"".join(
        [
            _record("F", "/etc/a.conf", "/etc/a.conf", "shadow", "/hop/shadow",
                    "640\troot\tpostgres\t13\tregular file", good, b"b" + base64.b64encode(body)),
            _record("F", "/etc/*.conf", "/etc/b\nc.conf", "", "", "644\troot\troot\t9\tregular file",
                    "0" * 64, b"b" + base64.b64encode(b"changed!\n")),
            _record("U", "/etc/*.conf", "/etc/secret.conf", "", "", "600\troot\troot\t5\tregular file"),
            _record("O", "/etc/*.conf", "/etc/d.conf", "", "", "755\troot\troot\t4096\tdirectory"),
            _record("M", "/etc/none/*.conf"),
            _record("F", "/etc/*.conf", "/etc/a.conf", "", "", "640\troot\tpostgres\t13\tregular file",
                    good, b""),  # found twice: listed once
        ]
    )  # fmt: skip
    files = parse_config_files(data)
    assert [(f.path, f.state) for f in files] == [
        ("/etc/a.conf", "file"),
        ("/etc/b\nc.conf", "file"),
        ("/etc/secret.conf", "unreadable"),
        ("/etc/d.conf", "other"),
        ("/etc/none/*.conf", "missing"),
    ]
    a = files[0]
    assert (a.mode, a.owner, a.group, a.size, a.content) == ("0640", "root", "postgres", 13, body)
    assert (a.link, a.names, files[1].names) == ("shadow", ("hop", "shadow"), ())
    assert files[1].content is None  # its hash does not match: it changed while read
    assert files[3].kind == "directory" and files[2].mode == "0600"
    assert "password" not in repr(a)  # content is left out of the repr


@pytest.mark.parametrize("data", [b"X\0secret stuff\0", b"F\0/a\0/a\0", b"M\0/a\0Q\0password=1\0"])
def test_parse_refuses_garbage_without_quoting_it(data: bytes) -> None:
    with pytest.raises(ValueError) as info:
        parse_config_files(data)
    assert "secret" not in str(info.value) and "password" not in str(info.value)


# --- the verdict ----------------------------------------------------------------------------


def _file(path: str, text: str, mode: str = "0640", names: tuple[str, ...] = ()) -> ConfigFile:
    import hashlib

    raw = text.encode()
    return ConfigFile(
        path, path, "file", None, mode, "root", "root", len(raw), None,
        hashlib.sha256(raw).hexdigest(), raw, names,
    )  # fmt: skip


def test_only_masked_values_changed_says_so_never_which() -> None:
    before = build_snapshot([_file("/a", "port = 1\npassword = old1\n")], max_size=1000)
    after = build_snapshot([_file("/a", "port = 1\npassword = new2\n")], max_size=1000)
    diff = file_diff("/a", before["files"]["/a"], after["files"]["/a"], accepted="x", max_lines=50)
    assert diff["changes"] == ["only masked (secret) values changed"]
    assert "diff" not in diff


def test_diff_is_labelled_cut_and_names_mode_changes() -> None:
    old = "\n".join(f"line {i}" for i in range(100))
    new = "\n".join(f"line {i}x" for i in range(100))
    before = build_snapshot([_file("/a", old)], max_size=10_000)["files"]["/a"]
    after = build_snapshot([_file("/a", new, mode="0666")], max_size=10_000)["files"]["/a"]
    diff = file_diff("/a", before, after, accepted="accepted 2026-01-02 by ann", max_lines=20)
    lines = diff["diff"].split("\n")
    assert lines[0] == "--- /a (accepted 2026-01-02 by ann)" and lines[1] == "+++ /a (now)"
    assert len(lines) == 21 and diff["diff_cut"] == 183 and "183 more" in lines[-1]
    assert "mode 0640 -> 0666" in diff["changes"]


def test_too_large_and_binary_files_keep_no_text() -> None:
    snap = build_snapshot([_file("/big", "x" * 50), _file("/bin", "a\0b")], max_size=10)
    big, binary = snap["files"]["/big"], snap["files"]["/bin"]
    assert binary["text"] is None and binary["content"] == "binary"
    # /big was transferred here (a test file), but a real host sends nothing past max_size:
    missing_content = ConfigFile("/big", "/big", "file", size=50, sha256="ab" * 32)
    item = build_snapshot([missing_content], max_size=10)["files"]["/big"]
    assert item["text"] is None and item["content"] == "too large"
    assert big["sha256"] and big["size"] == 50


def test_verdict_without_baseline_then_clean() -> None:
    snap = build_snapshot(
        [_file("/a", "x = 1\n"), ConfigFile("/gone", "/gone", "missing")], max_size=100
    )
    status, message, details, metrics = describe(
        snap, Review("drift", None, compare({}, snap)), ["/a", "/gone"], max_lines=10
    )
    assert status is Status.WARNING and "no accepted baseline yet" in message
    assert "1 file read, 1 missing" in message and metrics["files_missing"] == 1
    assert all("text" not in row for row in details["files"])


# --- inventory and parameters ---------------------------------------------------------------


def _inventory(tmp_path: Path, host: dict[str, Any]) -> Path:
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({"hosts": {"app1": host}}))
    return path


def test_inventory_key_loads_and_refuses_relative_paths(tmp_path: Path) -> None:
    inv = load_inventory(_inventory(tmp_path, {"config_files": ["/etc/redis/*.conf", "/etc/x"]}))
    assert inv.hosts["app1"].config_files == ["/etc/redis/*.conf", "/etc/x"]
    assert load_inventory(_inventory(tmp_path, {})).hosts["app1"].config_files == []
    with pytest.raises(InventoryError, match="config_files entry 'etc/x' must be an absolute"):
        load_inventory(_inventory(tmp_path, {"config_files": ["etc/x"]}))


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/etc/x/../y.conf", "/etc/y.conf"), ("/etc/./app.conf", "/etc/app.conf"),
        ("/etc//app.conf", "/etc/app.conf"), ("//etc/app.conf", "/etc/app.conf"),
        ("/etc/app.conf/", "/etc/app.conf"), ("/etc/redis/../*.conf", "/etc/*.conf"),
    ],
)  # fmt: skip
def test_paths_spelt_two_ways_are_refused_with_the_plain_one(
    tmp_path: Path, path: str, normal: str
) -> None:
    with pytest.raises(InventoryError) as info:
        load_inventory(_inventory(tmp_path, {"config_files": ["/etc/ok.conf", path]}))
    message = str(info.value)
    assert f"config_files entry {path!r} is not a plain path" in message
    assert f"write {normal!r}" in message and "\n" not in message
    with pytest.raises(ValueError, match=rf"parameter .files.: .*write {re.escape(repr(normal))}"):
        make_ctx("config.drift", {"files": [path]})


_COMPONENTS = st.sampled_from(["etc", "a b", "*.conf", ".", "..", "", "x.d", "...", ".hidden"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_COMPONENTS, max_size=8))
def test_a_path_is_accepted_exactly_when_it_is_plain(parts: list[str]) -> None:
    path = "/" + "/".join(parts)
    normal = normal_path(path)
    assert config_path_problem(normal) is None  # the suggestion is always accepted
    assert normal_path(normal) == normal
    problem = config_path_problem(path)
    assert (problem is None) == (path == normal)
    if problem:
        assert f"write {normal!r}" in problem
    # the plain path names the same file when no component is a symlink
    assert normal == posixpath.normpath(path).replace("//", "/", 1) or normal == "/"


def test_step_files_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="must be an absolute path"):
        make_ctx("config.drift", {"files": ["conf/app.ini"]})


def test_an_empty_step_files_list_is_refused_when_the_playbook_is_checked(tmp_path: Path) -> None:
    inv = load_inventory(_inventory(tmp_path, {"config_files": ["/etc/app.conf"]}))
    step = {"name": "drift", "task": "config.drift", "hosts": "app1", "with": {"files": []}}
    book = yaml.safe_dump({"name": "drift", "steps": [step]})
    with pytest.raises(PlaybookError) as info:
        load_playbook_text(book, inv)
    message = str(info.value)
    assert "files: [] names no file; leave `files` out to use the host's config_files" in message
    assert "\n" not in message.strip()
    step["with"] = {"files": ["/etc/other.conf"]}
    load_playbook_text(yaml.safe_dump({"name": "drift", "steps": [step]}), inv)


def test_no_files_is_skipped() -> None:
    from crmmaint.tasks.api import REGISTRY

    result = REGISTRY["config.drift"].func(make_ctx("config.drift"))
    assert result.status is Status.SKIPPED and "config_files" in result.message


# --- live over sshd -------------------------------------------------------------------------

OLD_PASSWORD, NEW_PASSWORD = "Old-Pa55-4fd1a9", "New-Pa55-7c2e0b"


def _book() -> str:
    return yaml.safe_dump(
        {"name": "drift", "steps": [{"name": "drift", "task": "config.drift", "hosts": "app1"}]}
    )


def test_live_drift_over_ssh(sshd_host: Any, tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    conf = tmp_path / "etc"
    (conf / "conf.d").mkdir(parents=True)
    main = conf / "app.conf"
    main.write_text(f"port = 5432\npassword = {OLD_PASSWORD}\nworkers = 4\n")
    (conf / "conf.d" / "a.conf").write_text("a = 1\n")
    gone = conf / "conf.d" / "b.conf"
    gone.write_text("b = 2\n")
    journal_path = tmp_path / "journal.sqlite"
    inv_path = tmp_path / "inventory.yml"
    inv_path.write_text(
        yaml.safe_dump(
            {
                "settings": {"journal": str(journal_path)},
                "hosts": {
                    "app1": {
                        "address": sshd_host.address,
                        "port": sshd_host.port,
                        "user": sshd_host.user,
                        "identity_file": str(sshd_host.identity_file),
                        "known_hosts": str(sshd_host.known_hosts),
                        "config_files": [str(main), f"{conf}/conf.d/*.conf", str(conf / "no.conf")],
                    }
                },
            }
        )
    )
    inv = load_inventory(inv_path)
    book = load_playbook_text(_book(), inv)

    def run(check: bool = False) -> Any:
        with Journal(journal_path) as journal:
            summary = Runner(inv, journal, check=check).run(book, plan(book, inv))
        (result,) = summary.results
        return result.result

    first = run()
    assert first.status is Status.WARNING, first.message
    assert "no accepted baseline yet" in first.message and "1 missing" in first.message
    assert first.metrics["files"] == 3 and first.details["recorded"] is True
    with Journal(journal_path) as journal:
        (accepted,) = Baselines(journal).accept("drift", user="test")
    assert accepted.first

    clean = run()
    assert clean.status is Status.OK, clean.message
    assert "3 as accepted, 1 missing" in clean.message and "by test" in clean.message

    main.write_text(f"port = 5433\npassword = {NEW_PASSWORD}\nworkers = 4\n")
    gone.unlink()
    (conf / "conf.d" / "c.conf").write_text("c = 3\n")
    proc = run_cli("run", "-i", str(inv_path), "--json", str(_write(tmp_path, _book())))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    (result,) = doc["results"]
    assert "1 changed, 1 new, 2 missing" in result["message"], result["message"]
    rows = {row["path"]: row for row in result["details"]["files"]}
    diff = rows[str(main)]["diff"]
    assert "-port = 5432" in diff and "+port = 5433" in diff
    assert " password = ***" in diff  # the secret line is context: its value changed unseen
    assert f"{main} (accepted " in diff and "by test)" in diff
    assert rows[str(gone)]["state"] == "missing"
    assert rows[str(conf / "conf.d" / "c.conf")]["state"] == "new"
    everything = proc.stdout + proc.stderr + caplog.text
    for journal_file in tmp_path.glob("journal.sqlite*"):
        everything += journal_file.read_bytes().decode("latin-1")
    assert OLD_PASSWORD not in everything and NEW_PASSWORD not in everything
    assert "5433" in journal_path.read_bytes().decode("latin-1")  # the observation was recorded

    # check mode reads the same and records nothing
    with Journal(journal_path) as journal:
        before = Baselines(journal).observations("drift")
    main.write_text("port = 6000\n")
    checked = run(check=True)
    assert checked.status is Status.WARNING and checked.details["recorded"] is False
    with Journal(journal_path) as journal:
        assert Baselines(journal).observations("drift") == before
        Baselines(journal).accept("drift", user="test")
    main.write_text(f"port = 5433\npassword = {NEW_PASSWORD}\nworkers = 4\n")
    after = run()
    assert after.status is Status.OK, after.message


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "drift.yml"
    path.write_text(text)
    return path


SHADOW_HASHES = (
    "$6$Zs4lt9Qw$k3yHashOfRoot0000000000000000000001",
    "$y$j9T$AbCdEfGh$yesCryptHashOfApp0000000001",
)


def test_live_symlink_to_a_shadow_file_is_masked_by_its_targets_name(
    sshd_host: Any, tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    conf = tmp_path / "conf2"
    conf.mkdir()
    # shadow-shaped and not: the name rule masks every line's password field
    (conf / "shadow").write_text(
        f"root:{SHADOW_HASHES[0]}:19000:0:99999:7:::\n"
        f"app:{SHADOW_HASHES[1]}:19001::::::\n"
        "odd:Plain-Text-Pw-91:x\n"
    )
    os.symlink("shadow", conf / "accounts.conf")  # ln -s shadow conf2/accounts.conf
    os.symlink("accounts.conf", conf / "chain.conf")  # a link to the link
    journal_path = tmp_path / "journal.sqlite"
    inv_path = tmp_path / "inventory.yml"
    inv_path.write_text(
        yaml.safe_dump(
            {
                "settings": {"journal": str(journal_path)},
                "hosts": {
                    "app1": {
                        "address": sshd_host.address,
                        "port": sshd_host.port,
                        "user": sshd_host.user,
                        "identity_file": str(sshd_host.identity_file),
                        "known_hosts": str(sshd_host.known_hosts),
                        "config_files": [str(conf / "accounts.conf"), str(conf / "chain.conf")],
                    }
                },
            }
        )
    )
    inv = load_inventory(inv_path)
    book = load_playbook_text(_book(), inv)
    with Journal(journal_path) as journal:
        (outcome,) = Runner(inv, journal).run(book, plan(book, inv)).results
    result = outcome.result
    assert result.status is Status.WARNING and result.metrics["files"] == 2, result.message
    rows = {row["path"]: row for row in result.details["files"]}
    assert rows[str(conf / "accounts.conf")]["link"] == "shadow"
    assert rows[str(conf / "chain.conf")]["link"] == "accounts.conf"
    assert all(row["masked_lines"] == 3 for row in rows.values())
    with Journal(journal_path) as journal:
        Baselines(journal).accept("drift", user="test")
    # a changed hash: the diff shows the line changed, never the hash
    (conf / "shadow").write_text(
        f"root:{SHADOW_HASHES[0]}:19000:0:99999:7:::\n"
        f"app:{SHADOW_HASHES[1]}:19001::::::\n"
        "odd:Plain-Text-Pw-92:y\n"
    )
    proc = run_cli("run", "-i", str(inv_path), "--json", str(_write(tmp_path, _book())))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (doc,) = json.loads(proc.stdout)["results"]
    assert "2 changed" in doc["message"], doc["message"]
    journal_bytes = "".join(
        f.read_bytes().decode("latin-1") for f in tmp_path.glob("journal.sqlite*")
    )
    everything = proc.stdout + proc.stderr + caplog.text + repr(result.details) + result.message
    for secret in (*SHADOW_HASHES, "Zs4lt9Qw", "Plain-Text-Pw-9"):
        assert secret not in everything + journal_bytes
    assert "root:***\\napp:***" in journal_bytes  # the masked text was recorded (JSON)
