"""The alert rules, one small object each (see :mod:`wwmonitor.alerts` for what they mean).

Evaluation order (and so the order of alerts within a layer) is :data:`RULE_TYPES`.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

from ..metrics import LayerMetrics
from .base import Firing, LayerContext, LayerState, Rule
from .traps import correlation_traps

__all__ = [
    "RankCollapse", "AlphaLow", "AlphaHigh", "AlphaJump", "PhaseChange", "NonFinite", "CorrelationTrap",
    "RULE_TYPES", "collapsed_fraction",
]

log = logging.getLogger("wwmonitor.alerts")


def _opt_float(v: Any) -> Optional[float]:
    return None if v is None else float(v)


def _opt_str(v: Any) -> Optional[str]:
    return None if v is None else str(v)


def collapsed_fraction(lm: LayerMetrics, esd: Optional[np.ndarray], collapse_tol: float) -> Optional[float]:
    """``max(#{σ_i < collapse_tol·σ_max}/M, rank_loss/M)`` or ``None`` if unknown.

    ``esd`` holds eigenvalues ``λ_i ∝ σ_i²``, so the test is ``λ_i < collapse_tol²·λ_max``.
    """
    fracs = []
    if esd is not None and np.size(esd):
        ev = np.asarray(esd, dtype=np.float64)
        top = float(ev.max())
        if top > 0:
            fracs.append(float(np.count_nonzero(ev < (collapse_tol**2) * top)) / ev.size)
        else:
            fracs.append(1.0)
    if lm.rank_loss is not None and lm.M:
        fracs.append(lm.rank_loss / lm.M)
    return max(fracs) if fracs else None


class NonFinite(Rule):
    """Weights contain NaN/Inf (``status == "non_finite"``); clears when they are finite again."""

    id, severity, on_non_finite = "non_finite", "error", True

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        bad = ctx.lm.status == "non_finite"
        if st.edge(self.id, bad, not bad):
            return Firing(f"{ctx.where}: weights contain NaN/Inf")
        return None


class RankCollapse(Rule):
    """Collapsed fraction ``>= collapse_fraction`` or phase rank-collapse; clears below half of it."""

    id, severity = "rank_collapse", "warning"

    def __init__(self, collapse_tol: float, collapse_fraction: float) -> None:
        self.collapse_tol = collapse_tol
        self.collapse_fraction = collapse_fraction

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        lm = ctx.lm
        frac = collapsed_fraction(lm, ctx.esd, self.collapse_tol)
        is_phase = lm.phase == "rank-collapse" or lm.status == "zero_matrix"
        cond = is_phase or (frac is not None and frac >= self.collapse_fraction)
        clear = not is_phase and (frac is None or frac < self.collapse_fraction / 2)
        if not st.edge(self.id, cond, clear):
            return None
        pct = f"{frac:.0%}" if frac is not None else "n/a"
        return Firing(
            f"{ctx.where}: rank collapse onset, {pct} of eigenvalues numerically zero "
            f"(sigma < {self.collapse_tol:g} sigma_max); phase {lm.phase}",
            frac,
        )


class AlphaLow(Rule):
    """``alpha < alpha_low`` for ``patience`` snapshots; clears at ``alpha >= alpha_low + hysteresis``."""

    id, severity = "alpha_low", "warning"
    state = {"low_count": (0, int)}

    def __init__(self, alpha_low: float, patience: int, hysteresis: float) -> None:
        self.alpha_low = alpha_low
        self.patience = patience
        self.hysteresis = hysteresis

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        a, f = ctx.alpha, st.fields
        back = a is None or a >= self.alpha_low + self.hysteresis
        if a is not None and a < self.alpha_low:
            f["low_count"] += 1
        elif back:
            f["low_count"] = 0
        if not st.edge(self.id, f["low_count"] >= self.patience, back):
            return None
        return Firing(
            f"{ctx.where}: alpha {a:.2f} < {self.alpha_low:g} for {f['low_count']} snapshots "
            "(over-trained / over-regularised)",
            a,
        )


class AlphaHigh(Rule):
    """``alpha > alpha_high`` once seen in ``warmup`` snapshots; clears at ``alpha <= alpha_high - hysteresis``."""

    id, severity = "alpha_high", "warning"

    def __init__(self, alpha_high: float, warmup: int, hysteresis: float) -> None:
        self.alpha_high = alpha_high
        self.warmup = warmup
        self.hysteresis = hysteresis

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        a = ctx.alpha
        cond = st.seen > self.warmup and a is not None and a > self.alpha_high
        clear = a is not None and a <= self.alpha_high - self.hysteresis
        if not st.edge(self.id, cond, clear):
            return None
        return Firing(f"{ctx.where}: alpha {a:.2f} > {self.alpha_high:g} after warm-up (under-trained)", a)


class AlphaJump(Rule):
    """``|Δalpha| >= alpha_jump`` between consecutive snapshots after ``warmup``; then quiet for ``cooldown``."""

    id, severity = "alpha_jump", "warning"
    state = {"prev_alpha": (None, _opt_float), "cooldown": (0, int)}

    def __init__(self, alpha_jump: float, warmup: int, cooldown: int, alpha_high: float) -> None:
        self.alpha_jump = alpha_jump
        self.warmup = warmup
        self.cooldown = cooldown
        self.alpha_high = alpha_high

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        a, f = ctx.alpha, st.fields
        prev, f["prev_alpha"] = f["prev_alpha"], a
        if f["cooldown"] > 0:
            f["cooldown"] -= 1
            return None
        if (
            st.seen > self.warmup
            and a is not None
            and prev is not None
            and abs(a - prev) >= self.alpha_jump
            and min(a, prev) <= self.alpha_high  # jumps between two under-trained alphas carry no signal
        ):
            f["cooldown"] = self.cooldown
            return Firing(f"{ctx.where}: alpha jumped {prev:.2f} -> {a:.2f}", a - prev)
        return None


class PhaseChange(Rule):
    """The phase differs from the last confirmed one for ``patience`` snapshots (an event, severity info)."""

    id, severity = "phase_change", "info"
    state = {"phase": (None, _opt_str), "cand_phase": (None, _opt_str), "cand_count": (0, int)}

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        lm, f = ctx.lm, st.fields
        if not lm.phase:
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
    """``>= trap_threshold`` correlation traps; reads ``lm.extra["num_traps"]`` written by :meth:`inspect`."""

    id, severity, needs_weights = "correlation_trap", "warning", True

    def __init__(self, trap_threshold: int) -> None:
        self.trap_threshold = trap_threshold
        self._told = False

    def inspect(self, name: str, W: np.ndarray, lm: LayerMetrics) -> None:
        if lm.status == "ok":
            lm.extra["num_traps"] = correlation_traps(W, name=name)["num_traps"]

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        n = ctx.lm.extra.get("num_traps")
        if n is None:
            if ctx.lm.status == "ok" and not self._told:  # a wiring bug upstream: say so, once
                self._told = True
                log.warning("alert rule correlation_trap: %s has no trap count; the analyser must call "
                            "AlertRules.inspect_weights() on every matrix when AlertRules.needs_weights is True",
                            ctx.where)
            return None
        cond = int(n) >= max(self.trap_threshold, 1)
        if not st.edge(self.id, cond, not cond):
            return None
        return Firing(f"{ctx.where}: {int(n)} correlation trap(s) survive element randomisation", n)


#: every rule type, in evaluation order
RULE_TYPES: tuple[type[Rule], ...] = (NonFinite, RankCollapse, AlphaLow, AlphaHigh, AlphaJump, PhaseChange,
                                      CorrelationTrap)
