"""Charts read at one rebuild and at a million: axes fit the data, words agree with counts.

Frames are literal (or drawn from a seeded generator for the large case); each expectation is
computed here from the same literals, never through the chart code.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import matplotlib.dates as mdates
import numpy as np
import polars as pl
import pytest
from IPython.core.formatters import DisplayFormatter
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from potato_ops.charts.calendar import run_calendar
from potato_ops.charts.canvas import NoData
from potato_ops.charts.monitoring import (
    duration_histogram,
    slowest_users_chart,
    success_rate_chart,
    violations_by_kind_chart,
)
from potato_ops.charts.runs import run_length_chart, timezone_chart, violations_before_after
from potato_ops.charts.words import counted, plural, user_label
from potato_ops.domain.models import Run
from potato_ops.monitoring.metrics import HISTORY_SCHEMA
from potato_ops.runbook.display import Chart

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def history(durations: Sequence[float] | np.ndarray, failed: int = 0) -> pl.DataFrame:
    """Return a history frame of these durations, the first ``failed`` of them failures."""
    n = len(durations)
    return pl.DataFrame(
        {
            "finished_at": [T0 + timedelta(seconds=i) for i in range(n)] if n < 10_000 else [T0] * n,
            "user_id": [f"u{i}" for i in range(n)] if n < 10_000 else ["u"] * n,
            "kind": ["rebuild"] * n,
            "duration_ms": np.asarray(durations, dtype=float),
            "success": [i >= failed for i in range(n)],
            "violations": [0] * n,
        },
        schema=HISTORY_SCHEMA,
    )


def figure_of(chart: Figure | NoData) -> Axes:
    assert isinstance(chart, Figure), f"expected a figure, got {chart!r}"
    return chart.axes[0]


def threshold_lines(axes: Axes) -> list[float]:
    return [
        float(np.asarray(line.get_xdata())[0]) for line in axes.lines if line.get_label() == "slow threshold"
    ]


def drawn_total(axes: Axes) -> int:
    """Return how many rebuilds the stacked bars hold (successes' bars plus failures' bars)."""
    return round(sum(p.get_height() for p in axes.patches if isinstance(p, Rectangle)))


# --- durations ----------------------------------------------------------------------------------


def test_a_quiet_hour_of_fast_rebuilds_fills_the_axis_and_leaves_out_the_threshold() -> None:
    durations = [1 + (i % 12) for i in range(200)]  # 200 rebuilds of 1..12 ms
    axes = figure_of(duration_histogram(history(durations), slow_threshold_ms=1000))
    lo, hi = axes.get_xlim()
    assert lo <= min(durations) and hi >= max(durations)
    assert (hi - lo) <= 1.1 * (max(durations) - min(durations))  # no room for the 1000 ms line
    assert threshold_lines(axes) == []
    assert axes.get_title() == "Rebuild duration (200 rebuilds; all below the 1,000 ms slow threshold)"
    assert drawn_total(axes) == 200


def test_the_threshold_is_drawn_when_the_durations_reach_it() -> None:
    durations = [400.0, 700.0, 900.0, 1200.0, 1500.0]
    axes = figure_of(duration_histogram(history(durations, failed=1), slow_threshold_ms=1000))
    assert threshold_lines(axes) == [1000.0]
    lo, hi = axes.get_xlim()
    assert (lo, hi) == (400.0, 1500.0)
    assert axes.get_xscale() == "linear"
    assert axes.get_title() == "Rebuild duration (5 rebuilds; 2 slow rebuilds)"


def test_one_rebuild_is_one_bar_in_a_narrow_axis() -> None:
    axes = figure_of(duration_histogram(history([5.0]), slow_threshold_ms=1000))
    lo, hi = axes.get_xlim()
    assert lo < 5.0 < hi and hi - lo <= 1.0
    assert axes.get_title().startswith("Rebuild duration (1 rebuild;")
    assert drawn_total(axes) == 1


def test_a_million_rebuilds_spanning_decades_get_a_logarithmic_axis() -> None:
    rng = np.random.default_rng(7)
    durations = rng.lognormal(mean=1.5, sigma=1.5, size=1_000_000)
    axes = figure_of(duration_histogram(history(durations), slow_threshold_ms=1000))
    assert axes.get_xscale() == "log"
    lo, hi = axes.get_xlim()
    assert lo == pytest.approx(durations.min()) and hi == pytest.approx(durations.max())
    assert threshold_lines(axes) == [1000.0]
    assert drawn_total(axes) == 1_000_000
    slow = int((durations > 1000).sum())
    assert axes.get_title() == f"Rebuild duration (1,000,000 rebuilds; {slow:,} slow rebuilds)"


# --- success rate -------------------------------------------------------------------------------


def rates(hours: int, start: datetime = T0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "period": [start + timedelta(hours=h) for h in range(hours)],
            "rebuilds": [100] * hours,
            "successes": [100 - (h % 3) for h in range(hours)],
            "success_rate": [(100 - (h % 3)) / 100 for h in range(hours)],
        },
        schema={
            "period": pl.Datetime("us", "UTC"),
            "rebuilds": pl.Int64,
            "successes": pl.Int64,
            "success_rate": pl.Float64,
        },
    )


def num(instant: datetime) -> float:
    return float(mdates.date2num(instant))  # type: ignore[no-untyped-call]


def test_one_hour_of_rebuilds_is_drawn_on_an_hour_not_on_years() -> None:
    axes = figure_of(success_rate_chart(rates(1)))
    lo, hi = axes.get_xlim()
    assert (lo, hi) == pytest.approx((num(T0 - timedelta(minutes=30)), num(T0 + timedelta(minutes=30))))
    assert axes.get_title() == "Rebuild success rate per hour (100 rebuilds)"
    [line] = [ln for ln in axes.lines if ln.get_label() == "success rate"]
    assert line.get_marker() == "o"


def test_the_time_axis_spans_the_window_when_given() -> None:
    window = (T0 - timedelta(hours=23), T0 + timedelta(hours=1))
    axes = figure_of(success_rate_chart(rates(1), window=window))
    assert axes.get_xlim() == pytest.approx((num(window[0]), num(window[1])))


def test_a_month_of_hours_has_a_line_without_markers_and_a_rate_axis_that_fits() -> None:
    hours = 30 * 24
    axes = figure_of(success_rate_chart(rates(hours)))
    [line] = [ln for ln in axes.lines if ln.get_label() == "success rate"]
    assert line.get_marker() in ("None", None, "")
    lo, hi = axes.get_xlim()
    assert lo <= num(T0) and hi >= num(T0 + timedelta(hours=hours - 1))
    y_lo, y_hi = axes.get_ylim()
    assert 90 <= y_lo < 98 and 100 < y_hi <= 102  # lowest rate 98%, target 99%: both in view
    assert len(line.get_xdata()) == hours  # type: ignore[arg-type]


# --- users, plurals, no data --------------------------------------------------------------------


def test_slowest_users_are_named_by_email_in_full() -> None:
    slowest = pl.DataFrame(
        {
            "user_id": ["0b9f1c2e-5d6a-4c8e-9f10-aa11bb22cc33", "orphan-user-with-a-long-identifier"],
            "max_duration_ms": [30.5, 12.0],
            "rebuilds": [3, 1],
        }
    )
    emails = {"0b9f1c2e-5d6a-4c8e-9f10-aa11bb22cc33": "ada@example.org"}
    axes = figure_of(slowest_users_chart(slowest, emails=emails))
    top_down = sorted(axes.get_yticklabels(), key=lambda t: -t.get_position()[1])
    assert [t.get_text() for t in top_down] == ["ada@example.org", "orphan-user-with-a-long-identifier"]
    assert axes.get_title() == "Slowest 2 users"
    one = figure_of(slowest_users_chart(slowest.head(1), emails=emails))
    assert one.get_title() == "Slowest 1 user"


@pytest.mark.parametrize(
    ("chart", "title"),
    [
        (lambda: timezone_chart({"UTC": 1}), "Timezones of affected users (1 user)"),
        (lambda: timezone_chart({"UTC": 2, "Asia/Tokyo": 1}), "Timezones of affected users (3 users)"),
        (lambda: run_length_chart({3: 1}), "Run length distribution (1 run)"),
        (
            lambda: violations_by_kind_chart({"overlap": 1, "orphan": 0}),
            "Invariant violations by kind (1 violation in all)",
        ),
        (
            lambda: violations_before_after({"overlap": 1}, {"overlap": 0}),
            "Invariant violations by kind (1 violation before, 0 after)",
        ),
    ],
    ids=["one-user", "users", "one-run", "one-violation", "before-after"],
)
def test_titles_count_with_the_right_plural(chart: object, title: str) -> None:
    assert figure_of(chart()).get_title() == title  # type: ignore[operator]


def test_words() -> None:
    assert [counted(n, "user") for n in (0, 1, 2, 1_000_000)] == [
        "0 users",
        "1 user",
        "2 users",
        "1,000,000 users",
    ]
    assert [plural("day", 2), plural("query", 2), plural("box", 2)] == ["days", "queries", "boxes"]
    assert user_label("u1", {"u1": None}) == "u1"


@pytest.mark.parametrize(
    "chart",
    [
        lambda: duration_histogram(history([])),
        lambda: success_rate_chart(rates(0)),
        lambda: slowest_users_chart(
            pl.DataFrame(schema={"user_id": pl.String, "max_duration_ms": pl.Float64})
        ),
        lambda: violations_by_kind_chart({}),
        lambda: violations_by_kind_chart({"overlap": 0, "orphan": 0}),
        lambda: run_length_chart({}),
        lambda: timezone_chart({}),
        lambda: violations_before_after({"overlap": 0}, {"overlap": 0}),
    ],
    ids=[
        "durations",
        "success-rate",
        "slowest",
        "violations",
        "zero-violations",
        "lengths",
        "zones",
        "before-after",
    ],
)
def test_no_data_gives_one_line_and_no_figure(chart: object) -> None:
    drawn = chart()  # type: ignore[operator]
    assert isinstance(drawn, NoData) and not isinstance(drawn, Figure)
    assert drawn.text and "\n" not in drawn.text


# --- how a chart shows in a notebook --------------------------------------------------------------


def test_a_chart_is_an_image_png_output_with_its_name() -> None:
    data, metadata = DisplayFormatter().format(  # type: ignore[no-untyped-call]
        Chart("run lengths", run_length_chart({1: 3, 5: 2}))
    )
    assert set(data) == {"image/png", "text/plain"}  # no HTML wrapper for tools to miss
    assert base64.b64decode(data["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["text/plain"] == "[chart: run lengths]"
    assert metadata["image/png"] == {"alt": "chart: run lengths", "width": 800, "height": 450}


def test_a_chart_of_nothing_is_one_line_of_text() -> None:
    data, _ = DisplayFormatter().format(  # type: ignore[no-untyped-call]
        Chart("timezones", timezone_chart({}))
    )
    assert "image/png" not in data
    assert data["text/plain"] == "timezones: No affected users: no timezones to chart."
    assert "No affected users" in data["text/html"] and data["text/html"].count("<p") == 1


def test_equal_bars_say_they_are_shares_of_one_batch() -> None:
    shares = pl.DataFrame(
        {"user_id": ["u1", "u2", "u3"], "max_duration_ms": [4.0, 4.0, 4.0], "rebuilds": [1, 1, 1]}
    )
    distinct = shares.with_columns(pl.Series("max_duration_ms", [9.0, 4.0, 1.0]))
    assert "a share of its batch's statements" in figure_of(slowest_users_chart(shares)).get_xlabel()
    assert figure_of(slowest_users_chart(distinct)).get_xlabel() == "slowest rebuild (ms)"


def _run(start: str, end: str, *, active: bool = False) -> Run:
    lo, hi = date.fromisoformat(start), date.fromisoformat(end)
    return Run(None, "u1", lo, hi, (hi - lo).days + 1, active)


def test_the_calendar_widens_to_a_change_long_before_its_window_and_names_only_what_it_draws() -> None:
    may = [date(2025, 5, 1) + timedelta(days=i) for i in range(6)]
    before = [_run("2025-05-01", "2025-05-03"), _run("2025-05-04", "2025-05-06")]  # adjacent: one run
    after = [_run("2025-05-01", "2025-05-06")]
    figure = run_calendar(may, before, after, end=date(2025, 12, 1), days=120)
    axes = figure.axes[0]
    left, right = (mdates.num2date(x).date() for x in axes.get_xlim())  # type: ignore[no-untyped-call]
    assert left <= date(2025, 5, 1) and right >= date(2025, 12, 1)
    legend = axes.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == ["marked", "run removed", "run new"]


def test_the_calendar_of_an_unchanged_user_keeps_its_window_and_legend_of_what_is_drawn() -> None:
    days = [date(2025, 11, 20) + timedelta(days=i) for i in range(3)]
    runs = [_run("2025-11-20", "2025-11-22")]
    figure = run_calendar(days, runs, runs, end=date(2025, 12, 1), days=30)
    left, _ = (mdates.num2date(x).date() for x in figure.axes[0].get_xlim())  # type: ignore[no-untyped-call]
    assert left == date(2025, 11, 2)
    legend = figure.axes[0].get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == ["marked", "run unchanged"]
