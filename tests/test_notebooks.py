"""Every runbook notebook executed through execute_notebook on a small seeded SQLite database.

Each test reads the archived result JSON (what a scheduler keeps) and checks the database the
notebook worked on. PostgreSQL runs are in test_notebooks_pg.py, reusing the helpers here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, delete, insert, select, update

from potato_ops import Storage
from potato_ops.db.schema import (
    RUNS_V2_FLAG,
    day_marks,
    feature_flags,
    ops_backups,
    ops_rebuild_history,
    runs,
    users,
)
from potato_ops.demo.synth import SeedResult, seed
from potato_ops.domain.models import User, ViolationKind
from potato_ops.exitcodes import ExitCode
from potato_ops.notebook_runs.execute import ExecutionRecord, execute_notebook
from potato_ops.notebook_runs.result import RESULT_MIMETYPE

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


def confirmation(parameters: Mapping[str, object]) -> dict[str, object]:
    """Return the parameters with a live run confirmed by the database's name, as an operator types it."""
    if parameters.get("dry_run") is not False or "confirm" in parameters:
        return dict(parameters)
    url = os.environ[str(parameters.get("database_url_env", "POTATO_DATABASE_URL"))]
    path = url.split("?", 1)[0].rsplit("/", 1)[1]
    return {**parameters, "confirm": path}


def run(name: str, parameters: Mapping[str, object], reports: Path) -> tuple[ExecutionRecord, dict[str, Any]]:
    """Run a notebook through execute_notebook (a live run confirmed); return its record and result JSON."""
    record = execute_notebook(
        NOTEBOOKS / f"{name}.ipynb",
        confirmation(parameters),
        reports_dir=reports,
        cell_timeout=CELL_TIMEOUT_S,
    )
    archived: dict[str, Any] = json.loads(record.result_path.read_text(encoding="utf-8"))
    assert archived["status"] == record.status
    return record, archived


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SeedResult]:
    """One seeded, corrupted SQLite file per module; each test works on its own copy."""
    path = tmp_path_factory.mktemp("seeded") / "template.sqlite3"
    found = seed_database(f"sqlite:///{path}")
    found.storage.close()
    return path, found.seeded


