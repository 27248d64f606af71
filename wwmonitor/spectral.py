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
symmetric eigensolver; matrices that are (nearly) rank-deficient, where the
Gram's ``M · eps · λ_max`` absolute error would swamp the small eigenvalues
that ``matrix_rank`` needs, are recomputed with a values-only SVD.  On the
CPU the Gram route is 2-3.4x faster per matrix than the values-only SVD
(``gesdd``) that weightwatcher uses (3-5x faster than a full SVD) and,
computed in float64, agrees with a float64 SVD to ``~1e-14 · λ_max`` absolute
error (``<= 1e-10 · λ_max`` is tested in ``tests/test_spectral.py``).
A float32 Gram is *not* offered on the CPU: its error (~4e-8 · λ_max) is as
large as the smallest eigenvalues of a square matrix, which would break
rank-collapse detection, and it saves only 10-30% (``benchmarks/bench_esd.py``).

Speed notes (measured, ``benchmarks/bench_esd.py`` and docs/benchmarks.md):

* ``numpy.linalg.eigvalsh`` (LAPACK ``syevd``, values only) is the fastest
  float64 solver available here; SciPy's ``syevd``/``syevr``/``syev``
  drivers, the two-stage ``syevd_2stage`` and ``torch.linalg.eigvalsh`` (MKL)
  are as fast or slower.  All values-only drivers spend their time in the
  tridiagonal reduction, so the Gram route costs ``M²N`` (Gram) ``+ 4/3 M³``
  (reduction) against ``4NM² - 4/3 M³`` for the values-only SVD
  (``gesdd``) that weightwatcher uses: measured 2.0x (1024x1024) to 3.4x
  (2048x512) fewer seconds per matrix, one BLAS thread each.
* The input is checked for NaN/Inf through the Gram diagonal
  (``G_jj = Σ_i W_ij²`` is non-finite iff column ``j`` holds a non-finite
  entry or overflows), an ``O(M)`` check instead of a pass over ``W``.
* Many matrices are analysed fastest one per thread with **one BLAS thread
  each** (LAPACK and matmul release the GIL): multi-threaded OpenBLAS in the
  reduction is memory-bound and degrades badly when the cores are shared
  (measured 3-20x slower for a 512x512 ESD on a loaded 2-core machine).
  :func:`blas_thread_limit` is the switch; :func:`wwmonitor.analyze_model`
  uses it with its thread pool.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Optional

import numpy as np

__all__ = ["esd", "esd_batched", "squared_singular_values", "to_numpy", "blas_thread_limit", "usable_cpus"]


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


def _check_matrix(W: np.ndarray, name: str, *, ndim: int = 2) -> None:
    """Raise naming ``name`` unless ``W`` is a non-empty numeric array of ``ndim`` dimensions
    (2: a matrix; 3: a stack of matrices ``(K, a, b)``)."""
    what = "matrix" if ndim == 2 else "stack"
    if W.ndim != ndim:
        expected = "a 2-D matrix" if ndim == 2 else "a stack of matrices (K, a, b)"
        raise ValueError(f"{name}: expected {expected}, got an array of shape {tuple(W.shape)}")
    if min(W.shape) == 0:
        raise ValueError(f"{name}: {what} has an empty dimension, shape {tuple(W.shape)}")
    if not np.issubdtype(W.dtype, np.number):
        raise TypeError(f"{name}: expected a numeric {what}, got dtype {W.dtype}")


