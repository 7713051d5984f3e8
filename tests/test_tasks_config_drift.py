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
    glob_matches,
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
        # a secret substring wins over a harmless last word (over-masking a path: documented)
        "vault_password_file", "bearer_token_file", "client_secret_path", "sig",
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
    # MySQL/MariaDB
    ("CREATE USER 'app'@'%' IDENTIFIED BY 'my-Secret1';", "my-Secret1", "CREATE USER 'app'@'%' IDENTIFIED BY '***';"),
    ("ALTER USER 'app'@'localhost' IDENTIFIED BY PASSWORD 'altpw99';", "altpw99", "IDENTIFIED BY PASSWORD '***';"),
    ("GRANT ALL ON crm.* TO 'app'@'%' IDENTIFIED BY 'grantpw1';", "grantpw1", "TO 'app'@'%' IDENTIFIED BY '***';"),
    ("SET PASSWORD FOR 'app'@'%' = PASSWORD('setpw77');", "setpw77", "SET PASSWORD"),
    ("SELECT PASSWORD('selpw88');", "selpw88", "SELECT PASSWORD('***');"),
    ("ALTER USER app IDENTIFIED WITH caching_sha2_password BY 'cachpw1'", "cachpw1", "ALTER USER app IDENTIFIED"),
    ("app:*6BB4837EB74329105EE4568DDA7DC67ED2CA2AD9", "6BB4837EB74329105EE4568DDA7DC67ED2CA2AD9", "app:***"),
    # webhooks: the secret path segments
    ("url = https://hooks.slack.com/services/T0AB12CD/B0EF34GH/xoxAbCdEf123456789", "xoxAbCdEf123456789", "hooks.slack.com/services/T0AB12CD/B0EF34GH/***"),
    ("hook: https://discord.com/api/webhooks/123456789012345678/dIsC-0rd_T0ken", "dIsC-0rd_T0ken", "api/webhooks/123456789012345678/***"),
    ("https://acme.webhook.office.com/webhookb2/1a-2b@3c-4d/IncomingWebhook/abcdef0123456789/5e-6f", "abcdef0123456789", "/IncomingWebhook/***"),
    ("MM_HOOK=https://chat.example.com/hooks/x3f9kq0pz8mnb7vc6xa", "x3f9kq0pz8mnb7vc6xa", "https://chat.example.com/hooks/***"),
    # sigils, cookies
    ('set $api_key "nginxkey1";', "nginxkey1", 'set $api_key "***";'),
    ("set -g @password 'tmuxpw12'", "tmuxpw12", "set -g @password '***'"),
    ('proxy_set_header Cookie "session=c00kie1";', "c00kie1", 'proxy_set_header Cookie "***";'),
    ("Cookie: session=c00kie2; theme=dark", "c00kie2", "Cookie: ***"),
    ("Set-Cookie: sid=c00kie3; Path=/", "c00kie3", "Set-Cookie: ***"),
    ("""curl -H 'Cookie: sid=c00kie4' https://x""", "c00kie4", "curl -H 'Cookie: ***' https://x"),
    ("<password><![CDATA[cdatapw1]]></password>", "cdatapw1", "<password><![CDATA[***]]></password>"),
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
        "CREATE USER app IDENTIFIED BY RANDOM PASSWORD;",
        "session.cookie_secure = 1",
        "set $backend http://app;",
        "https://api.example.com/v4/projects/12/hooks/34",
        "<x>*</x>",
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
_NO_SQUOTE = _PRINTABLE.replace("'", "").replace("\\", "")
_NO_DQUOTE = _PRINTABLE.replace('"', "").replace("\\", "")
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
    ("CREATE USER 'app'@'%' IDENTIFIED BY '{}';", _NO_SQUOTE),
    ("ALTER USER 'app'@'localhost' IDENTIFIED BY PASSWORD '{}';", _NO_SQUOTE),
    ("GRANT ALL ON crm.* TO 'app'@'%' IDENTIFIED BY '{}' WITH GRANT OPTION;", _NO_SQUOTE),
    ("SET PASSWORD FOR 'app'@'%' = PASSWORD('{}');", _NO_SQUOTE),
    ("ALTER USER app IDENTIFIED WITH mysql_native_password AS '*{}';", "0123456789ABCDEF"),
    ("https://hooks.slack.com/services/T0AB12CD/B0EF34GH/{}", string.ascii_letters + string.digits),
    ("webhook: https://discord.com/api/webhooks/123456789012345678/{}", string.ascii_letters + string.digits + "_-"),
    ('"url": "https://x.webhook.office.com/webhookb2/a-1@b-2/IncomingWebhook/{}/c-3"', string.ascii_letters + string.digits),
    ('set $api_key "{}";', _NO_DQUOTE),
    ("  set $secret_token {};", _PRINTABLE),
    ('proxy_set_header Cookie "session={}";', _NO_DQUOTE),
    ("Cookie: sid={}", _PRINTABLE),
    ("""curl -H "Set-Cookie: sid={}" https://x""", _NO_DQUOTE),
    ("set -g @password '{}'", _NO_SQUOTE),
    ("<password>\n  {}\n</password>", _PRINTABLE.replace("<", "")),
    ('<db:password enc="no">\n{}\n  tail\n</db:password>', _PRINTABLE.replace("<", "")),
    ("<password><![CDATA[{}]]></password>", _PRINTABLE.replace("]", "")),
    ('secret: "first line\n  {}"', _NO_DQUOTE),
    ("password: 'a\n  {}\n  b'", _NO_SQUOTE),
    ('export DB_PASSWORD="\n{}\n"', _NO_DQUOTE),
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
    ("md5", "0123456789abcdef"), ("*", "0123456789ABCDEF"),
]  # fmt: skip
#: Where a hash may sit: shadow, htpasswd, pgbouncer userlist.txt, SQL, LDIF, any key.
HASH_PLACES = [
    "{user}:{hash}:19000:0:99999:7:::", "{user}:!{hash}:19000::::::", "{user}:{hash}",
    '"{user}" "{hash}"', "ALTER ROLE {user} PASSWORD '{hash}';", "userPassword: {hash}",
    "  hashed = {hash}", "{user} {hash}",
    "ALTER USER '{user}'@'%' IDENTIFIED WITH mysql_native_password AS '{hash}';",
]  # fmt: skip


