"""Pure invariant checks: every way stored runs can disagree with the marks and the active rule."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from datetime import date

from potato_ops.domain.dates import ONE_DAY
from potato_ops.domain.models import Run, Violation, ViolationKind
from potato_ops.domain.runs import should_be_active

_MAX_ENUMERATED_SPAN = 200_000


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


def _day_violations(kind: ViolationKind, user_id: str, ordinals: list[int], what: str) -> list[Violation]:
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
    span = None if window is None else (window[0].toordinal(), window[1].toordinal())
    marks = sorted({d.toordinal() for d in marked_dates})
    if span is not None:
        marks = marks[bisect_left(marks, span[0]) : bisect_right(marks, span[1])]
    violations: list[Violation] = []
    if not user_exists:
        violations.extend(
            Violation(ViolationKind.ORPHAN, user_id, f"{_fmt(r)} belongs to no existing user") for r in runs
        )
    well_formed = _check_well_formed(user_id, runs, violations)
    ordered = sorted(well_formed, key=lambda r: (r.start_date, r.end_date))
    violations.extend(_check_neighbours(user_id, ordered))
    violations.extend(_check_coverage(user_id, ordered, marks, span))
    violations.extend(_check_completeness(user_id, ordered, marks))
    if flags:
        violations.extend(check_active_flags(user_id, runs, today))
    return violations


def _check_well_formed(user_id: str, runs: Sequence[Run], violations: list[Violation]) -> list[Run]:
    """Add the malformed runs' violations; return the runs with start <= end (invariant 1)."""
    well_formed: list[Run] = []
    for r in runs:
        if r.start_date > r.end_date:
            violations.append(Violation(ViolationKind.MALFORMED, user_id, f"{_fmt(r)} starts after it ends"))
            continue
        if r.day_count != (r.end_date - r.start_date).days + 1:
            violations.append(
                Violation(
                    ViolationKind.MALFORMED,
                    user_id,
                    f"{_fmt(r)} has day_count {r.day_count}, "
                    f"dates give {(r.end_date - r.start_date).days + 1}",
                )
            )
        well_formed.append(r)
    return well_formed


def _check_neighbours(user_id: str, ordered: Sequence[Run]) -> list[Violation]:
    """Return the overlaps and adjacencies of runs sorted by start (invariants 2 and 3)."""
    violations: list[Violation] = []
    reach: Run | None = None  # the run reaching furthest so far
    for r in ordered:
        if reach is not None:
            if r.start_date <= reach.end_date:
                violations.append(
                    Violation(ViolationKind.OVERLAP, user_id, f"{_fmt(reach)} overlaps {_fmt(r)}")
                )
            elif r.start_date == reach.end_date + ONE_DAY:
                violations.append(
                    Violation(ViolationKind.ADJACENT, user_id, f"{_fmt(reach)} and {_fmt(r)} are adjacent")
                )
        if reach is None or r.end_date > reach.end_date:
            reach = r
    return violations


def _check_coverage(
    user_id: str, ordered: Sequence[Run], marks: list[int], span: tuple[int, int] | None
) -> list[Violation]:
    """Return the days inside a run that are not marked (invariant 4), within ``span`` if given."""
    violations: list[Violation] = []
    phantom: set[int] = set()
    for r in ordered:
        lo, hi = r.start_date.toordinal(), r.end_date.toordinal()
        if span is not None:
            lo, hi = max(lo, span[0]), min(hi, span[1])
        if lo > hi:
            continue
        inside = bisect_right(marks, hi) - bisect_left(marks, lo)
        if inside == hi - lo + 1:
            continue
        if hi - lo > _MAX_ENUMERATED_SPAN:
            violations.append(
                Violation(
                    ViolationKind.PHANTOM_DAY, user_id, f"{_fmt(r)} spans unmarked days", hi - lo + 1 - inside
                )
            )
            continue
        marked_here = set(marks[bisect_left(marks, lo) : bisect_right(marks, hi)])
        phantom.update(o for o in range(lo, hi + 1) if o not in marked_here)
    violations.extend(
        _day_violations(ViolationKind.PHANTOM_DAY, user_id, sorted(phantom), "inside a run but not marked")
    )
    return violations


def _check_completeness(user_id: str, ordered: Sequence[Run], marks: list[int]) -> list[Violation]:
    """Return the marked days that lie in no run (invariant 5)."""
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
    return _day_violations(ViolationKind.UNCOVERED_DAY, user_id, uncovered, "marked but in no run")


def check_active_flags(user_id: str, runs: Sequence[Run], today: date) -> list[Violation]:
    """Return the active-flag violations: more than one run flagged, or a flag against the rule."""
    violations: list[Violation] = []
    flagged = [r for r in runs if r.active]
    if len(flagged) > 1:
        violations.append(
            Violation(
                ViolationKind.MULTIPLE_ACTIVE,
                user_id,
                f"{len(flagged)} runs flagged active: " + ", ".join(_fmt(r) for r in flagged),
            )
        )
    for r in runs:
        should = should_be_active(r.start_date, r.end_date, today)
        if r.active != should:
            state = "flagged active but is not" if r.active else "is active but not flagged"
            violations.append(
                Violation(ViolationKind.STALE_ACTIVE, user_id, f"{_fmt(r)} {state} (local today {today})")
            )
    return violations
