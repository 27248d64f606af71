"""Run-level figures (DataFrames in): metric curves, phase timelines and diagrams, sweeps, runs side by side.

Pure like :mod:`wwmonitor.report.figures`, which re-exports every public function here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..records import MODEL_LAYER
from .figure_style import (
    PHASE_COLORS,
    PHASE_ORDER,
    _new_figure,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


# --------------------------------------------------------------------------
# run-level figures (DataFrames in)
# --------------------------------------------------------------------------

#: human-readable labels of the metrics the report plots
METRIC_LABELS: dict[str, str] = {
    "alpha": r"power-law exponent $\alpha$",
    "alpha_weighted": r"$\hat\alpha = \alpha \log_{10}\lambda_{max}$",
    "mp_softrank": r"MP soft rank $\lambda_+/\lambda_{max}$",
    "stable_rank": r"stable rank $\sum\lambda/\lambda_{max}$",
    "num_spikes": r"spikes above $\lambda_+$ + TW",
    "log_spectral_norm": r"$\log_{10}\sigma^2_{max}$",
    "log_norm": r"$\log_{10}\|W\|_F^2$",
    "entropy": "spectral entropy",
    "D": "KS distance D",
    "num_pl_spikes": "power-law tail size",
    "rank_loss": "rank loss",
}


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def plot_metric_curves(
    metrics: "pd.DataFrame",
    *,
    metrics_to_plot: Sequence[str] = ("alpha", "mp_softrank", "stable_rank", "num_spikes"),
    x: str = "epoch",
    layers: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
    ncols: int = 2,
) -> Figure:
    """Per-layer curves of each metric against ``x`` (``"epoch"`` or ``"step"``).

    ``metrics`` is the long table of :func:`wwmonitor.load_run`
    (columns ``step, epoch, layer, metric, value``); model-level rows
    (``layer == "__model__"``) are ignored.  One subplot per metric, one
    line per layer.  Alpha panels shade the ``[2, 6]`` band weightwatcher
    calls well trained.  With ``x="epoch"`` the curves are drawn against
    the step instead when any snapshot has no epoch (the x label says so).
    """
    df = _require_columns(metrics, ("layer", "metric", "value", x), "metrics")
    df = df[df["layer"] != MODEL_LAYER]
    x = _x_column(df, x)
    present = [m for m in metrics_to_plot if m in set(df["metric"])]
    if not present:
        raise ValueError(f"plot_metric_curves: none of {list(metrics_to_plot)} in the run's metrics")
    lay = list(layers) if layers is not None else list(dict.fromkeys(df["layer"]))
    nrows = math.ceil(len(present) / ncols)
    fig = _new_figure((5.2 * min(ncols, len(present)), 3.4 * nrows))
    axs = np.atleast_1d(fig.subplots(nrows, min(ncols, len(present)), squeeze=False)).ravel()
    cmap = _layer_colors(lay)
    for ax, m in zip(axs, present):
        sub = df[df["metric"] == m]
        for L in lay:
            s = sub[sub["layer"] == L].sort_values(x)
            if s.empty:
                continue
            ax.plot(s[x], s["value"], marker="o", ms=3, lw=1.5, color=cmap[L], label=L)
        if m == "alpha":
            ax.axhspan(2, 6, color="#2ca02c", alpha=0.07, label="2 ≤ α ≤ 6")
        ax.set_xlabel(x)
        ax.set_ylabel(_label(m))
        ax.set_title(_label(m), fontsize=10)
        ax.grid(True, alpha=0.3)
    _finish_panels(fig, axs, len(present), title)
    return fig


def _x_column(df: "pd.DataFrame", x: str) -> str:
    """``x``, or ``"step"`` when ``x`` is ``"epoch"`` and some row has no epoch (snapshots taken without one)."""
    if x == "epoch" and ("epoch" not in df.columns or df["epoch"].isna().any()):
        return "step"
    return x


def _finish_panels(fig: Figure, axs: Union[Sequence[Axes], np.ndarray], n_used: int, title: Optional[str]) -> None:
    """Finish a grid of per-metric panels: hide the unused axes, one layer legend, the figure title."""
    for ax in axs[n_used:]:
        ax.set_visible(False)
    _figure_legend(fig, axs, title="layer")
    if title:
        fig.suptitle(title, fontsize=12)


def _figure_legend(fig: Figure, axs: Union[Sequence[Axes], np.ndarray], title: str) -> None:
    """One legend for the whole figure, merging every panel's entries (first occurrence wins)."""
    seen: dict[str, Any] = {}
    for ax in axs:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if not lab.startswith("_") and lab not in seen:
                seen[lab] = h
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), loc="outside right upper", fontsize=8, title=title)


