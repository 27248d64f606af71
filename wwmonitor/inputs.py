"""Inputs to the spectral routines: any array-like -> a dense NumPy matrix, or a clear refusal.

Complex matrices (the imaginary part is never dropped), sparse matrices and tensors (``scipy.sparse``, torch
sparse layouts), quantized tensors, masked arrays with masked entries, and object/bool/string arrays are refused
with a ``TypeError`` naming the matrix (:func:`input_problem` says why without raising).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .frameworks import is_torch_tensor as _is_torch_tensor

__all__ = ["to_numpy", "input_problem"]


def to_numpy(W: Any, *, name: str = "W") -> np.ndarray:
    """Return ``W`` as a NumPy array (torch tensors are detached and moved to host).

    Raises ``TypeError`` naming ``name`` for inputs that cannot be converted
    without losing or inventing values: sparse matrices/tensors, quantized
    tensors and masked arrays with masked entries (see :func:`input_problem`).
    """
    problem = _container_problem(W)
    if problem:
        raise TypeError(f"{name}: {problem}")
    if _is_torch_tensor(W):
        t = W.detach()
        if t.dtype.is_floating_point and t.dtype not in (_torch().float32, _torch().float64):
            t = t.float()
        return t.cpu().numpy()
    if (
        hasattr(W, "numpy")
        and not isinstance(W, np.ndarray)
        and type(W).__module__.startswith(("tensorflow", "jax", "jaxlib"))
    ):
        return np.asarray(W)
    return np.asarray(W)


def _torch() -> Any:
    import torch

    return torch


def _container_problem(W: Any) -> Optional[str]:
    """Why ``W`` cannot be turned into a dense array without losing or inventing
    values (sparse, quantized, masked), or ``None``."""
    mod = type(W).__module__
    if mod.startswith("scipy.sparse") and hasattr(W, "tocsr"):
        return (
            f"sparse matrix (scipy.sparse {type(W).__name__}) is not supported: "
            "densify it with W.toarray() if it fits in memory"
        )
    if isinstance(W, np.ma.MaskedArray):
        n = int(np.ma.count_masked(W))
        if n:
            return (
                f"masked array with {n} masked entr{'y' if n == 1 else 'ies'} is not supported: "
                "the values behind the mask would be analysed; use W.filled(...) or drop them"
            )
    if _is_torch_tensor(W):
        torch = _torch()
        layout = getattr(W, "layout", torch.strided)
        if layout != torch.strided:
            return (
                f"sparse tensor (layout {layout}) is not supported: densify it with W.to_dense() if it fits in memory"
            )
        if getattr(W, "is_quantized", False):
            return f"quantized tensor (dtype {W.dtype}) is not supported: pass W.dequantize()"
    return None


def _dtype_problem(dtype: Any, what: str = "matrix") -> Optional[str]:
    """Why an array of ``dtype`` (NumPy or torch) is not a real numeric ``what``, or ``None``."""
    if dtype is None:
        return None
    if "complex" in str(dtype):
        return (
            f"complex-valued {what} (dtype {dtype}) is not supported: "
            "wwmonitor analyses real weights only (it will not drop the imaginary part)"
        )
    if hasattr(dtype, "is_floating_point"):  # torch.dtype (complex handled above)
        if dtype == _torch().bool:
            return f"expected a real numeric {what}, got dtype {dtype}"
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return None  # an unknown array library's dtype: checked again after conversion
    if not np.issubdtype(dt, np.number):
        return f"expected a real numeric {what}, got dtype {dt}"
    return None


def input_problem(W: Any, what: str = "matrix") -> Optional[str]:
    """Why ``W`` cannot be analysed as a dense real ``what`` ("matrix" or "stack"),
    or ``None``: sparse / quantized / masked containers, complex or non-numeric dtypes.

    Callers prefix the layer name; :func:`wwmonitor.analyze_matrix` and the
    ESD functions raise ``TypeError`` with it.
    """
    return _container_problem(W) or _dtype_problem(getattr(W, "dtype", None), what)


def _check_matrix(W: np.ndarray, name: str, *, ndim: int = 2) -> None:
    """Raise naming ``name`` unless ``W`` is a non-empty real numeric array of ``ndim`` dimensions
    (2: a matrix; 3: a stack of matrices ``(K, a, b)``)."""
    what = "matrix" if ndim == 2 else "stack"
    problem = _dtype_problem(W.dtype, what)
    if problem:
        raise TypeError(f"{name}: {problem}")
    if W.ndim != ndim:
        expected = "a 2-D matrix" if ndim == 2 else "a stack of matrices (K, a, b)"
        raise ValueError(f"{name}: expected {expected}, got an array of shape {tuple(W.shape)}")
    if min(W.shape) == 0:
        raise ValueError(f"{name}: {what} has an empty dimension, shape {tuple(W.shape)}")


def _raise_input_problem(W: Any, name: str, what: str) -> None:
    problem = input_problem(W, what)
    if problem:
        raise TypeError(f"{name}: {problem}")
