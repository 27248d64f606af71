"""Monitor overhead, measured side by side in one process run.

1. ``snapshot()`` blocking time against a plain ``clone()`` of the same
   parameters, interleaved call by call, for an MLP, a CNN and a
   ``nn.TransformerEncoder`` (goal: ratio <= 1.5).  The real analysis runs
   in the background meanwhile (policy ``latest``), as it would in training.
2. Whole-loop wall time of a small CPU training run with a snapshot every
   epoch against the same loop without the monitor (including ``close()``).
3. Peak extra host memory of a monitored run against
   ``(queue_size + 1) x`` the monitored weights (measured in a subprocess
   from ``/proc/self/status`` ``VmHWM``, reset via ``clear_refs``).
4. Thread vs process for the worker: training-loop time while the same
   snapshots are analysed in a thread (the monitor) or in a worker process.

Run: ``python -m benchmarks monitor``.  Prints Markdown tables.
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
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]


def _models() -> dict[str, Callable[[], Any]]:
    import torch
    from torch import nn

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))

    def cnn() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, 64, 3),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3),
            nn.ReLU(),
            nn.Conv2d(128, 128, 3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, 10),
        )

    def transformer() -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True)
            return nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)

    torch.manual_seed(0)
    return {
        "MLP 784-1024-1024-10": mlp,
        "CNN 4xConv3x3 (64-128) + Linear": cnn,
        "TransformerEncoder d=512, 6 layers, ff 2048": transformer,
    }


def _monitored_params(model: Any) -> list[Any]:
    """The parameters whose storage backs the monitored matrices."""
    from wwmonitor.layers import extract_matrices

    ptrs = {s.tensor.untyped_storage().data_ptr() for s in extract_matrices(model)}
    return [p for p in model.parameters() if p.untyped_storage().data_ptr() in ptrs]


def bench_snapshot(reps: int = 25) -> list[dict[str, Any]]:
    import torch

    from wwmonitor.monitor import Monitor

    rows = []
    for name, make in _models().items():
        model = make()
        params = _monitored_params(model)
        nbytes = sum(p.numel() * p.element_size() for p in params)
        with tempfile.TemporaryDirectory() as d:
            mon = Monitor(model, d, every_n_epochs=None, queue_size=2, policy="latest")
            t0 = time.perf_counter()
            mon.snapshot(step=0)
            cold = time.perf_counter() - t0
            for s in range(1, 4):  # warm-up: fill the buffer pool
                mon.snapshot(step=s)
            clone_t, snap_t, copy_t = [], [], []
            dst = [torch.empty_like(p) for p in params]
            scratch = torch.empty(64 * 2**20 // 4)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for i in range(reps):
                    scratch.fill_(i)  # evict the caches, as a training step between snapshots would
                    t0 = time.perf_counter()
                    copies = [p.detach().clone() for p in params]
                    clone_t.append(time.perf_counter() - t0)
                    del copies
                    scratch.fill_(i + 2)
                    t0 = time.perf_counter()
                    for d_, p in zip(dst, params):
                        d_.copy_(p.detach())
                    copy_t.append(time.perf_counter() - t0)
                    scratch.fill_(i + 1)
                    t0 = time.perf_counter()
                    mon.snapshot(step=10 + i)
                    snap_t.append(time.perf_counter() - t0)
                mon.close(timeout=5)  # only the copies are timed here; drop the analysis backlog
            st = mon.stats
        c, s, f = statistics.median(clone_t), statistics.median(snap_t), statistics.median(copy_t)
        rows.append(
            {
                "model": name,
                "matrices": len(mon.results[-1].layers) if mon.results else None,
                "MB": nbytes / 2**20,
                "clone_ms": c * 1e3,
                "snapshot_ms": s * 1e3,
                "ratio": s / c,
                "copy_ms": f * 1e3,
                "ratio_copy": s / f,
                "cold_ms": cold * 1e3,
                "analysed": st["analysed"],
                "coalesced": st["coalesced"],
            }
        )
        del model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


def _task(seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """The small CPU training task: MLP 784-512-512-10, SGD, 8192 synthetic samples."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    X = torch.randn(8192, 784, generator=torch.Generator().manual_seed(seed))
    return model, opt, X, X[:, :10].argmax(1)


