"""Pure run logic: the active rule, grouping marked dates into runs, expected runs, diffs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

from potato_ops.domain.dates import ONE_DAY, parse_date
from potato_ops.domain.models import Run


def should_be_active(start_date: date, end_date: date, today: date) -> bool:
    """Return True if a run with these dates should be flagged active on the user's ``today``.

    The one statement of the rule: the streak includes today, or ended yesterday and can still
    be continued. A malformed run (start after end) is never active: it is no streak at all,
    and flagging it would let it take the one active slot from a real run. Its SQL twin, for
    statements that set the flag themselves, is ``db.grouping.active_flag_sql``;
    ``tests/test_sql_rules.py`` proves the two agree.
    """
    return start_date <= end_date and start_date <= today and end_date >= today - ONE_DAY


def earliest_active_end(today: date) -> date:
    """Return the earliest end_date a run can have and still be active on ``today``.

    Set-based reads filter on it (with any flagged run) to fetch only runs whose flag may matter;
    ``should_be_active`` then judges each one.
    """
    return today - ONE_DAY


def group_consecutive_dates(dates: Iterable[date | str]) -> list[tuple[date, date]]:
    """Return the sorted ``(start, end)`` pairs of maximal streaks of consecutive dates.

    Duplicates and input order don't matter. Its SQL twin is ``db.grouping.grouped_marks_sql``
    (``tests/test_sql_rules.py`` proves the two agree).
    """
    # Dates (the usual case, by the hundred thousand in a bulk batch) skip parse_date.
    ordinals = (d.toordinal() if type(d) is date else parse_date(d).toordinal() for d in dates)
    return [(date.fromordinal(s), date.fromordinal(e)) for s, e in group_consecutive_ordinals(ordinals)]


def group_consecutive_ordinals(ordinals: Iterable[int]) -> list[tuple[int, int]]:
    """Return the sorted ``(first, last)`` pairs of maximal runs of consecutive day ordinals.

    The grouping of ``group_consecutive_dates`` on ``date.toordinal`` numbers, which a database
    can hand over ready-made: duplicates and input order don't matter.
    """
    days = sorted(set(ordinals))
    groups: list[tuple[int, int]] = []
    if not days:
        return groups
    start = prev = days[0]
    for current in days[1:]:
        if current != prev + 1:
            groups.append((start, prev))
            start = current
        prev = current
    groups.append((start, prev))
    return groups


def expected_runs(user_id: str, marked_dates: Iterable[date], today: date) -> list[Run]:
    """Return the runs a user's marked dates give (ids None), sorted, with the active rule."""
    return [
        Run(None, user_id, s, e, (e - s).days + 1, should_be_active(s, e, today))
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
