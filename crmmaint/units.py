"""Durations as people read them: one home for printing them (parsing lives in yamlsource)."""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    """Seconds as the largest whole unit: ``172800`` -> ``2d``, ``300`` -> ``5m``, ``90`` ->
    ``90s``; a value no unit divides stays in seconds (``7.5`` -> ``7.5s``)."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def format_countdown(seconds: float) -> str:
    """Time left, to the second, for a live countdown: ``272`` -> ``4m 32s``, ``3700`` ->
    ``1h 01m 40s``, anything at or below zero -> ``0s``."""
    left = max(0, int(seconds + 0.999))
    hours, rest = divmod(left, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
