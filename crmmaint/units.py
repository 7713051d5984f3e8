"""Durations, sizes and percentages as people write and read them: parsing and printing.

Pure functions, no I/O. The parsers take what configuration files hold (a number, or a string
with a unit) and raise ``ValueError`` with an example of the right spelling for anything else;
callers that know the file and line (``crmmaint.playbook.loader``, ``crmmaint.tasks.api``,
``crmmaint.repository.retention``) wrap that message. The printers give text the parsers read
back: ``parse_duration(format_duration(s)) == s`` for every finite ``s >= 0``.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from decimal import Decimal

__all__ = [
    "format_countdown",
    "format_duration",
    "format_elapsed",
    "format_size",
    "metric_value",
    "parse_duration",
    "parse_percent",
    "parse_share",
    "parse_size",
]

# --- durations -------------------------------------------------------------------------------

# ASCII digits only (\d would take any script's digits: "٣h")
_DURATION_TERM = re.compile(r"[0-9]+(?:\.[0-9]+)?\s*(?:ms|s|m|h|d|w)?")
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
#: Units ``format_duration`` prints, largest first (ms is read, never printed).
_PRINTED_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60))


#: The largest count a flag or setting takes (``--limit``, ``--forks``, ``keep-daily``): a
#: billion is beyond any real estate, and far inside what SQLite and the journal store.
MAX_COUNT = 1_000_000_000


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` and ``noun`` agreeing in number: ``plural(1, "step")`` -> ``"1 step"``,
    ``plural(3, "filesystem")`` -> ``"3 filesystems"`` (``nouns`` for an irregular plural)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def parse_duration(value: str | int | float) -> float:
    """A duration in seconds (a float, ``>= 0``; a string of huge digits may give ``inf``).

    Accepts a non-negative number of seconds, or a string of one or more terms, each a decimal
    number with an optional unit ``ms``, ``s``, ``m``, ``h``, ``d`` or ``w`` (no unit: seconds),
    summed: ``"90s"`` -> 90.0, ``"5m"`` -> 300.0, ``"1.5d"`` -> 129600.0, ``"1h30m"`` -> 5400.0,
    ``"250ms"`` -> 0.25, ``"10"`` -> 10.0. Spaces between terms are ignored. With several
    terms, each has its own unit, once: ``"1h30"`` (which people read as 1h30m) and
    ``"1h1h"`` are refused. Digits are ASCII.

    Raises ``ValueError`` for any string it does not accept (``"5 minutes"``, ``"-5s"``, ``""``),
    for a negative number and for a bool; ``OverflowError`` for an int too large for a float.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative: {value!r}")
        return float(value)
    total = 0.0
    parts = _DURATION_TERM.findall(value)
    if not parts or "".join(parts).replace(" ", "") != value.replace(" ", ""):
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 2h, 1d)")
    units = []
    for part in parts:
        m = _DURATION.match(part)
        if m is None:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 2h, 1d)")
        units.append(m.group(2))
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if len(parts) > 1 and (None in units or len(set(units)) < len(units)):
        # "1h30" is read by people as 1h30m; "1h1h" is a typo: neither is guessed
        raise ValueError(
            f"not a duration: {value!r} (give each term its own unit, once: 1h30m, 5m30s)"
        )
    return total


def format_duration(seconds: float) -> str:
    """Seconds (finite, ``>= 0``) as the largest unit that divides them: ``172800`` -> ``"2d"``,
    ``300`` -> ``"5m"``, ``90`` -> ``"90s"``; other values stay in seconds, exactly, without an
    exponent (``7.5`` -> ``"7.5s"``, ``1e-05`` -> ``"0.00001s"``), so ``parse_duration`` reads
    back the same number."""
    for unit, size in _PRINTED_UNITS:
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{_plain_number(seconds)}s"


#: The longest a run or a maintenance window may be (seconds): a week. Beyond it a length is a
#: typo (``30d`` for ``30m``), not a maintenance window.
LONGEST_RUN = 7 * 86400.0

_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_clock(text: str) -> tuple[int, int] | None:
    """``"05:30"`` (a 24-hour clock, surrounding blanks ignored) -> ``(5, 30)``; ``None``
    for any other text."""
    found = _CLOCK.match(text.strip())
    return (int(found.group(1)), int(found.group(2))) if found else None


def format_clock(moment: datetime) -> str:
    """A moment as a wall-clock time on this machine: ``05:30``, or ``05:30:15`` when its
    seconds are not 0 (a short window's end)."""
    local = moment.astimezone()
    return f"{local:%H:%M}" if local.second == 0 else f"{local:%H:%M:%S}"


def format_elapsed(seconds: float) -> str:
    """Time taken, as people read it in a report: ``7.25`` -> ``"7.2s"``, ``272.4`` ->
    ``"4m 32s"``, ``3700`` -> ``"1h 01m 40s"`` (tenths under a minute, then whole seconds;
    a display format, not parsed)."""
    if seconds < 60:
        return f"{max(0.0, seconds):.1f}s"
    return format_countdown(int(seconds))


