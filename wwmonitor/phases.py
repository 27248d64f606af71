"""The "5+1 phases" of training (Martin & Mahoney, arXiv:1810.01075).

Each ESD (λ axis, eigenvalues of ``X = WᵀW/N``) is assigned one of
:data:`PHASES` from the Marchenko-Pastur fit (:func:`wwmonitor.mp.fit_mp`).
The rules follow the operational definitions of the seeds' table
("RMT-based 5+1 Phases of Training") and are written out, with their sources
and the validation, in ``docs/phases.md``.

Notation: ``n`` eigenvalues, ``edge = λ+ + TW`` (MP edge plus Tracy-Widom
margin), ``ratio = λ_max/λ+`` (the reach of the tail), ``n_spikes`` the
eigenvalues above ``edge``.  The **continuum** is the run of eigenvalues
that leaves the bulk without a gap: starting at λ+ and going up through the
eigenvalues above the edge, each one at most ``CHAIN_GAP`` (1.5) times the
previous one; ``n_cont`` is its length and ``reach`` its top (in units of λ+).
Rules, first match wins:

1. ``rank-collapse`` ("ESD has a large-mass spike at λ = 0; W very
   rank-deficient; over-regularization"):

   a. ``rank_loss / M >= COLLAPSE_FRAC`` (10%), or
   b. a gap: at least ``GAP_MASS`` (10%) of the eigenvalues lie ``COLLAPSE_GAP``
      (1000) times or more below the next one, with at least 2 above the gap
      (exact zeros, dead units, low rank plus tiny noise), or
   c. a negligible bulk: ``λ+ <= λ_max / NEGLIGIBLE_RATIO`` (MP soft rank
      <= 1%) and at most ``max(2, 1% n)`` eigenvalues between the edge and
      ``sqrt(λ+ λ_max)``: a few spikes over a bulk squeezed toward zero
      (weight decay); ``W`` is numerically low-rank at 10% of ``σ_max``.
2. ``random-like``: ``n_spikes == 0`` -- the ESD ends at the MP edge.
3. ``heavy-tailed`` ("ESD better described by heavy-tailed RMT; no good λ+;
   λ_max ≫ λ+"): the MP bulk holds fewer than ``HT_BULK_FRACTION`` (60%) of
   the non-zero eigenvalues, or a continuum (``n_cont >= 3``) leaves the edge
   and the tail reaches ``ratio >= HT_RATIO`` (15).
4. ``bleeding-out`` ("random-like except eigenmass just above λ+; λ_max and
   λ+ separate"): ``BLEED_MIN_RATIO <= ratio < SPIKE_RATIO`` (1.08 ... 1.9);
   below 1.08 the eigenvalues past the TW margin are an edge fluctuation
   (``random-like``), and a massive continuum (``n_cont >= max(8, 4% n)``)
   is ``bulk-decay``.
5. ``bulk-decay`` ("less random-like; heavy-tailed eigenmass above λ+; some
   spikes; edge above λ+ not concave"): a continuum (``n_cont >= 3``) with
   ``SPIKE_RATIO <= ratio < HT_RATIO``.
6. ``bulk+spikes`` ("random-like plus >= 1 spikes well above λ+"): the rest --
   ``ratio >= SPIKE_RATIO`` and the spikes are isolated, not a continuum.

The power-law ``alpha`` is quoted in the reason strings but not used in a
decision: on the tuning data it does not separate bulk-decay continua from
heavy tails (5th-95th percentiles 1.7-5.2 against 1.4-4.6).  Thresholds
were chosen on the "tune" split of ``tests/phase_families.py`` and on
:mod:`wwmonitor.synthetic`; the held-out split is reported in
``docs/phases.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .mp import MPFit, mp_cdf
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

#: rank collapse: rank_loss / M at least this
COLLAPSE_FRAC = 0.10
#: reported (not decided on): the fraction at λ <= max(ZERO_LM_FRAC · λ-, ZERO_LP_FRAC · λ+) against MP
ZERO_LM_FRAC = 0.25
ZERO_LP_FRAC = 1e-5
#: rank collapse by a negligible bulk: λ_max >= NEGLIGIBLE_RATIO · λ+ (MP soft rank <= 1%) ...
NEGLIGIBLE_RATIO = 100.0
#: ... with at most max(SPARSE_MID_COUNT, SPARSE_MID_FRAC · n) eigenvalues in (edge, sqrt(λ+ λ_max)]
SPARSE_MID_COUNT = 2
SPARSE_MID_FRAC = 0.01
#: λ_max / λ+ above which spikes are "well above" the bulk (below: bleeding-out)
SPIKE_RATIO = 1.9
#: bleeding-out needs λ_max >= BLEED_MIN_RATIO · λ+ ("λ_max and λ+ separate"); eigenvalues
#: just past the TW margin but within 8% of λ+ are edge fluctuations (random-like)
BLEED_MIN_RATIO = 1.08
#: rank collapse by a gap: at least GAP_MASS of the eigenvalues lie a factor COLLAPSE_GAP or more
#: below the next eigenvalue, with at least GAP_MIN_ABOVE eigenvalues above the gap
COLLAPSE_GAP = 1e3
GAP_MASS = 0.10
GAP_MIN_ABOVE = 2
#: a continuum: consecutive eigenvalues (from λ+ upwards) at most this factor apart ...
CHAIN_GAP = 1.5
#: ... and at least this many of them (and this fraction of n)
CONT_MIN_COUNT = 3
CONT_FRAC = 0.0
#: below SPIKE_RATIO a continuum needs this much eigenmass to be bulk-decay rather than bleeding-out
MASS_MIN_COUNT = 8
MASS_FRAC = 0.04
#: heavy-tailed: a continuum whose tail reaches HT_RATIO · λ+ ...
HT_RATIO = 15.0
#: ... or no good λ+: fewer than this fraction of the non-zero eigenvalues in the MP bulk
HT_BULK_FRACTION = 0.6
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
        Power-law fit (any axis: only ``alpha`` is used, and only in the
        reason string), or ``None`` / a failed fit.
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

    f = phase_features(x, mp, pl)
    few = f"; only {n} eigenvalues, phase unreliable" if n < MIN_EVALS else ""

    # 1a. rank loss
    if rank_loss is not None and M > 0 and n == M and rank_loss / M >= COLLAPSE_FRAC:
        return PhaseResult(
            "rank-collapse", f"{rank_loss / M:.0%} of eigenvalues are (numerically) zero (rank loss){few}"
        )

    ratio, ks, nsp = f["ratio"], mp.ks, int(f["n_spikes"])
    alpha = pl.alpha if (pl is not None and pl.ok and math.isfinite(pl.alpha)) else None
    a_txt = f", alpha {alpha:.2f}" if alpha is not None else ""
    if not math.isfinite(ks):
        fit_txt = "too few eigenvalues for an MP fit"
    elif ks <= max(KS_GOOD_MIN, KS_GOOD_SCALE / math.sqrt(max(1.0, mp.bulk_fraction * n))):
        fit_txt = f"bulk fits MP (KS {ks:.2f})"
    else:
        fit_txt = f"bulk deviates from MP (KS {ks:.2f})"
    s_ = "s" if nsp != 1 else ""

    # 1b. a large mass far below everything else (a gap of COLLAPSE_GAP in the sorted spectrum)
    if f["collapse_gap"] >= COLLAPSE_GAP:
        k = int(round(f["gap_mass"] * n))
        return PhaseResult(
            "rank-collapse",
            f"{f['gap_mass']:.0%} of eigenvalues lie {f['collapse_gap']:.2g}× or more below the other {n - k} "
            f"(MP predicts {f['zero_mp']:.0%} at λ ≤ {f['zero_level']:.2g}, found {f['zero_obs']:.0%}): "
            f"large-mass spike at zero{few}",
        )

    # 2. random-like
    if nsp == 0:
        return PhaseResult(
            "random-like",
            f"no eigenvalue above λ+ + TW, λ_max {ratio:.2f}× λ+, {fit_txt}{few}",
        )

    # 1c. negligible bulk: a few spikes far above a bulk squeezed toward zero
    n_cont, reach = int(f["n_continuum"]), f["continuum_reach"]
    if ratio >= NEGLIGIBLE_RATIO and f["n_mid"] <= max(SPARSE_MID_COUNT, SPARSE_MID_FRAC * n):
        return PhaseResult(
            "rank-collapse",
            f"MP bulk negligible: λ+ is {1.0 / ratio:.2%} of λ_max, {nsp} spike{s_} far above it with "
            f"{int(f['n_mid'])} eigenvalue{'s' if f['n_mid'] != 1 else ''} in between: W is numerically "
            f"low-rank, {fit_txt}{few}",
        )

    cont = n_cont >= max(CONT_MIN_COUNT, CONT_FRAC * n)
    cont_txt = f"{n_cont} eigenvalue{'s' if n_cont != 1 else ''} leave the edge without a gap, up to {reach:.2g}× λ+"
    # 3. heavy-tailed: no good λ+, or λ_max ≫ λ+ at the end of a continuum
    if mp.bulk_fraction < HT_BULK_FRACTION:
        return PhaseResult(
            "heavy-tailed",
            f"no good λ+: only {mp.bulk_fraction:.0%} of eigenvalues in the MP bulk, {nsp} above λ+ + TW, "
            f"λ_max {ratio:.3g}× λ+{a_txt}, {fit_txt}{few}",
        )
    if cont and ratio >= HT_RATIO:
        return PhaseResult(
            "heavy-tailed",
            f"λ_max {ratio:.3g}× λ+ (≫ λ+) at the end of a tail of {nsp} eigenvalues; "
            f"{cont_txt}{a_txt}, {fit_txt}{few}",
        )
    # 4. bleeding-out: everything just above the edge
    if ratio < SPIKE_RATIO:
        if n_cont >= max(MASS_MIN_COUNT, MASS_FRAC * n):
            return PhaseResult(
                "bulk-decay",
                f"{cont_txt} ({n_cont / n:.0%} of the eigenmass), λ_max {ratio:.2f}× λ+{a_txt}, {fit_txt}{few}",
            )
        if ratio < BLEED_MIN_RATIO:
            return PhaseResult(
                "random-like",
                f"{nsp} eigenvalue{s_} past λ+ + TW but λ_max only {ratio:.2f}× λ+ (< {BLEED_MIN_RATIO}): "
                f"edge fluctuation, {fit_txt}{few}",
            )
        return PhaseResult(
            "bleeding-out",
            f"{nsp} eigenvalue{s_} just above λ+ + TW, largest {ratio:.2f}× λ+, {fit_txt}{few}",
        )
    # 5. bulk-decay: a decaying continuum with a bounded reach
    if cont:
        return PhaseResult(
            "bulk-decay",
            f"{cont_txt}, λ_max {ratio:.1f}× λ+ ({nsp} above λ+ + TW){a_txt}, {fit_txt}{few}",
        )
    # 6. bulk+spikes: isolated spikes well above the bulk
    return PhaseResult(
        "bulk+spikes",
        f"{nsp} spike{s_} above λ+ + TW, largest {ratio:.1f}× λ+, isolated (no continuum: "
        f"{n_cont} join the edge without a gap), {fit_txt}{few}",
    )


def phase_features(evals: np.ndarray, mp: MPFit, pl: Optional[PowerLawFit] = None) -> dict[str, float]:
    """The numbers the phase rules look at (λ axis).

    ``ratio = λ_max/λ+``; ``n_spikes`` eigenvalues above ``λ+ + TW``, of
    which ``n_shoulder`` lie below ``SPIKE_RATIO · λ+`` and ``n_far`` above
    it; ``lowest_spike`` the smallest of them over λ+ (NaN without spikes);
    ``n_continuum`` / ``continuum_reach`` the length and top (over λ+) of the
    gap-free run of eigenvalues leaving the bulk (see the module docstring);
    ``n_mid`` the eigenvalues in ``(λ+ + TW, sqrt(λ+ λ_max)]``;
    ``zero_obs`` the fraction of eigenvalues at ``λ <= zero_level =
    max(λ-/4, 1e-5 λ+)``, ``zero_mp`` the MP prediction for it and
    ``zero_excess`` their difference; ``collapse_gap`` the largest ratio of
    consecutive sorted eigenvalues with at least ``GAP_MASS`` of them below it
    and ``GAP_MIN_ABOVE`` above (inf for a step up from exact zeros),
    ``gap_mass`` the fraction below that step; ``frac_zero`` the numerically zero
    fraction (``λ <= 1e-8 λ_max``); ``bulk_fraction``, ``ks`` from the MP fit;
    ``alpha`` the power-law exponent (NaN without a fit).
    """
    x = np.asarray(evals, dtype=np.float64).ravel()
    lp, edge = mp.lambda_plus, mp.lambda_plus + mp.tw_margin
    lmax = float(x.max())
    above = np.sort(x[x > edge])
    n_far = int(np.count_nonzero(above > max(SPIKE_RATIO * lp, edge)))
    n_sp = int(above.size)
    if lp > 0 and n_sp:
        steps = above / np.concatenate(([lp], above[:-1]))
        breaks = np.flatnonzero(steps > CHAIN_GAP)
        n_cont = int(breaks[0]) if breaks.size else n_sp
        reach = float(above[n_cont - 1] / lp) if n_cont else 1.0
    else:
        n_cont, reach = 0, 1.0
    mid = math.sqrt(lp * lmax) if lp > 0 else lmax
    # largest step between consecutive sorted eigenvalues with >= GAP_MASS of them below it
    xs = np.sort(x)
    lo = max(int(math.ceil(GAP_MASS * xs.size)) - 1, 0)
    hi = xs.size - GAP_MIN_ABOVE  # steps xs[i] -> xs[i + 1] for lo <= i < hi
    gap, gap_mass = 1.0, 0.0
    if hi > lo:
        with np.errstate(divide="ignore", invalid="ignore"):
            steps = xs[lo + 1 : hi + 1] / xs[lo:hi]
        steps = np.where(xs[lo + 1 : hi + 1] > 0, steps, 1.0)  # 0/0: no step
        j = int(np.argmax(steps))
        gap, gap_mass = float(steps[j]), (lo + j + 1) / xs.size
    level = max(ZERO_LM_FRAC * mp.lambda_minus, ZERO_LP_FRAC * lp)
    zero_obs = float(np.count_nonzero(x <= level)) / x.size
    zero_mp = 0.0
    if mp.sigma2 > 0 and level > 0:
        zero_mp = float(mp_cdf(np.array([level]), mp.Q, mp.sigma2)[0]) * mp.bulk_fraction * (1.0 - mp.frac_at_zero)
    return {
        "ratio": lmax / lp if lp > 0 else math.inf,
        "n_spikes": float(n_sp),
        "n_shoulder": float(n_sp - n_far),
        "n_far": float(n_far),
        "lowest_spike": float(above[0] / lp) if (n_sp and lp > 0) else math.nan,
        "n_continuum": float(n_cont),
        "continuum_reach": reach,
        "n_mid": float(np.count_nonzero((x > edge) & (x <= mid))),
        "zero_level": level,
        "zero_obs": zero_obs,
        "zero_mp": zero_mp,
        "zero_excess": zero_obs - zero_mp,
        "collapse_gap": gap,
        "gap_mass": gap_mass,
        "frac_zero": mp.frac_at_zero,
        "bulk_fraction": mp.bulk_fraction,
        "ks": mp.ks,
        "alpha": pl.alpha if (pl is not None and pl.ok) else math.nan,
    }