def _layer_colors(layers: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cm = colormaps["tab10" if len(layers) <= 10 else "tab20"]
    return {L: cm(i % cm.N) for i, L in enumerate(layers)}


def _require_columns(df: Any, cols: Iterable[str], what: str) -> "pd.DataFrame":
    missing = [c for c in cols if c not in getattr(df, "columns", [])]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}")
    return df


def _phase_matrix(phases: Sequence[Sequence[Optional[str]]]) -> np.ndarray:
    codes = {p: i for i, p in enumerate(PHASE_ORDER)}
    unknown = len(PHASE_ORDER)
    return np.array([[codes.get(p or "", unknown) for p in row] for row in phases], dtype=float)


def _phase_cmap() -> tuple[ListedColormap, BoundaryNorm]:
    colors = [PHASE_COLORS[p] for p in PHASE_ORDER] + [PHASE_COLORS["unknown"]]
    cmap = ListedColormap(colors)
    norm = BoundaryNorm(np.arange(len(colors) + 1) - 0.5, cmap.N)
    return cmap, norm


def _phase_grid(
    rows: Sequence[str],
    cols: Sequence[Union[str, int]],
    cells: Sequence[Sequence[Optional[str]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> Figure:
    mat = _phase_matrix(cells)
    w = min(18.0, max(6.0, 0.45 * len(cols) + 3.5))
    h = max(2.6, 0.42 * len(rows) + 1.8)
    fig = _new_figure((w, h))
    ax = fig.add_subplot()
    cmap, norm = _phase_cmap()
    ax.imshow(mat, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=9)
    step = max(1, math.ceil(len(cols) / 30))
    ax.set_xticks(
        range(0, len(cols), step),
        labels=[str(c) for c in cols][::step],
        fontsize=8,
        rotation=0 if len(cols) <= 12 else 60,
    )
    ax.set_xticks(np.arange(-0.5, len(cols), 1), minor=True)
    ax.set_yticks(np.arange(-0.5, len(rows), 1), minor=True)
    ax.grid(which="minor", color="white", lw=1.0)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    used = {int(v) for v in np.unique(mat)}
    # always show every phase in the legend so colours are comparable across figures
    handles = [Patch(facecolor=PHASE_COLORS[p], edgecolor="#888", label=p) for p in PHASE_ORDER]
    if len(PHASE_ORDER) in used:
        handles.append(Patch(facecolor=PHASE_COLORS["unknown"], edgecolor="#888", label="unknown / not fitted"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="phase")
    return fig


def plot_phase_timeline(
    phases: "pd.DataFrame",
    *,
    x: str = "epoch",
    layers: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Figure:
    """Layers (rows) x snapshots (columns), each cell coloured by its phase.

    ``phases`` has columns ``step, epoch, layer, phase`` (the run store's
    phase table).  Columns are labelled by ``x``: the epoch, or the step
    when any snapshot has no epoch.
    """
    df = _require_columns(phases, ("step", "layer", "phase"), "phases")
    if df.empty:
        raise ValueError("plot_phase_timeline: the run has no phase records")
    x = _x_column(df, x)
    steps = sorted(df["step"].unique())
    lay = list(layers) if layers is not None else list(dict.fromkeys(df["layer"]))
    records: list[Any] = list(df.itertuples())  # pandas-stubs types each field as any scalar
    lookup = {(r.layer, r.step): r.phase for r in records}
    lab = {r.step: int(getattr(r, x)) for r in records}
    cells = [[lookup.get((L, s)) for s in steps] for L in lay]
    return _phase_grid(
        lay,
        [lab[s] for s in steps],
        cells,
        xlabel=x,
        ylabel="layer",
        title=title or "Phase of each layer at each snapshot",
    )


def plot_phase_diagram(
    table: Mapping[str, Mapping[str, Optional[str]]],
    *,
    run_labels: Sequence[str],
    layers: Sequence[str],
    xlabel: str = "run",
    title: Optional[str] = None,
) -> Figure:
    """Phase diagram of a sweep: layers (rows) x runs (columns, in ``run_labels`` order).

    ``table[run_label][layer]`` is the phase of that layer at that run's last snapshot.
    """
    cells = [[table.get(r, {}).get(L) for r in run_labels] for L in layers]
    return _phase_grid(
        list(layers),
        list(run_labels),
        cells,
        xlabel=xlabel,
        ylabel="layer",
        title=title or "Phase diagram (final snapshot of each run)",
    )


def plot_sweep(
    df: "pd.DataFrame",
    *,
    param: str,
    metrics_to_plot: Sequence[str] = ("alpha", "mp_softrank", "stable_rank", "num_spikes"),
    layers: Optional[Sequence[str]] = None,
    group: Optional[str] = "seed",
    log_x: Optional[bool] = None,
    title: Optional[str] = None,
) -> Figure:
    """Metrics against a swept parameter, one subplot per metric, one colour per layer.

    ``df`` is a wide table with one row per (run, layer): columns ``param``,
    ``layer``, the metrics, and optionally ``group`` (e.g. the seed).  Each
    group is drawn as faint markers; the mean over groups as a line with
    ±1 standard deviation error bars.  ``log_x`` defaults to a log axis when
    the parameter values are positive and span more than a factor 20.
    """
    _require_columns(df, (param, "layer"), "sweep table")
    present = [m for m in metrics_to_plot if m in df.columns and df[m].notna().any()]
    if not present:
        raise ValueError(f"plot_sweep: none of {list(metrics_to_plot)} present")
    lay = list(layers) if layers is not None else list(dict.fromkeys(df["layer"]))
    vals = np.asarray(df[param], dtype=float)
    if log_x is None:
        log_x = bool((vals > 0).all() and vals.max() / vals.min() > 20)
    ncols = 2 if len(present) > 1 else 1
    nrows = math.ceil(len(present) / ncols)
    fig = _new_figure((5.4 * ncols + 1.2, 3.5 * nrows))
    axs = fig.subplots(nrows, ncols, squeeze=False).ravel()
    cmap = _layer_colors(lay)
    has_group = group is not None and group in df.columns and df[group].nunique() > 1
    for ax, m in zip(axs, present):
        for L in lay:
            s = df[df["layer"] == L][[param, m] + ([group] if has_group else [])].dropna(subset=[m])
            if s.empty:
                continue
            if has_group:
                ax.plot(s[param], s[m], "o", ms=3, color=cmap[L], alpha=0.35)
            agg = s.groupby(param)[m].agg(["mean", "std", "count"]).reset_index().sort_values(param)
            ax.errorbar(
                agg[param],
                agg["mean"],
                yerr=agg["std"].fillna(0) if has_group else None,
                marker="o",
                ms=4,
                lw=1.6,
                capsize=2,
                color=cmap[L],
                label=L,
            )
        if m == "alpha":
            ax.axhspan(2, 6, color="#2ca02c", alpha=0.07)
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(param)
        ax.set_ylabel(_label(m))
        ax.set_title(_label(m) + (" (mean ± sd over seeds)" if has_group else ""), fontsize=10)
        ax.grid(True, alpha=0.3)
    _finish_panels(fig, axs, len(present), title)
    return fig


# --------------------------------------------------------------------------
# several runs side by side (``wwmonitor compare`` without a swept parameter)
# --------------------------------------------------------------------------

_RUN_STYLES: tuple[str, ...] = ("-", "--", ":", "-.")


def _run_styles(runs: Sequence[str]) -> dict[str, tuple[Any, str]]:
    """A (colour, line style) per run: ten colours, then the same colours dashed, dotted, ..."""
    from matplotlib import colormaps

    cm = colormaps["tab10"]
    return {r: (cm(i % 10), _RUN_STYLES[(i // 10) % len(_RUN_STYLES)]) for i, r in enumerate(runs)}


def _draw_runs(ax: Axes, sub: "pd.DataFrame", x: str, metric: str, run_list: Sequence[str], styles: Mapping) -> None:
    """One panel of :func:`plot_run_curves`: a line per run (or a note when no run has a value)."""
    from matplotlib.ticker import MaxNLocator

    drawn = 0
    for r in run_list:
        s = sub[sub["run"] == r].dropna(subset=["value"]).sort_values(x)
        if not s.empty:
            color, ls = styles[r]
            ax.plot(s[x], s["value"], marker="o", ms=3, lw=1.5, color=color, ls=ls, label=r)
            drawn += 1
    if not drawn:
        ax.text(
            0.5,
            0.5,
            "no value in any run",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            color="#57606a",
        )
        ax.set_xticks([])
        ax.set_yticks([])
        return
    if metric == "alpha":
        ax.axhspan(2, 6, color="#2ca02c", alpha=0.07)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_run_curves(
    df: "pd.DataFrame",
    *,
    metrics_to_plot: Sequence[str] = ("alpha", "alpha_weighted", "stable_rank", "mp_softrank"),
    x: str = "epoch",
    runs: Optional[Sequence[str]] = None,
    layers: Optional[Sequence[str]] = None,
    ncols: int = 2,
    title: Optional[str] = None,
    prefix: str = "",
) -> Figure:
    """Several runs overlaid: one line per run in each panel.

    ``df`` is long: columns ``run``, ``metric``, ``value``, ``x`` (``"epoch"``
    or ``"step"``; the step is used when any row has no epoch) and, with
    ``layers``, ``layer``.  Without ``layers``: one panel per metric (e.g. the
    means over layers; ``prefix`` such as ``"mean "`` goes before each panel
    title).  With ``layers``: a grid, one row per layer and one column per
    metric.  Alpha panels shade the ``[2, 6]`` band.
    """
    df = _require_columns(df, ("run", "metric", "value", x) + (("layer",) if layers is not None else ()), "curves")
    x = _x_column(df, x)
    present = [m for m in metrics_to_plot if m in set(df["metric"]) and df[df["metric"] == m]["value"].notna().any()]
    if not present:
        raise ValueError(f"plot_run_curves: none of {list(metrics_to_plot)} has a value")
    run_list = list(runs) if runs is not None else list(dict.fromkeys(df["run"]))
    panels = [(None, m) for m in present] if layers is None else [(L, m) for L in layers for m in present]
    ncols = min(ncols, len(panels)) if layers is None else len(present)
    nrows = math.ceil(len(panels) / ncols)
    w, h = (5.2, 3.3) if layers is None else (max(3.4, 13.0 / ncols), 2.7)
    fig = _new_figure((w * ncols + 1.6, h * nrows))
    axs = fig.subplots(nrows, ncols, squeeze=False).ravel()
    styles = _run_styles(run_list)
    for ax, (L, m) in zip(axs, panels):
        sub = df[df["metric"] == m] if L is None else df[(df["metric"] == m) & (df["layer"] == L)]
        _draw_runs(ax, sub, x, m, run_list, styles)
        ax.set_xlabel(x, fontsize=9)
        ax.set_title((prefix + _label(m)) if L is None else f"{L}: {_label(m)}", fontsize=10 if L is None else 9)
        ax.grid(True, alpha=0.3)
    for ax in axs[len(panels) :]:
        ax.set_visible(False)
    _figure_legend(fig, axs, title="run")
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def plot_phase_changes(
    history: "pd.DataFrame",
    *,
    x: str = "epoch",
    runs: Optional[Sequence[str]] = None,
    layers: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Figure:
    """The phase of each layer over training, one bar per (run, layer), runs one above the other.

    ``history`` has columns ``run``, ``layer``, ``step``, ``phase`` and ``x``
    (``"epoch"``, or ``"step"`` when any snapshot has no epoch): one row per
    run, layer and snapshot.  Each snapshot covers the stretch of the x axis
    halfway to its neighbours, coloured by its phase (grey: no phase), so a
    change of colour along a bar is a change of phase.
    """
    df = _require_columns(history, ("run", "layer", "step", "phase", x), "history")
    if df.empty:
        raise ValueError("plot_phase_changes: no snapshots")
    x = _x_column(df, x)
    run_list = list(runs) if runs is not None else list(dict.fromkeys(df["run"]))
    lay = list(layers) if layers is not None else list(dict.fromkeys(df["layer"]))
    rows = [(r, L) for r in run_list for L in lay]
    fig = _new_figure((12.0, max(2.4, 0.3 * len(rows) + 1.6)))
    ax = fig.add_subplot()
    for i, (r, L) in enumerate(rows):
        s = df[(df["run"] == r) & (df["layer"] == L)].sort_values("step")
        xs = np.asarray(s[x], dtype=float)
        if not xs.size:
            continue
        mids = (xs[1:] + xs[:-1]) / 2
        half = (xs[1] - xs[0]) / 2 if xs.size > 1 else 0.5
        lo = np.concatenate([[xs[0] - half], mids])
        hi = np.concatenate([mids, [xs[-1] + ((xs[-1] - xs[-2]) / 2 if xs.size > 1 else 0.5)]])
        colors = [
            PHASE_COLORS.get(str(p), PHASE_COLORS["unknown"]) if isinstance(p, str) else PHASE_COLORS["unknown"]
            for p in s["phase"]
        ]
        ax.broken_barh(list(zip(lo, hi - lo)), (i - 0.4, 0.8), facecolors=colors, edgecolor="white", lw=0.5)
    labels = [f"{r} · {L}" if len(lay) > 1 else str(r) for r, L in rows]
    ax.set_yticks(range(len(rows)), labels=labels, fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    for k in range(1, len(run_list)):
        ax.axhline(k * len(lay) - 0.5, color="#333", lw=0.8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(x)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(title or "Phase of each layer over training", fontsize=11)
    handles = [Patch(facecolor=PHASE_COLORS[p], edgecolor="#888", label=p) for p in PHASE_ORDER]
    handles.append(Patch(facecolor=PHASE_COLORS["unknown"], edgecolor="#888", label="no phase"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="phase")
    return fig
