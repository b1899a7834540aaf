"""The Jupyter libraries execute_notebook uses, imported without jsonschema's optional IRI grammar.

When the ``rfc3987_syntax`` package is installed (JupyterLab's event schemas ask for it),
jsonschema imports it on its own import, and it compiles a lark grammar there: over a second
of every ``potato-ops run`` and ``reports`` command, for IRI format checks that nbformat's
notebook schema never makes. execute_notebook imports nbformat, papermill, nbclient and nbconvert
(and with them jsonschema) here, with that package hidden, so jsonschema leaves IRI formats
unchecked in this process; where jsonschema was loaded before, nothing changes. The package
itself stays importable afterwards.
"""

from __future__ import annotations

import sys

_IRI_GRAMMAR = "rfc3987_syntax"
_hide = _IRI_GRAMMAR not in sys.modules and "jsonschema" not in sys.modules
if _hide:
    sys.modules[_IRI_GRAMMAR] = None  # type: ignore[assignment]  # an import of it raises ImportError
try:
    import nbformat
    import papermill
    from nbclient.exceptions import CellTimeoutError
    from nbconvert import HTMLExporter
    from papermill.exceptions import PapermillExecutionError
    from papermill.execute import ERROR_MARKER_TAG
finally:
    if _hide and _IRI_GRAMMAR in sys.modules and sys.modules[_IRI_GRAMMAR] is None:
        del sys.modules[_IRI_GRAMMAR]

__all__ = [
    "ERROR_MARKER_TAG",
    "CellTimeoutError",
    "HTMLExporter",
    "PapermillExecutionError",
    "nbformat",
    "papermill",
]
