"""Compatibility module: the power-law fits now live in :mod:`wwmonitor.fit`.

``from wwmonitor.powerlaw import fit_powerlaw`` (and the other names below)
keeps working and returns the very same objects as :mod:`wwmonitor.fit`.
"""

from __future__ import annotations

from .fit import (
    EVALS_THRESH,
    FEW_TAIL_POINTS,  # noqa: F401 - re-exported for old imports, outside __all__
    FINGER_MIN_ALPHA,  # noqa: F401 - re-exported
    FINGER_THRESH,  # noqa: F401 - re-exported
    SMALL_N_CUTOFF,
    SMALL_N_MIN_TAIL,  # noqa: F401 - re-exported
    LikelihoodRatio,
    PowerLawFit,
    PowerLawRank,
    TPLFit,
    compare_distributions,
    fit_powerlaw,
    fit_truncated_powerlaw,
    powerlaw_rank,
)
from .fit.truncated import _tpl_log_norm  # noqa: F401 - imported by tests/test_powerlaw.py

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
