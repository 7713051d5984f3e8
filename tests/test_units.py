"""crmmaint.units: parsing and printing durations, sizes and percentages."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmmaint import yamlsource
from crmmaint.units import (
    format_countdown,
    format_duration,
    format_size,
    parse_duration,
    parse_percent,
    parse_share,
    parse_size,
)

# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("2h", 7200),
        ("1.5d", 129600),
        ("1w", 604800),
        ("1h30m", 5400),
        ("250ms", 0.25),
        (45, 45),
        ("10", 10),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "soon", "5 minutes", "-5s", "1x", True, -1])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@given(st.integers(0, 10**6), st.sampled_from(["s", "m", "h", "d", "w"]))
def test_parse_duration_units(n, unit):
    factor = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_duration(f"{n}{unit}") == n * factor


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("512k", 512_000),
        ("64MiB", 64 << 20),
        ("1.5GB", 1_500_000_000),
        ("2TiB", 2 << 40),
        ("1gib", 1 << 30),
        (7, 7),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "big", "1 XB", "-1k", False])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_parse_percent():
    assert parse_percent("10%") == 10.0 and parse_percent(80) == 80.0
    for bad in ("110%", "-1", "ten", True):
        with pytest.raises(ValueError):
            parse_percent(bad)


def test_a_share_is_more_than_nothing():
    """`--read-data-subset 0%` read a pack all the same: a share must be more than 0%."""
    assert parse_share("0.5%") == 0.5 and parse_share(100) == 100.0
    for bad in ("0%", 0, "0.0", "-0", "101%", "nan", True):
        with pytest.raises(ValueError):
            parse_share(bad)


@pytest.mark.parametrize(
    ("text", "seconds"), [("1h 30m", 5400), (" 2d ", 172800), ("0.5", 0.5), (1.25, 1.25)]
)
def test_parse_duration_more(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "size"), [("1KiB", 1024), ("3 mb", 3_000_000), ("0", 0)])
def test_parse_size_more(text, size):
    assert parse_size(text) == size


def test_parse_size_rejects_negative_int():
    with pytest.raises(ValueError, match="negative"):
        parse_size(-1)


def test_parse_percent_is_not_a_fraction():
    assert parse_percent(0.1) == 0.1 and parse_percent(" 55% ") == 55.0


def test_yamlsource_keeps_the_old_names():
    assert yamlsource.parse_duration is parse_duration
    assert yamlsource.parse_size is parse_size
    assert yamlsource.parse_percent is parse_percent


# --- printing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (172800, "2d"),
        (300, "5m"),
        (90, "90s"),
        (7200, "2h"),
        (1209600, "2w"),
        (7.5, "7.5s"),
        (0, "0s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(272, "4m 32s"), (3700, "1h 01m 40s"), (0, "0s"), (-3, "0s"), (0.2, "1s")]
)
def test_format_countdown(seconds, text):
    assert format_countdown(seconds) == text


@pytest.mark.parametrize(("seconds", "text"), [(1e-05, "0.00001s"), (1000001, "1000001s")])
def test_format_duration_never_uses_an_exponent(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("bad", ["1\u0131", "1\u0130b", "1" * 400, "1" * 400 + "PiB"])
def test_parse_size_odd_text_is_a_value_error(bad):
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


# --- properties ------------------------------------------------------------------------------


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_format_duration_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (192292, "188 KiB"),
        (1048575, "1 MiB"),
        (1 << 20, "1 MiB"),
        (3.3 * (1 << 20), "3.3 MiB"),
        (153123394, "146 MiB"),
        (2480000000, "2.31 GiB"),
        (5 << 40, "5 TiB"),
        (3 << 60, "3072 PiB"),
    ],
)
def test_format_size(n, text):
    assert format_size(n) == text


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_format_size_refuses_what_is_no_size(bad):
    with pytest.raises(ValueError, match="size"):
        format_size(bad)


_SIZES = st.one_of(
    st.integers(min_value=0, max_value=1 << 62),
    st.floats(min_value=0, max_value=2.0**62, allow_nan=False, allow_infinity=False),
)
_SIZE_TEXT = re.compile(r"^(\d+(?:\.\d+)?) (B|KiB|MiB|GiB|TiB|PiB)$")


@given(_SIZES)
def test_format_size_round_trips_within_rounding(n):
    back = parse_size(format_size(n))
    if n < 1023.5:
        assert back == round(n)
    else:  # three significant digits: within 0.5%, plus the byte parse_size drops
        assert abs(back - n) <= 0.005 * n + 1


@given(_SIZES)
def test_format_size_reads_well(n):
    text = format_size(n)
    m = _SIZE_TEXT.match(text)
    assert m, text
    number, unit = m.groups()
    assert float(number) > 0 or text == "0 B", text  # never "0.0 MiB"
    assert float(number) < 1024 or unit == "PiB", text
    assert len(number.replace(".", "").lstrip("0")) <= 4, text  # at most 4 digits (1023 B)
    assert not number.endswith("0") or "." not in number, text  # no trailing zeros


@given(_SIZES, _SIZES)
def test_format_size_is_monotonic(a, b):
    a, b = min(a, b), max(a, b)
    assert parse_size(format_size(a)) <= parse_size(format_size(b))


# A number, maybe a space, then up to three unit-ish letters, among them the odd ones that
# case-insensitive matching lets through (dotted I, dotless i, the Kelvin sign): near-misses.
_UNIT_TEXT = st.builds(
    "{}{}{}".format,
    st.one_of(st.from_regex(r"\d{1,4}(\.\d{1,3})?", fullmatch=True), st.just("9" * 400)),
    st.sampled_from(["", " ", "\t"]),
    st.text(alphabet=st.sampled_from("%kmgtpibKMGTPIBsmhdw.\u0130\u0131\u212a"), max_size=3),
)


@pytest.mark.parametrize("parse", [parse_duration, parse_size, parse_percent])
@given(text=st.one_of(st.text(max_size=30), _UNIT_TEXT))
def test_parsers_raise_only_value_error_on_any_text(parse, text):
    try:
        value = parse(text)
    except ValueError:
        return
    assert value >= 0


@pytest.mark.parametrize("text", ["1h30", "5m30", "1d2", "1h1h", "30s30s", "٣h", "1h٣0m"])
def test_duration_terms_each_with_their_own_unit_in_ascii(text: str) -> None:
    """``1h30`` reads as 1h30m to people and as 1h 30s to a parser: refused, like a unit given
    twice and digits of another script."""
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
