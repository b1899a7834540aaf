"""Pure dates: clocks, local today in an IANA zone, parsing dates and zones."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from potato_ops.errors import InvalidDateRangeError, InvalidTimezoneError

log = logging.getLogger("potato_ops")
Clock = Callable[[], datetime]
ONE_DAY = timedelta(days=1)
# A rebuild window widens by days to weeks around its bounds; a year's margin inside
# date.min/date.max keeps that arithmetic from overflowing.
EARLIEST_BOUND = date(2, 1, 1)
LATEST_BOUND = date(9998, 12, 31)


def system_clock() -> datetime:
    """Return the current instant, timezone-aware (UTC)."""
    return datetime.now(UTC)


def fixed_clock(instant: datetime) -> Clock:
    """Return a clock frozen at ``instant`` (which must be timezone-aware)."""
    if instant.tzinfo is None:
        raise ValueError("a clock must return aware datetimes")
    return lambda: instant


def parse_date(value: date | str, name: str = "date") -> date:
    """Return value as a date; accepts a date or an ISO ``YYYY-MM-DD`` string."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise InvalidDateRangeError(f"{name} {value!r} is not a date (expected YYYY-MM-DD)")


def parse_date_range(
    from_date: date | str | None, to_date: date | str | None
) -> tuple[date | None, date | None]:
    """Return both bounds parsed; InvalidDateRangeError when from_date > to_date or out of range."""
    lo = None if from_date is None else parse_date(from_date, "from_date")
    hi = None if to_date is None else parse_date(to_date, "to_date")
    for name, bound in (("from_date", lo), ("to_date", hi)):
        if bound is not None and not EARLIEST_BOUND <= bound <= LATEST_BOUND:
            raise InvalidDateRangeError(
                f"{name} {bound} is outside the supported range {EARLIEST_BOUND}..{LATEST_BOUND}"
            )
    if lo is not None and hi is not None and lo > hi:
        raise InvalidDateRangeError(f"from_date {lo} is after to_date {hi}")
    return lo, hi


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def validate_timezone(name: str) -> str:
    """Return name if it is an IANA timezone; raises InvalidTimezoneError otherwise."""
    if not isinstance(name, str) or name not in _known_zones():
        raise InvalidTimezoneError(f"{name!r} is not an IANA timezone name (e.g. 'Europe/London')")
    return name


@lru_cache(maxsize=1024)
def zone(name: str | None) -> ZoneInfo:
    """Return the zone for name; an unknown or empty name stored by the app counts as UTC."""
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("unknown timezone %r stored for a user: treating it as UTC", name)
    return ZoneInfo("UTC")


def local_today(timezone: str | None, now: datetime) -> date:
    """Return the user's calendar date at instant ``now`` in their IANA timezone."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(zone(timezone)).date()
