"""350M parameters on the CPU: GPT-2-medium shapes, measured side by side.

The model is transformers' ``GPT2LMHeadModel(GPT2Config(n_layer=24, n_embd=1024, n_head=16))``, random
init (seed 0, nothing downloaded), float32: 146 monitored matrices (``wte`` 50257 x 1024, ``wpe``, and per
block ``c_attn`` split into q/k/v, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``; ``lm_head`` is tied to
``wte`` and analysed once), 1.35 GiB of monitored weights.

1. ``Monitor.snapshot()`` blocking time against ``clone()`` of the same parameters and against
   ``copy_()`` into memory allocated beforehand (``every_n_epochs=None``, ``queue_size=2``, policy
   ``latest``, the real analysis running in the background; median of ``REPS`` interleaved calls).
   Goal: snapshot <= 1.5x a clone.
2. Per-snapshot analysis time, ``result.meta["analysis_s"]`` of the monitor's worker (one BLAS thread,
   the in-place eigen route), against weightwatcher 0.7.7's default ``analyze()`` on the same matrices
   (in a child process, ``tests/ww_reference.py``; its default BLAS threads) and against the LAPACK
   floor (the sum of bare ``scipy.linalg.eigvalsh`` times of the same float64 Gram matrices, one BLAS
   thread; the Gram products themselves are a second floor column).  weightwatcher is slow, so both
   tools and the floor are timed on a representative subset -- ``wpe`` and block 0's six matrices, and
   ``wte`` for us and the floor -- and the whole model is estimated as ``wpe + 24 x block (+ wte)``;
   our whole-snapshot time is also measured directly (item 3).  Ours and the floor are timed in
   interleaved rounds (median of ``REPS``), weightwatcher twice per setting, with its default BLAS threads
   and with one.  weightwatcher's default skips ``wte``
   (``max_N = 50000`` < 50257 rows), so the side-by-side set is its 145 matrices.
   Goals: >= 3x faster than weightwatcher's default; within 1.3x of the LAPACK floor.
3. Peak extra host memory in a child process (``VmHWM`` after ``clear_refs`` minus the RSS before the
   monitor; ``queue_size=2``, policy ``latest``): snapshot 0 is analysed while snapshots 1-3 arrive
   (1 s apart; 2-3 are coalesced), then ``close()`` drops the pending one.  Once for the float32 model
   and once for the same weights cast to bfloat16 (the snapshot buffers keep the weights' dtype:
   ``copy_matrices`` allocates them with the tensor's dtype).  Goal: <= (queue_size + 1) x monitored
   weights + 64 MiB.  glibc is told to return freed blocks at once (``MALLOC_MMAP_THRESHOLD_``,
   ``MALLOC_TRIM_THRESHOLD_``, as in ``bench_monitor``).  The bf16 child's metrics against the float32
   child's give the effect of bf16 weights on alpha.

Run: ``python -m benchmarks 350m`` (about 6-10 minutes on 2 busy cores).  Prints Markdown tables.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20
REPS = 3
#: transformer blocks (24 for GPT-2-medium; ``WWM_BENCH_350M_BLOCKS=2`` smoke-tests this file in a minute)
N_BLOCKS = int(os.environ.get("WWM_BENCH_350M_BLOCKS", "24"))
QUEUE = 2


def build_gpt2_medium(dtype: Any = None, device: str = "cpu") -> Any:
    """Random-initialised GPT-2-medium (355M parameters), float32 unless ``dtype`` says otherwise."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    with warnings.catch_warnings(), torch.device(device):  # built (and initialised) where it will live
        warnings.simplefilter("ignore")
        model = GPT2LMHeadModel(GPT2Config(n_layer=N_BLOCKS, n_embd=1024, n_head=16)).eval()
    if dtype is not None:
        model = model.to(dtype)
    return model


def monitored_params(model: Any) -> list[Any]:
    """The parameters whose storage backs the monitored matrices."""
    from wwmonitor.layers import extract_matrices

    ptrs = {s.tensor.untyped_storage().data_ptr() for s in extract_matrices(model)}
    return [p for p in model.parameters() if p.untyped_storage().data_ptr() in ptrs]


