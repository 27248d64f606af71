"""The controllers' formulas: pure NumPy, float64, no framework.

Sources (read for the facts, written here in our own words; see docs/controllers.md):

* TempBalance -- Zhou et al., "Temperature Balancing, Layer-wise Weight Analysis, and Neural Network
  Training", NeurIPS 2023; repository ``YefanZhou/TempBalance`` (``tempbalance.py``).
* AlphaDecay -- He et al., "AlphaDecay: Module-wise Weight Decay for Heavy-Tailed Balancing in LLMs",
  2025, arXiv 2506.14562; repository ``hed-ucas/AlphaDecay`` (``WeightDecayUnbalance.py``,
  ``torchrun_main.py``).

Every function returns *factors*: the multiplier of the base value (learning rate or weight decay)
of each layer, in the order of the ``alphas`` given.  A NaN alpha (a layer whose alpha is not
determined) gets the factor 1.0 and takes no part in the minimum, maximum, sum or ranks of the others.
Which layers take part (first/last layer, too few eigenvalues) is the controller's business.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np

from ..fit.median import median_xmin_alpha

__all__ = [
    "ASSIGNMENTS",
    "ALPHADECAY_RANGE",
    "TEMPBALANCE_RANGE",
    "median_xmin_alpha",
    "conv_eigenvalues",
    "tempbalance_factors",
    "alphadecay_factors",
]

#: TempBalance's assignment functions (the reference's ``tb_linear_map``, ``tb_sqrt``, ``tb_log2``, ``tb_step``)
ASSIGNMENTS = ("linear", "sqrt", "log2", "step")
#: TempBalance's default ``[lr_min_ratio, lr_max_ratio]``
TEMPBALANCE_RANGE = (0.5, 1.5)
#: AlphaDecay's default ``[wd_min_ratio, wd_max_ratio]`` (``torchrun_main.py`` argument defaults)
ALPHADECAY_RANGE = (0.666, 3.0)


def conv_eigenvalues(W: np.ndarray, conv_norm: float = 0.5) -> np.ndarray:
    """The reference's ESD of a convolution weight ``(out, in, *kernel)``, ascending, float64.

    The kernel positions are flattened to ``K = prod(kernel)``; each ``out x in`` slice is multiplied by
    ``sqrt(conv_norm)`` and its squared singular values are pooled: ``K * min(out, in)`` eigenvalues of
    ``conv_norm * W_kᵀ W_k``.  (The monitor pools the same slices; it divides by ``max(out, in)``
    instead -- a scale, which no alpha depends on.)
    """
    a = np.asarray(W, dtype=np.float64)
    if a.ndim < 3:
        raise ValueError(f"conv_eigenvalues: expected a weight (out, in, *kernel), got shape {a.shape}")
    if not conv_norm > 0:
        raise ValueError(f"conv_eigenvalues: conv_norm must be > 0, got {conv_norm!r}")
    slices = a.reshape(a.shape[0], a.shape[1], -1).transpose(2, 0, 1) * math.sqrt(conv_norm)
    sv = np.linalg.svd(slices, compute_uv=False)
    return np.sort(np.square(sv).ravel())


def _check_range(value_range: Sequence[float], what: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in value_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
        raise ValueError(f"{what} must be (low, high) with 0 <= low <= high, got {tuple(value_range)!r}")
    return lo, hi


def _linear(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``[min a, max a] -> [lo, hi]``, linear; all equal: 1.0 (no layer stands out, all keep the base)."""
    amin, amax = float(a.min()), float(a.max())
    if amax == amin:
        return np.ones_like(a)
    return lo + (hi - lo) * (a - amin) / (amax - amin)


def _share(v: np.ndarray) -> np.ndarray:
    """``n · v_i / Σ v`` (mean 1); 1.0 everywhere when the sum is not positive."""
    total = float(v.sum())
    return v * (v.size / total) if total > 0 else np.ones_like(v)


def _step(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """By rank: the ``r``-th smallest alpha (from 0) gets ``lo + (hi - lo) · r / n`` (ties: first listed first)."""
    n = a.size
    out = np.empty(n)
    out[np.argsort(a, kind="stable")] = lo + (hi - lo) * np.arange(n) / n
    return out


def tempbalance_factors(
    alphas: Union[Sequence[float], np.ndarray],
    *,
    assignment: str = "linear",
    lr_range: Sequence[float] = TEMPBALANCE_RANGE,
) -> np.ndarray:
    """Learning-rate factors from the layers' alphas (TempBalance): a larger alpha gets a larger rate.

    With ``a`` the determined alphas, ``n`` their number and ``[lo, hi] = lr_range``:

    * ``"linear"`` (default): ``lo + (hi - lo) · (a - min a) / (max a - min a)``; all equal: 1;
    * ``"sqrt"``: ``n · sqrt(a) / Σ sqrt(a)``;
    * ``"log2"``: ``n · log2(a) / Σ log2(a)`` (alphas <= 1 are undetermined here: factor 1);
    * ``"step"``: the ``r``-th smallest alpha (``r = 0..n-1``) gets ``lo + (hi - lo) · r / n``.

    ``sqrt`` and ``log2`` do not use ``lr_range`` (as in the reference).
    """
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
    lo, hi = _check_range(lr_range, "lr_range")
    a = np.asarray(alphas, dtype=np.float64).ravel()
    ok = np.isfinite(a)
    if assignment in ("sqrt", "log2"):
        ok &= a > (1.0 if assignment == "log2" else 0.0)
    out = np.ones_like(a)
    if not ok.any():
        return out
    v = a[ok]
    if assignment == "linear":
        out[ok] = _linear(v, lo, hi)
    elif assignment == "sqrt":
        out[ok] = _share(np.sqrt(v))
    elif assignment == "log2":
        out[ok] = _share(np.log2(v))
    else:
        out[ok] = _step(v, lo, hi)
    return out


def alphadecay_factors(
    alphas: Union[Sequence[float], np.ndarray], *, wd_range: Sequence[float] = ALPHADECAY_RANGE
) -> np.ndarray:
    """Weight-decay factors from the modules' alphas (AlphaDecay): a heavier tail (smaller alpha) decays less.

    ``lo + (hi - lo) · (a - min a) / (max a - min a)`` with ``[lo, hi] = wd_range`` (the AlphaDecay
    repository's ``tb_linear_map`` with ``alpha_positively_with_WD``: the module with the smallest alpha
    gets ``lo`` times the base weight decay, the largest ``hi`` times); all equal: 1.
    """
    lo, hi = _check_range(wd_range, "wd_range")
    a = np.asarray(alphas, dtype=np.float64).ravel()
    ok = np.isfinite(a)
    out = np.ones_like(a)
    if ok.any():
        out[ok] = _linear(a[ok], lo, hi)
    return out
