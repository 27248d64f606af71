"""Independent random-matrix families for the "5+1 phases" of Heavy-Tailed Self-Regularization.

This is a plain module (no pytest tests).  It is written from the phase definitions in the source documents
(Martin & Mahoney, KDD 2019 tutorial, "RMT-based 5+1 Phases of Training"), NOT from wwmonitor's classifier:
the point is a validation set whose generators were not shaped by our rules.

The model of the tutorial is ``W ~ W_rand + Delta_sig`` (eq. 1), and the phases are read from the ESD of
``X = W^T W / N`` for ``W`` of shape ``N x M`` (``N >= M``, ``Q = N/M``), whose Marchenko-Pastur (MP) bulk for iid
entries of variance ``sigma^2`` sits in ``[lambda-, lambda+]``, ``lambda+- = sigma^2 (1 +- 1/sqrt(Q))^2``:

=============  ================================================================================================
random-like    ESD well fit by MP with the appropriate lambda+; ``|Delta_sig|`` zero or small; lambda_max ~ lambda+
               (sharp edge, Tracy-Widom fluctuations).
bleeding-out   ESD random-like, except for eigenmass just above lambda+: spikes "pull out" of the bulk edge at
               the BBP transition (``|Delta_sig|`` medium); lambda_max and lambda+ separate, but only slightly.
bulk+spikes    ESD random-like plus >= 1 spikes well above lambda+ (low-rank ``Delta_sig`` well separated from
               ``W_rand``); the bulk stays intact.
bulk-decay     ESD less random-like: heavy-tailed eigenmass above lambda+ (a decaying continuum, "edge above
               lambda+ not concave"), some spikes; ``Delta_sig`` has correlations that don't fully enter a spike.
heavy-tailed   ESD better described by heavy-tailed RMT than by Gaussian RMT: no good lambda+, lambda_max >>
               lambda+, power-law tail (``W_rand`` small; ``Delta_sig`` large and strongly correlated).
rank-collapse  ESD has a large-mass spike at lambda = 0: W very rank-deficient (over-regularization).
=============  ================================================================================================

Conventions shared by every family (documented once here, not repeated in every docstring):

* shape: ``Q ~ U(1, 4)`` (some families narrow it), then ``M`` uniform in ``[max(100, 200/Q), min(600, 1200/Q)]``
  and ``N = round(Q M)``; so ``200 <= N <= 1200``, ``100 <= M <= 600``, ``N >= M``;
* a nuisance overall scale ``s ~ logU(1e-2, 1)`` multiplies every matrix (phases are scale free);
* "noise" means iid entries of unit variance unless a family says otherwise; signal strengths are set in units
  of the noise MP edge via the BBP formulas (see ``_bbp_strength``), so "ratio" = asymptotic lambda / lambda+.

Finite-size notes (found with the sanity table, M = 100..600): Student-t entries with df >= 5 and Pareto entries
with tail index >= 3.5 are indistinguishable from MP here (lambda_max ~ lambda+), and tail index ~ 3 only reaches
~1.2-3 lambda+; so the heavy-tailed families use tail indices <= 2.5-2.6 and the "MP + PL tail" Student-t family of
bleeding-out uses df 3.5-4.5.  Very heavy tails (alpha-stable, Pareto mu < 2) put most eigenvalues below
1e-3 lambda_max (the ESD spans many decades) without any rank deficiency: "many eigenvalues below 1e-3 lambda_max"
alone does not mean rank collapse.

``FAMILIES`` maps each phase to its families (six each), ``HELD_OUT_SPLIT`` fixes a tuning / held-out split
(alternating in the listed order, chosen before any classifier was looked at) and ``suite`` draws matrices.
``python tests/phase_families.py`` prints a sanity table of plain-numpy ESD statistics per family.
"""

from __future__ import annotations

import math
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

PHASES = ("random-like", "bleeding-out", "bulk+spikes", "bulk-decay", "heavy-tailed", "rank-collapse")


@dataclass(frozen=True)
class Family:
    """One generator family: ``make(rng)`` returns one fresh random ``W`` (N x M, N >= M) of phase ``phase``."""

    name: str
    phase: str
    make: Callable[[np.random.Generator], np.ndarray]
    description: str


# ---------------------------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------------------------


def _dims(rng: np.random.Generator, q_lo: float = 1.0, q_hi: float = 4.0, m_min: int = 100) -> tuple[int, int]:
    """Draw (N, M) with Q = N/M ~ U(q_lo, q_hi), max(100, m_min) <= M <= 600, 200 <= N <= 1200."""
    q = rng.uniform(q_lo, min(q_hi, 1200 / m_min))
    m_lo = max(100, m_min, math.ceil(200 / q))
    m_hi = min(600, math.floor(1200 / q))
    m = int(rng.integers(m_lo, m_hi + 1))
    n = int(min(1200, max(m, round(q * m))))
    return n, m


def _loguniform(rng: np.random.Generator, lo: float, hi: float, size=None):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size=size))


