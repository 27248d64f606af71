"""Private helpers shared by the :mod:`wwmonitor.fit` modules.

* :data:`EVALS_THRESH`, weightwatcher's threshold below which eigenvalues are dropped;
* :func:`_ww_alpha_D`, weightwatcher's own expressions for one candidate's ``alpha`` and ``D``
  (the reference arithmetic every final value is computed with);
* :func:`_alphas`, the MLE exponent of every candidate ``xmin`` in ``O(n)``;
* :func:`_tail`, the sorted tail ``xmin <= x <= xmax`` used by the TPL and the comparisons.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

#: eigenvalues at or below this are dropped before fitting (weightwatcher's EVALS_THRESH)
EVALS_THRESH = 1e-5


def _ww_alpha_D(data: np.ndarray, log_data: np.ndarray, i: int) -> tuple[float, float]:
    """alpha and D of candidate ``i`` exactly as WWFit.fit_power_law_standard computes them."""
    n = float(data.size - i)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        alpha = 1 + n / (np.sum(log_data[i:]) - n * log_data[i])
        D = 1.0
        if alpha > 1:
            D = np.max(np.abs(1 - (data[i:] / data[i]) ** (-alpha + 1) - np.arange(n) / n))
    return float(alpha), float(D)


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


def _tail(evals: Any, xmin: float, xmax: Optional[float]) -> np.ndarray:
    x = np.asarray(evals, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    x = x[(x >= xmin) & (x > EVALS_THRESH)]
    if xmax is not None:
        x = x[x <= xmax]
    return np.sort(x)
