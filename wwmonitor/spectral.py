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

Modules: input checks live in :mod:`wwmonitor.inputs`, the analysis device
and BLAS thread limit in :mod:`wwmonitor.compute` (both re-exported here).

Inputs that are not dense real matrices are refused with a ``TypeError``
naming the matrix: complex matrices (the imaginary part is never dropped),
sparse matrices and tensors (``scipy.sparse``, torch sparse layouts; densify
them yourself if they fit in memory), quantized tensors, masked arrays with
masked entries, and object/bool/string arrays.

Scale: weights so small that ``Σ W_ij²`` is below ``2^-800`` (``|W| < 2^-400``,
e.g. denormal ``1e-310``) lose precision or vanish in the Gram matrix, and
weights so large that it overflows cannot be squared at all.  Such matrices
are analysed as ``W / 2^e`` (``2^e`` the power of two just above ``max |W|``,
an exact rescaling) and the eigenvalues are multiplied back by ``4^e``;
:func:`squared_singular_values` and :func:`esd` raise ``ValueError`` naming
the underflow when the largest eigenvalue is then not a normal float64, and
:func:`wwmonitor.analyze_matrix` keeps the exponent separately (log norms in
log space, see :mod:`wwmonitor.analyze`).  Ordinary matrices (``2^-400 <=
max |W|``, no overflow) never take this route.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import numpy as np

from .compute import (
    DEVICES,
    auto_device,
    blas_thread_limit,
    check_device,
    resolve_device,
    to_analysis_tensor,
    usable_cpus,
    uses_torch_route,
)
from .frameworks import is_torch_tensor as _is_torch_tensor
from .inputs import _check_matrix, _raise_input_problem, _torch, input_problem, to_numpy
from .inputs import _dtype_problem as _dtype_problem  # re-exported: wwmonitor.analyze imports it from here

__all__ = [
    "esd",
    "esd_batched",
    "squared_singular_values",
    "to_numpy",
    # re-exported from wwmonitor.compute / wwmonitor.inputs (where they are defined), used with the ESD functions
    "blas_thread_limit",
    "usable_cpus",
    "DEVICES",
    "check_device",
    "resolve_device",
    "auto_device",
    "uses_torch_route",
    "to_analysis_tensor",
    "input_problem",
]

log = logging.getLogger("wwmonitor")


def squared_singular_values(
    W: Any, *, name: str = "W", low_memory: bool = False, device: Optional[str] = None
) -> np.ndarray:
    """Eigenvalues of ``WᵀW`` (unnormalised; ``σ_i²``), ascending, length ``M``.

    Computed as ``eigvalsh`` of the float64 Gram matrix of the smaller side
    (float32/float16 inputs are widened exactly before the product);
    tiny negative round-off is clipped to 0.  For torch tensors on an
    accelerator the computation runs on the tensor's own device.

    ``device``: ``None``/``"auto"`` (as just said), ``"cpu"`` (always the
    NumPy route; device tensors are copied to the host), ``"cuda"``/``"cuda:N"``
    (the torch route on that device) or ``"torch"`` (the torch route on the
    tensor's own device, CPU included).  Both routes give the same eigenvalues
    to ``~1e-14·λ_max`` and take the same SVD recheck.

    ``low_memory=True`` builds the Gram matrix in place with BLAS ``dsyrk``
    over 128-row float64 blocks and lets LAPACK ``dsyevd`` overwrite it:
    working memory ~``8·M²`` bytes (about 2.5x a square float32 matrix)
    instead of a float64 copy of ``W`` plus two ``M x M`` matrices.  Matrices
    whose float64 copy and Gram matrix fit in ``LOW_MEMORY_DIRECT_BYTES``
    (48 MiB: up to 4096 x 1024) take the faster default Gram product instead,
    with the same overwriting eigensolver, so the working memory is at most
    ``max(48 MiB, ~8·M²)``.  It is as
    fast on one thread; the default route is faster when several threads
    analyse matrices at once (SciPy's BLAS serialises concurrent calls).

    Raises ``ValueError`` naming ``name`` for a non-2-D or empty matrix,
    for NaN/Inf entries (or entries so large that ``Σ W_ij²`` overflows) and
    for entries so small that the largest eigenvalue underflows float64 (see
    the module docstring: tiny matrices are computed on ``W / 2^e`` and
    scaled back exactly).  Raises ``TypeError`` naming ``name`` for complex,
    sparse, quantized, masked or non-numeric input.
    """
    ev, e2 = squared_singular_values_scaled(W, name=name, low_memory=low_memory, device=device)
    return _unscale(ev, e2, name, W)


