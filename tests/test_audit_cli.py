"""``potato-ops audit``: exit status by the most severe alert, and the archived audit notebook.

The command runs on the system clock, so history is seeded an hour before the real now.
Default rules (the playbook's): success rate < 0.99 is P1, average duration > 1000 ms is P2,
violations found by rebuilds > 0 is P0.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from textwrap import dedent

import nbformat
import pytest
from typer.testing import CliRunner

from potato_ops import Storage
from potato_ops.cli import app
from potato_ops.exitcodes import ExitCode
from potato_ops.monitoring.scheduled_audit import AUDIT_DATABASE_URL_ENV, AUDIT_NOTEBOOK
from potato_ops.notebook_runs.archive import list_executions
from tests.test_metrics import add_history

REPO_NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# (user, duration ms, success, violations found)
Rebuild = tuple[str, float, bool, int]

FAILURE_RATE = "FIRING P1 Rebuild Failure Rate High: rebuild_success_rate < 0.99"
SLOW = "FIRING P2 Rebuild Performance Slow: rebuild_avg_duration_ms > 1000"
VIOLATIONS = "FIRING P0 Invariant Violations: rebuild_invariant_violations > 0"

# id, rebuilds in the last 24 hours, exit code, lines printed about alerts
CASES: list[tuple[str, list[Rebuild], ExitCode, list[str]]] = [
    (
        "no-alert",
        [("a", 100, True, 0), ("b", 200, True, 0)],
        ExitCode.OK,
        ["no alert firing"],
    ),
    (
        "P2",
        [("a", 1500, True, 0), ("b", 2500, True, 0)],
        ExitCode.ALERT_P2,
        [f"{SLOW} (rebuild_avg_duration_ms=2000)"],
    ),
    (
        "P1",
        [("a", 100, True, 0), ("b", 300, False, 0)],
        ExitCode.ALERT_P1,
        [f"{FAILURE_RATE} (rebuild_success_rate=0.5)"],
    ),
    (
        "P0",
        [("a", 100, True, 0), ("b", 300, False, 3)],
        ExitCode.ALERT_P0,
        [
            f"{VIOLATIONS} (rebuild_invariant_violations=3)",
            f"{FAILURE_RATE} (rebuild_success_rate=0.5)",
        ],
    ),
]
CASE_IDS = [case[0] for case in CASES]


def seed_rebuilds(storage: Storage, rebuilds: list[Rebuild], hours_ago: float = 1) -> None:
    finished = datetime.now(UTC) - timedelta(hours=hours_ago)
    for user, ms, ok, violations in rebuilds:
        add_history(storage, user, finished, ms, success=ok, violations=violations)


def audit(db_url: str, *args: str, notebooks: Path | None = None) -> tuple[int, str, str]:
    env = {"POTATO_DATABASE_URL": db_url}
    if notebooks is not None:
        env["POTATO_OPS_NOTEBOOKS_DIR"] = str(notebooks)
    result = CliRunner().invoke(app, ["audit", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def alert_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(("FIRING", "no alert"))]


def archived_dir(out: str) -> Path:
    found = re.search(r"^notebook: (\w+); archived in (.+)$", out, re.MULTILINE)
    assert found, out
    return Path(found[2])


# --- exit status by severity (quick check, no notebook) ----------------------------------------


@pytest.mark.parametrize(("case", "rebuilds", "code", "lines"), CASES, ids=CASE_IDS)
def test_exit_status_is_the_highest_severity_fired(
    storage: Storage,
    db_url: str,
    case: str,
    rebuilds: list[Rebuild],
    code: ExitCode,
    lines: list[str],
) -> None:
    seed_rebuilds(storage, rebuilds)

    exit_code, out, err = audit(db_url, "--no-notebook")

    assert (exit_code, alert_lines(out), err) == (code, lines, "")
    assert "notebook" not in out


def test_exit_codes_are_distinct_and_documented() -> None:
    codes = [ExitCode.OK, ExitCode.ALERT_P2, ExitCode.ALERT_P1, ExitCode.ALERT_P0]
    assert [int(c) for c in codes] == [0, 10, 11, 12]
    help_text = CliRunner().invoke(app, ["audit", "--help"]).stdout
    assert "0 none, 10 P2, 11 P1, 12 P0" in " ".join(help_text.split())


def test_an_empty_window_says_no_data_and_fires_nothing(storage: Storage, db_url: str) -> None:
    seed_rebuilds(storage, [("a", 100, False, 5)], hours_ago=30)  # before the window

    code, out, _ = audit(db_url, "--no-notebook")

    assert code == ExitCode.OK
    assert out.startswith("no data: no rebuilds recorded in ")
    assert alert_lines(out) == ["no alert firing"]


def test_since_widens_the_window(storage: Storage, db_url: str) -> None:
    seed_rebuilds(storage, [("a", 100, False, 0)], hours_ago=30)

    code, out, _ = audit(db_url, "--no-notebook", "--since", "2d")

    assert code == ExitCode.ALERT_P1
    assert alert_lines(out) == [f"{FAILURE_RATE} (rebuild_success_rate=0)"]


def test_a_rules_file_replaces_the_defaults(storage: Storage, db_url: str, tmp_path: Path) -> None:
    seed_rebuilds(storage, [("a", 100, True, 0)])
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        dedent(
            """\
            alerts:
              - name: "Anything rebuilt"
                condition: "rebuild_count > 0 and slow_users == 0"
                severity: "P2"
              - name: "Backups missing"
                condition: "backups_count < 1"
                severity: "P2"
              - name: "Scan found violations"
                condition: "invariant_violations > 0"
                severity: "P0"
            """
        )
    )

    code, out, _ = audit(db_url, "--no-notebook", "--rules", str(rules))

    assert code == ExitCode.ALERT_P2
    assert alert_lines(out) == [
        "FIRING P2 Anything rebuilt: rebuild_count > 0 and slow_users == 0 (rebuild_count=1, slow_users=0)",
        "FIRING P2 Backups missing: backups_count < 1 (backups_count=0)",
    ]


def test_a_bad_rules_file_is_one_line_and_exit_1(storage: Storage, db_url: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text('alerts:\n  - name: "x"\n    condition: "rebuild_sucess_rate < 1"\n    severity: P1\n')

    code, out, err = audit(db_url, "--rules", str(rules))

    assert (code, out) == (ExitCode.ERROR, "")
    assert err.startswith("error: line 3: alert 'x': invalid condition")
    assert "did you mean 'rebuild_success_rate'?" in err
    assert err.count("\n") == 1


def test_a_database_without_the_schema_is_exit_1(tmp_path: Path) -> None:
    (tmp_path / "empty.sqlite3").touch()
    code, out, err = audit(f"sqlite:///{tmp_path / 'empty.sqlite3'}", "--no-notebook")

    assert (code, out) == (ExitCode.ERROR, "")
    assert err.startswith("error: database schema is missing ")


# --- the notebook's failures never hide the alerts ---------------------------------------------


def write_notebook(folder: Path, body: str) -> Path:
    """Write a stand-in 07_monitoring_audit notebook with the real one's parameters."""
    parameters = nbformat.v4.new_code_cell(  # type: ignore[no-untyped-call]
        dedent(
            """\
            since: str = "24h"  # start of the window
            slow_threshold_ms: float = 1000.0  # slower rebuilds make their user slow
            alert_rules: str = ""  # alert rules; empty means the shipped ones
            operator: str = ""  # who runs it
            ticket: str = ""  # change ticket
            database_url_env: str = "POTATO_DATABASE_URL"  # variable holding the URL
            """
        )
    )
    parameters.metadata["tags"] = ["parameters"]
    notebook = nbformat.v4.new_notebook(  # type: ignore[no-untyped-call]
        cells=[parameters, nbformat.v4.new_code_cell(dedent(body))],  # type: ignore[no-untyped-call]
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{AUDIT_NOTEBOOK}.ipynb"
    nbformat.write(notebook, str(path))  # type: ignore[no-untyped-call]
    return path


@pytest.mark.notebook
@pytest.mark.slow
def test_the_notebook_gets_the_window_the_alerts_judged(
    storage: Storage, db_url: str, tmp_path: Path
) -> None:
    seed_rebuilds(storage, [("a", 100, True, 0), ("b", 300, False, 0)])
    seed_rebuilds(storage, [("c", 100, True, 0)], hours_ago=30)
    notebooks = tmp_path / "notebooks"
    write_notebook(
        notebooks,
        """\
        from potato_ops import Storage
        from potato_ops.monitoring.metrics import compute_metrics
        from potato_ops.notebook_runs.result import record_result

        metrics = compute_metrics(
            Storage.connect(env_var=database_url_env).database,
            since=since,
            scan=False,
            slow_threshold_ms=slow_threshold_ms,
        )
        record_result(
            "stand-in",
            figures={
                "rebuild_count": metrics.rebuild_count,
                "slow_users": metrics.slow_users,
                "since": since,
                "alert_rules": alert_rules,
                "database_url_env": database_url_env,
            },
        )
        """,
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text('alerts:\n  - {name: "Any", condition: "rebuild_count > 0", severity: P1}\n')
    reports = tmp_path / "reports"

    code, out, err = audit(
        db_url,
        *("--since", "2d", "--rules", str(rules), "--slow-threshold-ms", "200"),
        *("--reports-dir", str(reports)),
        notebooks=notebooks,
    )

    assert (code, err) == (ExitCode.ALERT_P1, "")
    result = json.loads((archived_dir(out) / f"{AUDIT_NOTEBOOK}.result.json").read_text())
    window_start = re.search(r" in (\S+) \.\. ", out)
    assert window_start
    figures = result["figures"]
    assert (result["status"], figures["rebuild_count"], figures["slow_users"]) == ("ok", 3, 1)
    assert (figures["alert_rules"], figures["database_url_env"]) == (
        str(rules.resolve()),
        AUDIT_DATABASE_URL_ENV,
    )
    assert datetime.fromisoformat(figures["since"]).replace(microsecond=0) == (
        datetime.fromisoformat(window_start[1])
    )
    assert AUDIT_DATABASE_URL_ENV not in os.environ  # exported only while the notebook ran


@pytest.mark.notebook
@pytest.mark.slow
def test_a_failing_notebook_is_reported_but_the_exit_follows_the_alerts(
    storage: Storage, db_url: str, tmp_path: Path
) -> None:
    seed_rebuilds(storage, [("a", 1500, True, 0), ("b", 2500, True, 0)])
    notebooks = tmp_path / "notebooks"
    write_notebook(notebooks, 'raise RuntimeError("the audit cell broke")')
    reports = tmp_path / "reports"

    code, out, err = audit(db_url, "--reports-dir", str(reports), notebooks=notebooks)

    assert code == ExitCode.ALERT_P2
    assert alert_lines(out) == [f"{SLOW} (rebuild_avg_duration_ms=2000)"]
    assert re.fullmatch(
        r"warning: the monitoring notebook ended with error: cell \d+ .*raised RuntimeError: "
        r"the audit cell broke \(.+\)\n",
        err,
    ), err
    assert (archived_dir(out) / f"{AUDIT_NOTEBOOK}.ipynb").is_file()
    assert [(e.notebook, e.status) for e in list_executions(reports)] == [(AUDIT_NOTEBOOK, "error")]


def test_a_missing_notebook_is_reported_but_the_exit_follows_the_alerts(
    storage: Storage, db_url: str, tmp_path: Path
) -> None:
    seed_rebuilds(storage, [("a", 100, False, 0)])
    empty = tmp_path / "no-notebooks"
    empty.mkdir()

    code, out, err = audit(db_url, "--reports-dir", str(tmp_path / "reports"), notebooks=empty)

    assert code == ExitCode.ALERT_P1
    assert "archived in" not in out
    assert err.startswith("warning: the monitoring notebook did not run: no notebook ")


# --- end to end with the shipped notebook ------------------------------------------------------


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize(("case", "rebuilds", "code", "lines"), CASES, ids=CASE_IDS)
def test_audit_archives_the_monitoring_notebook(
    storage: Storage,
    db_url: str,
    tmp_path: Path,
    case: str,
    rebuilds: list[Rebuild],
    code: ExitCode,
    lines: list[str],
) -> None:
    seed_rebuilds(storage, rebuilds)
    reports = tmp_path / "reports"

    exit_code, out, err = audit(db_url, "--reports-dir", str(reports), notebooks=REPO_NOTEBOOKS)

    assert (exit_code, alert_lines(out), err) == (code, lines, "")
    run_dir = archived_dir(out)
    assert run_dir.parent == reports
    assert (run_dir / f"{AUDIT_NOTEBOOK}.ipynb").is_file()
    assert (run_dir / f"{AUDIT_NOTEBOOK}.html").is_file()
    entries = list_executions(reports)
    assert [(e.notebook, e.status in ("ok", "problem")) for e in entries] == [(AUDIT_NOTEBOOK, True)]
