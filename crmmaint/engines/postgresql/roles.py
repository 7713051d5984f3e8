"""The roles a least-privilege PostgreSQL restore loads with.

A restore does not load a backup as the configured (often superuser) user: it creates a role
that owns only the new database and can do nothing a forged dump could abuse, loads as that
role, then takes its login away. ``LoadRole`` makes the SQL; the engine runs it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from crmmaint.engines.postgresql.catalog import quote_ident, quote_literal

#: Roles a least-privilege restore creates to load with (one per restore, see ``LoadRole``);
#: dropping a database one of them owns drops the role too.
LOAD_ROLE_PREFIX = "crmmaint_load_"
#: A load role cannot log in after this long (or its restore's timeout), should a restore die
#: before removing it.
LOAD_ROLE_VALID = 86400
#: What to do when a load role cannot be made or is denied something.
LOAD_ROLE_HINT = (
    "restores load as a temporary role that owns only the new database: the restoring user "
    "needs CREATEROLE and CREATEDB (or superuser), and pg_hba.conf must let that role log in "
    "with a password from the client host; for a dump that needs more (untrusted extensions, "
    "event triggers), set 'restore_privilege: full' on the database (docs/engines.md)"
)


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802 / RFC 7677,
    PostgreSQL's ``scram_build_secret``): a role is created with it, so the password itself
    never reaches the server, its logs or ``pg_stat_activity``. ``password`` must be ASCII
    (SASLprep leaves ASCII unchanged)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class LoadRole:
    """A role made for one least-privilege restore: it logs in with a random password (only
    its SCRAM verifier goes to the server), owns the new database and what the dump creates
    in it, and is no superuser, cannot create roles or databases, replicate or bypass row
    security. A forged dump then cannot run ``COPY … TO PROGRAM``, an untrusted language or
    anything else a superuser may, nor act for the dump's real roles."""

    def __init__(self, name: str | None = None) -> None:
        """A new role (``name`` given: an existing load role, with a new password to log in
        with after ``login_sql``)."""
        self.name = name or LOAD_ROLE_PREFIX + secrets.token_hex(6)
        self.password = secrets.token_urlsafe(24)

    def login_sql(self, now: float, timeout: float) -> str:
        """Give the (disarmed) role a login again, with this object's password, for
        ``timeout`` seconds plus a margin: an assertion query on the copy it owns."""
        until = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(now + timeout + 600))
        return (
            f"SET lock_timeout = '10s'; ALTER ROLE {quote_ident(self.name)} LOGIN "
            f"PASSWORD {quote_literal(scram_verifier(self.password))} "
            f"VALID UNTIL {quote_literal(until)}"
        )

    def create_sql(self, now: float, timeout: float | None = None) -> str:
        """The role, valid until the restore's ``timeout`` (seconds; else ``LOAD_ROLE_VALID``)
        has passed, plus a margin: a restore cut off before it could clean up (a step timeout,
        SIGTERM) leaves a role whose login lapses with it."""
        lease = LOAD_ROLE_VALID if timeout is None else min(LOAD_ROLE_VALID, timeout + 600)
        until = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(now + lease))
        return (
            f"CREATE ROLE {quote_ident(self.name)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
            f"NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 64 "
            f"PASSWORD {quote_literal(scram_verifier(self.password))} "
            f"VALID UNTIL {quote_literal(until)};\n"
            # CREATE DATABASE … OWNER needs the creator to be able to act as the owner.
            f"GRANT {quote_ident(self.name)} TO CURRENT_USER;"
        )
