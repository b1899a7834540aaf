"""Pure run logic: grouping, local today, the active rule, expected runs, diffs, invariants.

No database here: every function works on plain dates and records, so it can be property-tested
against itself and reused by the single-user, bulk and audit paths alike.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from potato_ops.errors import InvalidDateRangeError, InvalidTimezoneError
from potato_ops.models import (
    ADJACENT,
    MALFORMED,
    MULTIPLE_ACTIVE,
    ORPHAN,
    OVERLAP,
    PHANTOM_DAY,
    STALE_ACTIVE,
    UNCOVERED_DAY,
    Run,
    Violation,
)

log = logging.getLogger("potato_ops")

Clock = Callable[[], datetime]
ONE_DAY = timedelta(days=1)
# A run longer than this is certainly malformed data; its days are not enumerated one by one.
_MAX_ENUMERATED_SPAN = 200_000


def system_clock() -> datetime:
    """Return the current instant, timezone-aware (UTC)."""
    return datetime.now(UTC)


def fixed_clock(instant: datetime) -> Clock:
    """Return a clock frozen at ``instant`` (which must be timezone-aware)."""
    if instant.tzinfo is None:
        raise ValueError("a clock must return aware datetimes")
    return lambda: instant


# ---------------------------------------------------------------------------- dates and zones


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
    """Return both bounds parsed; raises InvalidDateRangeError when from_date > to_date."""
    lo = None if from_date is None else parse_date(from_date, "from_date")
    hi = None if to_date is None else parse_date(to_date, "to_date")
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


def is_active(start_date: date, end_date: date, today: date) -> bool:
    """Return True if a run starting and ending on these dates is active on ``today``.

    Active means the streak includes today, or ended yesterday and can still be continued.
    """
    return start_date <= today and end_date >= today - ONE_DAY


# ---------------------------------------------------------------------------- grouping


def group_consecutive_dates(dates: Iterable[date | str]) -> list[tuple[date, date]]:
    """Return the sorted ``(start, end)`` pairs of maximal streaks of consecutive dates.

    Duplicates and input order don't matter.
    """
    # Dates (the usual case, by the hundred thousand in a bulk batch) skip parse_date.
    ordinals = sorted({(d if type(d) is date else parse_date(d)).toordinal() for d in dates})
    groups: list[tuple[date, date]] = []
    if not ordinals:
        return groups
    start = prev = ordinals[0]
    for current in ordinals[1:]:
        if current != prev + 1:
            groups.append((date.fromordinal(start), date.fromordinal(prev)))
            start = current
        prev = current
    groups.append((date.fromordinal(start), date.fromordinal(prev)))
    return groups


def expected_runs(user_id: str, marked_dates: Iterable[date], today: date) -> list[Run]:
    """Return the runs a user's marked dates give (ids None), sorted, with the active rule."""
    return [
        Run(None, user_id, s, e, (e - s).days + 1, is_active(s, e, today))
        for s, e in group_consecutive_dates(marked_dates)
    ]


# ---------------------------------------------------------------------------- diff


@dataclass(frozen=True)
class RunDiff:
    """How to turn stored runs into expected runs with the fewest writes."""

    keep: list[Run]  # stored runs whose dates and day_count are right (ids preserved)
    delete: list[Run]  # stored runs to remove
    create: list[Run]  # expected runs to insert (ids None)
    deactivate: list[Run]  # kept runs whose active flag must become False
    activate: list[Run]  # kept runs whose active flag must become True

    @property
    def changed(self) -> bool:
        """Return True if any write is needed."""
        return bool(self.delete or self.create or self.deactivate or self.activate)


def diff_runs(stored: Sequence[Run], expected: Sequence[Run]) -> RunDiff:
    """Return the writes that turn ``stored`` into ``expected``, matching on dates and count."""
    wanted: dict[tuple[date, date, int], Run] = {(r.start_date, r.end_date, r.day_count): r for r in expected}
    keep: list[Run] = []
    delete: list[Run] = []
    deactivate: list[Run] = []
    activate: list[Run] = []
    matched: set[tuple[date, date, int]] = set()
    for run in sorted(stored, key=lambda r: (r.start_date, r.end_date, r.id or 0)):
        key = (run.start_date, run.end_date, run.day_count)
        target = wanted.get(key)
        if target is None or key in matched:
            delete.append(run)
            continue
        matched.add(key)
        keep.append(run)
        if run.active and not target.active:
            deactivate.append(run)
        elif target.active and not run.active:
            activate.append(run)
    create = [r for k, r in wanted.items() if k not in matched]
    create.sort(key=lambda r: r.start_date)
    return RunDiff(keep, delete, create, deactivate, activate)


# ---------------------------------------------------------------------------- invariants


def _fmt(run: Run) -> str:
    ident = f"#{run.id} " if run.id is not None else ""
    return f"run {ident}[{run.start_date}..{run.end_date}]"


def _stretches(ordinals: list[int]) -> list[tuple[int, int]]:
    """Return contiguous stretches of sorted distinct ordinals."""
    out: list[tuple[int, int]] = []
    for o in ordinals:
        if out and out[-1][1] == o - 1:
            out[-1] = (out[-1][0], o)
        else:
            out.append((o, o))
    return out


