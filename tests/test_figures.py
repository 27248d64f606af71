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
    raise AssertionError(f"no line labelled {label_start!r}; have {[l.get_label() for l in ax.get_lines()]}")


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
    # and at the largest eigenvalue within a factor 10 (a heavy tail fitted by KS)
    assert "CCDF" in ax.get_ylabel()
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
    assert "Kolmogorov" in ax.get_ylabel()
    # without a landscape the function computes one
    assert F.plot_ks_landscape(ev).axes


def test_scree_and_mp_hist():
    ev, Q, M = _gauss()
    mp = fit_mp(ev, Q, M=M)
    fig = F.plot_scree(ev, mp=mp)
    assert fig.axes[0].get_yscale() == "log"
    assert "rank" in fig.axes[0].get_xlabel()
    assert any("explained" in a.get_ylabel() for a in fig.axes)
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
    rows = []
    for step, epoch in ((10, 0), (20, 1), (30, 2)):
        for layer, a in (("fc1", 3.0), ("fc2", 4.0)):
            for m, v in (("alpha", a + epoch), ("stable_rank", 10.0 * (epoch + 1)), ("mp_softrank", 0.5)):
                rows.append((step, epoch, layer, m, v))
    mdf = pd.DataFrame(rows, columns=["step", "epoch", "layer", "metric", "value"])
    fig = F.plot_metric_curves(mdf, metrics_to_plot=("alpha", "stable_rank", "num_spikes"))
    assert sum(ax.get_visible() for ax in fig.axes) == 2  # num_spikes absent -> two panels
    with pytest.raises(ValueError, match="none of"):
        F.plot_metric_curves(mdf, metrics_to_plot=("entropy",))
    ph = pd.DataFrame([(10, 0, "fc1", "random-like"), (20, 1, "fc1", "bulk+spikes"), (10, 0, "fc2", "heavy-tailed"),
                       (20, 1, "fc2", None)], columns=["step", "epoch", "layer", "phase"])
    fig = F.plot_phase_timeline(ph)
    img = fig.axes[0].images[0].get_array()
    assert img.shape == (2, 2)
    assert img[0, 0] == F.PHASE_ORDER.index("random-like") and img[1, 1] == len(F.PHASE_ORDER)
    sweep = pd.DataFrame({"batch_size": [2, 8, 64, 2, 8, 64], "seed": [0, 0, 0, 1, 1, 1], "layer": ["fc1"] * 6,
                          "alpha": [2.0, 3.0, 4.0, 2.2, 3.1, 4.1], "stable_rank": [5, 9, 20, 6, 8, 22]})
    fig = F.plot_sweep(sweep, param="batch_size")
    assert fig.axes[0].get_xscale() == "log"
    assert _not_blank(_png(fig))
