"""Monitoring charts: rebuild durations, success rate over time, slowest users, violations.

Each function takes a frame from ``potato_ops.monitoring.metrics`` (or the metrics' counts) and returns a
matplotlib ``Figure`` of a fixed size drawn on the Agg canvas; no pyplot state is touched, so
figures never pile up in a long-running process. Empty data gives a labelled "no data" chart.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

FIGSIZE = (8.0, 4.5)
DPI = 100
SUCCESS_TARGET = 0.99  # the playbook's target rate, drawn as a reference line
_MAX_LABEL = 14


def _figure() -> tuple[Figure, Axes]:
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _label(axes: Axes, title: str, xlabel: str, ylabel: str) -> None:
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)


def _no_data(axes: Axes) -> None:
    axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center", va="center", fontsize=14)
    axes.set_xticks([])
    axes.set_yticks([])


def _short(user_id: str) -> str:
    return user_id if len(user_id) <= _MAX_LABEL else user_id[: _MAX_LABEL - 1] + "…"


def duration_histogram(history: pl.DataFrame, *, slow_threshold_ms: float = 1000, bins: int = 30) -> Figure:
    """Return a histogram of rebuild durations, failures stacked on successes."""
    figure, axes = _figure()
    _label(axes, f"Rebuild duration ({history.height} rebuilds)", "duration (ms)", "rebuilds")
    if history.is_empty():
        _no_data(axes)
        return figure
    ok = history.filter(pl.col("success"))["duration_ms"].to_list()
    failed = history.filter(~pl.col("success"))["duration_ms"].to_list()
    axes.hist(
        [ok, failed],
        bins=bins,
        stacked=True,
        color=["#2b8a3e", "#c92a2a"],
        label=["succeeded", "failed"],
    )
    axes.axvline(slow_threshold_ms, color="#e67700", linestyle="--", label="slow threshold")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(loc="best")
    return figure


def success_rate_chart(series: pl.DataFrame) -> Figure:
    """Return the success rate per period of a ``success_rate_frame``, with the 99% target."""
    figure, axes = _figure()
    _label(axes, "Rebuild success rate per hour", "hour (UTC)", "success rate (%)")
    if series.is_empty():
        _no_data(axes)
        return figure
    periods = series["period"].to_list()
    rates = [100 * r for r in series["success_rate"]]
    # Concise date ticks (day once, then hours); matplotlib shows instants in UTC by default.
    with rc_context({"date.converter": "concise", "timezone": "UTC"}):
        axes.plot(periods, rates, marker="o", color="#1c7ed6")
    axes.axhline(100 * SUCCESS_TARGET, color="#e67700", linestyle="--", label="target 99%")
    axes.set_ylim(min(0.0, axes.get_ylim()[0]), 105)
    axes.legend(loc="lower left")
    return figure


def slowest_users_chart(slowest: pl.DataFrame) -> Figure:
    """Return horizontal bars of a ``slowest_users_frame``, slowest at the top."""
    figure, axes = _figure()
    _label(axes, f"Slowest users (top {slowest.height})", "slowest rebuild (ms)", "user")
    if slowest.is_empty():
        _no_data(axes)
        return figure
    names = [_short(u) for u in slowest["user_id"]]
    axes.barh(names[::-1], slowest["max_duration_ms"].to_list()[::-1], color="#e67700")
    return figure


def violations_by_kind_chart(counts: Mapping[str, int]) -> Figure:
    """Return horizontal bars of violation records per kind (from ``Metrics.violations_by_kind``)."""
    figure, axes = _figure()
    total = sum(counts.values())
    _label(axes, f"Invariant violations by kind ({total} in all)", "violations", "kind")
    if not counts:
        _no_data(axes)
        return figure
    kinds = list(counts)
    axes.barh(kinds[::-1], [counts[k] for k in kinds][::-1], color="#c92a2a")
    axes.set_xlim(0, max(1, *counts.values()) * 1.1)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return figure