# ------------------------------------------------------------------------------------------ 1. snapshot ----
def bench_snapshot(model: Any, reps: int = REPS) -> dict[str, Any]:
    import torch

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
    from wwmonitor.layers import extract_matrices

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


# ------------------------------------------------------------------------------ 2. analysis, side by side ----
def subset_groups(model: Any) -> dict[str, list[tuple[str, Any]]]:
    """``{"wpe": [...], "block": [...], "wte": [...]}``: (name, float32 ``out x in`` NumPy copy)."""
    from wwmonitor.layers import extract_matrices

    specs = {s.name: s for s in extract_matrices(model)}
    block = [f"transformer.h.0.attn.c_attn.{p}" for p in "qkv"] + [
        "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj",
    ]

    def mat(name: str) -> tuple[str, Any]:
        return name, specs[name].tensor.detach().float().cpu().contiguous().numpy().copy()

    return {"wpe": [mat("transformer.wpe")], "block": [mat(n) for n in block], "wte": [mat("transformer.wte")]}


def _linear_stack(mats: list[tuple[str, Any]]) -> Any:
    """An ``nn.Sequential`` of bias-free ``nn.Linear`` layers holding ``mats`` (what weightwatcher gets)."""
    import torch
    from torch import nn

    layers = []
    for _, W in mats:
        lin = nn.Linear(1, 1, bias=False)
        lin.weight = nn.Parameter(torch.from_numpy(W.copy()), requires_grad=False)
        lin.in_features, lin.out_features = W.shape[1], W.shape[0]
        layers.append(lin)
    return nn.Sequential(*layers)


def subset_times(groups: dict[str, list[tuple[str, Any]]], reps: int = REPS) -> dict[str, dict[str, float]]:
    """Per group, medians over ``reps`` interleaved rounds (so that the load hits all alike) of:
    ``ours`` -- ``analysis_s`` of the monitor's worker for one snapshot of the group;
    ``eig`` -- the sum of bare ``scipy.linalg.eigvalsh`` times of the group's float64 Gram matrices;
    ``gram`` -- the sum of the Gram products' times (float64 copy + ``A.T @ A``); one BLAS thread."""
    import numpy as np
    import scipy.linalg
    from threadpoolctl import threadpool_limits

    from wwmonitor.monitor import Monitor

    raw: dict[str, dict[str, list[float]]] = {g: {"ours": [], "eig": [], "gram": []} for g in groups}
    with tempfile.TemporaryDirectory() as d:
        mons = {
            g: Monitor(_linear_stack(m), os.path.join(d, g), every_n_epochs=None, queue_size=QUEUE, policy="block")
            for g, m in groups.items()
        }
        try:
            for r in range(reps):
                for g, mats in groups.items():
                    mons[g].snapshot(step=r)
                    mons[g].flush()
                    raw[g]["ours"].append(mons[g].results[-1].meta["analysis_s"])
                    eig = gram = 0.0
                    with threadpool_limits(1, user_api="blas"):
                        for _, W in mats:
                            t0 = time.perf_counter()
                            A = W.astype(np.float64)
                            G = A.T @ A if A.shape[0] >= A.shape[1] else A @ A.T
                            gram += time.perf_counter() - t0
                            del A
                            t0 = time.perf_counter()
                            scipy.linalg.eigvalsh(G)
                            eig += time.perf_counter() - t0
                    raw[g]["eig"].append(eig)
                    raw[g]["gram"].append(gram)
        finally:
            for m in mons.values():
                m.close()
    return {g: {k: statistics.median(v) for k, v in d_.items()} for g, d_ in raw.items()}