def squared_singular_values(W: Any, *, name: str = "W", low_memory: bool = False) -> np.ndarray:
    """Eigenvalues of ``WᵀW`` (unnormalised; ``σ_i²``), ascending, length ``M``.

    Computed as ``eigvalsh`` of the float64 Gram matrix of the smaller side
    (float32/float16 inputs are widened exactly before the product);
    tiny negative round-off is clipped to 0.  For torch tensors on an
    accelerator the computation runs on the tensor's own device.

    ``low_memory=True`` builds the Gram matrix in place with BLAS ``dsyrk``
    over 128-row float64 blocks and lets LAPACK ``dsyevd`` overwrite it:
    working memory ~``8·M²`` bytes (about 2.5x a square float32 matrix)
    instead of a float64 copy of ``W`` plus two ``M x M`` matrices.  It is as
    fast on one thread; the default route is faster when several threads
    analyse matrices at once (SciPy's BLAS serialises concurrent calls).

    Raises ``ValueError`` naming ``name`` for a non-2-D or empty matrix and
    for NaN/Inf entries (or entries so large that ``Σ W_ij²`` overflows).
    """
    if _is_torch_tensor(W) and getattr(W, "device", None) is not None and W.device.type != "cpu":
        return _squared_sv_torch(W, name=name)
    A = to_numpy(W)
    _check_matrix(A, name)
    if low_memory:
        G = _gram64_lower(A)  # Fortran order, lower triangle, built in place
        _check_gram_finite(G, A, name)
        M = G.shape[-1]
        ev = _eigvalsh_overwrite(G)  # G is destroyed: no second M x M copy
    else:
        G = _gram64(A)
        _check_gram_finite(G, A, name)
        M = G.shape[-1]
        ev = np.linalg.eigvalsh(G)
    if _needs_svd(ev[0], ev[-1], M):
        ev = _svd_squared(A)
    return np.clip(ev, 0.0, None, out=ev)


