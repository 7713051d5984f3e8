"""Shared fixtures. Autouse fixtures keep every test hermetic: HOME, config and data paths in
tmp, CRMMAINT_* variables cleared."""

from __future__ import annotations

import os
import signal

import pytest

from crmmaint.crypto.keys import SCRYPT_LOG_N_MIN

# A suite started in the background of a script inherits SIGINT ignored, and crmmaint keeps
# an ignored SIGINT ignored (as it must for `crmmaint backup &`): the tests that interrupt
# crmmaint, in this process and in the programs it starts, need SIGINT as a terminal gives it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

pytest_plugins = ["sshd_fixture", "s3_fixture", "net_fixture"]


@pytest.fixture(autouse=True)
def hermetic_env(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    for name in list(os.environ):
        if name.startswith("CRMMAINT_"):
            monkeypatch.delenv(name, raising=False)
    # Cheap scrypt for new passphrase stanzas made in this process, so passphrase tests stay
    # fast; a CLI run as a subprocess pays the real cost, as users do.
    monkeypatch.setattr("crmmaint.crypto.keys.SCRYPT_LOG_N", SCRYPT_LOG_N_MIN)
    # An interrupted run in an earlier test leaves STOPPING set until the next run clears it:
    # a lock wait outside a run (a test's own prune) would give up at once.
    from crmmaint.interrupts import STOPPING

    STOPPING.clear()
    return home


def pytest_sessionfinish(session, exitstatus):
    """Tests that drop restored databases with plain SQL leave their load roles and accounts
    (crmmaint's own drop removes them): remove every one whose database is gone. Only disarmed
    ones (no login, locked): a restore under way in another test session on the same server
    holds an armed one, and dropping it would fail that restore."""
    import subprocess

    from crmmaint.engines.mysql import LoadUser

    sweep = """DO $$DECLARE r text; BEGIN
      FOR r IN SELECT rolname FROM pg_roles
               WHERE rolname LIKE 'crmmaint\\_load\\_%' AND NOT rolcanlogin LOOP
        BEGIN EXECUTE format('DROP ROLE %I', r); EXCEPTION WHEN others THEN NULL; END;
      END LOOP; END$$;"""
    subprocess.run(
        ["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"],
        input=sweep, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    mariadb = ["mariadb", "--protocol=TCP", "-h", "127.0.0.1", "-uroot", "-N", "--batch"]
    listed = subprocess.run(
        mariadb, input="SHOW DATABASES; SELECT '--'; SELECT user, host FROM mysql.global_priv "
        "WHERE user LIKE 'crmmaint\\_load\\_%' AND JSON_VALUE(priv, '$.account_locked') = 1;",
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    databases, _, accounts = listed.stdout.partition("--\n")
    live = {LoadUser(name, "").name for name in databases.split()}
    drops = [
        f"DROP USER IF EXISTS '{user}'@'{host}';"
        for user, host in (line.split("\t") for line in accounts.splitlines() if "\t" in line)
        if user not in live
    ]
    if drops:
        subprocess.run(mariadb, input="\n".join(drops), capture_output=True, text=True,
                       timeout=60, check=False)  # fmt: skip
