"""A live run names the database it changes: ``confirm`` must equal the database's name.

Refused by ``potato-ops run`` before any kernel starts (exit 4) and by the notebook's own check
cell, which says what to type; a dry run needs no confirmation and shows what a live run would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from potato_ops.cli import app
from potato_ops.errors import NotebookParameterError
from potato_ops.exitcodes import ExitCode
from potato_ops.notebook_runs.parameters import check_parameters
from potato_ops.runbook.params import RunbookParameterError, check_single_user_recovery

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
WRITING = [
    "01_single_user_recovery",
    "02_partial_rebuild",
    "03_bulk_recovery",
    "04_timezone_migration",
    "05_error_recovery",
    "06_restore_from_backup",
]


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The database live runs would change; its name is what confirms them."""
    monkeypatch.setenv("POTATO_DATABASE_URL", f"sqlite:///{tmp_path / 'incident-db.sqlite3'}")
    return "incident-db.sqlite3"


def single_user(**given: object) -> dict[str, object]:
    return {
        "user_email": "",
        "user_id": "u1",
        "dry_run": True,
        "keep_backup": True,
        "calendar_days": 30,
        "operator": "",
        "ticket": "",
        "database_url_env": "POTATO_DATABASE_URL",
        **given,
    }


@pytest.mark.parametrize("name", WRITING)
def test_the_runner_refuses_an_unconfirmed_live_run_of_each_writing_notebook(
    database: str, name: str
) -> None:
    path = NOTEBOOKS / f"{name}.ipynb"
    for wrong in ("", "potato", database.upper()):
        with pytest.raises(NotebookParameterError, match=f"set confirm = '{database}'"):
            check_parameters(path, {"dry_run": False, "confirm": wrong})
    assert check_parameters(path, {"dry_run": False, "confirm": database})["confirm"] == database
    assert check_parameters(path, {"dry_run": True}) == {"dry_run": True}


def test_postgresql_is_confirmed_by_the_database_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPS_DB", "postgresql://ops:S3cret-pw@db.internal:5432/potato_prod?sslmode=require")
    path = NOTEBOOKS / "03_bulk_recovery.ipynb"
    live = {"dry_run": False, "database_url_env": "OPS_DB"}
    with pytest.raises(NotebookParameterError, match="set confirm = 'potato_prod'") as refused:
        check_parameters(path, live)
    assert "S3cret" not in str(refused.value)
    assert check_parameters(path, {**live, "confirm": "potato_prod"})["confirm"] == "potato_prod"


def test_the_check_cell_refuses_an_unconfirmed_live_run_and_says_what_to_type(database: str) -> None:
    with pytest.raises(RunbookParameterError, match=f"set confirm = '{database}'"):
        check_single_user_recovery(**single_user(dry_run=False, confirm="yes"))
    live = check_single_user_recovery(**single_user(dry_run=False, confirm=database))
    assert f"LIVE run on the database '{database}'" in str(live)
    dry = check_single_user_recovery(**single_user(confirm=""))
    assert f"a live run needs dry_run=False and confirm = '{database}'" in str(dry)


def test_potato_ops_run_exits_4_on_an_unconfirmed_live_run(database: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["run", "01_single_user_recovery", "-p", "user_id", "u1", "-p", "dry_run", "false"],
        env={"POTATO_OPS_REPORTS_DIR": str(tmp_path / "reports")},
    )
    assert result.exit_code == ExitCode.INVALID_PARAMETERS, result.output
    assert f"set confirm = '{database}'" in result.stderr
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())
