"""Key custody: ``keys generate``, ``keys show``, ``keys check``."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from invoke import Collection

from crmmaint.cli.common import (
    REPO_HELP,
    audit_begins,
    command,
    helps,
    maybe_inventory,
    open_inventory,
)
from crmmaint.crypto import X25519Identity, load_identity_file, write_identity_file
from crmmaint.errors import ConfigError
from crmmaint.reporting.console import write_json
from crmmaint.repository.configured import check_keys


@command(
    name="generate",
    help=helps(output="where to write the identity (private key, 0600)", force="overwrite"),
    audit="keys generate",
)
def keys_generate(
    c: Any, output: str, inventory: str | None = None, force: bool = False, debug: bool = False
) -> None:
    """Create an X25519 identity file (0600) and print its public recipient string.

    The audit trail records it in the journal of the inventory (-i), else the user's."""
    identity = X25519Identity.generate()
    pub_path = Path(output).with_suffix(".pub")
    if pub_path == Path(output):
        raise ConfigError(f"{output}: name the identity file other than *.pub")
    if (pub_path.exists() or pub_path.is_symlink()) and not force:
        raise ConfigError(
            f"{pub_path} exists (the public key goes beside the identity)",
            hint="choose another name, or pass --force to replace both",
        )
    audit_begins(c, maybe_inventory(c, inventory), [os.path.abspath(output)])
    write_identity_file(output, identity, overwrite=force)
    public = identity.recipient().to_string()
    # Never through a link planted where the public key goes: replace the name itself.
    with contextlib.suppress(FileNotFoundError):
        if force and pub_path.is_symlink():
            pub_path.unlink()
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"# crmmaint recipient for {output}\n{public}\n")
    print(public)
    print(
        f"identity: {output} (keep it offline or on the drill host); public key: {pub_path}",
        file=sys.stderr,
    )


@command(name="show", help=helps(identity="identity file"), positional=["identity"])
def keys_show(c: Any, identity: str, debug: bool = False) -> None:
    """Print the public recipient string of an identity file."""
    if identity.endswith(".pub"):
        raise ConfigError(
            f"{identity} is a public key file: `keys show` reads the identity (private key) "
            "file and prints its public key",
            hint=f"run `crmmaint keys show {identity.removesuffix('.pub')}`, or read "
            f"{identity} itself",
        )
    print(load_identity_file(identity).recipient().to_string())


@command(name="check", help=helps(repository=REPO_HELP, identity="identity file to test"))
def keys_check(
    c: Any,
    inventory: str | None = None,
    repository: str | None = None,
    identity: str | None = None,
    json: bool = False,
    debug: bool = False,
) -> None:
    """Check the repository's write key, recipients and (if given) identity without decrypting data."""
    inv = open_inventory(c, inventory)
    checks = check_keys(inv.repository(repository), identity)
    if json:
        write_json(checks)
    else:
        for row in checks:
            print(f"{row['check']}: {row['result']}")


def register(ns: Collection) -> None:
    """Add the command group to the CLI collection."""
    ns.add_collection(Collection("keys", keys_generate, keys_show, keys_check))
