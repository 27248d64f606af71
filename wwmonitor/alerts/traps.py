"""Correlation traps: spikes of the element-randomised weight matrix (weightwatcher's "randomize")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["correlation_traps"]


def correlation_traps(W: Any, *, seed: int = 0, name: str = "W") -> dict[str, Any]:
    """Correlation traps of ``W``: spikes of its element-randomised copy.

    The entries of ``W`` (2-D, ``N x M`` after orienting) are shuffled, which
    destroys all correlations but keeps the entry distribution.  By MP theory
    the eigenvalues of ``X_r = W_rᵀW_r/N`` then lie below
    ``λ+ = s²(1 + 1/√Q)²`` (``s²`` the entry variance, ``Q = N/M``) up to the
    margin ``tw = 3·s²·(1 + 1/√Q)^(4/3)·Q^(-1/2)·M^(-2/3)``: three Tracy-Widom
    scales of the top eigenvalue of a white Wishart matrix (Johnstone 2001);
    TW1 exceeds 3 with probability < 0.3%.  Eigenvalues of ``X_r``
    above ``λ+ + tw`` are *traps*: a few very large entries that survive
    randomisation.  Returns ``{"num_traps", "lambda_plus", "tw", "max_rand"}``.
    A 3-D stack (pooled conv slices) is randomised slice by slice and pooled.
    """
    A = np.asarray(W, dtype=np.float64)
    if A.ndim == 3:  # pooled conv slices: randomise each slice and pool
        counts = [correlation_traps(A[k], seed=seed + k, name=f"{name}[{k}]") for k in range(A.shape[0])]
        return {
            "num_traps": int(sum(c["num_traps"] for c in counts)),
            "lambda_plus": float(np.mean([c["lambda_plus"] for c in counts])),
            "tw": float(np.mean([c["tw"] for c in counts])),
            "max_rand": float(max(c["max_rand"] for c in counts)),
        }
    if A.ndim != 2 or min(A.shape) == 0:
        raise ValueError(f"layer {name!r}: correlation_traps needs a 2-D matrix, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise ValueError(f"layer {name!r}: non-finite weights")
    if A.shape[0] < A.shape[1]:
        A = A.T
    N, M = A.shape
    Q = N / M
    rng = np.random.default_rng(seed)
    R = rng.permutation(A.ravel()).reshape(N, M)
    R = R - R.mean()
    s2 = float(R.var())
    ev = np.linalg.eigvalsh(R.T @ R / N)
    lam_plus = s2 * (1 + 1 / math.sqrt(Q)) ** 2
    tw = 3.0 * s2 * (1 + 1 / math.sqrt(Q)) ** (4 / 3) * Q ** (-0.5) * M ** (-2 / 3)
    return {
        "num_traps": int(np.count_nonzero(ev > lam_plus + tw)) if s2 > 0 else 0,
        "lambda_plus": lam_plus,
        "tw": tw,
        "max_rand": float(ev.max()),
    }
