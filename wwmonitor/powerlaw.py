"""Power-law fits of an ESD tail (Clauset, Shalizi & Newman 2009).

Continuous MLE for a tail ``x >= xmin``:

    alpha = 1 + n / Σ_{x_i >= xmin} ln(x_i / xmin)

with ``xmin`` chosen among the eigenvalues as the one that minimises the
Kolmogorov-Smirnov distance

    D = max_i | (1 - (x_i/xmin)^(1-alpha)) - i/n |,  i = 0..n-1 (tail sorted ascending)

and standard error ``sigma = (alpha - 1) / sqrt(n)``.  This reproduces the
default fitter of weightwatcher 0.7.7 (``WWFit``): eigenvalues ``<= 1e-5``
are dropped and every remaining eigenvalue except the largest is tried as
``xmin``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["PowerLawFit", "fit_powerlaw", "EVALS_THRESH"]

#: eigenvalues at or below this are dropped before fitting (weightwatcher's EVALS_THRESH)
EVALS_THRESH = 1e-5


@dataclass(frozen=True)
class PowerLawFit:
    """Result of :func:`fit_powerlaw`.

    Attributes are on the axis of the eigenvalues passed in.
    ``alpha`` is scale-free; ``xmin``/``xmax`` scale with the input.
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

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _failed(n: int, status: str, message: str) -> PowerLawFit:
    nan = float("nan")
    return PowerLawFit(nan, nan, nan, nan, 0, nan, n, status, message)


def fit_powerlaw(
    evals: np.ndarray,
    *,
    xmin: Optional[float] = None,
    xmax: Optional[float] = None,
    keep_landscape: bool = False,
) -> PowerLawFit:
    """Fit a power law to the upper tail of ``evals`` (any order, any scale).

    Parameters
    ----------
    evals:
        Eigenvalues (1-D).  Values ``<= 1e-5`` are ignored.
    xmin:
        Fix ``xmin`` instead of scanning for the minimum-KS value.
    xmax:
        Drop eigenvalues above ``xmax`` before fitting (``None``: keep all).
    keep_landscape:
        Also return the KS distance for every candidate ``xmin``
        (``fit.ks_landscape = (xmins, D)``).
    """
    x = np.asarray(evals, dtype=np.float64).ravel()
    if not np.isfinite(x).all():
        return _failed(x.size, "failed", "eigenvalues contain NaN or Inf")
    x = np.sort(x[x > EVALS_THRESH])
    if xmax is not None:
        x = x[x <= xmax]
    n = x.size
    if n < 2:
        return _failed(n, "too_few", f"only {n} eigenvalues above {EVALS_THRESH}")
    logx = np.log(x)
    if xmin is not None:
        cand = np.array([int(np.searchsorted(x, xmin, side="left"))])
    else:
        cand = np.arange(n - 1)
    # suffix sums of log x: S[i] = Σ_{j>=i} ln x_j
    S = np.cumsum(logx[::-1])[::-1]
    best_D, best = np.inf, -1
    Ds = np.full(cand.size, np.nan)
    alphas = np.full(cand.size, np.nan)
    for k, i in enumerate(cand):
        m = n - i
        denom = S[i] - m * logx[i]
        if denom <= 0:
            continue
        a = 1.0 + m / denom
        z = logx[i:] - logx[i]
        cdf = 1.0 - np.exp((1.0 - a) * z)
        emp = np.arange(m) / m
        D = float(np.max(np.abs(cdf - emp)))
        Ds[k], alphas[k] = D, a
        if D < best_D:
            best_D, best = D, k
    if best < 0:
        return _failed(n, "failed", "no candidate xmin gave a finite fit")
    i = int(cand[best])
    m = n - i
    a = float(alphas[best])
    return PowerLawFit(
        alpha=a,
        xmin=float(x[i]),
        xmax=float(x[-1]),
        D=float(best_D),
        n_tail=int(m),
        sigma=(a - 1.0) / np.sqrt(m),
        n=int(n),
        ks_landscape=(x[cand], Ds) if keep_landscape else None,
    )