def squared_singular_values_scaled(
    W: Any,
    *,
    name: str = "W",
    low_memory: bool = False,
    rescale_large: bool = False,
    device: Optional[str] = None,
) -> tuple[np.ndarray, int]:
    """``(ev, e2)`` with the eigenvalues of ``WᵀW`` equal to ``ev · 2**e2``.

    ``e2 == 0`` (and ``ev`` identical to :func:`squared_singular_values`)
    for every matrix with ``Σ_i W_ij² >= 2^-800`` that does not overflow.
    Smaller matrices (denormal weights) -- and, with ``rescale_large``,
    matrices whose sum of squares overflows -- are computed as
    ``W / 2^e`` with ``2^e`` the power of two just above ``max |W|`` (exact),
    and ``e2 = 2e``.
    """
    _raise_input_problem(W, name, "matrix")
    if uses_torch_route(W, device):
        return _squared_sv_torch(to_analysis_tensor(W, device, name=name), name=name, rescale_large=rescale_large)
    A = to_numpy(W, name=name)
    _check_matrix(A, name)
    return _evals_scaled(A, name, low_memory=low_memory, rescale_large=rescale_large, stack=False)


#: A Gram diagonal (column sums of squares) whose largest entry is below this
#: (entries below ~2^-400) is recomputed on ``W / max|W|`` (see the module docstring).
TINY_GRAM = 2.0**-800


def _evals_scaled(
    A: np.ndarray, name: str, *, low_memory: bool, rescale_large: bool, stack: bool
) -> tuple[np.ndarray, int]:
    """Ascending eigenvalues of ``AᵀA`` (last two axes) as ``(ev, e2)``, value ``ev · 2**e2``."""
    direct = low_memory and not stack and _direct_fits(A.shape)
    if stack or not low_memory or direct:
        G = _gram64(A)
    else:
        G = _gram64_lower(A)  # Fortran order, lower triangle, built in place
    e = _rescale_exponent(np.diagonal(G, axis1=-2, axis2=-1), A, name, rescale_large)
    if e:
        del G
        ev, _ = _evals_scaled(
            np.ldexp(np.asarray(A, dtype=np.float64), -e), name, low_memory=low_memory, rescale_large=False, stack=stack
        )
        return ev, 2 * e
    M = G.shape[-1]
    if stack:
        ev = np.linalg.eigvalsh(G)
        redo = [k for k in range(ev.shape[0]) if _needs_svd(ev[k, 0], ev[k, -1], M)]
        if redo:
            ev[redo] = _svd_squared(A[redo])
        return np.clip(ev, 0.0, None, out=ev), 0
    if low_memory:  # G is destroyed: no second M x M copy (a full symmetric G read as its F-order transpose)
        ev = _eigvalsh_overwrite(G.T if direct else G)
    else:
        ev = np.linalg.eigvalsh(G)
    if _needs_svd(ev[0], ev[-1], M):
        ev = _svd_squared(A)
    return np.clip(ev, 0.0, None, out=ev), 0


#: ``low_memory=True`` still takes the default Gram route (a float64 copy of ``W`` and NumPy's product, 1.2-1.5x
#: faster than the ``dsyrk`` blocks measured on one thread) when that copy and the Gram matrix together take at
#: most this many bytes; the eigensolver then overwrites the Gram matrix as on the in-place route.
LOW_MEMORY_DIRECT_BYTES = 48 * 2**20


def _direct_fits(shape: tuple[int, ...]) -> bool:
    """True when a 2-D ``shape``'s float64 copy plus its float64 Gram matrix fit :data:`LOW_MEMORY_DIRECT_BYTES`."""
    a, b = shape[-2], shape[-1]
    return 8 * (a * b + min(a, b) ** 2) <= LOW_MEMORY_DIRECT_BYTES


def _rescale_exponent(diag: np.ndarray, A: np.ndarray, name: str, rescale_large: bool) -> int:
    """``e`` such that ``A / 2^e`` must be analysed instead of ``A`` (0: analyse ``A``).

    ``diag`` is the Gram diagonal.  Raises for non-finite entries and, unless
    ``rescale_large``, for an overflowing sum of squares.
    """
    if np.isfinite(diag).all():
        if diag.size == 0 or float(diag.max()) >= TINY_GRAM:
            return 0
        amax = float(np.max(np.abs(A)))
        return math.frexp(amax)[1] if amax > 0.0 else 0  # a truly zero matrix stays as it is
    if not np.isfinite(A).all():
        raise ValueError(f"{name}: matrix contains non-finite values (NaN or Inf)")
    amax = float(np.max(np.abs(A)))
    if not rescale_large:
        raise ValueError(
            f"{name}: matrix entries too large: the sum of squares overflows float64 (max |W| = {amax:.3g})"
        )
    return math.frexp(amax)[1]


