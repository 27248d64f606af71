"""The "5+1 phases" of training (Martin & Mahoney, arXiv:1810.01075).

Each ESD (λ axis, eigenvalues of ``X = WᵀW/N``) is assigned one of
:data:`PHASES` from the Marchenko-Pastur fit (:func:`wwmonitor.mp.fit_mp`)
and, when available, the power-law fit of the tail.  The operational criteria
are written out in ``docs/phases.md``; in order of precedence:

1. ``rank-collapse``: a large spike of mass at λ = 0 -- at least
   ``COLLAPSE_FRAC`` of the eigenvalues numerically zero
   (``λ <= 1e-8 λ_max``, or ``rank_loss / M``).
2. ``random-like``: no eigenvalue above ``λ+ + TW`` (``num_spikes == 0``).
3. ``heavy-tailed``: no usable MP edge -- the largest eigenvalue is far
   above it (``λ_max >= HT_RATIO · λ+``) *and* a sizeable eigenmass lies
   above the edge (``num_spikes >= HT_TAIL_FRAC · n``) with a heavy power-law
   tail (``alpha < HT_ALPHA``), or the MP fit itself fails badly
   (``ks >= HT_KS``).
4. ``bulk-decay``: eigenmass above the edge (``num_spikes >= DECAY_TAIL_FRAC · n``,
   more than a handful of isolated spikes) without a heavy tail.
5. ``bulk+spikes``: a few spikes, the largest well separated from the bulk
   (``λ_max >= SPIKE_RATIO · λ+``).
6. ``bleeding-out``: a few spikes, all just above the edge
   (``λ_max < SPIKE_RATIO · λ+``).
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
    fit_txt = f"KS {ks:.2f}"
    s_ = "s" if nsp != 1 else ""

    if nsp == 0:
        return PhaseResult(
            "random-like",
            f"no eigenvalue above λ+ + TW, λ_max {ratio:.2f}× λ+, bulk fits MP ({fit_txt})",
        )
    mass = nsp >= max(MASS_MIN_COUNT, MASS_FRAC * n) or f["n_shoulder"] >= max(SHOULDER_MIN_COUNT, SHOULDER_FRAC * n)
    if mass:
        if ratio >= HT_RATIO and (alpha is None or alpha < HT_ALPHA):
            return PhaseResult(
                "heavy-tailed",
                f"{nsp} eigenvalues ({nsp / n:.0%}) above λ+ + TW, λ_max {ratio:.1f}× λ+{a_txt}: "
                f"no clear MP edge ({fit_txt})",
            )
        return PhaseResult(
            "bulk-decay",
            f"{nsp} eigenvalues ({nsp / n:.0%}) decay above λ+ + TW, λ_max {ratio:.1f}× λ+{a_txt} ({fit_txt})",
        )
    if ratio >= SPIKE_RATIO:
        return PhaseResult(
            "bulk+spikes",
            f"{nsp} spike{s_} above λ+ + TW, largest {ratio:.1f}× λ+, bulk fits MP ({fit_txt})",
        )
    return PhaseResult(
        "bleeding-out",
        f"{nsp} eigenvalue{s_} just above λ+ + TW, largest {ratio:.2f}× λ+ ({fit_txt})",
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