@st.composite
def hash_lines(draw: st.DrawFn) -> tuple[str, str]:
    prefix, alphabet = draw(st.sampled_from(HASH_SHAPES))
    size = {"md5": 32, "*": 40}.get(prefix) or draw(st.integers(8, 60))
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
    "set",
    "set -g",
]
_SECRET_ARGS = [
    "X-Api-Key",
    "X-Auth-Token",
    "Authorization",
    "X-Secret",
    "api_key",
    "Proxy-Authorization",
    "Cookie",
    "Set-Cookie",
    "$api_key",
    "@password",
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
    prose = (
        lead.strip()
        and not re.search(r"[_.\-]|^.[^A-Z]*[A-Z]", directive.split()[0])
        and not re.search(r"[_.\-]|^.[^A-Z]*[A-Z]", arg.lstrip("$@"))
    )
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
    "\n", "[secret]", "://u:", "@", "SCRAM-SHA-256$", "$", "IDENTIFIED BY ", "PASSWORD(",
    "Cookie: ", "set $api_key ", "@password ", "*6BB4837EB74329105EE4568DDA7DC67ED2CA2AD9",
    "hooks.slack.com/services/T0/B0/", "/hooks/", "<![CDATA[", "]]>", "<secret a='1'>",
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
                "  - item", "token = 'a'b", 'k = "unterminated', "<password>", "</password>",
                "<user>u</user>", 'secret: "open', '  more"', "  tail'", "password: 'x",
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


# --- multi-line values ----------------------------------------------------------------------


def test_values_spanning_lines_are_masked_up_to_their_end() -> None:
    text = "\n".join(
        [
            "<config>",
            "  <password>",
            "    xmlline1",
            "    xmlline2</password>",
            "  <user>alice</user>",
            "  <secret>",
            "    <item>inner</item>",
            "    plainsecret",
            "  </secret>",
            "</config>",
            'secret: "yaml-one',
            '  yaml-two"',
            "port: 1",
            "password: 'sq-one",
            "  sq-two'  # tail",
            'note: "an open quote under a plain key',
            "stays: readable",
        ]
    )
    masked, count = mask_text(text)
    lines = masked.split("\n")
    for secret in ("xmlline", "plainsecret", "yaml-one", "yaml-two", "sq-one", "sq-two"):
        assert secret not in masked, masked
    assert lines[1] == "  <password>" and lines[3] == "    ***</password>"
    assert lines[4] == "  <user>alice</user>" and lines[8] == "  </secret>"
    assert lines[10] == 'secret: "***' and lines[11] == '  ***"' and lines[12] == "port: 1"
    assert lines[14] == "  ***'  # tail"
    assert lines[-2:] == ['note: "an open quote under a plain key', "stays: readable"]
    assert len(lines) == len(text.split("\n")) and count == 7
    assert mask_text(masked) == (masked, 0)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["secret", "db_password", "export API_TOKEN", "- passwd"]),
    st.sampled_from(["=", ": "]),
    st.sampled_from(['"', "'"]),
    st.lists(st.text(alphabet=string.ascii_letters + string.digits + " =:#", min_size=6, max_size=20), min_size=1, max_size=4),
)  # fmt: skip
def test_a_quoted_secret_continued_on_later_lines_never_survives(
    key: str, sep: str, quote: str, parts: list[str]
) -> None:
    parts = [p.strip() for p in parts]
    assume(all(len(p) >= 6 for p in parts))
    body = "\n  ".join(parts)
    text = f"port = 1\n{key}{sep}{quote}{body}{quote}\nworkers = 4"
    masked, count = mask_text(text)
    for part in parts:
        assert part not in masked
    assert masked.split("\n")[0] == "port = 1" and masked.split("\n")[-1] == "workers = 4"
    assert count == len(parts) and mask_text(masked) == (masked, 0)


