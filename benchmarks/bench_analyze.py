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
   threading policy; beside them the LAPACK floor (bare ``eigvalsh`` of the
   same float64 Gram matrices).  Goal: 3x weightwatcher or within 1.3x of
   the floor.

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


#: the goals: wwmonitor at least this many times faster than weightwatcher's default / its ``mp_fit=True``
GOAL_DEFAULT = 3.0
GOAL_MP = 20.0
#: one core each (issue 20): at least GOAL_DEFAULT x weightwatcher, or within this many eigvalsh floors
GOAL_FLOOR = 1.3


def _floor_s(model: object) -> float:
    """The LAPACK floor of ``analyze_model`` on ``model``: the summed bare ``numpy.linalg.eigvalsh`` seconds of the
    float64 Gram matrices of the same matrices (stacks of conv slices batched, as the analysis does); call it
    with BLAS limited to one thread."""
    import numpy as np

    from wwmonitor.layers import extract_matrices
    from wwmonitor.spectral import to_numpy

    total = 0.0
    for spec in extract_matrices(model):
        A = to_numpy(spec.tensor).astype(np.float64)
        At = np.swapaxes(A, -1, -2)
        G = A @ At if A.shape[-2] < A.shape[-1] else At @ A
        t0 = time.perf_counter()
        np.linalg.eigvalsh(G)
        total += time.perf_counter() - t0
    return total


#: block name -> Markdown file this benchmark writes with ``python -m benchmarks --write-docs``
DOC_BLOCKS = {"analyze": "docs/benchmarks.md"}


def _time_model(ww, name: str, build, repeats: int, repeats_mp: int) -> list[dict]:
    """The rows of one model: ours vs weightwatcher, as shipped and one core each (medians over rounds)."""
    from threadpoolctl import threadpool_limits

    import wwmonitor

    model = build(name)
    watcher = ww.WeightWatcher(model=model)
    ww_def_fn = _quiet(watcher.analyze)
    ww_mp_fn = _quiet(functools.partial(watcher.analyze, mp_fit=True))
    # weightwatcher skips fused attention projections; time ours on its matrix set too
    same_set = {"exclude": ["MultiheadAttention"]} if name == "transformer" else None
    n_ours = len(wwmonitor.analyze_model(model, progress=False))  # also the warm-up (imports, caches)
    n_ww = len(ww_def_fn())
    n_same = len(wwmonitor.analyze_model(model, progress=False, **same_set)) if same_set else 0
    t: dict[str, list[float]] = {k: [] for k in ("ours", "same", "ours1", "def", "def1", "mp", "floor")}
    for r in range(repeats):
        t["ours"].append(_time(functools.partial(wwmonitor.analyze_model, model, progress=False)))
        t["def"].append(_time(ww_def_fn))
        if same_set:
            t["same"].append(_time(functools.partial(wwmonitor.analyze_model, model, progress=False, **same_set)))
        if r < repeats_mp:
            t["mp"].append(_time(ww_mp_fn))
        with threadpool_limits(limits=1, user_api="blas"):
            t["ours1"].append(_time(functools.partial(wwmonitor.analyze_model, model, progress=False, workers=1)))
            t["def1"].append(_time(ww_def_fn))
            t["floor"].append(_floor_s(model))
    med = {k: statistics.median(v) for k, v in t.items() if v}
    rows = [
        {"model": name, "n": f"{n_ours} / {n_ww}", "ours": med["ours"], "def": med["def"], "mp": med["mp"]},
    ]
    if same_set:
        rows.append(
            {
                "model": f"{name}, ww's matrix set (no q/k/v)",
                "n": f"{n_same} / {n_ww}",
                "ours": med["same"],
                "def": med["def"],
                "mp": med["mp"],
            }
        )
    rows.append(
        {
            "model": name,
            "n": f"{n_ours} / {n_ww}",
            "ours": med["ours1"],
            "def": med["def1"],
            "floor": med["floor"],
            "one_core": True,
        }
    )
    return rows


