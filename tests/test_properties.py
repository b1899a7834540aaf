"""Property tests on both backends: rebuilds, partial rebuilds, restores and timezone changes
always agree with the pure grouping of the marks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert

from potato_ops import Storage
from potato_ops.db.schema import (
    day_marks,
    ops_backups,
    ops_rebuild_history,
    ops_timezone_changes,
    runs,
    users,
)
from potato_ops.domain.dates import local_today
from potato_ops.domain.runs import group_consecutive_dates
from tests.conftest import NOW

UID = "prop-user"
TODAY_UTC = NOW.date()
ZONES = ["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago", "America/New_York", "Asia/Kathmandu"]
LO, HI = -45, 5  # marks and runs live within these day offsets from NOW's UTC date

PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def day(offset: int) -> date:
    return TODAY_UTC + timedelta(days=offset)


@dataclass(frozen=True)
class Garbage:
    """Stored runs that the constraints of both databases accept but that may be all wrong."""

    spans: list[tuple[int, int]]
    bad_count: list[bool]
    active: int | None


@st.composite
def garbage_runs(draw: st.DrawFn) -> Garbage:
    bounds = sorted(draw(st.sets(st.integers(LO - 5, HI + 5), max_size=12)))
    spans = list(zip(bounds[::2], bounds[1::2], strict=False))
    # Single-day runs too: a pair (b, b) from a repeated draw.
    singles = draw(st.lists(st.sampled_from(bounds), max_size=2, unique=True)) if bounds else []
    for s in singles:
        if all(not (a <= s <= b) for a, b in spans):
            spans.append((s, s))
    spans.sort()
    bad = draw(st.lists(st.booleans(), min_size=len(spans), max_size=len(spans)))
    active = draw(st.none() | st.integers(0, len(spans) - 1)) if spans else None
    return Garbage(spans, bad, active)


marks_st = st.sets(st.integers(LO, HI), max_size=40)
unmarked_st = st.sets(st.integers(LO, HI), max_size=10)


def reset(storage: Storage, timezone: str, marked: set[int], unmarked: set[int]) -> None:
    """Remove every row of the property user, then insert the user and marks afresh."""
    with storage.engine.begin() as conn:
        for table in (runs, day_marks, ops_backups, ops_rebuild_history, ops_timezone_changes):
            conn.execute(delete(table).where(table.c.user_id == UID))
        conn.execute(delete(users).where(users.c.id == UID))
        conn.execute(insert(users).values(id=UID, email="prop@example.com", timezone=timezone))
        rows = [{"user_id": UID, "date": day(o), "value": True} for o in marked]
        rows += [{"user_id": UID, "date": day(o), "value": False} for o in unmarked - marked]
        if rows:
            conn.execute(insert(day_marks), rows)


def store(storage: Storage, garbage: Garbage) -> None:
    with storage.engine.begin() as conn:
        for i, ((s, e), bad) in enumerate(zip(garbage.spans, garbage.bad_count, strict=True)):
            conn.execute(
                insert(runs).values(
                    user_id=UID,
                    start_date=day(s),
                    end_date=day(e),
                    day_count=e - s + 1 + (3 if bad else 0),
                    active=i == garbage.active,
                )
            )


def set_marks(storage: Storage, edits: dict[int, bool | None]) -> None:
    """Set each day's mark (True, False) or remove its row (None)."""
    with storage.engine.begin() as conn:
        for offset, value in edits.items():
            conn.execute(delete(day_marks).where(day_marks.c.user_id == UID, day_marks.c.date == day(offset)))
            if value is not None:
                conn.execute(insert(day_marks).values(user_id=UID, date=day(offset), value=value))


def stored(storage: Storage) -> list[tuple[date, date, int, bool]]:
    return [(r.start_date, r.end_date, r.day_count, r.active) for r in storage.get_user_runs(UID)]


def expected(marked: set[int], timezone: str) -> list[tuple[date, date, int, bool]]:
    """The runs the pure grouping gives, with the active rule at the storage clock."""
    today = local_today(timezone, NOW)
    return [
        (s, e, (e - s).days + 1, s <= today and e >= today - timedelta(days=1))
        for s, e in group_consecutive_dates(day(o) for o in marked)
    ]


@PROPERTY_SETTINGS
@given(
    timezone=st.sampled_from(ZONES),
    marked=marks_st,
    unmarked=unmarked_st,
    garbage=garbage_runs(),
)
def test_full_rebuild_equals_the_pure_grouping(
    storage: Storage, timezone: str, marked: set[int], unmarked: set[int], garbage: Garbage
) -> None:
    reset(storage, timezone, marked, unmarked)
    store(storage, garbage)
    result = storage.rebuild_user_runs(UID, backup=False)
    assert result.success, result.invariant_violations
    assert stored(storage) == expected(marked, timezone)
    assert storage.validate_invariants([UID]).ok