def format_countdown(seconds: float) -> str:
    """Time left, to the second, for a live countdown: ``272`` -> ``"4m 32s"``, ``3700`` ->
    ``"1h 01m 40s"``, anything at or below zero -> ``"0s"`` (a display format, not parsed)."""
    left = max(0, int(seconds + 0.999))
    hours, rest = divmod(left, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _plain_number(value: float) -> str:
    """The shortest decimal that reads back as ``value``, never in exponent notation."""
    if not math.isfinite(value):
        return f"{value:g}"
    if value == int(value):
        return str(int(value))
    return f"{Decimal(repr(float(value))):f}"


# --- sizes -----------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}


def parse_size(value: str | int) -> int:
    """A size in bytes (an int, ``>= 0``; fractions of a byte are dropped).

    Accepts a non-negative int of bytes, or a string: a decimal number and an optional unit,
    case-insensitive, ``k m g t p`` as powers of 1000 and ``ki mi gi ti pi`` as powers of 1024,
    each with or without a trailing ``b``: ``"512"`` -> 512, ``"512k"`` -> 512000, ``"64MiB"`` ->
    67108864, ``"1.5GB"`` -> 1500000000.

    Raises ``ValueError`` for any string it does not accept (``"big"``, ``"1 XB"``, ``"-1k"``, a
    number too large to count in bytes), for a negative int and for a bool.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative: {value!r}")
        return value
    m = _SIZE.match(value)
    if m is None:
        raise ValueError(f"not a size: {value!r} (use e.g. 512k, 64MiB, 2GB)")
    number, unit = float(m.group(1)), m.group(2).lower()
    binary = "i" in unit
    prefix = unit.rstrip("b").rstrip("i")
    # Case-insensitive matching lets a few non-ASCII letters through (dotless i, dotted I):
    # they name no unit.
    if prefix not in _SIZE_UNITS:
        raise ValueError(f"not a size: {value!r} (use e.g. 512k, 64MiB, 2GB)")
    factor = 1024 ** ("kmgtp".index(prefix) + 1) if binary and prefix else _SIZE_UNITS[prefix]
    try:
        return int(number * factor)
    except OverflowError:
        raise ValueError(f"size too large: {value!r:.40}") from None


#: The units ``format_size`` prints, powers of 1024 (IEC), smallest first.
_IEC_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_size(n: float) -> str:
    """Bytes (``>= 0``) for people to read, in IEC units with three significant digits:
    ``512`` -> ``"512 B"``, ``1536`` -> ``"1.5 KiB"``, ``153123394`` -> ``"146 MiB"``,
    ``2480000000`` -> ``"2.31 GiB"``; ``0`` -> ``"0 B"``. Whole bytes print exactly; a size
    is never shown as zero of a larger unit. Beyond 1024 TiB it counts in PiB.

    ``parse_size`` reads the text back to within 0.5% of ``n`` (exactly below 1 KiB).
    Metrics keep raw byte counts: this is for messages and tables only.

    Raises ``ValueError`` for a negative or non-finite ``n``.
    """
    if not math.isfinite(n) or n < 0:
        raise ValueError(f"not a size in bytes: {n!r}")
    if n < 1024:
        return f"{round(n)} B" if round(n) < 1024 else "1 KiB"
    value = float(n)
    for unit in _IEC_UNITS[1:]:
        value /= 1024
        text = _three_digits(value)
        # 1023.9 KiB rounds to "1024": that is 1 MiB
        if float(text) < 1024 or unit == _IEC_UNITS[-1]:
            return f"{text} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def _three_digits(value: float) -> str:
    """``value`` (>= 1) with three significant digits, trailing zeros dropped: 1.5, 146, 2.31."""
    decimals = 0 if value >= 99.95 else 1 if value >= 9.995 else 2
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def metric_value(value: float) -> float | int:
    """A metric for machines to read (JSON): a whole float as an int, so a byte count shows as
    ``153123394``, not ``153123394.0``; anything else unchanged. Metrics are never formatted."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# --- percentages -----------------------------------------------------------------------------


def parse_percent(value: str | int | float) -> float:
    """A percentage from 0 to 100 as a float: ``"10%"``, ``"10"`` and ``10`` all give 10.0
    (a fraction is not read as one: ``0.1`` is 0.1%).

    Raises ``ValueError`` for text that is not a number with an optional ``%``, for a value
    outside 0-100 (NaN included) and for a bool.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a percentage: {value!r}")
    text = str(value).strip().removesuffix("%")
    try:
        number = float(text)
    except ValueError as exc:
        raise ValueError(f"not a percentage: {value!r} (use e.g. 10%)") from exc
    if not 0 <= number <= 100:
        raise ValueError(f"percentage out of range 0-100: {value!r}")
    return number


def parse_share(value: str | int | float) -> float:
    """A share of something to work on (``verify --read-data-subset 10%``): a percentage
    (``parse_percent``) more than 0, since a share of 0% would still do some work (a subset
    reads at least one pack). Raises ``ValueError``."""
    number = parse_percent(value)
    if number <= 0:
        raise ValueError(f"a share must be more than 0%, not {value!r} (use e.g. 10%)")
    return number
