"""Notebook parameters: read a notebook's ``parameters`` cell, and check values against it.

``notebook_parameters`` lists what a notebook declares (name, type, default, help comment);
``check_parameters`` coerces raw values (text from a command line, or Python values) to the
declared types and refuses unknown names, wrong types and URLs holding a password, so a bad
parameter fails before any kernel starts.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import papermill

from potato_ops.config import mask_secrets
from potato_ops.errors import NotebookError, NotebookParameterError
from potato_ops.redact import url_passwords

_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")
_NONE = ("none", "null")


@dataclass(frozen=True)
class ParameterInfo:
    """One parameter of a notebook: its name, declared type, default literal and help text."""

    name: str
    type_name: str
    default: str
    help: str


def read_notebook(path: Path) -> Any:
    """Return the notebook at ``path`` as an nbformat v4 node; NotebookError if unreadable."""
    try:
        return nbformat.read(str(path), as_version=4)  # type: ignore[no-untyped-call]
    except (OSError, ValueError) as exc:
        raise NotebookError(f"cannot read notebook {path}: {exc}") from exc


def notebook_parameters(path: Path) -> list[ParameterInfo]:
    """Return the parameters declared in the notebook's ``parameters`` cell, in cell order."""
    try:
        inspected: dict[str, dict[str, Any]] = papermill.inspect_notebook(str(path))
    except Exception as exc:  # papermill raises plain exceptions on unreadable notebooks
        raise NotebookError(f"cannot inspect notebook {path}: {exc}") from exc
    declared = _declared_parameters(path)
    names = list(declared) + [n for n in inspected if n not in declared]
    found: list[ParameterInfo] = []
    for name in names:
        seen = inspected.get(name, {})
        annotation, default_src, help_text = declared.get(name, ("", "", ""))
        default_src = default_src or str(seen.get("default", ""))
        type_name = annotation or str(seen.get("inferred_type_name", "None"))
        if type_name == "None":
            type_name = _type_of_literal(default_src)
        found.append(ParameterInfo(name, type_name, default_src, help_text or seen.get("help", "")))
    return found


def _declared_parameters(path: Path) -> dict[str, tuple[str, str, str]]:
    """Return name -> (annotation, default source, help) read from the parameters cell."""
    cell = next(
        (c for c in read_notebook(path).cells if "parameters" in c.get("metadata", {}).get("tags", [])),
        None,
    )
    if cell is None or cell.cell_type != "code":
        return {}
    return declared_in_source(str(cell.source), path.name)


