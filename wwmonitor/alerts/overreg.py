"""The ``over_regularization`` rule: the bulk of a layer's spectrum is squeezed toward zero.

See ``docs/alerts.md`` ("The over_regularization rule") for why these signals and thresholds.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from .base import Firing, LayerContext, LayerState, Rule

__all__ = ["OverRegularization", "bulk_mass"]


def _opt_float(v: Any) -> Optional[float]:
    return None if v is None else float(v)


def _finite(v: Any) -> Optional[float]:
    if v is None:
        return None
    x = float(v)
    return x if math.isfinite(x) else None


def _ratio(log_now: Optional[float], log_ref: Optional[float]) -> Optional[float]:
    """``10^(log_now - log_ref)``, clipped to ``[1e-300, 1e300]``; ``None`` if either is missing."""
    if log_now is None or log_ref is None:
        return None
    return 10.0 ** max(min(log_now - log_ref, 300.0), -300.0)


def bulk_mass(log_norm: Optional[float], log_spectral_norm: Optional[float]) -> Optional[float]:
    """``log10(Σλ - λ_max)`` on the σ² axis: the squared Frobenius norm outside the top direction.

    ``None`` when a norm is missing or the matrix has (numerically) one direction only.  Computed in log
    space as ``log_norm + log10(1 - 10^(log_spectral_norm - log_norm))`` so that extreme scales do not
    overflow.
    """
    if log_norm is None or log_spectral_norm is None:
        return None
    share = 1.0 - 10.0 ** min(log_spectral_norm - log_norm, 0.0)  # 1 - λ_max/Σλ
    if share <= 1e-12:
        return None
    return log_norm + math.log10(share)


class OverRegularization(Rule):
    """The bulk is squeezed toward zero: the spectrum shrinks onto a few directions while the rest loses mass.

    Each snapshot from the layer's second one on is compared with references from the layer's own history,
    kept in the per-layer state:

    * ``r_sr = stable_rank / sr_ref``, ``sr_ref`` the largest stable rank (``Σλ/λ_max``) of the layer's first
      ``ref_snapshots`` snapshots *before* this one;
    * ``r_soft = mp_softrank / soft_ref`` likewise (``mp_softrank = λ+/λ_max``);
    * ``r_bulk = (Σλ - λ_max) / (Σλ - λ_max)_0``: the mass outside the top direction against the layer's
      *first* snapshot (its initial state when monitoring starts with training).  A growth transient
      (the norm growing 5x and settling at 77% of its peak) cannot lower it, and learning -- a few
      directions growing over an intact bulk -- keeps it near or above 1.

    * ``r_norm = ||W||_F² / ||W||_F²_0`` against the first snapshot.

    Condition (*squeezed*): ``r_sr < sr_ratio and r_bulk < bulk_ratio and (r_soft < softrank_ratio or no MP
    fit)``, or (*vanishing*) ``r_norm < vanish_ratio``: weight decay wins over the gradient and the whole layer
    decays toward zero, keeping its (random) shape, so that its ranks do not move.  Either for ``patience``
    consecutive snapshots.  The count resets and the alert clears once
    ``r_sr >= sr_ratio·(1 + hysteresis)``.  Minimum layer: ``min_evals`` eigenvalues with status ``ok``
    (or ``fit_failed``) and a stable rank; smaller layers, or layers without a spectrum, are skipped.
    """

    id, severity = "over_regularization", "warning"
    state = {
        "overreg_ref_count": (0, int),
        "overreg_sr_ref": (None, _opt_float),
        "overreg_softrank_ref": (None, _opt_float),
        "overreg_log_bulk_ref": (None, _opt_float),
        "overreg_log_norm_first": (None, _opt_float),
        "overreg_count": (0, int),
    }
    #: statuses without a usable spectrum for this rule
    _SKIP = ("too_few_evals", "zero_matrix", "non_finite")

    def __init__(
        self,
        sr_ratio: float,
        softrank_ratio: float,
        bulk_ratio: float,
        ref_snapshots: int,
        patience: int,
        hysteresis: float,
        min_evals: int,
        vanish_ratio: float,
    ) -> None:
        self.sr_ratio = sr_ratio
        self.softrank_ratio = softrank_ratio
        self.bulk_ratio = bulk_ratio
        self.ref_snapshots = ref_snapshots
        self.patience = patience
        self.hysteresis = hysteresis
        self.min_evals = min_evals
        self.vanish_ratio = vanish_ratio

    @staticmethod
    def _max(old: Optional[float], new: Optional[float]) -> Optional[float]:
        if new is None:
            return old
        return new if old is None else max(old, new)

    def _update_refs(
        self, f: dict[str, Any], sr: float, soft: Optional[float], log_bulk: Optional[float], log_norm: Optional[float]
    ) -> None:
        if f["overreg_ref_count"] == 0:
            f["overreg_log_bulk_ref"] = log_bulk
            f["overreg_log_norm_first"] = log_norm
        if f["overreg_ref_count"] < self.ref_snapshots:
            f["overreg_ref_count"] += 1
            f["overreg_sr_ref"] = self._max(f["overreg_sr_ref"], sr)
            f["overreg_softrank_ref"] = self._max(f["overreg_softrank_ref"], soft if soft and soft > 0 else None)

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        lm, f = ctx.lm, st.fields
        sr = _finite(lm.stable_rank)
        n = int(lm.num_evals or lm.M or 0)
        if lm.status in self._SKIP or sr is None or sr <= 0 or n < self.min_evals:
            return None
        soft = _finite(lm.mp_softrank)
        log_norm = _finite(lm.log_norm)
        log_bulk = bulk_mass(log_norm, _finite(lm.log_spectral_norm))
        if f["overreg_sr_ref"] is None:
            self._update_refs(f, sr, soft, log_bulk, log_norm)
            return None
        sr_ref, soft_ref, bulk_ref = f["overreg_sr_ref"], f["overreg_softrank_ref"], f["overreg_log_bulk_ref"]
        norm_first = f["overreg_log_norm_first"]
        self._update_refs(f, sr, soft, log_bulk, log_norm)
        r_sr = sr / sr_ref
        r_soft = soft / soft_ref if soft is not None and soft_ref else None
        if log_bulk is None:  # one direction carries all the mass: the bulk is gone
            r_bulk: Optional[float] = 0.0 if bulk_ref is not None else None
        else:
            r_bulk = _ratio(log_bulk, bulk_ref)
        squeezed = (
            r_sr < self.sr_ratio
            and (r_soft is None or r_soft < self.softrank_ratio)
            and (r_bulk is None or r_bulk < self.bulk_ratio)
        )
        r_norm = _ratio(log_norm, norm_first)
        vanishing = r_norm is not None and r_norm < self.vanish_ratio
        low = squeezed or vanishing
        back = r_sr >= self.sr_ratio * (1.0 + self.hysteresis) and not vanishing
        if low:
            f["overreg_count"] += 1
        elif back:
            f["overreg_count"] = 0
        if not st.edge(self.id, f["overreg_count"] >= self.patience, back):
            return None
        parts = [f"stable rank {sr:.3g} = {r_sr:.0%} of its early {sr_ref:.3g}"]
        if r_soft is not None:
            parts.append(f"MP soft rank {soft:.3g} = {r_soft:.0%} of its early {soft_ref:.3g}")
        if r_bulk is not None:
            parts.append(f"mass outside the top direction at {r_bulk:.0%} of its first value")
        if vanishing:
            parts.append(f"||W||_F^2 at {r_norm:.2g} of its first value (the layer decays toward zero)")
        return Firing(
            f"{ctx.where}: bulk squeezed toward zero (over-regularisation) for {f['overreg_count']} snapshots: "
            + ", ".join(parts),
            r_sr,
        )
