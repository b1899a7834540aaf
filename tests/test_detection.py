"""Detection on both backends: seeded corruption is found exactly, no misses, no false alarms."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date, timedelta

import pytest
from sqlalchemy import delete, select

from potato_ops import Storage
from potato_ops.db.schema import day_marks, runs, users
from potato_ops.demo.synth import SeedResult, seed
from potato_ops.domain.models import ViolationKind
from tests.conftest import MutableClock

USERS = 150


@pytest.fixture
def seeded(storage: Storage, clock: MutableClock) -> SeedResult:
    return seed(storage.engine, users_count=USERS, days=120, corrupt=0.3, now=clock())


def _day_counts(storage: Storage) -> tuple[int, int]:
    """Return (phantom days, uncovered days) over the whole database, counted independently.

    Phantom: a date inside some run of a user that the user has not marked (runs of unknown
    users count too). Uncovered: a marked date of an existing user inside none of their runs.
    """
    marked: dict[str, set[date]] = defaultdict(set)
    covered: dict[str, set[date]] = defaultdict(set)
    with storage.engine.connect() as conn:
        known = {r[0] for r in conn.execute(select(users.c.id))}
        for uid, d in conn.execute(
            select(day_marks.c.user_id, day_marks.c.date).where(day_marks.c.value.is_(True))
        ):
            marked[uid].add(d)
        for uid, start, end in conn.execute(select(runs.c.user_id, runs.c.start_date, runs.c.end_date)):
            covered[uid].update(start + timedelta(days=i) for i in range((end - start).days + 1))
    phantom = sum(len(covered[u] - marked[u]) for u in covered)
    uncovered = sum(len(marked[u] - covered[u]) for u in known)
    return phantom, uncovered


def test_validate_invariants_finds_exactly_the_corrupted_users(storage: Storage, seeded: SeedResult) -> None:
    # The seed holds every kind of corruption this database can store.
    kinds = {
        ViolationKind.MALFORMED,
        ViolationKind.ADJACENT,
        ViolationKind.PHANTOM_DAY,
        ViolationKind.UNCOVERED_DAY,
        ViolationKind.STALE_ACTIVE,
        ViolationKind.ORPHAN,
    }
    if storage.dialect == "sqlite":
        kinds.add(ViolationKind.OVERLAP)
    assert set(seeded.corrupted.values()) == kinds
    assert len(seeded.corrupted) == round(USERS * 0.3)

    report = storage.validate_invariants()
    assert report.users_with_violations == sorted(seeded.corrupted)  # no miss, no false alarm
    assert report.users_scanned == USERS
    detected: dict[str, set[str]] = defaultdict(set)
    for v in report.violations:
        detected[v.user_id].add(v.kind)
    missed = {uid: kind for uid, kind in seeded.corrupted.items() if kind not in detected[uid]}
    assert missed == {}
    assert storage.detect_data_corruption() == sorted(seeded.corrupted)
    overlapping = sorted(u for u, k in seeded.corrupted.items() if k == ViolationKind.OVERLAP)
    assert storage.get_users_with_overlapping_runs() == overlapping
    assert storage.get_users_with_multiple_active_runs() == []


def test_report_counts_match_what_was_injected(storage: Storage, seeded: SeedResult) -> None:
    report = storage.validate_invariants()
    injected = Counter(seeded.corrupted.values())
    phantom, uncovered = _day_counts(storage)
    assert report.counts() == {
        "overlapping_runs": injected[ViolationKind.OVERLAP],
        "multiple_active_runs": 0,
        "adjacent_runs": injected[ViolationKind.ADJACENT],
        "uncovered_days": uncovered,
        "phantom_days": phantom,
        "stale_active": injected[ViolationKind.STALE_ACTIVE],
        "malformed_runs": injected[ViolationKind.MALFORMED],
        "orphan_runs": injected[ViolationKind.ORPHAN],
    }
    # Every uncovered day comes from a deleted run; every phantom day from a stretched run
    # (one day each) or an orphan's run (three days each).
    assert uncovered >= injected[ViolationKind.UNCOVERED_DAY]
    assert phantom == injected[ViolationKind.PHANTOM_DAY] + 3 * injected[ViolationKind.ORPHAN]
    assert report.total == len(report.violations)
    assert not report.ok
    kinds = Counter(v.kind for v in report.violations)
    assert kinds[ViolationKind.MULTIPLE_ACTIVE] == 0
    assert {k for k in kinds if k not in (ViolationKind.PHANTOM_DAY, ViolationKind.UNCOVERED_DAY)} == {
        k for k in injected if k not in (ViolationKind.PHANTOM_DAY, ViolationKind.UNCOVERED_DAY)
    }


def test_scan_of_some_users_reports_only_them(storage: Storage, seeded: SeedResult) -> None:
    corrupted = sorted(u for u in seeded.corrupted if u in seeded.user_ids)[:5]
    clean = [u for u in seeded.user_ids if u not in seeded.corrupted][:5]
    report = storage.validate_invariants(corrupted + clean)
    assert report.users_with_violations == corrupted
    assert report.users_scanned == 10
    assert storage.validate_invariants(clean).ok


def test_rebuilding_the_corrupted_users_leaves_only_the_orphans(storage: Storage, seeded: SeedResult) -> None:
    orphans = sorted(u for u, k in seeded.corrupted.items() if k == ViolationKind.ORPHAN)
    for uid in seeded.corrupted:
        if uid not in orphans:
            result = storage.rebuild_user_runs(uid, backup=False)
            assert result.success, (uid, result.invariant_violations)
    report = storage.validate_invariants()
    assert report.users_with_violations == orphans
    assert {v.kind for v in report.violations} == {ViolationKind.ORPHAN, ViolationKind.PHANTOM_DAY}
    with storage.engine.begin() as conn:
        conn.execute(delete(runs).where(runs.c.user_id.in_(orphans)))
    assert storage.validate_invariants().ok


def test_clock_past_midnight_makes_stale_flags_that_refresh_fixes(
    storage: Storage, clock: MutableClock, seeded: SeedResult
) -> None:
    for uid in seeded.corrupted:
        if uid in seeded.user_ids:
            storage.rebuild_user_runs(uid, backup=False)
    with storage.engine.begin() as conn:
        conn.execute(delete(runs).where(runs.c.user_id.not_in(seeded.user_ids)))
    assert storage.validate_invariants().ok
    clock.advance(days=2)
    report = storage.validate_invariants()
    assert {v.kind for v in report.violations} == {ViolationKind.STALE_ACTIVE}
    assert storage.refresh_active_runs() == report.stale_active > 0
    assert storage.validate_invariants().ok
