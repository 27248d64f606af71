"""Tests of wwmonitor.powerlaw: exact agreement with weightwatcher 0.7.7's fitter
(run in a subprocess, see tests/ww_reference.py), exactness of the pruned scan,
the small-n rule, fix_fingers, the truncated power law, the likelihood-ratio
tests against the ``powerlaw`` package, and powerlaw_rank."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from wwmonitor.powerlaw import (
    EVALS_THRESH,
    SMALL_N_CUTOFF,
    _tpl_log_norm,
    compare_distributions,
    fit_powerlaw,
    fit_truncated_powerlaw,
    powerlaw_rank,
)

from ww_reference import ww_fit_many

# ---------------------------------------------------------------------------
# spectra
# ---------------------------------------------------------------------------


def _pooled_esd(rng: np.random.Generator, n: int, kind: str, q: float = 2.0, block: int = 256) -> np.ndarray:
    """``n`` eigenvalues of WᵀW pooled from blocks of at most ``block`` columns (like conv slices).

    Small blocks keep the generation cheap on a loaded 2-core CI machine."""
    evs = []
    left = n
    while left > 0:
        M = min(block, left)
        N = int(math.ceil(q * M))
        if kind == "gauss":
            W = rng.standard_normal((N, M))
        elif kind == "pareto":  # Pareto mu=1.5 entries, random signs
            W = rng.pareto(1.5, size=(N, M)) * rng.choice([-1.0, 1.0], size=(N, M))
        elif kind == "student":
            W = rng.standard_t(3.0, size=(N, M))
        elif kind == "spiked":
            W = rng.standard_normal((N, M))
            r = max(1, M // 50)
            W += 3.0 * (rng.standard_normal((N, r)) @ rng.standard_normal((r, M))) / math.sqrt(M)
        else:  # pragma: no cover
            raise ValueError(kind)
        evs.append(np.linalg.eigvalsh(W.T @ W))
        left -= M
    return np.concatenate(evs)


def _reference_scan(ev: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    """The plain O(n²) scan written straight from weightwatcher's formulas (n >= 20)."""
    x = np.sort(np.asarray(ev, dtype=np.float64))
    x = x[x > EVALS_THRESH]
    lx = np.log(x)
    N = x.size
    Ds = np.ones(N - 1)
    alphas = np.zeros(N - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(N - 1):
            n = float(N - i)
            a = 1 + n / (np.sum(lx[i:]) - n * lx[i])
            alphas[i] = a
            if a > 1:
                Ds[i] = np.max(np.abs(1 - (x[i:] / x[i]) ** (-a + 1) - np.arange(n) / n))
    i = int(np.argmin(Ds))
    return float(x[i]), float(alphas[i]), float(Ds[i]), Ds


@pytest.fixture(scope="module")
def ww_cases():
    """Many spectra (Gaussian, Pareto, Student-t, spiked, direct samples; n = 2..16k)
    and weightwatcher's fits of them, computed in ONE subprocess."""
    rng = np.random.default_rng(2026)
    cases: list[tuple[str, np.ndarray, dict]] = []
    for n in (50, 128, 300, 1000):
        for kind in ("gauss", "pareto", "student", "spiked"):
            cases.append((f"{kind}-{n}", _pooled_esd(rng, n, kind, q=float(rng.uniform(1.0, 3.0))), {}))
    cases.append(("student-16384", _pooled_esd(rng, 16384, "student", block=128), {}))
    cases.append(("gauss-4096", _pooled_esd(rng, 4096, "gauss", block=128), {}))
    cases.append(("pareto-samples-12000", rng.pareto(2.0, 12000) + 1.0, {}))  # flat KS landscape: all 3 bounds used
    cases.append(("lognormal-samples-3000", rng.lognormal(0.0, 2.0, 3000), {}))
    cases.append(("with-zeros-400", np.concatenate([np.zeros(100), _pooled_esd(rng, 300, "student")]), {}))
    cases.append(("ties-600", np.round(_pooled_esd(rng, 600, "student"), 0) + 1.0, {}))
    for n in range(2, SMALL_N_CUTOFF + 3):
        cases.append((f"small-{n}", rng.pareto(2.5, n) + 1.0, {}))
    # fix_fingers: weightwatcher's clip_xmax rule on small random matrices (alpha often inflated)
    for k in range(12):
        M = int(rng.integers(60, 400))
        W = rng.standard_t(float(rng.choice([2.0, 3.0, 4.0, 100.0])), size=(int(M * rng.uniform(1, 4)), M))
        cases.append((f"fingers-{k}", np.linalg.eigvalsh(W.T @ W), {"fix_fingers": "clip_xmax"}))
    ww = ww_fit_many([c[1] for c in cases], per_item_kwargs=[c[2] for c in cases])
    return cases, ww


def test_identical_to_weightwatcher(ww_cases):
    cases, ww = ww_cases
    n_checked = 0
    for (name, ev, kw), ref in zip(cases, ww):
        assert ref["status"] == "success", name
        if kw.get("fix_fingers"):
            fit = fit_powerlaw(ev, fix_fingers=9, finger_rule="weightwatcher")
            assert fit.num_pl_spikes == ref["num_pl_spikes"], name
            # weightwatcher reports num_fingers = clipped - 1 (its loop starts at 2)
            assert max(fit.n_clipped - 1, 0) == ref["num_fingers"], name
        else:
            fit = fit_powerlaw(ev)
            assert fit.num_pl_spikes == ref["num_pl_spikes"], name
        assert fit.ok, (name, fit.message)
        # bit-for-bit equality, not approximate
        assert fit.xmin == ref["xmin"], name
        assert fit.alpha == ref["alpha"], name
        assert fit.D == ref["D"], name
        assert fit.xmax == ref["xmax"], name
        if fit.n >= 8:  # below 8 points weightwatcher's small-n sigma is -1/sqrt(n) (a bug we do not copy)
            assert fit.sigma == ref["sigma"], name
        expected_method = "small_n" if fit.n < SMALL_N_CUTOFF else "standard"
        assert fit.method == expected_method, name
        n_checked += 1
    assert n_checked == len(cases) >= 55


def test_fix_fingers_rule_actually_clips_in_reference_cases(ww_cases):
    cases, ww = ww_cases
    clipped = [ref["num_fingers"] for (_, _, kw), ref in zip(cases, ww) if kw.get("fix_fingers")]
    assert sum(c > 0 for c in clipped) >= 3, "the finger cases must exercise the clipping branch"


def test_weightwatcher_degenerate_cases_are_explicit_failures_here():
    # weightwatcher returns alpha=inf (or alpha=0 on the small-n path) with status "success";
    # we return a failure with a message, never a number that looks like a fit.
    for ev in (np.ones(25), np.ones(5), np.full(40, 3.0)):
        fit = fit_powerlaw(ev)
        assert fit.status == "failed" and fit.message
        assert math.isnan(fit.alpha)


# ---------------------------------------------------------------------------
# exactness of the pruning, without weightwatcher
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_pruned_scan_equals_full_scan(seed):
    rng = np.random.default_rng(seed)
    kinds = ["gauss", "pareto", "student", "spiked"]
    for n in (20, 64, 257, 900):
        for kind in kinds:
            ev = _pooled_esd(rng, n, kind, q=float(rng.uniform(1.0, 4.0)))
            fast = fit_powerlaw(ev)
            full = fit_powerlaw(ev, keep_landscape=True)
            xmin, alpha, D, Ds = _reference_scan(ev)
            assert (fast.xmin, fast.alpha, fast.D) == (xmin, alpha, D), (kind, n)
            assert (full.xmin, full.alpha, full.D) == (xmin, alpha, D), (kind, n)
            xs, Dl = full.ks_landscape
            assert xs.size == Dl.size == Ds.size
            np.testing.assert_allclose(Dl, Ds, rtol=1e-9, atol=1e-12)


def test_pruning_evaluates_few_candidates_at_16k():
    rng = np.random.default_rng(7)
    ev = _pooled_esd(rng, 16384, "student", block=128)
    fit = fit_powerlaw(ev)
    assert fit.ok and fit.n == 16384
    # the exact scan needs the full KS distance of only a small fraction of the candidates
    assert fit.n_evaluated < 16384 // 20, fit.n_evaluated


def test_duplicates_and_zeros_and_order_do_not_matter():
    rng = np.random.default_rng(3)
    ev = _pooled_esd(rng, 500, "student")
    ev_dup = np.concatenate([ev, ev[-50:]])  # duplicated top eigenvalues
    a = fit_powerlaw(ev_dup)
    xmin, alpha, D, _ = _reference_scan(ev_dup)
    assert (a.xmin, a.alpha, a.D) == (xmin, alpha, D)
    shuffled = rng.permutation(np.concatenate([ev, np.zeros(30), np.full(5, 1e-7)]))
    b, c = fit_powerlaw(shuffled), fit_powerlaw(ev)
    assert (b.xmin, b.alpha, b.D, b.n) == (c.xmin, c.alpha, c.D, c.n)


def test_scale_invariance_of_alpha():
    rng = np.random.default_rng(4)
    ev = _pooled_esd(rng, 700, "pareto")
    a, b = fit_powerlaw(ev), fit_powerlaw(ev / 1000.0 + 0.0)
    assert b.n_tail == a.n_tail
    assert b.alpha == pytest.approx(a.alpha, rel=1e-9)
    assert b.xmin == pytest.approx(a.xmin / 1000.0, rel=1e-12)


def test_recovers_known_exponent():
    rng = np.random.default_rng(5)
    for alpha in (1.8, 2.5, 4.0, 6.0):
        x = (1.0 - rng.random(20000)) ** (-1.0 / (alpha - 1.0))  # Pareto, p(x) ∝ x^-alpha on [1, ∞)
        fit = fit_powerlaw(x)
        assert abs(fit.alpha - alpha) < 5 * fit.sigma + 0.05, (alpha, fit)


# ---------------------------------------------------------------------------
# options, small n and failures
# ---------------------------------------------------------------------------


def test_fixed_xmin_and_xmax():
    rng = np.random.default_rng(6)
    ev = np.sort(_pooled_esd(rng, 600, "student"))
    xmin = float(ev[400])
    fit = fit_powerlaw(ev, xmin=xmin * 0.999999)
    tail = ev[400:]
    assert fit.method == "fixed_xmin" and fit.xmin == xmin and fit.n_tail == tail.size
    assert fit.alpha == pytest.approx(1 + tail.size / np.log(tail / xmin).sum(), rel=1e-12)
    assert fit.sigma == pytest.approx((fit.alpha - 1) / math.sqrt(tail.size))
    cut = fit_powerlaw(ev, xmax=float(ev[-4]))
    assert cut.xmax == float(ev[-4]) and cut.n == ev.size - 3
    assert (cut.xmin, cut.alpha) == _reference_scan(ev[:-3])[:2]
    with pytest.raises(ValueError, match="xmax"):
        fit_powerlaw(ev, xmax=float("nan"))


def test_small_n_rule_and_failures():
    rng = np.random.default_rng(8)
    for n in range(2, SMALL_N_CUTOFF):
        fit = fit_powerlaw(rng.pareto(2.0, n) + 1.0)
        assert fit.ok and fit.method == "small_n" and "small-n" in fit.message
        assert math.isfinite(fit.alpha) and fit.alpha > 1 and 0 <= fit.D < 1
        if n >= 8:
            assert fit.n_tail >= 8
    assert fit_powerlaw(rng.pareto(2.0, SMALL_N_CUTOFF) + 1).method == "standard"
    for bad, status in (
        ([], "too_few"),
        ([3.0], "too_few"),
        ([0.0] * 100, "too_few"),
        ([1.0, np.nan, 2.0] * 10, "failed"),
        ([1.0, np.inf] * 20, "failed"),
    ):
        fit = fit_powerlaw(np.asarray(bad, dtype=float))
        assert fit.status == status and fit.message, bad
        assert not fit.ok and fit.num_pl_spikes == 0
    fit = fit_powerlaw(np.array([1.0, 2.0]), xmin=5.0)
    assert fit.status == "too_few" and "xmin" in fit.message


def test_tiny_tail_carries_a_caution():
    x = np.sort(np.random.default_rng(1).pareto(2.0, 500) + 1.0)
    fit = fit_powerlaw(x, xmin=float(x[-5]))
    assert fit.ok and fit.n_tail == 5 and "unreliable" in fit.message
    assert "unreliable" not in fit_powerlaw(x, xmin=float(x[-100])).message


def test_fix_fingers_options():
    rng = np.random.default_rng(9)
    W = rng.standard_normal((400, 150))
    ev = np.linalg.eigvalsh(W.T @ W)
    base = fit_powerlaw(ev)
    assert fit_powerlaw(ev, fix_fingers=0) == base
    fixed = fit_powerlaw(ev, fix_fingers=8)
    assert fixed.ok and 0 <= fixed.n_clipped <= 8
    if fixed.n_clipped:
        assert fixed.alpha + 1.0 < base.alpha
        assert fixed.n == base.n - fixed.n_clipped
        assert fixed.num_pl_spikes == fixed.n_tail + fixed.n_clipped
    else:
        assert fixed == base
    # analyze.py's calling convention
    assert fit_powerlaw(ev, xmax=None, fix_fingers=3).ok
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="fix_fingers"):
            fit_powerlaw(ev, fix_fingers=bad)
    with pytest.raises(ValueError, match="finger_rule"):
        fit_powerlaw(ev, fix_fingers=2, finger_rule="nope")


