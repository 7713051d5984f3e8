"""Shared fixtures. Autouse fixtures keep every test hermetic: HOME, config and data paths in
tmp, CRMMAINT_* variables cleared."""

from __future__ import annotations

import os

import pytest

from crmmaint.crypto.keys import SCRYPT_LOG_N_MIN

pytest_plugins = ["sshd_fixture", "s3_fixture"]


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
    return home