# --- glob scope -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/etc/*.conf", "/etc/a.conf", True), ("/etc/*.conf", "/etc/sub/a.conf", False),
        ("/etc/*.conf", "/etc/.hidden.conf", False), ("/etc/.*.conf", "/etc/.hidden.conf", True),
        ("/etc/*/x.conf", "/etc/a/x.conf", True), ("/etc/a?.conf", "/etc/ab.conf", True),
        ("/etc/[ab].conf", "/etc/c.conf", False), ("/etc/x.conf", "/etc/x.conf", True),
        ("/etc/*.conf", "/etc/*.conf", True),
    ],
)  # fmt: skip
def test_glob_matches_as_the_hosts_shell_expands(pattern: str, path: str, matches: bool) -> None:
    assert glob_matches(pattern, path) is matches


_NAMES = st.sampled_from(["a.conf", "b.conf", ".h.conf", "x", "sub", "a b.conf", "ab.ini"])
_GLOBS = st.sampled_from(["*.conf", "*", "?.conf", "a*", "[ab]*", ".*", "*.ini", "sub"])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(_NAMES, min_size=1, max_size=3), min_size=1, max_size=6),
    st.lists(_GLOBS, min_size=1, max_size=3),
)
def test_glob_matches_agrees_with_a_real_expansion(
    tmp_path_factory: Any, paths: list[list[str]], pattern: list[str]
) -> None:
    import glob

    root = tmp_path_factory.mktemp("g")
    for parts in paths:
        target = root.joinpath(*parts)
        if any(p.is_file() for p in target.parents if root in p.parents):
            continue
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("x")
    glob_pattern = str(root) + "/" + "/".join(pattern)
    expanded = set(glob.glob(glob_pattern))
    every = {str(p) for p in root.rglob("*")} | {str(p) for p in root.rglob(".*")}
    assert {p for p in every if glob_matches(glob_pattern, p)} == expanded