def declared_in_source(source: str, where: str) -> dict[str, tuple[str, str, str]]:
    """Return name -> (annotation, default source, help) read from a parameters cell's source."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise NotebookError(f"the parameters cell of {where} is not valid Python: {exc}") from exc
    lines = source.splitlines()
    declared: dict[str, tuple[str, str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            target, annotation = node.target.id, ast.unparse(node.annotation)
        elif (
            isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        ):
            target, annotation = node.targets[0].id, ""
        else:
            continue
        if node.value is None:
            continue
        default_src = ast.get_source_segment(source, node.value) or ""
        tail = lines[(node.end_lineno or node.lineno) - 1][node.end_col_offset or 0 :]
        comment = tail.strip()
        help_text = comment.lstrip("#").strip() if comment.startswith("#") else ""
        declared[target] = (annotation.strip("'\""), default_src, help_text)
    return declared


def _type_of_literal(source: str) -> str:
    try:
        value = ast.literal_eval(source)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return "any"
    if value is None:
        return "any"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "list[str]"
    return type(value).__name__


@dataclass(frozen=True)
class _ParamType:
    base: str  # int, float, bool, str, list, dict or any
    item: _ParamType | None = None
    optional: bool = False

    def __str__(self) -> str:
        text = f"list[{self.item}]" if self.base == "list" and self.item else self.base
        return f"{text} | None" if self.optional and self.base != "any" else text


_ANY = _ParamType("any", optional=True)
_ALIASES = {"List": "list", "Sequence": "list", "tuple": "list", "Dict": "dict", "Mapping": "dict"}


def _parse_type(type_name: str) -> _ParamType:
    try:
        node = ast.parse(type_name, mode="eval").body
    except SyntaxError:
        return _ANY
    return _type_of_node(node) or _ANY


def _type_of_node(node: ast.expr) -> _ParamType | None:
    if isinstance(node, ast.Constant):
        if node.value is None:
            return _ParamType("none")
        return _parse_type(node.value) if isinstance(node.value, str) else None
    if isinstance(node, ast.Name | ast.Attribute):
        name = node.id if isinstance(node, ast.Name) else node.attr
        name = _ALIASES.get(name, name)
        if name in ("int", "float", "bool", "str", "dict"):
            return _ParamType(name)
        if name == "list":
            return _ParamType("list", item=_ANY)
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([node.left, node.right])
    if isinstance(node, ast.Subscript):
        outer = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        outer = _ALIASES.get(outer, outer)
        if outer == "Optional":
            return _union([*args, ast.Constant(None)])
        if outer == "Union":
            return _union(args)
        if outer == "list":
            return _ParamType("list", item=_type_of_node(args[0]) or _ANY)
        if outer == "dict":
            return _ParamType("dict")
    return None


def _union(members: list[ast.expr]) -> _ParamType | None:
    kinds = [_type_of_node(m) for m in members]
    optional = any(k is not None and k.base == "none" for k in kinds)
    rest = [k for k in kinds if k is None or k.base != "none"]
    if len(rest) != 1 or rest[0] is None:
        return None
    return _ParamType(rest[0].base, rest[0].item, optional)


def check_parameters(path: Path, raw: Mapping[str, object]) -> dict[str, object]:
    """Return the parameters coerced to the notebook's declared types, or raise before running.

    Raises NotebookParameterError for an unknown name, a value of the wrong type, or a value
    holding a URL with a password (notebooks take the name of an environment variable instead).
    """
    declared = {p.name: p for p in notebook_parameters(path)}
    unknown = [name for name in raw if name not in declared]
    if unknown:
        valid = ", ".join(declared) if declared else "none: this notebook takes no parameters"
        plural = "s" if len(unknown) > 1 else ""
        raise NotebookParameterError(
            f"unknown parameter{plural} {', '.join(map(repr, unknown))} for {path.stem}; "
            f"valid parameters: {valid}"
        )
    checked: dict[str, object] = {}
    for name, value in raw.items():
        kind = _parse_type(declared[name].type_name)
        coerced = _coerce(name, value, kind)
        _refuse_secrets(name, coerced)
        checked[name] = coerced
    return checked


def _refused(name: str, kind: _ParamType, value: object) -> NotebookParameterError:
    shown = mask_secrets(value if isinstance(value, str) else repr(value))
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return NotebookParameterError(f"parameter {name!r} expects {kind}, got {shown!r}")


def _coerce(name: str, value: object, kind: _ParamType) -> object:
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE and kind.optional):
        if kind.optional:
            return None
        raise _refused(name, kind, value)
    if isinstance(value, str):
        return _from_text(name, value, kind)
    return _from_value(name, value, kind)


def _from_text(name: str, text: str, kind: _ParamType) -> object:
    stripped = text.strip()
    try:
        if kind.base == "int":
            return int(stripped)
        if kind.base == "float":
            number = float(stripped)
            if not math.isfinite(number):
                raise ValueError(stripped)
            return number
        if kind.base == "bool":
            if stripped.lower() in _TRUE:
                return True
            if stripped.lower() in _FALSE:
                return False
            raise ValueError(stripped)
        if kind.base == "list":
            if stripped.startswith("["):
                return _from_value(name, json.loads(stripped), kind)
            items = [part.strip() for part in stripped.split(",") if part.strip()]
            return [_coerce(name, item, kind.item or _ANY) for item in items]
        if kind.base == "dict":
            loaded = json.loads(stripped)
            if not isinstance(loaded, dict):
                raise ValueError(stripped)
            return loaded
    except ValueError:
        raise _refused(name, kind, text) from None
    return text


def _from_value(name: str, value: object, kind: _ParamType) -> object:
    base = kind.base
    if base == "any":
        return value
    if base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return _from_text(name, str(value), kind)
    if (base == "bool" and isinstance(value, bool)) or (base == "str" and isinstance(value, str)):
        return value
    if base == "list" and isinstance(value, list | tuple):
        try:
            return [_coerce(name, v, kind.item or _ANY) for v in value]
        except NotebookParameterError:
            raise _refused(name, kind, value) from None
    if base == "dict" and isinstance(value, dict):
        return value
    raise _refused(name, kind, value)


def _refuse_secrets(name: str, value: object) -> None:
    texts: list[str] = []
    if isinstance(value, str):
        texts.append(value)
    elif isinstance(value, list):
        texts.extend(v for v in value if isinstance(v, str))
    elif isinstance(value, dict):
        texts.extend(v for v in value.values() if isinstance(v, str))
    if any(url_passwords(text) for text in texts):
        raise NotebookParameterError(
            f"parameter {name!r} holds a URL with a password; notebooks never take secrets as "
            "parameters: put the URL in an environment variable and pass the variable's name "
            "(for example database_url_env=POTATO_DATABASE_URL)"
        )
