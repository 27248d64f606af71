"""What every report figure shares: the phase colours, the overlay colours, the figure and axes helpers."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from ..phases import PHASES

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.typing import LegendLocType


#: the 5+1 phases (Martin & Mahoney, arXiv:1810.01075) from least to most correlated
#: (the classifier's own :data:`wwmonitor.phases.PHASES`, so the two cannot drift apart)
PHASE_ORDER: tuple[str, ...] = PHASES

#: one colour per phase (colour-blind-friendly sequential-ish palette; grey = unknown)
PHASE_COLORS: dict[str, str] = {
    "random-like": "#c6dbef",
    "bleeding-out": "#6baed6",
    "bulk+spikes": "#2ca25f",
    "bulk-decay": "#fdae6b",
    "heavy-tailed": "#e6550d",
    "rank-collapse": "#54278f",
    # a layer too small for a label (wwmonitor.phases.UNDETERMINED): grey like "unknown", never a phase colour
    "undetermined": "#d9d9d9",
    "unknown": "#d9d9d9",
}

#: x-axis label of every ESD figure
LAMBDA_LABEL = r"eigenvalue $\lambda$ of $X = W^\top W / N$"

_PL_COLOR = "#d62728"
_MP_COLOR = "#1f77b4"
_DATA_COLOR = "#444444"


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    return fig


def _figure_and_axes(ax: Optional[Axes], figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """``ax`` and its figure, or a new figure of ``figsize`` inches with one axes."""
    if ax is None:
        fig = _new_figure(figsize)
        return fig, fig.add_subplot()
    return ax.figure, ax  # type: ignore[return-value]


def _finish_axes(ax: Axes, title: str, *, legend_fontsize: float, legend_loc: LegendLocType) -> None:
    """The common finish of the single-panel plots: title, light grid, legend."""
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=legend_fontsize, loc=legend_loc, framealpha=0.85)


def _g(v: float, _pos: Any = None) -> str:
    return f"{v:g}"


def _compact_log_ticks(ax: Axes, axis: str = "x") -> None:
    """Plain ``%g`` tick labels on a log axis; minor labels (2, 3, 5 x 10^k) only when it spans < 1.5 decades."""
    a = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    a.set_major_formatter(FuncFormatter(_g))
    if lo > 0 and hi > 0 and math.log10(hi / lo) < 1.5:

        def minor(v: float, _pos: Any = None) -> str:
            m = round(v / 10 ** math.floor(math.log10(v) + 1e-9), 6)
            return f"{v:g}" if m in (2.0, 3.0, 5.0) else ""

        a.set_minor_formatter(FuncFormatter(minor))
    else:
        a.set_minor_formatter(NullFormatter())
