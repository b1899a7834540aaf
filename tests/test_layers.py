"""The package's shape: every import points down the layer order, and no import cycle exists.

Imports are read from the source at any depth (inside functions too); only those under
``if TYPE_CHECKING:`` are left out, as they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "potato_ops"

# Lowest first. A module may import from its own layer and from any layer below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "config", "redact", "exitcodes")),
    ("domain", ("domain",)),
    ("database", ("db",)),
    ("operations", ("ops",)),
    ("services", ("monitoring", "notebook_runs", "demo")),
    ("facade", ("storage", "__init__")),  # Storage and the public names
    ("runbook", ("runbook", "charts")),
    ("surfaces", ("cli", "__main__")),
]


def layer_of(module: str) -> int:
    """Return the layer index of a dotted module name inside the package."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    for index, (_, tops) in enumerate(LAYERS):
        if head in tops:
            return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _type_checking_block(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> set[str]:
    """Return the package modules this file imports, at any depth, TYPE_CHECKING blocks aside."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_block(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "potato_ops")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] == "potato_ops":
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if _is_module(candidate) else base)
        for sub in ast.iter_child_nodes(node):
            visit(sub)

    visit(tree)
    found.discard(me)
    return found


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def package_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_import_points_down_the_layers() -> None:
    wrong = []
    for module, targets in package_graph().items():
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                here, there = LAYERS[layer_of(module)][0], LAYERS[layer_of(target)][0]
                wrong.append(f"{module} ({here}) imports {target} ({there})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle as a path of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    graph = package_graph()
    # A package's __init__ importing its own submodules is how a package is made, not a cycle.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not t.startswith(module + ".")}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_nothing_below_the_runbook_layer_imports_storage() -> None:
    runbook = [name for name, _ in LAYERS].index("runbook")
    users = [m for m, t in package_graph().items() if "potato_ops.storage" in t and layer_of(m) < runbook]
    assert users == []


SURFACE_FILES = sorted(
    [
        *(PACKAGE / "runbook").rglob("*.py"),
        *(PACKAGE / "cli").rglob("*.py"),
        *(PACKAGE.parent / "notebooks").glob("*.py"),
    ]
)
BEHIND_THE_DOOR = ("potato_ops.ops", "potato_ops.db")


def reaches_past_storage(path: Path) -> list[str]:
    """Return the modules of ops/ or db/ that this file imports at run time."""
    return sorted(
        t for t in imports_of(path) if any(t == p or t.startswith(p + ".") for p in BEHIND_THE_DOOR)
    )


def test_the_surfaces_go_through_storage_and_the_public_names() -> None:
    assert SURFACE_FILES, "no surface files found"
    wrong = {
        str(p.relative_to(PACKAGE.parent)): found for p in SURFACE_FILES if (found := reaches_past_storage(p))
    }
    assert wrong == {}, "runbook/, cli/ and notebooks/ reach ops/ or db/ past Storage"


def test_a_surface_reaching_past_storage_is_seen() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from potato_ops.db.schema import runs\n"
        "def f():\n    from potato_ops.ops import scan\n    return scan\n"
    )
    path = PACKAGE / "runbook" / "_door_probe.py"
    path.write_text(source)
    try:
        assert reaches_past_storage(path) == ["potato_ops.ops.scan"]
    finally:
        path.unlink()


@pytest.mark.parametrize(
    ("graph", "cyclic"),
    [
        pytest.param({"a": {"b"}, "b": {"c"}, "c": set()}, False, id="chain"),
        pytest.param({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True, id="three-cycle"),
        pytest.param({"a": {"a2"}, "a2": {"b"}, "b": {"a2"}}, True, id="two-cycle"),
    ],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], cyclic: bool) -> None:
    assert (find_cycle(graph) is not None) is cyclic


def test_an_upward_import_inside_a_function_is_seen(tmp_path: Path) -> None:
    source = "def f():\n    from potato_ops.storage import Storage\n    return Storage\n"
    path = PACKAGE / "domain" / "_layer_probe.py"
    path.write_text(source)
    try:
        assert "potato_ops.storage" in imports_of(path)
        assert layer_of("potato_ops.storage") > layer_of(module_name(path))
    finally:
        path.unlink()


# What builds SQL: SQLAlchemy's statement and expression constructors. Types, the engine, the
# connection and ``sqlalchemy.exc`` build none; a module outside db/ may use those.
QUERY_BUILDING = frozenset(
    {
        "text", "select", "insert", "update", "delete", "bindparam", "func", "and_", "or_", "not_",
        "case", "cast", "exists", "literal", "literal_column", "column", "table", "join", "outerjoin",
        "union", "union_all", "except_", "intersect", "distinct", "null", "true", "false", "tuple_",
        "type_coerce", "values", "lateral", "over", "within_group", "inspect", "TextClause",
        "ColumnElement", "Select",
    }
)  # fmt: skip
SQL_MODULES = ("sqlalchemy.sql", "sqlalchemy.sql.expression", "sqlalchemy.dialects", "sqlalchemy.schema")
STATEMENT_HOME = PACKAGE / "db"


def sql_built_in(path: Path) -> list[str]:
    """Return what this file uses to build SQL at run time (TYPE_CHECKING blocks aside)."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_block(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            # ``import sqlalchemy`` (as sa) reaches every constructor through the module.
            found.extend(f"import {a.name}" for a in node.names if a.name in ("sqlalchemy", *SQL_MODULES))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            module = node.module or ""
            for alias in node.names:
                if alias.name in QUERY_BUILDING or module.startswith(SQL_MODULES):
                    found.append(f"from {module} import {alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr == "exec_driver_sql":
            found.append("exec_driver_sql")
        for sub in ast.iter_child_nodes(node):
            visit(sub)

    visit(tree)
    return found


def test_no_sql_is_built_outside_db() -> None:
    wrong = [
        f"{module_name(path)}: {what}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if STATEMENT_HOME not in path.parents
        for what in sql_built_in(path)
    ]
    assert not wrong, (
        "SQL built outside potato_ops/db/ (move the statement into a db/ module):\n" + "\n".join(wrong)
    )


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        pytest.param("from sqlalchemy import select\n", True, id="select"),
        pytest.param("import sqlalchemy as sa\n", True, id="module"),
        pytest.param("def f(c):\n    from sqlalchemy import text\n    return c\n", True, id="in-function"),
        pytest.param("def f(c):\n    c.exec_driver_sql('SELECT 1')\n", True, id="driver-sql"),
        pytest.param("from sqlalchemy.exc import SQLAlchemyError\n", False, id="exc"),
        pytest.param(
            "if TYPE_CHECKING:\n    from sqlalchemy import Connection, select\n", False, id="typing"
        ),
    ],
)
def test_the_sql_finder_sees_query_building(tmp_path: Path, source: str, caught: bool) -> None:
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert bool(sql_built_in(path)) is caught
