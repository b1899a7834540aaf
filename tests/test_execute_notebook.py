"""execute_notebook: lookup, parameter checks, statuses, exit codes, and what gets archived."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from jupyter_client.kernelspec import KernelSpecManager
from typer.testing import CliRunner

from potato_ops.errors import NotebookError, NotebookParameterError, SecretLeakError
from potato_ops.exitcodes import ExitCode
from potato_ops.notebook_runs.archive import list_executions, verify_reports
from potato_ops.notebook_runs.catalog import list_notebooks, resolve_notebook
from potato_ops.notebook_runs.execute import execute_notebook
from potato_ops.notebook_runs.parameters import ParameterInfo, check_parameters
from potato_ops.notebook_runs.result import ProblemFound, record_result, result_payload, verdict_line

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"
OUTCOMES = FIXTURES / "01_outcomes.ipynb"
SECRET = "Sup3rS3cret"
URL = f"postgresql+psycopg://ops:{SECRET}@localhost/x"


@pytest.fixture(autouse=True)
def _fixture_notebooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POTATO_OPS_NOTEBOOKS_DIR", str(FIXTURES))


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    return tmp_path / "reports"


@pytest.fixture
def hostile_kernelspec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A system-wide ``python3`` kernelspec for another interpreter, found first by Jupyter."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    interpreter = str(tmp_path / "elsewhere" / "bin" / "python3")
    spec = {
        "argv": [interpreter, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Some other Python",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return Path(interpreter)


def _files_under(directory: Path) -> dict[str, bytes]:
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def _cli() -> typer.Typer:
    from potato_ops.cli import notebooks as notebooks_cli

    app = typer.Typer()
    notebooks_cli.register(app)
    return app


# -- the result record ---------------------------------------------------------------------------


def test_result_payload_turns_figures_into_json_values() -> None:
    import datetime as dt
    from decimal import Decimal

    import numpy as np
    import polars as pl

    payload = result_payload(
        "  3 users\n rebuilt ",
        status="problem",
        figures={
            "day": dt.date(2024, 3, 1),
            "at": dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC),
            "took": dt.timedelta(seconds=90),
            "ratio": Decimal("2.50"),
            "count": Decimal("7"),
            "users": np.int64(3),
            "share": np.float32(0.5),
            "flags": np.array([True, False]),
            "series": pl.Series([1, 2]),
            "ids": {"b", "a"},
            "nan": float("nan"),
        },
        operation_ids=("op-1",),
        database={"url": URL},
    )

    assert payload == {
        "verdict": "3 users rebuilt",
        "status": "problem",
        "figures": {
            "day": "2024-03-01",
            "at": "2024-03-01T12:00:00+00:00",
            "took": 90.0,
            "ratio": 2.5,
            "count": 7,
            "users": 3,
            "share": 0.5,
            "flags": [True, False],
            "series": [1, 2],
            "ids": ["a", "b"],
            "nan": None,
        },
        "operation_ids": ["op-1"],
        "database": {"url": "postgresql+psycopg://ops:***@localhost/x"},
    }
    assert json.loads(json.dumps(payload)) == payload


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"status": "fine"}, ValueError),
        ({"figures": {"x": object()}}, TypeError),
        ({"operation_ids": "op-1"}, TypeError),
    ],
    ids=["bad-status", "unserializable-figure", "ids-as-string"],
)
def test_result_payload_refuses_what_it_cannot_record(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        result_payload("verdict", **kwargs)


def test_a_problem_record_raises_a_one_line_error_after_it_is_displayed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shown: list[dict[str, Any]] = []
    monkeypatch.setattr("IPython.display.display", lambda data, raw: shown.append(data))

    record_result("2 overlaps", status="ok")
    with pytest.raises(ProblemFound) as caught:
        record_result("3 overlaps", status="problem")

    assert [d["text/plain"] for d in shown] == ["✔ 2 overlaps", "✘ 3 overlaps"]  # displayed first
    assert str(caught.value) == "3 overlaps"
    assert caught.value._render_traceback_() == ["ProblemFound: 3 overlaps"]  # JupyterLab's whole error


def test_verdict_line() -> None:
    assert verdict_line("ok", "all good") == "✔ all good"
    assert verdict_line("problem", "2 overlaps") == "✘ 2 overlaps"
    assert verdict_line("timeout", "cell 3 did not finish") == "✘ cell 3 did not finish"


# -- lookup --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["01_outcomes", "01_outcomes.ipynb", "01", str(OUTCOMES)], ids=["name", "file", "number", "path"]
)
def test_resolve_notebook(name: str) -> None:
    assert resolve_notebook(name) == OUTCOMES


def test_resolve_notebook_lists_the_available_ones() -> None:
    with pytest.raises(NotebookError, match=r"no notebook '09'.*available: 01_outcomes, 02_leaky"):
        resolve_notebook("09")


def test_list_notebooks_reads_parameters_with_types_defaults_and_help() -> None:
    found = {info.name: info for info in list_notebooks()}
    assert sorted(found) == ["01_outcomes", "02_leaky"]
    assert found["01_outcomes"].title == "Outcomes"
    assert found["01_outcomes"].parameters == (
        ParameterInfo("outcome", "str", '"ok"', "how the run ends: ok, problem, raise, block or silent"),
        ParameterInfo("threshold", "int", "3", "how many problems make the run a problem"),
        ParameterInfo("ratio", "float", "0.5", "a fraction, to check float parameters"),
        ParameterInfo("dry_run", "bool", "True", "only pretend to change anything"),
        ParameterInfo("user_ids", "list[str]", "[]", "the users to look at"),
        ParameterInfo("label", "str | None", "None", "optional label shown in the verdict"),
        ParameterInfo(
            "database_url_env",
            "str",
            '"POTATO_DATABASE_URL"',
            "name of the variable that holds the database URL",
        ),
    )


# -- parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"threshold": "5"}, {"threshold": 5}),
        ({"threshold": 7}, {"threshold": 7}),
        ({"ratio": "0.25"}, {"ratio": 0.25}),
        ({"ratio": 2}, {"ratio": 2.0}),
        ({"dry_run": "no"}, {"dry_run": False}),
        ({"dry_run": "TRUE"}, {"dry_run": True}),
        ({"dry_run": "0"}, {"dry_run": False}),
        ({"dry_run": "on"}, {"dry_run": True}),
        ({"dry_run": 0}, {"dry_run": False}),
        ({"user_ids": "[1, 2]"}, {"user_ids": ["1", "2"]}),
        ({"user_ids": "a,,a, b"}, {"user_ids": ["a", "b"]}),
        ({"outcome": " ok "}, {"outcome": "ok"}),
        ({"user_ids": "a, b,c"}, {"user_ids": ["a", "b", "c"]}),
        ({"user_ids": '["x,1", "y"]'}, {"user_ids": ["x,1", "y"]}),
        ({"user_ids": ""}, {"user_ids": []}),
        ({"user_ids": ("a",)}, {"user_ids": ["a"]}),
        ({"label": "none"}, {"label": None}),
        ({"label": "null"}, {"label": None}),
        ({"label": None}, {"label": None}),
        ({"label": "weekly"}, {"label": "weekly"}),
        ({"outcome": "none"}, {"outcome": "none"}),
        ({"database_url_env": "OTHER_URL"}, {"database_url_env": "OTHER_URL"}),
    ],
    ids=lambda v: json.dumps(v, default=str),
)
def test_check_parameters_coerces_to_declared_types(
    raw: dict[str, object], expected: dict[str, object]
) -> None:
    assert check_parameters(OUTCOMES, raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"threshold": "abc"}, "parameter threshold = 'abc' is not valid: expected a whole number"),
        ({"threshold": "1.5"}, "parameter threshold = '1.5' is not valid: expected a whole number"),
        ({"threshold": True}, "parameter threshold = 'True' is not valid: expected a whole number"),
        ({"ratio": "lots"}, "parameter ratio = 'lots' is not valid: expected a number"),
        ({"ratio": "nan"}, "parameter ratio = 'nan' is not valid: expected a number"),
        (
            {"dry_run": "maybe"},
            "parameter dry_run = 'maybe' is not valid: expected True or False "
            "(also true/false, yes/no, on/off, 1/0)",
        ),
        ({"dry_run": 2}, "parameter dry_run = '2' is not valid: expected True or False"),
        ({"outcome": None}, "parameter outcome = 'None' is not valid: expected text"),
        (
            {"user_ids": "[unclosed"},
            "parameter user_ids = '[unclosed' is not valid: expected a list of strings, "
            "or strings separated by commas",
        ),
        ({"user_ids": [True]}, "parameter user_ids = '[True]' is not valid: expected a list of strings"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else "",
)
def test_check_parameters_refuses_wrong_types(raw: dict[str, object], message: str) -> None:
    with pytest.raises(NotebookParameterError) as caught:
        check_parameters(OUTCOMES, raw)
    assert str(caught.value).startswith(message)


def test_check_parameters_refuses_unknown_names_listing_valid_ones() -> None:
    with pytest.raises(NotebookParameterError) as caught:
        check_parameters(OUTCOMES, {"threshold": "1", "treshold": "2"})
    assert str(caught.value) == (
        "unknown parameter 'treshold' for 01_outcomes; valid parameters: outcome, threshold, "
        "ratio, dry_run, user_ids, label, database_url_env"
    )


@pytest.mark.parametrize(
    "raw",
    [{"database_url_env": URL}, {"user_ids": [URL]}, {"label": f"see {URL}"}],
    ids=["url-parameter", "inside-list", "inside-text"],
)
def test_check_parameters_refuses_urls_with_passwords(raw: dict[str, object]) -> None:
    with pytest.raises(NotebookParameterError, match="holds a URL with a password") as caught:
        check_parameters(OUTCOMES, raw)
    assert SECRET not in str(caught.value)


def test_refused_parameters_start_no_kernel_and_archive_nothing(
    reports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a kernel was started")

    monkeypatch.setattr("papermill.execute_notebook", never)
    for bad in ({"nope": "1"}, {"threshold": "three"}, {"database_url_env": URL}):
        with pytest.raises(NotebookParameterError):
            execute_notebook("01", bad, reports_dir=reports)
    assert not reports.exists()


# -- the kernel ----------------------------------------------------------------------------------


def test_hostile_kernelspec_is_what_jupyter_would_pick(hostile_kernelspec: Path) -> None:
    # Without execute_notebook's pin, "python3" would start another interpreter.
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == str(hostile_kernelspec)


# -- running -------------------------------------------------------------------------------------


@pytest.mark.notebook
@pytest.mark.usefixtures("hostile_kernelspec")
def test_ok_run_is_archived_with_its_result(reports: Path) -> None:
    record = execute_notebook(
        "01", {"threshold": "5", "user_ids": "a,b", "label": "none"}, reports_dir=reports
    )

    assert (record.status, record.exit_code) == ("ok", ExitCode.OK)
    result = json.loads(record.result_path.read_text())
    assert result == record.result
    assert {k: result[k] for k in ("notebook", "status", "exit_code", "verdict", "error")} == {
        "notebook": "01_outcomes",
        "status": "ok",
        "exit_code": 0,
        "verdict": "ok: 2 users, label None",
        "error": None,
    }
    assert result["parameters"] == {"threshold": 5, "user_ids": ["a", "b"], "label": None}
    assert result["figures"] == {
        "threshold": 5,
        "ratio": 0.5,
        "dry_run": True,
        "user_ids": ["a", "b"],
        "label": None,
        "python": sys.executable,
        "day": "2024-01-02",
    }
    assert result["operation_ids"] == ["op-1"]
    assert result["database"] == {"url_env": "POTATO_DATABASE_URL"}
    assert result["run_id"] == record.run_dir.name
    assert isinstance(result["kernel_start_s"], float)
    assert result["duration_s"] >= result["kernel_start_s"] > 0
    assert result["papermill_version"] and result["python_version"] and result["hostname"]
    assert result["potato_ops_version"] != "unknown"
    assert record.notebook_path.exists() and record.html_path.exists()
    assert "ok: 2 users" in record.html_path.read_text()
    assert [e.run_id for e in list_executions(reports)] == [record.run_dir.name]
    assert verify_reports(reports).ok


@pytest.mark.notebook
@pytest.mark.usefixtures("hostile_kernelspec")
def test_a_raising_cell_is_an_archived_error(reports: Path) -> None:
    record = execute_notebook("01_outcomes", {"outcome": "raise"}, reports_dir=reports)

    assert (record.status, record.exit_code) == ("error", ExitCode.EXECUTION_FAILED)
    assert record.result["error"] == {
        "cell_index": 5,
        "execution_count": 5,
        "ename": "ValueError",
        "evalue": "threshold 3 is too low",
    }
    assert record.result["verdict"] == "cell 6 (In [5]) raised ValueError: threshold 3 is too low"
    assert "ValueError" in record.html_path.read_text()
    assert verify_reports(reports).ok


@pytest.mark.notebook
@pytest.mark.usefixtures("hostile_kernelspec")
def test_a_blocked_cell_times_out_and_is_archived(reports: Path) -> None:
    # The cell waits on an event nothing sets, right after the parameters: whatever the machine's
    # load, it is that cell, and only it, that reaches the timeout.
    record = execute_notebook("01", {"outcome": "block"}, reports_dir=reports, cell_timeout=6)

    assert (record.status, record.exit_code) == ("timeout", ExitCode.EXECUTION_FAILED)
    assert record.result["error"] == {
        "cell_index": 3,
        "ename": "CellTimeoutError",
        "evalue": "the cell did not finish within 6 s",
    }
    assert record.result["verdict"] == "cell 4 did not finish within 6 s"
    assert "Timed out" in record.summary_path.read_text()
    assert verify_reports(reports).ok


@pytest.mark.notebook
@pytest.mark.usefixtures("hostile_kernelspec")
def test_a_notebook_without_a_result_record_is_an_error(reports: Path) -> None:
    record = execute_notebook("01", {"outcome": "silent"}, reports_dir=reports)

    assert (record.status, record.exit_code) == ("error", ExitCode.EXECUTION_FAILED)
    assert record.result["error"]["ename"] == "ResultMissing"


@pytest.mark.notebook
@pytest.mark.usefixtures("hostile_kernelspec")
def test_cli_run_reports_a_problem_with_exit_3(reports: Path) -> None:
    result = CliRunner().invoke(
        _cli(),
        [
            "run",
            "01_outcomes",
            "-p",
            "outcome",
            "problem",
            "-p",
            "user_ids",
            "u1,u2",
            "--reports-dir",
            str(reports),
        ],
    )

    assert result.exit_code == ExitCode.PROBLEM_FOUND, result.output
    run_dir = list_executions(reports)[0].dir
    assert result.stdout.splitlines() == [
        "✘ problem: 2 users, label None",
        f"status: problem; archived in {reports / run_dir}",
    ]
    assert "Executing notebook with kernel: python3" in result.stderr
    assert "Executing Cell 5" in result.stderr
    # The verdict cell raised ProblemFound on purpose: a problem, archived as one, not a failed cell.
    archived = json.loads((reports / run_dir / "01_outcomes.result.json").read_text())
    assert (archived["status"], archived["exit_code"], archived["error"]) == ("problem", 3, None)
    executed = (reports / run_dir / "01_outcomes.ipynb").read_text()
    assert "ProblemFound: problem: 2 users, label None" in executed
    assert "papermill-error-cell-tag" not in executed


@pytest.mark.notebook
@pytest.mark.usefixtures("hostile_kernelspec")
def test_no_archived_file_or_log_line_holds_the_database_password(
    reports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POTATO_DATABASE_URL", URL)

    result = CliRunner().invoke(_cli(), ["run", "02_leaky", "--reports-dir", str(reports)])

    assert result.exit_code == ExitCode.EXECUTION_FAILED, result.output
    assert SECRET not in result.output
    assert "connecting to postgresql+psycopg://ops:***@localhost/x" in result.stderr
    files = _files_under(reports)
    assert len(files) == 8  # five files of the run, index.jsonl, index.html, the lock file
    for name, data in files.items():
        assert SECRET.encode() not in data, name
    run = list_executions(reports)[0]
    archived = json.loads((reports / run.dir / "02_leaky.result.json").read_text())
    assert archived["status"] == "error"
    assert archived["error"]["evalue"] == (
        "could not connect to postgresql+psycopg://ops:***@localhost/x with '***'"
    )
    notebook = (reports / run.dir / "02_leaky.ipynb").read_text()
    assert "password: ***" in notebook


@pytest.mark.notebook
@pytest.mark.usefixtures("hostile_kernelspec")
def test_a_secret_that_cannot_be_scrubbed_fails_the_run_closed(
    reports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POTATO_DATABASE_URL", URL)

    with pytest.raises(SecretLeakError, match=r"02_leaky\.ipynb would hold a secret") as caught:
        execute_notebook("02_leaky", {"encode": "yes"}, reports_dir=reports)

    assert SECRET not in str(caught.value)
    assert _files_under(reports) == {}


# -- the command line without a kernel -----------------------------------------------------------


def test_cli_run_list_shows_notebooks_and_parameters() -> None:
    result = CliRunner().invoke(_cli(), ["run", "--list"])

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "01_outcomes: Outcomes"
    assert "    label: str | None = None  # optional label shown in the verdict" in lines
    assert "02_leaky: Leaky" in lines


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-p", "nope", "1"], ExitCode.INVALID_PARAMETERS, "error: unknown parameter 'nope'"),
        (["-p", "threshold", "x"], ExitCode.INVALID_PARAMETERS, "threshold = 'x' is not valid"),
        (["-p", "threshold"], ExitCode.USAGE, "takes two values: NAME VALUE"),
    ],
    ids=["unknown", "wrong-type", "missing-value"],
)
def test_cli_run_refusals_are_one_line_and_an_exit_code(
    reports: Path, args: list[str], code: int, message: str
) -> None:
    result = CliRunner().invoke(_cli(), ["run", "01", "--reports-dir", str(reports), *args])

    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output
    assert not reports.exists()


def test_every_command_and_option_has_help() -> None:
    from typer.main import get_command

    group = get_command(_cli())
    commands: list[Any] = []
    pending: list[Any] = [group]
    while pending:
        command = pending.pop()
        commands.append(command)
        pending.extend(getattr(command, "commands", {}).values())
    names = sorted(c.name for c in commands if c is not group)
    assert names == ["keygen", "list", "reports", "run", "verify"]
    for command in commands:
        if command is group:
            continue
        assert command.help, command.name
        for param in command.params:
            if param.name != "help":
                assert getattr(param, "help", None), f"{command.name} {param.name}"


@pytest.mark.notebook
def test_a_run_with_defaults_that_need_a_user_is_refused_naming_the_parameter(
    reports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POTATO_OPS_NOTEBOOKS_DIR", str(Path(__file__).parent.parent / "notebooks"))
    result = CliRunner().invoke(_cli(), ["run", "01_single_user_recovery", "--reports-dir", str(reports)])

    assert result.exit_code == ExitCode.INVALID_PARAMETERS, result.output
    first = result.stdout.splitlines()[0]
    assert first.startswith("✘ parameters refused: no user chosen") and "set user_email or user_id" in first
    run_dir = list_executions(reports)[0].dir
    archived = json.loads((reports / run_dir / "01_single_user_recovery.result.json").read_text())
    assert (archived["status"], archived["exit_code"]) == ("refused", ExitCode.INVALID_PARAMETERS)
