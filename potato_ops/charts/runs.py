"""Charts about runs and the users they belong to: run lengths, timezones, violations.

Each function takes plain counts and returns a ``Figure`` of a fixed size on the Agg canvas;
empty data gives a labelled "no data" chart.
"""

from __future__ import annotations

from collections.abc import Mapping

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

FIGSIZE = (8.0, 4.5)
DPI = 100
BEFORE_COLOUR = "#e8590c"
AFTER_COLOUR = "#1971c2"
# Run lengths in days, bucketed as people think of streaks.
LENGTH_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("1", 1, 1),
    ("2", 2, 2),
    ("3", 3, 3),
    ("4-7", 4, 7),
    ("8-14", 8, 14),
    ("15-30", 15, 30),
    ("31-60", 31, 60),
    ("61-90", 61, 90),
    ("91-180", 91, 180),
    ("181+", 181, 10**9),
)
TOP_ZONES = 15


def _figure() -> tuple[Figure, Axes]:
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _no_data(axes: Axes, text: str = "no data") -> None:
    axes.text(0.5, 0.5, text, transform=axes.transAxes, ha="center", va="center", fontsize=14)
    axes.set_xticks([])
    axes.set_yticks([])


def bucket_lengths(lengths: Mapping[int, int]) -> dict[str, int]:
    """Return run counts per length bucket (every bucket listed) from counts per day_count."""
    out = {label: 0 for label, _, _ in LENGTH_BUCKETS}
    for length, count in lengths.items():
        for label, lo, hi in LENGTH_BUCKETS:
            if lo <= length <= hi:
                out[label] += count
                break
    return out


def run_length_chart(
    lengths: Mapping[int, int],
    compare: Mapping[int, int] | None = None,
    *,
    title: str = "Run length distribution",
    label: str = "runs",
    compare_label: str = "after",
) -> Figure:
    """Return bars of how many runs have each length (days), optionally beside a second set."""
    figure, axes = _figure()
    total = sum(lengths.values())
    axes.set_title(f"{title} ({total} {label})")
    axes.set_xlabel("run length (days)")
    axes.set_ylabel("runs")
    if not total and not (compare and sum(compare.values())):
        _no_data(axes, "no runs")
        return figure
    buckets = bucket_lengths(lengths)
    xs = list(range(len(buckets)))
    width = 0.4 if compare is not None else 0.8
    axes.bar(
        [x - width / 2 if compare is not None else x for x in xs],
        list(buckets.values()),
        width=width,
        color=BEFORE_COLOUR if compare is not None else AFTER_COLOUR,
        label=label,
    )
    if compare is not None:
        other = bucket_lengths(compare)
        axes.bar(
            [x + width / 2 for x in xs],
            list(other.values()),
            width=width,
            color=AFTER_COLOUR,
            label=compare_label,
        )
        axes.legend(loc="best")
    axes.set_xticks(xs, list(buckets))
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, axis="y", alpha=0.3)
    return figure


def timezone_chart(zones: Mapping[str, int], *, title: str = "Timezones of affected users") -> Figure:
    """Return horizontal bars of users per IANA timezone, most common at the top."""
    figure, axes = _figure()
    total = sum(zones.values())
    axes.set_title(f"{title} ({total} users)")
    axes.set_xlabel("users")
    if not total:
        _no_data(axes, "no affected users")
        return figure
    ordered = sorted(zones.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ordered) > TOP_ZONES:
        rest = sum(n for _, n in ordered[TOP_ZONES - 1 :])
        ordered = [*ordered[: TOP_ZONES - 1], ("other", rest)]
    names = [z for z, _ in ordered][::-1]
    axes.barh(names, [n for _, n in ordered][::-1], color="#7048e8")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, axis="x", alpha=0.3)
    return figure


def violations_before_after(
    before: Mapping[str, int], after: Mapping[str, int] | None, *, title: str = "Invariant violations by kind"
) -> Figure:
    """Return grouped horizontal bars of violations per kind before and after a repair."""
    figure, axes = _figure()
    kinds = list(dict.fromkeys([*before, *(after or {})]))
    total_before = sum(before.values())
    suffix = f"{total_before} before" + (f", {sum(after.values())} after" if after is not None else "")
    axes.set_title(f"{title} ({suffix})")
    axes.set_xlabel("violations")
    if not kinds:
        _no_data(axes)
        return figure
    ys = list(range(len(kinds)))[::-1]
    height = 0.4 if after is not None else 0.8
    axes.barh(
        [y + height / 2 if after is not None else y for y in ys],
        [before.get(k, 0) for k in kinds],
        height=height,
        color="#c92a2a",
        label="before",
    )
    if after is not None:
        axes.barh(
            [y - height / 2 for y in ys],
            [after.get(k, 0) for k in kinds],
            height=height,
            color="#2b8a3e",
            label="after",
        )
        axes.legend(loc="lower right")
    axes.set_yticks(ys, kinds)
    axes.set_xlim(0, max(1, *before.values(), *(after or {}).values()) * 1.15)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, axis="x", alpha=0.3)
    return figure
