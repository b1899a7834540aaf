"""How runbook steps show themselves in a notebook: a titled list of lines, a chart, a verdict.

Every step result is a frozen dataclass deriving from ``Shown``: ``str()`` gives plain lines (a
log, the text/plain output of a cell), ``_repr_html_`` a small titled block. Charts are wrapped
in ``Chart`` so a notebook shows them as an ``image/png`` output whatever matplotlib backend the
kernel runs (or as one line of text when there was nothing to draw).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import polars as pl
from matplotlib.figure import Figure

from potato_ops.charts.canvas import NoData
from potato_ops.domain.models import Run, Violation
from potato_ops.errors import UserNotFoundError
from potato_ops.notebook_runs.result import verdict_line
from potato_ops.notebook_runs.summary import VERDICT_CLASS
from potato_ops.storage import Storage

Status = Literal["ok", "problem"]

# Symbols every common font has (emoji are missing from many headless browsers and terminals).
_MARKS = {"ok": "✔", "problem": "✘", "warn": "⚠", "info": "•", "skip": "–"}
_COLOURS = {"ok": "#1a7f37", "problem": "#cf222e", "warn": "#9a6700", "info": "#57606a", "skip": "#57606a"}


class Shown:
    """A step result that shows itself as a titled list of lines."""

    def title(self) -> str:
        """Return the block's heading."""
        return type(self).__name__

    def lines(self) -> list[tuple[str, str]]:
        """Return ``(mark, text)`` lines; mark is one of ok, problem, warn, info, skip."""
        return []

    def __str__(self) -> str:
        body = [f"{_MARKS.get(mark, '•')} {text}" for mark, text in self.lines()]
        return "\n".join([self.title(), *("  " + line for line in body)])

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        items = "".join(
            f'<li style="list-style:none;color:{_COLOURS.get(mark, "#24292f")}">'
            f"{_MARKS.get(mark, '•')} {html.escape(text)}</li>"
            for mark, text in self.lines()
        )
        return (
            f'<div class="potato-ops-step"><strong>{html.escape(self.title())}</strong>'
            f'<ul style="margin:0.3em 0;padding-left:0.5em">{items}</ul></div>'
        )


CHART_MIMETYPE = "image/png"
NO_CHART_CLASS = "potato-ops-no-chart"


@dataclass(frozen=True, repr=False)
class Chart:
    """A matplotlib figure shown as an ``image/png`` output (its ``name`` says what it draws).

    A bare PNG output (not an ``<img>`` inside HTML) is what nbconvert, PDF export and other
    notebook tools pick up; the name travels as the output's ``alt`` metadata and text/plain.
    When the chart function had nothing to draw (``NoData``) it shows that one line instead.
    """

    name: str
    figure: Figure | NoData
    dpi: int = 100

    @cached_property
    def png(self) -> bytes:
        """Return the figure rendered as PNG bytes (rendered once); empty when there is no figure."""
        if isinstance(self.figure, NoData):
            return b""
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=self.dpi, facecolor="white")
        return buffer.getvalue()

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None
    ) -> tuple[dict[str, str], dict[str, Any]]:
        if isinstance(self.figure, NoData):
            text = f"{self.name}: {self.figure.text}"
            line = f'<p class="{NO_CHART_CLASS}" style="color:#57606a">{html.escape(text)}</p>'
            return {"text/plain": text, "text/html": line}, {}
        width, height = (round(v * self.dpi) for v in self.figure.get_size_inches())
        data = {CHART_MIMETYPE: base64.b64encode(self.png).decode("ascii"), "text/plain": repr(self)}
        metadata = {CHART_MIMETYPE: {"alt": f"chart: {self.name}", "width": width, "height": height}}
        return data, metadata

    def __repr__(self) -> str:
        if isinstance(self.figure, NoData):
            return f"{self.name}: {self.figure.text}"
        return f"[chart: {self.name}]"


@dataclass(frozen=True, repr=False)
class Verdict(Shown):
    """The procedure's one-line outcome and the figures behind it, for ``record_result``."""

    text: str
    status: Status
    figures: Mapping[str, Any] = field(default_factory=dict)
    operation_ids: tuple[str, ...] = ()

    def title(self) -> str:
        return "Verdict"

    def lines(self) -> list[tuple[str, str]]:
        return [(self.status, self.text)]

    def __str__(self) -> str:
        return verdict_line(self.status, self.text)

    def _repr_html_(self) -> str:
        return f'<div class="{VERDICT_CLASS}">{super()._repr_html_()}</div>'


def runs_frame(runs: Sequence[Run]) -> pl.DataFrame:
    """Return runs as a frame: id, start_date, end_date, day_count, active."""
    return pl.DataFrame(
        {
            "id": [r.id for r in runs],
            "start_date": [r.start_date for r in runs],
            "end_date": [r.end_date for r in runs],
            "day_count": [r.day_count for r in runs],
            "active": [r.active for r in runs],
        },
        schema={
            "id": pl.Int64,
            "start_date": pl.Date,
            "end_date": pl.Date,
            "day_count": pl.Int64,
            "active": pl.Boolean,
        },
    )


def violations_frame(violations: Sequence[Violation], limit: int | None = None) -> pl.DataFrame:
    """Return violations as a frame: kind, user_id, detail (the first ``limit`` of them)."""
    shown = list(violations if limit is None else violations[:limit])
    return pl.DataFrame(
        {
            "kind": [v.kind for v in shown],
            "user_id": [v.user_id for v in shown],
            "detail": [v.detail for v in shown],
        },
        schema={"kind": pl.String, "user_id": pl.String, "detail": pl.String},
    )


def count_lines(counts: Mapping[str, int], *, zero_is_ok: bool = True) -> list[tuple[str, str]]:
    """Return one line per count, marked ok when zero and problem otherwise."""
    return [
        ("ok" if n == 0 and zero_is_ok else "problem" if zero_is_ok else "info", f"{name}: {n}")
        for name, n in counts.items()
    ]


def user_emails(storage: Storage, user_ids: Sequence[str]) -> dict[str, str]:
    """Return the email of each of these users that has one (for chart labels; a few users only)."""
    found: dict[str, str] = {}
    for user_id in dict.fromkeys(user_ids):
        try:
            user = storage.get_user(user_id)
        except UserNotFoundError:
            continue  # an orphan's runs outlive its user: the chart shows the id
        if user.email:
            found[user_id] = user.email
    return found
