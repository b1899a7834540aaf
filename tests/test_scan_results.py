"""The scan's findings persist: a run without a scan shows the last scan's, with its time and age.

On the seeded database of ``test_metrics`` (three violations by hand: u1's uncovered days,
u2's and u3's stale flags), on both databases.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from potato_ops import Storage
from potato_ops.db import scan_results
from potato_ops.db.schema import ops_scan_results
from potato_ops.monitoring.alerts import default_rules, evaluate
from potato_ops.monitoring.metrics import compute_metrics
from potato_ops.monitoring.scheduled_audit import run_audit
from potato_ops.ops import scan_record
from tests.conftest import NOW, MutableClock
from tests.test_metrics import seeded as seeded

SEEDED_BY_KIND = {
    "malformed": 0,
    "overlap": 0,
    "adjacent": 0,
    "phantom_day": 0,
    "uncovered_day": 1,
    "multiple_active": 0,
    "stale_active": 2,
    "orphan": 0,
}


def scan_rows(storage: Storage) -> list[tuple[str, int]]:
    with storage.engine.connect() as conn:
        return [
            (r.source, r.violations)
            for r in conn.execute(select(ops_scan_results).order_by(ops_scan_results.c.id))
        ]


def test_a_run_without_a_scan_shows_the_last_scan_and_its_age(seeded: Storage, clock: MutableClock) -> None:
    scanned = compute_metrics(seeded.database)
    clock.advance(minutes=30)

    quick = compute_metrics(seeded.database, scan=False)

    assert scanned.scanned and not quick.scanned
    assert (quick.invariant_violations, quick.users_with_violations) == (3, 3)
    assert quick.violations_by_kind == SEEDED_BY_KIND
    assert (quick.last_scan_at, quick.last_scan_age_seconds) == (NOW, 1800.0)
    assert "last scan (2024-03-10T15:00:00+00:00): 3 violations in 3 users" in quick.summary()
    # The P0 stays firing on the quick run's figures, as it did on the scan's.
    assert "Invariant Violations Found By Scan" in {
        a.name for a in evaluate(default_rules(), quick.as_dict())
    }
    assert scan_rows(seeded) == [("metrics", 3)]


def test_a_later_scan_after_the_repair_clears_the_figures(seeded: Storage, clock: MutableClock) -> None:
    compute_metrics(seeded.database)
    for user in ("u1", "u2", "u3"):
        assert seeded.rebuild_user_runs(user).success
    clock.advance(minutes=5)
    seeded.validate_invariants()  # potato-ops validate, a notebook: a scan like any other
    clock.advance(minutes=5)

    quick = compute_metrics(seeded.database, scan=False)

    assert (quick.invariant_violations, quick.users_with_violations) == (0, 0)
    assert quick.last_scan_at == NOW + timedelta(minutes=5)
    assert quick.last_scan_age_seconds == 300.0
    assert scan_rows(seeded) == [("metrics", 3), ("scan", 0)]


def test_a_scan_of_some_users_is_not_recorded(seeded: Storage) -> None:
    seeded.validate_invariants(["u1"])

    assert scan_rows(seeded) == []
    assert compute_metrics(seeded.database, scan=False).invariant_violations is None


def test_the_audit_records_its_success_and_grows_old(seeded: Storage, clock: MutableClock) -> None:
    outcome = run_audit(seeded.database, notebook=False)
    assert (outcome.metrics.last_audit_at, outcome.metrics.last_audit_age_seconds) == (NOW, 0.0)
    clock.advance(hours=3)

    later = compute_metrics(seeded.database)

    assert later.last_audit_at == NOW
    assert later.last_audit_age_seconds == 3 * 3600
    assert later.last_scan_age_seconds == 0.0
    fired = {a.name for a in evaluate(default_rules(), later.as_dict())}
    assert "Audit Stale" in fired
    assert "Invariant Scan Stale" not in fired
    assert scan_rows(seeded) == [("audit", 3), ("metrics", 3)]


def test_old_rows_go_but_the_newest_of_each_source_stays(
    seeded: Storage, clock: MutableClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan_results, "KEEP_ROWS", 2)
    run_audit(seeded.database, notebook=False)
    for _ in range(5):
        clock.advance(minutes=5)
        seeded.validate_invariants()

    # Rows 1 (audit) .. 6: rows up to 6 - 2 go, except the newest audit's.
    assert scan_rows(seeded) == [("audit", 3), ("scan", 3), ("scan", 3)]
    assert scan_record.last_scan(seeded.database, scan_record.AUDIT) is not None
    last = scan_record.last_scan(seeded.database)
    assert last is not None and last.scanned_at == NOW + timedelta(minutes=25)


def test_a_scan_whose_record_cannot_be_written_still_reports(
    seeded: Storage, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*_args: object) -> None:
        raise OperationalError("INSERT", {}, Exception("cannot execute INSERT in a read-only transaction"))

    monkeypatch.setattr(scan_record, "insert_scan_result", refuse)
    with caplog.at_level(logging.WARNING, logger="potato_ops"):
        report = seeded.validate_invariants()

    assert report.total == 3
    assert scan_rows(seeded) == []
    assert "the scan's findings could not be recorded: cannot execute INSERT" in caplog.text