def test_fix_fingers_clip_xmax_on_a_fingered_spectrum():
    # A Gaussian 300x150 matrix: the KS scan locks onto the top 15 eigenvalues
    # (alpha ~ 9); the outliers at the top are the "fingers".  Clipping 2 of them
    # brings alpha down by more than 1 on a larger tail.
    rng = np.random.default_rng(0)
    W = rng.standard_normal((300, 150))
    ev = np.sort(np.linalg.eigvalsh(W.T @ W))
    base = fit_powerlaw(ev)
    assert base.alpha > 6 and base.n_tail < 20
    fixed = fit_powerlaw(ev, fix_fingers=5)
    assert fixed.n_clipped >= 1
    assert fixed.alpha + 1.0 < base.alpha and fixed.n_tail > base.n_tail
    ref = fit_powerlaw(ev[: -fixed.n_clipped])
    assert (fixed.xmin, fixed.alpha, fixed.D, fixed.xmax) == (ref.xmin, ref.alpha, ref.D, ref.xmax)
    assert fixed.num_pl_spikes == int(np.count_nonzero(ev >= fixed.xmin))
    # every smaller clip count was tried and rejected
    for c in range(1, fixed.n_clipped):
        assert fit_powerlaw(ev[:-c]).alpha + 1.0 >= base.alpha


