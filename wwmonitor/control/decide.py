"""From one analysed snapshot to one factor per controlled layer (pure; no torch, no monitor).

Steps, in the references' order: each layer's alpha (``"median"``: the median-xmin fit the analysis
stores as the extra metric ``alpha_median``; ``"clauset"``: the monitor's own ``alpha``); the first and
last layer (in the monitor's order) are left out when ``keep_ends``; so are layers with fewer than
``min_evals`` eigenvalues (the references' ``eigs_thresh = 50``) and layers whose alpha is not
determined (a skipped layer, a failed fit); the assignment function maps the remaining alphas to
factors; every layer left out keeps the factor 1.0 (the base value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

__all__ = ["ALPHAS", "Decision", "decide"]

#: which alpha a controller uses
ALPHAS = ("median", "clauset")


@dataclass(frozen=True)
class Decision:
    """One factor per controlled layer, from the snapshot at ``source_step`` (``alphas``: NaN = undetermined)."""

    source_step: int
    alphas: tuple[float, ...]
    factors: tuple[float, ...]


def _matrix_alpha(lm: Any, alpha: str) -> float:
    v = lm.extra.get("alpha_median") if alpha == "median" else lm.alpha
    try:
        f = float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def layer_alphas(result: Any, matrices: Sequence[Sequence[str]], alpha: str) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: the mean alpha of its matrices (NaN if any is undetermined or missing) and the
    smallest eigenvalue count among them (0 if missing)."""
    by_name = {lm.name: lm for lm in result.layers}
    alphas = np.full(len(matrices), math.nan)
    evals = np.zeros(len(matrices), dtype=np.int64)
    for i, names in enumerate(matrices):
        found = [by_name.get(n) for n in names]
        lms = [lm for lm in found if lm is not None]
        if not names or len(lms) != len(found):
            continue
        vals = [_matrix_alpha(lm, alpha) for lm in lms]
        alphas[i] = float(np.mean(vals))  # NaN when any is NaN
        evals[i] = min(int(lm.num_evals or 0) for lm in lms)
    return alphas, evals


def decide(
    result: Any,
    matrices: Sequence[Sequence[str]],
    assign: Callable[[np.ndarray], np.ndarray],
    *,
    alpha: str = "median",
    keep_ends: bool = True,
    min_evals: int = 50,
) -> Decision:
    """The factors of every layer (``matrices[i]``: the monitor's matrix names of layer ``i``, in the
    monitor's order) from ``result`` (a :class:`~wwmonitor.records.SnapshotResult`)."""
    alphas, evals = layer_alphas(result, matrices, alpha)
    n = len(matrices)
    take = np.isfinite(alphas) & (evals >= int(min_evals))
    if keep_ends and n:
        take[0] = False
        take[n - 1] = False
    factors = np.ones(n)
    if take.any():
        factors[take] = assign(alphas[take])
    return Decision(int(result.step), tuple(float(a) for a in alphas), tuple(float(f) for f in factors))


def check_alpha(alpha: str) -> str:
    if alpha not in ALPHAS:
        raise ValueError(f"alpha must be one of {ALPHAS}, got {alpha!r}")
    return alpha


def optional_alpha(a: float) -> Optional[float]:
    """A finite alpha, or ``None`` (for records)."""
    return a if math.isfinite(a) else None
