"""The verdict a runbook notebook leaves behind for the runner: one machine-readable output.

A notebook's last cell calls::

    from potato_ops.notebook_runs.result import record_result
    record_result("3 users rebuilt, no violations", figures={"users": 3})

which displays a single output carrying ``application/vnd.potato-ops.result+json`` (read by
``potato_ops.notebook_runs.execute``) and a one-line ``text/plain`` verdict for people. When the
verdict is a problem it then raises ``ProblemFound``: every way of running the notebook (the
runner, plain papermill, ``jupyter nbconvert --execute``, a person in JupyterLab) ends on that
one-line error, after every output, the record included, is written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import math
import uuid
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any, Literal

from potato_ops.config import mask_secrets

RESULT_MIMETYPE = "application/vnd.potato-ops.result+json"
RESULT_STATUSES = ("ok", "problem")

_STATUS_MARK = {"ok": "✅", "problem": "❌"}


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
        "figures": {str(k): to_json_value(v, f"figures[{k!r}]") for k, v in (figures or {}).items()},
        "operation_ids": [str(op) for op in operation_ids],
        "database": {str(k): mask_secrets(str(v)) for k, v in (database or {}).items()},
    }


def verdict_line(status: str, verdict: str) -> str:
    """Return the one-line verdict shown to people: ``✅ ...`` or ``❌ ...``."""
    return f"{_STATUS_MARK.get(status, '❌')} {verdict}"


def to_json_value(value: Any, where: str = "value") -> Any:
    """Return ``value`` as plain JSON data (dict, list, str, int, float, bool, None)."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, enum.Enum):
        return to_json_value(value.value, where)
    if isinstance(value, uuid.UUID | PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json_value(dataclasses.asdict(value), where)
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [to_json_value(v, f"{where}[{i}]") for i, v in enumerate(items)]
    # numpy and polars scalars and arrays know how to become Python values.
    for method in ("item", "tolist", "to_list"):
        convert = getattr(value, method, None)
        if callable(convert):
            try:
                converted = convert()
            except (TypeError, ValueError):
                continue
            if converted is not value:
                return to_json_value(converted, where)
    raise TypeError(f"{where} is a {type(value).__name__}, which cannot be recorded as JSON")
