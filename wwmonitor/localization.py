"""Eigenvector localization metrics, bulk against tail (Martin & Mahoney, arXiv:1810.01075).

For a weight matrix ``W`` (``N x M`` after orienting, ``N >= M``) take the
eigenpairs ``(σ_i², v_i)`` of the ``M x M`` Gram matrix ``WᵀW`` (``v_i`` are
the right singular vectors, unit vectors of length ``M``).  For each ``v``:

* localization ratio  ``L(v) = ||v||_1 / ||v||_∞``  (in ``[1, M]``; about
  ``M · sqrt(2/π) / sqrt(2 ln M)`` for a random unit vector, 1 for a basis vector)
* participation ratio ``P(v) = ||v||_2 / ||v||_4``  (in ``[1, M^{1/4}]``;
  about ``(M/3)^{1/4}`` for a random unit vector)
* vector entropy ``H(v) = -Σ_j p_j ln p_j / ln M`` with ``p_j = v_j²``
  (in ``[0, 1]``; about ``1 - 0.73/ln M`` for a random unit vector)

Small values mean a *localized* vector (weight concentrated on a few
coordinates).  The seeds' observation: the spikes / power-law tail of a
trained layer are more localized and have less entropy than the bulk.

The first two are the seeds' (and weightwatcher's) definitions.  The entropy
is the normalised Shannon entropy of the squared components; weightwatcher's
``discrete_entropy`` instead histograms the components into 100 bins, which
depends on the bin count, and its ``vector_entropy`` reduces the vector to its
norm (a constant for unit vectors), so neither is reproduced.

Split: the *tail* is the eigenvalues ``σ² >= xmin`` (σ² axis, eigenvalues of
``WᵀW``; pass the power-law ``xmin``), the *bulk* the remaining non-zero ones.
Numerically zero eigenvalues (``σ² <= 1e-8 σ²_max``) are left out: their
eigenvectors are an arbitrary basis of the null space.  With ``xmin=None``
the tail is the MP spikes: everything above ``(λ+ + tw_margin) · N`` from
:func:`wwmonitor.mp.fit_mp` (with ``λ+`` alone, bulk eigenvalues that
fluctuate just past the fitted edge would count as tail).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .mp import ZERO_REL_TOL, fit_mp
from .spectral import to_numpy

__all__ = ["localization_metrics", "localization_ratio", "participation_ratio", "vector_entropy"]


def localization_ratio(V: np.ndarray) -> np.ndarray:
    """``||v||_1 / ||v||_∞`` for each column ``v`` of ``V``."""
    A = np.abs(V)
    return A.sum(axis=0) / A.max(axis=0)


def participation_ratio(V: np.ndarray) -> np.ndarray:
    """``||v||_2 / ||v||_4`` for each column ``v`` of ``V``."""
    V2 = V * V
    return np.sqrt(V2.sum(axis=0)) / np.sqrt(np.sqrt((V2 * V2).sum(axis=0)))


def vector_entropy(V: np.ndarray) -> np.ndarray:
    """``-Σ p ln p / ln M`` with ``p = v²/||v||²`` for each column ``v`` of ``V`` (length ``M``)."""
    M = V.shape[0]
    P = V * V
    P = P / P.sum(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(P > 0, P * np.log(P), 0.0)
    return -terms.sum(axis=0) / np.log(M) if M > 1 else np.zeros(V.shape[1])


def localization_metrics(W: Any, xmin: Optional[float] = None, *, name: str = "W") -> dict[str, float]:
    """Mean eigenvector localization of the bulk and of the tail of ``W``'s ESD.

    Parameters
    ----------
    W:
        2-D weight matrix (NumPy array or torch tensor, any orientation).
    xmin:
        Tail threshold on the σ² axis (eigenvalues of ``WᵀW``, not divided by
        ``N``), e.g. the power-law ``xmin``.  ``None``: the MP edge plus
        Tracy-Widom margin, ``(λ+ + tw_margin) · N``.
    name:
        Used in error messages.

    Returns
    -------
    dict with keys ``loc_num_bulk``, ``loc_num_tail`` and, for each group
    that is non-empty, ``loc_localization_ratio_{bulk,tail}``,
    ``loc_participation_ratio_{bulk,tail}`` and ``loc_vector_entropy_{bulk,tail}``
    (means over the group's eigenvectors; formulas in the module docstring).
    Keys of an empty group are omitted rather than set to NaN.
    """
    A = np.asarray(to_numpy(W), dtype=np.float64)
    if A.ndim != 2:
        raise ValueError(f"layer {name!r}: localization needs a 2-D matrix, got shape {A.shape}")
    if min(A.shape) < 2:
        raise ValueError(f"layer {name!r}: localization needs at least a 2x2 matrix, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise ValueError(f"layer {name!r}: matrix contains non-finite values (NaN or Inf)")
    if xmin is not None and not np.isfinite(xmin):
        raise ValueError(f"layer {name!r}: xmin must be finite, got {xmin!r}")
    N, M = max(A.shape), min(A.shape)
    G = A.T @ A if A.shape[0] >= A.shape[1] else A @ A.T
    ev, V = np.linalg.eigh(G)
    ev = np.clip(ev, 0.0, None)
    if ev[-1] <= 0:
        raise ValueError(f"layer {name!r}: all-zero matrix has no eigenvectors to measure")
    nonzero = ev > ZERO_REL_TOL * ev[-1]
    if xmin is None:
        mp = fit_mp(ev / N, N / M, M=M)
        xmin = (mp.lambda_plus + mp.tw_margin) * N
    tail = nonzero & (ev >= xmin)
    bulk = nonzero & ~tail
    out: dict[str, float] = {"loc_num_bulk": float(bulk.sum()), "loc_num_tail": float(tail.sum())}
    for group, mask in (("bulk", bulk), ("tail", tail)):
        if not mask.any():
            continue
        Vg = V[:, mask]
        out[f"loc_localization_ratio_{group}"] = float(localization_ratio(Vg).mean())
        out[f"loc_participation_ratio_{group}"] = float(participation_ratio(Vg).mean())
        out[f"loc_vector_entropy_{group}"] = float(vector_entropy(Vg).mean())
    return out
