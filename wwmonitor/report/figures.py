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
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..powerlaw import EVALS_THRESH, PowerLawFit, fit_powerlaw
from .figure_style import (
    _DATA_COLOR,
    _MP_COLOR,
    _PL_COLOR,
    LAMBDA_LABEL,
    PHASE_COLORS,
    PHASE_ORDER,
    _compact_log_ticks,
    _figure_and_axes,
    _finish_axes,
    _new_figure,
)
from .figures_runs import (
    METRIC_LABELS,
    plot_metric_curves,
    plot_phase_changes,
    plot_phase_diagram,
    plot_phase_timeline,
    plot_run_curves,
    plot_sweep,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..mp import MPFit


__all__ = [
    "PHASE_ORDER",
    "PHASE_COLORS",
    "LAMBDA_LABEL",
    "METRIC_LABELS",
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


def _draw_pdf(
    ax: Axes, x: np.ndarray, fit: Optional[PowerLawFit], mp: Optional["MPFit"], bins: Optional[int], label: str
) -> None:
    """:func:`plot_esd`'s density panel: log-binned ESD, power-law density from ``xmin``, MP density."""
    n = x.size
    edges = _log_bins(x, bins or _auto_bins(n))
    counts, _ = np.histogram(x, bins=edges)
    dens = counts / (n * np.diff(edges))
    ax.stairs(dens, edges, fill=True, color=_DATA_COLOR, alpha=0.35, label=label)
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
        ax.plot(xs[ok], ys[ok], color=_MP_COLOR, lw=2.0, label=rf"MP density, $\sigma^2$={mp.sigma2:.3g}, Q={mp.Q:.3g}")
    ax.set_ylabel(r"density $\rho(\lambda)$")
    ax.set_ylim(bottom=ymin_pos / 3)


def _draw_ccdf(ax: Axes, x: np.ndarray, fit: Optional[PowerLawFit], label: str) -> None:
    """:func:`plot_esd`'s CCDF panel: empirical ``P(Λ >= λ)`` and the power-law CCDF from ``xmin``."""
    n = x.size
    ccdf = 1.0 - np.arange(n) / n  # P(Λ >= x_i) for the sorted x
    ax.step(x, ccdf, where="post", color=_DATA_COLOR, lw=1.5, label=label)
    if fit is not None and fit.ok:
        xs = np.logspace(math.log10(fit.xmin), math.log10(max(fit.xmax, x.max())), 100)
        ys = (fit.n_tail / n) * (xs / fit.xmin) ** (1.0 - fit.alpha)
        ax.plot(xs, ys, color=_PL_COLOR, lw=2.2, ls="--", label=_pl_label(fit))
    ax.set_ylabel(r"CCDF $P(\Lambda \geq \lambda)$")
    ax.set_ylim(bottom=0.5 / n, top=1.5)


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
        _draw_pdf(ax, x, fit, mp, bins, f"ESD, {n} eigenvalues{extra}")
    else:
        _draw_ccdf(ax, x, fit, f"empirical CCDF, {n} eigenvalues{extra}")
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
