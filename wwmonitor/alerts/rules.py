"""The alert rules, one small object each (see :mod:`wwmonitor.alerts` for what they mean).

Evaluation order (and so the order of alerts within a layer) is :data:`RULE_TYPES`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import numpy as np

from ..metrics import LayerMetrics
from .base import Firing, LayerContext, LayerState, Rule
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


def _opt_float(v: Any) -> Optional[float]:
    return None if v is None else float(v)


def _opt_str(v: Any) -> Optional[str]:
    return None if v is None else str(v)


def _finite(v: Any) -> Optional[float]:
    """``float(v)`` if it is a finite number, else ``None``."""
    if v is None:
        return None
    x = float(v)
    return x if math.isfinite(x) else None


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


class RankCollapse(Rule):
    """Collapsed fraction ``>= collapse_fraction`` (or an all-zero matrix); clears below half of it.

    Keyed on eigenvalues that are numerically zero (``σ < collapse_tol·σ_max``)
    and the rank loss, not on the phase label: one snapshot's "rank-collapse"
    phase can also mean a few very large spikes over an intact bulk (see
    docs/phases.md), which is healthy learning.  A bulk being squeezed toward
    zero over training is the ``over_regularization`` rule's, which compares
    the layer with its own history.
    """

    id, severity = "rank_collapse", "warning"

    def __init__(self, collapse_tol: float, collapse_fraction: float) -> None:
        self.collapse_tol = collapse_tol
        self.collapse_fraction = collapse_fraction

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        lm = ctx.lm
        frac = collapsed_fraction(lm, ctx.esd, self.collapse_tol)
        is_phase = lm.status == "zero_matrix"
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


class OverRegularization(Rule):
    """The bulk is squeezed toward zero: the layer's spectrum shrinks onto a few directions while it loses norm.

    Against the layer's own reference -- the largest value over its first
    ``ref_snapshots`` analysed snapshots, kept in the per-layer state -- three
    ratios are formed:

    * ``r_sr = stable_rank / stable_rank_ref`` (``stable_rank = Σλ/λ_max``);
    * ``r_soft = mp_softrank / mp_softrank_ref`` (``mp_softrank = λ+/λ_max``);
    * ``r_norm = Σλ / Σλ_ref = ||W||_F² / ||W||_F²_ref`` (from ``log_norm``).

    The condition is ``r_sr < sr_ratio and r_soft < softrank_ratio and
    r_norm < norm_ratio`` (a ratio whose metric is missing, e.g. without an MP
    fit, is left out; ``r_sr`` is required).  It fires after ``patience``
    consecutive snapshots; the count resets and the alert clears once
    ``r_sr >= sr_ratio · (1 + hysteresis)``.  Layers with too few eigenvalues
    for the analysis (status ``too_few_evals``) or no spectrum are skipped.
    See ``docs/alerts.md`` for why these signals and thresholds.
    """

    id, severity = "over_regularization", "warning"
    state = {
        "overreg_ref_count": (0, int),
        "overreg_sr_ref": (None, _opt_float),
        "overreg_softrank_ref": (None, _opt_float),
        "overreg_log_norm_ref": (None, _opt_float),
        "overreg_count": (0, int),
    }
    #: statuses without a usable spectrum for this rule
    _SKIP = ("too_few_evals", "zero_matrix", "non_finite")

    def __init__(
        self,
        sr_ratio: float,
        softrank_ratio: float,
        norm_ratio: float,
        ref_snapshots: int,
        patience: int,
        hysteresis: float,
    ) -> None:
        self.sr_ratio = sr_ratio
        self.softrank_ratio = softrank_ratio
        self.norm_ratio = norm_ratio
        self.ref_snapshots = ref_snapshots
        self.patience = patience
        self.hysteresis = hysteresis

    @staticmethod
    def _max(old: Optional[float], new: Optional[float]) -> Optional[float]:
        if new is None:
            return old
        return new if old is None else max(old, new)

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        lm, f = ctx.lm, st.fields
        sr = _finite(lm.stable_rank)
        if lm.status in self._SKIP or sr is None or sr <= 0:
            return None
        soft = _finite(lm.mp_softrank)
        log_norm = _finite(lm.log_norm)
        if f["overreg_sr_ref"] is None or f["overreg_ref_count"] < self.ref_snapshots:
            f["overreg_ref_count"] += 1
            f["overreg_sr_ref"] = self._max(f["overreg_sr_ref"], sr)
            f["overreg_softrank_ref"] = self._max(f["overreg_softrank_ref"], soft if soft and soft > 0 else None)
            f["overreg_log_norm_ref"] = self._max(f["overreg_log_norm_ref"], log_norm)
            return None
        r_sr = sr / f["overreg_sr_ref"]
        soft_ref, norm_ref = f["overreg_softrank_ref"], f["overreg_log_norm_ref"]
        r_soft = soft / soft_ref if soft is not None and soft_ref else None
        r_norm = (
            10.0 ** max(min(log_norm - norm_ref, 300.0), -300.0)
            if log_norm is not None and norm_ref is not None
            else None
        )
        low = (
            r_sr < self.sr_ratio
            and (r_soft is None or r_soft < self.softrank_ratio)
            and (r_norm is None or r_norm < self.norm_ratio)
        )
        back = r_sr >= self.sr_ratio * (1.0 + self.hysteresis)
        if low:
            f["overreg_count"] += 1
        elif back:
            f["overreg_count"] = 0
        if not st.edge(self.id, f["overreg_count"] >= self.patience, back):
            return None
        parts = [f"stable rank {sr:.3g} = {r_sr:.0%} of its early {f['overreg_sr_ref']:.3g}"]
        if r_soft is not None:
            parts.append(f"MP soft rank {soft:.3g} = {r_soft:.0%} of its early {soft_ref:.3g}")
        if r_norm is not None:
            parts.append(f"||W||_F^2 at {r_norm:.0%} of its early value")
        return Firing(
            f"{ctx.where}: bulk squeezed toward zero (over-regularisation) for {f['overreg_count']} snapshots: "
            + ", ".join(parts),
            r_sr,
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


#: how many standard errors (``sigma = (alpha - 1)/sqrt(n_tail)``) alpha must clear ``alpha_high`` by
ALPHA_HIGH_Z = 2.0


class AlphaHigh(Rule):
    """``alpha - 2·sigma > alpha_high`` once seen in ``warmup`` snapshots; clears at
    ``alpha <= alpha_high - hysteresis``.

    ``sigma`` is the fit's standard error ``(alpha - 1)/sqrt(n_tail)``: a layer
    whose tail has a handful of eigenvalues (a 64-wide input layer) gets
    alpha 8-17 from noise alone; it fires only when alpha is above the
    threshold by more than two standard errors (measured in the
    over-regularization panel: healthy MLP input layers false-alarmed
    without it).
    """

    id, severity = "alpha_high", "warning"

    def __init__(self, alpha_high: float, warmup: int, hysteresis: float) -> None:
        self.alpha_high = alpha_high
        self.warmup = warmup
        self.hysteresis = hysteresis

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        a = ctx.alpha
        sigma = ctx.lm.sigma if ctx.lm.sigma is not None else 0.0
        cond = st.seen > self.warmup and a is not None and a - ALPHA_HIGH_Z * sigma > self.alpha_high
        clear = a is not None and a <= self.alpha_high - self.hysteresis
        if not st.edge(self.id, cond, clear):
            return None
        return Firing(f"{ctx.where}: alpha {a:.2f} > {self.alpha_high:g} after warm-up (under-trained)", a)


class AlphaJump(Rule):
    """``|Δalpha| >= alpha_jump`` between consecutive snapshots after ``warmup``, both alphas
    ``<= alpha_high``; then quiet for ``cooldown``."""

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
            # only jumps within the trained range: a drop from an under-trained alpha (12 -> 4) is the layer
            # starting to learn, and a rise past alpha_high is alpha_high's to report
            and max(a, prev) <= self.alpha_high
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