@st.composite
def range_and_edits(draw: st.DrawFn) -> tuple[int, int, dict[int, bool | None]]:
    lo = draw(st.integers(LO, HI))
    hi = draw(st.integers(lo, min(HI, lo + 20)))
    edits = draw(st.dictionaries(st.integers(lo, hi), st.sampled_from([True, False, None]), max_size=8))
    return lo, hi, edits


@PROPERTY_SETTINGS
@given(
    timezone=st.sampled_from(ZONES),
    marked=marks_st,
    unmarked=unmarked_st,
    change=range_and_edits(),
)
def test_partial_rebuild_after_edits_in_range_equals_a_full_rebuild(
    storage: Storage,
    timezone: str,
    marked: set[int],
    unmarked: set[int],
    change: tuple[int, int, dict[int, bool | None]],
) -> None:
    lo, hi, edits = change
    reset(storage, timezone, marked, unmarked)
    assert storage.rebuild_user_runs(UID, backup=False).success
    outside = {
        r.id: (r.start_date, r.end_date, r.day_count)
        for r in storage.get_user_runs(UID)
        if r.end_date < day(lo - 1) or r.start_date > day(hi + 1)
    }
    set_marks(storage, edits)
    now_marked = {o for o in marked if o not in edits} | {o for o, v in edits.items() if v}

    result = storage.rebuild_user_runs(UID, day(lo), day(hi), backup=False)
    assert result.success, result.invariant_violations
    assert stored(storage) == expected(now_marked, timezone)
    after = {r.id: (r.start_date, r.end_date, r.day_count) for r in storage.get_user_runs(UID)}
    assert {i: after.get(i) for i in outside} == outside

    full = storage.rebuild_user_runs(UID, backup=False)
    assert (full.runs_deleted, full.runs_created, full.active_flags_changed) == (0, 0, 0)


@PROPERTY_SETTINGS
@given(timezone=st.sampled_from(ZONES), marked=marks_st, garbage=garbage_runs())
def test_backup_then_restore_gives_back_exactly_the_runs(
    storage: Storage, timezone: str, marked: set[int], garbage: Garbage
) -> None:
    reset(storage, timezone, marked, set())
    store(storage, garbage)
    before = [(r.id, r.start_date, r.end_date, r.day_count) for r in storage.get_user_runs(UID)]
    backup = storage.backup_user_runs(UID)
    assert backup.metadata.total_runs == len(before)
    assert storage.rebuild_user_runs(UID, backup=False).success
    restored = storage.restore_user_runs(UID, storage.get_backup(backup.id or -1))
    assert [(r.id, r.start_date, r.end_date, r.day_count) for r in restored] == before
    assert [(r.id, r.start_date, r.end_date, r.day_count) for r in storage.get_user_runs(UID)] == before
    assert sum(r.active for r in restored) <= 1


@PROPERTY_SETTINGS
@given(
    timezone=st.sampled_from(ZONES),
    marked=marks_st,
    unmarked=unmarked_st,
    garbage=garbage_runs(),
    window=st.tuples(st.integers(LO, HI), st.integers(0, 15)),
)
def test_rebuilding_twice_changes_nothing(
    storage: Storage,
    timezone: str,
    marked: set[int],
    unmarked: set[int],
    garbage: Garbage,
    window: tuple[int, int],
) -> None:
    reset(storage, timezone, marked, unmarked)
    store(storage, garbage)
    assert storage.rebuild_user_runs(UID, backup=False).success
    first = storage.get_user_runs(UID)
    again = storage.rebuild_user_runs(UID, backup=False)
    lo, width = window
    partial = storage.rebuild_user_runs(UID, day(lo), day(lo + width), backup=False)
    for result in (again, partial):
        assert result.success
        assert (result.runs_deleted, result.runs_created, result.active_flags_changed) == (0, 0, 0)
    assert storage.get_user_runs(UID) == first


@PROPERTY_SETTINGS
@given(
    zones=st.tuples(st.sampled_from(ZONES), st.sampled_from(ZONES)),
    marked=marks_st,
    unmarked=unmarked_st,
)
def test_timezone_change_then_rebuild_keeps_marks_and_run_ids(
    storage: Storage, zones: tuple[str, str], marked: set[int], unmarked: set[int]
) -> None:
    old, new = zones
    reset(storage, old, marked, unmarked)
    assert storage.rebuild_user_runs(UID, backup=False).success
    marks_before = storage.get_user_day_marks(UID)
    ids_before = [(r.id, r.start_date, r.end_date) for r in storage.get_user_runs(UID)]
    storage.update_user(UID, timezone=new)
    assert storage.get_user_day_marks(UID) == marks_before
    assert storage.rebuild_user_runs(UID, backup=False).success
    assert [(r.id, r.start_date, r.end_date) for r in storage.get_user_runs(UID)] == ids_before
    assert stored(storage) == expected(marked, new)
