"""``potato-ops lab``: an incident's folder of working copies, settings and records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from potato_ops.cli import app

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_lab_makes_working_copies_that_name_the_database_and_default_to_the_incident(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POTATO_DATABASE_URL", "postgresql://ops:Very-S3cret-pw@db.internal/potato_prod")
    tracked = {p.name: p.read_bytes() for p in NOTEBOOKS.iterdir()}
    folder = tmp_path / "INC-42"
    result = CliRunner().invoke(
        app, ["lab", "--ticket", "INC-42", "--operator", "alice", "--folder", str(folder), "--prepare-only"]
    )
    assert result.exit_code == 0, result.output
    assert "Very-S3cret-pw" not in result.output
    copies = sorted(p.name for p in (folder / "notebooks").iterdir())
    assert copies == sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))
    text = (folder / "notebooks" / "01_single_user_recovery.py").read_text()
    first_cell = text.split("# %% [markdown]", 2)[1]
    assert "**Incident INC-42**, operator alice" in first_cell
    assert "postgresql+psycopg://ops:***@db.internal/potato_prod" in first_cell
    assert "confirm = 'potato_prod'" in first_cell
    assert str(folder / "records") in first_cell
    assert 'operator: str = "alice"' in text and 'ticket: str = "INC-42"' in text
    assert "Very-S3cret-pw" not in text
    viewers = (
        folder / ".jupyter/lab/user-settings/@jupyterlab/docmanager-extension/plugin.jupyterlab-settings"
    )
    assert json.loads(viewers.read_text()) == {"defaultViewers": {"python": "Jupytext Notebook"}}
    assert (folder / "records").is_dir()
    assert {p.name: p.read_bytes() for p in NOTEBOOKS.iterdir()} == tracked


def test_lab_keeps_a_working_copy_already_edited_in_the_incident(tmp_path: Path) -> None:
    folder = tmp_path / "INC-1"
    args = ["lab", "--ticket", "INC-1", "--folder", str(folder), "--prepare-only"]
    assert CliRunner().invoke(app, args).exit_code == 0
    copy = folder / "notebooks" / "08_troubleshooting.py"
    copy.write_text(copy.read_text() + "\n# %%\n1 + 1\n")
    assert CliRunner().invoke(app, args).exit_code == 0
    assert copy.read_text().endswith("1 + 1\n")
