"""Accepted baselines (crmmaint/baselines.py): the comparison (unit and property tests), the
store's observe/accept cycle in a real journal, and ``crmmaint baseline accept|show`` as a
subprocess with its exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from clirun import run_cli
from hypothesis import given
from hypothesis import strategies as st

from crmmaint.baselines import (
    ADDED,
    CHANGED,
    REMOVED,
    Baselines,
    Change,
    compare,
    review,
)
from crmmaint.errors import ConfigError
from crmmaint.inventory import Host, Inventory
from crmmaint.journal import Journal

# --- compare ------------------------------------------------------------------------------

values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.lists(st.text(max_size=3))
)
items = st.dictionaries(st.text(max_size=4), values, max_size=3)
snapshots = st.dictionaries(
    st.sampled_from(["roles", "keys", "files"]),
    st.dictionaries(st.text(max_size=6), items, max_size=4),
    max_size=3,
)


def apply(base: dict[str, Any], changes: list[Change]) -> dict[str, Any]:
    out = {s: dict(v) for s, v in base.items()}
    for c in changes:
        section = out.setdefault(c.section, {})
        if c.change == REMOVED:
            del section[c.key]
        else:
            section[c.key] = c.after
    return {s: v for s, v in out.items() if v}


@given(snapshots, snapshots)
def test_compare_leads_from_one_snapshot_to_the_other(a: dict, b: dict) -> None:
    changes = compare(a, b)
    assert apply(a, changes) == {s: v for s, v in b.items() if v}
    assert compare(b, a) == [
        Change(c.section, c.key, {ADDED: REMOVED, REMOVED: ADDED}.get(c.change, CHANGED),
               c.after, c.before)
        for c in changes
    ]  # fmt: skip
    assert compare(a, a) == []


def test_change_describes_the_item_and_its_fields() -> None:
    c = compare(
        {"roles": {"alice": {"superuser": False, "member_of": []}}},
        {"roles": {"alice": {"superuser": True, "member_of": ["pg_read_all_data"]}}},
    )[0]
    assert c.fields == ["member_of", "superuser"]
    assert c.describe("role") == (
        "role alice changed: member_of [] -> [pg_read_all_data]; superuser false -> true"
    )
    added = compare({}, {"keys": {"root SHA256:x": {"type": "ssh-ed25519"}}})[0]
    assert added.describe("key") == "key root SHA256:x added"


# --- the store ----------------------------------------------------------------------------


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.sqlite")


def _target(host: str = "web1") -> Any:
    inv = Inventory(path="/nonexistent/inventory.yml")
    inv.hosts[host] = Host(name=host, connection="local")
    return inv.target("hosts", host)


def test_review_cycle(journal: Journal) -> None:
    web1, web2 = _target("web1"), _target("web2")
    first = {"keys": {"root SHA256:a": {"comment": "alice"}}}
    r = review(journal, "permissions", web1, first, run_id=1, check=False)
    assert r.baseline is None and not r.clean and [c.change for c in r.changes] == [ADDED]
    assert r.summary().startswith("no accepted baseline yet")

    with pytest.raises(ConfigError, match=r"no permissions\.review result to accept on host web2"):
        Baselines(journal).accept("permissions", user="alice", host="web2")
    done = Baselines(journal).accept("permissions", user="alice", host="web1")
    assert [a.observation.target for a in done] == ["hosts/web1"] and done[0].first

    assert review(journal, "permissions", web1, first, run_id=2, check=False).clean
    second = {"keys": {"root SHA256:a": {"comment": "alice"}, "root SHA256:b": {"comment": "m"}}}
    # check mode compares but records nothing that accept would take
    r = review(journal, "permissions", web1, second, run_id=3, check=True)
    assert [c.key for c in r.changes] == ["root SHA256:b"]
    assert "1 change since the baseline accepted" in r.summary({"keys": "key"})
    assert "key root SHA256:b added" in r.summary({"keys": "key"})
    assert "by alice" in r.summary()
    redo = Baselines(journal).accept("permissions", user="bob", check=True)
    assert redo[0].changes == []  # the check-mode review was not recorded

    review(journal, "permissions", web1, second, run_id=4, check=False)
    review(journal, "permissions", web2, first, run_id=4, check=False)
    preview = Baselines(journal).accept("permissions", user="bob", host="web1", check=True)
    assert [c.key for c in preview[0].changes] == ["root SHA256:b"]
    assert Baselines(journal).baseline("permissions", web1).snapshot == first  # unchanged
    Baselines(journal).accept("permissions", user="bob", host="web1")
    accepted = Baselines(journal).baseline("permissions", web1)
    assert accepted.snapshot == second and accepted.accepted_by == "bob" and accepted.run_id == 4
    assert Baselines(journal).baseline("permissions", web2) is None  # not its host
    assert review(journal, "permissions", web1, second, run_id=5, check=False).clean
    # kinds are kept apart
    assert Baselines(journal).baseline("drift", web1) is None


def test_unknown_kind_is_refused(journal: Journal) -> None:
    with pytest.raises(ConfigError, match="no baseline kind 'perms'"):
        Baselines(journal).accept("perms", user="x")


# --- the CLI ------------------------------------------------------------------------------


def test_cli_accept_and_show(tmp_path: Path) -> None:
    inv = tmp_path / "inventory.yml"
    inv.write_text(
        "settings:\n  journal: journal.sqlite\n"
        "hosts:\n  web1: {connection: local}\n  web2: {connection: local}\n"
    )
    code = run_cli("baseline", "accept", "drift", "-i", str(inv))
    assert code.returncode == 3 and "no config.drift result to accept" in code.stderr
    assert "Traceback" not in code.stderr
    bad = run_cli("baseline", "accept", "everything", "-i", str(inv))
    assert bad.returncode == 3 and "no baseline kind 'everything'" in bad.stderr
    unknown = run_cli("baseline", "accept", "drift", "--host", "web9", "-i", str(inv))
    assert unknown.returncode == 3 and "no host 'web9'" in unknown.stderr

    with Journal(tmp_path / "journal.sqlite") as journal:
        target = _target("web1")
        review(journal, "drift", target, {"files": {"/etc/a": {"sha256": "1"}}}, run_id=7,
               check=False)  # fmt: skip
    check = run_cli("baseline", "accept", "drift", "--check", "-i", str(inv))
    assert check.returncode == 0, check.stderr
    assert "would accept drift of hosts/web1: first baseline, 1 item" in check.stdout
    shown = run_cli("baseline", "show", "drift", "--json", "-i", str(inv))
    assert json.loads(shown.stdout)[0]["accepted"] == "never"
    done = run_cli("baseline", "accept", "drift", "--host", "web1", "-i", str(inv))
    assert done.returncode == 0 and "accepted drift of hosts/web1" in done.stdout
    assert "accepted by" in done.stderr
    rows = json.loads(run_cli("baseline", "show", "drift", "--json", "-i", str(inv)).stdout)
    assert rows[0]["target"] == "hosts/web1" and rows[0]["pending"] == 0
    assert rows[0]["by"] and rows[0]["accepted"] != "never"
    again = run_cli("baseline", "accept", "drift", "-i", str(inv))
    assert "no change to accept" in again.stdout


def test_cli_show_drift_prints_the_diff_of_the_masked_texts(tmp_path: Path) -> None:
    inv = tmp_path / "inventory.yml"
    inv.write_text("settings:\n  journal: journal.sqlite\nhosts:\n  web1: {connection: local}\n")
    before = {"sha256": "a" * 64, "size": 30, "mode": "0640", "content": "text",
              "text": "port = 5432\npassword = ***\n"}  # fmt: skip
    after = {**before, "sha256": "b" * 64, "mode": "0644", "text": "port = 5433\npassword = ***\n"}
    with Journal(tmp_path / "journal.sqlite") as journal:
        review(journal, "drift", _target(), {"files": {"/etc/app.conf": before}}, run_id=1,
               check=False)  # fmt: skip
        Baselines(journal).accept("drift", user="alice")
        review(journal, "drift", _target(), {"files": {"/etc/app.conf": after}}, run_id=2,
               check=False)  # fmt: skip
    shown = run_cli("baseline", "show", "drift", "-i", str(inv))
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "hosts/web1: 1 changed since the baseline (reviewed by run 2)" in out
    assert (
        "file /etc/app.conf changed: mode 0640 -> 0644; sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb" in out
    )
    assert "text" not in out.split("changed:", 1)[1].split("\n", 1)[0]  # no text inline
    assert "-port = 5432" in out and "+port = 5433" in out and " password = ***" in out
    assert "/etc/app.conf (accepted " in out and "by alice)" in out


def test_cli_shows_names_with_control_characters_escaped(tmp_path: Path) -> None:
    inv = tmp_path / "inventory.yml"
    inv.write_text("settings:\n  journal: journal.sqlite\nhosts:\n  web1: {connection: local}\n")
    forged = "x\x1b[2J\n  ok       all fine"
    with Journal(tmp_path / "journal.sqlite") as journal:
        review(journal, "permissions", _target(), {"roles": {forged: {"comment": forged}}},
               run_id=1, check=False)  # fmt: skip
    outputs = [
        run_cli("baseline", *command, "permissions", "-i", str(inv))
        for command in (("show",), ("accept", "--check"), ("accept",))
    ]
    for done in outputs:
        assert done.returncode == 0, done.stderr
        assert "\x1b" not in done.stdout and "\n  ok       all fine" not in done.stdout
    assert "roles x\\x1b[2J\\x0a  ok       all fine added" in outputs[0].stdout


def test_check_mode_summaries_say_nothing_was_recorded(journal: Journal) -> None:
    web1 = _target()
    first = review(journal, "drift", web1, {"files": {"/a": {"n": 1}}}, run_id=1, check=True)
    assert first.summary() == (
        "no accepted baseline yet (check mode records nothing): run without --check to record"
        " it, then `crmmaint baseline accept drift`"
    )
    review(journal, "drift", web1, {"files": {"/a": {"n": 1}}}, run_id=2, check=False)
    Baselines(journal).accept("drift", user="alice")
    changed = review(journal, "drift", web1, {"files": {"/a": {"n": 2}}}, run_id=3, check=True)
    assert changed.summary().startswith("1 change since the baseline accepted")
    assert changed.summary().endswith(
        "(check mode records nothing: run without --check to record it, then"
        " `crmmaint baseline accept drift`)"
    )
    clean = review(journal, "drift", web1, {"files": {"/a": {"n": 1}}}, run_id=4, check=True)
    assert clean.clean and clean.summary().startswith("as in the baseline accepted")
