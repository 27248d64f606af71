"""Maximum-likelihood fits of the alternatives to a power-law tail (in ``y = x/xmin >= 1``).

* exponential ``p(y) = t e^(-t (y-1))``;
* lognormal truncated at 1, ``p(y) = φ((ln y - μ)/s) / (y s Φ(μ/s))``;
* stretched exponential (Weibull) truncated at 1,
  ``p(y) = b t^b y^(b-1) exp(t^b - (t y)^b)``.

Used by :func:`wwmonitor.fit.compare.compare_distributions`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np


def _mle(nll: Callable[[np.ndarray], float], starts: list[np.ndarray]) -> np.ndarray:
    """Minimise ``nll`` with Nelder-Mead from several starts; the best end point wins.

    Stops on the function value (``fatol=1e-9``) only: for a pure power-law
    tail the lognormal and stretched-exponential MLEs run off to a boundary
    (``μ → -∞``, ``b → 0``, where they approach a power law), so their
    parameters never converge although the likelihood does.
    """
    from scipy import optimize

    best: Any = None  # scipy's OptimizeResult
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for x0 in starts:
            r = optimize.minimize(nll, x0, method="Nelder-Mead", options={"xatol": 1e12, "fatol": 1e-9, "maxiter": 800})
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
    out["lognormal"] = ln_ll(
        _mle(
            ln_nll,
            [np.array([m0, math.log(s0)]), np.array([0.0, math.log(s0)]), np.array([-2.0 * s0 * s0, math.log(2 * s0)])],
        )
    )

    def se_ll(p: np.ndarray) -> np.ndarray:
        lt, b = float(p[0]), math.exp(float(p[1]))
        with np.errstate(over="ignore", invalid="ignore"):
            return math.log(b) + b * lt + (b - 1.0) * ly + math.exp(b * lt) - np.exp(b * (lt + ly))

    def se_nll(p: np.ndarray) -> float:
        v = -float(np.sum(se_ll(p)))
        return v if math.isfinite(v) else 1e300

    starts = []
    for b0 in (0.2, 0.5, 1.0):
        lt0 = -math.log(max(float(np.mean(y**b0)) ** (1.0 / b0), 1e-300))
        starts.append(np.array([lt0, math.log(b0)]))
    out["stretched_exponential"] = se_ll(_mle(se_nll, starts))
    return out