# ---------------------------------------------------------------------------
# truncated power law and likelihood ratios
# ---------------------------------------------------------------------------


def test_tpl_normaliser_against_mpmath():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    for a in (-3.0, -0.5, 0.0, 0.5, 0.999, 1.0, 1.01, 1.7, 2.5, 4.0, 9.0):
        for t in (1e-9, 1e-4, 0.01, 0.3, 1.0, 7.0, 40.0):
            if a <= 1 and t < 1e-6:
                continue
            ref = mpmath.e**t * mpmath.mpf(t) ** (mpmath.mpf(a) - 1) * mpmath.gammainc(1 - mpmath.mpf(a), mpmath.mpf(t))
            ref = float(mpmath.log(mpmath.re(ref)))
            assert _tpl_log_norm(a, t) == pytest.approx(ref, rel=1e-10, abs=1e-10), (a, t)
    assert _tpl_log_norm(2.0, 0.0) == pytest.approx(0.0)
    assert _tpl_log_norm(1.0, 0.0) == math.inf


def _sample_tpl(rng, alpha, lam, xmin, n):
    """Rejection sampling: Pareto(alpha) proposals accepted with prob exp(-lam (x - xmin))."""
    out = []
    while sum(len(o) for o in out) < n:
        x = xmin * (1.0 - rng.random(4 * n)) ** (-1.0 / (alpha - 1.0))
        out.append(x[rng.random(x.size) < np.exp(-lam * (x - xmin))])
    return np.concatenate(out)[:n]


