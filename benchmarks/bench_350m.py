"""350M parameters on the CPU: GPT-2-medium shapes, the monitor against its floors, measured side by side.

The model is transformers' ``GPT2LMHeadModel(GPT2Config(n_layer=24, n_embd=1024, n_head=16))``, random
init (seed 0, nothing downloaded), float32: 146 monitored matrices (``wte`` 50257 x 1024, ``wpe``, and per
block ``c_attn`` split into q/k/v, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``; ``lm_head`` is tied to
``wte`` and analysed once), 1.35 GiB of monitored weights.  Docs block ``350m`` (``measure``/``render``):

1. ``Monitor.snapshot()`` blocking time against ``clone()`` of the same parameters and against ``copy_()``
   into memory allocated beforehand (``every_n_epochs=None``, ``queue_size=2``, policy ``latest``, the real
   analysis running in the background; median of ``REPS`` interleaved calls).  Goal: snapshot <= 1.0x a clone.
2. The analysis of one whole snapshot against the LAPACK floor, interleaved matrix group by matrix group
   (``wte``, ``wpe``, then each block): the worker's own function (:func:`analyse_snapshot`, one BLAS thread,
   the host copies of a snapshot) on the group, then the floor on the same matrices -- ``eigvalsh`` of their
   float64 Gram matrices (the *eigvalsh floor*), and the Gram products themselves (float64 copy +
   ``A.T @ A``; *Gram + eigvalsh* is the second floor).  Wall and thread CPU seconds.  Goal: analysis
   <= 1.3x the eigvalsh floor.
3. The profile of that analysis (``cProfile`` on the thread's CPU clock, cumulative CPU seconds per stage, and
   the share of the total).

``main()`` prints the block and, beside it, weightwatcher 0.7.7 on a subset and the peak-memory children
(``benchmarks/gpt2_350m.py``; not in the block: they take longer than the 5-minute block budget).

Run: ``python -m benchmarks --write-docs 350m`` (the block, 3-5 minutes) or ``python -m benchmarks 350m``
(everything, about 10 minutes on 2 busy cores).
"""

from __future__ import annotations

import cProfile
import gc
import os
import pstats
import statistics
import tempfile
import time
import warnings
from typing import Any

from benchmarks.gpt2_350m import (
    N_BLOCKS,
    QUEUE,
    MiB,
    build_gpt2_medium,
    monitored_params,
    subset_groups,
    whole_snapshot_child,
    ww_time,
)

REPS = 3
#: goals (issue 20): snapshot <= this many clones; analysis <= this many eigvalsh floors
GOAL_SNAPSHOT = 1.0
GOAL_FLOOR = 1.3
#: block name -> Markdown file this benchmark writes with ``python -m benchmarks --write-docs``
DOC_BLOCKS = {"350m": "docs/benchmarks.md"}

__all__ = ["bench_snapshot", "build_gpt2_medium", "measure", "render", "main", "DOC_BLOCKS"]


