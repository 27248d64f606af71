"""The alert rules, one small object each (see :mod:`wwmonitor.alerts` for what they mean).

Evaluation order (and so the order of alerts within a layer) is :data:`RULE_TYPES`.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

from ..metrics import LayerMetrics
from .alpha import AlphaHigh, AlphaJump, AlphaLow
from .base import Firing, LayerContext, LayerState, Rule
from .overreg import OverRegularization
from .traps import correlation_traps

__all__ = [
    "RankCollapse",
    "OverRegularization",
    "AlphaLow",
    "AlphaHigh",
    "AlphaJump",
    "PhaseChange",
    "NonFinite",
    "CorrelationTrap",
    "RULE_TYPES",
    "collapsed_fraction",
]

log = logging.getLogger("wwmonitor.alerts")

#: the phase label of a layer too small for a reliable phase (ignored by the phase-based rules)
UNDETERMINED = "undetermined"


def _opt_str(v: Any) -> Optional[str]:
    return None if v is None else str(v)


def collapsed_fraction(lm: LayerMetrics, esd: Optional[np.ndarray], collapse_tol: float) -> Optional[float]:
    """``max(#{σ_i < collapse_tol·σ_max}/n, rank_loss/n)`` or ``None`` if unknown.

    ``esd`` holds eigenvalues ``λ_i ∝ σ_i²``, so the test is ``λ_i < collapse_tol²·λ_max``.
    ``n`` is the number of eigenvalues the count was taken over: the ESD's size,
    and for ``rank_loss`` ``lm.num_evals`` (``K·M`` for a pooled conv layer of
    ``K`` kernel positions, whose rank loss is counted over all ``K·M``
    eigenvalues; ``M`` for a plain matrix).
    """
    fracs = []
    if esd is not None and np.size(esd):
        ev = np.asarray(esd, dtype=np.float64)
        top = float(ev.max())
        if top > 0:
            fracs.append(float(np.count_nonzero(ev < (collapse_tol**2) * top)) / ev.size)
        else:
            fracs.append(1.0)
    if lm.rank_loss is not None:
        n = lm.num_evals or lm.M  # records built by hand may leave num_evals at 0
        if n:
            fracs.append(min(lm.rank_loss / n, 1.0))
    return max(fracs) if fracs else None


class NonFinite(Rule):
    """Weights contain NaN/Inf (``status == "non_finite"``); clears when they are finite again."""

    id, severity, on_non_finite = "non_finite", "error", True

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        bad = ctx.lm.status == "non_finite"
        if st.edge(self.id, bad, not bad):
            return Firing(f"{ctx.where}: weights contain NaN/Inf")
        return None


def _finite(v: Any) -> Optional[float]:
    if v is None:
        return None
    x = float(v)
    return x if np.isfinite(x) else None


class RankCollapse(Rule):
    """Onset of rank collapse: eigenvalues numerically zero, or the layer on one or two directions from the start.

    Fires when (a) the collapsed fraction ``f0 >= collapse_fraction`` (eigenvalues with ``σ < collapse_tol·σ_max``
    and the rank loss; see :func:`collapsed_fraction`), or all weights are zero; or (b) at one of the layer's
    first ``early`` snapshots, the layer is already concentrated: ``stable_rank <= sr_max`` and MP soft rank
    ``λ+/λ_max <= softrank_max``.  Clause (b) covers a collapse inside the first epoch (too large a learning rate
    or weight decay), before ``over_regularization`` has any history to compare with; later in training a layer
    may legitimately end near rank 1 (a query matrix whose input is one-dimensional), and a collapse from a
    healthy start is ``over_regularization``'s, which compares the layer with its own history.  Clears when
    ``f0 < collapse_fraction / 2`` and the layer is not concentrated.

    Keyed on the spectrum, not on the phase label: one snapshot's "rank-collapse" phase can also mean a few very
    large spikes over an intact bulk (see docs/phases.md), which is healthy learning.

    Minimum layer: ``min_evals`` eigenvalues (``lm.num_evals``, else ``lm.M``): below it one zero eigenvalue would
    already be 10% or more of the layer.
    """

    id, severity = "rank_collapse", "warning"

    def __init__(
        self,
        collapse_tol: float,
        collapse_fraction: float,
        min_evals: int,
        sr_max: float,
        softrank_max: float,
        early: int,
    ) -> None:
        self.collapse_tol = collapse_tol
        self.collapse_fraction = collapse_fraction
        self.min_evals = min_evals
        self.sr_max = sr_max
        self.softrank_max = softrank_max
        self.early = early

    def _concentrated(self, lm: LayerMetrics) -> bool:
        sr, soft = _finite(lm.stable_rank), _finite(lm.mp_softrank)
        return sr is not None and soft is not None and sr <= self.sr_max and soft <= self.softrank_max

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        lm = ctx.lm
        if int(lm.num_evals or lm.M or 0) < self.min_evals:
            return None
        frac = collapsed_fraction(lm, ctx.esd, self.collapse_tol)
        zero = lm.status == "zero_matrix"
        early = st.seen <= self.early and self._concentrated(lm)
        cond = zero or early or (frac is not None and frac >= self.collapse_fraction)
        clear = not zero and not self._concentrated(lm) and (frac is None or frac < self.collapse_fraction / 2)
        if not st.edge(self.id, cond, clear):
            return None
        pct = f"{frac:.0%}" if frac is not None else "n/a"
        if early and not zero and (frac is None or frac < self.collapse_fraction):
            return Firing(
                f"{ctx.where}: rank collapse within the first snapshots: stable rank {lm.stable_rank:.3g} <= "
                f"{self.sr_max:g} and MP soft rank {lm.mp_softrank:.2g} <= {self.softrank_max:g} at snapshot "
                f"{st.seen} of the layer ({pct} of eigenvalues numerically zero); phase {lm.phase}",
                frac,
            )
        return Firing(
            f"{ctx.where}: rank collapse onset, {pct} of eigenvalues numerically zero "
            f"(sigma < {self.collapse_tol:g} sigma_max); phase {lm.phase}",
            frac,
        )


class PhaseChange(Rule):
    """The phase differs from the last confirmed one for ``patience`` snapshots (an event, severity info).

    The label ``"undetermined"`` (a layer too small for a reliable phase) is no phase: it neither starts,
    confirms nor interrupts a change.  No other minimum layer size: the phase classifier decides.
    """

    id, severity = "phase_change", "info"
    state = {"phase": (None, _opt_str), "cand_phase": (None, _opt_str), "cand_count": (0, int)}

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        lm, f = ctx.lm, st.fields
        if not lm.phase or lm.phase == UNDETERMINED:
            return None
        if f["phase"] is None:
            f["phase"] = lm.phase
            return None
        if lm.phase == f["phase"]:
            f["cand_phase"], f["cand_count"] = None, 0
            return None
        if lm.phase == f["cand_phase"]:
            f["cand_count"] += 1
        else:
            f["cand_phase"], f["cand_count"] = lm.phase, 1
        if f["cand_count"] < self.patience:
            return None
        old = f["phase"]
        f["phase"], f["cand_phase"], f["cand_count"] = lm.phase, None, 0
        return Firing(f"{ctx.where}: phase {old} -> {lm.phase} ({lm.phase_reason})")


class CorrelationTrap(Rule):
    """``>= trap_threshold`` correlation traps; reads ``lm.num_traps`` written by :meth:`inspect`."""

    id, severity, needs_weights = "correlation_trap", "warning", True

    def __init__(self, trap_threshold: int) -> None:
        self.trap_threshold = trap_threshold
        self._told = False

    def inspect(self, name: str, W: np.ndarray, lm: LayerMetrics) -> None:
        if lm.status == "ok":
            lm.num_traps = correlation_traps(W, name=name)["num_traps"]

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        n = ctx.lm.num_traps
        if n is None:
            if ctx.lm.status == "ok" and not self._told:  # a wiring bug upstream: say so, once
                self._told = True
                log.warning(
                    "alert rule correlation_trap: %s has no trap count; the analyser must call "
                    "AlertRules.inspect_weights() on every matrix when AlertRules.needs_weights is True",
                    ctx.where,
                )
            return None
        cond = int(n) >= max(self.trap_threshold, 1)
        if not st.edge(self.id, cond, not cond):
            return None
        return Firing(f"{ctx.where}: {int(n)} correlation trap(s) survive element randomisation", n)


#: every rule type, in evaluation order
RULE_TYPES: tuple[type[Rule], ...] = (
    NonFinite,
    RankCollapse,
    OverRegularization,
    AlphaLow,
    AlphaHigh,
    AlphaJump,
    PhaseChange,
    CorrelationTrap,
)
