"""The rules that read the power-law exponent alpha: ``alpha_low``, ``alpha_high`` and ``alpha_jump``.

Every one of them reads alpha together with its standard error and says nothing on a layer too small for a
trustworthy fit.  The standard error is the fit's ``sigma = (alpha - 1)/sqrt(n_tail)`` (``n_tail`` the
eigenvalues in the fitted tail, ``lm.num_pl_spikes``); it is the asymptotic error of the maximum-likelihood
estimate, and it understates the error of a tail of a handful of points, so each rule also needs a minimum
number of eigenvalues ``n = lm.num_evals`` and a minimum tail.  A layer below a rule's minimum is skipped by
that rule (no alert, no state change).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from .base import Firing, LayerContext, LayerState, Rule

__all__ = ["AlphaLow", "AlphaHigh", "AlphaJump", "AlphaFit", "alpha_fit", "ALPHA_Z", "JUMP_Z"]

#: standard errors by which alpha must be past ``alpha_low`` / ``alpha_high`` (``alpha ± ALPHA_Z·sigma``)
ALPHA_Z = 2.0
#: standard errors of the difference by which a jump must exceed zero (``|Δ| >= JUMP_Z·sqrt(σ1² + σ2²)``)
JUMP_Z = 3.0


class AlphaFit:
    """A layer's alpha with its standard error and the sizes behind it."""

    __slots__ = ("alpha", "sigma", "n", "n_tail")

    def __init__(self, alpha: float, sigma: float, n: int, n_tail: int) -> None:
        self.alpha, self.sigma, self.n, self.n_tail = alpha, sigma, n, n_tail


def _num(v: Any) -> Optional[float]:
    if v is None:
        return None
    x = float(v)
    return x if math.isfinite(x) else None


def alpha_fit(ctx: LayerContext, min_evals: int, min_tail: int) -> Optional[AlphaFit]:
    """The layer's alpha fit if it is usable by a rule with these minimums, else ``None``.

    Usable: a finite alpha; ``n = lm.num_evals >= min_evals`` (``lm.M`` for records built without
    ``num_evals``); a tail of ``n_tail = lm.num_pl_spikes >= min_tail`` eigenvalues; a phase other than
    ``"undetermined"`` (a layer the phase classifier finds too small for any label).  The standard error is
    ``lm.sigma``, else ``(alpha - 1)/sqrt(n_tail)``.  A record without a tail size (built by hand, not by the
    analysis) is usable only when ``min_tail <= 1``, with ``lm.sigma`` or 0.
    """
    lm = ctx.lm
    a = ctx.alpha
    if a is None or lm.phase == "undetermined":
        return None
    n = int(lm.num_evals or lm.M or 0)
    sigma = _num(lm.sigma)
    if lm.num_pl_spikes is None:  # a record built by hand: usable only by a rule that needs no tail
        if n < min_evals or min_tail > 1:
            return None
        return AlphaFit(a, abs(sigma or 0.0), n, 0)
    n_tail = int(lm.num_pl_spikes)
    if n < min_evals or n_tail < max(min_tail, 1):
        return None
    if sigma is None:
        sigma = abs(a - 1.0) / math.sqrt(n_tail)
    return AlphaFit(a, abs(sigma), n, n_tail)


class AlphaLow(Rule):
    """``alpha + ALPHA_Z·sigma < alpha_low`` for ``patience`` snapshots; clears at ``alpha >= alpha_low + hysteresis``.

    Minimum layer: ``min_evals`` eigenvalues and a tail of ``min_tail``.  A few learned spikes above a small
    bulk give the fit a tail of those few spikes and an alpha of 1.4-2.0 (issue 16: layers of about 64
    eigenvalues); that is a bulk with spikes, not a heavy tail.
    """

    id, severity = "alpha_low", "warning"
    state = {"low_count": (0, int)}

    def __init__(self, alpha_low: float, patience: int, hysteresis: float, min_evals: int, min_tail: int) -> None:
        self.alpha_low = alpha_low
        self.patience = patience
        self.hysteresis = hysteresis
        self.min_evals = min_evals
        self.min_tail = min_tail

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        fit, f = alpha_fit(ctx, self.min_evals, self.min_tail), st.fields
        back = fit is None or fit.alpha >= self.alpha_low + self.hysteresis
        if fit is not None and fit.alpha + ALPHA_Z * fit.sigma < self.alpha_low:
            f["low_count"] += 1
        elif back:
            f["low_count"] = 0
        if fit is None or not st.edge(self.id, f["low_count"] >= self.patience, back):
            return None
        return Firing(
            f"{ctx.where}: alpha {fit.alpha:.2f} ± {fit.sigma:.2f} < {self.alpha_low:g} for {f['low_count']} "
            f"snapshots (tail of {fit.n_tail} of {fit.n} eigenvalues; over-trained / over-regularised)",
            fit.alpha,
        )