# --- the task on the local host: check mode, scope, secrets' sizes, duplicates ------------------


def _local_run(
    tmp_path: Path,
    config_files: list[str],
    params: dict[str, Any] | None = None,
    *,
    check: bool = False,
) -> Any:
    from crmmaint.inventory import Inventory
    from crmmaint.inventory.model import Host
    from crmmaint.tasks.api import REGISTRY

    inventory = Inventory(path=str(tmp_path / "inventory.yml"))
    inventory.hosts["local"] = Host(name="local", connection="local", config_files=config_files)
    with Journal(tmp_path / "journal.sqlite") as journal:
        ctx = make_ctx("config.drift", params, inventory=inventory, journal=journal, check=check)
        return REGISTRY["config.drift"].func(ctx)


def _accept(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.sqlite") as journal:
        Baselines(journal).accept("drift", user="ann")


def _recorded(tmp_path: Path) -> dict[str, Any]:
    with Journal(tmp_path / "journal.sqlite") as journal:
        (obs,) = Baselines(journal).observations("drift")
        return obs.snapshot["files"]


def test_check_mode_says_it_records_nothing_with_or_without_a_baseline(tmp_path: Path) -> None:
    conf = tmp_path / "app.conf"
    conf.write_text("port = 1\n")
    first = _local_run(tmp_path, [str(conf)], check=True)
    assert first.status is Status.WARNING and first.details["recorded"] is False
    assert first.message.endswith(
        "no accepted baseline yet (check mode records nothing): run without --check to record"
        " it, then `crmmaint baseline accept drift`"
    ), first.message
    assert "baseline show" not in first.message
    _local_run(tmp_path, [str(conf)])
    _accept(tmp_path)
    conf.write_text("port = 2\n")
    changed = _local_run(tmp_path, [str(conf)], check=True)
    assert changed.status is Status.WARNING, changed.message
    assert "1 change since the baseline accepted" in changed.message
    assert changed.message.endswith(
        "(check mode records nothing: run without --check to record it, then"
        " `crmmaint baseline accept drift`)"
    ), changed.message
    assert "baseline show" not in changed.message
    recorded = _local_run(tmp_path, [str(conf)])
    assert "(`crmmaint baseline show drift`;" in recorded.message


def test_a_change_of_masked_values_alone_tells_no_size(tmp_path: Path) -> None:
    conf = tmp_path / "app.conf"
    conf.write_text("port = 1\npassword = short\n")
    _local_run(tmp_path, [str(conf)])
    assert "size" not in _recorded(tmp_path)[str(conf)]  # size - masked text = secret length
    _accept(tmp_path)
    conf.write_text("port = 1\npassword = a-much-longer-secret\n")
    result = _local_run(tmp_path, [str(conf)])
    assert result.status is Status.WARNING
    assert f"file {conf}: only masked (secret) values changed" in result.message, result.message
    (row,) = result.details["files"]
    assert row["changes"] == ["only masked (secret) values changed"] and "size" not in row
    every = json.dumps(result.details) + result.message
    assert not re.search(r"\b(?:17|32) ?B\b|\b(?:17|32)\b -> ", every), every
    shown = run_cli("baseline", "show", "drift", "-i", str(_inventory_file(tmp_path, [str(conf)])))
    assert shown.returncode == 0, shown.stderr
    assert "only masked (secret) values changed" in shown.stdout and "size" not in shown.stdout


def _inventory_file(tmp_path: Path, config_files: list[str]) -> Path:
    path = tmp_path / "inventory.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "settings": {"journal": str(tmp_path / "journal.sqlite")},
                "hosts": {"local": {"connection": "local", "config_files": config_files}},
            }
        )
    )
    return path


