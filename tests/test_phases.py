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
from wwmonitor.phases import PHASES, PhaseResult, classify_phase, phase_features
from wwmonitor.powerlaw import fit_powerlaw
from wwmonitor.synthetic import PHASE_GENERATORS, bbp_threshold, spiked

sys.path.insert(0, str(Path(__file__).parent))
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


@functools.lru_cache(maxsize=4)
def family_confusion(split: str = "held_out", n_per_family: int = HELD_OUT_N, seed: int = HELD_OUT_SEED):
    """Confusion matrix of the classifier (full analyze_matrix path) on tests/phase_families.py."""
    C = np.zeros((len(PHASES), len(PHASES)), dtype=int)
    misses = []
    for phase, family, W in family_suite(split, n_per_family, seed):
        got = _classify(W)
        C[PHASES.index(phase), PHASES.index(got)] += 1
        if got != phase:
            misses.append((phase, got, family, W.shape))
    return C, tuple(misses)


#: held-out seeds never looked at while the rules were written (seed 0 was: its misses were studied)
CLEAN_SEEDS = (1, 2)
#: 18 held-out families x 20 matrices x 2 seeds = 720 matrices (~25 s)
CLEAN_N = 20


def test_phase_accuracy_on_independent_held_out_families(capsys) -> None:
    """The issue's target on the held-out families of tests/phase_families.py (not tuned on):
    >= 95% overall and every class >= 85%, on 720 matrices from the two clean seeds."""
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
    lam, N, M, mp, pl = _fits(rng.standard_cauchy((600, 300)))
    assert mp.frac_at_zero >= 0.3
    r = classify_phase(lam, N=N, M=M, mp=mp, pl=pl)
    assert r.phase == "heavy-tailed", r.reason
    assert phase_features(lam, mp, pl)["collapse_gap"] < 100


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


def test_too_few_eigenvalues_is_flagged_in_reason() -> None:
    rng = np.random.default_rng(11)
    m = wwmonitor.analyze_matrix(rng.standard_normal((400, 3)))
    assert m.status == "too_few_evals"
    assert m.phase == "random-like"  # a Gaussian matrix: its 3 eigenvalues sit inside the MP bulk
    assert "too few eigenvalues for an MP fit" in m.phase_reason
    assert "only 3 eigenvalues, phase unreliable" in m.phase_reason
    assert m.mp_ks is None  # NaN KS became None, never a silent NaN
