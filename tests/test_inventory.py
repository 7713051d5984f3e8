"""Inventory loading and validation, and YAML loading with line numbers."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from crmmaint.errors import InventoryError
from crmmaint.inventory import SecretSource, _check_name, describe, load_inventory
from crmmaint.yamlsource import SourceError, load_yaml_text

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

GOOD = """\
settings: {journal: journal.sqlite}
hosts:
  local: {}
  app1: {address: 10.0.0.11, user: crm, groups: [app, web]}
  db1: {address: 10.0.0.21, port: 2222, groups: [db]}
groups:
  frontends: [app1]
databases:
  crm: {engine: postgresql, host: db1, user: backup, password: "env:CRM_PW", main: true}
  shop: {engine: mysql, host: db1, groups: [erp]}
  demo: {engine: sqlite, path: crm.sqlite}
caches:
  sessions: {host: app1, redis: "redis://127.0.0.1:6379/0", password: "file:/etc/redis.pass"}
  render: {host: app1, directories: [/var/cache/crm]}
filesets:
  attachments: {host: app1, paths: [/srv/crm/attachments]}
repositories:
  offsite: {url: "s3://bucket/crm", region: eu-central-1, write_key: keys/write.key, recipients: ["file:keys/ops.pub"], default: true}
  local: {url: repo, write_key: keys/write.key, recipients: ["file:keys/ops.pub"], compression: -3}
drills:
  crm: {host: app1, address: 127.0.0.1, user: postgres}
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "inventory.yml"
    path.write_text(text)
    return load_inventory(path)


def test_a_full_inventory_loads_and_resolves(tmp_path):
    inv = load(tmp_path, GOOD)
    assert inv.hosts["local"].is_local and not inv.hosts["app1"].is_local
    assert inv.hosts["db1"].port == 2222
    assert [t.name for t in inv.resolve("hosts", ["web"])] == ["app1"]
    assert [t.name for t in inv.resolve("hosts", ["frontends", "db"])] == ["app1", "db1"]
    assert [t.name for t in inv.resolve("database", ["all"])] == ["crm", "shop", "demo"]
    assert [t.name for t in inv.resolve("database", ["main"])] == ["crm"]
    assert [t.name for t in inv.resolve("database", ["erp"])] == ["shop"]
    crm = inv.target("database", "crm")
    assert crm.host.name == "db1" and crm.label == "crm@db1"
    assert inv.databases["demo"].path == str(tmp_path / "crm.sqlite")
    assert inv.default_repository().name == "offsite"
    assert inv.repositories["local"].url == f"file://{tmp_path / 'repo'}"
    assert inv.repositories["offsite"].options == {"region": "eu-central-1"}
    assert (
        inv.repositories["local"].compression == -3
        and inv.repositories["offsite"].compression is None
    )
    assert inv.repositories["local"].recipients == [f"file:{tmp_path / 'keys' / 'ops.pub'}"]


def test_drill_target_overrides_only_what_it_names(tmp_path):
    inv = load(tmp_path, GOOD)
    scratch, host = inv.drill_database("crm")
    assert host.name == "app1" and scratch.address == "127.0.0.1" and scratch.user == "postgres"
    assert scratch.dbname == "crm" and scratch.password == inv.databases["crm"].password
    same, owner = inv.drill_database("shop")
    assert same is inv.databases["shop"] and owner.name == "db1"


