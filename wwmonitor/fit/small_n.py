"""weightwatcher 0.7.7's small-n estimator (fewer than :data:`SMALL_N_CUTOFF` eigenvalues).

Bias-corrected exponent for the ``n`` points of a candidate's tail::

    alpha = 1 + (n - 1) / Σ_{x_i >= xmin} ln(x_i / xmin)

Only candidates with a tail of at least :data:`SMALL_N_MIN_TAIL` points take
part, and the smallest KS distance ``D`` wins.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

#: below this many eigenvalues (after thresholding) the small-n estimator is used (weightwatcher 0.7.7)
SMALL_N_CUTOFF = 20
#: small-n estimator: minimum tail size of a candidate xmin (weightwatcher's ``k_min``)
SMALL_N_MIN_TAIL = 8


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