def ww_time(mats: list[tuple[str, Any]], repeats: int = 2, one_thread: bool = False) -> tuple[float, int]:
    """Median wall time of weightwatcher 0.7.7 ``WeightWatcher(model).analyze()`` (defaults) in a child,
    and how many matrices it analysed.  ``one_thread``: the child's BLAS/OpenMP limited to 1 thread."""
    sys.path.insert(0, str(REPO / "tests"))
    from ww_reference import ww_analyze_timed

    keys = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    try:
        if one_thread:
            os.environ.update({k: "1" for k in keys})
        df, times = ww_analyze_timed(_linear_stack(mats), repeats=repeats, num_threads=1 if one_thread else None)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return statistics.median(times), len(df)


# --------------------------------------------------------------------------- 3. memory + whole snapshot ----
_CHILD = r"""
import json, os, sys, tempfile, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
from benchmarks.bench_350m import build_gpt2_medium, monitored_params, QUEUE
from wwmonitor.monitor import Monitor

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

dtype = {"float32": None, "bfloat16": torch.bfloat16}[sys.argv[1]]
model = build_gpt2_medium(dtype)
weights = sum(p.numel() * p.element_size() for p in monitored_params(model))
with tempfile.TemporaryDirectory() as d:   # warm up everything that is not snapshot memory
    small = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
    with Monitor(small, d, every_n_epochs=None) as m0:
        m0.snapshot(step=0)
time.sleep(0.2)
base = status("VmRSS")
try:
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := current RSS
except OSError:
    pass
t_start = time.perf_counter()
with tempfile.TemporaryDirectory() as d:
    mon = Monitor(model, d, every_n_epochs=None, queue_size=QUEUE, policy="latest")
    mon.snapshot(step=0)
    for s in (1, 2, 3):
        time.sleep(1.0)
        mon.snapshot(step=s)
    deadline = time.monotonic() + float(sys.argv[3])
    while not mon.results and time.monotonic() < deadline:
        time.sleep(0.2)
    res = mon.results[0] if mon.results else None
    mon.close(timeout=1)
    st = mon.stats
peak = status("VmHWM") - base
out = {"dtype": sys.argv[1], "weights": weights, "peak": peak, "after": status("VmRSS") - base,
       "buffers_peak": st["buffer_bytes_peak"], "coalesced": st["coalesced"], "base_rss": base,
       "largest": max(p.numel() * p.element_size() for p in monitored_params(model))}
if res is not None:
    out.update(analysis_s=res.meta["analysis_s"], analysis_cpu_s=res.meta["analysis_cpu_s"], layers=len(res.layers),
               ok=sum(lm.status == "ok" for lm in res.layers),
               metrics={lm.name: [lm.alpha, lm.sigma, lm.log_norm, lm.lambda_max, lm.phase] for lm in res.layers})
print(json.dumps(out))
"""


def whole_snapshot_child(dtype: str, timeout: float = 900) -> dict[str, Any]:
    # as bench_monitor: blocks >= 128 KiB always mmap'd and freed heap trimmed at once, so that RSS follows live
    # memory, not what glibc keeps cached after a free (without: the bf16 child kept 1.47 GB after close())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, dtype, str(REPO), str(timeout)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout + 300,
        env=env,
    )
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.1f} / {b:.1f} / {c:.1f}"


