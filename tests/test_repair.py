"""The error-recovery repairs and the engine's honest dry runs (rebuild and restore)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import func, select

from potato_ops import Storage
from potato_ops.db.schema import ops_backups, ops_rebuild_history
from potato_ops.domain.models import Violation, ViolationKind
from potato_ops.ops import batch_rebuild
from potato_ops.ops.repair import RepairStatus, repair_user, repair_users
from tests.conftest import add_runs, add_user

D = date.fromisoformat
TODAY = D("2024-03-10")  # the local date of the storage clock (NOW) in UTC


def spans(storage: Storage, uid: str) -> list[tuple[str, str, bool]]:
    return [(str(r.start_date), str(r.end_date), r.active) for r in storage.get_user_runs(uid)]


def count(storage: Storage, table: object) -> int:
    with storage.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def _broken_user(storage: Storage) -> None:
    # Marks: 03-01..03-03 and 03-09..03-10; runs stored split in two and missing the last streak.
    add_user(storage, "u1", ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-09", "2024-03-10"])
    add_runs(storage, "u1", [("2024-03-01", "2024-03-01"), ("2024-03-02", "2024-03-03")])


def test_a_repair_backs_up_rebuilds_and_commits_together(storage: Storage) -> None:
    _broken_user(storage)
    before = storage.get_user_runs("u1")
    done = repair_user(storage.database, "u1", dry_run=False)
    assert done.status is RepairStatus.REPAIRED
    assert spans(storage, "u1") == [("2024-03-01", "2024-03-03", False), ("2024-03-09", "2024-03-10", True)]
    [backup] = storage.get_backups("u1")
    assert backup.runs == before and done.result is not None and done.result.backup == backup
    again = repair_user(storage.database, "u1", dry_run=False)
    assert again.status is RepairStatus.UNCHANGED


def test_a_repair_that_does_not_validate_rolls_back_whole(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    _broken_user(storage)
    before = spans(storage, "u1")

    def always_broken(*_a: object, **_k: object) -> list[Violation]:
        return [Violation(ViolationKind.OVERLAP, "u1", "injected by the test")]

    monkeypatch.setattr(batch_rebuild, "check_active_flags", always_broken)
    done = repair_user(storage.database, "u1", dry_run=False)
    assert done.status is RepairStatus.ROLLED_BACK
    assert spans(storage, "u1") == before  # the runs are exactly as backed up
    assert count(storage, ops_backups) == 0  # the backup was part of the rolled-back transaction
    assert count(storage, ops_rebuild_history) == 1  # the failure is on record


def test_a_dry_run_repair_writes_nothing_and_a_missing_user_is_said(storage: Storage) -> None:
    _broken_user(storage)
    before = spans(storage, "u1")
    done = repair_users(storage.database, ["u1", "ghost"], dry_run=True)
    assert [(d.user_id, d.status) for d in done] == [
        ("u1", RepairStatus.REPAIRED),
        ("ghost", RepairStatus.NO_USER),
    ]
    assert "ghost" in done[1].error
    assert spans(storage, "u1") == before
    assert count(storage, ops_backups) == 0


def test_a_recent_days_repair_leaves_older_runs_alone(storage: Storage) -> None:
    _broken_user(storage)
    old = storage.get_user_runs("u1")
    done = repair_user(storage.database, "u1", dry_run=False, recent_days=3)  # 03-07 .. 03-10
    assert done.status is RepairStatus.REPAIRED and done.result is not None
    assert (done.result.from_date, done.result.to_date) == (TODAY - timedelta(days=3), TODAY)
    assert storage.get_user_runs("u1")[:2] == old  # ids, dates and counts kept outside the range
    assert spans(storage, "u1")[2] == ("2024-03-09", "2024-03-10", True)


def test_a_dry_run_rebuild_reports_the_runs_it_would_leave(storage: Storage) -> None:
    _broken_user(storage)
    before = storage.get_user_runs("u1")
    result = storage.rebuild_user_runs("u1", dry_run=True)
    got = [(str(r.start_date), str(r.end_date), r.day_count, r.active) for r in result.runs_after]
    assert got == [("2024-03-01", "2024-03-03", 3, False), ("2024-03-09", "2024-03-10", 2, True)]
    assert storage.get_user_runs("u1") == before


def test_a_dry_run_restore_reports_the_runs_and_flags_it_would_leave(storage: Storage) -> None:
    add_user(storage, "u1", ["2024-03-01", "2024-03-09", "2024-03-10"])
    add_runs(storage, "u1", [("2024-03-01", "2024-03-01"), ("2024-03-09", "2024-03-10")])  # none flagged
    backup = storage.backup_user_runs("u1")
    add_runs(storage, "u1", [("2024-02-01", "2024-02-02")])
    stored = storage.get_user_runs("u1")
    projected = storage.restore_user_runs("u1", backup, dry_run=True)
    # The run ending today is active by the rule at restore time, though the backup had no flag.
    assert [(str(r.start_date), str(r.end_date), r.active) for r in projected] == [
        ("2024-03-01", "2024-03-01", False),
        ("2024-03-09", "2024-03-10", True),
    ]
    assert storage.get_user_runs("u1") == stored
    assert count(storage, ops_rebuild_history) == 0