def measure(quick: bool = False) -> list[dict]:
    """Every row of both tables (``one_core`` marks the second); ``quick``: the MLP only, one round."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from model_zoo import build

    with contextlib.redirect_stdout(io.StringIO()):
        import weightwatcher as ww  # import silences warnings process-wide; fine inside the benchmark

    # weightwatcher logs per layer; silenced while measuring, then put back (tests measure in-process)
    before = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        rows: list[dict] = []
        for name in ("mlp",) if quick else MODELS:
            rows += _time_model(ww, name, build, 1 if quick else REPEATS, 1 if quick else REPEATS_MP)
            print(f"[{name} done, load {_load()}]", flush=True)
    finally:
        logging.disable(before)
    return rows


def _met(ratio: float, goal: float) -> str:
    return f"**{ratio:.1f}x** (met)" if ratio >= goal else f"**{ratio:.1f}x** (not met)"


def render(rows: list[dict]) -> dict[str, str]:
    """The ``analyze`` block: both tables, each ratio against its goal, and a summary computed from the rows."""
    shipped = [r for r in rows if not r.get("one_core")]
    single = [r for r in rows if r.get("one_core")]
    out = [
        f"As shipped (each library's defaults). Goals: {GOAL_DEFAULT:g}x weightwatcher's default, "
        f"{GOAL_MP:g}x its `mp_fit=True`.",
        "",
        "| model | matrices (ours / ww) | wwmonitor (MP fit + phase) | ww default | ww mp_fit=True "
        "| ww default / ours | ww mp_fit / ours |",
        "|---|---|---|---|---|---|---|",
    ]
    missed = []
    for r in shipped:
        d, m = r["def"] / r["ours"], r["mp"] / r["ours"]
        missed += [f"{GOAL_DEFAULT:g}x the default on {r['model']} ({d:.1f}x)"] if d < GOAL_DEFAULT else []
        missed += [f"{GOAL_MP:g}x mp_fit on {r['model']} ({m:.1f}x)"] if m < GOAL_MP else []
        out.append(
            f"| {r['model']} | {r['n']} | {r['ours']:.3f} s | {r['def']:.3f} s | {r['mp']:.3f} s "
            f"| {_met(d, GOAL_DEFAULT)} | {_met(m, GOAL_MP)} |"
        )
    out += [
        "",
        "One core each (sequential, BLAS limited to 1 thread; it isolates the per-matrix work). Goal: "
        f"{GOAL_DEFAULT:g}x weightwatcher's default, or within {GOAL_FLOOR:g}x the LAPACK floor (the bare "
        "`eigvalsh` seconds of the same float64 Gram matrices, timed in the same rounds):",
        "",
    ]
    out += [
        "| model | matrices (ours / ww) | wwmonitor workers=1 | ww default | ww / ours | eigvalsh floor "
        "| ours / floor | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in single:
        d, f = r["def"] / r["ours"], r["ours"] / r["floor"]
        ok = d >= GOAL_DEFAULT or f <= GOAL_FLOOR
        missed += [] if ok else [f"one core on {r['model']} ({d:.1f}x ww, {f:.2f}x the floor)"]
        out.append(
            f"| {r['model']} | {r['n']} | {r['ours']:.3f} s | {r['def']:.3f} s | **{d:.1f}x** | {r['floor']:.3f} s "
            f"| **{f:.2f}x** | {'met' if ok else 'not met'} |"
        )
    goals = 2 * len(shipped) + len(single)
    summary = (
        f"In this run all {goals} goals are met."
        if not missed
        else f"In this run {goals - len(missed)} of {goals} goals are met; not met: " + "; ".join(missed) + "."
    )
    return {"analyze": "\n".join(out) + "\n\n" + summary}


def main() -> None:
    from wwmonitor.compute import usable_cpus

    print(f"usable CPUs: {usable_cpus()}; load average (1/5/15 min) at start: {_load()}\n", flush=True)
    print(render(measure())["analyze"])
    print(f"\nload average (1/5/15 min) at end: {_load()}", flush=True)


if __name__ == "__main__":
    main()
