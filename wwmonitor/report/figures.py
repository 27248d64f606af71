"""Matplotlib figures: ESD diagnostics, metric curves, phase maps, sweeps.

Every function here is pure: arrays, fit objects or DataFrames in, a
:class:`matplotlib.figure.Figure` out.  No ``pyplot`` state is touched (figures
are built with ``Figure()`` directly), so the functions are safe to call from
the monitor's background thread and never open a window.  Save with
``fig.savefig(path, dpi=...)``.

Axes and units
--------------
The ESD figures plot the eigenvalues ``λ`` of ``X = WᵀW/N`` (the seeds'
convention; dimensionless, in units of the squared weight scale).  A
:class:`~wwmonitor.powerlaw.PowerLawFit` passed in must be on *the same axis*
as the eigenvalues passed in (``fit_powerlaw(evals)`` gives that).  The
weightwatcher-compatible ``LayerMetrics.xmin`` is on the ``σ²`` axis
(``σ² = N·λ``); divide it by ``N`` before comparing with these plots.  A
fit whose ``xmin`` lies outside the eigenvalue range is rejected with a
``ValueError`` that says so.

Formulas of the overlays (``n`` eigenvalues, ``n_tail`` of them ``>= xmin``):

* power-law density, normalised to the whole ESD:
  ``p(λ) = (n_tail/n) · (α-1)/xmin · (λ/xmin)^(-α)`` for ``λ >= xmin``;
* power-law CCDF: ``P(Λ >= λ) = (n_tail/n) · (λ/xmin)^(1-α)``;
* Marchenko-Pastur density ``f_bulk · ρ_MP(λ; Q, σ²)`` from
  :func:`wwmonitor.mp.mp_pdf`, supported on ``[λ-, λ+]`` with
  ``λ± = σ²(1 ± 1/√Q)²`` and ``f_bulk`` the fraction of eigenvalues in the
  bulk (``MPFit.bulk_fraction · (1 - frac_at_zero)``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from ..phases import PHASES
from ..powerlaw import EVALS_THRESH, PowerLawFit, fit_powerlaw
from ..records import MODEL_LAYER

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.typing import LegendLocType

    from ..mp import MPFit

__all__ = [
    "PHASE_ORDER",
    "PHASE_COLORS",
    "LAMBDA_LABEL",
    "plot_esd",
    "plot_esd_panel",
    "plot_ks_landscape",
    "plot_scree",
    "plot_mp_hist",
    "plot_metric_curves",
    "plot_phase_timeline",
    "plot_sweep",
    "plot_phase_diagram",
    "plot_run_curves",
    "plot_phase_changes",
]

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


def _as_evals(evals: Any, name: str = "evals") -> np.ndarray:
    x = np.asarray(evals, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"{name}: no eigenvalues to plot")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: eigenvalues contain NaN or Inf")
    if (x < -1e-12 * max(1.0, float(np.abs(x).max()))).any():
        raise ValueError(f"{name}: eigenvalues of a Gram matrix must be >= 0 (got min {x.min():.3g})")
    return np.sort(np.clip(x, 0.0, None))


def _positive(x: np.ndarray) -> np.ndarray:
    return x[x > EVALS_THRESH]


def _check_fit_axis(fit: PowerLawFit, x: np.ndarray, what: str) -> None:
    """Reject a fit that was made on a different eigenvalue axis (σ² vs λ)."""
    if not fit.ok:
        return
    lo, hi = float(x.min()), float(x.max())
    tol = 1e-9 * max(hi, 1e-300)
    if not (lo - tol <= fit.xmin <= hi + tol):
        raise ValueError(
            f"{what}: fit.xmin={fit.xmin:.4g} lies outside the eigenvalue range "
            f"[{lo:.4g}, {hi:.4g}]; the fit must be on the same axis as the eigenvalues "
            "(LayerMetrics.xmin is on the σ² axis = N·λ; refit with fit_powerlaw(evals))"
        )


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


def _log_bins(x: np.ndarray, bins: int) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        lo, hi = lo * 0.9, hi * 1.1 + 1e-12
    return np.logspace(math.log10(lo), math.log10(hi), bins + 1)


def _auto_bins(n: int) -> int:
    return int(np.clip(round(2 * n ** (1 / 3)), 10, 80))


def _mp_curve(mp: "MPFit", lo: float, num: int = 400, log: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """MP density on its support ``[λ-, λ+]`` (log grid starts at ``max(λ-, lo)``)."""
    from ..mp import mp_pdf

    a, b = float(mp.lambda_minus), float(mp.lambda_plus)
    if log:
        a = max(a, lo, b * 1e-6)
        # points crowd towards both edges where the density changes fastest
        xs = np.geomspace(a, b, num)
    else:
        xs = a + (b - a) * (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, num)))
    # the fit describes the bulk only: weight the density by the bulk's share of all eigenvalues
    w = float(getattr(mp, "bulk_fraction", 1.0)) * (1.0 - float(getattr(mp, "frac_at_zero", 0.0)))
    ys = w * np.asarray(mp_pdf(xs, mp.Q, mp.sigma2), dtype=np.float64)
    return xs, ys


def _pl_label(fit: PowerLawFit) -> str:
    return (
        rf"power law $\alpha$={fit.alpha:.2f}±{fit.sigma:.2f}, "
        rf"$x_{{min}}$={fit.xmin:.3g}, D={fit.D:.3f} ({fit.n_tail} evals)"
    )


def plot_esd(
    evals: Any,
    *,
    fit: Optional[PowerLawFit] = None,
    mp: Optional["MPFit"] = None,
    kind: str = "pdf",
    fit_powerlaw_if_missing: bool = True,
    title: Optional[str] = None,
    bins: Optional[int] = None,
    ax: Optional[Axes] = None,
    figsize: tuple[float, float] = (6.0, 4.2),
) -> Figure:
    """ESD on log-log axes with the power-law fit (and optionally the MP density).

    Parameters
    ----------
    evals:
        Eigenvalues (any order).  Values ``<= 1e-5`` cannot be shown on a log
        axis and are left out of the plot (the count is noted in the legend).
    fit:
        Power-law fit *on the axis of* ``evals``.  ``None``: computed with
        :func:`~wwmonitor.powerlaw.fit_powerlaw` when
        ``fit_powerlaw_if_missing`` (the default).
    mp:
        Marchenko-Pastur fit (:func:`wwmonitor.mp.fit_mp`, λ axis).  Its
        density is overlaid (``kind="pdf"``) and ``λ+`` is marked.
    kind:
        ``"pdf"``: log-binned density ``ρ(λ)`` (each bin's count / (n · width));
        ``"ccdf"``: empirical ``P(Λ >= λ)``.
    ax:
        Draw into an existing axes (its figure is returned).

    Returns
    -------
    The figure.  The x axis is ``λ`` (dimensionless), the y axis ``ρ(λ)``
    (1/λ units) or the CCDF (a probability).
    """
    if kind not in ("pdf", "ccdf"):
        raise ValueError(f"plot_esd: kind must be 'pdf' or 'ccdf', got {kind!r}")
    x_all = _as_evals(evals)
    x = _positive(x_all)
    if x.size == 0:
        raise ValueError("plot_esd: all eigenvalues are <= 1e-5; nothing to show on a log axis")
    n_dropped = x_all.size - x.size
    if fit is None and fit_powerlaw_if_missing and x.size >= 2:
        fit = fit_powerlaw(x)
    if fit is not None:
        _check_fit_axis(fit, x, "plot_esd")

    fig, ax = _figure_and_axes(ax, figsize)
    n = x.size
    extra = f" ({n_dropped} ≤1e-5 not shown)" if n_dropped else ""
    if kind == "pdf":
        edges = _log_bins(x, bins or _auto_bins(n))
        counts, _ = np.histogram(x, bins=edges)
        dens = counts / (n * np.diff(edges))
        ax.stairs(dens, edges, fill=True, color=_DATA_COLOR, alpha=0.35, label=f"ESD, {n} eigenvalues{extra}")
        ax.stairs(dens, edges, color=_DATA_COLOR, lw=0.8)
        ymin_pos = dens[dens > 0].min() if (dens > 0).any() else 1e-3
        if fit is not None and fit.ok:
            xs = np.logspace(math.log10(fit.xmin), math.log10(max(fit.xmax, x.max())), 100)
            frac = fit.n_tail / n
            ys = frac * (fit.alpha - 1.0) / fit.xmin * (xs / fit.xmin) ** (-fit.alpha)
            ax.plot(xs, ys, color=_PL_COLOR, lw=2.2, ls="--", label=_pl_label(fit))
        if mp is not None and np.isfinite(mp.lambda_plus) and mp.lambda_plus > 0:
            xs, ys = _mp_curve(mp, float(x.min()), log=True)
            ok = ys > 0
            ax.plot(
                xs[ok], ys[ok], color=_MP_COLOR, lw=2.0, label=rf"MP density, $\sigma^2$={mp.sigma2:.3g}, Q={mp.Q:.3g}"
            )
        ax.set_ylabel(r"density $\rho(\lambda)$")
        ax.set_ylim(bottom=ymin_pos / 3)
    else:
        ccdf = 1.0 - np.arange(n) / n  # P(Λ >= x_i) for the sorted x
        ax.step(x, ccdf, where="post", color=_DATA_COLOR, lw=1.5, label=f"empirical CCDF, {n} eigenvalues{extra}")
        if fit is not None and fit.ok:
            xs = np.logspace(math.log10(fit.xmin), math.log10(max(fit.xmax, x.max())), 100)
            ys = (fit.n_tail / n) * (xs / fit.xmin) ** (1.0 - fit.alpha)
            ax.plot(xs, ys, color=_PL_COLOR, lw=2.2, ls="--", label=_pl_label(fit))
        ax.set_ylabel(r"CCDF $P(\Lambda \geq \lambda)$")
        ax.set_ylim(bottom=0.5 / n, top=1.5)
    if fit is not None and fit.ok:
        ax.axvline(fit.xmin, color=_PL_COLOR, lw=1.0, ls=":", alpha=0.9)
    if mp is not None and np.isfinite(mp.lambda_plus) and mp.lambda_plus > 0:
        ax.axvline(mp.lambda_plus, color=_MP_COLOR, lw=1.0, ls=":", label=rf"MP edge $\lambda_+$={mp.lambda_plus:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _compact_log_ticks(ax, "x")
    _compact_log_ticks(ax, "y")
    ax.set_xlabel(LAMBDA_LABEL)
    ax.set_title(title or ("ESD (log-log density)" if kind == "pdf" else "ESD (log-log CCDF)"), fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower left", framealpha=0.85)
    return fig


def plot_mp_hist(
    evals: Any,
    mp: "MPFit",
    *,
    title: Optional[str] = None,
    bins: Optional[int] = None,
    ax: Optional[Axes] = None,
    figsize: tuple[float, float] = (6.0, 4.2),
) -> Figure:
    """Linear-axis histogram of the ESD with the fitted MP density and ``λ+`` (+ TW margin).

    The x range is cut at ``max(3·λ+, 99th percentile)`` (at most the largest
    eigenvalue, at least just past ``λ+``) so the bulk stays
    readable; eigenvalues beyond it (spikes) are counted in the legend and
    marked as ticks along the bottom axis.
    """
    x = _as_evals(evals)
    n = x.size
    lam_p = float(mp.lambda_plus)
    cut = max(3.0 * lam_p, float(np.quantile(x, 0.99))) if np.isfinite(lam_p) else float(x.max())
    cut = min(cut, float(x.max())) if x.max() > 0 else 1.0
    if np.isfinite(lam_p) and lam_p > 0:
        cut = max(cut, 1.08 * lam_p)  # keep the MP edge in view
    shown = x[x <= cut]
    n_out = n - shown.size
    fig, ax = _figure_and_axes(ax, figsize)
    nb = bins or int(np.clip(n // 8, 20, 100))
    counts, edges = np.histogram(shown, bins=nb, range=(0.0, cut * 1.02))
    dens = counts / (n * np.diff(edges))
    ax.stairs(dens, edges, fill=True, color=_DATA_COLOR, alpha=0.35, label=f"ESD, {n} eigenvalues")
    if np.isfinite(lam_p) and lam_p > 0:
        xs, ys = _mp_curve(mp, 0.0, log=False)
        ax.plot(xs, ys, color=_MP_COLOR, lw=2.0, label=rf"MP density, $\sigma^2$={mp.sigma2:.3g}, Q={mp.Q:.3g}")
        ax.axvline(lam_p, color=_MP_COLOR, ls="--", lw=1.2, label=rf"$\lambda_+$={lam_p:.3g}")
        tw = float(getattr(mp, "tw_margin", float("nan")) or float("nan"))
        if np.isfinite(tw) and tw > 0:
            ax.axvspan(lam_p, lam_p + tw, color=_MP_COLOR, alpha=0.12, label=f"Tracy-Widom margin {tw:.2g}")
    spikes = x[x > lam_p + (getattr(mp, "tw_margin", 0.0) or 0.0)] if np.isfinite(lam_p) else x[:0]
    spikes_in = spikes[spikes <= cut]
    if spikes_in.size:
        ax.plot(
            spikes_in,
            np.zeros_like(spikes_in),
            "|",
            color=_PL_COLOR,
            ms=14,
            mew=1.5,
            label=f"{spikes.size} spikes above λ+ + TW",
        )
    if n_out:
        ax.text(
            0.98,
            0.55,
            f"{n_out} eigenvalue(s) > {cut:.3g}\nnot shown (max {x.max():.3g})",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
        )
    ax.set_xlim(0.0, cut * 1.02)
    ax.set_xlabel(LAMBDA_LABEL)
    ax.set_ylabel(r"density $\rho(\lambda)$")
    _finish_axes(ax, title or "ESD (linear) with Marchenko-Pastur fit", legend_fontsize=7.5, legend_loc="upper right")
    return fig


def plot_ks_landscape(
    evals: Any,
    *,
    fit: Optional[PowerLawFit] = None,
    title: Optional[str] = None,
    ax: Optional[Axes] = None,
    figsize: tuple[float, float] = (6.0, 4.2),
) -> Figure:
    """KS distance ``D`` of the power-law fit against the candidate ``xmin``.

    ``fit`` must carry a landscape (``fit_powerlaw(evals, keep_landscape=True)``);
    ``None`` computes it.  The chosen ``xmin`` (minimum ``D``) is marked and
    the number of eigenvalues in the tail (``K``) given.
    """
    x = _positive(_as_evals(evals))
    if fit is None or fit.ks_landscape is None:
        fit = fit_powerlaw(x, keep_landscape=True)
    if not fit.ok or fit.ks_landscape is None:
        raise ValueError(f"plot_ks_landscape: power-law fit failed ({fit.status}: {fit.message})")
    _check_fit_axis(fit, x, "plot_ks_landscape")
    xm, D = fit.ks_landscape
    ok = np.isfinite(D)
    fig, ax = _figure_and_axes(ax, figsize)
    ax.plot(xm[ok], D[ok], color=_DATA_COLOR, lw=1.2, label="KS distance D(xmin)")
    ax.axvline(
        fit.xmin,
        color=_PL_COLOR,
        ls="--",
        lw=1.5,
        label=rf"best $x_{{min}}$={fit.xmin:.3g}: D={fit.D:.3f}, $\alpha$={fit.alpha:.2f}, K={fit.n_tail}",
    )
    ax.set_xscale("log")
    _compact_log_ticks(ax, "x")
    ax.set_xlabel(r"candidate $x_{min}$ (same axis as the eigenvalues)")
    ax.set_ylabel("Kolmogorov-Smirnov distance D")
    _finish_axes(ax, title or "Power-law fit: KS distance vs xmin", legend_fontsize=8, legend_loc="upper left")
    return fig


def plot_scree(
    evals: Any,
    *,
    fit: Optional[PowerLawFit] = None,
    mp: Optional["MPFit"] = None,
    explained_variance: bool = True,
    log_k: bool = False,
    title: Optional[str] = None,
    ax: Optional[Axes] = None,
    figsize: tuple[float, float] = (6.0, 4.2),
) -> Figure:
    """Scree plot: eigenvalues in descending order against their rank ``k = 1..n``.

    Left axis (log): ``λ_k``.  Right axis (with ``explained_variance``): the
    cumulative explained variance ``Σ_{j<=k} λ_j / Σ λ``.  The power-law tail
    size ``K = n_tail`` (from ``fit``, computed if ``None``) and the number of
    eigenvalues above ``λ+`` (from ``mp``) are marked.  Eigenvalues ``<= 1e-5``
    (numerical zeros; ignored by the fit) are not drawn.  ``log_k`` puts the
    rank on a log axis (useful when K is small compared with ``n``).
    """
    x = _as_evals(evals)
    desc = x[::-1]
    k = np.arange(1, desc.size + 1)
    if fit is None and _positive(x).size >= 2:
        fit = fit_powerlaw(_positive(x))
    if fit is not None:
        _check_fit_axis(fit, _positive(x), "plot_scree")
    fig, ax = _figure_and_axes(ax, figsize)
    pos = desc > EVALS_THRESH
    n_small = int(desc.size - pos.sum())
    ax.plot(
        k[pos],
        desc[pos],
        ".-",
        color=_DATA_COLOR,
        ms=3,
        lw=1,
        label="eigenvalue λ_k" + (f" ({n_small} ≤ 1e-5 not shown)" if n_small else ""),
    )
    ax.set_yscale("log")
    if log_k:
        ax.set_xscale("log")
    ax.set_xlabel("rank k (eigenvalues sorted in descending order)")
    ax.set_ylabel(r"eigenvalue $\lambda_k$")
    handles, labels = ax.get_legend_handles_labels()
    if fit is not None and fit.ok:
        h = ax.axvline(fit.n_tail + 0.5, color=_PL_COLOR, ls="--", lw=1.5)
        handles.append(h)
        labels.append(f"power-law tail: K={fit.n_tail} (λ ≥ xmin={fit.xmin:.3g})")
    if mp is not None and np.isfinite(mp.lambda_plus):
        n_above = int(np.count_nonzero(x > mp.lambda_plus))
        h = ax.axhline(mp.lambda_plus, color=_MP_COLOR, ls=":", lw=1.5)
        handles.append(h)
        labels.append(rf"MP edge $\lambda_+$={mp.lambda_plus:.3g} ({n_above} above)")
    if explained_variance and x.sum() > 0:
        ax2 = ax.twinx()
        cum = np.cumsum(desc) / desc.sum()
        (h,) = ax2.plot(k, cum, color="#2ca02c", lw=1.5, alpha=0.8)
        ax2.set_ylabel("cumulative explained variance", color="#2ca02c")
        ax2.set_ylim(0, 1.02)
        handles.append(h)
        labels.append("cumulative explained variance")
    ax.legend(handles, labels, fontsize=7.5, loc="center right", framealpha=0.85)
    ax.set_title(title or "Scree plot", fontsize=11)
    ax.grid(True, alpha=0.3)
    return fig


def plot_esd_panel(
    evals: Any,
    *,
    fit: Optional[PowerLawFit] = None,
    mp: Optional["MPFit"] = None,
    title: Optional[str] = None,
    phase: Optional[str] = None,
    fit_powerlaw_if_missing: bool = True,
    figsize: tuple[float, float] = (11.0, 3.8),
) -> Figure:
    """Two panels side by side: log-log density with PL fit + MP density, and the linear MP histogram.

    Used by the report's ESD gallery.  Without ``mp`` only the log-log panel is drawn.
    """
    fig = _new_figure(figsize if mp is not None else (6.0, figsize[1]))
    axs = fig.subplots(1, 2 if mp is not None else 1, squeeze=False)[0]
    plot_esd(
        evals,
        fit=fit,
        mp=mp,
        kind="pdf",
        ax=axs[0],
        title="log-log density",
        fit_powerlaw_if_missing=fit_powerlaw_if_missing,
    )
    if mp is not None:
        plot_mp_hist(evals, mp, ax=axs[1], title="linear density, MP bulk")
    sup = title or "ESD"
    if phase:
        sup += f"  —  phase: {phase}"
    fig.suptitle(sup, fontsize=12)
    return fig


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
    from matplotlib.ticker import MaxNLocator

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
        elif m == "alpha":
            ax.axhspan(2, 6, color="#2ca02c", alpha=0.07)
        if drawn:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
