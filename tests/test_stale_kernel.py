"""One kernel, as JupyterLab keeps it: a check that fails stops everything computed before it.

Each writing notebook is run live in a kernel, then run again in the same kernel with a
parameter its check refuses: no cell after the check writes, and none shows the first run's
user. Running a writing cell twice under one check writes once. The live run, made from a
kernel a Jupyter server would start, leaves its record: the archived folder and the
``ops_run_records`` row with operator and ticket, and, when it stops right after a write,
the row all the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from potato_ops.cli import app
from potato_ops.db.schema import (
    ops_backups,
    ops_operations,
    ops_rebuild_history,
    ops_run_records,
    ops_timezone_changes,
    runs,
    users,
)
from tests.kernel_session import CellRun, database_name, live_notebook, notebook_copy
from tests.test_notebooks import SeededDatabase, seed_database

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

STALE = "StaleStateError"


@pytest.fixture
def seeded(db_url: str) -> Iterator[SeededDatabase]:
    found = seed_database(db_url)
    yield found
    found.storage.close()


@pytest.fixture
def env(seeded: SeededDatabase, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "POTATO_DATABASE_URL": seeded.url,
        "POTATO_OPS_REPORTS_DIR": str(tmp_path / "records"),
        "POTATO_OPS_HOME": str(tmp_path / "home"),
    }


def written(engine: Engine) -> dict[str, Any]:
    """Return everything a runbook may write, as the test reads it from the tables."""
    with engine.connect() as conn:
        counts = {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (ops_backups, ops_rebuild_history, ops_operations, ops_timezone_changes, ops_run_records)
        }
        stored = conn.execute(
            select(runs.c.id, runs.c.user_id, runs.c.start_date, runs.c.end_date, runs.c.active).order_by(
                runs.c.user_id, runs.c.id
            )
        ).all()
        zones = conn.execute(select(users.c.id, users.c.timezone).order_by(users.c.id)).all()
    return {**counts, "runs": [tuple(r) for r in stored], "zones": [tuple(z) for z in zones]}


def records(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(ops_run_records)).mappings()]


def after_check(cells: list[CellRun]) -> list[CellRun]:
    """Return the cells after the parameters check (the second code cell)."""
    assert cells[1].status == "error", cells[1].shown
    assert "RunbookParameterError" in cells[1].error
    return cells[2:]


def assert_clean_refusal(cells: list[CellRun], *secrets_of_the_first_run: str) -> None:
    """Every cell after the failed check either ran nothing of the earlier state or was refused."""
    for cell in after_check(cells):
        for word in secrets_of_the_first_run:
            assert word not in cell.shown, (cell.source, cell.shown)
        if cell.status == "error":
            assert STALE in cell.error, (cell.source, cell.error)
    refused = [c for c in cells[2:] if STALE in c.error]
    assert len(refused) >= 3  # the session, the steps and the verdict at least


def live_params(seeded: SeededDatabase, **extra: object) -> dict[str, object]:
    confirm = database_name(seeded.url)
    return {"dry_run": False, "confirm": confirm, "operator": "alice", "ticket": "INC-7", **extra}


def test_single_user_recovery_stale_kernel_writes_nothing_and_shows_nothing_of_user_a(
    seeded: SeededDatabase, env: dict[str, str], tmp_path: Path
) -> None:
    user = seeded.corrupted_user()
    path = notebook_copy("01_single_user_recovery", tmp_path / "incident")
    with live_notebook(path, env, tmp_path) as nb:
        first = nb.run_all(live_params(seeded, user_email=user.email))
        assert all(c.status == "ok" for c in first), [c.shown for c in first if c.status != "ok"]
        assert f"rebuilt {user.email}" in first[-1].shown
        before = written(seeded.storage.engine)

        again = nb.run(next(c for c in nb.cells if "execute_rebuild(session" in c))
        assert "already ran" in again.shown
        assert written(seeded.storage.engine) == before

        cleared = nb.run_all(live_params(seeded, user_email=""))
        assert_clean_refusal(cleared, str(user.email), user.id)
        assert written(seeded.storage.engine) == before

    rows = records(seeded.storage.engine)
    assert len(rows) == 1
    row = rows[0]
    assert (row["status"], row["operator"]) == ("ok", "alice")
    assert json.loads(row["parameters"])["ticket"] == "INC-7"
    assert row["manifest_sha256"]
    folder = tmp_path / "records" / row["run_id"]
    result = json.loads((folder / "01_single_user_recovery.result.json").read_text())
    assert result["execution"] == "interactive"
    assert result["verdict"].startswith(f"rebuilt {user.email}")
    archived = (folder / "01_single_user_recovery.ipynb").read_text()
    assert "execute_rebuild" in archived and "rebuilt " in archived
    verify = ["reports", "verify", "--reports-dir", str(tmp_path / "records"), "--database-url", seeded.url]
    checked = CliRunner().invoke(app, verify)
    assert checked.exit_code == 0, checked.output


def test_an_interactive_run_that_stops_after_its_write_leaves_the_database_row(
    seeded: SeededDatabase, env: dict[str, str], tmp_path: Path
) -> None:
    user = seeded.corrupted_user()
    path = notebook_copy("01_single_user_recovery", tmp_path / "incident")
    with live_notebook(path, env, tmp_path) as nb:
        write_at = next(i for i, c in enumerate(nb.cells) if "execute_rebuild(session" in c)
        cells = [nb.with_parameters(live_params(seeded, user_id=user.id)), *nb.cells[1 : write_at + 1]]
        shown = [nb.run(c) for c in cells]
        assert all(c.status == "ok" for c in shown), [c.shown for c in shown]
        assert "ops_run_records" in shown[-1].shown
        rows = records(seeded.storage.engine)
        assert [(r["status"], r["operator"]) for r in rows] == [("incomplete", "alice")]
        assert json.loads(rows[0]["parameters"])["ticket"] == "INC-7"
        history = seeded.storage.engine.connect()
        with history:
            operation = history.execute(
                select(ops_rebuild_history.c.operation_id).where(ops_rebuild_history.c.user_id == user.id)
            ).scalar_one()
        assert json.loads(rows[0]["operation_ids"]) == [operation]
        for cell in nb.cells[write_at + 1 :]:
            nb.run(cell)
    assert [r["status"] for r in records(seeded.storage.engine)] == ["ok"]


@pytest.mark.parametrize(
    ("name", "live", "refused"),
    [
        ("02_partial_rebuild", {"from_date": "2000-01-01"}, {"from_date": "2000-13-01"}),
        ("03_bulk_recovery", {"batch_size": 4, "max_workers": 1}, {"batch_size": 0}),
        ("04_timezone_migration", {"new_timezone": "Asia/Tokyo"}, {"new_timezone": "Mars/Base"}),
        ("05_error_recovery", {}, {"scenario": "nonsense"}),
        ("06_restore_from_backup", {}, {"backup_id": -1}),
    ],
)
def test_every_writing_notebook_refuses_state_from_an_earlier_check(
    seeded: SeededDatabase,
    env: dict[str, str],
    tmp_path: Path,
    name: str,
    live: dict[str, object],
    refused: dict[str, object],
) -> None:
    user = seeded.corrupted_user()
    values: dict[str, object] = live_params(seeded, **live)
    if name != "03_bulk_recovery" and name != "05_error_recovery":
        values["user_email"] = user.email
    if name == "06_restore_from_backup":
        seeded.storage.backup_user_runs(user.id)
    path = notebook_copy(name, tmp_path / "incident")
    with live_notebook(path, env, tmp_path) as nb:
        first = nb.run_all(values)
        bad = [c.shown for c in first if c.status != "ok" and "ProblemFound" not in c.error]
        assert not bad, bad
        before = written(seeded.storage.engine)
        assert before["ops_run_records"] == 1
        writing = [c for c in nb.cells if "dry_run=params.dry_run" in c or "detection, params)" in c]
        for cell in writing or [nb.cells[-1]]:
            nb.run(cell)
        assert written(seeded.storage.engine) == before

        cleared = nb.run_all({**values, **refused})
        assert_clean_refusal(cleared, str(user.email), user.id)
        assert written(seeded.storage.engine) == before