def _eigvalsh_overwrite(G: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending) of the symmetric float64 ``G`` given by its
    lower triangle (Fortran order, as :func:`_gram64_lower` returns it),
    computed in place by LAPACK ``dsyevd``: ``G`` is destroyed and no second
    ``M x M`` copy is made (``numpy.linalg.eigvalsh`` would copy it).
    """
    from scipy.linalg import eigh as _lapack_eigh

    return _lapack_eigh(G, lower=True, eigvals_only=True, overwrite_a=True, check_finite=False, driver="evd")


#: An ESD whose smallest Gram eigenvalue is below ``SVD_RECHECK · M · eps · λ_max``
#: is recomputed with a values-only SVD (see :func:`_needs_svd`).
SVD_RECHECK = 100.0


def _needs_svd(lam_min: float, lam_max: float, M: int) -> bool:
    """True when the Gram route cannot resolve the small end of the spectrum.

    The Gram eigenvalues carry an absolute error of about ``M · eps · λ_max``,
    i.e. singular values below ``~sqrt(M · eps) · σ_max ≈ 1e-7 σ_max`` are
    noise, while ``matrix_rank`` (NumPy's / weightwatcher's tolerance
    ``σ_max · max(N, M) · eps``) needs them to ``1e-13 σ_max``.  When every
    eigenvalue exceeds ``SVD_RECHECK`` times that error the rank is certainly
    full and each eigenvalue is accurate to 1% relative or better, so the SVD is
    skipped.  Random square matrices (``λ_min/λ_max ≈ 1/(4N²)``) pass for
    ``N`` up to a few thousand; rank-deficient matrices always take the SVD.
    """
    return lam_max > 0.0 and lam_min < SVD_RECHECK * M * np.finfo(np.float64).eps * lam_max


def _svd_squared(A: np.ndarray) -> np.ndarray:
    """Squared singular values of ``A`` (last two axes), float64, ascending."""
    sv = np.linalg.svd(np.asarray(A, dtype=np.float64), compute_uv=False)
    return np.sort(sv * sv, axis=-1)


#: Rows (of the long side) widened to float64 at a time when building a 2-D Gram matrix.
GRAM_BLOCK_ROWS = 128


def _gram64(A: np.ndarray) -> np.ndarray:
    """Float64 Gram matrices of the smaller side of a stack ``A`` (last two axes), ``(..., M, M)``.

    Products of widened float32 values are exact in float64, so the only
    error is float64 summation error.
    """
    A64 = A if A.dtype == np.float64 else A.astype(np.float64)
    At = np.swapaxes(A64, -1, -2)
    with np.errstate(over="ignore", invalid="ignore"):  # reported by _check_gram_finite
        return A64 @ At if A64.shape[-2] < A64.shape[-1] else At @ A64


def _gram64_lower(A: np.ndarray) -> np.ndarray:
    """Float64 Gram matrix ``G = WᵀW`` of a 2-D ``A`` (smaller side, ``M x M``),
    Fortran-ordered, with only its **lower triangle** filled.

    Built with BLAS ``dsyrk`` accumulating ``G += B_bᵀ B_b`` over blocks of
    ``GRAM_BLOCK_ROWS`` rows widened to float64, so the working set is ``G``
    itself plus one small block: no float64 copy of ``W`` and no temporary
    ``M x M`` product.  Products of widened float32 values are exact in
    float64; the only error is float64 summation error.
    """
    from scipy.linalg.blas import dsyrk as _dsyrk

    B = A if A.shape[0] >= A.shape[1] else A.T  # long side first: (N, M)
    M = B.shape[1]
    G = np.zeros((M, M), order="F")
    with np.errstate(over="ignore", invalid="ignore"):  # reported by _check_gram_finite
        for start in range(0, B.shape[0], GRAM_BLOCK_ROWS):
            blk = np.asarray(B[start:start + GRAM_BLOCK_ROWS], dtype=np.float64)
            G = _dsyrk(1.0, blk, beta=1.0, c=G, trans=1, lower=1, overwrite_c=1)
    return G


def _check_gram_finite(G: np.ndarray, A: np.ndarray, name: str) -> None:
    """Raise if the Gram diagonal (``Σ_i W_ij²`` per column) is not finite."""
    if np.isfinite(np.diagonal(G, axis1=-2, axis2=-1)).all():
        return
    if not np.isfinite(A).all():
        raise ValueError(f"{name}: matrix contains non-finite values (NaN or Inf)")
    raise ValueError(f"{name}: matrix entries too large: the sum of squares overflows float64 (max |W| = {np.abs(A).max():.3g})")


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
        A = to_numpy(Ws)
        _check_matrix(A, name, ndim=3)
        G = _gram64(A)
        _check_gram_finite(G, A, name)
        ev = np.linalg.eigvalsh(G)
        redo = [k for k in range(ev.shape[0]) if _needs_svd(ev[k, 0], ev[k, -1], G.shape[-1])]
        if redo:
            ev[redo] = _svd_squared(A[redo])
        np.clip(ev, 0.0, None, out=ev)
    if normalize:
        ev = ev / float(max(np.shape(Ws)[-2:]))
    return ev


# ------------------------------------------------------------ BLAS threads ----
def usable_cpus() -> int:
    """CPUs this process may run on (``sched_getaffinity``, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _controller() -> Any:
    """A fresh ``ThreadpoolController`` (about 1 ms; sees libraries loaded
    since the last call), or ``None`` without ``threadpoolctl``."""
    try:
        from threadpoolctl import ThreadpoolController

        return ThreadpoolController()
    except Exception:  # noqa: BLE001 - threadpoolctl missing or broken: no limit
        return None


@contextlib.contextmanager
def blas_thread_limit(n: Optional[int]) -> Iterator[None]:
    """Limit the BLAS/LAPACK libraries (OpenBLAS, MKL, BLIS) to ``n`` threads
    inside the ``with`` block, then restore the previous setting.

    The limit is process-wide (a BLAS library has one thread count) and only
    ever lowers a library's current thread count, never raises it (a user's
    ``OPENBLAS_NUM_THREADS=1`` stays in force).  ``n=None`` or a missing
    ``threadpoolctl`` leaves BLAS untouched.  OpenMP runtimes (torch's
    intra-op pool) are not changed.
    """
    tpc = _controller() if n is not None else None
    if tpc is None:
        yield
        return
    try:
        blas = tpc.select(user_api="blas")
        current = [int(lib.num_threads) for lib in blas.lib_controllers]
    except Exception:  # noqa: BLE001 - a broken library probe must not stop the analysis
        yield
        return
    if not current or min(max(1, int(n)), max(current)) >= max(current):
        yield
        return
    with blas.limit(limits=max(1, int(n))):
        yield