def test_a_step_with_its_own_files_keeps_the_rest_of_the_hosts_baseline(tmp_path: Path) -> None:
    conf = tmp_path / "etc"
    (conf / "conf.d").mkdir(parents=True)
    host_files = [str(conf / "main.conf"), f"{conf}/conf.d/*.conf"]
    (conf / "main.conf").write_text("a = 1\n")
    (conf / "conf.d" / "x.conf").write_text("x = 1\n")
    (conf / "conf.d" / "y.conf").write_text("y = 1\n")
    (conf / "extra.conf").write_text("e = 1\n")
    _local_run(tmp_path, host_files)
    _accept(tmp_path)

    # a step naming another file compares only it; the host's files are kept as observed
    step = _local_run(tmp_path, host_files, {"files": [str(conf / "extra.conf")]})
    assert step.message.startswith("1 file: 0 as accepted, 1 new;"), step.message
    assert "no longer configured" not in step.message and "missing" not in step.message
    assert set(_recorded(tmp_path)) == {*host_files[:1], str(conf / "conf.d/x.conf"),
                                        str(conf / "conf.d/y.conf"), str(conf / "extra.conf")}  # fmt: skip
    _accept(tmp_path)
    with Journal(tmp_path / "journal.sqlite") as journal:
        (base,) = Baselines(journal).baselines("drift")
    assert len(base.snapshot["files"]) == 4  # accepting dropped nothing

    # a step with a glob: a deleted match is missing (never "removed"), other paths untouched
    (conf / "conf.d" / "y.conf").unlink()
    (conf / "main.conf").write_text("a = 2\n")  # outside the step's scope: not its business
    globbed = _local_run(tmp_path, host_files, {"files": [f"{conf}/conf.d/*.conf"]})
    assert globbed.message.startswith("2 files: 1 as accepted, 1 missing;"), globbed.message
    assert f"file {conf}/conf.d/y.conf missing" in globbed.message
    assert "removed" not in globbed.message and "main.conf" not in globbed.message
    assert str(conf / "main.conf") in _recorded(tmp_path)  # kept as last observed

    # the host-wide run sees the rest: main.conf changed, extra.conf no longer configured
    wide = _local_run(tmp_path, host_files)
    assert "1 changed" in wide.message and "1 no longer configured" in wide.message, wide.message
    assert f"file {conf}/extra.conf no longer configured" in wide.message
    assert "removed" not in wide.message


