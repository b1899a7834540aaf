"""A user's calendar: marked days, with the runs before and after a change, on one time axis.

One row of day squares for the marks, one row of bars for the runs stored before and one for
the runs after (a rebuild, a restore, a projection). Runs only in "before" are drawn red
(removed), runs only in "after" blue (new), runs in both grey; the active run is hatched. The
days shown always include every changed run, and the legend names only what is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import matplotlib.dates as mdates
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from potato_ops.domain.models import Run

FIGSIZE = (12.0, 4.2)
DPI = 100
MARK_COLOUR = "#2f9e44"
UNMARKED_COLOUR = "#dee2e6"
SAME_COLOUR = "#868e96"
REMOVED_COLOUR = "#e03131"
NEW_COLOUR = "#1971c2"
RANGE_COLOUR = "#fff3bf"

CONTEXT = timedelta(days=7)  # days drawn either side of the earliest and latest changed run
_ROW_MARKS, _ROW_BEFORE, _ROW_AFTER = 2.0, 1.0, 0.0


def _key(run: Run) -> tuple[date, date, int]:
    return (run.start_date, run.end_date, run.day_count)


def _num(day: date) -> float:
    return float(mdates.date2num(day))  # type: ignore[no-untyped-call]


def _bars(
    axes: Axes, runs: Sequence[Run], row: float, other: set[tuple[date, date, int]], changed: str
) -> set[str]:
    """Draw the runs; return the colours used (for a legend of only what is drawn)."""
    used: set[str] = set()
    for run in runs:
        start, end = sorted((run.start_date, run.end_date))
        colour = SAME_COLOUR if _key(run) in other else changed
        used.add(colour)
        axes.broken_barh(
            [(_num(start), (end - start).days + 1)],
            (row - 0.32, 0.64),
            facecolors=colour,
            edgecolor="#212529" if run.active else "white",
            linewidth=1.5 if run.active else 1.0,
            hatch="///" if run.active else None,
        )
    return used


def changed_span(before: Sequence[Run], after: Sequence[Run] | None) -> tuple[date, date] | None:
    """Return the first and last day of the runs a change removes or adds, or None."""
    if after is None:
        return None
    before_keys, after_keys = {_key(r) for r in before}, {_key(r) for r in after}
    changed = [r for r in before if _key(r) not in after_keys] + [
        r for r in after if _key(r) not in before_keys
    ]
    if not changed:
        return None
    return min(min(r.start_date, r.end_date) for r in changed), max(
        max(r.start_date, r.end_date) for r in changed
    )


def run_calendar(
    marked: Sequence[date],
    before: Sequence[Run],
    after: Sequence[Run] | None,
    *,
    end: date,
    days: int = 120,
    title: str = "Marked days and runs",
    after_label: str = "runs after",
    unmarked: Sequence[date] = (),
    window: tuple[date | None, date | None] | None = None,
    today: date | None = None,
) -> Figure:
    """Return the calendar of the ``days`` days ending at ``end``, widened to every changed run."""
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    start = end - timedelta(days=days - 1)
    span = changed_span(before, after)
    if span is not None:  # a change long ago is drawn, not left off the left edge
        if span[0] < start:
            start = span[0] - CONTEXT
        if span[1] > end:
            end = span[1] + CONTEXT
    lo, hi = _num(start), _num(end) + 1
    if window is not None and (window[0] or window[1]):
        w_lo = max(_num(window[0]), lo) if window[0] else lo
        w_hi = min(_num(window[1]) + 1, hi) if window[1] else hi
        if w_lo < w_hi:
            axes.axvspan(w_lo, w_hi, color=RANGE_COLOUR, zorder=0)
    shown_marks = [d for d in marked if start <= d <= end]
    axes.broken_barh(
        [(_num(d) + 0.1, 0.8) for d in unmarked if start <= d <= end],
        (_ROW_MARKS - 0.32, 0.64),
        facecolors=UNMARKED_COLOUR,
    )
    axes.broken_barh(
        [(_num(d) + 0.1, 0.8) for d in shown_marks], (_ROW_MARKS - 0.32, 0.64), facecolors=MARK_COLOUR
    )
    before_keys = {_key(r) for r in before}
    after_keys = {_key(r) for r in after or []}
    drawn = _bars(axes, before, _ROW_BEFORE, after_keys if after is not None else before_keys, REMOVED_COLOUR)
    rows = [_ROW_MARKS, _ROW_BEFORE]
    labels = [f"marked days ({len(shown_marks)})", "runs before"]
    if after is not None:
        drawn |= _bars(axes, after, _ROW_AFTER, before_keys, NEW_COLOUR)
        rows.append(_ROW_AFTER)
        labels.append(after_label)
    if today is not None and start <= today <= end:
        axes.axvline(_num(today) + 0.5, color="#212529", linestyle=":", linewidth=1.2)
    axes.set_xlim(lo, hi)
    axes.set_ylim(min(rows) - 0.6, _ROW_MARKS + 0.6)
    axes.set_yticks(rows, labels)
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    axes.grid(True, axis="x", alpha=0.3)
    axes.set_title(f"{title} ({start} .. {end})")
    shown_unmarked = any(start <= d <= end for d in unmarked)
    active = any(r.active for r in [*before, *(after or [])])
    legend = [
        patch
        for patch, drawn_here in (
            (Patch(color=MARK_COLOUR, label="marked"), bool(shown_marks)),
            (Patch(color=UNMARKED_COLOUR, label="un-marked"), shown_unmarked),
            (Patch(color=SAME_COLOUR, label="run unchanged"), SAME_COLOUR in drawn),
            (Patch(color=REMOVED_COLOUR, label="run removed"), REMOVED_COLOUR in drawn),
            (Patch(color=NEW_COLOUR, label="run new"), NEW_COLOUR in drawn),
            (Patch(facecolor="white", edgecolor="#495057", hatch="///", label="active"), active),
        )
        if drawn_here
    ]
    if window is not None and (window[0] or window[1]):
        legend.append(Patch(color=RANGE_COLOUR, label="rebuild range"))
    if legend:
        axes.legend(
            handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(legend), frameon=False
        )
    return figure
