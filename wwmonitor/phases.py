"""The "5+1 phases" of training (Martin & Mahoney, arXiv:1810.01075), and ``undetermined``.

Each ESD (λ axis, eigenvalues of ``X = WᵀW/N``) is assigned one of
:data:`PHASE_LABELS`: one of the 5+1 :data:`PHASES`, from the Marchenko-Pastur
fit (:func:`wwmonitor.mp.fit_mp`), or :data:`UNDETERMINED` for a layer with
fewer than :data:`MIN_PHASE_EVALS` (32) eigenvalues that is not rank-collapsed.
The rules follow the operational definitions of the seeds' table
("RMT-based 5+1 Phases of Training") and are written out, with their sources,
the reason for the minimum size and the validation, in ``docs/phases.md``.

Notation: ``n`` eigenvalues, ``edge = λ+ + TW`` (MP edge plus Tracy-Widom
margin), ``ratio = λ_max/λ+`` (the reach of the tail), ``n_spikes`` the
eigenvalues above ``edge``, ``lowest`` the smallest of them over λ+.  The
**continuum** is the run of eigenvalues that leaves the bulk without a gap:
it starts next to the bulk (``lowest <= CONT_START`` = 1.4) and goes up
through the eigenvalues above the edge, each one at most ``CHAIN_GAP`` (1.5)
times the previous one; ``n_cont`` is its length and ``reach`` its top (in
units of λ+).  Rules, first match wins:

1. ``rank-collapse`` ("ESD has a large-mass spike at λ = 0; W very
   rank-deficient; over-regularization"), at any size:

   a. ``rank_loss / M >= COLLAPSE_FRAC`` (10%), or
   b. a gap: at least ``GAP_MASS`` (10%) of the eigenvalues lie ``COLLAPSE_GAP``
      (1000) times or more below the next one (``COLLAPSE_GAP_SINGLE`` = 1e4
      when a single eigenvalue is above the gap: rank 1 plus tiny noise), or
   c. (``n >= 32``, it needs an MP fit) a negligible bulk: ``λ+ <= λ_max /
      NEGLIGIBLE_RATIO`` (MP soft rank <= 1%) and either at most
      ``max(2, 1% n)`` eigenvalues between the edge and ``sqrt(λ+ λ_max)``, or
      no continuum and at least ``COLLAPSE_BULK_FRACTION`` (75%) of the
      eigenvalues in the bulk: a few directions over a bulk squeezed toward zero.
2. ``undetermined``: ``n < MIN_PHASE_EVALS`` (32).
3. ``random-like``: ``n_spikes == 0`` -- the ESD ends at the MP edge.
4. ``heavy-tailed`` ("no good λ+; λ_max ≫ λ+"): the MP bulk holds fewer than
   ``HT_BULK_FRACTION`` (50%) of the non-zero eigenvalues, or a continuum
   (``n_cont >= 3``) reaches ``ratio >= HT_RATIO`` (15).
5. ``bulk+spikes`` ("≥ 1 spikes well above λ+"), separated spikes: no
   continuum and ``lowest >= SEPARATED_RATIO`` (1.45).
6. ``bleeding-out`` ("eigenmass just above λ+; λ_max and λ+ separate"):
   ``BLEED_MIN_RATIO <= ratio < SPIKE_RATIO`` (1.08 ... 1.9); below 1.08 the
   eigenvalues past the TW margin are an edge fluctuation (``random-like``),
   and a massive continuum (``n_cont >= max(8, 4% n)``) is ``bulk-decay``.
7. ``bulk-decay`` ("heavy-tailed eigenmass above λ+; edge above λ+ not
   concave"): a continuum with ``SPIKE_RATIO <= ratio < HT_RATIO``.
8. ``bulk+spikes``: the rest -- ``ratio >= SPIKE_RATIO``, no continuum.

The power-law ``alpha`` is quoted in the reason strings but not used in a
decision (docs/phases.md §2).  Thresholds were chosen on the "tune" splits of
``tests/phase_families.py`` and ``tests/phase_families_wide.py`` and on
:mod:`wwmonitor.synthetic`; the held-out splits are reported in
``docs/phases.md`` (tables written by ``tests/phase_eval.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .mp import MPFit, mp_cdf
from .powerlaw import PowerLawFit

__all__ = [
    "MIN_PHASE_EVALS",
    "PHASES",
    "PHASE_LABELS",
    "UNDETERMINED",
    "PhaseResult",
    "classify_phase",
    "phase_features",
]

PHASES: tuple[str, ...] = (
    "random-like",
    "bleeding-out",
    "bulk+spikes",
    "bulk-decay",
    "heavy-tailed",
    "rank-collapse",
)
#: the label of a layer too small for one of the 5+1 phases (fewer than MIN_PHASE_EVALS eigenvalues, no collapse)
UNDETERMINED = "undetermined"
#: every label classify_phase can return: the 5+1 phases, then UNDETERMINED
PHASE_LABELS: tuple[str, ...] = PHASES + (UNDETERMINED,)

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
GAP_MIN_ABOVE = 1
#: ... and a factor COLLAPSE_GAP_SINGLE (σ_max 100x the next singular value) when only one eigenvalue is above it
COLLAPSE_GAP_SINGLE = 1e4
#: ... unless the entries have an infinite variance (tail index below 2): then it is one giant entry
INFINITE_VARIANCE_MU = 2.0
#: a continuum: consecutive eigenvalues (from λ+ upwards) at most this factor apart ...
CHAIN_GAP = 1.5
#: ... starting next to the bulk: the lowest eigenvalue above the edge at most CONT_START · λ+
CONT_START = 1.4
#: ... and at least this many of them (and this fraction of n)
CONT_MIN_COUNT = 3
CONT_FRAC = 0.0
#: below SPIKE_RATIO a continuum needs this much eigenmass to be bulk-decay rather than bleeding-out
MASS_MIN_COUNT = 8
MASS_FRAC = 0.04
#: heavy-tailed: a continuum whose tail reaches HT_RATIO · λ+ ...
HT_RATIO = 15.0
#: ... or no good λ+: fewer than this fraction of the non-zero eigenvalues in the MP bulk
HT_BULK_FRACTION = 0.5
#: reason strings say "bulk fits MP" when KS <= max(KS_GOOD_MIN, KS_GOOD_SCALE/sqrt(n_bulk))
KS_GOOD_MIN = 0.03
KS_GOOD_SCALE = 2.0
#: heavy-tailed entries (rule 4c): a Hill estimate of the tail index of |W_ij| below ENTRY_HT_MU (the seeds'
#: boundary of the heavy-tailed classes, μ < 4), from the ENTRY_TAIL_FRAC largest entries (at least ENTRY_TAIL_MIN),
#: together with a continuum that reaches ENTRY_HT_RATIO · λ+
ENTRY_HT_MU = 4.0
ENTRY_TAIL_FRAC = 1e-3
ENTRY_TAIL_MIN = 30
ENTRY_TAIL_MIN_SIZE = 1500
ENTRY_HT_RATIO = 1.5
#: below this many eigenvalues a layer that is not rank-collapsed is UNDETERMINED (docs/phases.md §2.1)
MIN_PHASE_EVALS = 32
#: rank collapse by a negligible bulk without a sparse middle: no continuum and at least this bulk fraction
COLLAPSE_BULK_FRACTION = 0.75
#: isolated outliers (no continuum) whose lowest is at least this many λ+ are bulk+spikes ("well above λ+")
SEPARATED_RATIO = 1.45


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
    entry_tail: Optional[float] = None,
) -> PhaseResult:
    """Classify one ESD into the 5+1 phases, or :data:`UNDETERMINED` for a small layer.

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
    entry_tail:
        Tail index of the matrix entries (:func:`entry_tail_index`), if the
        matrix is at hand; ``None`` leaves rule 4c out.
    """
    x = np.asarray(evals, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        raise ValueError("classify_phase: no eigenvalues given")
    if not np.isfinite(x).all():
        raise ValueError("classify_phase: eigenvalues contain NaN or Inf")
    if float(x.max()) <= 0:
        return PhaseResult("rank-collapse", "all eigenvalues are zero")
    f = phase_features(x, mp, pl)
    collapsed = _rank_collapse(f, n, M, mp, rank_loss, entry_tail)
    if collapsed is not None:
        return collapsed
    if n < MIN_PHASE_EVALS:
        return PhaseResult(
            UNDETERMINED,
            f"only {n} eigenvalues (< {MIN_PHASE_EVALS}): too few for a reliable phase "
            f"(the Tracy-Widom margin is {mp.tw_margin / mp.lambda_plus:.0%} of λ+ and the MP fit cannot be "
            f"told from other shapes); not rank-collapsed, λ_max {f['ratio']:.3g}× λ+",
        )
    return _full_rank_phase(f, n, mp, pl, entry_tail)


def _rank_collapse(
    f: dict[str, float], n: int, M: int, mp: MPFit, rank_loss: Optional[int], entry_tail: Optional[float]
) -> Optional[PhaseResult]:
    """Rules 1a-1c (any number of eigenvalues): rank-collapse, or None."""
    if rank_loss is not None and M > 0 and n == M and rank_loss / M >= COLLAPSE_FRAC:
        return PhaseResult("rank-collapse", f"{rank_loss / M:.0%} of eigenvalues are (numerically) zero (rank loss)")
    above_gap = n - int(round(f["gap_mass"] * n))
    # one eigenvalue far above the rest is also what one giant entry of an infinite-variance matrix gives
    single_ok = entry_tail is None or not entry_tail < INFINITE_VARIANCE_MU
    if f["collapse_gap"] >= (COLLAPSE_GAP if above_gap >= 2 else (COLLAPSE_GAP_SINGLE if single_ok else math.inf)):
        k = int(round(f["gap_mass"] * n))
        return PhaseResult(
            "rank-collapse",
            f"{f['gap_mass']:.0%} of eigenvalues lie {f['collapse_gap']:.2g}× or more below the other {n - k} "
            f"(MP predicts {f['zero_mp']:.0%} at λ ≤ {f['zero_level']:.2g}, found {f['zero_obs']:.0%}): "
            "large-mass spike at zero",
        )
    ratio, nsp = f["ratio"], int(f["n_spikes"])
    if n < MIN_PHASE_EVALS or ratio < NEGLIGIBLE_RATIO or nsp == 0:  # 1c needs an MP fit
        return None
    sparse_mid = f["n_mid"] <= max(SPARSE_MID_COUNT, SPARSE_MID_FRAC * n)
    detached = f["n_continuum"] < CONT_MIN_COUNT and mp.bulk_fraction >= COLLAPSE_BULK_FRACTION
    if not (sparse_mid or detached):
        return None
    s_ = "s" if nsp != 1 else ""
    how = (
        f"{int(f['n_mid'])} eigenvalue{'s' if f['n_mid'] != 1 else ''} in between"
        if sparse_mid
        else f"none joining the bulk edge, {mp.bulk_fraction:.0%} of eigenvalues in the bulk"
    )
    return PhaseResult(
        "rank-collapse",
        f"MP bulk negligible: λ+ is {1.0 / ratio:.2g} of λ_max, {nsp} eigenvalue{s_} far above it with {how}: "
        "W is numerically low-rank",
    )


def _fit_text(mp: MPFit, n: int) -> str:
    if not math.isfinite(mp.ks):
        return "too few eigenvalues for an MP fit"
    if mp.ks <= max(KS_GOOD_MIN, KS_GOOD_SCALE / math.sqrt(max(1.0, mp.bulk_fraction * n))):
        return f"bulk fits MP (KS {mp.ks:.2f})"
    return f"bulk deviates from MP (KS {mp.ks:.2f})"


def _full_rank_phase(  # noqa: C901 -- one branch per rule of the table in docs/phases.md
    f: dict[str, float], n: int, mp: MPFit, pl: Optional[PowerLawFit], entry_tail: Optional[float]
) -> PhaseResult:
    """Rules 2-6 for a layer with at least MIN_PHASE_EVALS eigenvalues that is not rank-collapsed."""
    ratio, nsp = f["ratio"], int(f["n_spikes"])
    alpha = pl.alpha if (pl is not None and pl.ok and math.isfinite(pl.alpha)) else None
    a_txt = f", alpha {alpha:.2f}" if alpha is not None else ""
    fit_txt = _fit_text(mp, n)
    s_ = "s" if nsp != 1 else ""
    if nsp == 0:
        return PhaseResult("random-like", f"no eigenvalue above λ+ + TW, λ_max {ratio:.2f}× λ+, {fit_txt}")
    n_cont, reach = int(f["n_continuum"]), f["continuum_reach"]
    cont = n_cont >= max(CONT_MIN_COUNT, CONT_FRAC * n)
    cont_txt = f"{n_cont} eigenvalue{'s' if n_cont != 1 else ''} leave the edge without a gap, up to {reach:.2g}× λ+"
    if mp.bulk_fraction < HT_BULK_FRACTION:
        return PhaseResult(
            "heavy-tailed",
            f"no good λ+: only {mp.bulk_fraction:.0%} of eigenvalues in the MP bulk, {nsp} above λ+ + TW, "
            f"λ_max {ratio:.3g}× λ+{a_txt}, {fit_txt}",
        )
    if cont and ratio >= HT_RATIO:
        return PhaseResult(
            "heavy-tailed",
            f"λ_max {ratio:.3g}× λ+ (≫ λ+) at the end of a tail of {nsp} eigenvalues; {cont_txt}{a_txt}, {fit_txt}",
        )
    if cont and ratio >= ENTRY_HT_RATIO and entry_tail is not None and entry_tail < ENTRY_HT_MU:
        return PhaseResult(
            "heavy-tailed",
            f"heavy-tailed entries (tail index μ ≈ {entry_tail:.2f} < {ENTRY_HT_MU:g}) and {cont_txt}, "
            f"λ_max {ratio:.3g}× λ+{a_txt}, {fit_txt}",
        )
    lowest = f["lowest_spike"]
    if not cont and lowest >= SEPARATED_RATIO:
        return PhaseResult(
            "bulk+spikes",
            f"{nsp} spike{s_} above λ+ + TW, largest {ratio:.1f}× λ+, lowest {lowest:.2f}× λ+ (≥ {SEPARATED_RATIO}): "
            f"separated from the bulk (no continuum), {fit_txt}",
        )
    if ratio < SPIKE_RATIO:
        if n_cont >= max(MASS_MIN_COUNT, MASS_FRAC * n):
            return PhaseResult(
                "bulk-decay", f"{cont_txt} ({n_cont / n:.0%} of the eigenmass), λ_max {ratio:.2f}× λ+{a_txt}, {fit_txt}"
            )
        if ratio < BLEED_MIN_RATIO:
            return PhaseResult(
                "random-like",
                f"{nsp} eigenvalue{s_} past λ+ + TW but λ_max only {ratio:.2f}× λ+ (< {BLEED_MIN_RATIO}): "
                f"edge fluctuation, {fit_txt}",
            )
        return PhaseResult(
            "bleeding-out", f"{nsp} eigenvalue{s_} just above λ+ + TW, largest {ratio:.2f}× λ+, {fit_txt}"
        )
    if cont:
        return PhaseResult("bulk-decay", f"{cont_txt}, λ_max {ratio:.1f}× λ+ ({nsp} above λ+ + TW){a_txt}, {fit_txt}")
    return PhaseResult(
        "bulk+spikes",
        f"{nsp} spike{s_} above λ+ + TW, largest {ratio:.1f}× λ+, isolated (no continuum: "
        f"{n_cont} join the edge without a gap), {fit_txt}",
    )


def entry_tail_count(size: int) -> int:
    """How many of the largest ``|W_ij|`` the entry tail index uses: ``max(30, size / 1000)``, so at most 2%
    of the entries; 0 (no estimate) for fewer than ``ENTRY_TAIL_MIN_SIZE`` (1500) entries."""
    return max(ENTRY_TAIL_MIN, int(size * ENTRY_TAIL_FRAC)) if size >= ENTRY_TAIL_MIN_SIZE else 0


def hill_tail_index(top: np.ndarray) -> float:
    """Hill estimate ``μ̂ = k / Σ_{i<k} ln(x_(i) / x_(k))`` from the ``k + 1`` largest values ``x_(0) >= ... >= x_(k)``
    (any order).  NaN when ``x_(k) <= 0``; inf when they are all equal."""
    t = np.sort(np.asarray(top, dtype=np.float64).ravel())[::-1]
    k = t.size - 1
    if k < 1 or not t[k] > 0:
        return math.nan
    s = float(np.sum(np.log(t[:k] / t[k])))
    return k / s if s > 0 else math.inf


def entry_tail_index(W: np.ndarray) -> float:
    """Tail index ``μ`` of the entries of ``W`` (all slices of a stack): :func:`hill_tail_index` of the
    :func:`entry_tail_count` + 1 largest ``|W_ij|``.  iid entries with ``P(|w| > x) ~ x^-μ`` give about ``μ``;
    Gaussian entries 7-16 at these tail fractions.  NaN for fewer than 1500 entries.  Scale free."""
    a = np.abs(np.asarray(W)).ravel()
    k = entry_tail_count(a.size)
    if k == 0:
        return math.nan
    return hill_tail_index(_largest(a, k + 1))


#: above this many entries :func:`_largest` pre-selects candidates with a threshold taken from a sample
_LARGEST_SAMPLE = 1 << 16


def _largest(a: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` largest values of the 1-D ``a`` (any order): exactly ``np.partition(a, a.size - m)[a.size - m:]``
    as a multiset.  Large inputs are first cut to the entries at or above a threshold read from an evenly spaced
    sample (expected to keep about ``2m``), a comparison pass instead of a partition of everything; when fewer
    than ``m`` pass, the full partition is used."""
    n = a.size
    if n > 4 * _LARGEST_SAMPLE and 4 * m < n:
        sample = a[:: n // _LARGEST_SAMPLE]
        r = sample.size - 1 - int(math.ceil(2.0 * m * sample.size / n))
        if r >= 0:
            thr = np.partition(sample, r)[r]
            top = a[np.flatnonzero(a >= thr)]  # indices first: 3x faster than a boolean mask here
            if top.size >= m:
                return np.partition(top, top.size - m)[top.size - m :]
    return np.partition(a, n - m)[n - m :]


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
        if above[0] > CONT_START * lp:
            n_cont = 0
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