class AlphaHigh(Rule):
    """``alpha - ALPHA_Z·sigma > alpha_high`` once seen in ``warmup`` snapshots; clears at
    ``alpha <= alpha_high - hysteresis``.

    A layer whose tail has a handful of eigenvalues (a 64-wide input layer) gets alpha 8-17 from noise alone;
    it fires only when alpha is above the threshold by more than two standard errors (measured in the
    over-regularization panel: healthy MLP input layers false-alarmed without it).  Minimum layer:
    ``min_evals`` eigenvalues and a tail of ``min_tail``.
    """

    id, severity = "alpha_high", "warning"

    def __init__(self, alpha_high: float, warmup: int, hysteresis: float, min_evals: int, min_tail: int) -> None:
        self.alpha_high = alpha_high
        self.warmup = warmup
        self.hysteresis = hysteresis
        self.min_evals = min_evals
        self.min_tail = min_tail

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        fit = alpha_fit(ctx, self.min_evals, self.min_tail)
        if fit is None:
            return None
        cond = st.seen > self.warmup and fit.alpha - ALPHA_Z * fit.sigma > self.alpha_high
        clear = fit.alpha <= self.alpha_high - self.hysteresis
        if not st.edge(self.id, cond, clear):
            return None
        return Firing(
            f"{ctx.where}: alpha {fit.alpha:.2f} ± {fit.sigma:.2f} > {self.alpha_high:g} after warm-up (under-trained)",
            fit.alpha,
        )


def _as_hist(v: Any) -> Optional[list[list[float]]]:
    return None if v is None else [[float(a), float(s)] for a, s in v]


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])


class AlphaJump(Rule):
    """A significant, lasting step in alpha inside the trained range ``[alpha_low, alpha_high]``.

    The reference is the median alpha (and the median standard error ``sigma_ref``) of the ``window`` usable
    snapshots before the previous one.  It fires when *both* the previous and the current alpha lie on the
    same side of the reference by ``|alpha - ref| >= max(alpha_jump, JUMP_Z·sqrt(sigma² + sigma_ref²))``, the
    previous one also that far from the snapshot just before it (a step, not a steady trend), with every alpha
    involved within ``[alpha_low, alpha_high]``, after ``warmup`` snapshots; then the layer is quiet for
    ``cooldown`` snapshots.  A single snapshot's fit flipping between two tail choices, a move out of the
    over-trained range (1.5 -> 3.1, issue 16), a drop from an under-trained alpha (12 -> 4: the layer
    starting to learn) or a steady descent of a learning layer (4.4, 3.9, 3.4, 2.9) are not jumps;
    ``alpha_low``/``alpha_high`` report the ranges outside.
    """

    id, severity = "alpha_jump", "warning"
    state = {"prev_alpha": (None, _num), "cooldown": (0, int), "alpha_hist": (None, _as_hist)}
    #: usable snapshots whose median is the reference
    window = 3

    def __init__(
        self,
        alpha_jump: float,
        warmup: int,
        cooldown: int,
        alpha_low: float,
        alpha_high: float,
        min_evals: int,
        min_tail: int,
    ) -> None:
        self.alpha_jump = alpha_jump
        self.warmup = warmup
        self.cooldown = cooldown
        self.alpha_low = alpha_low
        self.alpha_high = alpha_high
        self.min_evals = min_evals
        self.min_tail = min_tail

    def _significant(self, a: float, s: float, ref: float, s_ref: float) -> int:
        """+1 / -1: ``a`` is a significant step above / below ``ref``; 0: not."""
        d = a - ref
        if abs(d) >= max(self.alpha_jump, JUMP_Z * math.hypot(s, s_ref)):
            return 1 if d > 0 else -1
        return 0

    def check(self, ctx: LayerContext, st: LayerState) -> Optional[Firing]:
        f = st.fields
        f["prev_alpha"] = ctx.alpha
        fit = alpha_fit(ctx, self.min_evals, self.min_tail)
        if fit is None:
            return None
        hist = list(f["alpha_hist"] or [])
        f["alpha_hist"] = (hist + [[fit.alpha, fit.sigma]])[-(self.window + 1) :]
        if f["cooldown"] > 0:
            f["cooldown"] -= 1
            return None
        if st.seen <= self.warmup or len(hist) < self.window + 1:
            return None
        ref_part, (prev, s_prev) = hist[-(self.window + 1) : -1], hist[-1]
        ref = _median([a for a, _ in ref_part])
        s_ref = _median([s for _, s in ref_part])
        before, s_before = ref_part[-1]
        inside = all(self.alpha_low <= x <= self.alpha_high for x in [a for a, _ in ref_part] + [prev, fit.alpha])
        step = self._significant(fit.alpha, fit.sigma, ref, s_ref)
        if (
            not inside
            or step == 0
            or self._significant(prev, s_prev, ref, s_ref) != step
            or self._significant(prev, s_prev, before, s_before) != step  # a step, not a steady trend
        ):
            return None
        f["cooldown"] = self.cooldown
        return Firing(
            f"{ctx.where}: alpha jumped from {ref:.2f} ± {s_ref:.2f} to {prev:.2f}, then {fit.alpha:.2f} ± "
            f"{fit.sigma:.2f} (two snapshots, >= {JUMP_Z:g} standard errors)",
            fit.alpha - ref,
        )