def test_secrets_are_sources_never_values(tmp_path, monkeypatch):
    inv = load(tmp_path, GOOD)
    secret = inv.databases["crm"].password
    assert isinstance(secret, SecretSource)
    monkeypatch.setenv("CRM_PW", "hunter2")
    assert secret.resolve() == b"hunter2"
    assert "hunter2" not in repr(inv.databases["crm"]) and "hunter2" not in str(describe(inv))


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("hosts:\n  a: {adress: x}\n", 2, "did you mean 'address'"),
        ("hostz: {}\n", 1, "unknown key 'hostz'"),
        ("hosts:\n  a: {port: 70000}\n", 2, "out of range"),
        ("hosts:\n  a: {port: '22'}\n", 2, "must be an integer"),
        ("hosts:\n  a: {connection: telnet}\n", 2, "must be one of ssh, local"),
        ("hosts:\n  a: {become: su}\n", 2, "must be one of sudo"),
        ("databases:\n  x: {engine: oracle}\n", 2, "must be one of postgresql"),
        ("databases:\n  x: {host: ghost, engine: mysql}\n", 2, "unknown host 'ghost'"),
        ("databases:\n  x: {engine: sqlite}\n", 2, "needs 'path'"),
        ("databases:\n  x: {engine: mysql, path: /x}\n", 2, "only for sqlite"),
        (
            "databases:\n  x: {engine: mysql, password: hunter2}\n",
            2,
            "inline secrets are not allowed",
        ),
        ("caches:\n  c: {redis: 'redis://:pw@h:6379'}\n", 2, "no password in the redis URL"),
        ("caches:\n  c: {}\n", 2, "needs 'redis' or 'directories'"),
        ("filesets:\n  f: {}\n", 2, "needs 'paths'"),
        ("repositories:\n  r: {url: 'ftp://x'}\n", 2, "not supported"),
        ("repositories:\n  r: {}\n", 2, "missing required field 'url'"),
        ("repositories:\n  r: {url: x, compression: 0}\n", 2, "not a zstd level"),
        ("repositories:\n  r: {url: x, compression: 22}\n", 2, "not a zstd level"),
        ("repositories:\n  r: {url: x, compression: fast}\n", 2, "must be an integer"),
        ("groups:\n  g: [nobody]\n", 2, "unknown host 'nobody'"),
        ("drills:\n  nodb: {}\n", 2, "unknown source 'nodb'"),
        ("hosts: {a: {}}\ndrills:\n  fileset:x: {}\n", 3, "unknown source 'fileset:x'"),
        ("hosts: {a: {}}\ndrills:\n  table:x: {}\n", 3, "unknown source 'table:x'"),
        ("hosts:\n  a: {}\n  a: {}\n", 3, "duplicate key"),
        ("hosts: [\n", 2, "YAML syntax"),
        ("- 1\n", None, "must be a mapping"),
        ("", None, "names no hosts, databases"),
        ("settings: {journal: x.sqlite}\nvars: {a: 1}\n", None, "names no hosts, databases"),
        ("hosts:\n  a: {address: ''}\n", 2, "is not a host name or IP address"),
        ('hosts:\n  a: {address: "x\\ny"}\n', 2, "is not a host name or IP address"),
        ("hosts:\n  a: {address: 'a b'}\n", 2, "is not a host name or IP address"),
        ("hosts:\n  a: {address: -oProxyCommand=x}\n", 2, "leading '-'"),
        ("databases:\n  x: {engine: mysql, address: ''}\n", 2, "not a host name"),
        ("hosts: {a: {}}\ndrills:\n  x: {}\n", 3, "unknown source"),
        ("hosts: {a: {}}\nsettings:\n  forks: 5\n", 3, "unknown key 'forks' in settings"),
        ("hosts: {a: {}}\nsettings:\n  journal: 5\n", 3, "must be a string"),
        ("hosts: {a: {}}\nsettings:\n  journal: ' '\n", 3, "must be a path"),
        ("hosts:\n  yes: {}\n  'yes': {}\n", 3, "duplicate key 'yes'"),
    ],
)
def test_every_error_names_file_line_and_what(tmp_path, text, line, fragment):
    with pytest.raises(InventoryError) as info:
        load(tmp_path, text)
    message = str(info.value)
    where = f"{tmp_path / 'inventory.yml'}:{line}:" if line else f"{tmp_path / 'inventory.yml'}:"
    assert message.startswith(where), message
    assert fragment in message


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(InventoryError, match="crmmaint demo"):
        load_inventory(tmp_path / "nope.yml")


def test_unknown_selector_lists_known_names(tmp_path):
    inv = load(tmp_path, GOOD)
    with pytest.raises(InventoryError, match=r"known: .*app1"):
        inv.resolve("hosts", ["nope"])


@pytest.mark.parametrize("name", ["demo-inventory.yml", "production-inventory.yml"])
def test_shipped_examples_load(name):
    inv = load_inventory(EXAMPLES / name)
    assert inv.databases and inv.repositories


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    ["hosts", "databases", "engine", "host", "url", "port", "paths", "x"]
                ),
                c,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
)
def test_random_documents_only_ever_raise_inventory_errors(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("inv") / "inventory.yml"
    path.write_text(yaml.safe_dump(doc))
    with contextlib.suppress(InventoryError):
        load_inventory(path)


def test_yaml_lines_are_remembered():
    doc = load_yaml_text("a: 1\nb:\n  c: [1, 2]\n  d: x\n")
    assert doc.line_of("b") == 2 and doc["b"].line_of("d") == 4
    with pytest.raises(SourceError) as info:
        load_yaml_text("a: 1\na: 2\n")
    assert info.value.line == 2


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646])
def test_an_inventory_others_may_write_is_refused(tmp_path, mode):
    path = tmp_path / "inventory.yml"
    path.write_text("hosts: {local: {connection: local}}\n")
    path.chmod(mode)
    with pytest.raises(InventoryError, match="refusing an inventory writable by"):
        load_inventory(path)
    path.chmod(0o644)
    assert load_inventory(path).hosts