def test_a_step_without_a_previous_observation_keeps_the_baselines_other_paths(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "a.conf", tmp_path / "b.conf"
    a.write_text("a = 1\n")
    b.write_text("b = 1\n")
    _local_run(tmp_path, [str(a), str(b)])
    _accept(tmp_path)
    with Journal(tmp_path / "journal.sqlite") as journal:
        journal.state_delete("observed:drift:hosts/local")  # as if nothing were observed
    _local_run(tmp_path, [str(a), str(b)], {"files": [str(a)]})
    assert set(_recorded(tmp_path)) == {str(a), str(b)}


def test_a_file_accepted_as_missing_appears_and_a_present_one_goes_missing(
    tmp_path: Path,
) -> None:
    conf, other = tmp_path / "late.conf", tmp_path / "gone.conf"
    other.write_text("o = 1\n")
    _local_run(tmp_path, [str(conf), str(other)])
    _accept(tmp_path)
    conf.write_text("port = 5432\npassword = hunter2two\n")
    other.unlink()
    result = _local_run(tmp_path, [str(conf), str(other)])
    assert "1 new, 1 missing" in result.message, result.message
    assert f"file {conf} appeared" in result.message and f"file {other} missing" in result.message
    inv = _inventory_file(tmp_path, [str(conf), str(other)])
    shown = run_cli("baseline", "show", "drift", "-i", str(inv))
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "appeared (accepted as missing): mode " in out and "+port = 5432" in out
    assert "+password = ***" in out and "hunter2two" not in out
    assert "content changed (not read" not in out
    lines = out.split("\n")
    gone = lines.index(next(line for line in lines if str(other) in line))
    assert lines[gone].strip() == f"file {other} missing"


def test_file_diff_names_appeared_and_missing() -> None:
    item = build_snapshot([_file("/a", "x = 1\ny = 2\n")], max_size=100)["files"]["/a"]
    appeared = file_diff("/a", {"missing": True}, item, accepted="accepted x", max_lines=50)
    assert (
        appeared["changes"][0]
        == "appeared (accepted as missing): mode 0640, owner root, group root, 12 B"
    )
    assert appeared["diff"].split("\n")[-3:] == ["+x = 1", "+y = 2", "+"]
    assert file_diff("/a", item, {"missing": True}, accepted="x", max_lines=5) == {
        "changes": ["missing"]
    }
    unreadable = {
        "unreadable": True,
        "mode": "0600",
        "owner": "root",
        "group": "root",
        "link": None,
        "size": 3,
    }
    assert (
        file_diff("/a", item, unreadable, accepted="x", max_lines=5)["changes"][0] == "unreadable"
    )
    assert file_diff("/a", unreadable, item, accepted="x", max_lines=5)["changes"][0].startswith(
        "readable now (accepted as unreadable)"
    )  # fmt: skip


def test_an_older_baselines_size_of_a_masked_file_is_no_change() -> None:
    now = build_snapshot([_file("/a", "password = x1\n")], max_size=100)
    old = {"files": {"/a": {**now["files"]["/a"], "size": 14}}}
    from crmmaint.baselines import Baseline

    base = Baseline("drift", "hosts/local", "local", old, "ann", 0.0, None, 0.0)
    status, message, _, _ = describe(
        now, Review("drift", base, compare(old, now)), ["/a"], max_lines=10
    )
    assert status is Status.OK and "1 as accepted" in message, message


def test_describe_change_names_states_not_attributes() -> None:
    from crmmaint.baselines import Change
    from crmmaint.tasks.config_drift import describe_change

    item = build_snapshot([_file("/a", "x = 1\n")], max_size=100)["files"]["/a"]
    assert describe_change(Change("files", "/a", "changed", {"missing": True}, item), "file") == (
        "file /a appeared"
    )
    assert describe_change(Change("files", "/a", "removed", item, None)) == "files /a missing"
    secret = [build_snapshot([_file("/a", f"password = {v}\n")], max_size=100)["files"]["/a"]
              for v in ("short", "much-longer")]  # fmt: skip
    assert describe_change(Change("files", "/a", "changed", *secret), "file") == (
        "file /a: only masked (secret) values changed"
    )


def test_repeated_files_are_refused_in_a_step_and_counted_once_in_the_inventory(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match=r"files lists '/etc/a\.conf' twice: name each"):
        make_ctx("config.drift", {"files": ["/etc/a.conf", "/etc/b", "/etc/a.conf"]})
    inv = load_inventory(_inventory(tmp_path, {"config_files": ["/etc/a", "/etc/*.d", "/etc/a"]}))
    assert inv.hosts["app1"].config_files == ["/etc/a", "/etc/*.d"]


# --- live over sshd -------------------------------------------------------------------------

OLD_PASSWORD, NEW_PASSWORD = "Old-Pa55-4fd1a9", "New-Pa55-7c2e0b"


def _sshd_inventory(tmp_path: Path, sshd_host: Any, config_files: list[str]) -> tuple[Path, Path]:
    """An inventory of the sshd test host ``app1`` with ``config_files``, and its journal:
    (journal path, inventory path)."""
    journal_path = tmp_path / "journal.sqlite"
    inv_path = tmp_path / "inventory.yml"
    host = {
        "address": sshd_host.address,
        "port": sshd_host.port,
        "user": sshd_host.user,
        "identity_file": str(sshd_host.identity_file),
        "known_hosts": str(sshd_host.known_hosts),
        "config_files": config_files,
    }
    inv_path.write_text(
        yaml.safe_dump({"settings": {"journal": str(journal_path)}, "hosts": {"app1": host}})
    )
    return journal_path, inv_path


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
    journal_path, inv_path = _sshd_inventory(
        tmp_path, sshd_host, [str(main), f"{conf}/conf.d/*.conf", str(conf / "no.conf")]
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
    journal_path, inv_path = _sshd_inventory(
        tmp_path, sshd_host, [str(conf / "accounts.conf"), str(conf / "chain.conf")]
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