@pytest.fixture
def db(
    template: tuple[Path, SeedResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SeededDatabase]:
    """A copy of the seeded database that notebooks reach through $POTATO_DATABASE_URL."""
    path = tmp_path / "seeded.sqlite3"
    shutil.copyfile(template[0], path)
    url = f"sqlite:///{path}"
    monkeypatch.setenv("POTATO_DATABASE_URL", url)
    found = SeededDatabase(url, Storage.connect(url), template[1])
    yield found
    found.storage.close()


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    return tmp_path / "reports"


# -- what the test computes itself, from the database's own rows ---------------------------------

Span = tuple[date, date, int, bool]


def runs_from_marks(engine: Engine, user_id: str) -> list[Span]:
    """Return the runs the user's marks give (start, end, day_count, active), by plain grouping."""
    with engine.connect() as conn:
        timezone = conn.execute(select(users.c.timezone).where(users.c.id == user_id)).scalar_one()
        days = conn.execute(
            select(day_marks.c.date)
            .where(day_marks.c.user_id == user_id, day_marks.c.value.is_(True))
            .distinct()
            .order_by(day_marks.c.date)
        ).scalars()
        spans: list[list[date]] = []
        for day in days:
            if spans and day - spans[-1][1] == timedelta(days=1):
                spans[-1][1] = day
            else:
                spans.append([day, day])
    today = datetime.now(ZoneInfo(timezone)).date()
    return [(a, b, (b - a).days + 1, a <= today and b >= today - timedelta(days=1)) for a, b in spans]


def stored_runs(engine: Engine, user_id: str) -> list[Span]:
    """Return the user's stored runs as (start, end, day_count, active), by start."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(runs.c.start_date, runs.c.end_date, runs.c.day_count, runs.c.active)
            .where(runs.c.user_id == user_id)
            .order_by(runs.c.start_date)
        ).all()
    return [(r[0], r[1], r[2], bool(r[3])) for r in rows]


def broken_users(engine: Engine) -> set[str]:
    """Return the users whose stored runs differ from what their marks give."""
    with engine.connect() as conn:
        ids = conn.execute(select(users.c.id)).scalars().all()
    return {u for u in ids if stored_runs(engine, u) != runs_from_marks(engine, u)}


def everything_but(
    engine: Engine, repaired: set[str], moved: AbstractSet[str] = frozenset()
) -> dict[str, Any]:
    """Return the app's rows except the repaired users' runs (and the moved users' rows)."""
    with engine.connect() as conn:
        return {
            "users": sorted(tuple(r) for r in conn.execute(select(users)) if r.id not in moved),
            "day_marks": sorted(tuple(r) for r in conn.execute(select(day_marks))),
            "feature_flags": sorted(tuple(r) for r in conn.execute(select(feature_flags))),
            "runs": sorted(
                (tuple(r) for r in conn.execute(select(runs)) if r.user_id not in repaired), key=repr
            ),
        }


def assert_repaired(db: SeededDatabase, repaired: set[str], before: dict[str, Any], **kw: Any) -> None:
    """The repaired users have exactly their marks' runs; nothing else of the app's data moved."""
    for uid in sorted(repaired):
        assert stored_runs(db.storage.engine, uid) == runs_from_marks(db.storage.engine, uid), uid
    assert everything_but(db.storage.engine, repaired, **kw) == before


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
    assert result["verdict"].startswith(f"dry run: would change 1 user ({user.email}: delete")
    assert db.storage.get_user_runs(user.id) == before


def test_a_bad_parameter_stops_the_run_at_the_validation_cell(db: SeededDatabase, reports: Path) -> None:
    user = db.clean_user()
    record, result = run("01_single_user_recovery", {"user_email": user.email, "user_id": user.id}, reports)
    assert (record.status, record.exit_code) == ("refused", ExitCode.INVALID_PARAMETERS)
    assert result["error"]["ename"] == "RunbookParameterError"
    assert "not both" in result["error"]["evalue"]


def test_timezone_migration_without_a_user_finds_nothing_pending(db: SeededDatabase, reports: Path) -> None:
    record, result = run("04_timezone_migration", {}, reports)
    assert record.status == "ok"
    assert result["figures"]["users_affected"] == 0
    assert "nothing to do" in result["verdict"]


def test_troubleshooting_a_corrupted_user_points_at_the_rebuild(db: SeededDatabase, reports: Path) -> None:
    user = db.corrupted_user()
    record, result = run("08_troubleshooting", {"user_email": user.email}, reports)
    assert record.status == "problem"
    figures = result["figures"]
    assert (figures["user_id"], figures["violations_now"] > 0) == (user.id, True)
    assert figures["needing_attention"] >= 1


# -- each writing notebook does its job, and only its job ----------------------------------------


def test_single_user_recovery_repairs_the_user_and_nothing_else(db: SeededDatabase, reports: Path) -> None:
    user = db.corrupted_user()
    engine = db.storage.engine
    assert stored_runs(engine, user.id) != runs_from_marks(engine, user.id)
    before = everything_but(engine, {user.id})
    record, result = run("01_single_user_recovery", {"user_id": user.id, "dry_run": False}, reports)
    assert record.status == "ok", result["verdict"]
    assert_repaired(db, {user.id}, before)
    figures = result["figures"]
    assert (figures["violations_after"], figures["rolled_back"]) == (0, False)
    assert [b.id for b in db.storage.get_backups(user.id)] == [figures["backup_id"]]


def _spread_runs_user(db: SeededDatabase) -> tuple[str, list[Span]]:
    """Return a clean user with at least four runs, and those runs."""
    engine = db.storage.engine
    for uid in db.seeded.user_ids:
        found = stored_runs(engine, uid)
        if uid not in db.seeded.corrupted and len(found) >= 4:
            return uid, found
    raise AssertionError("the seed holds no user with four runs")


def _stretch(engine: Engine, user_id: str, start: date) -> None:
    """Corrupt one stored run: its day_count no longer matches its dates."""
    with engine.begin() as conn:
        conn.execute(
            update(runs)
            .where(runs.c.user_id == user_id, runs.c.start_date == start)
            .values(day_count=runs.c.day_count + 1)
        )


def test_partial_rebuild_repairs_inside_the_range_and_leaves_outside_identical(
    db: SeededDatabase, reports: Path
) -> None:
    engine = db.storage.engine
    uid, spans = _spread_runs_user(db)
    # Only the range is corrupted: a rebuild commits nothing while any of the user's runs is wrong.
    inside = spans[2]
    _stretch(engine, uid, inside[0])
    lo, hi = inside[0], inside[1]
    with engine.connect() as conn:
        stored = conn.execute(select(runs).where(runs.c.user_id == uid)).all()
    untouched = sorted(
        (r.id, r.start_date, r.end_date, r.day_count)
        for r in stored
        if r.end_date < lo - timedelta(days=1) or r.start_date > hi + timedelta(days=1)
    )
    before = everything_but(engine, {uid})

    params = {"user_id": uid, "from_date": str(lo), "to_date": str(hi), "dry_run": False}
    record, result = run("02_partial_rebuild", params, reports)

    assert result["figures"]["runs_changed_outside_range"] == 0
    with engine.connect() as conn:
        after = conn.execute(select(runs).where(runs.c.user_id == uid)).all()
    window = (lo - timedelta(days=1), hi + timedelta(days=1))
    assert (
        sorted(
            (r.id, r.start_date, r.end_date, r.day_count)
            for r in after
            if r.end_date < window[0] or r.start_date > window[1]
        )
        == untouched
    )
    expected_inside = [x[:3] for x in runs_from_marks(engine, uid) if x[1] >= window[0] and x[0] <= window[1]]
    got_inside = sorted(
        (r.start_date, r.end_date, r.day_count)
        for r in after
        if r.end_date >= window[0] and r.start_date <= window[1]
    )
    assert got_inside == expected_inside
    assert untouched  # runs outside the range exist, and kept their ids
    assert stored_runs(engine, uid) == runs_from_marks(engine, uid)
    assert everything_but(engine, {uid}) == before
    assert record.status == "ok", result["verdict"]


def test_the_isolation_check_reports_a_run_changed_outside_the_range(db: SeededDatabase) -> None:
    from dataclasses import replace

    from potato_ops.runbook.params import Common, UserRef
    from potato_ops.runbook.partial_rebuild import verify_range_isolation
    from potato_ops.runbook.session import open_session
    from potato_ops.runbook.single_user_recovery import execute_rebuild, identify_user

    uid, spans = _spread_runs_user(db)
    lo, hi = spans[2][0], spans[2][1]
    session = open_session(Common("", "", "POTATO_DATABASE_URL"))
    snapshot = identify_user(session, UserRef(user_id=uid))
    step = execute_rebuild(session, snapshot, dry_run=True, keep_backup=False, from_date=lo, to_date=hi)
    assert verify_range_isolation(snapshot, step).changed == []
    first = step.after[0]
    moved = replace(first, end_date=first.end_date - timedelta(days=1), day_count=first.day_count - 1)
    tampered = replace(step, after=[moved, *step.after[1:]])
    assert [r.id for r in verify_range_isolation(snapshot, tampered).changed] == [first.id]


def test_bulk_recovery_repairs_the_users_asked_and_nothing_else(db: SeededDatabase, reports: Path) -> None:
    engine = db.storage.engine
    broken = sorted(broken_users(engine))
    assert len(broken) >= 3
    asked = {*broken[:2], db.clean_user().id}
    before = everything_but(engine, asked)
    record, result = run(
        "03_bulk_recovery",
        {"user_ids": ",".join(sorted(asked)), "dry_run": False, "batch_size": 2, "max_workers": 2},
        reports,
    )
    assert_repaired(db, asked, before)
    assert broken_users(engine) == set(broken) - asked
    figures = result["figures"]
    assert (figures["users_planned"], figures["completed_users"], figures["failed_users"]) == (3, 3, 0)
    # Nobody wrote marks meanwhile: the record says so (catch-up rebuilt nobody again).
    assert (figures["caught_up_users"], figures["changed_after_final_pass"]) == (0, 0)
    assert "0 caught up" in result["verdict"]
    assert len(result["operation_ids"]) == 2  # the dry run, then the real one
    notebook = record.notebook_path.read_text()
    assert "IProgress not found" not in notebook  # ipywidgets comes with the notebooks extra


def test_timezone_migration_moves_the_user_and_nothing_else(db: SeededDatabase, reports: Path) -> None:
    engine = db.storage.engine
    user = db.clean_user()
    target = "Pacific/Kiritimati" if user.timezone != "Pacific/Kiritimati" else "Pacific/Pago_Pago"
    before = everything_but(engine, {user.id}, moved={user.id})
    record, result = run(
        "04_timezone_migration", {"user_email": user.email, "new_timezone": target, "dry_run": False}, reports
    )
    assert record.status == "ok", result["verdict"]
    with engine.connect() as conn:
        assert conn.execute(select(users.c.timezone).where(users.c.id == user.id)).scalar_one() == target
    assert_repaired(db, {user.id}, before, moved={user.id})
    assert db.storage.get_users_with_timezone_changes() == []


def test_error_recovery_dry_run_writes_nothing_then_repairs_every_broken_user(
    db: SeededDatabase, reports: Path
) -> None:
    engine = db.storage.engine
    broken = broken_users(engine)
    assert broken
    with engine.connect() as conn:
        known = set(conn.execute(select(users.c.id)).scalars())
        orphans = {u for u in conn.execute(select(runs.c.user_id)).scalars() if u not in known}
    assert orphans
    before = everything_but(engine, broken | orphans)
    untouched = everything_but(engine, set())

    record, result = run("05_error_recovery", {}, reports)
    assert (record.status, result["figures"]["dry_run"]) == ("problem", True)
    assert everything_but(engine, set()) == untouched  # the dry run wrote nothing

    record, result = run("05_error_recovery", {"dry_run": False, "scenario": "all"}, reports)
    assert record.status == "ok", result["verdict"]
    assert_repaired(db, broken, before)
    with engine.connect() as conn:
        assert not [u for u in conn.execute(select(runs.c.user_id)).scalars() if u not in known]
    assert broken_users(engine) == set()


def test_restore_from_backup_puts_the_backups_rows_back_and_nothing_else(
    db: SeededDatabase, reports: Path
) -> None:
    engine = db.storage.engine
    user = db.clean_user()
    backup = db.storage.backup_user_runs(user.id)
    with engine.begin() as conn:
        conn.execute(delete(runs).where(runs.c.user_id == user.id))
    before = everything_but(engine, {user.id})
    record, result = run("06_restore_from_backup", {"user_id": user.id, "dry_run": False}, reports)
    assert record.status == "ok", result["verdict"]
    figures = result["figures"]
    assert (figures["backup_id"], figures["runs_restored"], figures["runs_before"]) == (
        backup.id,
        backup.metadata.total_runs,
        0,
    )
    assert backup.id is not None
    assert stored_runs(engine, user.id) == backup_rows(engine, backup.id)
    assert_repaired(db, {user.id}, before)  # the backup was of correct runs


def backup_rows(engine: Engine, backup_id: int) -> list[Span]:
    """Return the runs a backup holds, read from its stored payload."""
    with engine.connect() as conn:
        payload = conn.execute(
            select(ops_backups.c.payload).where(ops_backups.c.id == backup_id)
        ).scalar_one()
    return sorted(
        (date.fromisoformat(r["start_date"]), date.fromisoformat(r["end_date"]), r["day_count"], r["active"])
        for r in json.loads(payload)
    )


# -- 07 honours its window, and a red verdict fails every way of running it ---------------------

IN_WINDOW = [("a", 120.0, True, 0), ("b", 480.0, False, 2), ("a", 60.0, True, 0)]
OUT_OF_WINDOW = [("c", 9000.0, False, 5), ("d", 3000.0, True, 0)]


def _add_history(engine: Engine, rows: list[tuple[str, float, bool, int]], hours_ago: float) -> None:
    finished = datetime.now(UTC) - timedelta(hours=hours_ago)
    with engine.begin() as conn:
        for uid, ms, ok, violations in rows:
            conn.execute(
                insert(ops_rebuild_history).values(
                    operation_id="seeded",
                    user_id=uid,
                    kind="rebuild",
                    started_at=finished - timedelta(milliseconds=ms),
                    finished_at=finished,
                    duration_ms=ms,
                    success=ok,
                    violations=violations,
                )
            )


def test_monitoring_audit_counts_only_the_window_and_fails_red(db: SeededDatabase, reports: Path) -> None:
    engine = db.storage.engine
    _add_history(engine, IN_WINDOW, hours_ago=1)
    _add_history(engine, OUT_OF_WINDOW, hours_ago=30)
    report = db.storage.validate_invariants()
    record, result = run("07_monitoring_audit", {"since": "24h", "slow_threshold_ms": 100}, reports)

    assert (record.status, record.exit_code) == ("problem", ExitCode.PROBLEM_FOUND)
    figures = result["figures"]
    durations = [ms for _, ms, _, _ in IN_WINDOW]
    assert figures["rebuild_count"] == len(IN_WINDOW)
    assert figures["rebuild_success_rate"] == pytest.approx(
        sum(ok for _, _, ok, _ in IN_WINDOW) / len(IN_WINDOW)
    )
    assert figures["rebuild_avg_duration_ms"] == pytest.approx(sum(durations) / len(durations))
    assert figures["rebuild_max_duration_ms"] == max(durations)
    assert figures["users_processed"] == len({u for u, _, _, _ in IN_WINDOW})
    assert figures["slow_users"] == len({u for u, ms, _, _ in IN_WINDOW if ms > 100})
    assert figures["rebuild_invariant_violations"] == sum(v for _, _, _, v in IN_WINDOW)
    assert figures["invariant_violations"] == report.total
    assert sum(figures["violations_by_kind"].values()) == report.total
    executed = record.notebook_path.read_text()
    assert "ProblemFound: audit:" in executed


def _with_database(url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["POTATO_DATABASE_URL"] = url
    return env


@pytest.mark.parametrize("tool", ["papermill", "nbconvert"])
def test_a_red_verdict_fails_plain_papermill_and_nbconvert(
    db: SeededDatabase, tmp_path: Path, tool: str
) -> None:
    source = NOTEBOOKS / "07_monitoring_audit.ipynb"
    out = tmp_path / "out.ipynb"
    command = {
        "papermill": [sys.executable, "-m", "papermill", str(source), str(out)],
        "nbconvert": [
            *(sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute"),
            *(str(source), "--output", str(out)),
        ],
    }[tool]
    done = subprocess.run(command, cwd=tmp_path, env=_with_database(db.url), capture_output=True, text=True)
    assert done.returncode != 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "ProblemFound" in done.stderr + done.stdout
    if out.exists():  # papermill keeps the executed notebook: the record is in it
        assert RESULT_MIMETYPE in out.read_text()


# -- one dry-run verdict across the writing notebooks: words, colour, exit code --------------------


@pytest.mark.parametrize(
    ("name", "given"),
    [
        ("01_single_user_recovery", "damaged user"),
        ("03_bulk_recovery", ""),
        ("05_error_recovery", ""),
        ("06_restore_from_backup", "damaged user"),
    ],
)
def test_a_dry_run_that_would_change_users_ends_red_with_exit_3(
    db: SeededDatabase, reports: Path, name: str, given: str
) -> None:
    user = db.corrupted_user()
    parameters: dict[str, object] = {"user_id": user.id} if given else {}
    if name == "06_restore_from_backup":
        db.storage.backup_user_runs(user.id)
        with db.storage.engine.begin() as conn:  # the runs the backup holds are lost since
            conn.execute(delete(runs).where(runs.c.user_id == user.id))
    record, result = run(name, parameters, reports)
    assert (record.status, record.exit_code) == ("problem", ExitCode.PROBLEM_FOUND), result["verdict"]
    expected = result["figures"]["dry_run_would_change_users"]
    if given or name == "03_bulk_recovery":  # 05 also counts slow users and orphan owners
        assert expected == (1 if given else len(broken_users(db.storage.engine)))
    plural = "" if expected == 1 else "s"
    assert expected > 0
    assert result["verdict"].startswith(f"dry run: would change {expected} user{plural} (")
    assert result["verdict"].endswith(f"to apply: dry_run=False, confirm={Path(db.url).name!r}")


def test_a_dry_run_that_would_change_nothing_is_green_with_exit_0(db: SeededDatabase, reports: Path) -> None:
    user = db.clean_user()
    record, result = run("01_single_user_recovery", {"user_id": user.id}, reports)
    assert (record.status, record.exit_code) == ("ok", ExitCode.OK)
    assert result["verdict"].startswith("dry run: would change 0 users (")
