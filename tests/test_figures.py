"""Figures: real ESDs, real fits; check the overlays sit on the data and the axes are labelled."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

import wwmonitor  # noqa: E402
from wwmonitor.mp import fit_mp  # noqa: E402
from wwmonitor.report import figures as F  # noqa: E402


def _heavy(seed: int = 0, shape: tuple[int, int] = (1000, 400)) -> tuple[np.ndarray, float, int]:
    rng = np.random.default_rng(seed)
    W = rng.standard_t(2.5, size=shape)
    return wwmonitor.esd(W), max(shape) / min(shape), min(shape)


def _gauss(seed: int = 1, shape: tuple[int, int] = (1000, 400)) -> tuple[np.ndarray, float, int]:
    rng = np.random.default_rng(seed)
    return wwmonitor.esd(rng.standard_normal(shape)), max(shape) / min(shape), min(shape)


def _png(fig) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    buf.seek(0)
    im = Image.open(buf)
    im.load()
    return im


def _not_blank(im: Image.Image) -> bool:
    a = np.asarray(im.convert("L"), dtype=float)
    return a.std() > 5.0


def _line(ax, label_start: str):
    for ln in ax.get_lines():
        if str(ln.get_label()).startswith(label_start):
            return ln
    raise AssertionError(f"no line labelled {label_start!r}; have {[ln.get_label() for ln in ax.get_lines()]}")


def test_esd_pdf_powerlaw_line_sits_on_the_histogram():
    ev, Q, M = _heavy()
    fit = wwmonitor.fit_powerlaw(ev)
    mp = fit_mp(ev, Q, M=M)
    fig = F.plot_esd(ev, fit=fit, mp=mp)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "lambda" in ax.get_xlabel() and "rho" in ax.get_ylabel()
    pl = _line(ax, "power law")
    xs, ys = pl.get_data()
    assert xs[0] == pytest.approx(fit.xmin)
    # compare the line with the empirical density of the tail over [xmin, 4 xmin]
    x = np.sort(ev)
    lo, hi = fit.xmin, 4 * fit.xmin
    emp = np.count_nonzero((x >= lo) & (x < hi)) / (x.size * (hi - lo))
    model = np.trapezoid(np.interp(np.linspace(lo, hi, 200), xs, ys), np.linspace(lo, hi, 200)) / (hi - lo)
    assert 0.5 < model / emp < 2.0
    # the MP density is drawn on [λ-, λ+]
    mpl = _line(ax, "MP density")
    mx, my = mpl.get_data()
    assert 0.98 * mp.lambda_plus <= mx.max() <= mp.lambda_plus and (my > 0).all()
    assert _not_blank(_png(fig))


def test_esd_ccdf_fit_matches_empirical_at_xmin():
    ev, _, _ = _heavy(2)
    fit = wwmonitor.fit_powerlaw(ev)
    fig = F.plot_esd(ev, fit=fit, kind="ccdf")
    ax = fig.axes[0]
    xs, ys = _line(ax, "power law").get_data()
    # at xmin the model CCDF equals the tail fraction, which is the empirical CCDF there
    emp = np.count_nonzero(ev >= fit.xmin) / np.count_nonzero(ev > 1e-5)
    assert ys[0] == pytest.approx(emp, rel=1e-9)
    # from there it falls as a straight line of slope 1 - alpha on log-log axes, up to the largest eigenvalue
    x = np.sort(ev[ev > 1e-5])
    assert xs[-1] == pytest.approx(x[-1])
    assert np.polyfit(np.log(xs), np.log(ys), 1)[0] == pytest.approx(1.0 - fit.alpha)
    # the empirical CCDF is drawn as a step through every eigenvalue, from 1 down to 1/n
    cx, cy = _line(ax, "empirical CCDF").get_data()
    np.testing.assert_allclose(cx, x)
    assert cy[0] == pytest.approx(1.0) and cy[-1] == pytest.approx(1.0 / x.size)
    assert "CCDF" in ax.get_ylabel() and "lambda" in ax.get_xlabel()
    assert _not_blank(_png(fig))


def test_fit_on_other_axis_is_rejected():
    ev, _, _ = _heavy()
    sigma_axis_fit = wwmonitor.fit_powerlaw(ev * 1000.0)  # σ² axis = N·λ
    with pytest.raises(ValueError, match="same axis"):
        F.plot_esd(ev, fit=sigma_axis_fit)
    with pytest.raises(ValueError, match="kind"):
        F.plot_esd(ev, kind="histogram")
    with pytest.raises(ValueError, match="NaN"):
        F.plot_esd(np.array([1.0, np.nan]))


def test_ks_landscape_minimum_is_marked():
    ev, _, _ = _heavy(3)
    fit = wwmonitor.fit_powerlaw(ev, keep_landscape=True)
    fig = F.plot_ks_landscape(ev, fit=fit)
    ax = fig.axes[0]
    xm, D = _line(ax, "KS distance").get_data()
    assert np.nanmin(D) == pytest.approx(fit.D)
    assert xm[np.nanargmin(D)] == pytest.approx(fit.xmin)
    assert "Kolmogorov" in ax.get_ylabel() and ax.get_xscale() == "log"
    best = _line(ax, "best")
    assert best.get_xdata()[0] == pytest.approx(fit.xmin)
    # without a landscape the function computes one: the same curve and the same marked minimum
    ax2 = F.plot_ks_landscape(ev).axes[0]
    xm2, D2 = _line(ax2, "KS distance").get_data()
    np.testing.assert_allclose(xm2, xm)
    np.testing.assert_allclose(D2, D)
    assert _line(ax2, "best").get_xdata()[0] == pytest.approx(fit.xmin)


def test_scree_and_mp_hist():
    ev, Q, M = _gauss()
    mp = fit_mp(ev, Q, M=M)
    fig = F.plot_scree(ev, mp=mp)
    assert fig.axes[0].get_yscale() == "log"
    assert "rank" in fig.axes[0].get_xlabel()
    assert any("explained" in a.get_ylabel() for a in fig.axes)
    # the eigenvalues, largest first, against rank 1..n; the explained variance rises to 1
    k, lam = _line(fig.axes[0], "eigenvalue").get_data()
    np.testing.assert_array_equal(k, np.arange(1, ev.size + 1))
    np.testing.assert_allclose(lam, np.sort(ev)[::-1], rtol=1e-12)
    (cum,) = [ln for a in fig.axes[1:] for ln in a.get_lines()]
    assert cum.get_ydata()[-1] == pytest.approx(1.0) and (np.diff(cum.get_ydata()) >= 0).all()
    # the MP edge is drawn at λ+ and the legend counts the eigenvalues above it
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    n_above = int(np.count_nonzero(ev > mp.lambda_plus))
    assert any(t.startswith("MP edge") and f"({n_above} above)" in t for t in legend), legend
    assert _not_blank(_png(fig))
    fig2 = F.plot_mp_hist(ev, mp)
    ax = fig2.axes[0]
    mx, my = _line(ax, "MP density").get_data()
    # for a Gaussian matrix the MP density integrates to ~1 over the bulk
    assert np.trapezoid(my, mx) == pytest.approx(1.0, abs=0.05)
    assert _not_blank(_png(fig2))


def test_panel_and_run_level_figures():
    ev, Q, M = _heavy()
    fig = F.plot_esd_panel(ev, mp=fit_mp(ev, Q, M=M), title="W", phase="heavy-tailed")
    assert len(fig.axes) == 2
    assert fig.get_suptitle() == "W  —  phase: heavy-tailed"
    assert [ax.get_title() for ax in fig.axes] == ["log-log density", "linear density, MP bulk"]
    assert fig.axes[0].get_xscale() == "log" and fig.axes[1].get_xscale() == "linear"
    _line(fig.axes[0], "power law")  # the power law is fitted when no fit is given
    _line(fig.axes[1], "MP density")
    assert _not_blank(_png(fig))
    rows = []
    for step, epoch in ((10, 0), (20, 1), (30, 2)):
        for layer, a in (("fc1", 3.0), ("fc2", 4.0)):
            for m, v in (("alpha", a + epoch), ("stable_rank", 10.0 * (epoch + 1)), ("mp_softrank", 0.5)):
                rows.append((step, epoch, layer, m, v))
    mdf = pd.DataFrame(rows, columns=["step", "epoch", "layer", "metric", "value"])
    fig = F.plot_metric_curves(mdf, metrics_to_plot=("alpha", "stable_rank", "num_spikes"))
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 2  # num_spikes absent -> two panels
    assert [ax.get_ylabel() for ax in shown] == [F.METRIC_LABELS["alpha"], F.METRIC_LABELS["stable_rank"]]
    assert all(ax.get_xlabel() == "epoch" for ax in shown)
    alpha = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in shown[0].get_lines()}
    assert alpha == {"fc1": ([0, 1, 2], [3.0, 4.0, 5.0]), "fc2": ([0, 1, 2], [4.0, 5.0, 6.0])}
    assert len(shown[0].patches) == 1  # the 2 <= alpha <= 6 band
    sr = {ln.get_label(): list(ln.get_ydata()) for ln in shown[1].get_lines()}
    assert sr == {"fc1": [10.0, 20.0, 30.0], "fc2": [10.0, 20.0, 30.0]}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["fc1", "fc2", "2 ≤ α ≤ 6"]
    with pytest.raises(ValueError, match="none of"):
        F.plot_metric_curves(mdf, metrics_to_plot=("entropy",))
    ph = pd.DataFrame(
        [
            (10, 0, "fc1", "random-like"),
            (20, 1, "fc1", "bulk+spikes"),
            (10, 0, "fc2", "heavy-tailed"),
            (20, 1, "fc2", None),
        ],
        columns=["step", "epoch", "layer", "phase"],
    )
    fig = F.plot_phase_timeline(ph)
    img = fig.axes[0].images[0].get_array()
    assert img.shape == (2, 2)
    assert img[0, 0] == F.PHASE_ORDER.index("random-like") and img[1, 1] == len(F.PHASE_ORDER)
    assert img[0, 1] == F.PHASE_ORDER.index("bulk+spikes") and img[1, 0] == F.PHASE_ORDER.index("heavy-tailed")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["fc1", "fc2"]
    sweep = pd.DataFrame(
        {
            "batch_size": [2, 8, 64, 2, 8, 64],
            "seed": [0, 0, 0, 1, 1, 1],
            "layer": ["fc1"] * 6,
            "alpha": [2.0, 3.0, 4.0, 2.2, 3.1, 4.1],
            "stable_rank": [5, 9, 20, 6, 8, 22],
        }
    )
    fig = F.plot_sweep(sweep, param="batch_size")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "batch_size"
    assert "mean ± sd over seeds" in ax.get_title()
    # the mean over the two seeds at each batch size, with the seeds as faint dots
    (bars,) = ax.containers
    assert bars.get_label() == "fc1"
    mean = bars.lines[0]
    np.testing.assert_allclose(np.asarray(mean.get_xdata(), float), [2, 8, 64])
    np.testing.assert_allclose(np.asarray(mean.get_ydata(), float), [2.1, 3.05, 4.05])
    dots = [ln for ln in ax.get_lines() if ln.get_linestyle() == "None" and len(ln.get_xdata()) == 6]
    assert len(dots) == 1 and sorted(dots[0].get_ydata()) == sorted(sweep["alpha"])
    assert _not_blank(_png(fig))


def test_run_level_figures_without_epochs_use_steps():
    """Snapshots taken without an epoch (nullable Int64 column, as ``load_run`` returns it) are drawn by step."""
    rows = [(s, layer, "alpha", v) for s in (10, 20, 30) for layer, v in (("fc1", 3.0), ("fc2", 4.0))]
    mdf = pd.DataFrame(rows, columns=["step", "layer", "metric", "value"])
    for epochs in ([None, None, None], [0, None, 2]):  # none at all, or missing for one snapshot
        mdf["epoch"] = pd.array([epochs[(s // 10) - 1] for s in mdf["step"]], dtype="Int64")
        ax = F.plot_metric_curves(mdf, metrics_to_plot=("alpha",)).axes[0]
        assert ax.get_xlabel() == "step"
        assert {ln.get_label(): list(ln.get_xdata()) for ln in ax.get_lines()} == {
            "fc1": [10, 20, 30],
            "fc2": [10, 20, 30],
        }
        ph = pd.DataFrame(
            {
                "step": [10, 20, 30],
                "layer": ["fc1"] * 3,
                "phase": ["random-like"] * 3,
                "epoch": pd.array(epochs, dtype="Int64"),
            }
        )
        tax = F.plot_phase_timeline(ph).axes[0]
        assert tax.get_xlabel() == "step" and [t.get_text() for t in tax.get_xticklabels()] == ["10", "20", "30"]
