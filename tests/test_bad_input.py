"""Bad input raises its typed error before anything is written: the database is as before.

Each table below is one fresh database; every case in it is run against the same seeded data,
and after each case every table must hold exactly the rows it held before.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text, update

from potato_ops import Backup, BackupError, BulkConfig, ConfigError, Run, SchemaError, Storage
from potato_ops.db.backups import make_backup
from potato_ops.db.schema import ops_backups
from potato_ops.ops.bulk.api import bulk_rebuild_users
from tests.conftest import (
    NOW,
    MutableClock,
    add_runs,
    add_user,
    drop_pg_database,
    fresh_pg_database,
    snapshot,
)

D = date.fromisoformat
Call = Callable[[Storage, dict[str, Backup]], Any]


@pytest.fixture
def backups(storage: Storage) -> dict[str, Backup]:
    """Two users with marks, correct runs and one backup each."""
    add_user(storage, "u", ["2024-03-01", "2024-03-02", "2024-03-09", "2024-03-10"])
    add_runs(storage, "u", [("2024-03-01", "2024-03-02"), ("2024-03-09", "2024-03-10")], active=1)
    add_user(storage, "other", ["2024-02-01", "2024-02-02", "2024-02-03"])
    add_runs(storage, "other", [("2024-02-01", "2024-02-03")])
    return {"u": storage.backup_user_runs("u"), "other": storage.backup_user_runs("other")}


def outcomes(storage: Storage, saved: dict[str, Backup], cases: dict[str, Call]) -> dict[str, str]:
    """Run each case; return the error class each raised, asserting nothing was written."""
    found: dict[str, str] = {}
    for name, call in cases.items():
        before = snapshot(storage)
        try:
            call(storage, saved)
        except Exception as exc:
            found[name] = type(exc).__name__
        else:
            found[name] = "no error"
        assert snapshot(storage) == before, f"{name} wrote to the database"
    return found


def test_unknown_user_or_email(storage: Storage, backups: dict[str, Backup]) -> None:
    cases: dict[str, Call] = {
        "get_user": lambda s, b: s.get_user("ghost"),
        "get_user-empty-id": lambda s, b: s.get_user(""),
        "get_user_by_email": lambda s, b: s.get_user_by_email("ghost@example.com"),
        "get_user_by_email-of-id": lambda s, b: s.get_user_by_email("u"),
        "rebuild": lambda s, b: s.rebuild_user_runs("ghost"),
        "rebuild-partial": lambda s, b: s.rebuild_user_runs("ghost", "2024-03-01", "2024-03-02"),
        "rebuild-dry-run": lambda s, b: s.rebuild_user_runs("ghost", dry_run=True),
        "rebuild-id-case": lambda s, b: s.rebuild_user_runs("U"),
        "backup": lambda s, b: s.backup_user_runs("ghost"),
        "restore": lambda s, b: s.restore_user_runs("ghost", b["u"]),
        "active-run": lambda s, b: s.get_active_run("ghost"),
        "validate-results": lambda s, b: s.validate_rebuild_results("ghost", [], []),
        "update_user": lambda s, b: s.update_user("ghost", timezone="UTC"),
    }
    assert outcomes(storage, backups, cases) == dict.fromkeys(cases, "UserNotFoundError")


def test_email_lookup_is_case_insensitive(storage: Storage, backups: dict[str, Backup]) -> None:
    assert storage.get_user_by_email("  U@Example.COM ").id == "u"


def test_bad_dates(storage: Storage, backups: dict[str, Backup]) -> None:
    cases: dict[str, Call] = {
        "from-after-to": lambda s, b: s.rebuild_user_runs("u", "2024-03-05", "2024-03-04"),
        "from-after-to-dates": lambda s, b: s.rebuild_user_runs("u", D("2024-03-05"), D("2024-03-04")),
        "from-after-to-dry-run": lambda s, b: s.rebuild_user_runs(
            "u", "2024-03-05", "2024-03-04", dry_run=True
        ),
        "month-13": lambda s, b: s.rebuild_user_runs("u", "2024-13-01", "2024-12-31"),
        "feb-30": lambda s, b: s.rebuild_user_runs("u", "2024-02-01", "2024-02-30"),
        "non-leap-feb-29": lambda s, b: s.rebuild_user_runs("u", "2023-02-29"),
        "us-format": lambda s, b: s.rebuild_user_runs("u", None, "03/10/2024"),
        "empty-string": lambda s, b: s.rebuild_user_runs("u", ""),
        "word": lambda s, b: s.rebuild_user_runs("u", "yesterday"),
        "integer": lambda s, b: s.rebuild_user_runs("u", 20240310),  # type: ignore[arg-type]
        "bad-date-unknown-user": lambda s, b: s.rebuild_user_runs("ghost", "2024-02-30"),
        "timezone-changes-since": lambda s, b: s.get_users_with_timezone_changes(since="last week"),
    }
    assert outcomes(storage, backups, cases) == dict.fromkeys(cases, "InvalidDateRangeError")


def test_unknown_timezones(storage: Storage, backups: dict[str, Backup]) -> None:
    cases: dict[str, Call] = {
        "made-up": lambda s, b: s.update_user("u", timezone="Mars/Olympus"),
        "typo": lambda s, b: s.update_user("u", timezone="Europe/Londn"),
        "empty": lambda s, b: s.update_user("u", timezone=""),
        "offset": lambda s, b: s.update_user("u", timezone="+05:00"),
        "path": lambda s, b: s.update_user("u", timezone="../../etc/passwd"),
        "unknown-user-too": lambda s, b: s.update_user("ghost", timezone="Mars/Olympus"),
    }
    assert outcomes(storage, backups, cases) == dict.fromkeys(cases, "InvalidTimezoneError")
    assert storage.get_user("u").timezone == "UTC"


def _shift(run: Run, days: int) -> Run:
    return replace(run, end_date=run.end_date + timedelta(days=days), day_count=run.day_count + days)


def test_foreign_and_tampered_backups(storage: Storage, backups: dict[str, Backup]) -> None:
    u, other = backups["u"], backups["other"]
    cases: dict[str, Call] = {
        "another-users-backup": lambda s, b: s.restore_user_runs("u", other),
        "another-users-backup-by-id": lambda s, b: s.restore_user_runs("u", other.id or 0),
        "relabelled-backup": lambda s, b: s.restore_user_runs("u", replace(other, user_id="u")),
        "relabelled-with-its-runs": lambda s, b: s.restore_user_runs(
            "u",
            replace(other, user_id="u", runs=[replace(r, user_id="u") for r in other.runs]),
        ),
        "edited-run-dates": lambda s, b: s.restore_user_runs(
            "u", replace(u, runs=[_shift(u.runs[0], 1), *u.runs[1:]])
        ),
        "dropped-run": lambda s, b: s.restore_user_runs("u", replace(u, runs=u.runs[1:])),
        "added-run": lambda s, b: s.restore_user_runs(
            "u",
            replace(
                u,
                runs=[
                    *u.runs,
                    replace(
                        u.runs[0], id=None, start_date=D("2024-01-01"), end_date=D("2024-01-01"), day_count=1
                    ),
                ],
            ),
        ),
        "edited-total-runs": lambda s, b: s.restore_user_runs(
            "u", replace(u, metadata=replace(u.metadata, total_runs=3))
        ),
        "edited-checksum": lambda s, b: s.restore_user_runs(
            "u", replace(u, metadata=replace(u.metadata, checksum="0" * 64))
        ),
        "unknown-backup-id": lambda s, b: s.restore_user_runs("u", 10**9),
        "get-unknown-backup": lambda s, b: s.get_backup(10**9),
        # Checksummed, but not storable: a run that ends before it starts.
        "unstorable-runs": lambda s, b: s.restore_user_runs(
            "u", make_backup("u", [Run(None, "u", D("2024-03-05"), D("2024-03-01"), 1, False)], NOW)
        ),
        "negative-keep-latest": lambda s, b: s.prune_backups(timedelta(days=1), keep_latest=-1),
    }
    assert outcomes(storage, backups, cases) == dict.fromkeys(cases, "BackupError")
    assert storage.get_user_runs("u") == u.runs


def _edit_backup_row(storage: Storage, backup_id: int, **values: Any) -> None:
    with storage.engine.begin() as conn:
        conn.execute(update(ops_backups).where(ops_backups.c.id == backup_id).values(**values))


def _payload(storage: Storage, backup_id: int) -> list[dict[str, Any]]:
    with storage.engine.connect() as conn:
        raw = conn.execute(select(ops_backups.c.payload).where(ops_backups.c.id == backup_id)).scalar_one()
    found: list[dict[str, Any]] = json.loads(raw)
    return found


@pytest.mark.parametrize(
    "edit",
    ["run-end-date", "run-removed", "run-id", "row-moved-to-another-user", "run-count-column"],
)
def test_backup_edited_in_the_table_is_refused(
    storage: Storage, backups: dict[str, Backup], clock: MutableClock, edit: str
) -> None:
    target = backups["other"] if edit == "row-moved-to-another-user" else backups["u"]
    backup_id = target.id or 0
    payload = _payload(storage, backup_id)
    if edit == "run-end-date":
        payload[0]["end_date"] = "2024-03-03"
        _edit_backup_row(storage, backup_id, payload=json.dumps(payload))
    elif edit == "run-removed":
        _edit_backup_row(storage, backup_id, payload=json.dumps(payload[1:]))
    elif edit == "run-id":
        payload[0]["id"] = 999
        _edit_backup_row(storage, backup_id, payload=json.dumps(payload))
    elif edit == "row-moved-to-another-user":
        _edit_backup_row(storage, backup_id, user_id="u")
    else:
        _edit_backup_row(storage, backup_id, run_count=7)
    storage.rebuild_user_runs("u", backup=False)  # something to restore over
    clock.advance(hours=1)
    before = snapshot(storage)
    with pytest.raises(BackupError):
        storage.restore_user_runs("u", backup_id)
    with pytest.raises(BackupError):
        storage.restore_user_runs("u", storage.get_backup(backup_id))
    assert snapshot(storage) == before


# ---------------------------------------------------------------------------- no schema


@pytest.fixture
def empty_database(backend: str, tmp_path: Path) -> Iterator[tuple[str, Callable[[], object]]]:
    """Yield the URL of a database without any table, and a function giving its whole state."""
    if backend == "sqlite":
        path = tmp_path / "empty.sqlite3"
        raw = sqlite3.connect(path)
        raw.execute("PRAGMA journal_mode = WAL")  # as every database the package has opened
        raw.close()
        yield f"sqlite:///{path}", path.read_bytes
        return
    url, admin = fresh_pg_database()
    probe: Engine = create_engine(url)

    def state() -> object:
        with probe.connect() as conn:
            return conn.execute(
                text(
                    "SELECT n.nspname, c.relname, c.relkind FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
                    "AND n.nspname NOT LIKE 'pg_toast%' "
                    "UNION ALL SELECT 'extension', extname, 'x' FROM pg_extension ORDER BY 1, 2"
                )
            ).all()

    try:
        yield url, state
    finally:
        probe.dispose()
        drop_pg_database(url, admin)


NEEDS_TABLES: dict[str, Callable[[Storage], Any]] = {
    "get_user": lambda s: s.get_user("u"),
    "get_user_by_email": lambda s: s.get_user_by_email("u@example.com"),
    "get_all_users": lambda s: s.get_all_users(),
    "get_user_runs": lambda s: s.get_user_runs("u"),
    "get_user_day_marks": lambda s: s.get_user_day_marks("u"),
    "get_active_run": lambda s: s.get_active_run("u"),
    "get_feature_flag": lambda s: s.get_feature_flag("ff.potato.runs_v2"),
    "set_feature_flag": lambda s: s.set_feature_flag("ff.potato.runs_v2", True),
    "rebuild_user_runs": lambda s: s.rebuild_user_runs("u"),
    "rebuild_user_runs-dry-run": lambda s: s.rebuild_user_runs("u", dry_run=True),
    "validate_rebuild_results": lambda s: s.validate_rebuild_results("u", [], []),
    "backup_user_runs": lambda s: s.backup_user_runs("u"),
    "get_backups": lambda s: s.get_backups("u"),
    "get_backup": lambda s: s.get_backup(1),
    "restore_user_runs": lambda s: s.restore_user_runs("u", make_backup("u", [], NOW)),
    "restore_user_runs-by-id": lambda s: s.restore_user_runs("u", 1),
    "prune_backups": lambda s: s.prune_backups(timedelta(days=1)),
    "update_user": lambda s: s.update_user("u", timezone="UTC"),
    "get_users_with_timezone_changes": lambda s: s.get_users_with_timezone_changes(),
    "validate_invariants": lambda s: s.validate_invariants(),
    "get_users_with_overlapping_runs": lambda s: s.get_users_with_overlapping_runs(),
    "get_users_with_multiple_active_runs": lambda s: s.get_users_with_multiple_active_runs(),
    "detect_data_corruption": lambda s: s.detect_data_corruption(),
    "get_users_with_slow_rebuild_history": lambda s: s.get_users_with_slow_rebuild_history(),
    "refresh_active_runs": lambda s: s.refresh_active_runs(),
    "check_schema": lambda s: s.check_schema(),
}


def test_every_method_needing_tables_raises_schema_error_on_an_empty_database(
    empty_database: tuple[str, Callable[[], object]], clock: MutableClock
) -> None:
    url, state = empty_database
    before = state()
    storage = Storage.connect(url, clock=clock)
    try:
        found: dict[str, str] = {}
        for name, call in NEEDS_TABLES.items():
            try:
                call(storage)
            except Exception as exc:
                found[name] = type(exc).__name__
            else:
                found[name] = "no error"
        assert found == dict.fromkeys(NEEDS_TABLES, "SchemaError")
        assert storage.describe()["dialect"] in ("sqlite", "postgresql")  # needs no table
    finally:
        storage.close()
    assert state() == before


def test_schema_error_names_what_is_missing(
    empty_database: tuple[str, Callable[[], object]], clock: MutableClock
) -> None:
    url, _state = empty_database
    storage = Storage.connect(url, clock=clock)
    try:
        with pytest.raises(SchemaError) as raised:
            storage.get_user_runs("u")
        assert {"users", "day_marks", "runs", "ops_backups"} <= set(raised.value.missing)
        storage.create_schema()  # then the same storage works
        assert storage.get_user_runs("u") == []
    finally:
        storage.close()


@pytest.mark.parametrize(
    "options",
    [
        {"batch_size": True},
        {"max_workers": True},
        {"max_failure_rate": True},
        {"max_failure_rate": float("nan")},
    ],
    ids=["batch-size-true", "workers-true", "rate-true", "rate-nan"],
)
def test_bulk_config_refuses_booleans_for_numbers(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        BulkConfig(**options)


@pytest.mark.parametrize(
    "ids", [[None], [""], ["u", 3], ["u", "  "]], ids=["none", "empty", "number", "blank"]
)
def test_bulk_rebuild_refuses_ids_that_are_not_names(
    storage: Storage, backups: dict[str, Backup], ids: list[Any]
) -> None:
    before = snapshot(storage)

    with pytest.raises(ConfigError, match="user_ids must be non-empty strings"):
        bulk_rebuild_users(storage.database, ids, BulkConfig(dry_run=False, ignore_feature_flag=True))

    assert snapshot(storage) == before
