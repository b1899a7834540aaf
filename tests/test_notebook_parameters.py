"""One parameter parser: ``potato-ops run``'s check and the notebook's own cell agree on every value.

Each raw value goes through both paths: ``check_parameters`` (what ``potato-ops run -p NAME
VALUE`` does before a kernel starts) and the notebook's own validation cell (its ``check_*``
function, called with the notebook's defaults and that one value). Both must accept it with the
same value, or both refuse it.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest

import potato_ops.runbook.params
from potato_ops import BulkConfig
from potato_ops.errors import NotebookParameterError
from potato_ops.notebook_runs.parameters import check_parameters, notebook_parameters
from potato_ops.runbook.params import RunbookParameterError

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# A notebook that needs a user gets one, so only the value under test can be refused.
GIVEN = {"01_single_user_recovery": {"user_id": "u1"}}
REFUSED = "refused"

TABLE: list[tuple[str, str, object]] = [
    *(
        ("03_bulk_recovery", "dry_run", raw)
        for raw in (True, False, "true", "FALSE", "yes", "no", "on", "off", " on ", "1", "0", 1, 0)
    ),
    *(("03_bulk_recovery", "dry_run", raw) for raw in ("maybe", "", 2, None, 0.0)),
    *(
        ("03_bulk_recovery", "batch_size", raw)
        for raw in (5, "5", " 7 ", "0", 0, "-1", "1.5", 1.5, True, "abc", "1_000", None)
    ),
    *(
        ("03_bulk_recovery", "max_failure_rate", raw)
        for raw in (0.5, "0.5", 1, "1", "1.5", -0.1, "nan", "inf", True, "")
    ),
    *(
        ("03_bulk_recovery", "user_ids", raw)
        for raw in ("a,b", "a, b,,a", ["x"], '["x,1", "y"]', "[unclosed", [True], "", [], 7)
    ),
    *(("01_single_user_recovery", "calendar_days", raw) for raw in (7, "6", "120", 6.0)),
    *(("01_single_user_recovery", "keep_backup", raw) for raw in ("off", "YES", "nope")),
    *(("05_error_recovery", "still_slow_ms", raw) for raw in ("-1", "250.5", 10, "ten")),
    *(("07_monitoring_audit", "top_slow_users", raw) for raw in ("0", "3", 3)),
    *(("07_monitoring_audit", "scan", raw) for raw in ("on", "0", "sometimes")),
    *(("08_troubleshooting", "operator", raw) for raw in ("ana", "  ana ", 42, None, True, 1.5)),
]


def _cells(name: str) -> list[str]:
    nb: Any = nbformat.read(str(NOTEBOOKS / f"{name}.ipynb"), as_version=4)  # type: ignore[no-untyped-call]
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _through_execute_notebook(name: str, parameter: str, raw: object) -> object:
    try:
        return check_parameters(NOTEBOOKS / f"{name}.ipynb", {parameter: raw})[parameter]
    except NotebookParameterError:
        return REFUSED


def _through_the_notebook(name: str, parameter: str, raw: object) -> object:
    parameters, check = _cells(name)[:2]
    defaults: dict[str, Any] = {}
    exec(compile(parameters, name, "exec"), defaults)
    found = re.search(r"params = (check_\w+)\(", check)
    assert found, f"{name}: no check_* call in the cell after the parameters"
    function = getattr(potato_ops.runbook.params, found[1])
    arguments = {k: v for k, v in defaults.items() if not k.startswith("__")}
    try:
        checked = function(**{**arguments, **GIVEN.get(name, {}), parameter: raw})
    except RunbookParameterError:
        return REFUSED
    if parameter == "operator":
        value = checked.common.operator
    elif hasattr(checked, parameter):
        value = getattr(checked, parameter)
    else:  # 03 keeps its rebuild settings in the library's BulkConfig
        value = getattr(checked.config, parameter)
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize(("name", "parameter", "raw"), TABLE, ids=lambda v: repr(v)[:40])
def test_execute_notebook_and_the_notebook_read_a_value_alike(name: str, parameter: str, raw: object) -> None:
    executed = _through_execute_notebook(name, parameter, raw)
    notebook = _through_the_notebook(name, parameter, raw)
    assert executed == notebook
    assert type(executed) is type(notebook)


def test_the_table_has_both_outcomes_for_every_parameter() -> None:
    seen: dict[str, set[bool]] = {}
    for name, parameter, raw in TABLE:
        seen.setdefault(parameter, set()).add(_through_execute_notebook(name, parameter, raw) == REFUSED)
    assert {p: s for p, s in seen.items() if s != {True, False}} == {}


def test_on_is_accepted_by_both(monkeypatch: pytest.MonkeyPatch) -> None:
    # The case that set them apart: `-p dry_run on` was refused by one and accepted by the other.
    assert _through_execute_notebook("03_bulk_recovery", "dry_run", "on") is True
    assert _through_the_notebook("03_bulk_recovery", "dry_run", "on") is True


def _defaults(name: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(_cells(name)[0], name, "exec"), namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


@pytest.mark.parametrize("name", sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")))
def test_the_check_takes_exactly_what_the_parameters_cell_declares(name: str) -> None:
    declared = [p.name for p in notebook_parameters(NOTEBOOKS / f"{name}.ipynb")]
    check = _cells(name)[1]
    found = re.search(r"params = (check_\w+)\(", check)
    assert found, f"{name}: no check_* call in the cell after the parameters"
    signature = inspect.signature(getattr(potato_ops.runbook.params, found[1]))
    assert sorted(signature.parameters) == sorted(declared)
    passed = re.findall(r"^\s+(\w+)=(\w+),?$", check, re.MULTILINE)
    assert sorted(passed) == sorted((n, n) for n in declared), "each parameter passed once, by its name"


def test_the_bulk_notebooks_defaults_are_bulk_configs() -> None:
    # papermill needs literals in the parameters cell, so 03 restates BulkConfig's defaults.
    literals = _defaults("03_bulk_recovery")
    library = BulkConfig()
    settings = {f.name for f in dataclasses.fields(BulkConfig)}
    # "" or 0 in the cell is no bound (no date, no limit), None in BulkConfig.
    unset = {
        "from_date",
        "to_date",
        "max_replica_lag",
        "max_active_sessions",
        "batch_seconds",
        "max_batch_size",
    }
    unset |= {"window"}
    assert {k: literals[k] or None if k in unset else literals[k] for k in settings} == {
        k: getattr(library, k) for k in settings
    }
