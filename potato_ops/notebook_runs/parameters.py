"""Notebook parameters: what a notebook declares, and the one parser of their values.

``notebook_parameters`` lists what a notebook's ``parameters`` cell declares (name, type,
default, help comment), read once per file content. ``parse_value`` is the one reading of a raw
value (text from a command line or ``papermill -r``, or a Python value) as a declared type,
with the bounds in ``LIMITS``: ``check_parameters`` (``potato-ops run``, before any kernel
starts) and the runbook's own validation cell (``potato_ops.runbook.params``) both use it, so
they accept exactly the same values.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from potato_ops.config import DATABASE_URL_ENV, database_url_in, mask_secrets
from potato_ops.errors import ConfigError, NotebookError, NotebookParameterError
from potato_ops.notebook_runs.confirm import CONFIRM, unconfirmed_live_run
from potato_ops.redact import url_passwords

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
NONE_WORDS = ("none", "null")
_WHOLE_NUMBER = re.compile(r"\s*[+-]?\d+\s*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Bounds of the numeric parameters, by name, wherever they appear: the same name means the same
# thing in every notebook, and both the pre-run check and the notebook's own cell enforce these.
LIMITS: dict[str, tuple[float | None, float | None]] = {
    "backup_id": (0, None),
    "batch_size": (1, None),
    "calendar_days": (7, 36600),  # up to a century of history in one chart
    "many_marks": (1, None),
    "batch_seconds": (0.0, None),
    "max_active_sessions": (0, None),
    "max_batch_size": (0, None),
    "max_failure_rate": (0.0, 1.0),
    "max_workers": (1, None),
    "min_batch_size": (1, None),
    "nice_ratio": (0.0, 100.0),
    "recent_days": (1, None),
    "slow_threshold_ms": (0.0, None),
    "still_slow_ms": (0.0, None),
    "top_slow_users": (1, None),
}


@dataclass(frozen=True)
class ParameterInfo:
    """One parameter of a notebook: its name, declared type, default literal and help text."""

    name: str
    type_name: str
    default: str
    help: str


# -- what a notebook declares --------------------------------------------------------------------


@dataclass(frozen=True)
class _Declared:
    title: str
    parameters: tuple[ParameterInfo, ...]


_DECLARED: dict[tuple[Path, str], _Declared] = {}


def notebook_parameters(path: Path) -> list[ParameterInfo]:
    """Return the parameters declared in the notebook's ``parameters`` cell, in cell order.

    Read once per file content (keyed by its SHA-256), so listing notebooks and checking a
    run's parameters do not parse the same file twice.
    """
    return list(_declared(path).parameters)


def notebook_title(path: Path) -> str:
    """Return the first line of the notebook's first markdown cell, without its ``#``."""
    return _declared(path).title


def _declared(path: Path) -> _Declared:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NotebookError(f"cannot read notebook {path}: {exc}") from exc
    key = (path.resolve(), hashlib.sha256(data).hexdigest())
    if key not in _DECLARED:
        cells = _cells(path, data)
        _DECLARED[key] = _Declared(_title(cells), tuple(_declared_parameters(path, cells)))
    return _DECLARED[key]


def _cells(path: Path, data: bytes) -> list[dict[str, Any]]:
    try:
        cells = json.loads(data)["cells"]
    except (ValueError, KeyError, TypeError) as exc:
        raise NotebookError(f"cannot read notebook {path}: {exc}") from exc
    if not isinstance(cells, list):
        raise NotebookError(f"cannot read notebook {path}: its cells are not a list")
    return cells


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _title(cells: list[dict[str, Any]]) -> str:
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for line in _source(cell).splitlines():
                if line.strip():
                    return line.strip().lstrip("#").strip()
    return ""


def _parameters_cell(cells: list[dict[str, Any]]) -> str | None:
    """Return the source of the cell tagged ``parameters``, or None."""
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []) and cell.get("cell_type") == "code":
            return _source(cell)
    return None


def _declared_parameters(path: Path, cells: list[dict[str, Any]]) -> list[ParameterInfo]:
    source = _parameters_cell(cells)
    if source is None:
        return []
    return declared_in_source(source, path.name)


