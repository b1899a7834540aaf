"""What every chart shares: a fixed-size figure on the Agg canvas, or one line instead of it.

A chart of nothing is a page of white space that a reader has to scroll past, so a chart
function given no data returns ``NoData`` (one sentence) rather than an empty figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

FIGSIZE = (8.0, 4.5)
DPI = 100


@dataclass(frozen=True)
class NoData:
    """The one line a chart function gives back instead of a figure when there is nothing to draw."""

    text: str

    def __str__(self) -> str:
        return self.text


def new_figure(size: tuple[float, float] = FIGSIZE) -> tuple[Figure, Axes]:
    """Return a fixed-size figure drawn on its own Agg canvas (no pyplot state) and its axes."""
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()
