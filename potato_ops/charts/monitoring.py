"""Monitoring charts: rebuild durations, success rate over time, slowest users, violations.

Each function takes a frame from ``potato_ops.monitoring.metrics`` (or the metrics' counts) and returns a
matplotlib ``Figure`` of a fixed size drawn on the Agg canvas; no pyplot state is touched, so
figures never pile up in a long-running process. Axes are fitted to the data (and the window),
so one rebuild and a million both read; nothing to draw gives ``NoData``, one line of text.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

import matplotlib.dates as mdates
import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from potato_ops.charts.canvas import NoData, new_figure
from potato_ops.charts.words import counted, user_label

SUCCESS_TARGET = 0.99  # the playbook's target rate, drawn as a reference line
LOG_SPREAD = 100.0  # durations spanning more than this factor get a logarithmic axis
MAX_MARKERS = 48  # beyond this many points a marker per point is clutter
OK_COLOUR, FAILED_COLOUR, THRESHOLD_COLOUR = "#2b8a3e", "#c92a2a", "#e67700"


def _label(axes: Axes, title: str, xlabel: str, ylabel: str) -> None:
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)


def duration_bins(durations: np.ndarray, bins: int) -> tuple[np.ndarray, bool]:
    """Return histogram bin edges spanning exactly the durations, and whether they are logarithmic.

    A spread wider than ``LOG_SPREAD`` gets logarithmic bins, so a few slow rebuilds do not
    squeeze thousands of fast ones into the first bar; one repeated value gets a narrow band.
    """
    lo, hi = float(durations.min()), float(durations.max())
    # Fewer distinct values than bins would leave gaps between bars that mean nothing.
    bins = max(1, min(bins, len(np.unique(durations))))
    positive = durations[durations > 0]
    if positive.size and hi / float(positive.min()) > LOG_SPREAD:
        return np.geomspace(float(positive.min()), hi, bins + 1), True
    if hi == lo:
        pad = max(abs(lo) * 0.05, 0.5)
        return np.linspace(max(lo - pad, 0.0), hi + pad, bins + 1), False
    return np.linspace(lo, hi, bins + 1), False


def duration_histogram(
    history: pl.DataFrame, *, slow_threshold_ms: float = 1000, bins: int = 30
) -> Figure | NoData:
    """Return a histogram of rebuild durations (failures stacked on successes), or NoData.

    The x axis spans the durations; the slow threshold is drawn only when it falls inside it,
    otherwise the title says on which side of it every rebuild lies.
    """
    if history.is_empty():
        return NoData("No rebuilds recorded: no durations to chart.")
    durations = history["duration_ms"].cast(pl.Float64).to_numpy()
    success = history["success"].to_numpy()
    edges, logarithmic = duration_bins(durations, bins)
    # Zero durations (clock resolution) belong in the first bar of a logarithmic axis.
    shown = np.clip(durations, edges[0], edges[-1])
    figure, axes = new_figure()
    slow = int((durations > slow_threshold_ms).sum())
    where = ""
    if not edges[0] <= slow_threshold_ms <= edges[-1]:
        side = "below" if slow_threshold_ms > edges[-1] else "above"
        where = f"; all {side} the {slow_threshold_ms:,g} ms slow threshold"
    elif slow:
        where = f"; {counted(slow, 'slow rebuild')}"
    title = f"Rebuild duration ({counted(history.height, 'rebuild')}{where})"
    _label(axes, title, "duration (ms)", "rebuilds")
    # Counted with numpy and drawn as bars: Axes.hist on a million values takes seconds.
    ok, _ = np.histogram(shown[success], bins=edges)
    failed, _ = np.histogram(shown[~success], bins=edges)
    starts, widths = edges[:-1], np.diff(edges)
    for counts, bottom, colour, label in (
        (ok, None, OK_COLOUR, "succeeded"),
        (failed, ok, FAILED_COLOUR, "failed"),
    ):
        axes.bar(
            starts,
            counts,
            widths,
            bottom,
            align="edge",
            color=colour,
            label=label,
            edgecolor="white",
            linewidth=0.4,
        )
    if logarithmic:
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,g}"))
    axes.set_xlim(float(edges[0]), float(edges[-1]))
    if edges[0] <= slow_threshold_ms <= edges[-1]:
        axes.axvline(slow_threshold_ms, color=THRESHOLD_COLOUR, linestyle="--", label="slow threshold")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.0f}"))
    axes.legend(loc="best")
    return figure


def _num(instant: datetime) -> float:
    return float(mdates.date2num(instant))  # type: ignore[no-untyped-call]


def success_rate_chart(
    series: pl.DataFrame,
    *,
    window: tuple[datetime, datetime] | None = None,
    every: timedelta = timedelta(hours=1),
) -> Figure | NoData:
    """Return the success rate per period of a ``success_rate_frame`` with the 99% target, or NoData.

    The time axis spans the window when one is given (and every period drawn), else the
    periods themselves plus half a period either side; never matplotlib's default years.
    """
    if series.is_empty():
        return NoData("No rebuilds recorded: no success rate to chart.")
    figure, axes = new_figure()
    rebuilds = int(series["rebuilds"].sum()) if "rebuilds" in series.columns else 0
    title = "Rebuild success rate per hour" + (f" ({counted(rebuilds, 'rebuild')})" if rebuilds else "")
    _label(axes, title, "hour (UTC)", "success rate (%)")
    periods: list[datetime] = series["period"].to_list()
    rates = [100 * float(r) for r in series["success_rate"]]
    axes.plot(
        [_num(p) for p in periods],
        rates,
        marker="o" if len(periods) <= MAX_MARKERS else None,
        color="#1c7ed6",
        label="success rate",
    )
    lo, hi = _num(periods[0]) - _days(every) / 2, _num(periods[-1]) + _days(every) / 2
    if window is not None:
        lo, hi = min(lo, _num(window[0])), max(hi, _num(window[1]))
    axes.set_xlim(lo, hi)
    locator = mdates.AutoDateLocator(tz="UTC")  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz="UTC"))  # type: ignore[no-untyped-call]
    target = 100 * SUCCESS_TARGET
    lowest = min(min(rates), target)
    pad = max(1.0, (100 - lowest) * 0.1)
    axes.set_ylim(max(0.0, lowest - pad), 100 + min(pad, 2.0))
    axes.axhline(target, color=THRESHOLD_COLOUR, linestyle="--", label=f"target {target:g}%")
    axes.legend(loc="best")
    return figure


def _days(span: timedelta) -> float:
    return span.total_seconds() / 86400


def slowest_users_chart(
    slowest: pl.DataFrame, *, emails: Mapping[str, str | None] | None = None
) -> Figure | NoData:
    """Return horizontal bars of a ``slowest_users_frame`` (slowest at the top, users by email), or NoData."""
    if slowest.is_empty():
        return NoData("No rebuilds recorded: no slowest users to chart.")
    figure, axes = new_figure()
    xlabel = "slowest rebuild (ms)"
    if slowest["max_duration_ms"].n_unique() < slowest.height:
        # A bulk user's time is its own work plus an equal share of its batch's statements:
        # users the batch settled without work of their own can tie.
        xlabel += "\n(bulk: each user's own work plus a share of its batch's statements)"
    _label(axes, f"Slowest {counted(slowest.height, 'user')}", xlabel, "user")
    names = [user_label(u, emails) for u in slowest["user_id"]]
    values = slowest["max_duration_ms"].cast(pl.Float64).to_list()
    bars = axes.barh(list(range(len(names)))[::-1], values, color=THRESHOLD_COLOUR)
    axes.set_yticks(list(range(len(names)))[::-1], names)
    axes.bar_label(bars, labels=[f"{v:,.1f}" for v in values], padding=3, fontsize=8)
    axes.set_xlim(0, max(values) * 1.15 if max(values) > 0 else 1)
    axes.grid(False, axis="y")
    return figure


def violations_by_kind_chart(counts: Mapping[str, int]) -> Figure | NoData:
    """Return horizontal bars of violation records per kind (``Metrics.violations_by_kind``), or NoData."""
    total = sum(counts.values())
    if not total:
        return NoData("No invariant violations: nothing to chart.")
    figure, axes = new_figure()
    _label(axes, f"Invariant violations by kind ({counted(total, 'violation')} in all)", "violations", "kind")
    kinds = list(counts)
    axes.barh(kinds[::-1], [counts[k] for k in kinds][::-1], color=FAILED_COLOUR)
    axes.set_xlim(0, max(counts.values()) * 1.1)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return figure