def main() -> None:
    import gc

    import numpy as np
    import torch

    torch.set_num_threads(1)
    t_all = time.perf_counter()
    load_start = _load()
    print(f"load average (1/5/15 min) at the start: {load_start}; {os.cpu_count()} CPUs; torch threads 1\n", flush=True)
    t0 = time.perf_counter()
    model = build_gpt2_medium()
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"GPT-2-medium built in {time.perf_counter() - t0:.0f} s: {n_params / 1e6:.0f}M parameters (float32)\n",
        flush=True,
    )

    snap = bench_snapshot(model)
    print(
        "### 1. snapshot() blocking time vs clone() of the same parameters (median of "
        f"{REPS}, interleaved; analysis running in the background)\n"
    )
    print(
        "| model | matrices | weights MiB | clone() s | snapshot() s | snapshot / clone | "
        "copy_() into preallocated s | snapshot / copy_() | first snapshot s (allocates) | goal <= 1.5x |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| GPT-2-medium float32 | {snap['matrices']} | {snap['bytes'] / MiB:.0f} | {snap['clone_s']:.3f} | "
        f"{snap['snapshot_s']:.3f} | **{snap['ratio']:.2f}x** | {snap['copy_s']:.3f} | {snap['ratio_copy']:.2f}x | "
        f"{snap['cold_s']:.3f} | {'met' if snap['ratio'] <= 1.5 else 'missed'} |",
        flush=True,
    )
    print(
        f"\n(all snapshot() s: {', '.join(f'{x:.3f}' for x in snap['snap_all'])}; all clone() s: "
        f"{', '.join(f'{x:.3f}' for x in snap['clone_all'])}; load {_load()})\n",
        flush=True,
    )

    groups = subset_groups(model)
    del model
    gc.collect()

    sub = subset_times(groups)
    ours = {g: v["ours"] for g, v in sub.items()}
    print(f"(ours and the floor timed on the subset, interleaved; load {_load()})", flush=True)
    ww = {g: ww_time(groups[g]) for g in ("wpe", "block")}
    ww1 = {g: ww_time(groups[g], one_thread=True) for g in ("wpe", "block")}
    print(f"(weightwatcher timed on the subset; load {_load()})\n", flush=True)

    f32 = whole_snapshot_child("float32")
    print(f"(float32 whole-snapshot child done; load {_load()})", flush=True)
    bf16 = whole_snapshot_child("bfloat16")
    print(f"(bfloat16 whole-snapshot child done; load {_load()})\n", flush=True)

    def est(d: dict[str, float], wte: bool = False) -> float:
        return d["wpe"] + N_BLOCKS * d["block"] + (d["wte"] if wte else 0.0)

    fe = {g: v["eig"] for g, v in sub.items()}
    fg = {g: v["eig"] + v["gram"] for g, v in sub.items()}
    www = {g: v[0] for g, v in ww.items()}
    ww1w = {g: v[0] for g, v in ww1.items()}
    nb = 2 * N_BLOCKS * 3 + 2  # matrices: wte, wpe and 6 per block
    print("### 2. Analysis time per snapshot: the monitor's worker vs weightwatcher's default vs the LAPACK floor\n")
    print(
        "| matrix set | matrices | wwmonitor worker s (1 BLAS thread) | ww default analyze() s | "
        "ww, 1 BLAS thread s | LAPACK floor: eigvalsh of the float64 Grams s | Gram products + eigvalsh s | "
        "ww / ours (goal >= 3x) | ww 1 thread / ours | ours / eigvalsh floor (goal <= 1.3x) | "
        "ours / (Gram + eigvalsh) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def row(label: str, n: str, o: float, w: Any, w1: Any, e: float, g: float) -> None:
        ws = f"{w:.2f}" if isinstance(w, float) else w
        w1s = f"{w1:.2f}" if isinstance(w1, float) else w1
        ratio = f"**{w / o:.1f}x**" if isinstance(w, float) else "-"
        ratio1 = f"{w1 / o:.1f}x" if isinstance(w1, float) else "-"
        print(
            f"| {label} | {n} | {o:.2f} | {ws} | {w1s} | {e:.2f} | {g:.2f} | {ratio} | {ratio1} | **{o / e:.2f}x** | "
            f"{o / g:.2f}x |"
        )

    row(
        "measured: `wpe` + block 0 (q, k, v, attn.c_proj, mlp.c_fc, mlp.c_proj)",
        f"7 / {ww['wpe'][1] + ww['block'][1]}",
        ours["wpe"] + ours["block"],
        www["wpe"] + www["block"],
        ww1w["wpe"] + ww1w["block"],
        fe["wpe"] + fe["block"],
        fg["wpe"] + fg["block"],
    )
    row(
        "measured: `wte` 50257 x 1024 (ww's default skips it: max_N)",
        "1 / 0",
        ours["wte"],
        "skipped",
        "skipped",
        fe["wte"],
        fg["wte"],
    )
    row(
        f"estimated: weightwatcher's {nb - 1} matrices (`wpe` + {N_BLOCKS} blocks)",
        f"{nb - 1} / {nb - 1}",
        est(ours),
        est(www),
        est(ww1w),
        est(fe),
        est(fg),
    )
    row(
        f"estimated: all {nb} matrices (+ `wte`)",
        f"{nb} / {nb - 1}",
        est(ours, True),
        "-",
        "-",
        est(fe, True),
        est(fg, True),
    )
    if "analysis_s" in f32:
        print(
            f'| **measured: one whole snapshot** (`result.meta["analysis_s"]`, child process) | {f32["layers"]} | '
            f"**{f32['analysis_s']:.2f}** | - | - | {est(fe, True):.2f} (est.) | {est(fg, True):.2f} (est.) "
            "| - | - | "
            f"**{f32['analysis_s'] / est(fe, True):.2f}x** | {f32['analysis_s'] / est(fg, True):.2f}x |"
        )
    print(
        f"\n(whole snapshot: worker CPU {f32.get('analysis_cpu_s', float('nan')):.1f} s of "
        f"{f32.get('analysis_s', float('nan')):.1f} s wall; {f32.get('ok')} of {f32.get('layers')} layers fitted)\n"
    )

    print(
        f"### 3. Peak extra host memory (child process; VmHWM - RSS before the monitor; queue_size={QUEUE}, policy "
        "latest; snapshot 0 analysed while 1-3 arrive)\n"
    )
    print(
        "| weights dtype | monitored weights MiB | goal (q+1) x weights + 64 MiB | snapshot buffers peak MiB | "
        "RSS peak increase MiB | peak / weights | RSS after close MiB | goal |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for m in (f32, bf16):
        bound = (QUEUE + 1) * m["weights"] + 64 * MiB
        print(
            f"| {m['dtype']} | {m['weights'] / MiB:.0f} | {bound / MiB:.0f} | {m['buffers_peak'] / MiB:.0f} | "
            f"**{m['peak'] / MiB:.0f}** | {m['peak'] / m['weights']:.2f}x | {m['after'] / MiB:.0f} | "
            f"{'met' if m['peak'] <= bound else 'missed'} |"
        )

    m32, m16 = f32.get("metrics", {}), bf16.get("metrics", {})
    common = sorted(k for k in set(m32) & set(m16) if m32[k][0] is not None and m16[k][0] is not None)
    if common:
        a32 = np.array([m32[k][0] for k in common])
        d = np.array([m16[k][0] for k in common]) - a32
        sig = np.array([m32[k][1] or np.nan for k in common])
        dln = np.array([abs(m16[k][2] - m32[k][2]) for k in common])
        dlm = np.array([abs(m16[k][3] / m32[k][3] - 1) for k in common])
        same_phase = sum(m16[k][4] == m32[k][4] for k in common)
        worst = common[int(np.argmax(np.abs(d)))]
        print("\n### bf16 snapshot: metrics of the bf16 weights vs the same weights in float32 (whole snapshot)\n")
        print(
            "| layers | mean alpha f32 / bf16 | median abs(delta alpha) | median abs(delta alpha) / sigma(alpha) | "
            "layers with abs(delta alpha) > sigma | max abs(delta alpha) (layer: alpha f32 -> bf16) | "
            "max abs(delta log_norm) | max relative delta lambda_max | same phase | bf16 analysis s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(
            f"| {len(common)} | {a32.mean():.3f} / {(a32 + d).mean():.3f} | {np.median(np.abs(d)):.1e} | "
            f"{np.nanmedian(np.abs(d) / sig):.1e} | {int(np.sum(np.abs(d) > sig))} | {np.max(np.abs(d)):.2f} "
            f"(`{worst}`: {m32[worst][0]:.2f} -> {m16[worst][0]:.2f}) | {dln.max():.1e} | {dlm.max():.1e} | "
            f"{same_phase} / {len(common)} | {bf16.get('analysis_s', float('nan')):.1f} |"
        )
    print(
        f"\nload average (1/5/15 min): {load_start} at the start, {_load()} at the end; "
        f"total {time.perf_counter() - t_all:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
