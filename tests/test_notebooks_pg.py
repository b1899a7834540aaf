"""The single-user, bulk and restore notebooks on a real PostgreSQL, through execute_notebook.

The database URL reaches the kernel only through an environment variable, here one holding a
password (the test server trusts local connections, so any password works): the archived
record must never show it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import delete

from potato_ops.db.schema import runs
from tests.test_notebooks import SeededDatabase, run, seed_database

pytestmark = [pytest.mark.notebook, pytest.mark.postgres]

SECRET = "Pg-S3cret-4-notebooks"
URL_ENV = "POTATO_OPS_TEST_PG_URL_WITH_PASSWORD"


@pytest.fixture
def pg(db_url: str, monkeypatch: pytest.MonkeyPatch) -> SeededDatabase:
    """A seeded PostgreSQL database reachable through $POTATO_DATABASE_URL (tests pick the backend)."""
    found = seed_database(db_url)
    monkeypatch.setenv("POTATO_DATABASE_URL", db_url)
    return found


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    return tmp_path / "reports"


def _files(directory: Path) -> dict[str, str]:
    return {
        str(p): p.read_text(encoding="utf-8", errors="replace") for p in directory.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_single_user_recovery_on_postgres_never_archives_the_password(
    pg: SeededDatabase, reports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = pg.corrupted_user()
    with_password = pg.url.replace("postgres@", f"postgres:{SECRET}@", 1)
    assert SECRET in with_password
    monkeypatch.setenv(URL_ENV, with_password)
    record, result = run(
        "01_single_user_recovery",
        {"user_email": user.email, "dry_run": False, "database_url_env": URL_ENV},
        reports,
    )
    assert record.status == "ok", result["verdict"]
    assert result["figures"]["violations_after"] == 0
    assert result["database"]["dialect"] == "postgresql"
    assert "***" in result["database"]["url"]
    assert pg.storage.validate_invariants([user.id]).ok
    leaked = [path for path, text in _files(reports).items() if SECRET in text]
    assert leaked == []


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_bulk_recovery_on_postgres(pg: SeededDatabase, reports: Path) -> None:
    record, result = run("03_bulk_recovery", {"dry_run": False, "batch_size": 4, "max_workers": 3}, reports)
    figures = result["figures"]
    users = len(pg.seeded.user_ids)
    assert (figures["completed_users"], figures["failed_users"]) == (users, 0)
    orphan_owners = {u for u, kind in pg.seeded.corrupted.items() if kind == "orphan"}
    assert set(pg.storage.validate_invariants().users_with_violations) == orphan_owners
    assert record.status == ("ok" if not orphan_owners else "problem")


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_restore_from_backup_on_postgres(pg: SeededDatabase, reports: Path) -> None:
    user = pg.clean_user()
    backup = pg.storage.backup_user_runs(user.id)
    with pg.storage.engine.begin() as conn:
        conn.execute(delete(runs).where(runs.c.user_id == user.id))
    record, result = run(
        "06_restore_from_backup",
        {"user_email": user.email, "backup_id": backup.id, "dry_run": False},
        reports,
    )
    assert record.status == "ok", result["verdict"]
    assert result["figures"]["runs_restored"] == backup.metadata.total_runs
    assert [r.span for r in pg.storage.get_user_runs(user.id)] == [r.span for r in backup.runs]