# ------------------------------------------------------------------------------------------ 1. snapshot ----
def bench_snapshot(model: Any, reps: int = REPS) -> dict[str, Any]:  # long-function: one interleaved loop
    """Median ``snapshot()``, ``clone()`` and ``copy_()`` seconds over ``reps`` interleaved rounds."""
    import torch

    from wwmonitor.layers import extract_matrices
    from wwmonitor.monitor import Monitor

    params = monitored_params(model)
    nbytes = sum(p.numel() * p.element_size() for p in params)
    cuda = params[0].device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as d:
        mon = Monitor(model, d, every_n_epochs=None, queue_size=QUEUE, policy="latest")
        t0 = time.perf_counter()
        mon.snapshot(step=0)
        cold = time.perf_counter() - t0
        mon.snapshot(step=1)  # the second buffer set (queue_size=2)
        clone_t, snap_t, copy_t = [], [], []
        dst = [torch.empty_like(p) for p in params]
        scratch = torch.empty(64 * MiB // 4, device=params[0].device)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            for i in range(reps):
                scratch.fill_(i)  # evict the caches, as a training step between snapshots would
                sync()
                t0 = time.perf_counter()
                copies = [p.detach().clone() for p in params]
                sync()
                clone_t.append(time.perf_counter() - t0)
                del copies
                scratch.fill_(i + 2)
                sync()
                t0 = time.perf_counter()
                for d_, p in zip(dst, params):
                    d_.copy_(p.detach())
                sync()
                copy_t.append(time.perf_counter() - t0)
                scratch.fill_(i + 1)
                sync()
                t0 = time.perf_counter()
                mon.snapshot(step=10 + i)
                snap_t.append(time.perf_counter() - t0)
        del dst, scratch
        mon.close(timeout=1)  # only the copies are timed here: drop the analysis backlog
        st = mon.stats
    c, s, f = statistics.median(clone_t), statistics.median(snap_t), statistics.median(copy_t)
    return {
        "matrices": len(extract_matrices(model)),
        "bytes": nbytes,
        "clone_s": c,
        "snapshot_s": s,
        "copy_s": f,
        "cold_s": cold,
        "ratio": s / c,
        "ratio_copy": s / f,
        "buffer_peak": st["buffer_bytes_peak"],
        "snap_all": snap_t,
        "clone_all": clone_t,
    }


# ---------------------------------------------------------------------------- 2. analysis vs the floor ----
#: profile stages: (label, [(file suffix, function name), ...]); cumulative cProfile seconds are summed
STAGES: list[tuple[str, list[tuple[str, str]]]] = [
    ("host copy as NumPy (`as_numpy`)", [("snapshot.py", "as_numpy")]),
    ("non-finite check", [("analyze.py", "_count_nonfinite")]),
    ("Gram product, float64", [("spectral.py", "_gram64_lower"), ("spectral.py", "_gram64")]),
    ("eigensolver (LAPACK dsyevd)", [("spectral.py", "_eigvalsh_overwrite"), ("_linalg.py", "eigvalsh")]),
    ("SVD recheck (rank-deficient)", [("spectral.py", "_svd_squared")]),
    ("power-law fit", [("analyze.py", "_fit")]),
    ("MP fit", [("mp.py", "fit_mp")]),
    ("phase", [("phases.py", "classify_phase")]),
    ("entry tail index (phase rule 4c)", [("analyze.py", "_entry_tail")]),
    ("norms, ranks, det X", [("metrics.py", "norm_metrics"), ("metrics.py", "detx_constraint")]),
    ("stored fits + KS landscape", [("analyze.py", "_lambda_axis_fits")]),
    ("model summary", [("summary.py", "model_summary")]),
]


def _chunks(entries: list[tuple[str, str, float, Any]]) -> list[list[tuple[str, str, float, Any]]]:
    """The snapshot's entries grouped: every matrix outside the blocks alone, then one group per block."""
    out: dict[str, list[tuple[str, str, float, Any]]] = {}
    for e in entries:
        parts = e[0].split(".")
        key = ".".join(parts[:3]) if parts[:2] == ["transformer", "h"] else e[0]
        out.setdefault(key, []).append(e)
    return list(out.values())


_FLOOR_KEYS = ("gram", "eig", "gram_cpu", "eig_cpu")


def _floor(entries: list[tuple[str, str, float, Any]]) -> dict[str, float]:
    """Gram (float64 copy + ``A.T @ A``, the fastest Gram here) and bare ``eigvalsh`` seconds (wall, CPU)."""
    import numpy as np

    from wwmonitor.monitor.snapshot import as_numpy

    out = {"gram": 0.0, "eig": 0.0, "gram_cpu": 0.0, "eig_cpu": 0.0}
    for _, _, _, W in entries:
        A = as_numpy(W)
        t0, c0 = time.perf_counter(), time.thread_time()
        A64 = A.astype(np.float64)
        G = A64.T @ A64 if A64.shape[0] >= A64.shape[1] else A64 @ A64.T
        t1, c1 = time.perf_counter(), time.thread_time()
        del A64
        np.linalg.eigvalsh(G)
        out["gram"] += t1 - t0
        out["gram_cpu"] += c1 - c0
        out["eig"] += time.perf_counter() - t1
        out["eig_cpu"] += time.thread_time() - c1
    return out


def _stage_seconds(stats: pstats.Stats, total: float) -> list[tuple[str, float]]:
    raw: Any = stats.stats  # type: ignore[attr-defined]  # {(file, line, func): (cc, nc, tt, ct, callers)}
    rows = []
    for label, funcs in STAGES:
        s = sum(v[3] for k, v in raw.items() if any(k[0].endswith(f) and k[2] == fn for f, fn in funcs))
        rows.append((label, s))
    rows.append(("the rest (Python glue, bookkeeping)", max(0.0, total - sum(s for _, s in rows))))
    return rows


def analysis_vs_floor(entries: list[tuple[str, str, float, Any]]) -> dict[str, Any]:
    """One snapshot analysed by the worker's function, group by group, each group followed by its floor."""
    from threadpoolctl import threadpool_limits

    from wwmonitor.analyze import AnalysisOptions
    from wwmonitor.monitor.analyzer import analyse_snapshot
    from wwmonitor.monitor.snapshot import BufferSet, Snapshot

    kinds: dict[str, dict[str, float]] = {}
    prof = cProfile.Profile(time.thread_time)  # CPU seconds of this thread: the load does not enter
    n_ok = 0
    with threadpool_limits(1, user_api="blas"):
        for chunk in _chunks(entries):
            kind = chunk[0][0] if len(chunk) == 1 else "blocks"
            acc = kinds.setdefault(kind, dict.fromkeys(("n", "ours", "ours_cpu", *_FLOOR_KEYS), 0.0))
            snap = Snapshot(step=0, epoch=None, time=0.0, entries=chunk, buffers=BufferSet())
            prof.enable()
            res = analyse_snapshot(snap, AnalysisOptions())
            prof.disable()
            n_ok += sum(lm.status == "ok" for lm in res.layers)
            acc["n"] += len(chunk)
            acc["ours"] += res.meta["analysis_s"]
            acc["ours_cpu"] += res.meta["analysis_cpu_s"]
            for k, v in _floor(chunk).items():
                acc[k] += v
    total = sum(v["ours_cpu"] for v in kinds.values())
    return {"kinds": kinds, "ok": n_ok, "profile": _stage_seconds(pstats.Stats(prof), total), "total": total}


# ------------------------------------------------------------------------------------ the docs block ----
def measure(quick: bool = False) -> dict[str, Any]:
    """Both measurements on one model (``quick``: 1 block of width 128, 4096 tokens, one round; a smoke run)."""
    import torch

    from wwmonitor.layers import extract_matrices
    from wwmonitor.monitor.snapshot import BufferSet, copy_matrices

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        model = build_gpt2_medium(n_layer=1, n_embd=128, vocab_size=4096) if quick else build_gpt2_medium()
        n_params = sum(p.numel() for p in model.parameters())
        built = time.perf_counter() - t0
        snap = bench_snapshot(model, reps=1 if quick else REPS)
        print(f"[snapshot done: {snap['ratio']:.2f}x a clone; load {_load()}]", flush=True)
        entries, _ = copy_matrices(extract_matrices(model), BufferSet())  # one snapshot's host copies
        n_blocks = model.config.n_layer
        del model
        gc.collect()
        ana = analysis_vs_floor(entries)
        print(f"[analysis done: {ana['total']:.1f} CPU s; load {_load()}]", flush=True)
    finally:
        torch.set_num_threads(threads)
    return {"quick": quick, "params": n_params, "built_s": built, "blocks": n_blocks, "snap": snap, "ana": ana}


def _verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def render(r: dict[str, Any]) -> dict[str, str]:
    """The ``350m`` block: the snapshot table, the analysis-vs-floor table, the profile and a computed summary."""
    s, a = r["snap"], r["ana"]
    label = "GPT-2-medium float32" if not r["quick"] else "smoke model (1 block, width 128, 4096 tokens) float32"
    snap_ok = s["ratio"] <= GOAL_SNAPSHOT
    out = [
        f"{label}: {r['params'] / 1e6:.0f}M parameters, {s['matrices']} monitored matrices, "
        f"{s['bytes'] / MiB:.0f} MiB of monitored weights; torch and BLAS limited to one thread.",
        "",
        f"**snapshot() blocking time vs clone()** (median of {REPS if not r['quick'] else 1}, interleaved; "
        f"the analysis running in the background). Goal: snapshot <= {GOAL_SNAPSHOT:g}x a clone.",
        "",
        "| clone() s | snapshot() s | snapshot / clone | copy_() into preallocated s | snapshot / copy_() "
        "| first snapshot s (allocates) | goal |",
        "|---|---|---|---|---|---|---|",
        f"| {s['clone_s']:.3f} | {s['snapshot_s']:.3f} | **{s['ratio']:.2f}x** | {s['copy_s']:.3f} "
        f"| {s['ratio_copy']:.2f}x | {s['cold_s']:.3f} | {_verdict(snap_ok)} |",
        "",
        "**Analysis of one whole snapshot vs the LAPACK floor** (the worker's `analyse_snapshot`, one BLAS "
        "thread; each matrix group followed by its floor: bare `eigvalsh` of the same float64 Grams, and the "
        f"Gram products). Goal: analysis <= {GOAL_FLOOR:g}x the eigvalsh floor, judged on CPU seconds (thread "
        "time of the one thread doing each: the wall seconds of a loaded machine measure the load).",
        "",
        "| matrices | n | analysis s wall / CPU | eigvalsh floor s wall / CPU | Gram products s wall / CPU "
        "| analysis / eigvalsh floor, CPU (wall) | analysis / (Gram + eigvalsh), CPU (wall) | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    kinds = a["kinds"]
    tot = {k: sum(v[k] for v in kinds.values()) for k in ("n", "ours", "ours_cpu", *_FLOOR_KEYS)}
    rows = [(f"`{k.split('.')[-1]}`" if k != "blocks" else f"{r['blocks']} blocks", v) for k, v in kinds.items()]
    for name, v in rows + [("**whole snapshot**", tot)]:
        rc, rw = v["ours_cpu"] / v["eig_cpu"], v["ours"] / v["eig"]
        gc_, gw = v["ours_cpu"] / (v["eig_cpu"] + v["gram_cpu"]), v["ours"] / (v["eig"] + v["gram"])
        out.append(
            f"| {name} | {int(v['n'])} | {v['ours']:.2f} / {v['ours_cpu']:.2f} | {v['eig']:.2f} / {v['eig_cpu']:.2f} "
            f"| {v['gram']:.2f} / {v['gram_cpu']:.2f} | **{rc:.2f}x** ({rw:.2f}x) | {gc_:.2f}x ({gw:.2f}x) "
            f"| {_verdict(rc <= GOAL_FLOOR)} |"
        )
    total = a["total"]
    out += [
        "",
        "**Profile of that analysis** (cProfile on the thread's CPU clock, cumulative CPU seconds; "
        f"{a['ok']} of {int(tot['n'])} layers fitted):",
        "",
        "| stage | s | share |",
        "|---|---|---|",
    ]
    out += [f"| {lab} | {sec:.2f} | {sec / total:.1%} |" for lab, sec in a["profile"]]
    whole = tot["ours_cpu"] / tot["eig_cpu"]
    summary = (
        f"In this run: snapshot {s['ratio']:.2f}x a clone (goal <= {GOAL_SNAPSHOT:g}x: {_verdict(snap_ok)}); "
        f"analysis {whole:.2f}x the eigvalsh floor in CPU seconds (goal <= {GOAL_FLOOR:g}x: "
        f"{_verdict(whole <= GOAL_FLOOR)}) and {tot['ours_cpu'] / (tot['eig_cpu'] + tot['gram_cpu']):.2f}x the "
        f"Gram + eigvalsh floor; the Gram products alone take {tot['gram_cpu'] / tot['eig_cpu']:.2f}x the "
        "eigvalsh floor."
    )
    return {"350m": "\n".join(out) + "\n\n" + summary}


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.1f} / {b:.1f} / {c:.1f}"


def main() -> None:  # long-function: the block, then the slower extras printed beside it
    """The docs block's tables, then weightwatcher on a subset and the peak-memory children."""
    print(f"load average (1/5/15 min) at the start: {_load()}; {os.cpu_count()} CPUs\n", flush=True)
    print(render(measure())["350m"], flush=True)
    import torch

    torch.set_num_threads(1)
    groups = subset_groups(build_gpt2_medium())
    ww = {g: ww_time(groups[g]) for g in ("wpe", "block")}
    ww1 = {g: ww_time(groups[g], one_thread=True) for g in ("wpe", "block")}
    print(
        "\n### weightwatcher 0.7.7 default analyze() on `wpe` + block 0 (7 matrices), estimated for "
        f"`wpe` + {N_BLOCKS} blocks\n"
    )
    print("| BLAS threads | subset s | estimated 145 matrices s |\n|---|---|---|")
    for lab, d in (("default", ww), ("1", ww1)):
        print(f"| {lab} | {d['wpe'][0] + d['block'][0]:.2f} | {d['wpe'][0] + N_BLOCKS * d['block'][0]:.2f} |")
    print(f"\n(load {_load()})\n", flush=True)
    print(f"### Peak extra host memory (child process; queue_size={QUEUE}, policy latest)\n")
    print("| weights dtype | monitored weights MiB | goal MiB | buffers peak MiB | RSS peak increase MiB | goal |")
    print("|---|---|---|---|---|---|")
    children = {}
    for dtype in ("float32", "bfloat16"):
        m = children[dtype] = whole_snapshot_child(dtype)
        bound = (QUEUE + 1) * m["weights"] + 64 * MiB
        print(
            f"| {m['dtype']} | {m['weights'] / MiB:.0f} | {bound / MiB:.0f} | {m['buffers_peak'] / MiB:.0f} | "
            f"**{m['peak'] / MiB:.0f}** | {_verdict(m['peak'] <= bound)} |",
            flush=True,
        )
    _print_bf16_effect(children["float32"].get("metrics", {}), children["bfloat16"].get("metrics", {}))
    print(f"\nload average (1/5/15 min) at the end: {_load()}", flush=True)


def _print_bf16_effect(m32: dict[str, Any], m16: dict[str, Any]) -> None:
    """The bf16 child's metrics against the float32 child's (same weights): alpha, norms, phases."""
    import numpy as np

    common = sorted(k for k in set(m32) & set(m16) if m32[k][0] is not None and m16[k][0] is not None)
    if not common:
        return
    a32 = np.array([m32[k][0] for k in common])
    d = np.array([m16[k][0] for k in common]) - a32
    sig = np.array([m32[k][1] or np.nan for k in common])
    dln = np.array([abs(m16[k][2] - m32[k][2]) for k in common])
    dlm = np.array([abs(m16[k][3] / m32[k][3] - 1) for k in common])
    worst = common[int(np.argmax(np.abs(d)))]
    print("\n### bf16 weights: metrics against the same weights in float32 (whole snapshot)\n")
    print(
        "| layers | mean alpha f32 / bf16 | median abs(delta alpha) | median abs(delta alpha) / sigma(alpha) | "
        "layers with abs(delta alpha) > sigma | max abs(delta alpha) (layer: alpha f32 -> bf16) | "
        "max abs(delta log_norm) | max relative delta lambda_max | same phase |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {len(common)} | {a32.mean():.3f} / {(a32 + d).mean():.3f} | {np.median(np.abs(d)):.1e} | "
        f"{np.nanmedian(np.abs(d) / sig):.1e} | {int(np.sum(np.abs(d) > sig))} | {np.max(np.abs(d)):.2f} "
        f"(`{worst}`: {m32[worst][0]:.2f} -> {m16[worst][0]:.2f}) | {dln.max():.1e} | {dlm.max():.1e} | "
        f"{sum(m16[k][4] == m32[k][4] for k in common)} / {len(common)} |"
    )


if __name__ == "__main__":
    main()