def test_tpl_recovers_parameters():
    rng = np.random.default_rng(11)
    x = _sample_tpl(rng, alpha=2.2, lam=0.05, xmin=1.0, n=20000)
    tpl = fit_truncated_powerlaw(x, xmin=1.0)
    assert tpl.ok and tpl.n_tail == x.size
    assert tpl.alpha == pytest.approx(2.2, abs=0.08)
    assert tpl.Lambda == pytest.approx(0.05, rel=0.2)
    assert tpl.cutoff == pytest.approx(1 / tpl.Lambda)
    # a pure power law: the TPL never has a lower likelihood than the power law,
    # and the nested likelihood-ratio test finds no significant cutoff
    y = (1.0 - rng.random(5000)) ** (-1.0 / 1.5)
    tpl2 = fit_truncated_powerlaw(y, xmin=1.0)
    a_hat = 1 + y.size / np.log(y).sum()
    pl_ll = float(np.sum(np.log(a_hat - 1) - a_hat * np.log(y)))
    assert tpl2.loglik >= pl_ll - 1e-6
    assert tpl2.alpha == pytest.approx(2.5, abs=0.1)
    lr = compare_distributions(y, fit_powerlaw(y, xmin=1.0))["truncated_power_law"]
    assert lr.p > 0.01
    assert fit_truncated_powerlaw(np.ones(10), xmin=1.0).status != "ok"


