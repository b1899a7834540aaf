"""Every ``since`` is read by one parser (``domain.dates.parse_since``): durations back from the
storage clock, ISO dates and datetimes (naive means UTC), datetimes; anything else refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from potato_ops import Storage
from potato_ops.errors import InvalidDateRangeError
from tests.conftest import MutableClock, add_user

TOKYO = ZoneInfo("Asia/Tokyo")


def test_timezone_changes_since_reads_durations_naive_utc_and_offsets(
    storage: Storage, clock: MutableClock
) -> None:
    add_user(storage, "u", ["2024-03-01"])
    clock.advance(minutes=5)
    changed_at = clock()
    storage.update_user("u", timezone="Asia/Tokyo")
    clock.advance(minutes=10)
    before, after = changed_at - timedelta(seconds=1), changed_at + timedelta(seconds=1)

    def since(value: str | datetime) -> list[str]:
        return storage.get_users_with_timezone_changes(since=value)

    assert since("1h") == ["u"]  # the change was 10 minutes ago
    assert since("5m") == []
    assert since(before.astimezone(UTC).replace(tzinfo=None).isoformat()) == ["u"]  # naive: UTC
    assert since(after.astimezone(UTC).replace(tzinfo=None).isoformat()) == []
    assert since(before.astimezone(TOKYO).isoformat()) == ["u"]  # the same instants, at +09:00
    assert since(after.astimezone(TOKYO).isoformat()) == []
    assert since(before.astimezone(UTC).replace(tzinfo=None)) == ["u"]  # a naive datetime: UTC
    assert since(after.astimezone(TOKYO)) == []


def test_a_since_that_is_no_instant_is_refused(storage: Storage) -> None:
    with pytest.raises(InvalidDateRangeError, match="neither a duration"):
        storage.get_users_with_timezone_changes(since="last week")