def _scale(rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
    """Apply the nuisance overall scale s ~ logU(1e-2, 1) and return float64."""
    return np.asarray(w * _loguniform(rng, 1e-2, 1.0), dtype=np.float64)


def _orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n x k matrix with orthonormal columns, Haar distributed."""
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.sign(np.diag(r))


def _unit_columns(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n x k matrix of independent random unit vectors (not orthogonalized)."""
    v = rng.standard_normal((n, k))
    return v / np.linalg.norm(v, axis=0)


def _bbp_strength(ratio, c):
    """Signal strength t that puts an outlier at ``ratio * lambda+`` (asymptotically).

    Two models share the same formula, with ``c`` = (dimension / samples) of the side that carries the signal:

    * additive ``W = G + sqrt(N) * sum_k sqrt(t_k) u_k v_k^T`` (G iid unit variance, c = M/N): the outlier of
      ``X = W^T W / N`` is ``(1 + t)(c + t) / t`` for ``t > sqrt(c)``  (Benaych-Georges & Nadakuditi);
    * spiked covariance, rows of W ~ N(0, I + sum_k t_k v_k v_k^T) (c = M/N), or columns ~ N(0, I + ...) in
      R^N (c = N/M, then ``X`` is rescaled by 1/Q): outlier ``(1 + t)(1 + c/t)`` for ``t > sqrt(c)`` (BBP).

    Both equal ``ratio * (1 + sqrt(c))^2`` at the larger root of ``t^2 + (1 + c - R) t + c = 0``,
    ``R = ratio (1 + sqrt(c))^2``; ``ratio = 1`` gives the threshold ``t = sqrt(c)``.
    """
    ratio = np.asarray(ratio, dtype=float)
    big_r = ratio * (1.0 + np.sqrt(c)) ** 2
    b = 1.0 + c - big_r
    disc = np.maximum(b * b - 4.0 * c, 0.0)
    return (-b + np.sqrt(disc)) / 2.0


def _additive_spikes(rng, n, m, ratios, orthogonal=True, noise=None):
    """Noise (default Gaussian) + rank-len(ratios) additive signal with outliers at ``ratios * lambda+``."""
    ratios = np.atleast_1d(np.asarray(ratios, dtype=float))
    c = m / n
    g = rng.standard_normal((n, m)) if noise is None else noise
    theta = np.sqrt(_bbp_strength(ratios, c))
    k = len(ratios)
    if orthogonal:
        u, v = _orthonormal(rng, n, k), _orthonormal(rng, m, k)
    else:
        u, v = _unit_columns(rng, n, k), _unit_columns(rng, m, k)
    return g + math.sqrt(n) * (u * theta) @ v.T


def _sym_pareto(rng, mu, size):
    """Symmetric Pareto entries: |x| ~ Pareto(tail index mu, x_min = 1), random signs."""
    mag = (1.0 - rng.random(size)) ** (-1.0 / mu)
    return mag * rng.choice((-1.0, 1.0), size=size)


def _student_t_unit(rng, df, size):
    """Student-t entries rescaled to unit variance (df > 2)."""
    return rng.standard_t(df, size=size) * math.sqrt((df - 2.0) / df)


def _sym_stable(rng, alpha, size):
    """Symmetric alpha-stable entries (beta = 0, unit scale), Chambers-Mallows-Stuck; alpha = 1 is Cauchy."""
    u = rng.uniform(-np.pi / 2, np.pi / 2, size)
    e = rng.standard_exponential(size)
    if abs(alpha - 1.0) < 1e-9:
        return np.tan(u)
    return (np.sin(alpha * u) / np.cos(u) ** (1.0 / alpha)) * (np.cos((1.0 - alpha) * u) / e) ** ((1.0 - alpha) / alpha)


def _signal_from_factors(a, b):
    """Singular values of A @ B.T (A: N x r, B: M x r) without forming the product's SVD."""
    qa, ra = np.linalg.qr(a)
    qb, rb = np.linalg.qr(b)
    return np.linalg.svd(ra @ rb.T, compute_uv=False)


# ---------------------------------------------------------------------------------------------------------------
# random-like
# ---------------------------------------------------------------------------------------------------------------


def rl_gaussian(rng):
    """Gaussian iid N(0, 1) entries; Q ~ U(1, 4)."""
    n, m = _dims(rng)
    return _scale(rng, rng.standard_normal((n, m)))


def rl_uniform(rng):
    """Uniform iid entries U(-1, 1) (Kaiming/Glorot-uniform-like init); Q ~ U(1, 4)."""
    n, m = _dims(rng)
    return _scale(rng, rng.uniform(-1.0, 1.0, (n, m)))


def rl_rademacher(rng):
    """Rademacher iid +-1 entries; Q ~ U(1, 4)."""
    n, m = _dims(rng)
    return _scale(rng, rng.choice((-1.0, 1.0), size=(n, m)))


def rl_sparse_bernoulli_gaussian(rng):
    """Sparse Bernoulli-Gaussian: each entry N(0, 1) with probability p ~ U(0.1, 0.5), else exactly 0; Q ~ U(1, 4)."""
    n, m = _dims(rng)
    p = rng.uniform(0.1, 0.5)
    return _scale(rng, rng.standard_normal((n, m)) * (rng.random((n, m)) < p))


def rl_subthreshold_lowrank(rng):
    """Gaussian + rank r ~ {1, 2, 3} additive perturbation with strength sqrt(t), t = f * sqrt(c), f ~ U(0.1, 0.5):
    well below the BBP threshold t = sqrt(c) (c = M/N), so no eigenvalue leaves the bulk; Q ~ U(1, 4)."""
    n, m = _dims(rng)
    c = m / n
    r = int(rng.integers(1, 4))
    theta = np.sqrt(rng.uniform(0.1, 0.5, r) * math.sqrt(c))
    u, v = _orthonormal(rng, n, r), _orthonormal(rng, m, r)
    return _scale(rng, rng.standard_normal((n, m)) + math.sqrt(n) * (u * theta) @ v.T)


def rl_truncated_normal(rng):
    """Truncated normal iid entries (trunc_normal init), cut at +-a, a ~ U(1.5, 3) standard deviations; Q ~ U(1, 4)."""
    n, m = _dims(rng)
    a = rng.uniform(1.5, 3.0)
    w = rng.standard_normal((n, m))
    bad = np.abs(w) > a
    while bad.any():
        w[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(w) > a
    return _scale(rng, w)


# ---------------------------------------------------------------------------------------------------------------
# bleeding-out
# ---------------------------------------------------------------------------------------------------------------


def bo_near_bbp_few(rng):
    """Gaussian + r ~ {1, 2, 3} orthogonal additive spikes just above the BBP threshold: top outlier at
    ratio ~ U(1.12, 1.4) lambda+, the others ~ U(1.05, top); Q ~ U(1, 4), M >= 150 (edge fluctuations)."""
    n, m = _dims(rng, m_min=150)
    r = int(rng.integers(1, 4))
    top = rng.uniform(1.12, 1.4)
    ratios = np.concatenate([[top], rng.uniform(1.05, top, r - 1)])
    return _scale(rng, _additive_spikes(rng, n, m, ratios))


def bo_near_bbp_many(rng):
    """Gaussian + r ~ U{4..10} random-direction (non-orthogonalized) additive spikes, outliers at ratios
    ~ U(1.03, 1.3) lambda+ (top forced >= 1.12): a small cluster of eigenvalues escaping the edge; Q ~ U(1, 4)."""
    n, m = _dims(rng)
    r = int(rng.integers(4, 11))
    ratios = rng.uniform(1.03, 1.3, r)
    ratios[0] = max(ratios[0], rng.uniform(1.12, 1.3))
    return _scale(rng, _additive_spikes(rng, n, m, ratios, orthogonal=False))


def bo_near_bbp_spiked_covariance(rng):
    """Spiked covariance, rows ~ N(0, I + sum_k t_k v_k v_k^T), r ~ U{1..6} random orthonormal v_k, t_k set so the
    sample outliers sit at ratios ~ U(1.05, 1.35) lambda+ (top forced >= 1.12); Q ~ U(1, 4)."""
    n, m = _dims(rng)
    r = int(rng.integers(1, 7))
    ratios = rng.uniform(1.05, 1.35, r)
    ratios[0] = max(ratios[0], rng.uniform(1.12, 1.35))
    t = _bbp_strength(ratios, m / n)
    v = _orthonormal(rng, m, r)
    g = rng.standard_normal((n, m))
    w = g + ((g @ v) * (np.sqrt(1.0 + t) - 1.0)) @ v.T
    return _scale(rng, w)


def bo_localized_columns(rng):
    """Gaussian where r ~ U{1..8} random columns have inflated variance 1 + t_k (axis-aligned spiked covariance,
    localized eigenvectors), t_k set for outliers at ratios ~ U(1.05, 1.4) lambda+ (top ~ U(1.12, 1.35) or more);
    Q ~ U(1, 4)."""
    n, m = _dims(rng)
    r = int(rng.integers(1, 9))
    ratios = rng.uniform(1.05, 1.4, r)
    ratios[0] = max(ratios[0], rng.uniform(1.12, 1.35))
    t = _bbp_strength(ratios, m / n)
    w = rng.standard_normal((n, m))
    cols = rng.choice(m, size=r, replace=False)
    w[:, cols] *= np.sqrt(1.0 + t)
    return _scale(rng, w)


def bo_student_t_noise(rng):
    """Student-t iid entries (unit variance), df ~ U(3.5, 4.5): at these sizes the few largest entries pull a little
    eigenmass just past lambda+ ("MP + PL tail"; df >= 5 is indistinguishable from MP here). Each draw is
    conditioned (rejection, <= 30 tries) on the oracle edge (known unit variance): 1.08 <= lambda_max / lambda+
    <= 1.5 with at most max(3, 3% of M) eigenvalues above lambda+; Q ~ U(1.5, 4)."""
    for _ in range(30):
        n, m = _dims(rng, 1.5, 4.0)
        w = _student_t_unit(rng, rng.uniform(3.5, 4.5), (n, m))
        ev = np.linalg.eigvalsh(w.T @ w / n)
        lam_plus = (1.0 + math.sqrt(m / n)) ** 2
        if 1.08 <= ev[-1] / lam_plus <= 1.5 and np.sum(ev > lam_plus) <= max(3, 0.03 * m):
            break
    return _scale(rng, w)


def bo_row_covariance_uniform_noise(rng):
    """Uniform U(-sqrt3, sqrt3) noise with r ~ U{1..5} spiked *row* directions u_k in R^N:
    W = (I + sum_k (sqrt(1 + t_k) - 1) u_k u_k^T) G, t_k set (with c = N/M) for outliers at ratios ~ U(1.05, 1.4)
    lambda+ (top ~ U(1.12, 1.35) or more); Q ~ U(1, 4)."""
    n, m = _dims(rng)
    r = int(rng.integers(1, 6))
    ratios = rng.uniform(1.05, 1.35, r)
    ratios[0] = max(ratios[0], rng.uniform(1.12, 1.35))
    t = _bbp_strength(ratios, n / m)
    u = _orthonormal(rng, n, r)
    g = rng.uniform(-math.sqrt(3.0), math.sqrt(3.0), (n, m))
    w = g + (u * (np.sqrt(1.0 + t) - 1.0)) @ (u.T @ g)
    return _scale(rng, w)


# ---------------------------------------------------------------------------------------------------------------
# bulk+spikes
# ---------------------------------------------------------------------------------------------------------------


def _n_spikes(rng, m, lo=1, hi=20):
    return int(rng.integers(lo, min(hi, m // 10) + 1))


def bs_orthogonal_spikes(rng):
    """Gaussian + rank r ~ U{1..min(20, M/10)} additive signal with orthonormal directions, outliers at ratios
    ~ logU(3, 50) lambda+ (well separated); Q ~ U(1, 4)."""
    n, m = _dims(rng)
    r = _n_spikes(rng, m)
    return _scale(rng, _additive_spikes(rng, n, m, _loguniform(rng, 3.0, 50.0, r)))


def bs_random_direction_spikes_rademacher(rng):
    """Rademacher +-1 noise + rank r ~ U{1..min(10, M/10)} additive signal along independent random unit vectors
    (not orthogonalized), outliers at ratios ~ logU(3, 50) lambda+; Q ~ U(1, 4)."""
    n, m = _dims(rng)
    r = _n_spikes(rng, m, 1, 10)
    noise = rng.choice((-1.0, 1.0), size=(n, m))
    return _scale(rng, _additive_spikes(rng, n, m, _loguniform(rng, 3.0, 50.0, r), orthogonal=False, noise=noise))


def bs_spiked_column_covariance(rng):
    """Spiked covariance (correlated entries within each row): rows ~ N(0, I + sum_k t_k v_k v_k^T),
    r ~ U{1..min(20, M/10)}, t_k set for outliers at ratios ~ logU(3, 50) lambda+; Q ~ U(1, 4)."""
    n, m = _dims(rng)
    r = _n_spikes(rng, m)
    t = _bbp_strength(_loguniform(rng, 3.0, 50.0, r), m / n)
    v = _orthonormal(rng, m, r)
    g = rng.standard_normal((n, m))
    return _scale(rng, g + ((g @ v) * (np.sqrt(1.0 + t) - 1.0)) @ v.T)


def bs_spiked_row_covariance(rng):
    """Correlated rows: W = (I_N + sum_k (sqrt(1 + t_k) - 1) u_k u_k^T) G, r ~ U{1..min(20, M/10)} directions in R^N,
    t_k set (c = N/M) for outliers at ratios ~ logU(3, 50) lambda+; Q ~ U(1, 4)."""
    n, m = _dims(rng)
    r = _n_spikes(rng, m)
    t = _bbp_strength(_loguniform(rng, 3.0, 50.0, r), n / m)
    u = _orthonormal(rng, n, r)
    g = rng.standard_normal((n, m))
    return _scale(rng, g + (u * (np.sqrt(1.0 + t) - 1.0)) @ (u.T @ g))


def bs_mean_shift(rng):
    """Gaussian with a nonzero common mean mu (all entries shifted): W = G + mu 1 1^T, a rank-1 spike, mu set for an
    outlier at ratio ~ logU(3, 50) lambda+ (theta = mu sqrt(M)); optionally (p = 1/2) plus 1-3 column-group
    mean offsets at ratios ~ logU(3, 20); Q ~ U(1, 4)."""
    n, m = _dims(rng)
    c = m / n
    w = rng.standard_normal((n, m))
    mu = math.sqrt(_bbp_strength(_loguniform(rng, 3.0, 50.0), c)) / math.sqrt(m)
    w += mu * rng.choice((-1.0, 1.0))
    if rng.random() < 0.5:
        # disjoint column groups, each with its own mean on a random half of the rows: extra rank-1 terms
        k = int(rng.integers(1, 4))
        groups = np.array_split(rng.permutation(m), k + 1)[:k]
        for grp in groups:
            rows = rng.random(n) < 0.5
            theta = math.sqrt(_bbp_strength(_loguniform(rng, 3.0, 20.0), c))
            w[np.ix_(rows, grp)] += theta * math.sqrt(n) / math.sqrt(rows.sum() * len(grp)) * rng.choice((-1.0, 1.0))
    return _scale(rng, w)


def bs_planted_blocks(rng):
    """Gaussian + k ~ U{1..5} disjoint planted dense blocks (a x b sub-blocks with a constant offset, community
    structure, localized spikes); block sides 10-40% of N and of M; offsets set for ratios ~ logU(3, 50) lambda+;
    Q ~ U(1, 4)."""
    n, m = _dims(rng)
    c = m / n
    k = int(rng.integers(1, 6))
    w = rng.standard_normal((n, m))
    rperm, cperm = rng.permutation(n), rng.permutation(m)
    r0 = c0 = 0
    for _ in range(k):
        a = int(rng.uniform(0.1, 0.4) * n / k * 2) if k > 1 else int(rng.uniform(0.1, 0.4) * n)
        b = int(rng.uniform(0.1, 0.4) * m / k * 2) if k > 1 else int(rng.uniform(0.1, 0.4) * m)
        a = max(5, min(a, n - r0))
        b = max(3, min(b, m - c0))
        if a <= 0 or b <= 0 or r0 + a > n or c0 + b > m:
            break
        theta = math.sqrt(_bbp_strength(_loguniform(rng, 3.0, 50.0), c))
        mu = theta * math.sqrt(n) / math.sqrt(a * b)
        w[np.ix_(rperm[r0 : r0 + a], cperm[c0 : c0 + b])] += mu * rng.choice((-1.0, 1.0))
        r0, c0 = r0 + a, c0 + b
    return _scale(rng, w)


# ---------------------------------------------------------------------------------------------------------------
# bulk-decay
# ---------------------------------------------------------------------------------------------------------------


def _n_continuum(rng, m):
    return int(rng.integers(20, max(21, min(200, m // 2)) + 1))


def _decaying_signal(rng, n, m, ratios):
    """Gaussian + additive signal whose k-th outlier targets ratios[k] (ratios <= 1 are sub-threshold)."""
    c = m / n
    ratios = np.asarray(ratios, dtype=float)
    t = np.where(ratios > 1.0, _bbp_strength(np.maximum(ratios, 1.0), c), ratios * math.sqrt(c))
    k = len(ratios)
    u, v = _orthonormal(rng, n, k), _orthonormal(rng, m, k)
    return rng.standard_normal((n, m)) + math.sqrt(n) * (u * np.sqrt(t)) @ v.T


def bd_geometric_continuum(rng):
    """Gaussian + a continuum of r ~ U{20..min(200, M/2)} orthogonal signal directions with geometrically decaying
    strengths: outlier ratios top * q^k, top ~ U(2, 10) lambda+, q set so the continuum reaches the edge (ratio 1)
    after 40-90% of the r directions (the rest sub-threshold); Q ~ U(1, 4)."""
    n, m = _dims(rng)
    r = _n_continuum(rng, m)
    top = rng.uniform(2.0, 10.0)
    k_edge = max(5, int(rng.uniform(0.4, 0.9) * r))
    q = top ** (-1.0 / k_edge)
    return _scale(rng, _decaying_signal(rng, n, m, top * q ** np.arange(r)))


def bd_powerlaw_continuum(rng):
    """Gaussian + r ~ U{20..min(200, M/2)} orthogonal signal directions with power-law decaying strengths: outlier
    ratios top * (k+1)^-p, top ~ U(2, 10) lambda+, p ~ U(0.3, 1.0) (tail of the ratios below 1 is sub-threshold);
    Q ~ U(1, 4)."""
    n, m = _dims(rng)
    r = _n_continuum(rng, m)
    top = rng.uniform(2.0, 10.0)
    p = rng.uniform(0.3, 1.0)
    return _scale(rng, _decaying_signal(rng, n, m, top * (np.arange(r) + 1.0) ** (-p)))


def bd_population_covariance_decay(rng):
    """Rows ~ N(0, Sigma), Sigma = O diag(1 + a k^-p) O^T, k = 1..M, O Haar, p ~ U(0.5, 1.5), a set so the top
    population spike gives an outlier at ratio ~ U(2, 10) lambda+: a smoothly decaying covariance spectrum;
    Q ~ U(1, 4)."""
    n, m = _dims(rng)
    p = rng.uniform(0.5, 1.5)
    a = float(_bbp_strength(rng.uniform(2.0, 10.0), m / n))
    d = np.sqrt(1.0 + a * (np.arange(m) + 1.0) ** (-p))
    o = _orthonormal(rng, m, m)
    return _scale(rng, (rng.standard_normal((n, m)) * d) @ o.T)


def bd_gaussian_plus_sparse_heavy(rng):
    """Gaussian bulk + sparse heavy-tailed contamination ("MP + PL tail"): a fraction rho ~ logU(0.003, 0.03) of
    entries get an extra symmetric Pareto value (tail index mu ~ U(2, 3.5)), scaled so the largest one alone would
    give an eigenvalue ~ U(2, 10) lambda+; the descending big entries form a decaying continuum; Q ~ U(1, 4)."""
    n, m = _dims(rng)
    rho = _loguniform(rng, 0.003, 0.03)
    mu = rng.uniform(2.0, 3.5)
    mask = rng.random((n, m)) < rho
    heavy = np.zeros((n, m))
    heavy[mask] = _sym_pareto(rng, mu, int(mask.sum()))
    lam_plus = (1.0 + math.sqrt(m / n)) ** 2
    target = rng.uniform(2.0, 10.0) * lam_plus
    eps = math.sqrt(target * n) / max(np.abs(heavy).max(), 1e-12)
    return _scale(rng, rng.standard_normal((n, m)) + eps * heavy)


def bd_correlated_feature_groups(rng):
    """Block-structured correlations: disjoint groups of columns, rows ~ N(0, Sigma) with Sigma equicorrelated
    inside group g (correlation rho_g ~ U(0.3, 0.8), size n_g = 1 + l_g / rho_g, at least 3); the group spikes
    l_g = rho_g (n_g - 1) decay as l_1 g^-p, p ~ U(0.5, 1.0), l_1 set for a top outlier at ~ U(2, 10) lambda+;
    groups are added until l_g < sqrt(c) / 2 or 85% of the columns are used: a continuum of localized correlated
    directions running down into the bulk; Q ~ U(1, 4), M >= 250."""
    n, m = _dims(rng, m_min=250)
    c = m / n
    p = rng.uniform(0.5, 1.0)
    l1 = float(_bbp_strength(rng.uniform(2.0, 10.0), c))
    perm = rng.permutation(m)
    w = rng.standard_normal((n, m))
    start, g = 0, 0
    while True:
        lg = l1 * (g + 1.0) ** (-p)
        k = max(3, int(round(1 + lg / rng.uniform(0.3, 0.8))))
        if lg < 0.5 * math.sqrt(c) or start + k > 0.85 * m:
            break
        grp = perm[start : start + k]
        start, g = start + k, g + 1
        rho = min(0.8, lg / (k - 1))
        a, b = math.sqrt(1.0 - rho), math.sqrt(1.0 - rho + rho * k)
        blk = w[:, grp]
        w[:, grp] = a * blk + ((b - a) / k) * blk.sum(axis=1, keepdims=True)
    return _scale(rng, w)


def bd_lognormal_column_scales(rng):
    """Gaussian with a log-normal variance profile across columns (diagonal population covariance with a smooth,
    right-skewed spectrum): W_ij = g_ij d_j, log d_j^2 ~ N(0, s^2), s ~ U(0.55, 0.9), normalized to median 1;
    Q ~ U(1.5, 4)."""
    n, m = _dims(rng, 1.5, 4.0)
    s = rng.uniform(0.55, 0.9)
    d2 = np.exp(s * rng.standard_normal(m))
    d2 /= np.median(d2)
    return _scale(rng, rng.standard_normal((n, m)) * np.sqrt(d2))


# ---------------------------------------------------------------------------------------------------------------
# heavy-tailed
# ---------------------------------------------------------------------------------------------------------------


def ht_pareto_entries(rng):
    """Symmetric Pareto iid entries (|x| ~ Pareto, tail index mu ~ U(1.5, 2.5), random signs; at these sizes
    mu >= 3 still shows an MP-like edge, lambda_max ~ 1.2 lambda+); Q ~ U(1, 4)."""
    n, m = _dims(rng)
    return _scale(rng, _sym_pareto(rng, rng.uniform(1.5, 2.5), (n, m)))


def ht_student_t_entries(rng):
    """Student-t iid entries with df ~ U(1.5, 2.6) (tail index = df; df 3 gives only ~3 lambda+ at these sizes);
    Q ~ U(1, 4)."""
    n, m = _dims(rng)
    return _scale(rng, rng.standard_t(rng.uniform(1.5, 2.6), size=(n, m)))


def ht_product_two(rng):
    """Product A B of two heavy-tailed matrices: A (N x K), B (K x M), K ~ U(1, 2) M, entries Student-t with
    df ~ U(2, 3) (each factor), so W is full rank but strongly correlated; Q ~ U(1, 4)."""
    n, m = _dims(rng)
    k = int(rng.uniform(1.0, 2.0) * m)
    a = rng.standard_t(rng.uniform(2.0, 3.0), size=(n, k))
    b = rng.standard_t(rng.uniform(2.0, 3.0), size=(k, m))
    return _scale(rng, a @ b / math.sqrt(k))


def ht_product_three(rng):
    """Product A B C of three heavy-tailed matrices (N x K1, K1 x K2, K2 x M; K1, K2 ~ U(1, 2) M), entries symmetric
    Pareto with tail index mu ~ U(2, 4) per factor; Q ~ U(1, 4)."""
    n, m = _dims(rng)
    k1, k2 = int(rng.uniform(1.0, 2.0) * m), int(rng.uniform(1.0, 2.0) * m)
    a = _sym_pareto(rng, rng.uniform(2.0, 4.0), (n, k1))
    b = _sym_pareto(rng, rng.uniform(2.0, 4.0), (k1, k2))
    cc = _sym_pareto(rng, rng.uniform(2.0, 4.0), (k2, m))
    return _scale(rng, (a @ b / math.sqrt(k1)) @ cc / math.sqrt(k2))


def ht_levy_stable(rng):
    """Symmetric alpha-stable iid entries (Levy-stable, alpha ~ U(1, 1.9); alpha = 1 is Cauchy; drawn with
    Chambers-Mallows-Stuck), with probability 1/4 exactly Cauchy; Q ~ U(1, 4)."""
    n, m = _dims(rng)
    alpha = 1.0 if rng.random() < 0.25 else rng.uniform(1.0, 1.9)
    return _scale(rng, _sym_stable(rng, alpha, (n, m)))


def ht_heavy_row_col_scales(rng):
    """Strongly correlated multiplicative model W_ij = a_i b_j g_ij (g iid N(0, 1)), with row and column scales
    a_i, b_j ~ Pareto (tail index mu ~ U(1.5, 3) for b, U(2, 4) for a): a power-law covariance spectrum, no MP
    bulk; Q ~ U(1, 4)."""
    n, m = _dims(rng)
    a = (1.0 - rng.random(n)) ** (-1.0 / rng.uniform(2.0, 4.0))
    b = (1.0 - rng.random(m)) ** (-1.0 / rng.uniform(1.5, 3.0))
    return _scale(rng, rng.standard_normal((n, m)) * a[:, None] * b[None, :])


# ---------------------------------------------------------------------------------------------------------------
# rank-collapse
# ---------------------------------------------------------------------------------------------------------------


def _collapse_rank(rng, m):
    return max(2, int(rng.uniform(0.02, 0.2) * m))


def rc_lowrank_product(rng):
    """Low-rank product U V^T (U: N x r, V: M x r Gaussian, r ~ U(2%, 20%) of M) plus tiny iid noise of relative
    scale eps ~ logU(1e-5, 1e-2) per entry (eps = 0, exactly rank r, with probability 1/4); Q ~ U(1, 4)."""
    n, m = _dims(rng)
    r = _collapse_rank(rng, m)
    w = rng.standard_normal((n, r)) @ rng.standard_normal((r, m)) / math.sqrt(r)
    if rng.random() >= 0.25:
        w += _loguniform(rng, 1e-5, 1e-2) * rng.standard_normal((n, m))
    return _scale(rng, w)


def rc_weight_decay_shrink(rng):
    """Weight-decay-like collapse of a trained-like matrix: start from Gaussian + k0 ~ U{1..10} spikes at ratios
    logU(3, 30) lambda+, keep the top k ~ U(2%, 20%) of M singular values and shrink all the others by a factor
    f ~ logU(1e-4, 1e-2) (the bulk squeezed toward zero); Q ~ U(1, 4)."""
    n, m = _dims(rng)
    k0 = int(rng.integers(1, 11))
    base = _additive_spikes(rng, n, m, _loguniform(rng, 3.0, 30.0, k0))
    u, s, vt = np.linalg.svd(base, full_matrices=False)
    k = _collapse_rank(rng, m)
    s[k:] *= _loguniform(rng, 1e-4, 1e-2)
    return _scale(rng, (u * s) @ vt)


def rc_nuclear_soft_threshold(rng):
    """Nuclear-norm proximal step (over-regularization): SVD soft-threshold s -> max(s - tau, 0) of a Gaussian +
    decaying-signal matrix (r0 ~ U{5..30} directions at ratios 10 * k^-1 lambda+), tau set so that only
    k ~ U(2%, 20%) of M singular values survive (the rest exactly 0); Q ~ U(1, 4)."""
    n, m = _dims(rng)
    r0 = int(rng.integers(5, 31))
    base = _decaying_signal(rng, n, m, 10.0 * (np.arange(r0) + 1.0) ** -1.0)
    u, s, vt = np.linalg.svd(base, full_matrices=False)
    k = _collapse_rank(rng, m)
    tau = s[k]  # s[k:] -> 0 exactly
    s = np.maximum(s - tau, 0.0)
    return _scale(rng, (u * s) @ vt)


def rc_dead_columns(rng):
    """Dead units: a Gaussian (optionally, p = 1/2, + 1-5 spikes at logU(3, 30) lambda+) matrix with a fraction
    d ~ U(0.5, 0.9) of its M columns exactly zero; Q ~ U(1, 4)."""
    n, m = _dims(rng)
    if rng.random() < 0.5:
        w = _additive_spikes(rng, n, m, _loguniform(rng, 3.0, 30.0, int(rng.integers(1, 6))))
    else:
        w = rng.standard_normal((n, m))
    dead = rng.choice(m, size=int(rng.uniform(0.5, 0.9) * m), replace=False)
    w[:, dead] = 0.0
    return _scale(rng, w)


def rc_dead_rows(rng):
    """Dead input rows: a Gaussian N x M matrix of which only R ~ U(0.1, 0.6) M rows are nonzero (rank R < M);
    Q ~ U(1, 4)."""
    n, m = _dims(rng)
    alive = rng.choice(n, size=max(2, int(rng.uniform(0.1, 0.6) * m)), replace=False)
    w = np.zeros((n, m))
    w[alive] = rng.standard_normal((len(alive), m))
    return _scale(rng, w)


def rc_collapsed_prototypes(rng):
    """Neural-collapse-like columns: k ~ U(2%, 20%) of M prototype vectors in R^N; every column is a random gain
    (~ U(0.5, 2)) times one prototype plus tiny noise of relative scale eps ~ logU(1e-5, 1e-2); Q ~ U(1, 4)."""
    n, m = _dims(rng)
    k = _collapse_rank(rng, m)
    protos = rng.standard_normal((n, k))
    assign = np.concatenate([np.arange(k), rng.integers(0, k, m - k)])
    w = protos[:, assign] * rng.uniform(0.5, 2.0, m)
    w += _loguniform(rng, 1e-5, 1e-2) * rng.standard_normal((n, m))
    return _scale(rng, w)


# ---------------------------------------------------------------------------------------------------------------
# registry, split, suite
# ---------------------------------------------------------------------------------------------------------------


def _fam(phase: str, fn: Callable[[np.random.Generator], np.ndarray], name: str) -> Family:
    desc = " ".join((fn.__doc__ or "").split())
    return Family(name=name, phase=phase, make=fn, description=desc)


FAMILIES: dict[str, list[Family]] = {
    "random-like": [
        _fam("random-like", rl_gaussian, "rl_gaussian"),
        _fam("random-like", rl_uniform, "rl_uniform"),
        _fam("random-like", rl_rademacher, "rl_rademacher"),
        _fam("random-like", rl_sparse_bernoulli_gaussian, "rl_sparse_bernoulli_gaussian"),
        _fam("random-like", rl_subthreshold_lowrank, "rl_subthreshold_lowrank"),
        _fam("random-like", rl_truncated_normal, "rl_truncated_normal"),
    ],
    "bleeding-out": [
        _fam("bleeding-out", bo_near_bbp_few, "bo_near_bbp_few"),
        _fam("bleeding-out", bo_near_bbp_many, "bo_near_bbp_many"),
        _fam("bleeding-out", bo_near_bbp_spiked_covariance, "bo_near_bbp_spiked_covariance"),
        _fam("bleeding-out", bo_localized_columns, "bo_localized_columns"),
        _fam("bleeding-out", bo_student_t_noise, "bo_student_t_noise"),
        _fam("bleeding-out", bo_row_covariance_uniform_noise, "bo_row_covariance_uniform_noise"),
    ],
    "bulk+spikes": [
        _fam("bulk+spikes", bs_orthogonal_spikes, "bs_orthogonal_spikes"),
        _fam("bulk+spikes", bs_random_direction_spikes_rademacher, "bs_random_direction_spikes_rademacher"),
        _fam("bulk+spikes", bs_spiked_column_covariance, "bs_spiked_column_covariance"),
        _fam("bulk+spikes", bs_spiked_row_covariance, "bs_spiked_row_covariance"),
        _fam("bulk+spikes", bs_mean_shift, "bs_mean_shift"),
        _fam("bulk+spikes", bs_planted_blocks, "bs_planted_blocks"),
    ],
    "bulk-decay": [
        _fam("bulk-decay", bd_geometric_continuum, "bd_geometric_continuum"),
        _fam("bulk-decay", bd_powerlaw_continuum, "bd_powerlaw_continuum"),
        _fam("bulk-decay", bd_population_covariance_decay, "bd_population_covariance_decay"),
        _fam("bulk-decay", bd_gaussian_plus_sparse_heavy, "bd_gaussian_plus_sparse_heavy"),
        _fam("bulk-decay", bd_correlated_feature_groups, "bd_correlated_feature_groups"),
        _fam("bulk-decay", bd_lognormal_column_scales, "bd_lognormal_column_scales"),
    ],
    "heavy-tailed": [
        _fam("heavy-tailed", ht_pareto_entries, "ht_pareto_entries"),
        _fam("heavy-tailed", ht_student_t_entries, "ht_student_t_entries"),
        _fam("heavy-tailed", ht_product_two, "ht_product_two"),
        _fam("heavy-tailed", ht_product_three, "ht_product_three"),
        _fam("heavy-tailed", ht_levy_stable, "ht_levy_stable"),
        _fam("heavy-tailed", ht_heavy_row_col_scales, "ht_heavy_row_col_scales"),
    ],
    "rank-collapse": [
        _fam("rank-collapse", rc_lowrank_product, "rc_lowrank_product"),
        _fam("rank-collapse", rc_weight_decay_shrink, "rc_weight_decay_shrink"),
        _fam("rank-collapse", rc_nuclear_soft_threshold, "rc_nuclear_soft_threshold"),
        _fam("rank-collapse", rc_dead_columns, "rc_dead_columns"),
        _fam("rank-collapse", rc_dead_rows, "rc_dead_rows"),
        _fam("rank-collapse", rc_collapsed_prototypes, "rc_collapsed_prototypes"),
    ],
}

# Fixed before any classifier was looked at: alternate in the order listed above (even index -> tune).
HELD_OUT_SPLIT: dict[str, tuple[list[str], list[str]]] = {
    phase: ([f.name for f in fams[0::2]], [f.name for f in fams[1::2]]) for phase, fams in FAMILIES.items()
}


def _family_rng(seed: int, name: str) -> np.random.Generator:
    """Per-family stream, independent of which other families are drawn (stable under adding families)."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def suite(split: str = "all", n_per_family: int = 5, seed: int = 0) -> list[tuple[str, str, np.ndarray]]:
    """Draw ``n_per_family`` matrices from every family of ``split`` ("tune", "held_out" or "all").

    Returns ``(phase, family_name, W)`` tuples, phases in ``PHASES`` order, families in listed order.
    """
    if split not in ("tune", "held_out", "all"):
        raise ValueError(f"split must be 'tune', 'held_out' or 'all', not {split!r}")
    out: list[tuple[str, str, np.ndarray]] = []
    for phase in PHASES:
        tune, held = HELD_OUT_SPLIT[phase]
        keep = set(tune if split == "tune" else held if split == "held_out" else tune + held)
        for fam in FAMILIES[phase]:
            if fam.name not in keep:
                continue
            rng = _family_rng(seed, fam.name)
            for _ in range(n_per_family):
                w = fam.make(rng)
                out.append((phase, fam.name, w))
    return out


# ---------------------------------------------------------------------------------------------------------------
# sanity table (plain numpy)
# ---------------------------------------------------------------------------------------------------------------

_MP_MEDIAN_CACHE: dict[int, float] = {}


def _mp_median(c: float) -> float:
    """Median of the unit-variance MP law with ratio c = M/N <= 1 (no atom at 0)."""
    key = int(round(c * 1000))
    if key not in _MP_MEDIAN_CACHE:
        cc = key / 1000.0
        a, b = (1 - math.sqrt(cc)) ** 2, (1 + math.sqrt(cc)) ** 2
        phi = np.linspace(0.0, np.pi, 4001)
        x = a + (b - a) * (1 - np.cos(phi)) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            f = ((b - a) / 2) ** 2 * np.sin(phi) ** 2 / (2 * np.pi * cc * x)
        f[~np.isfinite(f)] = 2.0 / np.pi if cc == 1.0 else 0.0
        cdf = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(phi))])
        cdf /= cdf[-1]
        _MP_MEDIAN_CACHE[key] = float(np.interp(0.5, cdf, x))
    return _MP_MEDIAN_CACHE[key]


def esd_stats(w: np.ndarray) -> dict[str, float]:
    """Plain-numpy ESD statistics of X = W^T W / N used by the sanity table."""
    n, m = w.shape
    q = n / m
    ev = np.sort(np.linalg.eigvalsh(w.T @ w / n))[::-1]
    ev = np.maximum(ev, 0.0)
    lmax = ev[0]
    edge = (1 + 1 / math.sqrt(q)) ** 2
    lp_var = np.var(w) * edge  # sigma^2 = entry variance
    lp_med = np.median(ev) / _mp_median(1 / q) * edge  # sigma^2 fitted from the median eigenvalue
    k = max(10, m // 10)
    top = ev[:k]
    hill = 1.0 + k / max(np.sum(np.log(top / top[-1])), 1e-12) if top[-1] > 0 else float("nan")
    return {
        "Q": q,
        "r_var": lmax / lp_var,
        "r_med": lmax / lp_med if lp_med > 0 else float("inf"),
        "f_above_var": float(np.mean(ev > lp_var)),
        "n_above_med": float(np.sum(ev > lp_med)) if lp_med > 0 else float(m),
        "f_zero": float(np.mean(ev < 1e-3 * lmax)),
        "hill": hill,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    n_draw = int(argv[0]) if argv else 8
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(1)
    except ImportError:  # pragma: no cover
        limiter = None

    t0 = time.perf_counter()
    suite("all", 5, 0)
    t_gen = time.perf_counter() - t0

    split_of = {
        n: ("tune" if n in HELD_OUT_SPLIT[p][0] else "held")
        for p in PHASES
        for n in HELD_OUT_SPLIT[p][0] + HELD_OUT_SPLIT[p][1]
    }
    hdr = (
        f"{'phase':<13} {'family':<38} {'split':<5} {'Q':>9} {'lmax/l+':>8} {'lmax/l+':>8} "
        f"{'lmax/l+ (med)':>15} {'frac>l+':>8} {'#>l+':>6} {'frac<1e-3':>9} {'hill':>6}"
    )
    sub = (
        f"{'':<13} {'':<38} {'':<5} {'range':>9} {'(var)':>8} {'(med)':>8} "
        f"{'min - max':>15} {'(var)':>8} {'(med)':>6} {'lmax':>9} {'alpha':>6}"
    )
    print(
        f"median over {n_draw} draws per family (seed 0); l+ (var): sigma^2 = entry variance of W; "
        f"l+ (med): sigma^2 fitted to the median eigenvalue (MP median); #>l+ counts eigenvalues above l+ (med); "
        f"hill alpha: Hill estimate of the ESD power-law exponent from the top max(10, M/10) eigenvalues"
    )
    print(hdr)
    print(sub)
    print("-" * len(hdr))
    for phase in PHASES:
        for fam in FAMILIES[phase]:
            rng = _family_rng(0, fam.name)
            rows = [esd_stats(fam.make(rng)) for _ in range(n_draw)]
            med = {key: float(np.median([r[key] for r in rows])) for key in rows[0]}
            qs = [r["Q"] for r in rows]
            lo, hi = min(r["r_med"] for r in rows), max(r["r_med"] for r in rows)
            print(
                f"{phase:<13} {fam.name:<38} {split_of[fam.name]:<5} {min(qs):4.1f}-{max(qs):<4.1f} "
                f"{med['r_var']:8.3g} {med['r_med']:8.3g} {lo:7.3g}-{hi:<7.3g} {med['f_above_var']:8.3f} "
                f"{med['n_above_med']:6.0f} {med['f_zero']:9.3f} {med['hill']:6.2f}"
            )
        print()
    print(
        f"suite('all', n_per_family=5) generation: {t_gen:.1f} s "
        f"({sum(len(v) for v in FAMILIES.values()) * 5} matrices, 1 BLAS thread)"
    )
    if limiter is not None:
        limiter.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main())
