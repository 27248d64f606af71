"""5+1 phase classification (wwmonitor.phases) validated on two sets of generators.

* the project's own generators (wwmonitor/synthetic.py): thresholds were tuned
  on generator seeds 1000-1005; the accuracy test below uses seeds 0-2;
* the independent families of tests/phase_families.py (written from the
  seeds' definitions by someone else): thresholds were tuned on the "tune"
  split only (seeds 100-102); the test below measures the "held_out" families
  (their seed-0 misses were looked at once after a first measurement and three
  rules changed; fresh seeds 1-2 are reported in docs/phases.md §4, with both
  confusion matrices).
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import wwmonitor
from wwmonitor.mp import fit_mp
from wwmonitor.phases import (
    MIN_PHASE_EVALS,
    PHASE_LABELS,
    PHASES,
    UNDETERMINED,
    PhaseResult,
    classify_phase,
    entry_tail_index,
    phase_features,
)
from wwmonitor.powerlaw import fit_powerlaw
from wwmonitor.synthetic import PHASE_GENERATORS, bbp_threshold, spiked

sys.path.insert(0, str(Path(__file__).parent))
from phase_families_wide import HELD_OUT_SEEDS as WIDE_HELD_OUT_SEEDS  # noqa: E402
from phase_families_wide import LABELS as WIDE_LABELS  # noqa: E402
from phase_families_wide import wide_suite  # noqa: E402

from phase_families import suite as family_suite  # noqa: E402

# BLAS threads fight each other on a loaded 2-core machine; one thread is much faster
pytestmark = pytest.mark.usefixtures("one_blas_thread")

SIZES = (100, 250, 500)
ASPECTS = (1, 2, 4)
TEST_SEEDS = (0, 1, 2)
#: independent held-out families: 4 draws per family x 18 families = 72 matrices, fixed seed
HELD_OUT_N, HELD_OUT_SEED = 4, 0


def _classify(W: np.ndarray) -> str:
    m = wwmonitor.analyze_matrix(W)
    assert m.phase in PHASES, (m.phase, m.status, m.message)
    return m.phase


def confusion_matrix(seeds=TEST_SEEDS, sizes=SIZES, aspects=ASPECTS) -> tuple[np.ndarray, list]:
    """Rows: generated phase, columns: classified phase (order of PHASES)."""
    C = np.zeros((len(PHASES), len(PHASES)), dtype=int)
    misses = []
    for i, phase in enumerate(PHASES):
        gen = PHASE_GENERATORS[phase]
        for M in sizes:
            for Q in aspects:
                for seed in seeds:
                    rng = np.random.default_rng([seed, M, Q, i])
                    W = gen(M * Q, M, rng)
                    if seed % 2:
                        W = W.T  # orientation must not matter
                    got = _classify(W)
                    C[i, PHASES.index(got)] += 1
                    if got != phase:
                        misses.append((phase, got, M, Q, seed))
    return C, misses


def format_confusion(C: np.ndarray) -> str:
    head = "| generated \\ classified | " + " | ".join(PHASES) + " | accuracy |"
    sep = "|" + "---|" * (len(PHASES) + 2)
    rows = [head, sep]
    for i, p in enumerate(PHASES):
        acc = C[i, i] / C[i].sum()
        rows.append(f"| {p} | " + " | ".join(str(v) for v in C[i]) + f" | {acc:.0%} |")
    rows.append("| **overall** | " + " | ".join("" for _ in PHASES) + f" | {np.trace(C) / C.sum():.1%} |")
    return "\n".join(rows)


#: issue 16: iid entries with tail index 2 < mu < 4 are heavy-tailed (seeds' table); the first suite's
#: Gaussian + sparse Pareto(mu 2-3.5) family was written as bulk-decay.  Tests count it as heavy-tailed and
#: docs/phases.md §4.3 reports both readings.
ISSUE16_RELABEL = {"bd_gaussian_plus_sparse_heavy": "heavy-tailed"}


@functools.lru_cache(maxsize=8)
def family_confusion(
    split: str = "held_out", n_per_family: int = HELD_OUT_N, seed: int = HELD_OUT_SEED, issue16: bool = True
):
    """Confusion matrix of the classifier (full analyze_matrix path) on tests/phase_families.py
    (``issue16``: with the labels of ISSUE16_RELABEL)."""
    C = np.zeros((len(PHASES), len(PHASES)), dtype=int)
    misses = []
    for phase, family, W in family_suite(split, n_per_family, seed):
        truth = ISSUE16_RELABEL.get(family, phase) if issue16 else phase
        got = _classify(W)
        C[PHASES.index(truth), PHASES.index(got)] += 1
        if got != truth:
            misses.append((truth, got, family, W.shape))
    return C, tuple(misses)


#: held-out seeds never looked at while the rules were written (seed 0 was: its misses were studied)
CLEAN_SEEDS = (1, 2)
#: 18 held-out families x 20 matrices x 2 seeds = 720 matrices (~25 s)
CLEAN_N = 20


def test_phase_accuracy_on_independent_held_out_families(capsys) -> None:
    """Issue 9's target on the held-out families of tests/phase_families.py (not tuned on):
    >= 95% overall and every class >= 85%, on 720 matrices from the two clean seeds (issue-16 labels)."""
    C = sum(family_confusion("held_out", CLEAN_N, seed)[0] for seed in CLEAN_SEEDS)
    with capsys.disabled():
        print("\n" + format_confusion(C))
    assert C.sum() == 720
    per_class = np.diag(C) / C.sum(axis=1)
    assert np.trace(C) / C.sum() >= 0.95, format_confusion(C)
    assert per_class.min() >= 0.85, format_confusion(C)


def test_phase_accuracy_on_a_small_held_out_sample_stays_at_its_measured_floor(capsys) -> None:
    """A regression floor on the small seed-0 sample (72 matrices; 94.4% measured, heavy-tailed 9/12)."""
    C, misses = family_confusion()
    with capsys.disabled():
        for m in misses:
            print("  miss:", m)
    assert C.sum() == 72
    per_class = np.diag(C) / C.sum(axis=1)
    assert np.trace(C) / C.sum() >= 0.93, format_confusion(C)
    assert per_class.min() >= 0.75, format_confusion(C)


#: CI slice of the wide suite (tests/phase_families_wide.py, written before the issue-16 rules): its first
#: held-out seed, WIDE_CI_N matrices per held-out family (13 families, 7 labels); docs/phases.md §4.3 has the
#: full measurement (40 per family, both held-out seeds) written by tests/phase_eval.py
WIDE_CI_N = 8


@functools.lru_cache(maxsize=1)
def wide_confusion() -> tuple[np.ndarray, tuple]:
    """Confusion matrix (full analyze_matrix path) of the CI slice of the wide suite, labels WIDE_LABELS."""
    C = np.zeros((len(WIDE_LABELS), len(WIDE_LABELS)), dtype=int)
    misses = []
    for truth, family, W in wide_suite("held_out", WIDE_CI_N, WIDE_HELD_OUT_SEEDS[0]):
        got = wwmonitor.analyze_matrix(W).phase
        C[WIDE_LABELS.index(truth), WIDE_LABELS.index(got)] += 1
        if got != truth:
            misses.append((truth, got, family, W.shape))
    return C, tuple(misses)


def test_phase_accuracy_on_the_wide_held_out_families_stays_at_its_measured_floor(capsys) -> None:
    """Held-out families and seeds of the wide suite that no rule was tuned on, 104 matrices, 'undetermined'
    included: measured 96.2% (100/104), bulk-decay and heavy-tailed 14/16; asserted >= 95% and every label
    >= 80% (one more miss passes, two fail)."""
    C, misses = wide_confusion()
    with capsys.disabled():
        for m in misses:
            print("  miss:", m)
    assert C.sum() == 13 * WIDE_CI_N
    per_class = np.diag(C) / C.sum(axis=1)
    assert np.trace(C) / C.sum() >= 0.95, (misses, per_class)
    assert per_class.min() >= 0.80, (misses, per_class)


def test_phase_accuracy_on_synthetic_generators(capsys) -> None:
    C, misses = confusion_matrix()
    with capsys.disabled():
        print("\n" + format_confusion(C))
        for m in misses:
            print("  miss:", m)
    per_class = np.diag(C) / C.sum(axis=1)
    overall = np.trace(C) / C.sum()
    assert overall >= 0.90, format_confusion(C)
    assert per_class.min() >= 0.75, format_confusion(C)


def test_generators_cover_all_phases() -> None:
    assert set(PHASE_GENERATORS) == set(PHASES)
    assert len(PHASES) == 6
    rng = np.random.default_rng(0)
    for phase, gen in PHASE_GENERATORS.items():
        W = gen(120, 60, rng)
        assert W.shape == (120, 60), phase
        assert np.isfinite(W).all(), phase
    with pytest.raises(ValueError, match="N >= M"):
        PHASE_GENERATORS["random-like"](50, 60, rng)


@pytest.mark.parametrize("phase", PHASES)
def test_phase_is_scale_invariant(phase: str) -> None:
    rng = np.random.default_rng(99)
    W = PHASE_GENERATORS[phase](400, 200, rng).astype(np.float64)
    assert _classify(W) == _classify(W * 1e3) == _classify(W * 1e-3)


def test_bbp_threshold_separates_random_from_spikes() -> None:
    rng = np.random.default_rng(5)
    Q = 2.0
    below = spiked(600, 300, np.full(2, 0.6 * bbp_threshold(Q)), rng)
    strong = spiked(600, 300, np.array([5.0, 6.0]) * bbp_threshold(Q), rng)
    assert _classify(below) == "random-like"
    assert _classify(strong) == "bulk+spikes"


def _fits(W: np.ndarray):
    N, M = max(W.shape), min(W.shape)
    ev_sq = np.sort(np.linalg.eigvalsh(W.T @ W if W.shape[0] >= W.shape[1] else W @ W.T))
    lam = np.clip(ev_sq, 0, None) / N
    return lam, N, M, fit_mp(lam, N / M, M=M), fit_powerlaw(ev_sq)


def test_reason_strings_are_informative() -> None:
    rng = np.random.default_rng(3)
    W = spiked(800, 400, np.array([4.0, 5.0, 6.0]) * bbp_threshold(2.0), rng)
    lam, N, M, mp, pl = _fits(W)
    r = classify_phase(lam, N=N, M=M, mp=mp, pl=pl)
    assert isinstance(r, PhaseResult)
    assert r.phase == "bulk+spikes"
    assert r.reason.startswith("3 spikes above λ+ + TW")
    assert f"largest {lam.max() / mp.lambda_plus:.1f}× λ+" in r.reason
    assert "bulk fits MP (KS" in r.reason

    lam, N, M, mp, pl = _fits(rng.standard_normal((300, 300)))
    r0 = classify_phase(lam, N=N, M=M, mp=mp, pl=pl)
    assert r0.phase == "random-like"
    assert r0.reason.startswith("no eigenvalue above λ+ + TW")


def test_without_powerlaw_fit() -> None:
    """pl=None or a failed fit must still classify (alpha is then not used)."""
    rng = np.random.default_rng(8)
    W = PHASE_GENERATORS["heavy-tailed"](500, 250, rng, mu=1.6)
    lam, N, M, mp, pl = _fits(W)
    assert classify_phase(lam, N=N, M=M, mp=mp, pl=pl).phase == "heavy-tailed"
    assert classify_phase(lam, N=N, M=M, mp=mp, pl=None).phase == "heavy-tailed"
    failed = fit_powerlaw(np.array([1.0]))
    assert not failed.ok
    assert classify_phase(lam, N=N, M=M, mp=mp, pl=failed).phase == "heavy-tailed"


def test_rank_loss_argument_and_zero_matrix() -> None:
    rng = np.random.default_rng(2)
    W = rng.standard_normal((300, 200))
    lam, N, M, mp, pl = _fits(W)
    assert classify_phase(lam, N=N, M=M, mp=mp, pl=pl, rank_loss=0).phase == "random-like"
    r = classify_phase(lam, N=N, M=M, mp=mp, pl=pl, rank_loss=100)
    assert r.phase == "rank-collapse" and "50%" in r.reason
    m = wwmonitor.analyze_matrix(np.zeros((100, 80)))
    assert m.phase == "rank-collapse"


def test_phase_features() -> None:
    rng = np.random.default_rng(4)
    W = spiked(400, 200, np.array([6.0]) * bbp_threshold(2.0), rng)
    lam, N, M, mp, pl = _fits(W)
    f = phase_features(lam, mp, pl)
    assert f["n_spikes"] == f["n_far"] == 1 and f["n_shoulder"] == 0
    assert f["ratio"] == pytest.approx(lam.max() / mp.lambda_plus)
    assert pl.ok and f["alpha"] == pl.alpha
    assert math.isnan(phase_features(lam, mp, None)["alpha"])  # no fit: NaN, never a made-up value
    assert f["n_continuum"] == 0 and f["continuum_reach"] == 1.0  # one isolated spike: no continuum
    assert f["n_mid"] == 0 and f["zero_excess"] < 0.01 and f["collapse_gap"] < 10
    assert f["bulk_fraction"] == mp.bulk_fraction and f["lowest_spike"] == pytest.approx(f["ratio"])


def test_decaying_continuum_is_bulk_decay_not_heavy_tailed() -> None:
    """Issue 9: an intact MP bulk with a continuum of 60 geometrically decaying signal directions
    reaching ~5 λ+ is bulk-decay (the old rule called it heavy-tailed: ratio >= 3.5, alpha < 4.5)."""
    rng = np.random.default_rng(21)
    dc = bbp_threshold(2.0)
    d = 4.6 * dc * (0.8 / 4.6) ** (np.arange(60) / 59)  # outliers from ~5 λ+ down into the bulk
    lam, N, M, mp, pl = _fits(spiked(800, 400, d, rng))
    r = classify_phase(lam, N=N, M=M, mp=mp, pl=pl)
    f = phase_features(lam, mp, pl)
    assert 3.5 < f["ratio"] < 8 and f["n_continuum"] >= 20
    assert r.phase == "bulk-decay", r.reason
    assert "leave the edge without a gap" in r.reason


def test_rank_collapse_without_exact_zeros() -> None:
    """Mass at zero need not be numerically zero: low rank plus tiny noise, and a few spikes over a
    bulk squeezed below 1% of λ_max (weight decay), are rank-collapse; the same spikes at ~30 λ+ are not."""
    rng = np.random.default_rng(5)
    dc = bbp_threshold(2.0)
    A = rng.standard_normal((800, 10)) @ rng.standard_normal((10, 400)) / math.sqrt(10)
    lam, N, M, mp, pl = _fits(A + 1e-2 * rng.standard_normal((800, 400)))
    assert mp.frac_at_zero == 0.0
    r = classify_phase(lam, N=N, M=M, mp=mp, pl=pl)
    assert r.phase == "rank-collapse" and "large-mass spike at zero" in r.reason, r.reason

    lam, N, M, mp, pl = _fits(spiked(800, 400, np.array([25.0, 30, 35, 40, 45]) * dc, rng))
    r = classify_phase(lam, N=N, M=M, mp=mp, pl=pl)
    assert lam.max() / mp.lambda_plus > 100
    assert r.phase == "rank-collapse" and "MP bulk negligible" in r.reason, r.reason

    lam, N, M, mp, pl = _fits(spiked(800, 400, np.array([4.0, 5, 6]) * dc, rng))
    assert classify_phase(lam, N=N, M=M, mp=mp, pl=pl).phase == "bulk+spikes"


def test_very_heavy_tails_are_not_rank_collapse() -> None:
    """A Cauchy matrix puts 40% of its eigenvalues below 1e-8 λ_max (frac_at_zero, the old collapse
    rule) without a gap in its spectrum: heavy-tailed, not rank-collapse."""
    rng = np.random.default_rng(10)
    W = rng.standard_cauchy((600, 300))
    lam, N, M, mp, pl = _fits(W)
    assert mp.frac_at_zero >= 0.3
    tail = entry_tail_index(W)
    assert 0.7 < tail < 1.4  # Cauchy: tail index 1
    r = classify_phase(lam, N=N, M=M, mp=mp, pl=pl, entry_tail=tail)
    assert r.phase == "heavy-tailed", r.reason
    assert wwmonitor.analyze_matrix(W).phase == "heavy-tailed"
    # this draw has one entry ~110x larger than all others: by the eigenvalues alone it is a rank-1 matrix
    # plus a bulk 1e4 below it (rule 1b); only the entries' infinite variance tells the two apart
    assert classify_phase(lam, N=N, M=M, mp=mp, pl=pl).phase == "rank-collapse"


def test_edge_fluctuation_is_random_like_not_bleeding_out() -> None:
    """An eigenvalue just past the TW margin but within 8% of λ+ is an edge fluctuation."""
    rng = np.random.default_rng(12)
    lam, N, M, mp, pl = _fits(rng.standard_normal((1000, 500)))
    for top, want in ((1.05, "random-like"), (1.2, "bleeding-out")):
        x = lam.copy()
        x[-1] = top * mp.lambda_plus
        assert x[-1] > mp.edge
        r = classify_phase(x, N=N, M=M, mp=mp, pl=pl)
        assert r.phase == want, r.reason
    assert "edge fluctuation" in classify_phase(np.r_[lam[:-1], 1.05 * mp.lambda_plus], N=N, M=M, mp=mp, pl=pl).reason


def test_bad_input() -> None:
    rng = np.random.default_rng(0)
    lam, N, M, mp, pl = _fits(rng.standard_normal((100, 60)))
    with pytest.raises(ValueError, match="no eigenvalues"):
        classify_phase(np.array([]), N=N, M=M, mp=mp, pl=pl)
    with pytest.raises(ValueError, match="NaN or Inf"):
        classify_phase(np.array([1.0, np.inf]), N=N, M=M, mp=mp, pl=pl)


def test_too_few_eigenvalues_is_undetermined() -> None:
    rng = np.random.default_rng(11)
    m = wwmonitor.analyze_matrix(rng.standard_normal((400, 3)))
    assert m.status == "too_few_evals"
    assert m.phase == UNDETERMINED
    assert "only 3 eigenvalues (< 32): too few for a reliable phase" in m.phase_reason
    assert m.mp_ks is None  # NaN KS became None, never a silent NaN


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_undetermined_below_the_minimum_size_whatever_the_spectrum(seed: int) -> None:
    """9-10 class heads and other layers under 32 eigenvalues get no coloured label, spikes or not;
    at 32 eigenvalues the 5+1 labels start."""
    rng = np.random.default_rng([seed, 16])
    for M in (9, 10, 20, MIN_PHASE_EVALS - 1):
        N = int(rng.integers(M, 40 * M))
        d = np.array([6.0]) * bbp_threshold(N / M)
        for W in (rng.standard_normal((N, M)), spiked(N, M, d, rng), rng.standard_t(2.2, (N, M))):
            m = wwmonitor.analyze_matrix(W if seed % 2 else W.T)
            assert m.phase == UNDETERMINED, (M, m.phase, m.phase_reason)
            assert f"only {M} eigenvalues" in m.phase_reason
    assert _classify(rng.standard_normal((4 * MIN_PHASE_EVALS, MIN_PHASE_EVALS))) == "random-like"
    assert UNDETERMINED in PHASE_LABELS and UNDETERMINED not in PHASES


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("shape", [(8, 8), (10, 40), (64, 64), (300, 120)])
def test_rank_one_plus_tiny_noise_is_rank_collapse_at_any_size(shape, seed: int) -> None:
    """Issue 16: a 64 x 64 rank-1 matrix + 1e-6 noise read random-like ("too few eigenvalues for an MP fit")."""
    rng = np.random.default_rng([seed, *shape])
    N, M = shape
    for eps in (1e-8, 1e-6, 1e-4):
        W = np.outer(rng.standard_normal(N), rng.standard_normal(M)) + eps * rng.standard_normal((N, M))
        m = wwmonitor.analyze_matrix(W)
        assert m.phase == "rank-collapse", (shape, eps, m.phase_reason)


def test_collapsed_gate_with_tiny_soft_rank_is_rank_collapse() -> None:
    """A 4H x H gate with a few decaying directions over a bulk ~1e-3 below (MP soft rank ~1e-6): rank-collapse."""
    rng = np.random.default_rng(17)
    for H in (24, 48, 128):
        U, V = np.linalg.qr(rng.standard_normal((4 * H, 4)))[0], np.linalg.qr(rng.standard_normal((H, 4)))[0]
        W = (U * np.array([1.0, 0.5, 0.2, 0.08])) @ V.T + 1e-3 * rng.standard_normal((4 * H, H)) / math.sqrt(4 * H)
        m = wwmonitor.analyze_matrix(W)
        assert m.mp_softrank is not None and m.mp_softrank < 1e-4
        assert m.phase == "rank-collapse", (H, m.phase_reason)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_separated_spikes_are_bulk_plus_spikes(seed: int) -> None:
    """Issue 16: one spike 50% or more above λ+ read bleeding-out, a ladder of separated spikes bulk-decay."""
    rng = np.random.default_rng([seed, 1])
    for N, M in ((200, 64), (600, 300), (1500, 250)):
        Q = N / M
        one = spiked(N, M, np.array([_strength_for_ratio(rng.uniform(1.6, 2.2), Q)]), rng)
        ladder = spiked(N, M, np.array([_strength_for_ratio(r, Q) for r in (1.6, 2.5, 3.8, 5.7)]), rng)
        near = spiked(N, M, np.array([_strength_for_ratio(1.25, Q)]), rng)
        for W, want in ((one, "bulk+spikes"), (ladder, "bulk+spikes"), (near, "bleeding-out")):
            m = wwmonitor.analyze_matrix(W)
            assert m.phase == want, (N, M, m.phase_reason)


def _strength_for_ratio(ratio: float, Q: float) -> float:
    """Spike strength d of wwmonitor.synthetic.spiked whose outlier sits at ``ratio`` λ+ (asymptotically):
    (1 + d²)(1/Q + d²)/d² = ratio (1 + 1/√Q)², solved for d²."""
    big = ratio * (1.0 + Q**-0.5) ** 2
    b = 1.0 + 1.0 / Q - big
    return math.sqrt((-b + math.sqrt(b * b - 4.0 / Q)) / 2.0)


def test_largest_entries_preselection_equals_a_full_partition():
    """entry_tail_index's sampled threshold (large matrices) keeps exactly the multiset a full partition gives,
    including ties, sorted input and a threshold sample that misses (the fallback)."""
    from wwmonitor.phases import _largest

    rng = np.random.default_rng(3)
    cases = [
        np.abs(rng.standard_normal(400_000)).astype(np.float32),
        np.sort(np.abs(rng.standard_normal(400_000))),  # the sample sees every part of a sorted array
        np.abs(np.round(rng.standard_normal(400_000), 1)),  # many ties at the threshold
        np.concatenate([np.zeros(399_000), rng.random(1_000) + 1.0])[::-1].copy(),  # the sample misses the tail
    ]
    for a in cases:
        for m in (31, 401, 5_000):
            want = np.sort(np.partition(a, a.size - m)[a.size - m :])
            assert np.array_equal(np.sort(_largest(a, m)), want)
