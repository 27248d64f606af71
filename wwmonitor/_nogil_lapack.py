"""LAPACK/BLAS calls of the host analysis that release the GIL while they run.

SciPy's Python wrappers of ``dsyevd`` (``scipy.linalg.eigh``) and ``dsyrk`` (``scipy.linalg.blas.dsyrk``)
**hold the GIL for the whole LAPACK/BLAS call** (measured: a Python loop on another thread stalls for the full
0.3 s of a 1024 x 1024 ``eigh``, against at most a switch interval next to ``numpy.linalg.eigvalsh``).  In the
monitor's worker thread that stalls the training thread once per matrix: the main cause of the measured loop
overhead (docs/benchmarks.md, "Training-loop overhead").

Here the same two routines are called through SciPy's Cython LAPACK/BLAS function pointers
(``scipy.linalg.cython_lapack`` / ``cython_blas``, the LP64 interface SciPy itself uses) with :mod:`ctypes`, which
releases the GIL for the duration of a foreign call.  Same library, same algorithm, same results; where the
pointers cannot be had (another SciPy build), :func:`available` is ``False`` and the callers use SciPy's wrappers.
"""

from __future__ import annotations

import ctypes
from typing import Any, Optional

import numpy as np

__all__ = ["available", "dsyevd_values_lower", "dsyrk_lower_add"]

_c_int_p = ctypes.POINTER(ctypes.c_int)
_c_dbl_p = ctypes.POINTER(ctypes.c_double)
_c_chr_p = ctypes.c_char_p
_FNS: Optional[dict[str, Any]] = None


def _pointer(module: Any, name: str) -> int:
    cap = module.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return int(get_ptr(cap, get_name(cap)))


def _load() -> dict[str, Any]:
    global _FNS
    if _FNS is None:
        try:
            from scipy.linalg import cython_blas, cython_lapack

            syevd = ctypes.CFUNCTYPE(
                None, _c_chr_p, _c_chr_p, _c_int_p, _c_dbl_p, _c_int_p, _c_dbl_p, _c_dbl_p, _c_int_p, _c_int_p,
                _c_int_p, _c_int_p,
            )(_pointer(cython_lapack, "dsyevd"))  # fmt: skip
            syrk = ctypes.CFUNCTYPE(
                None, _c_chr_p, _c_chr_p, _c_int_p, _c_int_p, _c_dbl_p, _c_dbl_p, _c_int_p, _c_dbl_p, _c_dbl_p,
                _c_int_p,
            )(_pointer(cython_blas, "dsyrk"))  # fmt: skip
            _FNS = {"syevd": syevd, "syrk": syrk}
        except Exception:  # noqa: BLE001 - any other SciPy build: the callers use SciPy's wrappers
            _FNS = {}
    return _FNS


def available() -> bool:
    """Whether the GIL-free routines can be used in this process."""
    return bool(_load())


def _i(v: int) -> Any:
    return ctypes.byref(ctypes.c_int(int(v)))


def _p(a: np.ndarray) -> Any:
    return a.ctypes.data_as(_c_dbl_p)


def _ip(a: np.ndarray) -> Any:
    return a.ctypes.data_as(_c_int_p)


def dsyevd_values_lower(G: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending) of the symmetric ``M x M`` float64 Fortran-ordered ``G`` given by its lower
    triangle, by LAPACK ``dsyevd`` (values only) in place: ``G`` is destroyed.  ``LinAlgError`` when LAPACK
    reports a failure (``info != 0``)."""
    if G.dtype != np.float64 or G.ndim != 2 or G.shape[0] != G.shape[1] or not G.flags.f_contiguous:
        raise ValueError("dsyevd_values_lower: needs a square float64 Fortran-ordered matrix")
    n = G.shape[0]
    w = np.empty(n)
    fn, lda = _load()["syevd"], _i(max(1, n))
    # workspace query first (as SciPy does): the optimal sizes select LAPACK's blocked reduction
    work, iwork, info = np.empty(1), np.empty(1, dtype=np.intc), ctypes.c_int(0)
    fn(b"N", b"L", _i(n), _p(G), lda, _p(w), _p(work), _i(-1), _ip(iwork), _i(-1), ctypes.byref(info))
    if info.value == 0:
        lwork, liwork = max(2 * n + 1, int(work[0])), max(1, int(iwork[0]))
        work, iwork = np.empty(lwork), np.empty(liwork, dtype=np.intc)
        fn(b"N", b"L", _i(n), _p(G), lda, _p(w), _p(work), _i(lwork), _ip(iwork), _i(liwork), ctypes.byref(info))
    if info.value != 0:
        raise np.linalg.LinAlgError(f"LAPACK dsyevd failed (info={info.value})")
    return w


def dsyrk_lower_add(G: np.ndarray, B: np.ndarray) -> None:
    """``G += Bᵀ B`` on the lower triangle of the ``M x M`` float64 Fortran-ordered ``G`` (BLAS ``dsyrk``),
    for a float64 C-ordered block ``B`` of shape ``(k, M)``."""
    if B.dtype != np.float64 or not B.flags.c_contiguous or G.shape != (B.shape[1], B.shape[1]):
        raise ValueError("dsyrk_lower_add: needs a C-ordered float64 (k, M) block and an M x M G")
    if not (G.dtype == np.float64 and G.flags.f_contiguous):
        raise ValueError("dsyrk_lower_add: G must be float64 and Fortran-ordered")
    k, m = B.shape
    one = ctypes.c_double(1.0)
    # B (k, M) C-ordered is Bᵀ (M, k) Fortran-ordered with lda = M: C := 1·(Bᵀ)(Bᵀ)ᵀ + 1·C, TRANS='N'
    _load()["syrk"](
        b"L", b"N", _i(m), _i(k), ctypes.byref(one), _p(B), _i(max(1, m)), ctypes.byref(one), _p(G), _i(max(1, m))
    )
