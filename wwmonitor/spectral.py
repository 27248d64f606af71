"""Empirical spectral densities (ESDs) of weight matrices.

Convention (Martin & Mahoney, the seeds): for a weight matrix ``W`` of shape
``(a, b)`` let ``N = max(a, b)``, ``M = min(a, b)`` and ``Q = N / M >= 1``.
The layer correlation matrix is

    X = Wᵀ W / N        (an M x M matrix, W oriented so that it is N x M)

and the ESD is the set of its ``M`` eigenvalues ``λ_i >= 0``.  The same
eigenvalues times ``N`` are the squared singular values ``σ_i²`` of ``W``;
weightwatcher reports its norms and ``xmin``/``lambda_max`` on that unscaled
axis (see :mod:`wwmonitor.metrics`).

Route: the Gram matrix ``WᵀW`` (of the smaller side) in float64 followed by a
symmetric eigensolver.  On the CPU this is 3-5x faster than the full SVD that
weightwatcher uses and, computed in float64, agrees with a float64 SVD to
``~1e-12 · λ_max`` absolute error (tested in ``tests/test_spectral.py``).
A float32 Gram is *not* offered on the CPU: its smallest eigenvalues are
meaningless for square matrices, which would break rank-collapse detection.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["esd", "esd_batched", "squared_singular_values", "to_numpy"]


def _is_torch_tensor(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach")


def to_numpy(W: Any) -> np.ndarray:
    """Return ``W`` as a NumPy array (torch tensors are detached and moved to host)."""
    if _is_torch_tensor(W):
        t = W.detach()
        if t.dtype.is_floating_point and t.dtype not in (_torch().float32, _torch().float64):
            t = t.float()
        return t.cpu().numpy()
    if hasattr(W, "numpy") and not isinstance(W, np.ndarray) and type(W).__module__.startswith(("tensorflow", "jax", "jaxlib")):
        return np.asarray(W)
    return np.asarray(W)


def _torch():
    import torch

    return torch


def _check_matrix(W: np.ndarray, name: str) -> None:
    if W.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D matrix, got an array of shape {tuple(W.shape)}")
    if min(W.shape) == 0:
        raise ValueError(f"{name}: matrix has an empty dimension, shape {tuple(W.shape)}")
    if not np.issubdtype(W.dtype, np.number):
        raise TypeError(f"{name}: expected a numeric matrix, got dtype {W.dtype}")


def squared_singular_values(W: Any, *, name: str = "W") -> np.ndarray:
    """Eigenvalues of ``WᵀW`` (unnormalised; ``σ_i²``), ascending, length ``M``.

    Computed as ``eigvalsh`` of the float64 Gram matrix of the smaller side;
    tiny negative round-off is clipped to 0.  For torch tensors on an
    accelerator the computation runs on the tensor's own device.
    """
    if _is_torch_tensor(W) and getattr(W, "device", None) is not None and W.device.type != "cpu":
        return _squared_sv_torch(W, name=name)
    A = to_numpy(W)
    _check_matrix(A, name)
    A = np.asarray(A, dtype=np.float64)
    if not np.isfinite(A).all():
        raise ValueError(f"{name}: matrix contains non-finite values (NaN or Inf)")
    if A.shape[0] < A.shape[1]:
        G = A @ A.T
    else:
        G = A.T @ A
    ev = np.linalg.eigvalsh(G)
    return np.clip(ev, 0.0, None)


def _squared_sv_torch(W: Any, *, name: str) -> np.ndarray:
    torch = _torch()
    t = W.detach()
    if t.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D matrix, got a tensor of shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: matrix contains non-finite values (NaN or Inf)")
    G = t @ t.T if t.shape[0] < t.shape[1] else t.T @ t
    ev = torch.linalg.eigvalsh(G)
    return np.clip(ev.cpu().numpy(), 0.0, None)


def esd(W: Any, *, normalize: bool = True, name: str = "W") -> np.ndarray:
    """ESD of ``X = WᵀW / N``: the ``M`` eigenvalues, ascending.

    Parameters
    ----------
    W:
        2-D array-like (NumPy, torch tensor on any device, JAX/TF array).
    normalize:
        Divide by ``N = max(W.shape)`` (default, the seeds' convention).
        ``False`` returns the squared singular values ``σ_i²`` of ``W``.
    name:
        Used in error messages.
    """
    ev = squared_singular_values(W, name=name)
    if normalize:
        ev = ev / float(max(np.shape(W)))
    return ev


def esd_batched(Ws: Any, *, normalize: bool = True, name: str = "W") -> np.ndarray:
    """ESDs of a stack of equally shaped matrices, shape ``(K, a, b)`` -> ``(K, M)``.

    Used for convolution kernels (one ``out x in`` slice per kernel position):
    a single batched matmul and batched ``eigvalsh`` call instead of ``K``
    separate calls.
    """
    if _is_torch_tensor(Ws) and Ws.device.type != "cpu":
        torch = _torch()
        t = Ws.detach().to(torch.float64)
        G = t @ t.transpose(-1, -2) if t.shape[-2] < t.shape[-1] else t.transpose(-1, -2) @ t
        ev = np.clip(torch.linalg.eigvalsh(G).cpu().numpy(), 0.0, None)
    else:
        A = np.asarray(to_numpy(Ws), dtype=np.float64)
        if A.ndim != 3:
            raise ValueError(f"{name}: expected a stack of matrices (K, a, b), got shape {A.shape}")
        if not np.isfinite(A).all():
            raise ValueError(f"{name}: matrix contains non-finite values (NaN or Inf)")
        At = np.swapaxes(A, -1, -2)
        G = A @ At if A.shape[-2] < A.shape[-1] else At @ A
        ev = np.clip(np.linalg.eigvalsh(G), 0.0, None)
    if normalize:
        ev = ev / float(max(np.shape(Ws)[-2:]))
    return ev
