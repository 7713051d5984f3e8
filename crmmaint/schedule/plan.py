"""The estate's schedule as the calendar sees it: the inventory's ``schedule:`` section
(``crmmaint.inventory.schedule``) turned into ``calendar.Window`` and ``calendar.Blackout``
values, and the blackout check every run makes.

A blackout blocks scheduled runs and manual ones alike: ``crmmaint run`` during one is refused
(exit 3) unless ``--override "reason"`` is given, and an override is recorded in the audit
trail with who and why. A check-mode run changes nothing and is never blocked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from crmmaint.errors import BlackoutError, ConfigError
from crmmaint.schedule import calendar

if TYPE_CHECKING:
    from crmmaint.inventory import Inventory
    from crmmaint.inventory.schedule import ScheduleSettings


@dataclass(frozen=True)
class EstateSchedule:
    """The calendar values of one inventory's schedule, in its time zone."""

    tz: ZoneInfo
    windows: list[calendar.Window]
    blackouts: list[calendar.Blackout]

    def blackout_at(self, moment: datetime) -> calendar.Blackout | None:
        """The blackout ``moment`` falls in, if any."""
        return calendar.blackout_at(self.blackouts, moment)


def estate_schedule(settings: ScheduleSettings | None) -> EstateSchedule:
    """``settings`` (``None``: no schedule: no windows, no blackouts) as calendar values.
    Naive blackout moments and whole days are read in the schedule's time zone. Raises
    ``ConfigError`` for a window or blackout the calendar refuses (the loader checks the same
    rules at the file's line; this is the net under it)."""
    try:
        return _estate_schedule(settings)
    except (ValueError, OverflowError) as exc:
        raise ConfigError(
            f"the inventory's schedule: {exc}", hint="see docs/scheduler.md"
        ) from None


def _estate_schedule(settings: ScheduleSettings | None) -> EstateSchedule:
    if settings is None:
        return EstateSchedule(machine_zone(), [], [])
    tz = ZoneInfo(settings.timezone) if settings.timezone else machine_zone()
    windows = [
        calendar.Window(
            name=w.name,
            playbook=w.playbook,
            every=w.every,
            at=w.at,
            length=w.length,
            tz=tz,
            weekday=w.weekday,
            day=w.day,
            month=w.month,
            catch_up=w.catch_up,
        )
        for w in settings.windows
    ]
    # A blackout's name is said in refusals, decisions and the journal: redacted once here,
    # as every argument is (a name holding a secret must not carry it everywhere).
    from crmmaint.journal import redact_value

    blackouts = [
        calendar.blackout_from(redact_value(b.name), b.start, b.end, tz) for b in settings.blackouts
    ]
    return EstateSchedule(tz, windows, blackouts)


def machine_zone() -> ZoneInfo:
    """This machine's time zone with its rules (DST), for a schedule that names none: ``$TZ``,
    else the zone ``/etc/localtime`` links to, else UTC."""
    import os

    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ValueError, KeyError, OSError):
            pass
    try:
        link = os.path.realpath("/etc/localtime")
        marker = "/zoneinfo/"
        if marker in link:
            return ZoneInfo(link.split(marker, 1)[1])
    except (ValueError, KeyError, OSError):
        pass
    return ZoneInfo("UTC")


def check_blackout(
    inventory: Inventory, now: datetime, *, what: str, override: str | None, check: bool
) -> calendar.Blackout | None:
    """The blackout a run of ``what`` (a playbook, ``backup`` …) starting at aware ``now``
    would break, when it may go ahead anyway: ``override`` given (the caller records it), or
    a check-mode run (``None`` is returned: nothing is broken); ``None`` outside blackouts.

    Raises ``BlackoutError`` (exit 11) naming the blackout and its end when it may not, and
    ``ConfigError`` for an empty override reason (an override must say why)."""
    if override is not None and not override.strip():
        raise ConfigError(
            '--override needs a reason, e.g. --override "hotfix for ticket 4711"',
            hint="the reason is recorded in the audit trail with who gave it",
        )
    plan = schedule_of(inventory)
    blackout = plan.blackout_at(now)
    if blackout is None or check:
        return None
    if override is None:
        ends = blackout.end
        while (following := plan.blackout_at(ends)) is not None and following.end > ends:
            ends = following.end  # back to back: the freeze lasts until the last one ends
        ends = ends.astimezone(blackout.start.tzinfo)
        raise BlackoutError(
            f"blackout {blackout.name!r} is in force until {ends:%Y-%m-%d %H:%M %Z}:"
            f" {what} does not run",
            hint="wait until it ends, run with --check (changes nothing), or give --override"
            ' "reason" (recorded with who and why)',
        )
    return blackout


def schedule_of(inventory: Inventory) -> EstateSchedule:
    """The inventory's schedule (empty when it has none)."""
    return estate_schedule(inventory.schedule)