def declared_in_source(source: str, where: str) -> list[ParameterInfo]:
    """Return the parameters declared in a parameters cell's source, in order."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise NotebookError(f"the parameters cell of {where} is not valid Python: {exc}") from exc
    lines = source.splitlines()
    found: list[ParameterInfo] = []
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            target, annotation = node.target.id, ast.unparse(node.annotation).strip("'\"")
        elif (
            isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        ):
            target, annotation = node.targets[0].id, ""
        else:
            continue
        if node.value is None:
            continue
        default_src = ast.get_source_segment(source, node.value) or ""
        tail = lines[(node.end_lineno or node.lineno) - 1][node.end_col_offset or 0 :].strip()
        help_text = tail.lstrip("#").strip() if tail.startswith("#") else ""
        found.append(
            ParameterInfo(target, annotation or _type_of_literal(default_src), default_src, help_text)
        )
    return found


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


# -- declared types ------------------------------------------------------------------------------


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


# -- the one parser ------------------------------------------------------------------------------


def _expected(kind: _ParamType, name: str) -> str:
    lo, hi = LIMITS.get(name, (None, None))
    if kind.base == "bool":
        text = "True or False (also true/false, yes/no, on/off, 1/0)"
    elif kind.base in ("int", "float"):
        text = "a whole number" if kind.base == "int" else "a number"
        if lo is not None and hi is not None:
            text += f" between {lo} and {hi}"
        elif lo is not None:
            text += f" >= {lo}"
    elif kind.base == "list":
        text = "a list of strings, or strings separated by commas"
    elif kind.base == "str":
        text = "text"
    else:
        text = str(kind)
    return f"{text} or None" if kind.optional and kind.base != "any" else text


def _refused(name: str, kind: _ParamType, value: object) -> NotebookParameterError:
    shown = mask_secrets(value if isinstance(value, str) else repr(value))
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return NotebookParameterError(
        f"parameter {name} = {shown!r} is not valid: expected {_expected(kind, name)}"
    )


def parse_value(name: str, value: object, type_name: str) -> object:
    """Return ``value`` read as ``type_name`` (a parameter annotation), within ``LIMITS[name]``.

    Text is read as the type (``"on"`` as True, ``"5"`` as 5, ``"a,b"`` or ``'["a"]'`` as a
    list); Python values must already be of the type (ints pass for floats, 0 and 1 for bools,
    whole numbers for text, since ``papermill -p`` turns digits into numbers). Strings are
    stripped. Raises NotebookParameterError naming the parameter, the value (secrets masked)
    and what would be accepted.
    """
    kind = _parse_type(type_name)
    parsed = _coerce(name, value, kind)
    if isinstance(parsed, int | float) and not isinstance(parsed, bool) and _out_of_bounds(name, parsed):
        raise _refused(name, kind, value)
    return parsed


def _out_of_bounds(name: str, number: float) -> bool:
    lo, hi = LIMITS.get(name, (None, None))
    return (lo is not None and number < lo) or (hi is not None and number > hi)


def _coerce(name: str, value: object, kind: _ParamType) -> object:
    if value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS and kind.optional):
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
            if not _WHOLE_NUMBER.fullmatch(stripped):
                raise ValueError(stripped)
            return int(stripped)
        if kind.base == "float":
            number = float(stripped)
            if not math.isfinite(number):
                raise ValueError(stripped)
            return number
        if kind.base == "bool":
            if stripped.lower() in TRUE_WORDS:
                return True
            if stripped.lower() in FALSE_WORDS:
                return False
            raise ValueError(stripped)
        if kind.base == "list":
            if stripped.startswith("["):
                return _from_value(name, json.loads(stripped), kind)
            return _unique([_coerce(name, part, kind.item or _ANY) for part in stripped.split(",")])
        if kind.base == "dict":
            loaded = json.loads(stripped)
            if not isinstance(loaded, dict):
                raise ValueError(stripped)
            return loaded
    except (ValueError, NotebookParameterError):
        raise _refused(name, kind, text) from None
    return stripped


def _from_value(name: str, value: object, kind: _ParamType) -> object:
    base = kind.base
    whole = isinstance(value, int) and not isinstance(value, bool)
    if base == "any":
        return value
    if base == "int" and whole:
        return value
    if base == "float" and (whole or isinstance(value, float)):
        return _from_text(name, str(value), kind)
    if base == "bool" and (isinstance(value, bool) or (whole and value in (0, 1))):
        return bool(value)
    if base == "str" and (isinstance(value, str) or whole):
        return str(value).strip()
    if base == "list" and isinstance(value, list | tuple):
        try:
            return _unique([_coerce(name, v, kind.item or _ANY) for v in value])
        except NotebookParameterError:
            raise _refused(name, kind, value) from None
    if base == "dict" and isinstance(value, dict):
        return value
    raise _refused(name, kind, value)


def _unique(items: list[object]) -> list[object]:
    """Return the items without empty strings and repeats, in order."""
    found: list[object] = []
    for item in items:
        if item != "" and item not in found:
            found.append(item)
    return found


def check_parameters(path: Path, raw: Mapping[str, object]) -> dict[str, object]:
    """Return the parameters read as the notebook's declared types, or raise before running.

    Raises NotebookParameterError for an unknown name, a value ``parse_value`` refuses, or a
    value holding a URL with a password (notebooks take the name of an environment variable).
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
        parsed = parse_value(name, value, declared[name].type_name)
        refuse_secrets(name, parsed)
        checked[name] = parsed
    url_env = checked.get("database_url_env")
    if isinstance(url_env, str) and _ENV_NAME.fullmatch(url_env):
        try:
            database_url_in(url_env)
        except ConfigError as exc:
            raise NotebookParameterError(f"parameter database_url_env: {exc}") from None
    if CONFIRM in declared:
        _refuse_unconfirmed(declared, checked)
    return checked


def _refuse_unconfirmed(declared: Mapping[str, ParameterInfo], checked: Mapping[str, object]) -> None:
    """Raise NotebookParameterError for a live run whose ``confirm`` does not name the database."""

    def value(name: str) -> object:
        if name in checked:
            return checked[name]
        info = declared.get(name)
        return parse_value(name, ast.literal_eval(info.default), info.type_name) if info else None

    env_var = value("database_url_env")
    why = unconfirmed_live_run(
        bool(value("dry_run")),
        value(CONFIRM),
        env_var if isinstance(env_var, str) and env_var else DATABASE_URL_ENV,
    )
    if why:
        raise NotebookParameterError(why)


def refuse_secrets(name: str, value: object) -> None:
    """Raise NotebookParameterError when the value holds a URL with a password."""
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
