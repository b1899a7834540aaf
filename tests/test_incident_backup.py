"""Backups answer "what was there before this incident".

A live rebuild run twice for one ticket keeps one backup (the second changes nothing), and
06 with its defaults restores the backup taken before the ticket's first change, not the
newest, saying which it chose; without a ticket, the oldest since the incident's start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, insert, select

from potato_ops.db.schema import day_marks, ops_backups, runs
from tests.kernel_session import database_name, live_notebook, notebook_copy
from tests.test_notebooks import SeededDatabase, run, seed_database

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

Span = tuple[date, date, int, bool]


@pytest.fixture
def seeded(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[SeededDatabase]:
    found = seed_database(db_url)
    monkeypatch.setenv("POTATO_DATABASE_URL", db_url)
    yield found
    found.storage.close()


def spans(engine: Engine, user_id: str) -> list[Span]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(runs.c.start_date, runs.c.end_date, runs.c.day_count, runs.c.active)
            .where(runs.c.user_id == user_id)
            .order_by(runs.c.start_date)
        ).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def backup_ids(engine: Engine, user_id: str) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(ops_backups.c.id).where(ops_backups.c.user_id == user_id).order_by(ops_backups.c.id)
            ).scalars()
        )


def add_mark_after_runs(engine: Engine, user_id: str) -> None:
    """Mark a lone day long after the user's last mark: the next rebuild changes the runs."""
    with engine.begin() as conn:
        last = conn.execute(
            select(func.max(day_marks.c.date)).where(day_marks.c.user_id == user_id)
        ).scalar_one()
        conn.execute(insert(day_marks).values(user_id=user_id, date=last + timedelta(days=10), value=True))


def test_restore_defaults_to_the_backup_from_before_the_tickets_first_change(
    seeded: SeededDatabase, tmp_path: Path
) -> None:
    engine = seeded.storage.engine
    user = seeded.corrupted_user()
    damaged = spans(engine, user.id)
    env = {**os.environ, "POTATO_OPS_REPORTS_DIR": str(tmp_path / "records")}
    live = {
        "user_id": user.id,
        "dry_run": False,
        "confirm": database_name(seeded.url),
        "operator": "alice",
        "ticket": "INC-9",
    }
    path = notebook_copy("01_single_user_recovery", tmp_path / "incident")
    with live_notebook(path, env, tmp_path) as nb:
        nb.run_all(live)
        first = backup_ids(engine, user.id)
        assert len(first) == 1
        nb.run_all(live)  # nothing left to change: no second backup
        assert backup_ids(engine, user.id) == first
        add_mark_after_runs(engine, user.id)
        nb.run_all(live)  # a second change of the same incident: its backup holds fixed runs
    assert len(backup_ids(engine, user.id)) == 2
    assert spans(engine, user.id) != damaged

    record, result = run(
        "06_restore_from_backup",
        {"user_id": user.id, "dry_run": False, "ticket": "INC-9"},
        tmp_path / "reports",
    )
    assert result["figures"]["backup_id"] == first[0], result["verdict"]
    assert spans(engine, user.id) == damaged
    shown = record.notebook_path.read_text()
    assert f"backup {first[0]}: taken before the first change of ticket INC-9" in shown


def test_without_a_ticket_restore_takes_the_oldest_backup_since_the_incident_began(
    seeded: SeededDatabase, tmp_path: Path
) -> None:
    engine = seeded.storage.engine
    user = seeded.clean_user()
    seeded.storage.backup_user_runs(user.id)  # before the incident
    start = seeded.storage.now()
    during = seeded.storage.backup_user_runs(user.id)
    seeded.storage.backup_user_runs(user.id)
    record, result = run(
        "06_restore_from_backup",
        {"user_id": user.id, "since": start.isoformat()},
        tmp_path / "reports",
    )
    assert result["figures"]["backup_id"] == during.id
    assert f"backup {during.id}: the oldest since" in record.notebook_path.read_text()
    assert backup_ids(engine, user.id)[-1] != during.id
