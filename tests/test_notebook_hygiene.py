"""The committed notebooks: paired with their .py source, output-free, documented, thin, nbval-clean."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jupytext
import nbformat
import pytest
from click.testing import CliRunner
from papermill.cli import papermill as papermill_cli

from potato_ops.runbook.params import RunbookParameterError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = [
    "01_single_user_recovery",
    "02_partial_rebuild",
    "03_bulk_recovery",
    "04_timezone_migration",
    "05_error_recovery",
    "06_restore_from_backup",
    "07_monitoring_audit",
    "08_troubleshooting",
]
WRITERS = NAMES[:6]  # the notebooks that can write; 07 and 08 are read-only
PARAMETER_LINE = re.compile(
    r"^(?P<name>[a-z_][a-z0-9_]*): (?P<type>str|int|float|bool|list\[str\]) "
    r"= (?P<value>.+?)  # (?P<help>\S.*)$"
)
SQL = re.compile(
    r"\b(select\s.+\sfrom|insert\s+into|update\s+\w+\s+set|delete\s+from|(create|drop|alter)\s+table)\b",
    re.IGNORECASE | re.DOTALL,
)


def _notebook(name: str) -> Any:
    return nbformat.read(str(NOTEBOOKS / f"{name}.ipynb"), as_version=4)  # type: ignore[no-untyped-call]


def _code_cells(name: str) -> list[Any]:
    return [c for c in _notebook(name).cells if c.cell_type == "code"]


def _parameters(name: str) -> dict[str, tuple[str, str, str]]:
    found: dict[str, tuple[str, str, str]] = {}
    for line in _code_cells(name)[0].source.splitlines():
        match = PARAMETER_LINE.match(line)
        assert match, f"{name}: parameter line is not `name: type = literal  # help`: {line!r}"
        found[match["name"]] = (match["type"], match["value"], match["help"])
    return found


def test_the_notebooks_are_the_playbook_procedures_in_order() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


def _cells(nb: Any) -> list[tuple[str, str, list[str]]]:
    """Return each cell's type, source and tags: what a pair must agree on (outputs aside)."""
    return [(c.cell_type, c.source, list(c.get("metadata", {}).get("tags", []))) for c in nb.cells]


def test_every_notebook_has_its_python_source_and_nothing_else_is_there() -> None:
    sources = sorted(p.stem for p in NOTEBOOKS.glob("*.py"))
    assert sources == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_notebook_is_in_step_with_its_python_source(name: str) -> None:
    notebook = _notebook(name)
    source = jupytext.read(NOTEBOOKS / f"{name}.py")
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert _cells(source) == _cells(notebook), (
        f"{name}.ipynb and {name}.py differ: run `jupytext --sync notebooks/{name}.py` "
        "(or save it in JupyterLab, which keeps the pair in step)"
    )


def test_the_pairing_check_sees_an_edit_on_either_side(tmp_path: Path) -> None:
    name = NAMES[0]
    notebook = _notebook(name)
    notebook.cells[-1].source += "\n"
    assert _cells(jupytext.read(NOTEBOOKS / f"{name}.py")) != _cells(notebook)
    edited = tmp_path / f"{name}.py"
    edited.write_text(
        (NOTEBOOKS / f"{name}.py").read_text().replace("dry_run: bool = True", "dry_run: bool = False")
    )
    assert _cells(jupytext.read(edited)) != _cells(_notebook(name))


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs_and_with_a_python3_kernelspec(name: str) -> None:
    nb = _notebook(name)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a code cell has outputs"
            assert cell.execution_count is None, f"{name}: a code cell has an execution count"
    assert "papermill" not in nb.metadata


@pytest.mark.parametrize("name", NAMES)
def test_first_code_cell_is_the_tagged_parameters_cell_of_typed_literals(name: str) -> None:
    first = _code_cells(name)[0]
    assert "parameters" in first.metadata.get("tags", [])
    for _name, (_type, value, _help) in _parameters(name).items():
        ast.literal_eval(value)


@pytest.mark.parametrize("name", NAMES)
def test_every_notebook_takes_the_record_fields_and_a_variable_name_never_a_url(name: str) -> None:
    params = _parameters(name)
    assert params["operator"][:2] == ("str", '""')
    assert params["ticket"][:2] == ("str", '""')
    assert params["database_url_env"][:2] == ("str", '"POTATO_DATABASE_URL"')
    assert not [p for p in params if "url" in p and p != "database_url_env"]
    if name in WRITERS:
        assert params["dry_run"][:2] == ("bool", "True")
    else:
        assert "dry_run" not in params


@pytest.mark.parametrize("name", NAMES)
def test_cells_are_thin_validation_first_verdict_last(name: str) -> None:
    cells = _code_cells(name)
    assert re.search(r"params = check_\w+\(", cells[1].source), (
        f"{name}: the cell after the parameters must validate them"
    )
    assert cells[-1].source.startswith("record_result(")
    for cell in cells:
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            assert not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda), (
                name
            )
            assert not isinstance(node, ast.For | ast.While | ast.With), (
                f"{name}: loops belong in the package"
            )
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not SQL.search(node.value), f"{name}: SQL belongs in the package"
            if isinstance(node, ast.Attribute):
                assert node.attr != "execute", f"{name}: statements belong in the package"
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").startswith("potato_ops"), f"{name}: imports {node.module}"


@pytest.mark.parametrize("name", NAMES)
def test_papermill_help_documents_every_parameter(name: str) -> None:
    shown = CliRunner().invoke(papermill_cli, ["--help-notebook", str(NOTEBOOKS / f"{name}.ipynb")])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    for parameter, (type_name, _value, help_text) in _parameters(name).items():
        assert f"{parameter}: {type_name}" in text, f"{name}: {parameter} not documented"
        assert " ".join(help_text.split()) in text, f"{name}: help of {parameter} not shown"


NEED_A_USER = ("01_single_user_recovery", "02_partial_rebuild", "06_restore_from_backup")


@pytest.mark.parametrize("name", NAMES)
def test_defaults_either_pass_the_check_cell_or_stop_there_naming_the_parameter(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POTATO_DATABASE_URL", raising=False)
    namespace: dict[str, Any] = {}
    parameters, check = (cell.source for cell in _code_cells(name)[:2])
    exec(compile(parameters, f"{name}[parameters]", "exec"), namespace)
    if name in NEED_A_USER:
        with pytest.raises(RunbookParameterError, match=r"no user chosen: .*set user_email or user_id"):
            exec(compile(check, f"{name}[check]", "exec"), namespace)
        return
    exec(compile(check, f"{name}[check]", "exec"), namespace)
    shown = str(namespace["params"])
    assert "NO DATABASE CONFIGURED: $POTATO_DATABASE_URL is not set" in shown.splitlines()[1]


@pytest.mark.notebook
def test_the_committed_notebooks_pass_nbval_lax_on_the_embedded_database(tmp_path: Path) -> None:
    """As committed, with no database configured, every notebook that needs no user runs to its verdict."""
    env = {k: v for k, v in os.environ.items() if k != "POTATO_DATABASE_URL"}
    env["POTATO_OPS_HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "--nbval-current-env",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            *(str(NOTEBOOKS / f"{name}.ipynb") for name in NAMES if name not in NEED_A_USER),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
    assert (tmp_path / "home" / "potato.sqlite3").exists()  # the embedded database, created
