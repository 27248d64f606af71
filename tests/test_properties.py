"""Property tests (hypothesis) of the spectral math: ``esd``, ``fit_powerlaw``, ``fit_mp``, ``analyze_matrix``.

Promises checked here (listed with their tests in docs/reliability.md, "Property tests"):

* **Invariance.**  The ESD and every *scale-free* metric are unchanged by transposing ``W`` and by
  permuting its rows or its columns; under a positive scale ``W -> c W`` the eigenvalues scale by ``c²``
  and the scale-free metrics are unchanged.
  Scale-free (asserted): ``alpha``, ``D``, ``sigma``, ``num_pl_spikes``, ``stable_rank``, ``entropy``,
  ``matrix_rank``, ``rank_loss``, ``detX_num``, ``ERG_gap``, ``mp_softrank``, ``num_spikes``, ``mp_ks``,
  ``phase``, ``status``.
  Scale-*dependent* (they carry units of σ² or λ; asserted to scale by ``c²``, or by ``+2 log10 c`` for the
  log norms): ``lambda_max``, ``xmin``, ``xmax``, ``detX_val``, ``mp_sigma2``, ``lambda_plus``,
  ``lambda_minus``, ``tw_margin``, ``log_norm``, ``log_spectral_norm``.  ``alpha_weighted`` /
  ``log_alpha_norm`` are ``alpha · log10(scale-dependent norm)`` and change by ``2 alpha log10 c``.
* **Where scale invariance legitimately fails (not asserted):** the power-law fit ignores eigenvalues
  ``<= 1e-5`` on the σ² axis (weightwatcher's absolute floor, ``wwmonitor.fit._common.EVALS_THRESH``), so
  ``alpha`` changes when a scale moves an eigenvalue across that floor.  The strategies below keep every
  non-zero σ² eigenvalue far above it (entries of order 1, scales in ``[2^-3, 2^3]`` and ``[0.3, 3]``), and
  numerically-zero eigenvalues (rank-deficient draws, ~1e-28) far below it at every scale drawn.
* **Tolerances.**  Transposes and permutations change only the order of floating-point sums, so the
  eigenvalues agree to ``1e-10 · λ_max`` (the Gram route's documented error, ``tests/test_spectral.py``) and the
  continuous metrics to a relative ``1e-8``.  Scaling by a power of two is exact in binary floating point, so
  there the results are *equal*.  For a general scale ``c`` the same ``1e-10 · λ_max`` holds.
  ``alpha`` is a minimum-KS choice over candidate ``xmin``: a round-off change can in principle move the
  argmin between two near-tied candidates; the draws below (and every example hypothesis tried) never did,
  and if it happens the failure is a real sensitivity worth seeing, so it is asserted.
* **float32 vs float64.**  A float32 matrix is widened exactly to float64 before the Gram product, so it
  gives *the same* result as its float64 copy (asserted equal).  Rounding a float64 matrix to float32
  (relative error ``2^-24`` per entry) moves the eigenvalues by at most ``1e-6 · λ_max`` (asserted) and
  the continuous metrics (stable rank, log norms, MP σ²) by a relative ``1e-5``.  ``alpha`` of the rounded
  matrix is *not* asserted equal: its ``xmin`` is a discrete argmin and a ``1e-7`` perturbation may move it
  to a neighbouring eigenvalue (a legitimate, documented jump, not a bug).
* **No NaN or inf.**  For any finite input every float in a ``LayerMetrics`` is finite or ``None``; a
  ``None`` is explained by ``status``/``message``: ``alpha`` (and ``xmin``/``xmax``/``D``/``sigma``, the
  alpha-weighted norms) are ``None`` exactly when ``status`` is ``"too_few_evals"`` (fewer than ``min_evals``
  eigenvalues), ``"fit_failed"`` (fewer than 2 eigenvalues above the floor, a degenerate tail) or
  ``"zero_matrix"``.  ``mp_ks`` is ``None`` with fewer than 4 non-zero eigenvalues (documented in
  :class:`wwmonitor.mp.MPFit`).  ``fit_powerlaw`` returns NaN numbers only together with ``status != "ok"``.
* **Clear errors.**  0-size, 1-D and (for ``esd``/``analyze_matrix`` of 2-D input) 4-D arrays raise
  ``ValueError`` naming the argument; NaN input makes ``esd``/``fit_mp`` raise, ``analyze_matrix`` return
  ``status="non_finite"`` and ``fit_powerlaw`` return ``status="failed"``.

Runs are small and deterministic (``derandomize=True``, no deadline): the whole file takes a few seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wwmonitor import analyze_matrix, esd
from wwmonitor.analyze import AnalysisOptions
from wwmonitor.fit import fit_powerlaw
from wwmonitor.mp import fit_mp

PROPS = settings(
    derandomize=True, max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

SCALE_FREE = (
    "alpha",
    "D",
    "sigma",
    "num_pl_spikes",
    "stable_rank",
    "entropy",
    "matrix_rank",
    "rank_loss",
    "detX_num",
    "ERG_gap",
    "mp_softrank",
    "num_spikes",
    "mp_ks",
    "phase",
    "status",
    "N",
    "M",
    "Q",
)
SQUARED_UNITS = (
    "lambda_max",
    "xmin",
    "xmax",
    "detX_val",
    "mp_sigma2",
    "lambda_plus",
    "lambda_minus",
    "tw_margin",
)
LOG_UNITS = ("log_norm", "log_spectral_norm")
STATUSES = {"ok", "too_few_evals", "fit_failed", "zero_matrix"}


@st.composite
def matrices(draw: st.DrawFn, min_side: int = 2, max_side: int = 48) -> np.ndarray:
    """A finite float64 matrix of order-1 entries: Gaussian, heavy-tailed (Student t, 2-4 dof), a rank-r
    product, or a Gaussian plus a few strong spikes; drawn from a seeded generator (deterministic)."""
    a = draw(st.integers(min_side, max_side))
    b = draw(st.integers(min_side, max_side))
    kind = draw(st.sampled_from(["gauss", "heavy", "lowrank", "spiked"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "gauss":
        W = rng.standard_normal((a, b))
    elif kind == "heavy":
        W = rng.standard_t(draw(st.sampled_from([2.0, 3.0, 4.0])), (a, b))
    elif kind == "lowrank":
        r = draw(st.integers(1, max(1, min(a, b) - 1)))
        W = rng.standard_normal((a, r)) @ rng.standard_normal((r, b)) / math.sqrt(r)
    else:
        W = rng.standard_normal((a, b))
        for _ in range(draw(st.integers(1, 3))):
            W += 3.0 * np.outer(rng.standard_normal(a), rng.standard_normal(b)) / math.sqrt(max(a, b))
    return W


def _perm(W: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return W[rng.permutation(W.shape[0])][:, rng.permutation(W.shape[1])]


def _close_ev(e1: np.ndarray, e2: np.ndarray, rel: float) -> None:
    assert e1.shape == e2.shape
    tol = rel * max(float(e1[-1]), float(e2[-1]), np.finfo(float).tiny)
    assert np.max(np.abs(e1 - e2)) <= tol, (np.max(np.abs(e1 - e2)), tol)


def _same(v1: object, v2: object, rel: float, key: str) -> None:
    if isinstance(v1, float) and isinstance(v2, float):
        assert math.isclose(v1, v2, rel_tol=rel, abs_tol=1e-12), (key, v1, v2)
    else:
        assert v1 == v2, (key, v1, v2)


def _metrics_agree(m1: object, m2: object, keys: tuple[str, ...], rel: float, factor: float = 1.0) -> None:
    for k in keys:
        v1, v2 = getattr(m1, k), getattr(m2, k)
        _same(v1 * factor if isinstance(v1, float) else v1, v2, rel, k)


# ---------------------------------------------------------------- esd


@PROPS
@given(matrices(), st.integers(0, 2**16))
def test_esd_invariant_to_transpose_and_permutations(W: np.ndarray, seed: int) -> None:
    e = esd(W)
    assert e.shape == (min(W.shape),) and np.all(np.isfinite(e)) and np.all(e >= 0) and np.all(np.diff(e) >= 0)
    _close_ev(e, esd(W.T), 1e-10)
    _close_ev(e, esd(_perm(W, seed)), 1e-10)
    _close_ev(e, esd(np.ascontiguousarray(_perm(W, seed).T)), 1e-10)


@PROPS
@given(matrices(), st.integers(-3, 3), st.floats(0.3, 3.0))
def test_esd_scales_by_c_squared(W: np.ndarray, k: int, c: float) -> None:
    e = esd(W)
    assert np.array_equal(esd(np.ldexp(W, k)), np.ldexp(e, 2 * k))  # powers of two: exact
    _close_ev(e * c * c, esd(c * W), 1e-10)


@PROPS
@given(matrices())
def test_esd_float32_path(W: np.ndarray) -> None:
    W32 = W.astype(np.float32)
    assert np.array_equal(esd(W32), esd(W32.astype(np.float64)))  # widened exactly: the same numbers
    _close_ev(esd(W), esd(W32), 1e-6)  # rounding to float32 moves eigenvalues by < 1e-6 λ_max


# ---------------------------------------------------------------- fit_powerlaw


def _sq_evals(W: np.ndarray) -> np.ndarray:
    return esd(W, normalize=False)


@PROPS
@given(matrices(min_side=4, max_side=64), st.integers(0, 2**16), st.integers(-3, 3), st.floats(0.3, 3.0))
def test_fit_powerlaw_order_and_scale(W: np.ndarray, seed: int, k: int, c: float) -> None:
    x = _sq_evals(W)
    fit = fit_powerlaw(x)
    _check_powerlaw_result(fit)
    shuffled = fit_powerlaw(np.random.default_rng(seed).permutation(x))
    assert (shuffled.alpha, shuffled.xmin, shuffled.D, shuffled.status) == (fit.alpha, fit.xmin, fit.D, fit.status) or (
        fit.status != "ok" and shuffled.status == fit.status
    )
    for s, exact in ((2.0**k, True), (c, False)):
        scaled = fit_powerlaw(x * s)
        assert scaled.status == fit.status
        if fit.status != "ok":
            continue
        assert scaled.n_tail == fit.n_tail and scaled.num_pl_spikes == fit.num_pl_spikes
        rel = 0.0 if exact else 1e-9
        for key in ("alpha", "D", "sigma"):
            _same(getattr(fit, key), getattr(scaled, key), rel, key)
        _same(fit.xmin * s, scaled.xmin, rel or 1e-15, "xmin")


def _check_powerlaw_result(fit: object) -> None:
    assert fit.status in {"ok", "too_few", "failed"}  # type: ignore[attr-defined]
    nums = [fit.alpha, fit.xmin, fit.xmax, fit.D, fit.sigma]  # type: ignore[attr-defined]
    if fit.status == "ok":  # type: ignore[attr-defined]
        assert all(math.isfinite(v) for v in nums), fit
        assert fit.alpha > 1 and 0 <= fit.D <= 1 and fit.xmin <= fit.xmax  # type: ignore[attr-defined]
    else:
        assert fit.message  # type: ignore[attr-defined]  # NaN numbers only with a reason


@PROPS
@given(st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=0, max_size=40))
def test_fit_powerlaw_never_silent_nan(vals: list[float]) -> None:
    fit = fit_powerlaw(np.array(vals, dtype=np.float64))
    _check_powerlaw_result(fit)
    if sum(v > 1e-5 for v in vals) < 2:
        assert fit.status == "too_few" or fit.status == "failed"


# ---------------------------------------------------------------- fit_mp


@PROPS
@given(matrices(min_side=4), st.integers(0, 2**16), st.integers(-3, 3), st.floats(0.3, 3.0))
def test_fit_mp_order_and_scale(W: np.ndarray, seed: int, k: int, c: float) -> None:
    lam = esd(W)
    Q = max(W.shape) / min(W.shape)
    mp = fit_mp(lam, Q)
    _check_mp_finite(mp)
    shuffled = fit_mp(np.random.default_rng(seed).permutation(lam), Q)
    assert repr(shuffled) == repr(mp)  # identical (repr: nan == nan for the few-eigenvalue ks)
    for s, rel in ((2.0**k, 0.0), (c, 1e-9)):
        m2 = fit_mp(lam * s, Q)
        for key in ("num_spikes", "num_above_edge", "n"):
            assert getattr(m2, key) == getattr(mp, key), key
        for key in ("mp_softrank", "ks", "bulk_fraction", "frac_at_zero"):
            v1, v2 = getattr(mp, key), getattr(m2, key)
            assert (math.isnan(v1) and math.isnan(v2)) or math.isclose(v1, v2, rel_tol=rel, abs_tol=1e-12), key
        for key in ("sigma2", "lambda_plus", "lambda_minus", "tw_margin", "lambda_max"):
            _same(getattr(mp, key) * s, getattr(m2, key), rel or 1e-15, key)


def _check_mp_finite(mp: object) -> None:
    for key, v in mp.__dict__.items():
        if isinstance(v, float) and not math.isfinite(v):
            # documented: ks is NaN with fewer than 4 non-zero eigenvalues
            assert key == "ks" and mp.n * (1 - mp.frac_at_zero) < 4 - 1e-9, (key, mp)  # type: ignore[attr-defined]
    assert 0 < mp.mp_softrank <= 1  # type: ignore[attr-defined]


# ---------------------------------------------------------------- analyze_matrix

OPTS = AnalysisOptions()


def _check_layer(lm: object) -> None:
    """Every float finite or None, and every None alpha explained by the status."""
    for key, v in lm.__dict__.items():  # type: ignore[attr-defined]
        if isinstance(v, float):
            assert math.isfinite(v), (key, v)
    assert lm.status in STATUSES, (lm.status, lm.message)  # type: ignore[attr-defined]
    if lm.status == "ok":  # type: ignore[attr-defined]
        assert lm.alpha is not None and lm.stable_rank is not None and lm.phase  # type: ignore[attr-defined]
    else:
        assert lm.alpha is None and lm.message  # type: ignore[attr-defined]
    if lm.mp_ks is None:  # fewer than 4 eigenvalues above 1e-8 λ_max: no KS figure, and the message says so
        assert lm.status == "zero_matrix" or "reported as None: mp_ks" in lm.message  # type: ignore[attr-defined]


@PROPS
@given(matrices(), st.integers(0, 2**16))
def test_analyze_matrix_invariant_to_transpose_and_permutations(W: np.ndarray, seed: int) -> None:
    lm = analyze_matrix(W)
    _check_layer(lm)
    for W2 in (W.T, _perm(W, seed)):
        lm2 = analyze_matrix(W2)
        _check_layer(lm2)
        _metrics_agree(lm, lm2, SCALE_FREE + SQUARED_UNITS + LOG_UNITS, 1e-8)


@PROPS
@given(matrices(), st.integers(-3, 3), st.floats(0.3, 3.0))
def test_analyze_matrix_scale(W: np.ndarray, k: int, c: float) -> None:
    lm = analyze_matrix(W)
    for s, rel in ((2.0**k, 0.0), (c, 1e-8)):
        lm2 = analyze_matrix(W * s)
        _check_layer(lm2)
        _metrics_agree(lm, lm2, SCALE_FREE, rel)
        _metrics_agree(lm, lm2, SQUARED_UNITS, rel or 1e-15, factor=s * s)
        for key in LOG_UNITS:
            _same(getattr(lm, key) + 2 * math.log10(s), getattr(lm2, key), 1e-12, key)


@PROPS
@given(matrices())
def test_analyze_matrix_float32_path(W: np.ndarray) -> None:
    W32 = W.astype(np.float32)
    a32, a64 = analyze_matrix(W32), analyze_matrix(W32.astype(np.float64))
    _check_layer(a32)
    # the same numbers: float32 is widened exactly before the Gram product
    _metrics_agree(a32, a64, SCALE_FREE + SQUARED_UNITS + LOG_UNITS, 0.0)
    ref = analyze_matrix(W)  # the float64 original: rounding moves the continuous metrics by < 1e-5
    for key in ("stable_rank", "lambda_max", "mp_sigma2"):
        _same(getattr(ref, key), getattr(a32, key), 1e-5, key)
    for key in LOG_UNITS:
        assert abs(getattr(ref, key) - getattr(a32, key)) < 1e-5, key


@PROPS
@given(st.integers(1, 6), st.integers(1, 40), st.floats(1e-3, 1e3))
def test_analyze_matrix_small_and_constant_matrices_are_finite(a: int, b: int, v: float) -> None:
    """Rank-one constant matrices, single rows/columns and tiny shapes: finite metrics, explained Nones."""
    for W in (np.full((a, b), v), np.eye(a, b) * v, np.zeros((a, b))):
        lm = analyze_matrix(W)
        _check_layer(lm)
        if not W.any():
            assert lm.status == "zero_matrix"
        elif min(a, b) < OPTS.min_evals:
            assert lm.status == "too_few_evals" and lm.alpha is None


# ---------------------------------------------------------------- degenerate input


@settings(derandomize=True, max_examples=15, deadline=None, database=None)
@given(st.sampled_from([(0,), (0, 3), (3, 0), (0, 0), (5,), (2, 3, 4, 5), (1, 0, 4)]))
def test_degenerate_shapes_raise_clear_errors(shape: tuple[int, ...]) -> None:
    W = np.ones(shape)
    with pytest.raises(ValueError, match="Wbad"):
        esd(W, name="Wbad")
    with pytest.raises(ValueError, match="'Wbad'"):
        analyze_matrix(W, "Wbad")


def test_nan_input_is_refused_or_flagged() -> None:
    W = np.ones((6, 8))
    W[2, 3] = np.nan
    with pytest.raises(ValueError, match="Wnan.*non-finite"):
        esd(W, name="Wnan")
    lm = analyze_matrix(W, "Wnan")
    assert lm.status == "non_finite" and "1 non-finite" in lm.message and lm.alpha is None
    fit = fit_powerlaw(np.array([1.0, 2.0, np.nan, 4.0]))
    assert fit.status == "failed" and "NaN" in fit.message
    with pytest.raises(ValueError, match="NaN or Inf"):
        fit_mp(np.array([1.0, np.inf]), 1.0)
    with pytest.raises(ValueError, match="no eigenvalues"):
        fit_mp(np.array([]), 1.0)
    with pytest.raises(ValueError, match="Q must be"):
        fit_mp(np.ones(4), 0.5)
    assert fit_powerlaw(np.array([])).status == "too_few"
