"""The notebook-facing layer without a kernel: parameter checks, sessions, steps and charts."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from potato_ops import Storage
from potato_ops.charts.calendar import run_calendar
from potato_ops.charts.runs import bucket_lengths, timezone_chart
from potato_ops.domain.models import Run
from potato_ops.errors import SchemaError
from potato_ops.runbook.error_recovery import detect, dry_run_repairs, recovery_verdict, repair, verify
from potato_ops.runbook.params import (
    Common,
    RunbookParameterError,
    UserRef,
    check_bulk_recovery,
    check_error_recovery,
    check_partial_rebuild,
    check_timezone_migration,
)
from potato_ops.runbook.partial_rebuild import verify_range_isolation
from potato_ops.runbook.session import Session, open_session, safety_checklist
from potato_ops.runbook.single_user_recovery import execute_rebuild, identify_user
from tests.conftest import add_runs, add_user

SECRET = "hunter2-secret"
COMMON = {"operator": "ana", "ticket": "INC-7", "database_url_env": "POTATO_DATABASE_URL"}
SINGLE = {"user_email": "", "user_id": "", "dry_run": True, "keep_backup": True, "calendar_days": 120}


def _single(**changes: object) -> dict[str, object]:
    return {**SINGLE, "from_date": "", "to_date": "", **COMMON, **changes}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"user_email": "a@x.org", "user_id": "u1"}, "not both"),
        ({"user_email": "not-an-email"}, "user_email"),
        ({"dry_run": "maybe"}, "True or False"),
        ({"calendar_days": 3}, "between 7 and 36600"),
        ({"from_date": "2024-05-01", "to_date": "2024-04-01"}, "after to_date"),
        ({"from_date": "yesterday"}, "YYYY-MM-DD"),
        ({"database_url_env": "NOT SET"}, "environment variable name"),
        ({"database_url_env": "POTATO_OPS_TEST_UNSET_VARIABLE"}, "is not set"),
    ],
    ids=[
        "both-user-refs",
        "bad-email",
        "bad-bool",
        "too-few-days",
        "range-reversed",
        "bad-date",
        "bad-name",
        "unset",
    ],
)
def test_single_user_parameters_refused_with_a_clear_message(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(RunbookParameterError, match=message):
        check_partial_rebuild(**_single(**changes))


def test_a_url_given_as_the_variable_name_is_refused_without_showing_it() -> None:
    with pytest.raises(RunbookParameterError) as caught:
        check_partial_rebuild(**_single(database_url_env=f"postgresql://ops:{SECRET}@db/potato"))
    assert SECRET not in str(caught.value)
    assert "NAME of an environment variable" in str(caught.value)
    shown = caught.value._render_traceback_()
    assert shown[0].startswith("RunbookParameterError: ") and len(shown) == 2


def test_parameters_given_as_text_are_read_as_their_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPS_DB", "sqlite:///x.sqlite3")
    params = check_partial_rebuild(
        **_single(
            user_id=" u1 ",
            dry_run="false",
            calendar_days="30",
            database_url_env="OPS_DB",
            to_date="2024-03-01",
        )
    )
    assert (params.user, params.dry_run, params.calendar_days) == (UserRef("", "u1"), False, 30)
    assert (params.from_date, params.to_date, params.common.database_url_env) == (
        None,
        date(2024, 3, 1),
        "OPS_DB",
    )
    bulk = check_bulk_recovery(
        user_ids="a, b,,a",
        batch_size="5",
        max_workers=2,
        dry_run=True,
        from_date="",
        to_date="",
        skip_backup="no",
        max_failure_rate="0.5",
        ignore_feature_flag=False,
        max_replica_lag="16MB",
        max_active_sessions="0",
        nice_ratio="1.5",
        batch_seconds=0.0,
        min_batch_size=1,
        max_batch_size=0,
        window="01:00-05:00",
        window_timezone="Europe/Berlin",
        operation_id="",
        pause="no",
        **COMMON,
    )
    assert (bulk.user_ids, bulk.config.batch_size, bulk.skip_backup, bulk.config.max_failure_rate) == (
        ("a", "b"),
        5,
        False,
        0.5,
    )
    # An empty text or a 0 leaves a throttle setting unset.
    c = bulk.config
    assert (c.max_replica_lag, c.max_active_sessions, c.nice_ratio, c.batch_seconds, c.max_batch_size) == (
        16 * 1024**2,
        None,
        1.5,
        None,
        None,
    )
    assert (c.window, c.window_timezone, bulk.operation_id, bulk.pause) == (
        "01:00-05:00",
        "Europe/Berlin",
        "",
        False,
    )


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("all", ("invariant_violations", "performance_degradation", "data_corruption")),
        ("Data_Corruption", ("data_corruption",)),
    ],
)
def test_error_recovery_scenarios(scenario: str, expected: tuple[str, ...]) -> None:
    checked = check_error_recovery(
        scenario=scenario,
        dry_run=True,
        slow_threshold_ms=1000,
        recent_days=90,
        still_slow_ms=5000.0,
        **COMMON,
    )
    assert checked.scenarios == expected
    with pytest.raises(RunbookParameterError, match="one of invariant_violations"):
        check_error_recovery(
            scenario="everything", dry_run=True, slow_threshold_ms=1, recent_days=1, still_slow_ms=1, **COMMON
        )


def test_a_new_timezone_needs_a_valid_name_and_a_user() -> None:
    base = {"user_email": "", "user_id": "", "since": "", "dry_run": True, **COMMON}
    with pytest.raises(RunbookParameterError, match="IANA"):
        check_timezone_migration(**{**base, "user_id": "u1", "new_timezone": "Mars/Olympus"})
    with pytest.raises(RunbookParameterError, match="needs the user"):
        check_timezone_migration(**{**base, "new_timezone": "Asia/Tokyo"})


def test_the_embedded_database_gets_its_tables_any_other_must_have_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = open_session(Common("", "", "POTATO_DATABASE_URL"))
    assert (first.embedded, first.schema_created, first.database["dialect"]) == (True, True, "sqlite")
    assert str(tmp_path / "home") in first.database["url"]
    assert open_session(Common("", "", "POTATO_DATABASE_URL")).schema_created is False
    monkeypatch.setenv("OTHER_DB", f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    with pytest.raises(SchemaError, match="init-db"):
        open_session(Common("", "", "OTHER_DB"))


def _session(storage: Storage, *, flag: bool = True) -> Session:
    return Session(
        storage, Common("ana", "INC-7", "POTATO_DATABASE_URL"), storage.describe(), False, False, flag
    )


def test_checklist_warns_of_what_a_live_bulk_run_risks(storage: Storage) -> None:
    lines = str(
        safety_checklist(_session(storage, flag=False), "bulk", dry_run=False, backups="skipped", bulk=True)
    )
    assert "LIVE: changes will be committed" in lines
    assert "✘ Database backup completed: skip_backup=True: NO backups are kept" in lines
    assert "ignore_feature_flag=True" in lines
    assert "Maintenance window" in lines
    quiet = str(safety_checklist(_session(storage), "audit", dry_run=None))
    assert "read-only" in quiet and "✘" not in quiet and "⚠" not in quiet


def test_user_steps_on_a_missing_user_are_skipped_with_the_reason(storage: Storage) -> None:
    session = _session(storage)
    snapshot = identify_user(session, UserRef("ghost@example.com", ""))
    assert snapshot.user is None and "ghost@example.com" in snapshot.problem
    step = execute_rebuild(session, snapshot, dry_run=True)
    assert step.result is None and "ghost@example.com" in str(step)


def test_a_dry_run_projects_the_runs_a_rebuild_gives_and_checks_range_isolation(storage: Storage) -> None:
    add_user(
        storage, "u1", ["2024-01-01", "2024-01-02", "2024-01-03", "2024-02-10", "2024-02-11", "2024-03-09"]
    )
    add_runs(storage, "u1", [("2024-01-01", "2024-01-02"), ("2024-02-10", "2024-02-12")])
    session = _session(storage)
    snapshot = identify_user(session, UserRef("", "u1"))
    assert {v.kind for v in snapshot.violations} >= {"phantom_day", "uncovered_day"}
    step = execute_rebuild(session, snapshot, dry_run=True, from_date="2024-02-01", to_date="2024-03-10")
    assert [(str(r.start_date), str(r.end_date), r.active) for r in step.after] == [
        ("2024-01-01", "2024-01-02", False),
        ("2024-02-10", "2024-02-11", False),
        ("2024-03-09", "2024-03-09", True),
    ]
    isolation = verify_range_isolation(snapshot, step)
    assert (isolation.outside, isolation.changed, isolation.ok) == (1, [], True)
    assert storage.get_user_runs("u1") == snapshot.runs  # a dry run writes nothing


def test_error_recovery_repairs_users_and_removes_orphan_runs(storage: Storage) -> None:
    add_user(storage, "u1", ["2024-03-01", "2024-03-02", "2024-03-03"])
    add_runs(storage, "u1", [("2024-03-01", "2024-03-01"), ("2024-03-02", "2024-03-03")])  # adjacent
    add_user(storage, "u2", ["2024-02-01"])
    add_runs(storage, "u2", [("2024-02-01", "2024-02-01")])
    add_runs(storage, "ghost", [("2024-01-05", "2024-01-06")])
    untouched = storage.get_user_runs("u2")
    session = _session(storage)
    params = check_error_recovery(
        scenario="all", dry_run=False, slow_threshold_ms=1000, recent_days=30, still_slow_ms=5000, **COMMON
    )
    detection = detect(session, params)
    assert (detection.corrupted, detection.orphan_owners) == (["u1"], ["ghost"])
    dry = dry_run_repairs(session, detection, params)
    assert sorted((r.user_id, r.outcome) for r in dry.rows) == [
        ("ghost", "would remove"),
        ("u1", "would repair"),
    ]
    assert not storage.validate_invariants().ok
    done = repair(session, detection, params)
    assert sorted((r.user_id, r.outcome) for r in done.rows) == [("ghost", "removed"), ("u1", "repaired")]
    after = verify(session, detection, done)
    assert after.report.ok
    verdict = recovery_verdict(params, detection, dry, done, after)
    assert verdict.status == "ok" and verdict.figures["violations_after"] == 0
    assert [b.metadata.reason for b in storage.get_backups("ghost")] == ["orphan"]
    assert storage.get_user_runs("u2") == untouched  # a correct user keeps its runs, ids and all


def test_charts_have_fixed_sizes_and_say_when_there_is_no_data() -> None:
    run = Run(1, "u1", date(2024, 3, 1), date(2024, 3, 5), 5, True)
    calendar = run_calendar(
        [date(2024, 3, d) for d in range(1, 6)], [run], [], end=date(2024, 3, 10), days=30
    )
    assert isinstance(calendar, Figure)
    assert tuple(calendar.get_size_inches()) == (12.0, 4.2)
    assert "2024-02-10 .. 2024-03-10" in calendar.axes[0].get_title()
    assert str(timezone_chart({})) == "No affected users: no timezones to chart."
    assert bucket_lengths({1: 2, 6: 1, 365: 4})["181+"] == 4
