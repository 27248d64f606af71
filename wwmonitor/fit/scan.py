"""The fast, exact minimum-KS scan over candidate ``xmin`` (the standard path, n >= 20).

For a candidate ``xmin = x_i`` with tail ``x_i <= ... <= x_{n-1}`` (``m = n - i`` points)::

    alpha_i = 1 + m / Σ_{j>=i} ln(x_j / x_i)
    D_i     = max_{k=0..m-1} | 1 - (x_{i+k}/x_i)^(1-alpha_i) - k/m |

and the first candidate with the smallest ``D`` wins (weightwatcher 0.7.7).

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
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ._common import _alphas, _ww_alpha_D

# relative tolerance used by the pruning and the final exact re-evaluation
_REL_TOL = 1e-9
# stage-1 and stage-2 subsample sizes of the lower bound
_S1 = 48
_S2 = 256
_S3 = 2048


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


def _full_unless_bounded(logx: np.ndarray, alpha: np.ndarray, ci: int, thr: float, ramp: np.ndarray) -> Optional[float]:
    """Full D of candidate ``ci``, or None when a strided (every ``m/2048``-th point)
    lower bound, used for tails longer than ``4 * 2048``, already exceeds ``thr``."""
    mi = logx.size - ci
    if mi > 4 * _S3:  # a third, strided bound before the full O(m) pass
        st = mi // _S3
        with np.errstate(over="ignore", invalid="ignore"):
            lb3 = float(np.max(np.abs(-np.expm1((1.0 - alpha[ci]) * (logx[ci::st] - logx[ci])) - ramp[:mi:st] / mi)))
        if lb3 > thr:
            return None
    return _ks_full(logx, ci, float(alpha[ci]), ramp)


def _refine_batch(
    logx: np.ndarray,
    alpha: np.ndarray,
    c: np.ndarray,
    ms: np.ndarray,
    lb1: np.ndarray,
    best: float,
    D: np.ndarray,
    evaluated: np.ndarray,
    ramp: np.ndarray,
) -> float:
    """Stage 2 for a batch of candidates ``c`` (tail sizes ``ms``, stage-1 bounds ``lb1``).

    Tightens their bounds on 256 points, then computes the full D (in place in
    ``D``/``evaluated``) of those still below the best D; returns the new best D.
    """
    K2 = _sample_positions(ms, _S2)
    lb2 = np.maximum(_ks_rows(logx, c, alpha[c], K2, ms), lb1)
    exact2 = ms <= _S2
    for t in np.argsort(lb2, kind="stable"):
        ci = int(c[t])
        if exact2[t]:
            d = float(lb2[t])
        else:
            thr = best * (1 + _REL_TOL) + 1e-15
            if lb2[t] > thr:
                continue
            d_full = _full_unless_bounded(logx, alpha, ci, thr, ramp)
            if d_full is None:
                continue
            d = d_full
        D[ci] = d
        evaluated[ci] = True
        if d < best:
            best = d
    return best


def _pruned_ks(logx: np.ndarray, alpha: np.ndarray, good: np.ndarray, D: np.ndarray, evaluated: np.ndarray) -> None:
    """Fill in ``D`` (in place) for every candidate in ``good`` that can still win.

    Stage 1: a lower bound on 48 tail points for all of them; then batches in
    increasing order of that bound go to :func:`_refine_batch` until the next
    bound exceeds the best D found so far.
    """
    n = logx.size
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
        best = _refine_batch(logx, alpha, good[sel], m[sel], lb[sel], best, D, evaluated, ramp)


def _final_choice(
    x: np.ndarray, logx: np.ndarray, D: np.ndarray, evaluated: np.ndarray, full: bool
) -> tuple[int, float, float, Optional[np.ndarray]]:
    """Re-evaluate the near-best candidates with weightwatcher's exact arithmetic; the first
    minimum wins.  Returns ``(i, alpha, D, Ds or None)``."""
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
    return bi, ba, bD, Ds


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
        _pruned_ks(logx, alpha, good, D, evaluated)
    bi, ba, bD, Ds = _final_choice(x, logx, D, evaluated, full)
    return bi, ba, bD, int(evaluated.sum()), Ds
