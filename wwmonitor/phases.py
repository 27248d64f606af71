"""The "5+1 phases" of training (Martin & Mahoney, arXiv:1810.01075).

Each ESD (λ axis, eigenvalues of ``X = WᵀW/N``) is assigned one of
:data:`PHASES` from the Marchenko-Pastur fit (:func:`wwmonitor.mp.fit_mp`)
and, when available, the power-law fit of the tail.  The operational criteria
are written out in ``docs/phases.md``.  Notation: ``n`` eigenvalues,
``edge = λ+ + TW`` (MP edge plus Tracy-Widom margin), ``n_spikes`` the
eigenvalues above ``edge``, split into the *shoulder* (``edge < λ <=
SPIKE_RATIO · λ+``, eigenmass bleeding out of the bulk) and the *far* spikes
(``λ > SPIKE_RATIO · λ+``); ``ratio = λ_max / λ+``.  Rules, first match wins:

1. ``rank-collapse``: at least ``COLLAPSE_FRAC`` (10%) of the eigenvalues
   are numerically zero (``λ <= 1e-8 λ_max``, or ``rank_loss / M``).
2. ``random-like``: ``n_spikes == 0`` -- the ESD ends at the MP edge.
3. *eigenmass above the edge*: ``n_spikes >= max(8, 4% n)`` or
   ``n_shoulder >= max(4, 2% n)``; then

   a. ``heavy-tailed`` if ``ratio >= HT_RATIO`` (3.5) and the power-law
      ``alpha < HT_ALPHA`` (4.5; not checked without a fit): no usable MP
      edge, ``λ_max ≫ λ+``;
   b. ``bulk-decay`` otherwise: a continuum of eigenvalues decays beyond the
      edge but stays within a few ``λ+``.
4. ``bulk+spikes``: a few spikes and ``ratio >= SPIKE_RATIO`` (1.9): well
   separated from the bulk.
5. ``bleeding-out``: a few spikes, all below ``SPIKE_RATIO · λ+``: just
   pulled out of the edge (BBP transition).

The thresholds were tuned on synthetic matrices from
:mod:`wwmonitor.synthetic` (generator seeds 1000-5000) and validated on
other seeds in ``tests/test_phases.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .mp import MPFit
from .powerlaw import PowerLawFit

__all__ = ["PHASES", "PhaseResult", "classify_phase", "phase_features"]

PHASES: tuple[str, ...] = (
    "random-like",
    "bleeding-out",
    "bulk+spikes",
    "bulk-decay",
    "heavy-tailed",
    "rank-collapse",
)

#: fraction of (numerically) zero eigenvalues that makes a rank collapse
COLLAPSE_FRAC = 0.10
#: λ_max / λ+ above which spikes are "well above" the bulk (bulk+spikes)
SPIKE_RATIO = 1.9
#: eigenmass above the edge (not a few isolated spikes): at least this many
#: eigenvalues above λ+ + TW, and this fraction of them ...
MASS_MIN_COUNT = 8
MASS_FRAC = 0.04
#: ... or this many (and this fraction) in the shoulder (λ+ + TW, SPIKE_RATIO·λ+]
SHOULDER_MIN_COUNT = 4
SHOULDER_FRAC = 0.02
#: heavy-tailed: the largest eigenvalue at least HT_RATIO · λ+ ...
HT_RATIO = 3.5
#: ... and (if a power law was fitted) alpha below this
HT_ALPHA = 4.5
#: reason strings say "bulk fits MP" when KS <= max(KS_GOOD_MIN, KS_GOOD_SCALE/sqrt(n_bulk))
KS_GOOD_MIN = 0.03
KS_GOOD_SCALE = 2.0
#: below this many eigenvalues the reason string warns that the phase is unreliable
MIN_EVALS = 20


@dataclass(frozen=True)
class PhaseResult:
    """Phase name (one of :data:`PHASES`) and a short human-readable reason."""

    phase: str
    reason: str


def classify_phase(
    evals: np.ndarray,
    *,
    N: int,
    M: int,
    mp: MPFit,
    pl: Optional[PowerLawFit],
    rank_loss: Optional[int] = None,
) -> PhaseResult:
    """Classify one ESD into the 5+1 phases.

    Parameters
    ----------
    evals:
        Eigenvalues on the λ axis (``X = WᵀW/N``), any order.
    N, M:
        Matrix dimensions (``N >= M``).
    mp:
        MP fit of the same eigenvalues.
    pl:
        Power-law fit (any axis: only ``alpha`` and ``n_tail`` are used), or
        ``None`` / a failed fit.
    rank_loss:
        ``M - matrix_rank`` if known (pooled slices: ignored if larger than
        the number of eigenvalues).
    """
    x = np.asarray(evals, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        raise ValueError("classify_phase: no eigenvalues given")
    if not np.isfinite(x).all():
        raise ValueError("classify_phase: eigenvalues contain NaN or Inf")
    lmax = float(x.max())
    if lmax <= 0:
        return PhaseResult("rank-collapse", "all eigenvalues are zero")

    zero_frac = mp.frac_at_zero
    if rank_loss is not None and M > 0 and n == M:
        zero_frac = max(zero_frac, rank_loss / M)
    if zero_frac >= COLLAPSE_FRAC:
        return PhaseResult(
            "rank-collapse",
            f"{zero_frac:.0%} of eigenvalues are (numerically) zero",
        )

    f = phase_features(x, mp, pl)
    ratio, ks, nsp = f["ratio"], mp.ks, mp.num_spikes
    alpha = pl.alpha if (pl is not None and pl.ok and math.isfinite(pl.alpha)) else None
    a_txt = f", alpha {alpha:.2f}" if alpha is not None else ""
    if not math.isfinite(ks):
        fit_txt = "too few eigenvalues for an MP fit"
    elif ks <= max(KS_GOOD_MIN, KS_GOOD_SCALE / math.sqrt(max(1.0, mp.bulk_fraction * n))):
        fit_txt = f"bulk fits MP (KS {ks:.2f})"
    else:
        fit_txt = f"bulk deviates from MP (KS {ks:.2f})"
    few = f"; only {n} eigenvalues, phase unreliable" if n < MIN_EVALS else ""
    s_ = "s" if nsp != 1 else ""

    if nsp == 0:
        return PhaseResult(
            "random-like",
            f"no eigenvalue above λ+ + TW, λ_max {ratio:.2f}× λ+, {fit_txt}{few}",
        )
    mass = nsp >= max(MASS_MIN_COUNT, MASS_FRAC * n) or f["n_shoulder"] >= max(SHOULDER_MIN_COUNT, SHOULDER_FRAC * n)
    if mass:
        if ratio >= HT_RATIO and (alpha is None or alpha < HT_ALPHA):
            return PhaseResult(
                "heavy-tailed",
                f"{nsp} eigenvalues ({nsp / n:.0%}) above λ+ + TW, λ_max {ratio:.1f}× λ+{a_txt}: "
                f"no clear MP edge, {fit_txt}{few}",
            )
        return PhaseResult(
            "bulk-decay",
            f"{nsp} eigenvalues ({nsp / n:.0%}) decay above λ+ + TW, λ_max {ratio:.1f}× λ+{a_txt}, {fit_txt}{few}",
        )
    if ratio >= SPIKE_RATIO:
        return PhaseResult(
            "bulk+spikes",
            f"{nsp} spike{s_} above λ+ + TW, largest {ratio:.1f}× λ+, {fit_txt}{few}",
        )
    return PhaseResult(
        "bleeding-out",
        f"{nsp} eigenvalue{s_} just above λ+ + TW, largest {ratio:.2f}× λ+, {fit_txt}{few}",
    )


def phase_features(evals: np.ndarray, mp: MPFit, pl: Optional[PowerLawFit] = None) -> dict[str, float]:
    """The numbers the phase rules look at (λ axis).

    ``ratio = λ_max/λ+``; ``n_spikes`` eigenvalues above ``λ+ + TW``, of
    which ``n_shoulder`` lie below ``SPIKE_RATIO · λ+`` (eigenmass bleeding
    out of the edge) and ``n_far`` above it (separated spikes);
    ``frac_zero`` the numerically zero fraction; ``alpha`` the power-law
    exponent (NaN without a fit).
    """
    x = np.asarray(evals, dtype=np.float64).ravel()
    lp, edge = mp.lambda_plus, mp.lambda_plus + mp.tw_margin
    lmax = float(x.max())
    n_far = int(np.count_nonzero(x > max(SPIKE_RATIO * lp, edge)))
    n_sp = int(np.count_nonzero(x > edge))
    return {
        "ratio": lmax / lp if lp > 0 else math.inf,
        "n_spikes": float(n_sp),
        "n_shoulder": float(n_sp - n_far),
        "n_far": float(n_far),
        "frac_zero": mp.frac_at_zero,
        "ks": mp.ks,
        "alpha": pl.alpha if (pl is not None and pl.ok) else math.nan,
    }
