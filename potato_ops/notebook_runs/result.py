"""The verdict a runbook notebook leaves behind for whoever executed it: one machine-readable output.

A notebook's last cell calls::

    from potato_ops.notebook_runs.result import record_result
    record_result("3 users rebuilt, no violations", figures={"users": 3})

which displays a single output carrying ``application/vnd.potato-ops.result+json`` (read by
``potato_ops.notebook_runs.execute``) and a one-line ``text/plain`` verdict for people. When the
verdict is a problem it then raises ``ProblemFound``: every way of running the notebook
(execute_notebook, plain papermill, ``jupyter nbconvert --execute``, a person in JupyterLab) ends on that
one-line error, after every output, the record included, is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from potato_ops.config import mask_secrets
from potato_ops.domain.models import jsonable

RESULT_MIMETYPE = "application/vnd.potato-ops.result+json"
RESULT_STATUSES = ("ok", "problem")

# Marks every common font has (emoji are empty boxes in many browsers and terminals).
_STATUS_MARK = {"ok": "✔", "problem": "✘"}


# What archives a result shown in a kernel a person drives (set by notebook_runs.interactive).
_archiver: Callable[[Mapping[str, Any]], str | None] | None = None


def archive_results_with(archiver: Callable[[Mapping[str, Any]], str | None] | None) -> None:
    """Make record_result hand its payload to archiver (None: to nothing) and show where it went."""
    global _archiver
    _archiver = archiver


class ProblemFound(Exception):  # named for the exit code it becomes, PROBLEM_FOUND
    """The procedure's verdict is a problem; the message is the verdict."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the verdict is the whole story.
        return [f"{type(self).__name__}: {self}"]


def record_result(
    verdict: str,
    *,
    status: Literal["ok", "problem"] = "ok",
    figures: Mapping[str, Any] | None = None,
    operation_ids: Sequence[str] = (),
    database: Mapping[str, str] | None = None,
) -> None:
    """Display the notebook's result record; returns nothing, or raises ProblemFound.

    ``status`` is ``"ok"`` when the procedure found nothing wrong and ``"problem"`` when it
    found what it was asked to report; a problem raises ``ProblemFound`` (message: the verdict)
    once the record is displayed, so the run ends non-zero. ``figures`` are the numbers behind
    the verdict; dates, decimals and numpy/polars scalars are converted to JSON values.
    """
    payload = result_payload(
        verdict,
        status=status,
        figures=figures,
        operation_ids=operation_ids,
        database=database,
    )
    from IPython.display import display

    display(  # type: ignore[no-untyped-call]
        {RESULT_MIMETYPE: payload, "text/plain": verdict_line(status, payload["verdict"])},
        raw=True,
    )
    if _archiver is not None:  # a person's run: archived now, like a headless one
        where = _archiver(payload)
        if where:
            display({"text/plain": where}, raw=True)  # type: ignore[no-untyped-call]
    if status == "problem":
        raise ProblemFound(payload["verdict"])


def result_payload(
    verdict: str,
    *,
    status: str = "ok",
    figures: Mapping[str, Any] | None = None,
    operation_ids: Sequence[str] = (),
    database: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return the JSON-ready record that ``record_result`` displays."""
    if status not in RESULT_STATUSES:
        raise ValueError(f"status must be one of {', '.join(RESULT_STATUSES)}, not {status!r}")
    if isinstance(operation_ids, str):
        raise TypeError("operation_ids must be a sequence of ids, not a single string")
    return {
        "verdict": " ".join(str(verdict).split()),
        "status": status,
        "figures": {str(k): jsonable(v, f"figures[{k!r}]") for k, v in (figures or {}).items()},
        "operation_ids": [str(op) for op in operation_ids],
        "database": {str(k): mask_secrets(str(v)) for k, v in (database or {}).items()},
    }


def verdict_line(status: str, verdict: str) -> str:
    """Return the one-line verdict shown to people: ``✔ ...`` or ``✘ ...``."""
    return f"{_STATUS_MARK.get(status, '✘')} {verdict}"
