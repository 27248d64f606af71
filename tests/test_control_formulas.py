"""wwmonitor.control.formulas and .decide: hand-computed cases, monotonicity, ranges, edge cases (pure NumPy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wwmonitor.control.decide import decide
from wwmonitor.control.formulas import (
    alphadecay_factors,
    conv_eigenvalues,
    median_xmin_alpha,
    tempbalance_factors,
)
from wwmonitor.metrics import LayerMetrics
from wwmonitor.records import SnapshotResult


# ------------------------------------------------------------------ median-xmin alpha
def test_median_alpha_hand_computed():
    # N = 4: i = 2, xmin = 4, n = 2, sum ln(λ/xmin) over [4, 8] = ln 2
    assert median_xmin_alpha(np.array([8.0, 1.0, 4.0, 2.0])) == pytest.approx(1 + 2 / math.log(2), rel=1e-15)
    # N = 5: i = 2, xmin = 3, n = 3 (the xmin term itself counts in n, its log is 0)
    want = 1 + 3 / (math.log(4 / 3) + math.log(5 / 3))
    assert median_xmin_alpha([1, 2, 3, 4, 5]) == pytest.approx(want, rel=1e-15)


def test_median_alpha_as_the_reference_writes_it_and_scale_free():
    rng = np.random.default_rng(0)
    ev = np.sort(rng.pareto(2.0, size=301) + 1.0)
    i = ev.size // 2
    n = ev.size - i
    ref = 1 + n / (np.sum(np.log(ev[i:])) - n * np.log(ev[i]))  # the reference's arrangement of the sum
    assert median_xmin_alpha(ev) == pytest.approx(ref, rel=1e-12)
    assert median_xmin_alpha(ev * 123.4) == pytest.approx(ref, rel=1e-12)  # 1/N and conv_norm do not matter
    assert median_xmin_alpha(ev[::-1]) == median_xmin_alpha(ev)  # order of the input does not matter


def test_median_alpha_recovers_a_pareto_exponent():
    rng = np.random.default_rng(1)
    ev = rng.pareto(2.0, size=20000) + 1.0  # density ∝ x^-3 on [1, inf): alpha = 3, any xmin inside the tail
    assert median_xmin_alpha(ev) == pytest.approx(3.0, abs=0.1)


@pytest.mark.parametrize(
    "ev",
    [[], [2.0], [0.0, 0.0, 0.0, 1.0], [3.0, 3.0, 3.0, 3.0], [1.0, np.nan, 2.0], [1.0, np.inf, 2.0]],
    ids=["empty", "one", "xmin-zero", "flat-tail", "nan", "inf"],
)
def test_median_alpha_undetermined_is_nan(ev):
    assert math.isnan(median_xmin_alpha(np.array(ev, dtype=float)))


def test_conv_eigenvalues_are_the_pooled_kernel_slices():
    rng = np.random.default_rng(2)
    W = rng.normal(size=(3, 4, 2, 2))
    want = np.sort(
        np.concatenate([np.linalg.eigvalsh(0.5 * W[:, :, a, b] @ W[:, :, a, b].T) for a in range(2) for b in range(2)])
    )
    got = conv_eigenvalues(W)
    assert got.shape == (12,)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="shape"):
        conv_eigenvalues(np.ones((3, 4)))


# ------------------------------------------------------------------ assignment functions
def test_tempbalance_linear_hand_computed_and_range():
    np.testing.assert_allclose(tempbalance_factors([2.0, 3.0, 4.0]), [0.5, 1.0, 1.5], rtol=1e-15)
    np.testing.assert_allclose(tempbalance_factors([4.0, 2.0, 3.0], lr_range=(0.2, 1.8)), [1.8, 0.2, 1.0], rtol=1e-15)


def test_tempbalance_sqrt_log2_step_hand_computed():
    np.testing.assert_allclose(tempbalance_factors([1.0, 4.0], assignment="sqrt"), [2 / 3, 4 / 3], rtol=1e-15)
    np.testing.assert_allclose(tempbalance_factors([2.0, 4.0], assignment="log2"), [2 / 3, 4 / 3], rtol=1e-15)
    # ranks 2, 0, 1 of n = 3: 0.5 + r / 3
    np.testing.assert_allclose(tempbalance_factors([3.0, 1.0, 2.0], assignment="step"), [0.5 + 2 / 3, 0.5, 0.5 + 1 / 3])


@pytest.mark.parametrize("assignment", ["linear", "sqrt", "log2", "step"])
def test_tempbalance_monotone_in_alpha(assignment):
    a = np.random.default_rng(3).uniform(1.5, 8.0, size=40)
    f = tempbalance_factors(a, assignment=assignment)
    order = np.argsort(a)
    assert np.all(np.diff(f[order]) >= 0)  # a larger alpha never gets a smaller rate
    if assignment == "linear":
        assert f.min() == pytest.approx(0.5) and f.max() == pytest.approx(1.5)
    if assignment in ("sqrt", "log2"):
        assert f.mean() == pytest.approx(1.0)  # n · v / Σv: the mean rate is the base rate


def test_edge_cases_all_equal_and_nan_keep_the_base():
    for assignment in ("linear", "sqrt", "log2"):
        np.testing.assert_allclose(tempbalance_factors([3.0, 3.0, 3.0], assignment=assignment), 1.0, rtol=1e-15)
    np.testing.assert_array_equal(alphadecay_factors([2.5, 2.5]), [1.0, 1.0])
    # a NaN alpha (skipped / undetermined layer) gets 1.0 and does not move the others' range
    np.testing.assert_allclose(tempbalance_factors([2.0, np.nan, 4.0]), [0.5, 1.0, 1.5])
    np.testing.assert_array_equal(tempbalance_factors([np.nan, np.nan]), [1.0, 1.0])
    np.testing.assert_array_equal(tempbalance_factors([0.8, 2.0], assignment="log2"), [1.0, 1.0])  # log2 needs α > 1


def test_alphadecay_direction_and_range():
    f = alphadecay_factors([2.0, 3.0, 4.0])
    np.testing.assert_allclose(f, [0.666, 0.666 + (3.0 - 0.666) / 2, 3.0], rtol=1e-15)
    assert f[0] < f[1] < f[2]  # heavier tail (smaller alpha) -> weaker decay


@pytest.mark.parametrize(
    "call",
    [
        lambda: tempbalance_factors([2.0], assignment="cubic"),
        lambda: tempbalance_factors([2.0], lr_range=(1.5, 0.5)),
        lambda: alphadecay_factors([2.0], wd_range=(-1.0, 2.0)),
    ],
)
def test_bad_arguments(call):
    with pytest.raises(ValueError):
        call()


# ------------------------------------------------------------------ which layers take part
def _result(alphas, evals=100, step=7):
    layers = []
    for i, a in enumerate(alphas):
        lm = LayerMetrics(name=f"l{i}", num_evals=evals if np.isscalar(evals) else evals[i])
        if a is not None:
            lm.extra["alpha_median"] = a
        layers.append(lm)
    return SnapshotResult(step=step, epoch=None, time=0.0, layers=layers)


def test_decide_keeps_ends_and_undetermined_layers_at_the_base():
    res = _result([9.0, 2.0, None, 3.0, 4.0, 0.5])
    d = decide(res, [[f"l{i}"] for i in range(6)], tempbalance_factors)
    assert d.source_step == 7
    assert d.factors == (1.0, 0.5, 1.0, 1.0, 1.5, 1.0)  # ends 9.0 and 0.5 are not part of min/max
    assert math.isnan(d.alphas[2])


def test_decide_min_evals_and_grouped_matrices():
    res = _result([1.0, 2.0, 6.0, 3.0, 5.0, 1.0], evals=[100, 100, 10, 100, 100, 100])
    # l2 has 10 < 50 eigenvalues: base; l3 + l4 are one layer (one parameter): mean alpha 4.0
    d = decide(res, [["l0"], ["l1"], ["l2"], ["l3", "l4"], ["l5"]], tempbalance_factors, keep_ends=True)
    assert d.factors == (1.0, 0.5, 1.0, 1.5, 1.0)
    assert d.alphas[3] == 4.0
    d2 = decide(res, [["l0"], ["l1"], ["l2"], ["l3", "l4"], ["l5"]], tempbalance_factors, keep_ends=False, min_evals=0)
    assert d2.factors[0] == 0.5 and d2.factors[2] == 1.5


def test_median_alpha_of_a_rank_deficient_matrix_is_undetermined():
    rng = np.random.default_rng(4)
    W = rng.normal(size=(40, 5)) @ rng.normal(size=(5, 30))  # rank 5 of 30: the median eigenvalue is round-off
    assert math.isnan(median_xmin_alpha(np.linalg.eigvalsh(W.T @ W)))
    assert math.isnan(median_xmin_alpha(np.linalg.svd(W, compute_uv=False) ** 2))
    W[:, :] += rng.normal(size=W.shape) * 1e-3  # full rank again: determined
    assert math.isfinite(median_xmin_alpha(np.linalg.svd(W, compute_uv=False) ** 2))
