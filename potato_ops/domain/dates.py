"""Pure dates: clocks, local today in an IANA zone, parsing dates, instants, durations and zones."""

from __future__ import annotations

import logging
import re
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


_DURATION = re.compile(r"(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def as_utc(value: datetime) -> datetime:
    """Return value as an aware UTC datetime (a naive one is taken as UTC, as SQLite hands it back)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_since(value: str | datetime | timedelta, now: datetime) -> datetime:
    """Return the instant a window starts, in UTC: the one parser of every ``since``.

    Accepts a duration back from ``now`` (``90m``, ``24h``, ``7d``, ``2w``; units s m h d w),
    an ISO datetime (naive means UTC) or date (its midnight UTC), a ``timedelta`` or a datetime
    (naive means UTC). Raises InvalidDateRangeError for anything else.
    """
    if isinstance(value, timedelta):
        return as_utc(now) - value
    if isinstance(value, datetime):
        return as_utc(value)
    text = value.strip()
    duration = _DURATION.fullmatch(text)
    if duration:
        seconds = float(duration["amount"]) * _UNIT_SECONDS[duration["unit"]]
        try:
            return as_utc(now) - timedelta(seconds=seconds)
        except OverflowError:
            raise InvalidDateRangeError(f"since {value!r} reaches back before the year 1") from None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidDateRangeError(
            f"since {value!r} is neither a duration (24h, 7d, 90m) nor an ISO datetime"
        ) from None
    try:
        return as_utc(parsed)
    except OverflowError:
        raise InvalidDateRangeError(f"since {value!r} is out of range") from None


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