def _absmax(W: Any) -> float:
    if _is_torch_tensor(W):
        return float(W.detach().abs().max().item())
    return float(np.max(np.abs(to_numpy(W))))


def _unscale(ev: np.ndarray, e2: int, name: str, W: Any) -> np.ndarray:
    """``ev · 2**e2``; raises ``ValueError`` when the largest value is not a normal float64."""
    if e2 == 0:
        return ev
    with np.errstate(over="ignore", under="ignore"):
        out = np.ldexp(ev, e2)
    top = float(np.max(out))
    if not math.isfinite(top):
        raise ValueError(
            f"{name}: the eigenvalues of WᵀW overflow float64 (max |W| = {_absmax(W):.3g}); "
            "wwmonitor.analyze_matrix analyses such a matrix as W / max|W| and reports log norms"
        )
    if top < np.finfo(np.float64).tiny:
        raise ValueError(
            f"{name}: the eigenvalues of WᵀW underflow float64 (max |W| = {_absmax(W):.3g}, largest "
            f"eigenvalue 2^{math.log2(float(np.max(ev))) + e2:.1f}); they cannot be represented -- "
            "wwmonitor.analyze_matrix analyses such a matrix as W / max|W| and reports log norms"
        )
    return out


def _eigvalsh_overwrite(G: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending) of the symmetric float64 ``G`` given by its
    lower triangle (Fortran order, as :func:`_gram64_lower` returns it),
    computed in place by LAPACK ``dsyevd``: ``G`` is destroyed and no second
    ``M x M`` copy is made (``numpy.linalg.eigvalsh`` would copy it).
    """
    from . import _nogil_lapack

    if _nogil_lapack.available() and G.flags.f_contiguous:  # the same dsyevd without holding the GIL
        return _nogil_lapack.dsyevd_values_lower(G)
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
    with np.errstate(over="ignore", invalid="ignore"):  # reported by _rescale_exponent
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

    from . import _nogil_lapack

    nogil = _nogil_lapack.available()  # the same dsyrk, bit for bit, without holding the GIL
    B = A if A.shape[0] >= A.shape[1] else A.T  # long side first: (N, M)
    M = B.shape[1]
    G = np.zeros((M, M), order="F")
    with np.errstate(over="ignore", invalid="ignore"):  # reported by _rescale_exponent
        for start in range(0, B.shape[0], GRAM_BLOCK_ROWS):
            blk = np.ascontiguousarray(B[start : start + GRAM_BLOCK_ROWS], dtype=np.float64)
            if nogil:
                _nogil_lapack.dsyrk_lower_add(G, blk)
            else:
                G = _dsyrk(1.0, blk, beta=1.0, c=G, trans=1, lower=1, overwrite_c=1)
    return G


def _squared_sv_torch(W: Any, *, name: str, rescale_large: bool = False, stack: bool = False) -> tuple[np.ndarray, int]:
    """Torch route: ``(ev, e2)`` as :func:`squared_singular_values_scaled`, on the tensor's device
    (``stack``: a ``(K, a, b)`` stack, eigenvalues ``(K, M)``).

    The same algorithm as the NumPy route, in torch: float64 Gram of the smaller
    side, non-finite check and extreme-scale rescaling from its diagonal,
    ``torch.linalg.eigvalsh``, and the values-only SVD
    (``torch.linalg.svdvals``) of every matrix whose Gram spectrum fails
    :func:`_needs_svd` -- so ranks of (nearly) rank-deficient matrices agree
    with the host route.  Runs on whatever stream is current (the monitor's
    worker makes it a side stream on CUDA).  Only the ``M`` eigenvalues (and,
    for the SVD recheck, their ends) travel to the host.

    float64 throughout: a float32 Gram would be 1.3-2x faster on the CPU (far
    more on consumer GPUs) but its ``~M·6e-8·λ_max`` error is as large as the
    smallest eigenvalues of square matrices, and eigenvalues would miss the
    ``1e-10·λ_max`` agreement with the host route (measured in
    ``tests/test_spectral.py``; see docs/callbacks.md).
    """
    torch = _torch()
    t = W.detach() if _is_torch_tensor(W) else torch.as_tensor(np.asarray(W))
    what = "stack" if stack else "matrix"
    _raise_input_problem(t, name, what)
    want = 3 if stack else 2
    if t.ndim != want:
        expected = "a 2-D matrix" if want == 2 else "a stack of matrices (K, a, b)"
        raise ValueError(f"{name}: expected {expected}, got a tensor of shape {tuple(t.shape)}")
    if min(t.shape) == 0:
        raise ValueError(f"{name}: {what} has an empty dimension, shape {tuple(t.shape)}")
    x = t.to(torch.float64)  # float32/16 products are exact in float64, as on the host route

    def gram(y: Any) -> Any:
        yt = y.transpose(-1, -2)
        return y @ yt if y.shape[-2] < y.shape[-1] else yt @ y

    G = gram(x)
    diag = torch.diagonal(G, dim1=-2, dim2=-1)
    e = 0
    if not bool(torch.isfinite(diag).all()):  # a non-finite entry or an overflowing sum of squares
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name}: matrix contains non-finite values (NaN or Inf)")
        amax = float(x.abs().max().item())
        if not rescale_large:
            raise ValueError(
                f"{name}: matrix entries too large: the sum of squares overflows float64 (max |W| = {amax:.3g})"
            )
        e = math.frexp(amax)[1]
    elif float(diag.max().item()) < TINY_GRAM:
        amax = float(x.abs().max().item())
        e = math.frexp(amax)[1] if amax > 0.0 else 0
    if e:
        k = -e  # multiply by 2^k in steps that stay representable (exact: powers of two)
        while k:
            step = max(-1000, min(1000, k))
            x = x * (2.0**step)
            k -= step
        G = gram(x)
    M = G.shape[-1]
    ev_t = torch.linalg.eigvalsh(G)
    del G
    ev = ev_t.cpu().numpy()  # (…, M) to the host: the only transfer unless an SVD is needed
    if stack:
        redo = [k for k in range(ev.shape[0]) if _needs_svd(ev[k, 0], ev[k, -1], M)]
        if redo:
            sv = torch.linalg.svdvals(x[redo])
            ev[redo] = np.sort((sv * sv).cpu().numpy(), axis=-1)
    elif _needs_svd(ev[0], ev[-1], M):
        sv = torch.linalg.svdvals(x)
        ev = np.sort((sv * sv).cpu().numpy())
    return np.clip(ev, 0.0, None, out=ev), 2 * e


def esd(W: Any, *, normalize: bool = True, name: str = "W", device: Optional[str] = None) -> np.ndarray:
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
    device:
        Where to compute: ``None``/``"auto"``, ``"cpu"``, ``"cuda"``, ``"torch"``
        (see :func:`squared_singular_values`).
    """
    ev, e2 = squared_singular_values_scaled(W, name=name, device=device)
    if normalize:
        ev = ev / float(max(np.shape(W)))
    return _unscale(ev, e2, name, W)


