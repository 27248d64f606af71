"""analyze_model vs weightwatcher 0.7.7 ``analyze()`` (default and ``mp_fit=True``).

Three models (random init, same weights for both tools): an MLP
784-1024-1024-10, a CNN (4 Conv2d 3x3, 64-128 channels, + Linear) and an
``nn.TransformerEncoder`` (d=512, 6 layers, ff 2048).  Calls alternate
between the tools inside each round; every figure is the median over rounds
(``REPEATS``, ``REPEATS_MP`` for weightwatcher's slow ``mp_fit=True``).
Our default run always includes the MP fit and the phase, so it is compared
with both weightwatcher modes.

Two tables:

1. *As shipped*: each library with its own defaults.  Ours analyses matrices
   on a thread pool (one worker per CPU, one BLAS thread each);
   weightwatcher analyses one matrix at a time with the BLAS library's
   default thread count.
2. *One core each*: both sequential with BLAS limited to one thread
   (``threadpoolctl``), which isolates the per-matrix algorithm (float64
   Gram + ``syevd`` against the values-only SVD ``gesdd``) from the
   threading policy.

weightwatcher skips fused attention projections (``in_proj_weight``), so on
the transformer we analyse 36 matrices to its 18; an extra row times ours
with ``exclude=["MultiheadAttention"]``, the same 18 matrices.

The machine load average is printed before and after, because this machine
is shared and the ratios, not the seconds, are the comparable figures.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPEATS = 5
REPEATS_MP = 3
MODELS = ("mlp", "cnn", "transformer")


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _quiet(fn: Callable[[], object]) -> Callable[[], object]:
    """weightwatcher prints progress lines (``SMALL N PL FIT``) to stdout; drop them."""

    def run() -> object:
        with contextlib.redirect_stdout(io.StringIO()):
            return fn()

    return run


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from threadpoolctl import threadpool_limits

    import wwmonitor
    from wwmonitor.compute import usable_cpus

    from model_zoo import build

    with contextlib.redirect_stdout(io.StringIO()):
        import weightwatcher as ww  # import silences warnings process-wide; fine inside the benchmark

    logging.disable(logging.CRITICAL)
    print(f"usable CPUs: {usable_cpus()}; load average (1/5/15 min) at start: {_load()}\n", flush=True)
    shipped, single = [], []
    for name in MODELS:
        model = build(name)
        watcher = ww.WeightWatcher(model=model)
        ww_def_fn = _quiet(watcher.analyze)
        ww_mp_fn = _quiet(functools.partial(watcher.analyze, mp_fit=True))
        # weightwatcher skips fused attention projections; time ours on its matrix set too
        same_set = {"exclude": ["MultiheadAttention"]} if name == "transformer" else None
        rep = wwmonitor.analyze_model(model, progress=False)  # warm-up (imports, caches)
        n_ww = len(ww_def_fn())
        n_same = len(wwmonitor.analyze_model(model, progress=False, **same_set)) if same_set else 0
        ours, ours_same, ours1, ww_def, ww_def1, ww_mp = [], [], [], [], [], []
        for r in range(REPEATS):
            ours.append(_time(functools.partial(wwmonitor.analyze_model, model, progress=False)))
            ww_def.append(_time(ww_def_fn))
            if same_set:
                ours_same.append(_time(functools.partial(wwmonitor.analyze_model, model, progress=False, **same_set)))
            if r < REPEATS_MP:
                ww_mp.append(_time(ww_mp_fn))
            with threadpool_limits(limits=1, user_api="blas"):
                ours1.append(_time(functools.partial(wwmonitor.analyze_model, model, progress=False, workers=1)))
                ww_def1.append(_time(ww_def_fn))
        o, d, m = statistics.median(ours), statistics.median(ww_def), statistics.median(ww_mp)
        o1, d1 = statistics.median(ours1), statistics.median(ww_def1)
        shipped.append(
            f"| {name} | {len(rep)} / {n_ww} | {o:.3f} s | {d:.3f} s | {m:.3f} s | **{d / o:.1f}x** "
            f"| **{m / o:.1f}x** |"
        )
        if same_set:
            os_ = statistics.median(ours_same)
            shipped.append(
                f"| {name}, ww's matrix set (no q/k/v) | {n_same} / {n_ww} | {os_:.3f} s | {d:.3f} s | {m:.3f} s "
                f"| **{d / os_:.1f}x** | **{m / os_:.1f}x** |"
            )
        single.append(f"| {name} | {len(rep)} / {n_ww} | {o1:.3f} s | {d1:.3f} s | **{d1 / o1:.1f}x** |")
        print(f"[{name} done, load {_load()}]", flush=True)

    print("\nAs shipped (each library's defaults):\n")
    print(
        "| model | matrices (ours / ww) | wwmonitor (MP fit + phase) | ww default | ww mp_fit=True "
        "| ww default / ours | ww mp_fit / ours |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(shipped))
    print("\nOne core each (sequential, BLAS limited to 1 thread):\n")
    print("| model | matrices (ours / ww) | wwmonitor workers=1 | ww default | ww / ours |")
    print("|---|---|---|---|---|")
    print("\n".join(single))
    print(f"\nload average (1/5/15 min) at end: {_load()}", flush=True)


if __name__ == "__main__":
    main()