def test_an_inventory_another_user_owns_is_refused(tmp_path):
    import pwd

    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    path = tmp_path / "inventory.yml"
    path.write_text("hosts: {local: {connection: local}}\n")
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(InventoryError, match="owned by uid"):
        load_inventory(path)


def test_configuration_files_that_are_fifos_or_endless_are_refused_at_once(tmp_path):
    """A FIFO as an inventory or recipients file must not hang crmmaint, /dev/zero must not
    fill its memory: each is one clear error."""
    import os

    from crmmaint.errors import ConfigError
    from crmmaint.inventory import RepositorySettings
    from crmmaint.repository.configured import recipients_for
    from crmmaint.yamlsource import SourceError, load_yaml_file

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(SourceError, match="not a regular file"):
        load_yaml_file(fifo)
    for path in (fifo, "/dev/zero"):
        cfg = RepositorySettings(name="main", url=str(tmp_path), recipients=[f"file:{path}"])
        with pytest.raises(ConfigError, match="not a regular file"):
            recipients_for(cfg)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        # the document's mapping is the first level
        ("a: 1\nb: " + "[" * 64 + "]" * 64 + "\n", 2, "nested deeper than 64 levels"),
        ("a: 1\nb: " + "[" * 63 + "]" * 63 + "\n", None, None),
        ("a: 1\nb: 1234567890123456789\n", 2, "field 'b': integer '1234567890123456789' is out"),
        ("a: 1\nb: -999999999999999999\n", None, None),
        ("a: 1\nb: [0x" + "f" * 90 + "]\n", 2, "is out of range (at most 18 digits)"),
        ("a: 1\nb: .inf\n", 2, "field 'b': '.inf' is not a finite number"),
        ("a: 1\nb: 1.0e+999\n", 2, "not a finite number"),
        ("a: &x [1]\nb: [2, *x]\n", None, None),
        ("a: &x [1, *x]\n", 1, "alias *x refers to a node that contains it"),
        ("a: 1\nb: 2024-13-01\n", 2, "field 'b': cannot read '2024-13-01'"),
        # a flat list of 7 million items took minutes and gigabytes: refused at value 20,001
        ("a: 1\nb:\n" + "- 1\n" * 21000, 19998, "more than 20,000 values in one file"),
        ("a: 1\nb: [" + "1, " * 19990 + "1]\n", None, None),
    ],
)
def test_yaml_limits_are_source_errors_with_the_line(text, line, message):
    if message is None:
        load_yaml_text(text)
        return
    with pytest.raises(SourceError) as info:
        load_yaml_text(text)
    assert (info.value.line, message in info.value.message) == (line, True), info.value.message


# --- names: printed in listings and messages, typed in flags ------------------------------------

_BAD_NAME_CHARS = st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Co"]) | st.sampled_from(
    ["\n", "\t", "\r", "\x1b", "\u202e", "\u200b", "\x85", "\u2028"]
)


@given(
    st.sampled_from(["hosts", "databases", "filesets", "repositories", "caches", "groups"]),
    st.text(st.characters(categories=["L", "N"]), max_size=4),
    _BAD_NAME_CHARS,
    st.text(st.characters(categories=["L", "N"]), max_size=4),
)
def test_a_name_with_a_control_or_format_character_is_refused(section, before, bad, after):
    """A newline split a TSV row; U+202E turned a line around: every section refuses them,
    at the name's line."""
    name = before + bad + after
    with pytest.raises(SourceError, match=f"U\\+{ord(bad):04X}") as info:
        _check_name(name, section, 7)
    assert info.value.line == 7


@given(st.text(st.characters(categories=["L", "N", "P", "S", "Zs"]), min_size=1))
def test_printable_names_are_accepted_unless_comma_or_spaces_around(name):
    if "," in name or name != name.strip() or not name.strip():
        with pytest.raises(SourceError):
            _check_name(name, "databases", 1)
    else:
        _check_name(name, "databases", 1)


def test_a_bad_name_is_refused_with_its_file_and_line(tmp_path):
    text = 'hosts:\n  local: {connection: local}\ndatabases:\n  "crm\\nx": {engine: sqlite, path: a.db}\n'
    with pytest.raises(InventoryError, match=r"inventory.yml:4: .*U\+000A"):
        load(tmp_path, text)


@pytest.mark.parametrize("written", ["yes", "off", "null", "~", "0x10", "1.0", "2024-01-01"])
def test_a_name_is_the_text_as_written(tmp_path, written):
    """YAML reads `yes:` as true and `0x10:` as 16: a host named so was listed as "True" or
    "16". A key is a name or a field, so it is the text as written."""
    inv = load(tmp_path, f"hosts:\n  {written}: {{connection: local}}\n")
    assert list(inv.hosts) == [written]
