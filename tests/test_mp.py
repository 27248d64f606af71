"""Marchenko-Pastur density, CDF and bulk fit (wwmonitor.mp)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.integrate import quad

from wwmonitor.mp import MPFit, fit_mp, mp_cdf, mp_edges, mp_pdf, tw_scale
from wwmonitor.synthetic import bbp_threshold, rank_collapse, spike_location, spiked

# BLAS threads fight each other on a loaded 2-core machine; one thread is much faster
pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _esd(W: np.ndarray) -> np.ndarray:
    N = max(W.shape)
    G = W.T @ W if W.shape[0] >= W.shape[1] else W @ W.T
    return np.clip(np.linalg.eigvalsh(G), 0, None) / N


# --- density and CDF ----------------------------------------------------------


@pytest.mark.parametrize("Q", [1.0, 1.3, 2.0, 4.0, 10.0])
@pytest.mark.parametrize("sigma2", [1.0, 0.037])
def test_cdf_matches_integrated_pdf(Q: float, sigma2: float) -> None:
    a, b = mp_edges(Q, sigma2)
    xs = np.linspace(a, b, 9)[1:-1]
    num = np.array([quad(lambda t: mp_pdf(np.array([t]), Q, sigma2)[0], a, x, limit=200)[0] for x in xs])
    np.testing.assert_allclose(mp_cdf(xs, Q, sigma2), num, atol=2e-6)
    total = quad(lambda t: mp_pdf(np.array([t]), Q, sigma2)[0], a, b, limit=200)[0]
    assert total == pytest.approx(1.0, abs=1e-6)
    # outside the support
    assert mp_cdf(np.array([a * 0.5 if a > 0 else -1.0, b * 1.01]), Q, sigma2).tolist() == [0.0, 1.0]
    assert np.all(np.diff(mp_cdf(np.linspace(a, b, 200), Q, sigma2)) >= 0)


def test_q1_edges_and_divergence() -> None:
    lm, lp = mp_edges(1.0, 2.0)
    assert lm == 0.0 and lp == pytest.approx(8.0)
    p = mp_pdf(np.array([1e-8, 1e-6, 1e-4]), 1.0, 2.0)
    assert p[0] > p[1] > p[2] > 10  # ~ 1/(π σ √x)
    assert np.isinf(mp_pdf(np.array([0.0]), 1.0, 2.0)[0])
    # near 0 the CDF behaves like 2√x/(π σ)
    x = 1e-8
    assert mp_cdf(np.array([x]), 1.0, 2.0)[0] == pytest.approx(2 * np.sqrt(x) / (np.pi * np.sqrt(2.0)), rel=1e-3)


def test_cdf_matches_large_gaussian_sample() -> None:
    rng = np.random.default_rng(11)
    W = rng.standard_normal((1200, 400)) * 0.5
    ev = _esd(W)
    F = mp_cdf(np.sort(ev), 3.0, 0.25)
    emp = (np.arange(ev.size) + 0.5) / ev.size
    assert np.max(np.abs(F - emp)) < 0.02


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Q must be"):
        fit_mp(np.ones(10), 0.5)
    with pytest.raises(ValueError, match="no eigenvalues"):
        fit_mp(np.array([]), 2.0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fit_mp(np.array([1.0, np.nan, 2.0]), 2.0)
    with pytest.raises(ValueError, match="Q must be"):
        mp_pdf(np.ones(3), float("nan"), 1.0)


# --- fit on random matrices --------------------------------------------------


@pytest.mark.parametrize("shape", [(100, 100), (300, 150), (400, 100), (250, 250), (512, 512), (1000, 200)])
def test_gaussian_fit(shape: tuple[int, int]) -> None:
    N, M = shape
    for seed in range(3):
        rng = np.random.default_rng(seed + 100 * M)
        s = float(np.exp(rng.uniform(np.log(1e-3), 0)))
        W = rng.standard_normal((N, M)) * s
        if seed == 1:
            W = W.T  # orientation must not matter
        ev = _esd(W)
        f = fit_mp(ev, N / M, M=M)
        assert isinstance(f, MPFit)
        assert f.sigma2 == pytest.approx(s * s, rel=0.06 if M == 100 else 0.03)
        assert f.num_spikes == 0
        assert f.lambda_max == ev.max() and f.n == M
        # λ+/λmax clipped to 1; with no spike λmax <= λ+ + margin, so it is at least λ+/edge
        assert f.mp_softrank == pytest.approx(min(1.0, f.lambda_plus / ev.max()))
        assert f.mp_softrank >= f.lambda_plus / f.edge
        assert f.ks < 2.0 / np.sqrt(M)
        assert f.frac_at_zero == 0.0
        assert f.lambda_plus == pytest.approx(f.sigma2 * (1 + 1 / np.sqrt(N / M)) ** 2)
        assert f.lambda_minus == pytest.approx(f.sigma2 * (1 - 1 / np.sqrt(N / M)) ** 2, abs=1e-15)


def test_tracy_widom_scale() -> None:
    """(λ_max - λ+)/s_TW of Gaussian matrices follows TW1 (mean -1.21, sd 1.27)."""
    z = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        W = rng.standard_normal((300, 150))
        f = fit_mp(_esd(W), 2.0, M=150)
        z.append((f.lambda_max - f.lambda_plus) / tw_scale(2.0, f.sigma2, 150))
    z = np.array(z)
    assert -2.0 < z.mean() < -0.5
    assert 0.7 < z.std() < 2.0
    assert z.max() < 4.0  # the margin (4 TW units) is never reached


@pytest.mark.parametrize("N,M,r", [(200, 200, 1), (400, 200, 3), (800, 200, 8), (500, 250, 12)])
def test_planted_spikes_are_counted(N: int, M: int, r: int) -> None:
    Q = N / M
    for seed in range(2):
        rng = np.random.default_rng(seed)
        d = np.linspace(3.0, 6.0, r) * bbp_threshold(Q)
        W = spiked(N, M, d, rng, s=0.05)
        ev = _esd(W)
        f = fit_mp(ev, Q, M=M)
        assert f.num_spikes == r
        assert f.sigma2 == pytest.approx(0.0025, rel=0.07)
        assert 0 < f.mp_softrank < 1
        assert f.mp_softrank == pytest.approx(f.lambda_plus / ev.max())
        # outliers sit where BBP theory puts them
        top = np.sort(ev)[-r:]
        pred = np.sort([spike_location(x, Q, 0.0025) for x in d])
        np.testing.assert_allclose(top, pred, rtol=0.08)


def test_spikes_below_bbp_threshold_stay_in_bulk() -> None:
    rng = np.random.default_rng(3)
    W = spiked(600, 300, np.full(3, 0.5 * bbp_threshold(2.0)), rng)
    f = fit_mp(_esd(W), 2.0, M=300)
    assert f.num_spikes == 0


def test_fit_is_robust_to_heavy_tail() -> None:
    """A Student-t(2) matrix (infinite variance): the bulk below λ+ still follows MP and the tail is spikes."""
    rng = np.random.default_rng(5)
    W = rng.standard_t(2.0, size=(500, 250))
    ev = _esd(W)
    f = fit_mp(ev, 2.0, M=250)
    # the eigenvalues kept as bulk fit the MP CDF about as well as a Gaussian matrix's (KS ~ 1/sqrt(n))
    assert f.ks < 1.0 / np.sqrt(np.sum(ev <= f.lambda_plus))
    assert f.num_spikes == int(np.sum(ev > f.edge)) >= 5
    assert f.num_above_edge == int(np.sum(ev > f.lambda_plus))
    assert f.bulk_fraction == pytest.approx(1 - f.num_above_edge / 250)
    assert f.lambda_plus < 0.5 * ev.max()
    assert f.bulk_fraction > 0.8


def test_rank_collapse_mass_at_zero() -> None:
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        W = rank_collapse(300, 200, rng, rank=50, dtype=dtype).astype(np.float64)
        f = fit_mp(_esd(W), 1.5, M=200)
        assert f.frac_at_zero == pytest.approx(150 / 200)
        assert f.n == 200


def test_all_zero_input() -> None:
    f = fit_mp(np.zeros(20), 1.0)
    assert f.sigma2 == 0.0 and f.num_spikes == 0


_WW_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from weightwatcher.RMT_Util import fit_density_with_range
    out = []
    for path, Q in json.loads(sys.argv[1]):
        ev = np.load(path)
        x = ev * (ev.size / ev.sum())   # weightwatcher's rescaling to unit mean
        s, _ = fit_density_with_range(x, Q)
        out.append({"sigma2": float(s) ** 2, "scale": float(ev.size / ev.sum())})
    print("JSON" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_against_weightwatcher_mp_fit(tmp_path) -> None:
    """Same σ² as weightwatcher 0.7.7's brute-force MP fit (the speed ratio is measured in benchmarks/bench_mp.py)."""
    jobs, evs = [], []
    rng = np.random.default_rng(7)
    for N, M in [(1024, 1024), (2048, 512)]:
        ev = _esd(rng.standard_normal((N, M)) * 0.02)
        p = tmp_path / f"ev_{N}_{M}.npy"
        np.save(p, ev)
        jobs.append([str(p), N / M])
        evs.append((ev, N / M, M))
    proc = subprocess.run(
        [sys.executable, "-c", _WW_CHILD, json.dumps(jobs)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.split("JSON", 1)[1])
    for (ev, Q, M), r in zip(evs, res):
        f = fit_mp(ev, Q, M=M)
        assert f.sigma2 * r["scale"] == pytest.approx(r["sigma2"], rel=0.03)


def test_bulk_found_when_most_eigenvalues_are_outliers() -> None:
    """60% of the eigenvalues far above the bulk: the median estimate is off by 50x, the fit is not."""
    rng = np.random.default_rng(12)
    ev = _esd(rng.standard_normal((400, 200)))
    ev2 = np.concatenate([ev, 50 * np.exp(rng.uniform(0, 1, 300))])
    f = fit_mp(ev2, 2.0, M=500)
    assert f.sigma2 == pytest.approx(1.0, rel=0.05)
    assert f.num_spikes == 300
    assert f.bulk_fraction == pytest.approx(0.4)


def test_ks_grid_equals_ks_cond_loop():
    """The vectorised KS grid of fit_mp returns exactly the per-sigma² loop's values."""
    from wwmonitor.mp import _ks_cond, _ks_grid, _mp_median_unit

    rng = np.random.default_rng(11)
    for trial in range(30):
        n = int(rng.integers(20, 1200))
        Q = float(rng.choice([1.0, 1.3, 2.0, 4.0, 9.0]))
        N = int(n * Q)
        W = rng.standard_normal((N, n)) * (rng.standard_t(3, (N, n)) if trial % 3 == 0 else 1.0)
        x = np.sort(np.linalg.eigvalsh(W.T @ W / N))
        x = x[x > 1e-8 * x[-1]]
        grid = float(np.median(x)) / _mp_median_unit(Q) * np.exp(np.linspace(np.log(0.01), np.log(3.0), 81))
        ref = np.array([_ks_cond(x, Q, s)[0] for s in grid])
        np.testing.assert_array_equal(_ks_grid(x, Q, grid), ref)
