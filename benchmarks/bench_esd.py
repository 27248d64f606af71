"""Per-matrix ESD routes, side by side, one BLAS thread, plus the threading policy.

Table 1: seconds per matrix for the shapes in the analyze benchmark models
(``W`` float32 as stored by torch), each route timed in the same round
(alternating, median of ``REPEATS``), with the largest absolute eigenvalue
error relative to ``λ_max`` against a float64 ``numpy.linalg.svd``:

* ``gesdd``: ``scipy.linalg.svd(W64, compute_uv=False)``, weightwatcher's route;
* ``eigvalsh`` (ours): float64 Gram ``W64ᵀW64`` + ``numpy.linalg.eigvalsh``;
* ``scipy evd/evr/ev``: ``scipy.linalg.eigh(G, eigvals_only=True, driver=...,
  overwrite_a=True, check_finite=False)``;
* ``syrk+dsyevd``: Gram by BLAS ``dsyrk`` (half the flops) + SciPy's ``dsyevd``;
* ``torch``: ``torch.linalg.eigvalsh`` (MKL) on the float64 Gram, 1 torch thread;
* ``f32 gram``: float32 Gram + ``ssyevd`` (the accuracy it gives up is the last column).

Table 2: the six ESDs of one transformer block (4 x 512x512, 2048x512, 512x2048),
analysed one after another with the BLAS default thread count against one
BLAS thread per worker in a 2-thread pool.

Also prints ``λ_min/λ_max`` of random square matrices against the float32
Gram's error, the figure that decides whether a float32 first pass could
ever skip the float64 recompute.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

REPEATS = 5
SHAPES = [(1024, 784), (1024, 1024), (512, 512), (2048, 512), (128, 64)]


def _routes() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    import scipy.linalg as sl
    from scipy.linalg import blas, lapack

    def gram(A: np.ndarray) -> np.ndarray:
        A64 = A.astype(np.float64)
        return A64.T @ A64 if A64.shape[0] >= A64.shape[1] else A64 @ A64.T

    def tall(A: np.ndarray) -> np.ndarray:
        return A if A.shape[0] >= A.shape[1] else A.T

    routes: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "gesdd (ww)": lambda A: np.sort(sl.svd(A.astype(np.float64), compute_uv=False, check_finite=False) ** 2),
        "eigvalsh (ours)": lambda A: np.linalg.eigvalsh(gram(A)),
        "scipy evd": lambda A: sl.eigh(gram(A), eigvals_only=True, driver="evd", overwrite_a=True, check_finite=False),
        "scipy evr": lambda A: sl.eigh(gram(A), eigvals_only=True, driver="evr", overwrite_a=True, check_finite=False),
        "scipy ev": lambda A: sl.eigh(gram(A), eigvals_only=True, driver="ev", overwrite_a=True, check_finite=False),
        "syrk+dsyevd": lambda A: lapack.dsyevd(
            blas.dsyrk(1.0, np.asfortranarray(tall(A).astype(np.float64)), trans=1, lower=1),
            compute_v=0,
            lower=1,
            overwrite_a=1,
        )[0],
    }
    try:
        import torch

        def torch_route(A: np.ndarray) -> np.ndarray:
            return torch.linalg.eigvalsh(torch.from_numpy(gram(A))).numpy()

        routes["torch (MKL)"] = torch_route
    except ImportError:
        pass

    def f32(A: np.ndarray) -> np.ndarray:
        B = tall(A).astype(np.float32)
        return lapack.ssyevd(B.T @ B, compute_v=0, lower=1, overwrite_a=1)[0].astype(np.float64)

    routes["f32 gram"] = f32
    return routes


def _per_matrix() -> None:
    from threadpoolctl import threadpool_limits

    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    routes = _routes()
    rng = np.random.default_rng(0)
    print("| shape (out x in) | " + " | ".join(routes) + " |")
    print("|---|" + "---|" * len(routes))
    with threadpool_limits(limits=1, user_api="blas"):
        for shape in SHAPES:
            A = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
            ref = np.sort(np.linalg.svd(A.astype(np.float64), compute_uv=False) ** 2)
            ts: dict[str, list[float]] = {k: [] for k in routes}
            err: dict[str, float] = {}
            for r in range(REPEATS):
                for k, f in routes.items():
                    t0 = time.perf_counter()
                    ev = f(A)
                    ts[k].append(time.perf_counter() - t0)
                    if r == 0:
                        err[k] = float(np.max(np.abs(np.sort(ev) - ref)) / ref[-1])
            base = statistics.median(ts["gesdd (ww)"])
            cells = [
                f"{statistics.median(v) * 1e3:.1f} ms ({base / statistics.median(v):.1f}x, err {err[k]:.0e})"
                for k, v in ts.items()
            ]
            print(f"| {shape[0]}x{shape[1]} | " + " | ".join(cells) + " |", flush=True)
    print("\n(Nx = speed-up over gesdd; err = max |Δλ| / λ_max against a float64 SVD)")


def _threading() -> None:
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(1)
    shapes = [(1536 // 3, 512)] * 4 + [(2048, 512), (512, 2048)]
    mats = [(rng.standard_normal(s) / 30).astype(np.float32) for s in shapes]

    def one(A: np.ndarray) -> np.ndarray:
        A64 = A.astype(np.float64)
        G = A64.T @ A64 if A64.shape[0] >= A64.shape[1] else A64 @ A64.T
        return np.linalg.eigvalsh(G)

    def sequential() -> None:
        for A in mats:
            one(A)

    def pooled() -> None:
        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(2) as ex:
            list(ex.map(one, mats))

    def sequential_1() -> None:
        with threadpool_limits(limits=1, user_api="blas"):
            sequential()

    ts: dict[str, list[float]] = {
        "sequential, BLAS default threads": [],
        "sequential, 1 BLAS thread": [],
        "2 workers x 1 BLAS thread": [],
    }
    for _ in range(REPEATS):
        for k, f in zip(ts, (sequential, sequential_1, pooled)):
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    base = statistics.median(ts["sequential, BLAS default threads"])
    print("| one transformer block's 6 ESDs (512 wide) | seconds | speed-up |")
    print("|---|---|---|")
    for k, v in ts.items():
        print(f"| {k} | {statistics.median(v):.3f} s | {base / statistics.median(v):.1f}x |")


def _float32_headroom() -> None:
    rng = np.random.default_rng(2)
    print("| square N | median λ_min/λ_max (float64) | float32 Gram max err / λ_max |")
    print("|---|---|---|")
    for n in (256, 512, 1024):
        ratios, errs = [], []
        for _ in range(3):
            A = rng.standard_normal((n, n)).astype(np.float32)
            ref = np.sort(np.linalg.svd(A.astype(np.float64), compute_uv=False) ** 2)
            ev32 = np.sort(np.linalg.eigvalsh(A.T @ A).astype(np.float64))
            ratios.append(ref[0] / ref[-1])
            errs.append(np.max(np.abs(ev32 - ref)) / ref[-1])
        print(f"| {n} | {statistics.median(ratios):.1e} | {statistics.median(errs):.1e} |")


def main() -> None:
    try:
        print(f"load average at start: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    except OSError:
        pass
    _per_matrix()
    print()
    _threading()
    print()
    _float32_headroom()
    try:
        print(f"\nload average at end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    except OSError:
        pass


if __name__ == "__main__":
    main()
