"""The runbook layer composes engine calls: it runs no SQL and re-derives no engine rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "potato_ops"
STEPS = sorted([*(PACKAGE / "runbook").glob("*.py"), *(PACKAGE / "charts").glob("*.py")])
# A module listed here is known to break the rule (strict xfail: the test fails once it is fixed).
KNOWN: dict[str, str] = {}

# What a runbook step may not reach for: statements and connections (SQL is the engine's job),
# and the rules whose results the engine reports (the active flag, the expected runs).
FORBIDDEN_MODULES = ("sqlalchemy", "potato_ops.db.engine", "potato_ops.db.reads")
ALLOWED_MODULES = ("sqlalchemy.exc",)  # catching a connection failure is not running SQL
FORBIDDEN_NAMES = {
    ("potato_ops.domain.runs", "should_be_active"),
    ("potato_ops.domain.runs", "expected_runs"),
}


def reaches(path: Path) -> list[str]:
    """Return the forbidden imports of one module, as 'module' or 'module.name'."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
            names: list[tuple[str, str]] = []
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
            names = [(node.module, a.name) for a in node.names]
        else:
            continue
        for m in modules:
            if m.startswith(FORBIDDEN_MODULES) and not m.startswith(ALLOWED_MODULES):
                found.append(m)
        found.extend(f"{m}.{n}" for m, n in names if (m, n) in FORBIDDEN_NAMES)
    return found


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from sqlalchemy import select\nfrom sqlalchemy.exc import SQLAlchemyError\n"
        "def f():\n    from potato_ops.domain.runs import should_be_active\n"
    )
    assert reaches(bad) == ["sqlalchemy", "potato_ops.domain.runs.should_be_active"]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            p,
            id=f"{p.parent.name}/{p.name}",
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN[p.name])] if p.name in KNOWN else [],
        )
        for p in STEPS
    ],
)
def test_runbook_steps_hold_no_sql_and_no_copy_of_an_engine_rule(path: Path) -> None:
    assert reaches(path) == []
