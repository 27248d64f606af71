"""Synthetic weight matrices for each of the 5+1 phases (tests, docs, demos).

Every generator has the signature ``gen(N, M, rng, **params) -> ndarray``
of shape ``(N, M)`` with ``N >= M``; parameters not given are drawn from
``rng`` within the ranges documented per generator, so repeated calls cover
a family of matrices, not one example.  The overall scale ``s`` of each
matrix is drawn log-uniformly in ``[0.01, 1]`` (the phase must not depend on
the units of ``W``).

Spiked model
------------
With ``G`` an ``N x M`` matrix of iid ``N(0, 1)`` entries, ``c = M/N = 1/Q``
and orthonormal ``u_i`` (length ``N``), ``v_i`` (length ``M``)::

    W = s · (G + √N · Σ_i d_i u_i v_iᵀ)

The ESD of ``X = WᵀW/N`` is MP with ``σ² = s²`` plus, for every ``d_i`` above
the BBP threshold ``d_c = c^{1/4} = Q^{-1/4}``, an outlier at
(Benaych-Georges & Nadakuditi 2012)::

    λ_i = s² (1 + d_i²)(c + d_i²) / d_i²       (= λ+ at d_i = d_c)

Directions with ``d_i <= d_c`` stay inside the bulk.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

__all__ = [
    "random_like",
    "bleeding_out",
    "bulk_spikes",
    "bulk_decay",
    "heavy_tailed",
    "rank_collapse",
    "spiked",
    "bbp_threshold",
    "spike_location",
    "PHASE_GENERATORS",
]


def _check(N: int, M: int) -> None:
    if not (isinstance(N, (int, np.integer)) and isinstance(M, (int, np.integer))):
        raise TypeError(f"N and M must be integers, got {N!r}, {M!r}")
    if M < 2 or N < M:
        raise ValueError(f"need N >= M >= 2, got N={N}, M={M}")


def _scale(rng: np.random.Generator, s: Optional[float]) -> float:
    return float(math.exp(rng.uniform(math.log(0.01), 0.0))) if s is None else float(s)


def bbp_threshold(Q: float) -> float:
    """BBP threshold ``d_c = Q^{-1/4}`` of the spike strength ``d`` (see module docstring)."""
    return float(Q) ** -0.25


def spike_location(d: float, Q: float, sigma2: float = 1.0) -> float:
    """λ-axis position of a spike of strength ``d > d_c``: ``σ²(1+d²)(c+d²)/d²``, ``c = 1/Q``."""
    c = 1.0 / Q
    return sigma2 * (1 + d * d) * (c + d * d) / (d * d)


def _orthonormal(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return q


def spiked(N: int, M: int, d: np.ndarray, rng: np.random.Generator, s: float = 1.0) -> np.ndarray:
    """``s · (G + √N Σ d_i u_i v_iᵀ)`` with random orthonormal ``u_i``, ``v_i``."""
    _check(N, M)
    d = np.asarray(d, dtype=np.float64).ravel()
    G = rng.standard_normal((N, M))
    if d.size:
        U = _orthonormal(N, d.size, rng)
        V = _orthonormal(M, d.size, rng)
        G += math.sqrt(N) * (U * d) @ V.T
    return s * G


def random_like(N: int, M: int, rng: np.random.Generator, *, s: Optional[float] = None) -> np.ndarray:
    """iid entries of variance ``s²``: Gaussian, uniform or Rademacher (chosen by ``rng``).

    All three have a finite fourth moment, so the ESD is MP with sharp
    Tracy-Widom edge.
    """
    _check(N, M)
    s = _scale(rng, s)
    kind = rng.integers(3)
    if kind == 0:
        return s * rng.standard_normal((N, M))
    if kind == 1:
        return s * math.sqrt(3.0) * rng.uniform(-1.0, 1.0, (N, M))
    return s * rng.choice([-1.0, 1.0], size=(N, M))


def bleeding_out(
    N: int,
    M: int,
    rng: np.random.Generator,
    *,
    r: Optional[int] = None,
    strength: tuple[float, float] = (1.6, 2.0),
    s: Optional[float] = None,
) -> np.ndarray:
    """Spikes just above the BBP threshold: ``r`` (default 1-3) directions
    with ``d_i = t_i · Q^{-1/4}``, ``t_i`` uniform in ``strength``
    (default 1.6-2.0, which puts the outliers at about 1.2-1.55 λ+,
    just outside the Tracy-Widom margin for ``M >= 100``)."""
    _check(N, M)
    r = int(rng.integers(1, 4)) if r is None else int(r)
    t = rng.uniform(*strength, size=r)
    return spiked(N, M, t * bbp_threshold(N / M), rng, _scale(rng, s))


def bulk_spikes(
    N: int,
    M: int,
    rng: np.random.Generator,
    *,
    r: Optional[int] = None,
    strength: tuple[float, float] = (3.0, 8.0),
    s: Optional[float] = None,
) -> np.ndarray:
    """Strong low-rank signal: ``r`` (default 1-4) spikes with
    ``d_i = t_i · Q^{-1/4}``, ``t_i`` log-uniform in ``strength``
    (default 3-8, outliers at about 2.5-16 λ+)."""
    _check(N, M)
    r = int(rng.integers(1, 5)) if r is None else int(r)
    t = np.exp(rng.uniform(math.log(strength[0]), math.log(strength[1]), size=r))
    return spiked(N, M, t * bbp_threshold(N / M), rng, _scale(rng, s))


def bulk_decay(
    N: int,
    M: int,
    rng: np.random.Generator,
    *,
    k: Optional[int] = None,
    top: Optional[float] = None,
    s: Optional[float] = None,
) -> np.ndarray:
    """Many decaying signal directions: ``k`` (default 20-40% of ``M``)
    directions with strengths decaying geometrically from ``top · d_c``
    (default 2-3) down to ``0.5 · d_c``, so a continuum of eigenvalues
    leaves the bulk and decays towards λ+ instead of a few isolated spikes."""
    _check(N, M)
    k = int(round(rng.uniform(0.2, 0.4) * M)) if k is None else int(k)
    k = max(2, min(k, M))
    top = float(rng.uniform(2.0, 3.0)) if top is None else float(top)
    d = top * (0.5 / top) ** (np.arange(k) / (k - 1))
    return spiked(N, M, d * bbp_threshold(N / M), rng, _scale(rng, s))


def heavy_tailed(
    N: int,
    M: int,
    rng: np.random.Generator,
    *,
    mu: Optional[float] = None,
    s: Optional[float] = None,
) -> np.ndarray:
    """iid heavy-tailed entries with tail exponent ``mu < 4`` (default uniform in 1.5-2.0):
    either symmetric Pareto ``±U^{-1/mu}`` or Student-t with ``mu`` degrees of
    freedom (chosen by ``rng``).  ``P(|w| > t) ~ t^{-mu}``; the ESD has no MP
    edge and a power-law tail (Martin & Mahoney's heavy-tailed RMT).

    The default range is the seeds' "very heavy-tailed" class ``0 < mu < 2``
    (infinite variance: a power-law ESD at every size).  For ``mu`` between 2
    and 4 ("moderately heavy-tailed") a matrix with ``M <= 500`` often has a
    good MP bulk and a tail that reaches only 2-15 λ+, which the phase rules
    read as bulk-decay (measured per ``mu`` in ``docs/phases.md``); pass
    ``mu`` explicitly for those."""
    _check(N, M)
    mu = float(rng.uniform(1.5, 2.0)) if mu is None else float(mu)
    s = _scale(rng, s)
    if rng.integers(2) == 0:
        mag = rng.uniform(size=(N, M)) ** (-1.0 / mu)
        W = mag * rng.choice([-1.0, 1.0], size=(N, M))
    else:
        W = rng.standard_t(mu, size=(N, M))
    return s * W / float(np.median(np.abs(W)))


def rank_collapse(
    N: int,
    M: int,
    rng: np.random.Generator,
    *,
    rank: Optional[int] = None,
    s: Optional[float] = None,
    dtype: Optional[type] = None,
) -> np.ndarray:
    """Low-rank product ``A @ B`` (``N x r`` times ``r x M``) with
    ``r`` (default 5-70% of ``M``) ``< M``: ``M - r`` eigenvalues are zero.
    Half of the draws are stored as float32 (round-off then lifts the zero
    eigenvalues to about ``1e-14 λ_max``)."""
    _check(N, M)
    rank = max(1, int(round(rng.uniform(0.05, 0.7) * M))) if rank is None else int(rank)
    if not 1 <= rank < M:
        raise ValueError(f"rank must be in [1, M), got {rank}")
    A = rng.standard_normal((N, rank))
    B = rng.standard_normal((rank, M))
    W = _scale(rng, s) * (A @ B) / math.sqrt(rank)
    if dtype is None:
        dtype = np.float32 if rng.integers(2) == 0 else np.float64
    return W.astype(dtype)


#: phase name -> generator ``gen(N, M, rng) -> (N, M) array``
PHASE_GENERATORS: dict[str, Callable[..., np.ndarray]] = {
    "random-like": random_like,
    "bleeding-out": bleeding_out,
    "bulk+spikes": bulk_spikes,
    "bulk-decay": bulk_decay,
    "heavy-tailed": heavy_tailed,
    "rank-collapse": rank_collapse,
}