@pytest.fixture(scope="module")
def pareto_matrix_fits():
    """ESDs of Pareto mu=1.5 matrices: tail alpha ~ 1.8 < 3, where powerlaw 2.0.0 is unbounded-correct."""
    powerlaw = pytest.importorskip("powerlaw")
    rng = np.random.default_rng(12)
    out = []
    for _ in range(2):
        W = rng.pareto(1.5, size=(1000, 500)) * rng.choice([-1.0, 1.0], size=(1000, 500))
        ev = np.linalg.eigvalsh(W.T @ W)
        fit = fit_powerlaw(ev)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pf = powerlaw.Fit(ev[ev > EVALS_THRESH], xmin=fit.xmin, verbose=False)
        out.append((ev, fit, pf))
    return out


def test_compare_distributions_against_powerlaw_package(pareto_matrix_fits):
    for ev, fit, pf in pareto_matrix_fits:
        assert fit.alpha < 3
        assert pf.power_law.alpha == pytest.approx(fit.alpha, rel=1e-9)
        assert len(pf.data) == fit.n_tail
        ours = compare_distributions(ev, fit)
        raw = compare_distributions(ev, fit, normalized=False)
        assert set(ours) == {"truncated_power_law", "lognormal", "exponential", "stretched_exponential"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for dist in ("exponential", "lognormal"):
                R, p = pf.distribution_compare("power_law", dist, normalized_ratio=True)
                assert ours[dist].R == pytest.approx(R, abs=0.02), dist
                assert ours[dist].p == pytest.approx(p, abs=0.02), dist
            # our MLEs maximise the likelihood at least as well as powerlaw's optimisers:
            # a smaller raw R = ll(PL) - ll(alt) means a better-fitting alternative
            for dist in ("stretched_exponential", "truncated_power_law"):
                R_raw, _ = pf.distribution_compare("power_law", dist, normalized_ratio=False)
                assert raw[dist].R <= R_raw + 1e-6, dist
            tpl = fit_truncated_powerlaw(ev, fit.xmin)
            their = float(np.sum(pf.truncated_power_law.loglikelihoods(pf.data)))
            assert tpl.loglik >= their - 1e-6
        # a power-law tail beats the exponential significantly
        assert ours["exponential"].R > 0 and ours["exponential"].p < 0.05


def test_compare_distributions_prefers_exponential_on_exponential_data():
    rng = np.random.default_rng(13)
    x = 1.0 + rng.exponential(2.0, 3000)
    fit = fit_powerlaw(x, xmin=1.0)
    res = compare_distributions(x, fit)
    assert res["exponential"].R < 0 and res["exponential"].p < 0.01
    assert res["truncated_power_law"].R < 0 and res["truncated_power_law"].p < 0.01
    with pytest.raises(ValueError, match="failed"):
        compare_distributions([1.0], fit_powerlaw([1.0]))


def test_powerlaw_package_caps_alpha_but_we_do_not():
    """The documented difference: powerlaw 2.0.0 bounds alpha to [0, 3]."""
    powerlaw = pytest.importorskip("powerlaw")
    rng = np.random.default_rng(14)
    x = (1.0 - rng.random(5000)) ** (-1.0 / 3.5)  # alpha = 4.5
    ours = fit_powerlaw(x, xmin=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = powerlaw.Fit(x, xmin=1.0, verbose=False).power_law.alpha
    assert ours.alpha == pytest.approx(4.5, abs=0.15)
    assert theirs <= 3.0 + 1e-9


# ---------------------------------------------------------------------------
# powerlaw_rank
# ---------------------------------------------------------------------------


def test_powerlaw_rank_matrix_and_evals():
    rng = np.random.default_rng(15)
    W = rng.standard_t(2.5, size=(800, 300))
    r = powerlaw_rank(W)
    ev = np.linalg.eigvalsh(W.T @ W)
    fit = fit_powerlaw(ev)
    assert r.ok and r.K == int(np.count_nonzero(ev >= fit.xmin)) == r.fit.num_pl_spikes
    assert r.alpha == pytest.approx(fit.alpha, rel=1e-9) and r.xmin == pytest.approx(fit.xmin, rel=1e-9)
    assert r.xmins.size == r.Ds.size == r.alphas.size == ev.size - 1
    assert r.Ds.min() == pytest.approx(r.D) and r.xmins[np.argmin(r.Ds)] == r.xmin
    i = int(np.argmin(r.Ds))
    assert r.alphas[i] == pytest.approx(r.alpha, rel=1e-9)
    r1 = powerlaw_rank(ev)
    assert r1.K == r.K and r1.D == fit.D
    torch = pytest.importorskip("torch")
    rt = powerlaw_rank(torch.from_numpy(W))
    assert rt.K == r.K
    with pytest.raises(ValueError, match="2-D"):
        powerlaw_rank(np.zeros((2, 3, 4)))
    bad = powerlaw_rank(np.zeros(10))
    assert bad.status == "too_few" and bad.K == 0 and bad.message


def test_powerlaw_rank_low_rank_signal():
    # LSA-like: a power-law-decaying signal of 40 directions plus weak noise;
    # K should capture a tail inside the signal part, not the noise bulk.
    rng = np.random.default_rng(16)
    N, M, r = 1200, 400, 40
    U = np.linalg.qr(rng.standard_normal((N, r)))[0]
    V = np.linalg.qr(rng.standard_normal((M, r)))[0]
    s = 50.0 * np.arange(1, r + 1) ** -0.7
    W = (U * s) @ V.T + 0.01 * rng.standard_normal((N, M))
    res = powerlaw_rank(W)
    assert res.ok and 2 <= res.K <= r


# ---------------------------------------------------------------------------
# the weightwatcher reference helper on a model (used by other agreement tests)
# ---------------------------------------------------------------------------


def _build_mlp(seed: int = 0):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(100, 300), torch.nn.ReLU(), torch.nn.Linear(300, 120))


@pytest.mark.slow
def test_ww_reference_analyze_matches_our_fit_on_its_eigenvalues():
    import functools

    from ww_reference import ww_analyze_timed, ww_esd

    pytest.importorskip("torch")
    model = _build_mlp(1)
    # a picklable builder (by reference) and a module instance give the same table
    df, times = ww_analyze_timed(functools.partial(_build_mlp, 1), repeats=1, num_threads=1)
    assert len(times) == 1 and times[0] > 0
    assert list(df["N"]) == [300, 300] and list(df["M"]) == [100, 120]
    for row, lin in zip(df.itertuples(), (model[0], model[2])):
        ev = ww_esd(model, int(row.layer_id))
        assert ev.size == row.M
        # weightwatcher's eigenvalues = squared singular values (σ² axis)
        sv2 = np.linalg.svd(lin.weight.detach().double().numpy(), compute_uv=False) ** 2
        np.testing.assert_allclose(np.sort(sv2), ev, rtol=1e-6)
        fit = fit_powerlaw(ev)
        assert (fit.alpha, fit.xmin, fit.D, fit.num_pl_spikes) == (row.alpha, row.xmin, row.D, row.num_pl_spikes)