def _day_violations(kind: str, user_id: str, ordinals: list[int], what: str) -> list[Violation]:
    found = []
    for lo, hi in _stretches(ordinals):
        n = hi - lo + 1
        span = f"{date.fromordinal(lo)}" if n == 1 else f"{date.fromordinal(lo)}..{date.fromordinal(hi)}"
        found.append(Violation(kind, user_id, f"{span} ({n} day{'s' * (n != 1)}) {what}", n))
    return found


def check_invariants(
    user_id: str,
    runs: Sequence[Run],
    marked_dates: Iterable[date],
    today: date,
    *,
    user_exists: bool = True,
    window: tuple[date, date] | None = None,
    flags: bool = True,
) -> list[Violation]:
    """Return every invariant the runs break against the user's marked dates.

    ``window`` limits the coverage and completeness checks to the dates in it (the marks are
    only known there); the other checks look at every run given. ``flags=False`` leaves out
    the active-flag checks (see ``check_active_flags``).
    """
    violations: list[Violation] = []
    marks = sorted({d.toordinal() for d in marked_dates})
    w_lo = window[0].toordinal() if window else None
    w_hi = window[1].toordinal() if window else None
    if w_lo is not None and w_hi is not None:
        marks = marks[bisect_left(marks, w_lo) : bisect_right(marks, w_hi)]

    if not user_exists:
        violations.extend(Violation(ORPHAN, user_id, f"{_fmt(r)} belongs to no existing user") for r in runs)

    well_formed: list[Run] = []
    for r in runs:
        if r.start_date > r.end_date:
            violations.append(Violation(MALFORMED, user_id, f"{_fmt(r)} starts after it ends"))
        elif r.day_count != (r.end_date - r.start_date).days + 1:
            violations.append(
                Violation(
                    MALFORMED,
                    user_id,
                    f"{_fmt(r)} has day_count {r.day_count}, "
                    f"dates give {(r.end_date - r.start_date).days + 1}",
                )
            )
            well_formed.append(r)
        else:
            well_formed.append(r)

    ordered = sorted(well_formed, key=lambda r: (r.start_date, r.end_date))
    reach: Run | None = None  # the run reaching furthest so far
    for r in ordered:
        if reach is not None:
            if r.start_date <= reach.end_date:
                violations.append(Violation(OVERLAP, user_id, f"{_fmt(reach)} overlaps {_fmt(r)}"))
            elif r.start_date == reach.end_date + ONE_DAY:
                violations.append(Violation(ADJACENT, user_id, f"{_fmt(reach)} and {_fmt(r)} are adjacent"))
        if reach is None or r.end_date > reach.end_date:
            reach = r

    # coverage: every date inside a run is marked
    phantom: set[int] = set()
    for r in ordered:
        lo, hi = r.start_date.toordinal(), r.end_date.toordinal()
        if w_lo is not None and w_hi is not None:
            lo, hi = max(lo, w_lo), min(hi, w_hi)
        if lo > hi:
            continue
        inside = bisect_right(marks, hi) - bisect_left(marks, lo)
        if inside == hi - lo + 1:
            continue
        if hi - lo > _MAX_ENUMERATED_SPAN:
            violations.append(
                Violation(PHANTOM_DAY, user_id, f"{_fmt(r)} spans unmarked days", hi - lo + 1 - inside)
            )
            continue
        marked_here = set(marks[bisect_left(marks, lo) : bisect_right(marks, hi)])
        phantom.update(o for o in range(lo, hi + 1) if o not in marked_here)
    violations.extend(_day_violations(PHANTOM_DAY, user_id, sorted(phantom), "inside a run but not marked"))

    # completeness: every marked date lies in a run
    intervals = sorted((r.start_date.toordinal(), r.end_date.toordinal()) for r in ordered)
    uncovered: list[int] = []
    i = 0
    max_end = -1
    for m in marks:
        while i < len(intervals) and intervals[i][0] <= m:
            max_end = max(max_end, intervals[i][1])
            i += 1
        if m > max_end:
            uncovered.append(m)
    violations.extend(_day_violations(UNCOVERED_DAY, user_id, uncovered, "marked but in no run"))

    if flags:
        violations.extend(check_active_flags(user_id, runs, today))
    return violations


def check_active_flags(user_id: str, runs: Sequence[Run], today: date) -> list[Violation]:
    """Return the active-flag violations: more than one run flagged, or a flag against the rule."""
    violations: list[Violation] = []
    flagged = [r for r in runs if r.active]
    if len(flagged) > 1:
        violations.append(
            Violation(
                MULTIPLE_ACTIVE,
                user_id,
                f"{len(flagged)} runs flagged active: " + ", ".join(_fmt(r) for r in flagged),
            )
        )
    for r in runs:
        should = r.start_date <= r.end_date and is_active(r.start_date, r.end_date, today)
        if r.active != should:
            state = "flagged active but is not" if r.active else "is active but not flagged"
            violations.append(Violation(STALE_ACTIVE, user_id, f"{_fmt(r)} {state} (local today {today})"))
    return violations
