"""The median-xmin power-law exponent (TempBalance's and AlphaDecay's default "median" fit).

TempBalance (Zhou et al., NeurIPS 2023, repository ``YefanZhou/TempBalance``, ``pl_fitting="median"``)
and AlphaDecay (He et al., 2025) do not search ``xmin`` by the KS distance as Clauset et al. do: they
take the eigenvalue at the middle position of the ascending ESD as ``xmin`` and apply the continuous
power-law MLE to the upper half.  With the ascending eigenvalues ``λ_0 <= ... <= λ_{N-1}``
(all of them, zeros included -- the references' default ``filter_zeros=False``)::

    i = floor(N / 2),   n = N - i,   α = 1 + n / Σ_{j >= i} ln(λ_j / λ_i)

(the ``j = i`` term is zero).  α depends only on ratios of eigenvalues, so any scale of the
matrix (``1/N``, the conv normalisation) leaves it unchanged.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["median_xmin_alpha"]


def median_xmin_alpha(eigs: np.ndarray) -> float:
    """α of the ESD ``eigs`` (eigenvalues of ``WᵀW`` on any scale) with ``xmin`` at the median position.

    Computed in float64.  Returns NaN when it is not determined: fewer than 2 eigenvalues, non-finite
    values, a flat upper half (all equal: the denominator is 0), or an ``xmin`` that is zero up to
    round-off, ``xmin <= N · eps · λ_max`` (at least half of the eigenvalues belong to the null space of a
    rank-deficient matrix: their values are round-off, and an α fitted to them would say nothing about
    the weights -- the references fit it anyway).
    """
    ev = np.sort(np.asarray(eigs, dtype=np.float64).ravel())
    N = ev.size
    if N < 2 or not np.all(np.isfinite(ev)):
        return math.nan
    i = N // 2
    xmin = ev[i]
    if not xmin > N * np.finfo(np.float64).eps * ev[-1]:
        return math.nan
    n = N - i
    denom = float(np.sum(np.log(ev[i:] / xmin)))
    if not denom > 0:
        return math.nan
    return 1.0 + n / denom
