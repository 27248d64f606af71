"""A second, wider family suite for the phase labels (issue 16), written BEFORE the issue-16 rule changes.

Plain module (no pytest tests).  Like ``tests/phase_families.py`` it is written from the seeds' definitions
(Martin & Mahoney, "RMT-based 5+1 Phases of Training"), not from the classifier, but it goes beyond that suite:

* sizes: ``M`` log-uniform from 48 (64 for most families) to 700 and aspect ratios ``Q`` log-uniform in (1, 8)
  (the first suite: M >= 100, Q <= 4), plus tiny layers (M from 4 to 31);
* a seventh label, ``undetermined``, for layers too small for a reliable label: below
  ``MIN_RELIABLE = 32`` eigenvalues (see ``docs/phases.md`` §2.1 for why 32) a non-collapsed layer's expected
  label is ``undetermined``; a rank collapse does not need many eigenvalues, so tiny rank-deficient layers
  keep the expected label ``rank-collapse``;
* rank-1 + tiny noise (8 x 8 to 700 x 700, noise 1e-8 ... 1e-3 of the signal), collapsed gate-like matrices
  (smoothly decaying singular values, MP soft rank 1e-4 ... 1e-9), shrunk bulks under a few spikes;
* bulk+spikes at separations from 1.5 lambda+ (50% above the edge; the asymptotic BBP position) to 40 lambda+, one
  spike or ladders of several, each far beyond the Tracy-Widom scale;
* heavy-tailed entries with tail index 2 < mu < 3 (the seeds' "moderately heavy-tailed" class, "no edge") and
  0.8 < mu < 2.

Ground truth is the generating mechanism.  Where finite size makes a mechanism invisible it is stated in the
family's docstring and the parameter range is restricted to what the definition still describes; the ranges were
fixed from RMT formulas (BBP positions, Tracy-Widom scale), not from the classifier's output.  In particular the
bleeding-out families put their top outlier at least ``BLEED_TW`` (6) Tracy-Widom scales above lambda+
("lambda_max and lambda+ separate"), and tail indices above 3 are reported separately (``mu_sweep``), not scored:
at M <= 700 Student-t entries with mu > 3 give lambda_max within ~1.3 lambda+ (first suite's sanity table).

The split was written down before any classifier was run on these families (see ``WIDE_SPLIT``): per label the
families alternate tune / held-out in the listed order; tuning uses seeds ``TUNE_SEEDS`` of the tune families,
reports use seeds ``HELD_OUT_SEEDS`` of the held-out families.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from phase_families import _bbp_strength, _orthonormal, _student_t_unit, _sym_pareto, _unit_columns

LABELS = (
    "random-like",
    "bleeding-out",
    "bulk+spikes",
    "bulk-decay",
    "heavy-tailed",
    "rank-collapse",
    "undetermined",
)
#: fewest eigenvalues for which the suite expects one of the 5+1 labels (rank collapse excepted)
MIN_RELIABLE = 32
#: bleeding-out families: top outlier at least this many Tracy-Widom scales above lambda+
BLEED_TW = 6.0
TUNE_SEEDS = (200, 201)
HELD_OUT_SEEDS = (301, 302)


@dataclass(frozen=True)
class WideFamily:
    name: str
    label: str
    make: Callable[[np.random.Generator], np.ndarray]


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def _dims(rng, m_lo=64, m_hi=700, q_lo=1.0, q_hi=8.0, n_max=2400):
    """M ~ logU(m_lo, m_hi), Q ~ logU(q_lo, q_hi), N = round(Q M) (capped at n_max, never below M)."""
    m = int(round(math.exp(rng.uniform(math.log(m_lo), math.log(m_hi)))))
    q = math.exp(rng.uniform(math.log(q_lo), math.log(q_hi)))
    n = int(max(m, min(n_max, round(q * m))))
    return n, m


def _logu(rng, lo, hi, size=None):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size=size))


def _scale(rng, w):
    """Nuisance overall scale logU(1e-3, 10) (phases are scale free); float64."""
    return np.asarray(w * _logu(rng, 1e-3, 10.0), dtype=np.float64)


def _maybe_t(rng, w):
    """Orientation must not matter: transpose half of the matrices."""
    return w.T if rng.random() < 0.5 else w


def tw_rel(n, m):
    """Tracy-Widom scale over lambda+ for unit-variance noise (Johnstone): Q^-1/2 M^-2/3 (1 + Q^-1/2)^-2/3."""
    q = n / m
    return q**-0.5 * m ** (-2.0 / 3.0) * (1.0 + q**-0.5) ** (-2.0 / 3.0)


def _spikes(rng, n, m, ratios, noise=None, orthogonal=True):
    """Noise + additive rank-k signal with asymptotic outliers at ``ratios`` x lambda+ (BBP, c = M/N)."""
    ratios = np.atleast_1d(np.asarray(ratios, dtype=float))
    g = rng.standard_normal((n, m)) if noise is None else noise
    theta = np.sqrt(_bbp_strength(ratios, m / n))
    k = len(ratios)
    u, v = (
        (_orthonormal(rng, n, k), _orthonormal(rng, m, k))
        if orthogonal
        else (
            _unit_columns(rng, n, k),
            _unit_columns(rng, m, k),
        )
    )
    return g + math.sqrt(n) * (u * theta) @ v.T


def _bleed_lo(n, m):
    return max(1.1, 1.0 + BLEED_TW * tw_rel(n, m))


# ---------------------------------------------------------------------------------------------------------------
# random-like
# ---------------------------------------------------------------------------------------------------------------


def rlw_gaussian(rng):
    """iid Gaussian; M 48-700, Q 1-8."""
    n, m = _dims(rng, m_lo=48)
    return _maybe_t(rng, _scale(rng, rng.standard_normal((n, m))))


def rlw_subthreshold(rng):
    """Gaussian + 1-6 additive directions below the BBP threshold (t = f sqrt(c), f ~ U(0, 0.8))."""
    n, m = _dims(rng)
    k = int(rng.integers(1, 7))
    c = m / n
    theta = np.sqrt(rng.uniform(0.0, 0.8, k) * math.sqrt(c))
    u, v = _orthonormal(rng, n, k), _orthonormal(rng, m, k)
    return _maybe_t(rng, _scale(rng, rng.standard_normal((n, m)) + math.sqrt(n) * (u * theta) @ v.T))


def rlw_uniform_small(rng):
    """Uniform U(-1, 1) entries, small layers: M 48-128, Q 1-8."""
    n, m = _dims(rng, m_lo=48, m_hi=128)
    return _maybe_t(rng, _scale(rng, rng.uniform(-1.0, 1.0, (n, m))))


def rlw_masked_gaussian(rng):
    """Gaussian with a Bernoulli keep mask (keep probability 0.2-0.9, dropout-like pruning)."""
    n, m = _dims(rng)
    p = rng.uniform(0.2, 0.9)
    return _maybe_t(rng, _scale(rng, rng.standard_normal((n, m)) * (rng.random((n, m)) < p)))


# ---------------------------------------------------------------------------------------------------------------
# bleeding-out: top outlier between max(1.1, 1 + 6 TW) and 1.4 lambda+, others pulled just out of the edge
# ---------------------------------------------------------------------------------------------------------------


def bow_single(rng):
    """One additive spike, outlier at U(lo, 1.4) lambda+, lo = max(1.1, 1 + 6 TW scales); M 100-700, Q 1-8."""
    n, m = _dims(rng, m_lo=100)
    return _maybe_t(rng, _scale(rng, _spikes(rng, n, m, rng.uniform(_bleed_lo(n, m), 1.4))))


def bow_cluster(rng):
    """3-12 random-direction spikes at U(1.02, 1.4) lambda+, top forced >= lo: a cluster leaving the edge."""
    n, m = _dims(rng, m_lo=100)
    k = int(rng.integers(3, 13))
    r = rng.uniform(1.02, 1.4, k)
    r[0] = max(r[0], rng.uniform(_bleed_lo(n, m), 1.4))
    return _maybe_t(rng, _scale(rng, _spikes(rng, n, m, r, orthogonal=False)))


def bow_spiked_covariance(rng):
    """Rows ~ N(0, I + sum t_k v v^T), 1-4 directions, outliers at U(1.03, 1.4), top >= lo; Q 1-8."""
    n, m = _dims(rng, m_lo=100)
    k = int(rng.integers(1, 5))
    r = rng.uniform(1.03, 1.4, k)
    r[0] = max(r[0], rng.uniform(_bleed_lo(n, m), 1.4))
    t = _bbp_strength(r, m / n)
    v = _orthonormal(rng, m, k)
    g = rng.standard_normal((n, m))
    return _maybe_t(rng, _scale(rng, g + ((g @ v) * (np.sqrt(1.0 + t) - 1.0)) @ v.T))


def bow_small(rng):
    """Small layers, M 64-128: 1-3 spikes at U(lo, 1.45) lambda+ (lo >= 1 + 6 TW, about 1.25-1.4 here)."""
    n, m = _dims(rng, m_lo=64, m_hi=128)
    k = int(rng.integers(1, 4))
    lo = _bleed_lo(n, m)
    r = rng.uniform(1.02, 1.45, k)
    r[0] = rng.uniform(lo, max(lo + 0.02, 1.45))
    return _maybe_t(rng, _scale(rng, _spikes(rng, n, m, r)))


# ---------------------------------------------------------------------------------------------------------------
# bulk+spikes: every spike >= 1.5 lambda+ (asymptotic), bulk intact
# ---------------------------------------------------------------------------------------------------------------


def bsw_single(rng):
    """One spike at logU(1.5, 30) lambda+; M 64-700, Q 1-8."""
    n, m = _dims(rng)
    return _maybe_t(rng, _scale(rng, _spikes(rng, n, m, _logu(rng, 1.5, 30.0))))


def bsw_ladder(rng):
    """2-6 spikes: the lowest at U(1.5, 2.5) lambda+, each next one x U(1.2, 1.8) (capped at 40)."""
    n, m = _dims(rng)
    k = int(rng.integers(2, 7))
    r = [rng.uniform(1.5, 2.5)]
    for _ in range(k - 1):
        r.append(min(40.0, r[-1] * rng.uniform(1.2, 1.8)))
    return _maybe_t(rng, _scale(rng, _spikes(rng, n, m, r)))


def bsw_independent_rademacher(rng):
    """Rademacher noise + 2-8 random-direction spikes at independent logU(1.6, 40) lambda+ (some nearly equal)."""
    n, m = _dims(rng)
    k = int(rng.integers(2, 9))
    noise = rng.choice((-1.0, 1.0), size=(n, m))
    return _maybe_t(rng, _scale(rng, _spikes(rng, n, m, _logu(rng, 1.6, 40.0, k), noise=noise, orthogonal=False)))


def bsw_small(rng):
    """Small layers, M 48-100: 1-3 spikes at logU(1.8, 30) lambda+."""
    n, m = _dims(rng, m_lo=48, m_hi=100)
    k = int(rng.integers(1, 4))
    return _maybe_t(rng, _scale(rng, _spikes(rng, n, m, _logu(rng, 1.8, 30.0, k))))


# ---------------------------------------------------------------------------------------------------------------
# bulk-decay: a continuum of many signal directions leaving an intact bulk, reach 2-12 lambda+
# ---------------------------------------------------------------------------------------------------------------


def _continuum(rng, n, m, ratios):
    """Gaussian + signal whose k-th direction targets ratios[k] (<= 1: sub-threshold, t = ratio sqrt(c))."""
    c = m / n
    ratios = np.asarray(ratios, dtype=float)
    t = np.where(ratios > 1.0, _bbp_strength(np.maximum(ratios, 1.0), c), ratios * math.sqrt(c))
    k = len(ratios)
    u, v = _orthonormal(rng, n, k), _orthonormal(rng, m, k)
    return rng.standard_normal((n, m)) + math.sqrt(n) * (u * np.sqrt(t)) @ v.T


def bdw_geometric(rng):
    """r = 10-50% of M directions, ratios top q^k, top ~ logU(2, 12), reaching the edge after 30-90% of them."""
    n, m = _dims(rng)
    r = max(8, int(rng.uniform(0.1, 0.5) * m))
    top = _logu(rng, 2.0, 12.0)
    q = top ** (-1.0 / max(4, int(rng.uniform(0.3, 0.9) * r)))
    return _maybe_t(rng, _scale(rng, _continuum(rng, n, m, top * q ** np.arange(r))))


def bdw_powerlaw_small(rng):
    """Small layers M 64-150: r = 15-50% of M directions, ratios top (k+1)^-p, top ~ U(2, 8), p ~ U(0.3, 1)."""
    n, m = _dims(rng, m_lo=64, m_hi=150)
    r = max(10, int(rng.uniform(0.15, 0.5) * m))
    top, p = rng.uniform(2.0, 8.0), rng.uniform(0.3, 1.0)
    return _maybe_t(rng, _scale(rng, _continuum(rng, n, m, top * (np.arange(r) + 1.0) ** (-p))))


def bdw_smooth_covariance(rng):
    """Rows ~ N(0, O diag(1 + a exp(-k / tau)) O^T), tau = 5-30% of M, a set for a top outlier at U(2, 12) lambda+."""
    n, m = _dims(rng)
    tau = rng.uniform(0.05, 0.3) * m
    a = float(_bbp_strength(rng.uniform(2.0, 12.0), m / n))
    d = np.sqrt(1.0 + a * np.exp(-np.arange(m) / tau))
    o = _orthonormal(rng, m, m)
    return _maybe_t(rng, _scale(rng, (rng.standard_normal((n, m)) * d) @ o.T))


def bdw_linear_ramp(rng):
    """r = 10-40% of M directions with ratios evenly spaced from top ~ U(2, 8) down to 0.6 (into the bulk)."""
    n, m = _dims(rng)
    r = max(8, int(rng.uniform(0.1, 0.4) * m))
    top = rng.uniform(2.0, 8.0)
    return _maybe_t(rng, _scale(rng, _continuum(rng, n, m, np.linspace(top, 0.6, r))))


# ---------------------------------------------------------------------------------------------------------------
# heavy-tailed: iid heavy-tailed entries (tail index mu), no MP edge
# ---------------------------------------------------------------------------------------------------------------


def htw_student_t_moderate(rng):
    """Student-t entries, df = mu ~ U(2.05, 3) ("moderately heavy-tailed", 2 < mu < 4 in the seeds' table)."""
    n, m = _dims(rng, m_lo=100)
    return _maybe_t(rng, _scale(rng, rng.standard_t(rng.uniform(2.05, 3.0), size=(n, m))))


def htw_pareto_moderate(rng):
    """Symmetric Pareto entries, mu ~ U(2.05, 3)."""
    n, m = _dims(rng, m_lo=100)
    return _maybe_t(rng, _scale(rng, _sym_pareto(rng, rng.uniform(2.05, 3.0), (n, m))))


def htw_very_heavy(rng):
    """Student-t or Pareto entries with mu ~ U(0.8, 2) ("very heavy-tailed")."""
    n, m = _dims(rng)
    mu = rng.uniform(0.8, 2.0)
    w = rng.standard_t(mu, size=(n, m)) if rng.random() < 0.5 else _sym_pareto(rng, mu, (n, m))
    return _maybe_t(rng, _scale(rng, w))


def htw_small(rng):
    """Small layers M 48-128: Student-t entries with mu ~ U(1.2, 2.5)."""
    n, m = _dims(rng, m_lo=48, m_hi=128)
    return _maybe_t(rng, _scale(rng, rng.standard_t(rng.uniform(1.2, 2.5), size=(n, m))))


# ---------------------------------------------------------------------------------------------------------------
# rank-collapse (any size, tiny ones included)
# ---------------------------------------------------------------------------------------------------------------


def rcw_rank1_noise(rng):
    """Rank 1 (u v^T) plus iid noise of relative size eps ~ logU(1e-8, 1e-3) per entry; M 8-700, Q 1-8."""
    n, m = _dims(rng, m_lo=8, m_hi=700)
    w = np.outer(rng.standard_normal(n), rng.standard_normal(m)) / math.sqrt(m)
    w += _logu(rng, 1e-8, 1e-3) * rng.standard_normal((n, m))
    return _maybe_t(rng, _scale(rng, w))


def rcw_lowrank_small(rng):
    """Small layers M 8-128: rank r = 1 ... max(1, 25% M) product plus noise of relative size logU(1e-7, 1e-3)."""
    n, m = _dims(rng, m_lo=8, m_hi=128)
    r = int(rng.integers(1, max(1, m // 4) + 1))
    w = rng.standard_normal((n, r)) @ rng.standard_normal((r, m)) / math.sqrt(r)
    w += _logu(rng, 1e-7, 1e-3) * rng.standard_normal((n, m))
    return _maybe_t(rng, _scale(rng, w))


def rcw_gate_collapse(rng):
    """Collapsed gate-like layer: N = g H (g in {3, 4}, GRU/LSTM stacked gates), M = H ~ logU(16, 256);
    k = max(1, min(12, M/8)) singular values s_k = exp(-k / tau), tau ~ U(0.3, 3) (a few directions, smoothly decaying),
    on top of a bulk
    of iid noise shrunk to eps ~ logU(1e-5, 1e-3) of s_0 (MP soft rank about eps^2 * Q-dependent factor)."""
    h = int(round(_logu(rng, 16, 256)))
    n, m = int(rng.choice((3, 4))) * h, h
    k = max(1, min(12, m // 8))
    s = np.exp(-np.arange(k) / rng.uniform(0.3, 3.0))
    u, v = _orthonormal(rng, n, k), _orthonormal(rng, m, k)
    eps = _logu(rng, 1e-5, 1e-3)
    w = (u * s) @ v.T + eps * rng.standard_normal((n, m)) / math.sqrt(n)
    return _maybe_t(rng, _scale(rng, w))


def rcw_shrunk_bulk(rng):
    """Weight-decay-like: Gaussian + 1-10 spikes at logU(2, 30) lambda+, then every singular value but the top
    k = 1-10 multiplied by f ~ logU(1e-4, 3e-3); M 32-700, Q 1-8."""
    n, m = _dims(rng, m_lo=32)
    base = _spikes(rng, n, m, _logu(rng, 2.0, 30.0, int(rng.integers(1, 11))))
    u, s, vt = np.linalg.svd(base, full_matrices=False)
    k = int(rng.integers(1, 11))
    s[k:] *= _logu(rng, 1e-4, 3e-3)
    return _maybe_t(rng, _scale(rng, (u * s) @ vt))


# ---------------------------------------------------------------------------------------------------------------
# undetermined: too few eigenvalues (M < MIN_RELIABLE) and not rank-deficient
# ---------------------------------------------------------------------------------------------------------------


def und_tiny_mixed(rng):
    """M 4-31, Q 1-16: Gaussian, Gaussian + 1-2 spikes (logU(1.5, 20) lambda+) or Student-t (mu 1.5-3) entries."""
    m = int(rng.integers(4, MIN_RELIABLE))
    n = int(round(m * _logu(rng, 1.0, 16.0)))
    kind = int(rng.integers(0, 3))
    if kind == 0:
        w = rng.standard_normal((n, m))
    elif kind == 1:
        w = _spikes(rng, n, m, _logu(rng, 1.5, 20.0, int(rng.integers(1, 3))))
    else:
        w = rng.standard_t(rng.uniform(1.5, 3.0), size=(n, m))
    return _maybe_t(rng, _scale(rng, w))


def und_classifier_head(rng):
    """Output layers with 9-10 classes: 9 or 10 x N (N 32-1024), Gaussian + 0-3 spikes at logU(1.2, 30) lambda+."""
    m = int(rng.choice((9, 10)))
    n = int(round(_logu(rng, 32, 1024)))
    k = int(rng.integers(0, 4))
    w = _spikes(rng, n, m, _logu(rng, 1.2, 30.0, k)) if k else rng.standard_normal((n, m))
    return _maybe_t(rng, _scale(rng, w))


# ---------------------------------------------------------------------------------------------------------------
# registry, split (written down before any classifier ran on these families), suite
# ---------------------------------------------------------------------------------------------------------------

_ALL: dict[str, list[Callable[[np.random.Generator], np.ndarray]]] = {
    "random-like": [rlw_gaussian, rlw_subthreshold, rlw_uniform_small, rlw_masked_gaussian],
    "bleeding-out": [bow_single, bow_cluster, bow_spiked_covariance, bow_small],
    "bulk+spikes": [bsw_single, bsw_ladder, bsw_independent_rademacher, bsw_small],
    "bulk-decay": [bdw_geometric, bdw_powerlaw_small, bdw_smooth_covariance, bdw_linear_ramp],
    "heavy-tailed": [htw_student_t_moderate, htw_pareto_moderate, htw_very_heavy, htw_small],
    "rank-collapse": [rcw_rank1_noise, rcw_lowrank_small, rcw_gate_collapse, rcw_shrunk_bulk],
    "undetermined": [und_tiny_mixed, und_classifier_head],
}
WIDE_FAMILIES: dict[str, list[WideFamily]] = {
    label: [WideFamily(f.__name__, label, f) for f in fns] for label, fns in _ALL.items()
}
#: tune / held-out families per label: alternate in the listed order (even index -> tune)
WIDE_SPLIT: dict[str, tuple[list[str], list[str]]] = {
    label: ([f.name for f in fams[0::2]], [f.name for f in fams[1::2]]) for label, fams in WIDE_FAMILIES.items()
}


def wide_suite(split: str, n_per_family: int, seed: int) -> list[tuple[str, str, np.ndarray]]:
    """``(label, family, W)`` for every family of ``split`` ("tune", "held_out" or "all")."""
    if split not in ("tune", "held_out", "all"):
        raise ValueError(f"split must be 'tune', 'held_out' or 'all', not {split!r}")
    out = []
    for label in LABELS:
        tune, held = WIDE_SPLIT[label]
        keep = set(tune if split == "tune" else held if split == "held_out" else tune + held)
        for fam in WIDE_FAMILIES[label]:
            if fam.name in keep:
                rng = np.random.default_rng([int(seed), zlib.crc32(fam.name.encode())])
                out.extend((label, fam.name, fam.make(rng)) for _ in range(n_per_family))
    return out


def mu_sweep(mus=(2.1, 2.4, 2.7, 3.0, 3.3, 3.6, 3.9), n_per_mu=10, seed=0):
    """Student-t matrices (M 100-700, Q 1-8) at fixed tail indices, for the reported (not scored) mu table."""
    out = []
    for mu in mus:
        rng = np.random.default_rng([int(seed), int(mu * 1000)])
        for _ in range(n_per_mu):
            n, m = _dims(rng, m_lo=100)
            out.append((mu, _scale(rng, _student_t_unit(rng, mu, (n, m)))))
    return out
