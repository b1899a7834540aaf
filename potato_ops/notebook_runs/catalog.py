"""The runbook notebooks on disk: where they are, how a name finds one, and what each takes.

Light on purpose: ``potato-ops run --list`` and the parameter check before a run import this
module only, never nbformat, papermill or a kernel.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from potato_ops.errors import NotebookError
from potato_ops.notebook_runs.parameters import ParameterInfo, notebook_parameters, notebook_title

NOTEBOOKS_DIR_ENV = "POTATO_OPS_NOTEBOOKS_DIR"


@dataclass(frozen=True)
class NotebookInfo:
    """A runbook notebook found in the notebooks folder."""

    name: str
    path: Path
    parameters: tuple[ParameterInfo, ...]
    title: str = ""


def notebooks_dir() -> Path:
    """Return the notebooks folder.

    $POTATO_OPS_NOTEBOOKS_DIR, else the checkout the package runs from (an editable install),
    else the copy installed with the package (<prefix>/share/potato-ops/notebooks), else
    ./notebooks.
    """
    configured = os.environ.get(NOTEBOOKS_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    candidates = (
        Path(__file__).resolve().parents[2] / "notebooks",
        Path(sys.prefix) / "share" / "potato-ops" / "notebooks",
        Path("notebooks").resolve(),
    )
    for candidate in candidates:
        if _notebook_paths(candidate):
            return candidate
    return candidates[-1]


def _notebook_paths(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.ipynb") if p.is_file() and not p.name.startswith("."))


def resolve_notebook(name: str | os.PathLike[str]) -> Path:
    """Return the notebook's path from a name (``03_bulk_recovery[.ipynb]``), number or path."""
    text = os.fspath(name)
    as_path = Path(text).expanduser()
    if as_path.is_file() and (as_path.suffix == ".ipynb" or len(as_path.parts) > 1):
        return as_path.resolve()
    directory = notebooks_dir()
    available = _notebook_paths(directory)
    stem = as_path.name.removesuffix(".ipynb")
    matches = [p for p in available if p.stem == stem]
    if not matches:
        matches = [p for p in available if p.stem.startswith(f"{stem}_")]
    if len(matches) == 1:
        return matches[0]
    if not available:
        raise NotebookError(f"no notebook {text!r}: {directory} holds no notebooks (set {NOTEBOOKS_DIR_ENV})")
    names = ", ".join(p.stem for p in (matches or available))
    if matches:
        raise NotebookError(f"{text!r} matches several notebooks: {names}")
    raise NotebookError(f"no notebook {text!r} in {directory}; available: {names}")


def list_notebooks() -> list[NotebookInfo]:
    """Return every notebook of the notebooks folder with its parameters, sorted by name."""
    return [
        NotebookInfo(path.stem, path, tuple(notebook_parameters(path)), notebook_title(path))
        for path in _notebook_paths(notebooks_dir())
    ]
