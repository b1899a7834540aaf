"""Charts about runs and the users they belong to: run lengths, timezones, violations.

Each function takes plain counts and returns a ``Figure`` of a fixed size on the Agg canvas;
nothing to draw gives ``NoData``, one line of text.
"""

from __future__ import annotations

from collections.abc import Mapping

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from potato_ops.charts.canvas import NoData, new_figure
from potato_ops.charts.words import counted

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
) -> Figure | NoData:
    """Return bars of how many runs have each length (days), optionally beside a second set, or NoData."""
    total = sum(lengths.values())
    if not total and not (compare and sum(compare.values())):
        return NoData("No runs: no run lengths to chart.")
    figure, axes = new_figure()
    if compare is None:
        axes.set_title(f"{title} ({counted(total, 'run')})")
    else:
        axes.set_title(f"{title} ({total:,} {label}, {sum(compare.values()):,} {compare_label})")
    axes.set_xlabel("run length (days)")
    axes.set_ylabel("runs")
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


def timezone_chart(
    zones: Mapping[str, int], *, title: str = "Timezones of affected users"
) -> Figure | NoData:
    """Return horizontal bars of users per IANA timezone, most common at the top, or NoData."""
    total = sum(zones.values())
    if not total:
        return NoData("No affected users: no timezones to chart.")
    figure, axes = new_figure()
    axes.set_title(f"{title} ({counted(total, 'user')})")
    axes.set_xlabel("users")
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
) -> Figure | NoData:
    """Return grouped horizontal bars of violations per kind before and after a repair, or NoData."""
    total_before = sum(before.values())
    total_after = sum((after or {}).values())
    if not total_before and not total_after:
        return NoData("No invariant violations" + (" before or after." if after is not None else "."))
    figure, axes = new_figure()
    kinds = [k for k in dict.fromkeys([*before, *(after or {})]) if before.get(k) or (after or {}).get(k)]
    suffix = counted(total_before, "violation") + " before"
    if after is not None:
        suffix += f", {total_after:,} after"
    axes.set_title(f"{title} ({suffix})")
    axes.set_xlabel("violations")
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
