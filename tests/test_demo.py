"""``potato-ops demo``: a fresh embedded database, the audit finding the corruption, the repair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from potato_ops import Storage
from potato_ops.cli import app
from potato_ops.config import default_sqlite_path
from potato_ops.demo.showcase import fresh_demo_database
from potato_ops.errors import ConfigError
from tests.conftest import add_user

pytestmark = pytest.mark.notebook


def test_demo_seeds_audits_repairs_and_says_where_the_records_are(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    args = ["demo", "--users", "40", "--days", "90", "--corrupt", "0.2", "--reports-dir", str(reports)]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "demo completed as designed" in done.output
    runs = sorted(p for p in reports.iterdir() if p.is_dir())
    assert [p.name.split("_", 1)[1].rsplit("_", 1)[0] for p in runs] == [
        "07_monitoring_audit",
        "05_error_recovery",
    ]
    for run_dir in runs:
        assert str(run_dir) in done.output
    audit = json.loads(next(runs[0].glob("*.result.json")).read_text())
    recovery = json.loads(next(runs[1].glob("*.result.json")).read_text())
    assert audit["status"] == "problem" and audit["figures"]["invariant_violations"] > 0
    assert recovery["status"] == "ok" and recovery["figures"]["violations_after"] == 0
    assert audit["parameters"]["database_url_env"] == "POTATO_OPS_DEMO_DATABASE_URL"
    storage = Storage.connect()  # the embedded default: what the demo left for the next command
    assert len(storage.get_all_users()) == 40
    assert storage.validate_invariants().ok
    assert CliRunner().invoke(app, ["reports", "verify", "--reports-dir", str(reports)]).exit_code == 0


def test_demo_never_wipes_a_database_it_did_not_create() -> None:
    path = default_sqlite_path()
    path.parent.mkdir(parents=True)
    storage = Storage.connect(f"sqlite:///{path}")
    storage.create_schema()
    add_user(storage, "someone-real", ["2024-03-01"])
    with pytest.raises(ConfigError, match="--replace"):
        fresh_demo_database(path)
    assert storage.get_user("someone-real").id == "someone-real"
    fresh_demo_database(path, replace=True)
    assert not path.exists()
