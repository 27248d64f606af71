"""Log-likelihood-ratio tests of a power-law tail against alternative distributions.

For each alternative ``q`` (truncated power law, lognormal, exponential,
stretched exponential) fitted by maximum likelihood to the same tail::

    l_i = ln p_PL(x_i) - ln q(x_i),  R = Σ l_i,  var = mean((l - mean l)²)

Vuong's test for non-nested alternatives (Clauset et al. 2009, §5.1) and
Wilks' ``χ²₁`` for the nested truncated power law.  See ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import numpy as np

from ._common import _tail
from .alternatives import _fit_alternatives
from .mle import PowerLawFit, fit_powerlaw
from .truncated import _tpl_logpdf_y, fit_truncated_powerlaw


class LikelihoodRatio(NamedTuple):
    """``R``: normalised log-likelihood ratio ``Σ(ln p_PL - ln p_alt) / sqrt(n · var)``
    (positive favours the power law); ``p``: significance of its sign."""

    R: float
    p: float


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
