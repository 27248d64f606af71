"""Power-law fits of an ESD tail (Clauset, Shalizi & Newman 2009), fast and exact.

Model (continuous power law on ``[xmin, ∞)``)::

    p(x) = (alpha - 1) / xmin · (x / xmin)^(-alpha)

Maximum-likelihood exponent for the ``n`` points ``x_i >= xmin``::

    alpha = 1 + n / Σ_{x_i >= xmin} ln(x_i / xmin)

``xmin`` is chosen among the data as the one minimising the Kolmogorov-Smirnov
distance between the fitted CDF and the empirical CDF of its tail::

    D = max_{k=0..n-1} | 1 - (x_k/xmin)^(1-alpha) - k/n |     (tail sorted ascending)

(note the empirical CDF is ``k/n``, the value *before* the step at ``x_k``;
this is weightwatcher's convention and we keep it), with the standard error
``sigma = (alpha - 1) / sqrt(n)``.

Agreement with weightwatcher 0.7.7
----------------------------------
With default arguments :func:`fit_powerlaw` returns *bit-for-bit* the
``alpha``, ``xmin``, ``D`` and ``sigma`` of weightwatcher 0.7.7's default
fitter (``WW_powerlaw.WWFit`` as called by ``WeightWatcher.fit_powerlaw``):

* eigenvalues ``<= 1e-5`` are dropped (:data:`EVALS_THRESH`);
* every remaining eigenvalue except the largest is a candidate ``xmin``;
* the first candidate with the smallest ``D`` wins;
* with fewer than :data:`SMALL_N_CUTOFF` (20) eigenvalues weightwatcher
  switches to a *small-n* estimator (bias-corrected ``alpha = 1 + (n-1)/Σ ln``,
  candidates need a tail of at least 8 points, the smallest ``D`` wins);
  we reproduce it (``fit.method == "small_n"``).

Speed: exact pruning
--------------------
The plain scan costs ``O(n²)`` (one ``n``-point KS distance per candidate).
We compute every candidate's ``alpha`` in ``O(n)`` from suffix sums of
``ln x``, then a *lower bound* on every candidate's ``D``: the maximum of the
KS deviation over a fixed subset of ~48 tail points (a maximum over a subset
never exceeds the maximum over the whole set).  Candidates are visited in
increasing order of this bound; a tighter bound on 256 points is computed for
each batch (and on every ``m/2048``-th point for tails longer than 8192), and
the full ``D`` only for candidates whose bounds are still below the best ``D``
found so far.  The scan stops once the next bound exceeds the
best ``D``: every skipped candidate provably has a larger ``D``.  The few
candidates whose ``D`` is within ``1e-9`` (relative) of the best are finally
re-evaluated with weightwatcher's exact expression (``np.sum`` of the tail
logs, ``(x/xmin)**(1-alpha)``) and the first minimum wins, so rounding
differences between the fast and the reference arithmetic cannot change the
answer.  The result is therefore identical to the full scan; typically only
a few dozen of the ``n`` candidates need their full ``D``.

See ``docs/metrics.md`` ("Power-law fit") for the small-n rule, the "fingers"
fix, the truncated power law and the likelihood-ratio tests.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

__all__ = [
    "PowerLawFit",
    "fit_powerlaw",
    "TPLFit",
    "fit_truncated_powerlaw",
    "LikelihoodRatio",
    "compare_distributions",
    "PowerLawRank",
    "powerlaw_rank",
    "EVALS_THRESH",
    "SMALL_N_CUTOFF",
]

#: eigenvalues at or below this are dropped before fitting (weightwatcher's EVALS_THRESH)
EVALS_THRESH = 1e-5
#: below this many eigenvalues (after thresholding) the small-n estimator is used (weightwatcher 0.7.7)
SMALL_N_CUTOFF = 20
#: small-n estimator: minimum tail size of a candidate xmin (weightwatcher's ``k_min``)
SMALL_N_MIN_TAIL = 8
#: fix_fingers: a clipped fit is accepted when its alpha is this much below the unclipped alpha
FINGER_THRESH = 1.0
#: fix_fingers: stop clipping once alpha falls to this value
FINGER_MIN_ALPHA = 2.0
#: fits whose tail has fewer points than this carry a warning message (alpha is then very noisy)
FEW_TAIL_POINTS = 10

# relative tolerance used by the pruning and the final exact re-evaluation
_REL_TOL = 1e-9
# stage-1 and stage-2 subsample sizes of the lower bound
_S1 = 48
_S2 = 256
_S3 = 2048


@dataclass(frozen=True)
class PowerLawFit:
    """Result of :func:`fit_powerlaw`.

    Attributes are on the axis of the eigenvalues passed in (``xmin``, ``xmax``
    scale with the input; ``alpha``, ``D``, ``sigma`` are scale-free).

    Attributes
    ----------
    alpha:
        Power-law exponent (continuous MLE; bias-corrected for ``method="small_n"``).
    xmin, xmax:
        Smallest and largest eigenvalue of the fitted tail.
    D:
        KS distance of the fit (see module docstring for the exact formula).
    n_tail:
        Number of eigenvalues in the fitted tail (``xmin <= x <= xmax``,
        counted from ``xmin``'s position in the sorted data).
    sigma:
        Standard error ``(alpha - 1) / sqrt(n_tail)``.
    n:
        Number of eigenvalues that took part in the fit (after the ``1e-5``
        threshold, the ``xmax`` cut and finger clipping).
    status:
        ``"ok"``, ``"too_few"`` (fewer than 2 usable eigenvalues) or
        ``"failed"`` (non-finite input, degenerate tail); never a silent NaN:
        on failure the numbers are NaN *and* ``status``/``message`` say why.
    message:
        Human-readable reason for a failure, or a caution (tiny tail, small-n path).
    ks_landscape:
        ``(xmins, Ds)`` for every candidate ``xmin`` when ``keep_landscape=True``.
    method:
        ``"standard"`` (weightwatcher's KS scan), ``"small_n"`` (fewer than 20
        eigenvalues) or ``"fixed_xmin"``.
    n_clipped:
        Number of top eigenvalues removed by the ``fix_fingers`` option.
    n_evaluated:
        How many candidates needed their full KS distance (diagnostic of the pruning).
    num_pl_spikes:
        weightwatcher's ``num_pl_spikes``: the number of *input* eigenvalues
        ``>= xmin`` (counts ties at ``xmin``, clipped fingers and values above
        ``xmax``); 0 when the fit failed.
    """

    alpha: float
    xmin: float
    xmax: float
    D: float
    n_tail: int
    sigma: float
    n: int
    status: str = "ok"  # "ok" | "failed" | "too_few"
    message: str = ""
    ks_landscape: Optional[tuple[np.ndarray, np.ndarray]] = field(default=None, repr=False, compare=False)
    method: str = "standard"
    n_clipped: int = 0
    n_evaluated: int = 0
    num_pl_spikes: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _failed(n: int, status: str, message: str, method: str = "standard") -> PowerLawFit:
    nan = float("nan")
    return PowerLawFit(nan, nan, nan, nan, 0, nan, n, status, message, method=method)


# ---------------------------------------------------------------------------
# the reference (weightwatcher) expressions, used for final values
# ---------------------------------------------------------------------------


def _ww_alpha_D(data: np.ndarray, log_data: np.ndarray, i: int) -> tuple[float, float]:
    """alpha and D of candidate ``i`` exactly as WWFit.fit_power_law_standard computes them."""
    n = float(data.size - i)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        alpha = 1 + n / (np.sum(log_data[i:]) - n * log_data[i])
        D = 1.0
        if alpha > 1:
            D = np.max(np.abs(1 - (data[i:] / data[i]) ** (-alpha + 1) - np.arange(n) / n))
    return float(alpha), float(D)


# ---------------------------------------------------------------------------
# fast exact KS scan
# ---------------------------------------------------------------------------


def _alphas(logx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """alpha of every candidate i = 0..n-2 from suffix sums of centred logs (O(n)).

    Returns ``(alpha, denom)`` where ``denom = Σ_{j>=i} ln(x_j/x_i)``.
    """
    n = logx.size
    c = logx - logx[n // 2]  # centring keeps the suffix sums small (less cancellation)
    S = np.cumsum(c[::-1])[::-1]
    m = np.arange(n, 0, -1, dtype=np.float64)
    denom = (S - m * c)[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = 1.0 + m[:-1] / denom
    return alpha, denom


def _ks_rows(logx: np.ndarray, cand: np.ndarray, alpha: np.ndarray, K: np.ndarray, m: np.ndarray) -> np.ndarray:
    """max_j |1 - exp((1-a)(ln x_{i+K_j} - ln x_i)) - K_j/m| for each row (candidate)."""
    z = logx[cand[:, None] + K] - logx[cand][:, None]
    with np.errstate(over="ignore", invalid="ignore"):
        dev = np.abs(-np.expm1((1.0 - alpha)[:, None] * z) - K / m[:, None])
    return dev.max(axis=1)


def _sample_positions(m: np.ndarray, s: int) -> np.ndarray:
    """(len(m), s) tail positions in [0, m-1]: all of them when m <= s, else a
    mixture of uniformly spaced and (near the start) geometrically spaced ranks."""
    mm = (m - 1).astype(np.int64)[:, None]
    h = s // 2
    uni = np.floor(np.linspace(0.0, 1.0, s - h)[None, :] * mm).astype(np.int64)
    geo = np.floor(np.geomspace(1.0, 0.5 * 1e3, h)[None, :] / 1e3 * mm).astype(np.int64)
    K = np.concatenate([uni, geo], axis=1)
    small = m <= s
    if small.any():
        K[small] = np.minimum(np.arange(s)[None, :], mm[small])
    return K


def _ks_full(logx: np.ndarray, i: int, a: float, ramp: np.ndarray) -> float:
    m = logx.size - i
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.max(np.abs(-np.expm1((1.0 - a) * (logx[i:] - logx[i])) - ramp[:m] / m)))


def _ks_all(logx: np.ndarray, alpha: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Exact D of every candidate (fast arithmetic), in blocks; O(n²) work, vectorised."""
    n = logx.size
    out = np.empty(cand.size)
    budget = 1 << 21
    p = 0
    while p < cand.size:
        i0 = int(cand[p])
        width = n - i0
        B = max(1, min(cand.size - p, budget // max(width, 1)))
        blk = cand[p : p + B]
        J = np.arange(i0, n)
        rel = J[None, :] - blk[:, None]  # tail rank k (negative: not in the tail)
        m = (n - blk).astype(np.float64)
        z = logx[J][None, :] - logx[blk][:, None]
        with np.errstate(over="ignore", invalid="ignore"):
            dev = np.abs(-np.expm1((1.0 - alpha[blk])[:, None] * z) - rel / m[:, None])
        dev[rel < 0] = 0.0
        out[p : p + B] = dev.max(axis=1)
        p += B
    return out


def _scan(x: np.ndarray, logx: np.ndarray, full: bool) -> tuple[int, float, float, int, Optional[np.ndarray]]:
    """Standard KS scan over candidates 0..n-2. Returns (i, alpha, D, n_evaluated, Ds or None)."""
    n = x.size
    alpha, denom = _alphas(logx)
    ncand = n - 1
    idx = np.arange(ncand)
    # candidates whose tail is (numerically) constant: weightwatcher gets alpha = inf or < 1;
    # evaluate them with the reference expressions directly.
    scale = (n - idx) * (np.abs(logx).max() + 1.0)
    odd = ~(denom > 1e-9 * scale) | ~np.isfinite(alpha)
    D = np.full(ncand, np.inf)
    for i in np.flatnonzero(odd):
        D[i] = _ww_alpha_D(x, logx, int(i))[1]
    good = idx[~odd]
    evaluated = np.zeros(ncand, dtype=bool)
    evaluated[odd] = True
    if full:
        if good.size:
            D[good] = _ks_all(logx, alpha, good)
        evaluated[:] = True
    elif good.size:
        m = (n - good).astype(np.float64)
        K1 = _sample_positions(m, _S1)
        lb = _ks_rows(logx, good, alpha[good], K1, m)
        exact1 = m <= _S1
        D[good[exact1]] = lb[exact1]
        evaluated[good[exact1]] = True
        order = np.argsort(lb, kind="stable")
        ramp = np.arange(n, dtype=np.float64)
        best = float(np.min(D))
        p = 0
        batch = 16
        while p < order.size:
            thr = best * (1 + _REL_TOL) + 1e-15
            if lb[order[p]] > thr:
                break
            sel = order[p : p + batch]
            p += sel.size
            batch = min(batch * 2, 256)
            sel = sel[lb[sel] <= thr]
            sel = sel[~exact1[sel]]
            if sel.size == 0:
                continue
            c = good[sel]
            ms = m[sel]
            K2 = _sample_positions(ms, _S2)
            lb2 = np.maximum(_ks_rows(logx, c, alpha[c], K2, ms), lb[sel])
            exact2 = ms <= _S2
            for t in np.argsort(lb2, kind="stable"):
                ci = int(c[t])
                if exact2[t]:
                    d = float(lb2[t])
                else:
                    thr = best * (1 + _REL_TOL) + 1e-15
                    if lb2[t] > thr:
                        continue
                    mi = n - ci
                    if mi > 4 * _S3:  # a third, strided bound before the full O(m) pass
                        st = mi // _S3
                        with np.errstate(over="ignore", invalid="ignore"):
                            lb3 = float(np.max(np.abs(-np.expm1((1.0 - alpha[ci]) * (logx[ci::st] - logx[ci]))
                                                      - ramp[: mi : st] / mi)))
                        if lb3 > thr:
                            continue
                    d = _ks_full(logx, ci, float(alpha[ci]), ramp)
                D[ci] = d
                evaluated[ci] = True
                if d < best:
                    best = d
    # final choice among near-best candidates with weightwatcher's exact arithmetic
    best = float(np.min(D))
    near = np.flatnonzero(evaluated & (D <= best * (1 + _REL_TOL) + 1e-15))
    bi, ba, bD = -1, float("nan"), float("inf")
    for i in near:
        a, d = _ww_alpha_D(x, logx, int(i))
        if d < bD:
            bi, ba, bD = int(i), a, d
    Ds = None
    if full:
        Ds = D.copy()
        for i in near:
            Ds[i] = _ww_alpha_D(x, logx, int(i))[1]
        Ds[~np.isfinite(Ds)] = 1.0
    return bi, ba, bD, int(evaluated.sum()), Ds


def _small_n(x: np.ndarray, logx: np.ndarray) -> tuple[int, float, float, Optional[np.ndarray], str]:
    """weightwatcher 0.7.7's small-n path (n < 20) as it actually behaves.

    ``WWFit.fit_powerlaw_smallN`` fills, for candidates whose tail has at least
    :data:`SMALL_N_MIN_TAIL` points, the bias-corrected ``alpha = 1 + (n-1)/Σ ln(x/xmin)``
    and ``D`` (other candidates keep ``D = 1``); it also ranks them by
    ``D - 0.868/sqrt(n_tail)``, but ``WWFit.__init__`` then re-selects
    ``argmin(D)``, so the smallest ``D`` wins.  When no candidate has 8 tail
    points the whole data is the tail.  Returns ``(i, alpha, D, Ds, problem)``.
    """
    N = x.size
    Ds = np.ones(N - 1)
    alphas = np.zeros(N - 1)
    for i in range(N - 1):
        n_int = N - i
        if n_int < SMALL_N_MIN_TAIL:
            continue
        n = float(n_int)
        s = np.sum(logx[i:]) - n * logx[i]
        if s <= 1e-12:
            continue
        a = 1.0 + (n - 1.0) / s
        alphas[i] = a
        if a <= 1.0:
            continue
        Ds[i] = float(np.max(np.abs(np.arange(n_int, dtype=np.float64) / n - (1.0 - (x[i:] / x[i]) ** (1.0 - a)))))
    if N - 1 >= SMALL_N_MIN_TAIL - 1 and (alphas > 1.0).any():
        j = int(np.argmin(Ds))
        if alphas[j] > 1.0:
            return j, float(alphas[j]), float(Ds[j]), Ds, ""
    # no candidate with a tail of >= 8 points: the whole data is the tail
    n = float(N)
    s = np.sum(logx) - n * logx[0]
    if s <= 1e-12:
        return 0, float("nan"), float("nan"), Ds, "all eigenvalues are (numerically) equal"
    a = 1.0 + (n - 1.0) / s
    d = float(np.max(np.abs(np.arange(N, dtype=np.float64) / n - (1.0 - (x / x[0]) ** (1.0 - a)))))
    Ds[0] = d
    return 0, float(a), d, Ds, ""


def _prepare(evals: Any, xmax: Optional[float]) -> tuple[Optional[np.ndarray], Optional[PowerLawFit]]:
    from .spectral import to_numpy  # torch tensors on any device, JAX/TF arrays

    x = np.asarray(to_numpy(evals), dtype=np.float64)
    if x.ndim != 1:
        x = x.ravel()
    if not np.isfinite(x).all():
        return None, _failed(x.size, "failed", "eigenvalues contain NaN or Inf")
    x = np.sort(x[x > EVALS_THRESH])
    if xmax is not None:
        if not (isinstance(xmax, (int, float, np.integer, np.floating)) and math.isfinite(float(xmax))):
            raise ValueError(f"fit_powerlaw: xmax must be a finite number or None, got {xmax!r}")
        x = x[x <= float(xmax)]
    return x, None


def _fit_sorted(
    x: np.ndarray, xmin: Optional[float], keep_landscape: bool, n_clipped: int = 0
) -> PowerLawFit:
    n = x.size
    if n < 2:
        return _failed(n, "too_few", f"only {n} eigenvalue(s) above {EVALS_THRESH} (need at least 2)")
    logx = np.log(x, dtype=np.float64)
    landscape = None
    n_eval = 1
    if xmin is not None:
        i = int(np.searchsorted(x, float(xmin), side="left"))
        if i >= n - 1:
            return _failed(n, "too_few", f"fewer than 2 eigenvalues >= xmin={xmin!r}", method="fixed_xmin")
        a, D = _ww_alpha_D(x, logx, i)
        method = "fixed_xmin"
        m = n - i
        if not (math.isfinite(a) and a > 1):
            return _failed(n, "failed", f"tail above xmin={xmin!r} is degenerate (alpha={a})", method=method)
        sigma = (a - 1) / np.sqrt(m)
        if keep_landscape:
            landscape = (x[i : i + 1].copy(), np.array([D]))
    elif n < SMALL_N_CUTOFF:
        method = "small_n"
        i, a, D, Ds, problem = _small_n(x, logx)
        n_eval = n - 1
        if problem:
            return _failed(n, "failed", f"small-n fit: {problem}", method=method)
        m = n - i
        sigma = (a - 1.0) / np.sqrt(m)
        if keep_landscape and Ds is not None:
            landscape = (x[:-1].copy(), Ds)
    else:
        method = "standard"
        i, a, D, n_eval, Ds = _scan(x, logx, full=keep_landscape)
        if i < 0 or not (math.isfinite(a) and a > 1):
            return _failed(n, "failed", "no candidate xmin gave a finite power-law fit")
        m = n - i
        sigma = (a - 1) / np.sqrt(m)
        if keep_landscape and Ds is not None:
            landscape = (x[:-1].copy(), Ds)
    msgs = []
    if method == "small_n":
        msgs.append(
            f"small-n fit ({n} < {SMALL_N_CUTOFF} eigenvalues): bias-corrected alpha, "
            f"tails of >= {SMALL_N_MIN_TAIL} points"
        )
    if m < FEW_TAIL_POINTS:
        msgs.append(f"only {m} points in the fitted tail; alpha is unreliable (sigma={sigma:.3g})")
    return PowerLawFit(
        alpha=float(a),
        xmin=float(x[i]),
        xmax=float(x[-1]),
        D=float(D),
        n_tail=int(m),
        sigma=float(sigma),
        n=int(n),
        message="; ".join(msgs),
        ks_landscape=landscape,
        method=method,
        n_clipped=int(n_clipped),
        n_evaluated=int(n_eval),
    )


def fit_powerlaw(
    evals: Any,
    *,
    xmin: Optional[float] = None,
    xmax: Optional[float] = None,
    keep_landscape: bool = False,
    fix_fingers: int = 0,
    finger_rule: str = "clip_xmax",
) -> PowerLawFit:
    """Fit a power law to the upper tail of ``evals`` (any order, any scale).

    With default arguments the result equals weightwatcher 0.7.7's default
    fitter bit for bit (see the module docstring); the scan is pruned exactly,
    so it is 20-80x faster than weightwatcher's loop at 1k-16k eigenvalues.

    Parameters
    ----------
    evals:
        Eigenvalues (1-D array-like; any axis -- weightwatcher uses the σ² axis).
        Values ``<= 1e-5`` are ignored.
    xmin:
        Fix ``xmin`` (the tail starts at the first eigenvalue ``>= xmin``)
        instead of scanning for the minimum-KS value.
    xmax:
        Drop eigenvalues above ``xmax`` before fitting (``None``: keep all).
        The fitted density is *not* renormalised for the cut (as in weightwatcher).
    keep_landscape:
        Also return the KS distance of every candidate ``xmin``
        (``fit.ks_landscape = (xmins, Ds)``); this needs the full ``O(n²)``
        scan (vectorised, still faster than weightwatcher's loop).
    fix_fingers:
        Clip up to this many of the largest eigenvalues ("fingers": a few
        finite-size outliers above the tail that pull the KS scan onto a tiny,
        steep tail) before fitting; ``0`` turns it off.  The rule is
        weightwatcher's ``clip_xmax`` idea: refit after clipping the top ``c``
        eigenvalues for ``c = 1, 2, ..., fix_fingers`` and accept the first fit
        whose alpha is more than :data:`FINGER_THRESH` (1.0) *below* the
        unclipped alpha; stop early (keeping the unclipped fit) once a clipped
        fit's alpha is ``<= 2``.  ``fit.n_clipped`` says how many were clipped.
    finger_rule:
        ``"clip_xmax"`` (default, as above) or ``"weightwatcher"``: exactly
        weightwatcher 0.7.7's ``fix_fingers='clip_xmax'``, which starts at
        ``c = 2``; ``fix_fingers=9`` reproduces its default ``max_fingers=10``
        (it reports ``num_fingers = c - 1``; our ``n_clipped`` is ``c``).

    Returns
    -------
    PowerLawFit
        ``status != "ok"`` with a ``message`` on failure (never a silent NaN).
    """
    if not isinstance(fix_fingers, (int, np.integer)) or isinstance(fix_fingers, bool) or fix_fingers < 0:
        raise ValueError(f"fit_powerlaw: fix_fingers must be a non-negative int, got {fix_fingers!r}")
    if finger_rule not in ("clip_xmax", "weightwatcher"):
        raise ValueError(f"fit_powerlaw: finger_rule must be 'clip_xmax' or 'weightwatcher', got {finger_rule!r}")
    x, bad = _prepare(evals, xmax)
    if bad is not None:
        return bad
    assert x is not None
    fit = _fit_sorted(x, xmin, keep_landscape)
    if fix_fingers and fit.ok:
        fit0 = fit
        kmax = min(int(fix_fingers), x.size // 2)
        # weightwatcher's clip_xmax rule (RMT_Util.fit_clipped_powerlaw: finger_thresh=1, min_alpha=2)
        for c in range(1 if finger_rule == "clip_xmax" else 2, kmax + 1):
            f = _fit_sorted(x[:-c], xmin, keep_landscape, n_clipped=c)
            if not f.ok:
                break
            if f.alpha + FINGER_THRESH < fit0.alpha:
                fit = f
                break
            if f.alpha <= FINGER_MIN_ALPHA:
                break
    if not fit.ok:
        return fit
    from .spectral import to_numpy

    ev = np.asarray(to_numpy(evals), dtype=np.float64).ravel()
    return replace(fit, num_pl_spikes=int(np.count_nonzero(ev >= fit.xmin)))


# ---------------------------------------------------------------------------
# truncated power law and alternative distributions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TPLFit:
    """Truncated power law ``p(x) ∝ x^(-alpha) · exp(-Lambda · x)`` on ``[xmin, ∞)``.

    ``Lambda`` has units of 1/x (``cutoff = 1/Lambda`` is on the axis of the
    input).  ``loglik`` is the total log-likelihood of the ``n_tail`` points.
    """

    alpha: float
    Lambda: float
    xmin: float
    n_tail: int
    loglik: float
    status: str = "ok"
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def cutoff(self) -> float:
        """``1/Lambda`` (inf for a pure power law)."""
        return float("inf") if self.Lambda == 0 else 1.0 / self.Lambda


def _tail(evals: Any, xmin: float, xmax: Optional[float]) -> np.ndarray:
    x = np.asarray(evals, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    x = x[(x >= xmin) & (x > EVALS_THRESH)]
    if xmax is not None:
        x = x[x <= xmax]
    return np.sort(x)


_GL_X, _GL_W = np.polynomial.legendre.leggauss(32)


def _tpl_log_norm(alpha: float, t: float) -> float:
    """``ln I``, ``I = ∫_1^∞ y^(-alpha) e^(-t (y-1)) dy`` (the TPL normaliser in ``y = x/xmin``).

    Finite for ``t > 0`` (any alpha) or ``t == 0`` and ``alpha > 1``
    (``I = 1/(alpha-1)``).  With ``y = e^z`` the integrand is ``exp(g(z))``,
    ``g(z) = (1-alpha) z - t (e^z - 1)``, which is log-concave; we integrate
    ``exp(g - max g)`` with composite 32-point Gauss-Legendre rules on both
    sides of the peak, over the range where ``g > max g - 60``.  Accurate to
    ~1e-12 relative against ``mpmath`` (``e^t t^(alpha-1) Γ(1-alpha, t)``).
    """
    if t <= 0.0:
        return -math.log(alpha - 1.0) if alpha > 1.0 else math.inf
    b = 1.0 - alpha
    zs = math.log(b / t) if (b > 0 and b > t) else 0.0

    def g(z: float) -> float:
        return b * z - t * math.expm1(z)

    gs = g(zs)
    step = 1.0
    while g(zs + step) > gs - 60.0:
        step *= 2.0
    lo_, hi = (zs + step / 2 if step > 1 else zs), zs + step
    for _ in range(60):
        mid = 0.5 * (lo_ + hi)
        if g(mid) > gs - 60.0:
            lo_ = mid
        else:
            hi = mid
    lo = 0.0
    if zs > 0 and g(0.0) < gs - 60.0:
        u, v = 0.0, zs
        for _ in range(60):
            mid = 0.5 * (u + v)
            if g(mid) < gs - 60.0:
                u = mid
            else:
                v = mid
        lo = u
    total = 0.0
    for u, v in ((lo, zs), (zs, hi)):
        if v <= u:
            continue
        edges = np.linspace(u, v, 9)
        mids = (0.5 * (edges[1:] + edges[:-1]))[:, None]
        half = (0.5 * (edges[1:] - edges[:-1]))[:, None]
        z = mids + half * _GL_X[None, :]
        total += float(np.sum(half * _GL_W[None, :] * np.exp(b * z - t * np.expm1(z) - gs)))
    return gs + math.log(total)


def _tpl_logpdf_y(y: np.ndarray, alpha: float, t: float) -> np.ndarray:
    """Pointwise log-density of y = x/xmin under the TPL with t = Lambda·xmin."""
    return -alpha * np.log(y) - t * (y - 1.0) - _tpl_log_norm(alpha, t)


_TPL_ALPHA_BOUNDS = (-20.0, 60.0)


def fit_truncated_powerlaw(
    evals: Any,
    xmin: Optional[float] = None,
    *,
    xmax: Optional[float] = None,
) -> TPLFit:
    """Maximum-likelihood truncated power law on the tail ``x >= xmin``.

    ``p(x) = x^(-alpha) e^(-Lambda x) / Z``, ``Z = ∫_xmin^∞ u^(-alpha) e^(-Lambda u) du``,
    maximised over ``alpha`` in ``[-20, 60]`` and ``Lambda >= 0``: the
    likelihood is profiled over a log-grid of ``t = Lambda·xmin`` (1-D bounded
    search in alpha at each), refined with Nelder-Mead in ``(alpha, ln t)``,
    and compared with the pure power law ``Lambda = 0`` (the nested model),
    so the result is never worse than the power law.  ``xmin=None`` takes the
    power-law fit's ``xmin``.  Unlike ``powerlaw`` 2.0.0, alpha is not
    bounded to ``[0, 3]``.
    """
    nan = float("nan")
    if xmin is None:
        pl = fit_powerlaw(evals, xmax=xmax)
        if not pl.ok:
            return TPLFit(nan, nan, nan, 0, nan, status="failed", message=f"power-law fit failed: {pl.message}")
        xmin = pl.xmin
    x = _tail(evals, float(xmin), xmax)
    n = x.size
    if n < 3:
        return TPLFit(nan, nan, float(xmin), n, nan, "too_few", f"only {n} eigenvalues >= xmin={xmin!r}")
    y = x / x[0]
    sly = float(np.log(y).sum())
    sy1 = float((y - 1.0).sum())
    if sly <= 0 or sy1 <= 0:
        return TPLFit(nan, nan, float(x[0]), n, nan, "failed", "tail is degenerate (all values equal)")
    lo_a, hi_a = _TPL_ALPHA_BOUNDS

    def nll(a: float, t: float) -> float:
        ln = _tpl_log_norm(a, t)
        return a * sly + t * sy1 + n * ln if math.isfinite(ln) else math.inf

    from scipy import optimize

    a_pl = 1.0 + n / sly
    best_a, best_t, best_f = a_pl, 0.0, nll(a_pl, 0.0)
    ymax = float(y[-1])
    for lt in np.linspace(math.log(1e-3 / ymax), math.log(1e3), 25):
        t = math.exp(lt)
        r = optimize.minimize_scalar(lambda a: nll(a, t), bounds=(lo_a, hi_a), method="bounded",
                                     options={"xatol": 1e-6})
        if r.fun < best_f:
            best_a, best_t, best_f = float(r.x), t, float(r.fun)
    if best_t > 0:
        def obj(p: np.ndarray) -> float:
            a = float(p[0])
            if not lo_a <= a <= hi_a:
                return math.inf
            return nll(a, math.exp(float(p[1])))

        r = optimize.minimize(obj, np.array([best_a, math.log(best_t)]), method="Nelder-Mead",
                              options={"xatol": 1e-9, "fatol": 1e-10, "maxiter": 2000})
        if r.fun < best_f:
            best_a, best_t, best_f = float(r.x[0]), math.exp(float(r.x[1])), float(r.fun)
    if not math.isfinite(best_f):
        return TPLFit(nan, nan, float(x[0]), n, nan, "failed", "TPL likelihood could not be maximised")
    msg = ""
    if best_t > 0 and min(abs(best_a - lo_a), abs(best_a - hi_a)) < 1e-3:
        msg = f"alpha at the search bound {best_a:g}: the tail is not power-law-like"
    loglik = -best_f - n * math.log(x[0])
    return TPLFit(alpha=best_a, Lambda=float(best_t / x[0]), xmin=float(x[0]), n_tail=n, loglik=float(loglik),
                  message=msg)


class LikelihoodRatio(NamedTuple):
    """``R``: normalised log-likelihood ratio ``Σ(ln p_PL - ln p_alt) / sqrt(n · var)``
    (positive favours the power law); ``p``: significance of its sign."""

    R: float
    p: float


def _mle(nll: Callable[[np.ndarray], float], starts: list[np.ndarray]) -> np.ndarray:
    """Minimise ``nll`` with Nelder-Mead from several starts; the best end point wins.

    Stops on the function value (``fatol=1e-9``) only: for a pure power-law
    tail the lognormal and stretched-exponential MLEs run off to a boundary
    (``μ → -∞``, ``b → 0``, where they approach a power law), so their
    parameters never converge although the likelihood does.
    """
    from scipy import optimize

    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for x0 in starts:
            r = optimize.minimize(nll, x0, method="Nelder-Mead",
                                  options={"xatol": 1e12, "fatol": 1e-9, "maxiter": 800})
            if best is None or r.fun < best.fun:
                best = r
    return best.x


def _fit_alternatives(y: np.ndarray) -> dict[str, np.ndarray]:
    """Pointwise log-densities (in ``y = x/xmin >= 1``) of the MLE alternatives.

    * exponential ``p(y) = t e^(-t (y-1))``, ``t = 1/mean(y-1)`` (closed form);
    * lognormal truncated at 1, ``p(y) = φ((ln y - μ)/s) / (y s Φ(μ/s))``;
    * stretched exponential (Weibull) truncated at 1,
      ``p(y) = b t^b y^(b-1) exp(t^b - (t y)^b)``.
    """
    from scipy import special

    ly = np.log(y)
    out: dict[str, np.ndarray] = {}
    t = 1.0 / max(float(np.mean(y - 1.0)), 1e-300)
    out["exponential"] = math.log(t) - t * (y - 1.0)

    def ln_ll(p: np.ndarray) -> np.ndarray:
        mu, s = float(p[0]), math.exp(float(p[1]))
        return -ly - math.log(s) - 0.5 * math.log(2 * math.pi) - (ly - mu) ** 2 / (2 * s * s) - special.log_ndtr(mu / s)

    def ln_nll(p: np.ndarray) -> float:
        v = -float(np.sum(ln_ll(p)))
        return v if math.isfinite(v) else 1e300

    s0 = max(float(np.std(ly)), 1e-3)
    m0 = float(np.mean(ly))
    out["lognormal"] = ln_ll(_mle(ln_nll, [np.array([m0, math.log(s0)]), np.array([0.0, math.log(s0)]),
                                            np.array([-2.0 * s0 * s0, math.log(2 * s0)])]))

    def se_ll(p: np.ndarray) -> np.ndarray:
        lt, b = float(p[0]), math.exp(float(p[1]))
        with np.errstate(over="ignore", invalid="ignore"):
            return math.log(b) + b * lt + (b - 1.0) * ly + math.exp(b * lt) - np.exp(b * (lt + ly))

    def se_nll(p: np.ndarray) -> float:
        v = -float(np.sum(se_ll(p)))
        return v if math.isfinite(v) else 1e300

    starts = []
    for b0 in (0.2, 0.5, 1.0):
        lt0 = -math.log(max(float(np.mean(y ** b0)) ** (1.0 / b0), 1e-300))
        starts.append(np.array([lt0, math.log(b0)]))
    out["stretched_exponential"] = se_ll(_mle(se_nll, starts))
    return out


def _lr(l1: np.ndarray, l2: np.ndarray, nested: bool, normalized: bool) -> LikelihoodRatio:
    from scipy import special, stats

    d = np.asarray(l1, dtype=np.float64) - np.asarray(l2, dtype=np.float64)
    n = d.size
    R = float(d.sum())
    var = float(np.mean((d - d.mean()) ** 2))
    if nested:
        p = float(stats.chi2.sf(abs(2.0 * R), 1))
    else:
        p = float(special.erfc(abs(R) / math.sqrt(2.0 * n * var))) if var > 0 else (1.0 if R == 0 else 0.0)
    if normalized:
        R = R / math.sqrt(n * var) if var > 0 else (0.0 if R == 0 else math.copysign(math.inf, R))
    return LikelihoodRatio(R, p)


def compare_distributions(
    evals: Any,
    fit: Optional[PowerLawFit] = None,
    *,
    normalized: bool = True,
) -> dict[str, LikelihoodRatio]:
    """Log-likelihood-ratio tests of the power law against alternatives on its tail.

    For each alternative ``q`` fitted by maximum likelihood to the same tail
    ``xmin <= x <= xmax`` (all truncated at ``xmin``)::

        l_i = ln p_PL(x_i) - ln q(x_i),  R = Σ l_i,  var = mean((l - mean l)²)

    * non-nested (lognormal, exponential, stretched exponential): Vuong's test,
      ``p = erfc(|R| / sqrt(2 n var))`` (Clauset et al. 2009, §5.1);
    * nested (truncated power law, which contains the power law at Lambda=0):
      ``p = P(χ²₁ > 2|R|)``.

    ``R`` is returned normalised, ``R / sqrt(n var)`` (``normalized=False``: the
    raw sum).  ``R > 0`` favours the power law, ``R < 0`` the alternative;
    small ``p`` (< 0.1) means the sign is significant.  Keys:
    ``"truncated_power_law"``, ``"lognormal"``, ``"exponential"``,
    ``"stretched_exponential"``.  Raises ``ValueError`` if the fit failed.
    """
    if fit is None:
        fit = fit_powerlaw(evals)
    if not fit.ok:
        raise ValueError(f"compare_distributions: the power-law fit failed ({fit.status}: {fit.message})")
    x = _tail(evals, fit.xmin, fit.xmax)
    if x.size < 3:
        raise ValueError(f"compare_distributions: only {x.size} eigenvalues in the tail")
    xmin, a = float(x[0]), float(fit.alpha)
    y = x / xmin
    # log-densities in y (the common -ln xmin term cancels in every ratio)
    ll_pl = math.log(a - 1.0) - a * np.log(y)
    tpl = fit_truncated_powerlaw(x, xmin=xmin)
    out: dict[str, LikelihoodRatio] = {}
    if tpl.ok and tpl.Lambda == 0.0:
        out["truncated_power_law"] = LikelihoodRatio(0.0, 1.0)  # the MLE TPL is the power law itself
    elif tpl.ok:
        out["truncated_power_law"] = _lr(ll_pl, _tpl_logpdf_y(y, tpl.alpha, tpl.Lambda * xmin), True, normalized)
    else:
        out["truncated_power_law"] = LikelihoodRatio(float("nan"), float("nan"))
    for k, lq in _fit_alternatives(y).items():
        out[k] = _lr(ll_pl, lq, False, normalized)
    return out


# ---------------------------------------------------------------------------
# power-law rank selection (the seeds' LSA K-selection)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLawRank:
    """Result of :func:`powerlaw_rank`.

    ``K`` is the number of eigenpairs in the fitted power-law tail
    (``#{ev >= xmin}``, weightwatcher's ``num_pl_spikes``): the "latent
    dimension" chosen as in the seeds' LSA example.  ``xmins``/``Ds`` are the
    KS-distance-vs-xmin landscape (every candidate ``xmin``; for fewer than 20
    eigenvalues the small-n values, where candidates with tails under 8 points
    have ``D = 1``), ``alphas`` the plain MLE exponent ``1 + m/Σ ln(x/xmin)``
    at each candidate; ``xmins`` and ``evals`` are on the axis of the
    eigenvalues used (σ² for a matrix: eigenvalues of ``WᵀW``, not divided by ``N``).
    """

    K: int
    alpha: float
    xmin: float
    D: float
    xmins: np.ndarray = field(repr=False)
    Ds: np.ndarray = field(repr=False)
    alphas: np.ndarray = field(repr=False)
    evals: np.ndarray = field(repr=False)
    fit: PowerLawFit = field(repr=False)
    status: str = "ok"
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def powerlaw_rank(W_or_evals: Any, *, xmax: Optional[float] = None, name: str = "W") -> PowerLawRank:
    """Choose ``K`` = the size of the power-law tail of the spectrum.

    ``W_or_evals``: a 2-D matrix (NumPy / torch; eigenvalues of ``WᵀW`` via
    :func:`wwmonitor.spectral.squared_singular_values`) or a 1-D array of
    eigenvalues.  The fit is :func:`fit_powerlaw` (weightwatcher-identical) and
    the landscape is the exact KS distance of every candidate ``xmin``.
    """
    from .spectral import squared_singular_values, to_numpy

    A = W_or_evals
    nd = len(np.shape(A)) if not hasattr(A, "ndim") else A.ndim
    if nd == 2:
        ev = squared_singular_values(A, name=name)
    elif nd == 1:
        ev = np.sort(np.asarray(to_numpy(A), dtype=np.float64))
    else:
        raise ValueError(f"powerlaw_rank: {name}: expected a 2-D matrix or 1-D eigenvalues, got {nd}-D input")
    fit = fit_powerlaw(ev, xmax=xmax, keep_landscape=True)
    empty = np.empty(0)
    if not fit.ok:
        return PowerLawRank(0, float("nan"), float("nan"), float("nan"), empty, empty, empty, ev, fit,
                            fit.status, f"{name}: {fit.message}")
    xs, Ds = fit.ks_landscape if fit.ks_landscape is not None else (empty, empty)
    x = np.sort(ev[ev > EVALS_THRESH])
    if xmax is not None:
        x = x[x <= xmax]
    # plain MLE exponent at every candidate (the small-n fit itself reports the bias-corrected one)
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = _alphas(np.log(x))[0] if x.size >= 2 else empty
    K = int(np.count_nonzero(ev >= fit.xmin) if xmax is None else np.count_nonzero((ev >= fit.xmin) & (ev <= xmax)))
    # (without xmax, K == fit.num_pl_spikes)
    return PowerLawRank(K, fit.alpha, fit.xmin, fit.D, xs, Ds, alphas, ev, fit, "ok", fit.message)
