"""Edges the other tests missed: a partial rebuild's streak running far past its read of the
marks, the SQLite date cache's bound, and notebook 05's verdict on users it could not fix."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import update

from potato_ops import BulkConfig, Storage
from potato_ops.db import date_texts
from potato_ops.db.schema import ops_rebuild_history
from potato_ops.runbook.error_recovery import detect, dry_run_repairs, recovery_verdict, repair, verify
from potato_ops.runbook.params import check_error_recovery
from tests.conftest import add_runs, add_user, spans
from tests.test_runbook import COMMON, _session

FROM, TO = date(2024, 3, 10), date(2024, 3, 20)
PAD_DAYS = 62  # how far the rebuild reads marks beyond its window at first (ops.rebuild)


def _days(first: date, last: date) -> list[date | str]:
    return [first + timedelta(days=k) for k in range((last - first).days + 1)]


def _stub(streak: list[date | str]) -> list[tuple[str, str]]:
    """Return a wrong run: the streak's days inside the window only (it touches the window)."""
    inside = [d for d in streak if FROM <= date.fromisoformat(str(d)) <= TO]
    return [(str(inside[0]), str(inside[-1]))]


def _group(days: list[date | str]) -> list[tuple[str, str]]:
    """Group ISO days into (start, end) runs of consecutive days, by hand."""
    ordered = sorted(date.fromisoformat(str(d)) for d in days)
    found: list[list[date]] = []
    for day in ordered:
        if found and day - found[-1][1] == timedelta(days=1):
            found[-1][1] = day
        else:
            found.append([day, day])
    return [(s.isoformat(), e.isoformat()) for s, e in found]


# One streak from inside the window to far beyond the first read on the right (and on the left).
RIGHT = _days(TO - timedelta(days=3), TO + timedelta(days=3 * PAD_DAYS))
LEFT = _days(FROM - timedelta(days=3 * PAD_DAYS), FROM + timedelta(days=2))
FAR = _days(TO + timedelta(days=400), TO + timedelta(days=401))  # outside: left as it is


@pytest.mark.parametrize("streak", [RIGHT, LEFT], ids=["right", "left"])
def test_a_partial_rebuild_follows_a_streak_past_its_read_of_the_marks(
    storage: Storage, streak: list[date | str]
) -> None:
    add_user(storage, "u1", [*streak, *FAR])
    add_runs(storage, "u1", _stub(streak))

    result = storage.rebuild_user_runs("u1", FROM, TO)

    assert result.success
    assert spans(storage, "u1") == [(str(streak[0]), str(streak[-1]))]  # FAR held no run; none made


@pytest.mark.parametrize("streak", [RIGHT, LEFT], ids=["right", "left"])
def test_a_partial_bulk_rebuild_follows_a_streak_past_its_read(
    storage: Storage, streak: list[date | str]
) -> None:
    for uid in ("u1", "u2"):  # two users: the batch path
        add_user(storage, uid, list(streak))
        add_runs(storage, uid, _stub(streak))

    result = storage.bulk_rebuild_users(
        ["u1", "u2"],
        BulkConfig(
            batch_size=2, max_workers=1, dry_run=False, from_date=FROM, to_date=TO, ignore_feature_flag=True
        ),
    )

    assert (result.completed_users, result.failed_users) == (2, 0)
    assert [spans(storage, uid) for uid in ("u1", "u2")] == [_group(streak)] * 2


def test_a_partial_bulk_rebuild_of_users_with_no_runs_writes_runs_only_near_the_window(
    storage: Storage,
) -> None:
    # Marks all over the year, no runs at all: what the set-based fill handles in a full rebuild.
    marks: list[date | str] = [
        *_days(date(2024, 1, 1), date(2024, 1, 5)),
        *_days(FROM - timedelta(days=4), FROM + timedelta(days=1)),  # crosses the window's edge
        *_days(date(2024, 3, 14), date(2024, 3, 15)),
        *_days(TO + timedelta(days=3), TO + timedelta(days=6)),
        *_days(date(2024, 9, 1), date(2024, 9, 3)),
    ]
    ids = ["u1", "u2", "u3"]
    for uid in ids:
        add_user(storage, uid, marks)
    near = [(s, e) for s, e in _group(marks) if date.fromisoformat(s) <= TO and date.fromisoformat(e) >= FROM]
    assert 0 < len(near) < len(_group(marks))

    result = storage.bulk_rebuild_users(
        ids,
        BulkConfig(
            batch_size=3, max_workers=1, dry_run=False, from_date=FROM, to_date=TO, ignore_feature_flag=True
        ),
    )

    assert (result.completed_users, result.failed_users) == (3, 0)
    assert {uid: spans(storage, uid) for uid in ids} == {uid: near for uid in ids}


def test_the_sqlite_date_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(date_texts, "_PARSED", {})
    monkeypatch.setattr(date_texts, "_PARSED_MAX", 50)
    texts = [(date(2000, 1, 1) + timedelta(days=k)).isoformat() for k in range(1000)]

    for k in range(0, len(texts), 10):  # reads of ten new days each, as a long bulk run makes
        chunk = texts[k : k + 10]
        assert date_texts.iso_dates(chunk) == [date.fromisoformat(t) for t in chunk]
        assert len(date_texts._PARSED) <= 50 + 10


def test_error_recovery_verdict_is_a_problem_while_a_user_is_still_slow(storage: Storage) -> None:
    add_user(storage, "u1", ["2024-03-01", "2024-03-02"])
    assert storage.rebuild_user_runs("u1").success
    with storage.engine.begin() as conn:  # its last rebuild took ten seconds
        conn.execute(update(ops_rebuild_history).values(duration_ms=10_000.0))
    session = _session(storage)
    params = check_error_recovery(
        scenario="performance_degradation",
        dry_run=False,
        slow_threshold_ms=1000,
        recent_days=3650,
        still_slow_ms=0.0,  # any rebuild is still too slow: the repair cannot make it fast
        **COMMON,
    )
    detection = detect(session, params)
    assert detection.slow == ["u1"]
    dry = dry_run_repairs(session, detection, params)
    done = repair(session, detection, params)
    assert [(r.user_id, r.outcome) for r in done.rows] == [("u1", "still slow")]
    after = verify(session, detection, done)
    assert after.report.ok  # no violation at all: only the slowness is left

    verdict = recovery_verdict(params, detection, dry, done, after)

    assert verdict.status == "problem"
    assert verdict.text == "repaired 0 users; 0 violations remain; 1 users not repaired or still slow"
