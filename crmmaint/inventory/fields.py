"""Readers of the fields every inventory section shares: names, ``address``, ``host``,
``port``, ``connect_timeout``, secret sources and paths. Each raises ``SourceError`` at the
line of the field at fault; ``load.py`` turns that into an ``InventoryError``.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any

from crmmaint.inventory.model import SECRET_PREFIXES, Inventory, SecretSource
from crmmaint.yamlsource import SourceError, get_field, line_of

#: Unicode categories no inventory name may hold: control characters (a newline splits a
#: TSV row or a log line), format characters (U+202E turns the rest of a line around),
#: line and paragraph separators, surrogates, private-use and unassigned code points.
_NAME_FORBIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _check_name(name: Any, section: str, line: int | None) -> None:
    """A name in ``section`` (a host, group, database, cache, file set, repository or
    drill) is printed in listings, journal rows and messages and typed in flags: it must be
    text without control or format characters, commas (flags take names comma-separated) or
    surrounding spaces. Raises ``SourceError`` at ``line``."""
    what = f"a name in section {section!r}"
    if not isinstance(name, str):
        raise SourceError(f"{what} must be text, not {name!r}", line, str(name))
    bad = next((ch for ch in name if unicodedata.category(ch) in _NAME_FORBIDDEN), None)
    if bad is not None:
        raise SourceError(
            f"{what}, {name!r}, holds the character U+{ord(bad):04X}: names are printed in "
            "listings and messages, so they may not hold control or format characters",
            line,
            name,
        )
    if not name.strip():
        raise SourceError(f"{what} must not be empty, got {name!r}", line, name)
    if "," in name or name != name.strip():
        raise SourceError(
            f"{what}, {name!r}, may not hold a comma (flags take names comma-separated) or "
            "begin or end with a space",
            line,
            name,
        )


def _address(spec: dict, default: str | None = None) -> str | None:
    """The ``address:`` field, a host name or IP address: text without spaces or control
    characters that does not begin with ``-`` (it is passed to ssh, psql, mariadb and
    redis-cli, which would read it as an option); ``default`` when unset. Raises
    ``SourceError``."""
    address = get_field(spec, "address", str)
    if address is None:
        return default
    if (
        not address
        or address.startswith("-")
        or any(ch.isspace() or unicodedata.category(ch) in _NAME_FORBIDDEN for ch in address)
    ):
        raise SourceError(
            f"address {address!r} is not a host name or IP address (no spaces, control "
            "characters or leading '-')",
            line_of(spec, "address"),
            "address",
        )
    return address


def _owner(spec: dict, what: str, inv: Inventory) -> str:
    host = get_field(spec, "host", str, default="local")
    if host != "local" and host not in inv.hosts:
        raise SourceError(
            f"{what} names unknown host {host!r} (known: {', '.join(inv.hosts) or 'none'})",
            line_of(spec, "host"),
            "host",
        )
    return host


#: The longest ``connect_timeout`` accepted, in seconds: a connection not made within an hour
#: will not be made, and a larger number is more likely a typo than a wish.
MAX_CONNECT_TIMEOUT = 3600.0


def _port(spec: dict, what: str, default: int | None = None) -> int | None:
    port = get_field(spec, "port", int, default=default)
    if port is not None and not 0 < port < 65536:
        raise SourceError(
            f"port {port} out of range 1-65535 in {what}", line_of(spec, "port"), "port"
        )
    return port


def _connect_timeout(spec: dict, what: str, default: float | None = None) -> float | None:
    """Seconds, more than 0 and at most ``MAX_CONNECT_TIMEOUT`` (YAML has already refused
    ``.inf``, ``.nan`` and integers too long to read)."""
    value = get_field(spec, "connect_timeout", (int, float), default=default)
    if value is not None and not 0 < value <= MAX_CONNECT_TIMEOUT:
        raise SourceError(
            f"connect_timeout {value:g} out of range in {what}: more than 0 and at most"
            f" {MAX_CONNECT_TIMEOUT:g} seconds",
            line_of(spec, "connect_timeout"),
            "connect_timeout",
        )
    return None if value is None else float(value)


def _secret(spec: dict, key: str, what: str) -> SecretSource | None:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(SECRET_PREFIXES):
        raise SourceError(
            f"{what}: inline secrets are not allowed in {key!r}; use env:NAME, file:/path or cmd:COMMAND",
            line_of(spec, key),
            key,
        )
    return SecretSource(value)


def _path(value: str | None, base: Path) -> str | None:
    """``value`` made absolute against ``base`` (the inventory's folder), ``..`` folded but no
    symlink followed: a path may name a link on another host, and what a configured link means
    is for the code that reads it to decide (a file set follows it)."""
    if value is None:
        return None
    p = Path(os.path.expandvars(value)).expanduser()
    return str(p if p.is_absolute() else Path(os.path.normpath(base / p)))
