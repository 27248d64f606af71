"""Power-law fits of an ESD tail and their alternatives (numpy/scipy only).

* :mod:`~wwmonitor.fit.mle`: :func:`fit_powerlaw` (Clauset MLE, ``xmin`` by
  minimum KS distance, weightwatcher-identical) and its "fingers" fix;
* :mod:`~wwmonitor.fit.scan`: the fast, exactly pruned minimum-KS scan;
* :mod:`~wwmonitor.fit.small_n`: weightwatcher's small-n estimator (< 20 eigenvalues);
* :mod:`~wwmonitor.fit.truncated`: the truncated power law (:func:`fit_truncated_powerlaw`);
* :mod:`~wwmonitor.fit.alternatives`: MLE lognormal / exponential / stretched exponential;
* :mod:`~wwmonitor.fit.compare`: likelihood-ratio tests (:func:`compare_distributions`);
* :mod:`~wwmonitor.fit.rank`: power-law rank selection (:func:`powerlaw_rank`).

See ``docs/metrics.md`` ("Power-law fit") for the formulas and conventions.
"""

from __future__ import annotations

from ._common import EVALS_THRESH
from .compare import LikelihoodRatio, compare_distributions
from .mle import FEW_TAIL_POINTS, FINGER_MIN_ALPHA, FINGER_THRESH, PowerLawFit, fit_powerlaw
from .rank import PowerLawRank, powerlaw_rank
from .small_n import SMALL_N_CUTOFF, SMALL_N_MIN_TAIL
from .truncated import TPLFit, fit_truncated_powerlaw

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
    "SMALL_N_MIN_TAIL",
    "FINGER_THRESH",
    "FINGER_MIN_ALPHA",
    "FEW_TAIL_POINTS",
]