def _epoch(model: Any, opt: Any, X: Any, Y: Any, batch: int = 128) -> int:
    """One training epoch; returns the number of optimiser steps."""
    from torch import nn

    for i in range(0, len(X), batch):
        loss = nn.functional.cross_entropy(model(X[i : i + batch]), Y[i : i + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (len(X) + batch - 1) // batch


def _train_loop(monitor_dir: str | None, epochs: int, seed: int = 0, inline: bool = False) -> tuple[float, float, dict]:
    from torch import nn

    from wwmonitor.monitor import Monitor

    model, opt, X, Y = _task(seed)
    mon = Monitor(model, monitor_dir, every_n_epochs=1) if monitor_dir else None
    step = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        step += _epoch(model, opt, X, Y)
        if mon is not None:
            mon.snapshot(step=step, epoch=epoch)
        elif inline:  # the same analysis (same single BLAS thread), synchronously on the training thread
            from threadpoolctl import threadpool_limits

            from wwmonitor.analyze import analyze_matrix

            with threadpool_limits(1, user_api="blas"):
                for i, m in enumerate(model):
                    if isinstance(m, nn.Linear):
                        analyze_matrix(m.weight.detach().clone(), str(i), keep_esd=True)
    loop = time.perf_counter() - t0
    stats: dict = {}
    if mon is not None:
        mon.close()
        stats = {**mon.stats, "analysis_cpu_s": sum(r.meta["analysis_cpu_s"] for r in mon.results)}
    total = time.perf_counter() - t0
    return loop, total, stats


def bench_loop(pairs: int = 3, epochs: int = 5) -> dict[str, Any]:
    without, with_loop, with_total, cpu, inline = [], [], [], [], []
    stats: dict = {}
    with tempfile.TemporaryDirectory() as d:
        _train_loop(None, 1)  # warm-up
        for r in range(pairs):
            a, _, _ = _train_loop(None, epochs)
            inline.append(_train_loop(None, epochs, inline=True)[0])
            b, t, stats = _train_loop(os.path.join(d, f"r{r}"), epochs)
            without.append(a)
            with_loop.append(b)
            with_total.append(t)
            cpu.append(stats["analysis_cpu_s"])
    w, m, t = statistics.median(without), statistics.median(with_loop), statistics.median(with_total)
    return {
        "epochs": epochs,
        "steps": epochs * 64,
        "without_s": w,
        "with_s": m,
        "with_close_s": t,
        "overhead_loop": m / w - 1,
        "overhead_total": t / w - 1,
        "analysed": stats.get("analysed"),
        "blocked_s": stats.get("blocked_s"),
        "analysis_cpu_s": statistics.median(cpu),
        "inline_s": statistics.median(inline),
        "overhead_inline": statistics.median(inline) / w - 1,
    }


_MEM_CHILD = r"""
import json, os, sys, tempfile, threading, time
import torch
torch.set_num_threads(1)
from torch import nn
from wwmonitor.monitor import Monitor
from wwmonitor.monitor.analyzer import default_analyze

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024

mode = sys.argv[1]
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(512, 1024), nn.Linear(1024, 1024), nn.Linear(1024, 1024), nn.Linear(1024, 512),
                      nn.Linear(512, 512))
largest = max(m.weight.numel() * 4 for m in model)
wbytes = sum(m.weight.numel() * 4 for m in model)
gate = threading.Event()
def slow(W, name, typ, scale, options):      # analysis held back -> the queue fills up
    gate.wait()
    return default_analyze(W, name, typ, scale, options)
# warm everything that is not snapshot memory (imports, a first analysis, allocator)
with tempfile.TemporaryDirectory() as d:
    with Monitor(model, d, every_n_epochs=None, queue_size=1) as m0:
        m0.snapshot(step=0)
time.sleep(0.2)
base = rss()
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
q = 2
with tempfile.TemporaryDirectory() as d:
    mon = Monitor(model, d, every_n_epochs=None, queue_size=q, policy="latest",
                  analyze_fn=slow if mode == "held" else None)
    for s in range(12):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-4)
        mon.snapshot(step=s)
        time.sleep(0.05)
    gate.set()
    mon.close(timeout=None)
    st = mon.stats
peak = hwm() - base
after = rss() - base
print(json.dumps({"mode": mode, "weights": wbytes, "largest": largest, "bound": (q + 1) * wbytes, "peak": peak,
                  "after": after, "buffers_peak": st["buffer_bytes_peak"], "coalesced": st["coalesced"],
                  "analysed": st["analysed"]}))
"""


def bench_memory() -> list[dict[str, Any]]:
    out = []
    for mode in ("held", "real"):
        # large blocks always mmap'd and freed heap trimmed at once, so RSS tracks live memory
        # rather than what glibc's per-thread arenas keep cached after a free
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
        p = subprocess.run(
            [sys.executable, "-c", _MEM_CHILD, mode], capture_output=True, text=True, cwd=REPO, timeout=600, env=env
        )
        if p.returncode != 0:
            raise RuntimeError(p.stderr)
        out.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return out


def _analyse_in_process(arrays: list[Any]) -> list[Any]:
    from wwmonitor.analyze import analyze_matrix

    return [analyze_matrix(a, str(i)).alpha for i, a in enumerate(arrays)]


def _single_blas_thread() -> None:  # process-pool initializer: same BLAS setting as the monitor's worker
    import numpy  # noqa: F401 - load OpenBLAS first: threadpoolctl only limits loaded libraries

    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
    except ImportError:
        pass


def bench_thread_vs_process(epochs: int = 4) -> dict[str, Any]:
    """Same loop, same per-epoch snapshot; the analysis in a thread (Monitor) or in
    a ``ProcessPoolExecutor(1)`` fed with numpy copies (pickled)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from torch import nn

    from wwmonitor.monitor import Monitor

    def run(kind: str, pool: Any) -> tuple[float, float]:
        model, opt, X, Y = _task(0)
        weights = [m.weight for m in model if isinstance(m, nn.Linear)]
        handoff = 0.0
        futs = []
        with tempfile.TemporaryDirectory() as d:
            mon = Monitor(model, d, every_n_epochs=1, store=False) if kind == "thread" else None
            t0 = time.perf_counter()
            for epoch in range(epochs):
                _epoch(model, opt, X, Y)
                h0 = time.perf_counter()
                if mon is not None:
                    mon.snapshot(step=epoch, epoch=epoch)
                else:
                    futs.append(pool.submit(_analyse_in_process, [w.detach().numpy().copy() for w in weights]))
                handoff += time.perf_counter() - h0
            if mon is not None:
                mon.close()
            else:
                for f in futs:
                    f.result()
            return time.perf_counter() - t0, handoff

    ctx = mp.get_context("spawn")
    t_start = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=_single_blas_thread) as pool:
        pool.submit(_analyse_in_process, []).result()  # start-up outside the timing
        startup = time.perf_counter() - t_start
        run("thread", None)  # warm-up
        th, th_h = run("thread", None)
        pr, pr_h = run("process", pool)
        th2, th2_h = run("thread", None)
        pr2, pr2_h = run("process", pool)
    return {
        "thread_s": (th + th2) / 2,
        "process_s": (pr + pr2) / 2,
        "thread_handoff_ms": (th_h + th2_h) / 2 / epochs * 1e3,
        "process_handoff_ms": (pr_h + pr2_h) / 2 / epochs * 1e3,
        "process_startup_s": startup,
    }


def main() -> None:
    import torch

    torch.set_num_threads(1)
    print("torch threads: 1 (training on one core, the worker's LAPACK on the other)\n")
    print("### snapshot() blocking time vs clone() of the same parameters (median, interleaved)\n")
    print(
        "| model | matrices | weights MB | clone() ms | snapshot() ms | snapshot / clone | "
        "copy_() into preallocated ms | snapshot / copy_() | first snapshot ms (allocates) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in bench_snapshot():
        print(
            f"| {r['model']} | {r['matrices']} | {r['MB']:.1f} | {r['clone_ms']:.2f} | {r['snapshot_ms']:.2f} | "
            f"**{r['ratio']:.2f}x** | {r['copy_ms']:.2f} | {r['ratio_copy']:.2f}x | {r['cold_ms']:.2f} |",
            flush=True,
        )
    print("\n### Whole training loop, snapshot every epoch, with vs without (median of 3 pairs)\n")
    r = bench_loop()
    print(
        "| run | epochs x steps | without monitor s | with monitor s (loop) | overhead | incl. close() s | "
        "overhead incl. close | worker CPU s (all snapshots) | same analysis inline s (overhead) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| MLP 784-512-512-10, SGD, batch 128, 8192 samples | {r['epochs']} x 64 | {r['without_s']:.2f} | "
        f"{r['with_s']:.2f} | **{100 * r['overhead_loop']:+.1f}%** | {r['with_close_s']:.2f} | "
        f"{100 * r['overhead_total']:+.1f}% | {r['analysis_cpu_s']:.2f} | {r['inline_s']:.2f} "
        f"({100 * r['overhead_inline']:+.1f}%) |",
        flush=True,
    )
    print(f"\n(load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print("\n### Peak extra host memory (subprocess, VmHWM - RSS before; queue_size=2, policy latest)\n")
    print(
        "| analysis | monitored weights MB | bound (q+1) x weights MB | snapshot buffers peak MB | "
        "RSS peak increase MB | RSS after close MB |"
    )
    print("|---|---|---|---|---|---|")
    for m in bench_memory():
        label = "held back (queue full)" if m["mode"] == "held" else "real, concurrent"
        mb = 2**20
        print(
            f"| {label} | {m['weights'] / mb:.1f} | {m['bound'] / mb:.1f} | {m['buffers_peak'] / mb:.1f} | "
            f"**{m['peak'] / mb:.1f}** | {m['after'] / mb:.1f} |",
            flush=True,
        )
    print("\n### Worker: thread vs process (same loop and snapshots; mean of 2)\n")
    t = bench_thread_vs_process()
    print("| worker | loop + analysis s | hand-off per snapshot ms |")
    print("|---|---|---|")
    print(f"| thread (Monitor) | {t['thread_s']:.2f} | {t['thread_handoff_ms']:.2f} |")
    print(
        f"| process (spawn pool, pickled copies; +{t['process_startup_s']:.1f} s start-up not counted) | "
        f"{t['process_s']:.2f} | {t['process_handoff_ms']:.2f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
