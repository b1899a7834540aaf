"""``potato-ops restore`` puts back exactly the rows a backup holds, for that user only."""

from __future__ import annotations

import json
from datetime import date

from sqlalchemy import Engine, delete, insert, select
from typer.testing import CliRunner

from potato_ops import Storage
from potato_ops.cli import app
from potato_ops.db.schema import ops_backups, runs
from tests.conftest import add_runs, add_user

Row = tuple[date, date, int, bool]


def _stored(engine: Engine, user_id: str) -> list[Row]:
    with engine.connect() as conn:
        found = conn.execute(
            select(runs.c.start_date, runs.c.end_date, runs.c.day_count, runs.c.active)
            .where(runs.c.user_id == user_id)
            .order_by(runs.c.start_date)
        ).all()
    return [(r[0], r[1], r[2], bool(r[3])) for r in found]


def _backup_rows(engine: Engine, backup_id: int) -> list[Row]:
    with engine.connect() as conn:
        payload = conn.execute(
            select(ops_backups.c.payload).where(ops_backups.c.id == backup_id)
        ).scalar_one()
    return sorted(
        (date.fromisoformat(r["start_date"]), date.fromisoformat(r["end_date"]), r["day_count"], r["active"])
        for r in json.loads(payload)
    )


def test_restore_leaves_the_users_runs_equal_to_the_backups_rows(storage: Storage, db_url: str) -> None:
    marks = ["2024-01-01", "2024-01-02", "2024-01-05", "2024-01-06", "2024-01-07"]
    add_user(storage, "u1", list(marks))
    add_runs(storage, "u1", [("2024-01-01", "2024-01-02"), ("2024-01-05", "2024-01-07")])
    add_user(storage, "u2", ["2024-02-01"])
    add_runs(storage, "u2", [("2024-02-01", "2024-02-01")])
    backup = storage.backup_user_runs("u1")
    assert backup.id is not None
    expected = _backup_rows(storage.engine, backup.id)
    assert len(expected) == 2
    with storage.engine.begin() as conn:  # what a bad rebuild might leave behind
        conn.execute(delete(runs).where(runs.c.user_id == "u1"))
        conn.execute(
            insert(runs).values(
                user_id="u1",
                start_date=date(2024, 1, 1),
                end_date=date(2024, 1, 7),
                day_count=7,
                active=False,
            )
        )
    other = _stored(storage.engine, "u2")

    result = CliRunner().invoke(
        app,
        ["restore", "--user-id", "u1", "--backup-id", str(backup.id)],
        env={"POTATO_DATABASE_URL": db_url},
    )

    assert result.exit_code == 0, result.output
    assert _stored(storage.engine, "u1") == expected
    assert _stored(storage.engine, "u2") == other
