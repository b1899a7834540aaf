"""Every runbook notebook executed through the runner on a small seeded SQLite database.

Each test reads the archived result JSON (what a scheduler keeps) and checks the database the
notebook worked on. PostgreSQL runs are in test_notebooks_pg.py, reusing the helpers here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

from potato_ops import Storage
from potato_ops.db.schema import RUNS_V2_FLAG, runs
from potato_ops.demo.synth import SeedResult, seed
from potato_ops.domain.models import User, ViolationKind
from potato_ops.exitcodes import ExitCode
from potato_ops.notebook_runs.execute import RunRecord, run_notebook

pytestmark = pytest.mark.notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT_S = 120
# Kinds a single-user rebuild repairs (orphans have no user; overlap is refused by PostgreSQL).
REBUILDABLE = (
    ViolationKind.MALFORMED,
    ViolationKind.ADJACENT,
    ViolationKind.PHANTOM_DAY,
    ViolationKind.UNCOVERED_DAY,
    ViolationKind.STALE_ACTIVE,
)


@dataclass
class SeededDatabase:
    """A small seeded database and what was injected into it."""

    url: str
    storage: Storage
    seeded: SeedResult

    def corrupted_user(self) -> User:
        """Return an existing user whose runs a rebuild repairs."""
        uid = next(u for u, kind in sorted(self.seeded.corrupted.items()) if kind in REBUILDABLE)
        return self.storage.get_user(uid)

    def clean_user(self) -> User:
        """Return a user nothing was injected into, with runs."""
        uid = next(
            u
            for u in self.seeded.user_ids
            if u not in self.seeded.corrupted and self.storage.get_user_runs(u)
        )
        return self.storage.get_user(uid)


def seed_database(url: str, *, users: int = 24, days: int = 120, corrupt: float = 0.25) -> SeededDatabase:
    """Return a database at url with the schema, seeded users, injected corruption, flag on."""
    storage = Storage.connect(url)
    storage.create_schema()
    seeded = seed(storage.engine, users_count=users, days=days, corrupt=corrupt, now=storage.now())
    storage.set_feature_flag(RUNS_V2_FLAG, True)
    return SeededDatabase(url, storage, seeded)


def run(name: str, parameters: Mapping[str, object], reports: Path) -> tuple[RunRecord, dict[str, Any]]:
    """Run a notebook through the runner; return its record and the archived result JSON."""
    record = run_notebook(
        NOTEBOOKS / f"{name}.ipynb", parameters, reports_dir=reports, cell_timeout=CELL_TIMEOUT_S
    )
    archived: dict[str, Any] = json.loads(record.result_path.read_text(encoding="utf-8"))
    assert archived["status"] == record.status
    return record, archived


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SeededDatabase:
    """A seeded SQLite database that notebooks reach through $POTATO_DATABASE_URL."""
    found = seed_database(f"sqlite:///{tmp_path / 'seeded.sqlite3'}")
    monkeypatch.setenv("POTATO_DATABASE_URL", found.url)
    return found


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    return tmp_path / "reports"


def test_single_user_dry_run_shows_the_repair_and_writes_nothing(db: SeededDatabase, reports: Path) -> None:
    user = db.corrupted_user()
    before = db.storage.get_user_runs(user.id)
    record, result = run(
        "01_single_user_recovery", {"user_email": user.email, "operator": "ana", "ticket": "INC-1"}, reports
    )
    assert (record.status, record.exit_code) == ("problem", ExitCode.PROBLEM_FOUND)
    figures = result["figures"]
    assert figures["dry_run"] is True
    assert figures["user_id"] == user.id
    assert figures["violations_before"] > 0
    assert figures["violations_after"] == 0
    assert figures["runs_deleted"] + figures["runs_created"] + figures["active_flags_changed"] > 0
    assert (figures["operator"], figures["ticket"]) == ("ana", "INC-1")
    assert result["verdict"].startswith("dry run: rebuilding")
    assert db.storage.get_user_runs(user.id) == before


def test_single_user_recovery_repairs_the_user(db: SeededDatabase, reports: Path) -> None:
    user = db.corrupted_user()
    record, result = run("01_single_user_recovery", {"user_id": user.id, "dry_run": False}, reports)
    assert record.status == "ok", result["verdict"]
    figures = result["figures"]
    assert (figures["violations_after"], figures["rolled_back"]) == (0, False)
    assert figures["backup_id"] is not None
    assert result["operation_ids"]
    assert db.storage.validate_invariants([user.id]).ok
    assert [b.id for b in db.storage.get_backups(user.id)] == [figures["backup_id"]]


def test_a_bad_parameter_stops_the_run_at_the_validation_cell(db: SeededDatabase, reports: Path) -> None:
    user = db.clean_user()
    record, result = run("01_single_user_recovery", {"user_email": user.email, "user_id": user.id}, reports)
    assert (record.status, record.exit_code) == ("error", ExitCode.EXECUTION_FAILED)
    assert result["error"]["ename"] == "RunbookParameterError"
    assert "not both" in result["error"]["evalue"]


def test_partial_rebuild_leaves_runs_outside_the_range_alone(db: SeededDatabase, reports: Path) -> None:
    user = db.corrupted_user()
    end = db.seeded.end_date
    params = {
        "user_email": user.email,
        "from_date": str(end - timedelta(days=30)),
        "to_date": str(end),
        "dry_run": False,
    }
    before = db.storage.get_user_runs(user.id)
    record, result = run("02_partial_rebuild", params, reports)
    figures = result["figures"]
    assert figures["runs_changed_outside_range"] == 0
    assert figures["from_date"] == str(end - timedelta(days=30))
    lo = end - timedelta(days=31)
    outside = [r for r in before if r.end_date < lo]
    after = db.storage.get_user_runs(user.id)
    assert [r for r in after if r.end_date < lo] == outside
    assert record.status in ("ok", "problem")  # corruption older than the range may remain


def test_bulk_recovery_dry_run_then_real(db: SeededDatabase, reports: Path) -> None:
    record, result = run("03_bulk_recovery", {"dry_run": False, "batch_size": 5, "max_workers": 2}, reports)
    figures = result["figures"]
    users = len(db.seeded.user_ids)
    assert figures["users_planned"] == users
    assert figures["dry_run_users_changed"] > 0
    assert (figures["completed_users"], figures["failed_users"]) == (users, 0)
    assert len(result["operation_ids"]) == 2  # the dry run, then the real one
    # Orphan runs belong to no user, so a rebuild of every user leaves them (and only them).
    report = db.storage.validate_invariants()
    orphan_owners = {u for u, kind in db.seeded.corrupted.items() if kind == "orphan"}
    assert set(report.users_with_violations) == orphan_owners
    assert figures["violations_after"] == report.total
    assert record.status == ("ok" if report.ok else "problem")


def test_timezone_migration_moves_the_user_and_rebuilds(db: SeededDatabase, reports: Path) -> None:
    user = db.clean_user()
    target = "Pacific/Kiritimati" if user.timezone != "Pacific/Kiritimati" else "Pacific/Pago_Pago"
    record, result = run(
        "04_timezone_migration", {"user_email": user.email, "new_timezone": target, "dry_run": False}, reports
    )
    assert record.status == "ok", result["verdict"]
    figures = result["figures"]
    assert (figures["users_affected"], figures["timezones_changed"], figures["still_pending"]) == (1, 1, 0)
    assert db.storage.get_user(user.id).timezone == target
    assert db.storage.get_users_with_timezone_changes() == []


def test_timezone_migration_without_a_user_finds_nothing_pending(db: SeededDatabase, reports: Path) -> None:
    record, result = run("04_timezone_migration", {}, reports)
    assert record.status == "ok"
    assert result["figures"]["users_affected"] == 0
    assert "nothing to do" in result["verdict"]


def test_error_recovery_dry_run_then_repair_leaves_no_violation(db: SeededDatabase, reports: Path) -> None:
    injected = db.storage.validate_invariants()
    assert injected.total > 0
    record, result = run("05_error_recovery", {}, reports)
    assert (record.status, result["figures"]["dry_run"]) == ("problem", True)
    assert result["figures"]["violations_before"] == injected.total
    assert db.storage.validate_invariants().total == injected.total  # the dry run wrote nothing

    record, result = run("05_error_recovery", {"dry_run": False, "scenario": "all"}, reports)
    assert record.status == "ok", result["verdict"]
    figures = result["figures"]
    assert (figures["violations_before"], figures["violations_after"]) == (injected.total, 0)
    assert figures["scenarios"] == ["invariant_violations", "performance_degradation", "data_corruption"]
    assert db.storage.validate_invariants().ok


def test_restore_from_backup_puts_the_runs_back(db: SeededDatabase, reports: Path) -> None:
    user = db.clean_user()
    backup = db.storage.backup_user_runs(user.id)
    with db.storage.engine.begin() as conn:
        conn.execute(delete(runs).where(runs.c.user_id == user.id))
    record, result = run("06_restore_from_backup", {"user_id": user.id, "dry_run": False}, reports)
    assert record.status == "ok", result["verdict"]
    figures = result["figures"]
    assert (figures["backup_id"], figures["runs_restored"]) == (backup.id, backup.metadata.total_runs)
    assert figures["runs_before"] == 0
    assert [r.span for r in db.storage.get_user_runs(user.id)] == [r.span for r in backup.runs]


def test_monitoring_audit_finds_the_injected_corruption(db: SeededDatabase, reports: Path) -> None:
    report = db.storage.validate_invariants()
    record, result = run("07_monitoring_audit", {"since": "7d"}, reports)
    assert (record.status, record.exit_code) == ("problem", ExitCode.PROBLEM_FOUND)
    figures = result["figures"]
    assert figures["invariant_violations"] == report.total
    assert figures["users_with_violations"] == len(report.users_with_violations)
    assert sum(figures["violations_by_kind"].values()) == report.total
    assert figures["rebuild_count"] == 0 and figures["rebuild_success_rate"] is None
    assert result["database"]["dialect"] == "sqlite"


def test_troubleshooting_a_corrupted_user_points_at_the_rebuild(db: SeededDatabase, reports: Path) -> None:
    user = db.corrupted_user()
    record, result = run("08_troubleshooting", {"user_email": user.email}, reports)
    assert record.status == "problem"
    figures = result["figures"]
    assert (figures["user_id"], figures["violations_now"] > 0) == (user.id, True)
    assert figures["needing_attention"] >= 1