def esd_batched(Ws: Any, *, normalize: bool = True, name: str = "W", device: Optional[str] = None) -> np.ndarray:
    """ESDs of a stack of equally shaped matrices, shape ``(K, a, b)`` -> ``(K, M)``.

    Used for convolution kernels (one ``out x in`` slice per kernel position):
    a single batched matmul and batched ``eigvalsh`` call instead of ``K``
    separate calls.  Input checks and extreme scales as :func:`esd`.
    """
    ev, e2 = esd_batched_scaled(Ws, name=name, device=device)
    if normalize:
        ev = ev / float(max(np.shape(Ws)[-2:]))
    return _unscale(ev, e2, name, Ws)


def esd_batched_scaled(
    Ws: Any, *, name: str = "W", rescale_large: bool = False, device: Optional[str] = None
) -> tuple[np.ndarray, int]:
    """Unnormalised ``(ev, e2)`` of a stack ``(K, a, b)``: eigenvalues of ``WᵀW`` = ``ev · 2**e2``
    (one exponent for the whole stack; see :func:`squared_singular_values_scaled`)."""
    _raise_input_problem(Ws, name, "stack")
    if uses_torch_route(Ws, device):
        return _squared_sv_torch(
            to_analysis_tensor(Ws, device, name=name), name=name, rescale_large=rescale_large, stack=True
        )
    A = to_numpy(Ws, name=name)
    _check_matrix(A, name, ndim=3)
    return _evals_scaled(A, name, low_memory=False, rescale_large=rescale_large, stack=True)
