"""Notebook 03 pauses an operation and continues it (PostgreSQL: an operation written for workers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from potato_ops import BulkConfig
from tests.test_notebooks import run, seed_database

pytestmark = [pytest.mark.notebook, pytest.mark.postgres]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_notebook_03_pauses_an_operation_and_continues_it(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = seed_database(db_url)
    monkeypatch.setenv("POTATO_DATABASE_URL", db_url)
    storage = found.storage
    users = len(found.seeded.user_ids)
    operation_id = storage.open_bulk_operation(None, BulkConfig(batch_size=4, dry_run=False))

    record, result = run("03_bulk_recovery", {"operation_id": operation_id, "pause": True}, tmp_path / "r")
    assert record.status == "ok", result["verdict"]
    assert result["verdict"] == (
        f"operation {operation_id} paused at 0/{users} users; continue it with operation_id={operation_id}"
    )
    assert result["operation_ids"] == [operation_id]
    progress = storage.get_rebuild_progress(operation_id)
    assert (progress.status, progress.processed_users) == ("paused", 0)

    # Nobody runs it: continuing it from the notebook takes it over and runs it to the end.
    record, result = run("03_bulk_recovery", {"operation_id": operation_id}, tmp_path / "r")
    assert result["figures"]["status"] == "completed", result["verdict"]
    assert (result["figures"]["completed_users"], result["figures"]["failed_users"]) == (users, 0)
    assert storage.get_rebuild_progress(operation_id).status == "completed"
    storage.close()
