"""Pure: a maintenance window of times of day in a time zone, and how long until it opens.

``01:00-05:00`` is open from 01:00 (included) to 05:00 (excluded) local time every day;
``22:00-02:00`` wraps midnight. Local times are those of the window's IANA zone (UTC by
default), so a window follows daylight-saving changes as a person reading a wall clock would.
Every question takes the instant to answer for: the caller's injectable clock decides "now".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from potato_ops.domain.dates import validate_timezone
from potato_ops.errors import ConfigError, InvalidTimezoneError

_SPEC = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def _time(hours: str, minutes: str, spec: str) -> time:
    h, m = int(hours), int(minutes)
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise ConfigError(f"window {spec!r}: {hours}:{minutes} is not a time of day")
    return time(h, m)


@dataclass(frozen=True)
class Window:
    """Times of day a bulk operation may start batches in: ``start`` <= local time < ``end``."""

    start: time
    end: time
    timezone: str = "UTC"

    @classmethod
    def parse(cls, spec: str, timezone: str = "UTC") -> Window:
        """Return the window ``HH:MM-HH:MM`` in the IANA zone; ConfigError when it is not one."""
        found = _SPEC.match(spec) if isinstance(spec, str) else None
        if found is None:
            raise ConfigError(f"window {spec!r} is not HH:MM-HH:MM (e.g. 01:00-05:00)")
        start = _time(found[1], found[2], spec)
        end = _time(found[3], found[4], spec)
        if start == end:
            raise ConfigError(f"window {spec!r} is empty: give different start and end times")
        try:
            validate_timezone(timezone)
        except InvalidTimezoneError as exc:
            raise ConfigError(f"window time zone: {exc}") from None
        return cls(start, end, timezone)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M} {self.timezone}"

    @property
    def spec(self) -> str:
        """Return the window as ``HH:MM-HH:MM`` (without its zone)."""
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def _local(self, now: datetime) -> datetime:
        if now.tzinfo is None:
            raise ValueError("a window is asked about aware instants only")
        return now.astimezone(ZoneInfo(self.timezone))

    def is_open(self, now: datetime) -> bool:
        """Return True if the window is open at the instant ``now``."""
        t = self._local(now).time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end  # wraps midnight

    def _next(self, now: datetime, at: time) -> timedelta:
        """Return the time from now until the local clock next shows ``at`` (now excluded)."""
        local = self._local(now)
        day = local.date()
        for offset in range(0, 3):
            candidate = datetime.combine(day + timedelta(days=offset), at, tzinfo=local.tzinfo)
            wait = candidate.astimezone(UTC) - now.astimezone(UTC)
            if wait > timedelta(0):
                return wait
        raise AssertionError("a time of day recurs within two days")  # pragma: no cover

    def opens_in(self, now: datetime) -> timedelta:
        """Return how long until the window opens; zero while it is open."""
        return timedelta(0) if self.is_open(now) else self._next(now, self.start)

    def closes_in(self, now: datetime) -> timedelta:
        """Return how long until the window closes; zero while it is closed."""
        return self._next(now, self.end) if self.is_open(now) else timedelta(0)

    def waiting_message(self, now: datetime) -> str:
        """Return ``waiting for window 01:00-05:00 UTC (opens in 3 h 12 min)``."""
        return f"waiting for window {self} (opens in {format_wait(self.opens_in(now))})"


def format_wait(span: timedelta) -> str:
    """Return a wait in words a person reads at a glance: ``3 h 12 min``, ``12 min``, ``40 s``."""
    seconds = max(int(span.total_seconds() + 0.999), 0)  # rounded up: never "opens in 0 min"
    if seconds < 60:
        return f"{seconds} s"
    minutes = (seconds + 59) // 60
    hours, minutes = divmod(minutes, 60)
    if hours == 0:
        return f"{minutes} min"
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
