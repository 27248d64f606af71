"""Every GPU check in one prepared script: ``python benchmarks/gpu_check.py``.

On a machine with a CUDA device it runs, printing each result as it comes:

1. the CUDA tests: ``pytest -m gpu -q`` (tests marked ``gpu`` in ``tests/``);
2. the 350M benchmark on the device: GPT-2-medium (``benchmarks/bench_350m.py``'s model, float32, built
   on the device): ``Monitor.snapshot()`` (device -> pinned host copy) against ``clone()`` on the
   device, and one whole snapshot's analysis *on the device*: with ``analysis_device="cuda"`` where
   ``Monitor`` / ``analyze_model`` accept it, otherwise by passing the CUDA tensors to
   ``wwmonitor.analyze_matrix`` (which computes on the tensor's device);
3. a 7B-shaped set of matrices generated on the device, Llama-7B's 32 layers of 4 attention matrices
   4096 x 4096 and 3 MLP matrices (11008 x 4096 gate/up, 4096 x 11008 down), each layer generated, then
   its 7 matrices analysed (ESD on the device + power-law/MP fits, phase), then dropped; the time of
   all 224 analyses is set against the goal: under 60 s on an H100-class GPU.

Without a CUDA device (no torch, a CPU-only torch, or ``CUDA_VISIBLE_DEVICES=""``) it prints
``no CUDA device: ...`` and exits 0.  ``--dry-run`` prints what would run and exits 0 either way.
Exit status 1 when a check fails (a failing test, an error); goals missed are reported, not failures.

Options: ``--skip-tests``, ``--skip-350m``, ``--skip-7b``, ``--layers N`` (7B set: first N of 32 layers,
scaled to 32 in the report), ``--dtype float32|bfloat16`` (7B set), ``--test-timeout S``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LLAMA7B_LAYERS = 32
LLAMA7B_SHAPES = [
    ("self_attn.q_proj", (4096, 4096)),
    ("self_attn.k_proj", (4096, 4096)),
    ("self_attn.v_proj", (4096, 4096)),
    ("self_attn.o_proj", (4096, 4096)),
    ("mlp.gate_proj", (11008, 4096)),
    ("mlp.up_proj", (11008, 4096)),
    ("mlp.down_proj", (4096, 11008)),
]
GOAL_7B_S = 60.0
#: where the checks run; ``--device cpu`` smoke-tests this script's code paths on a machine without a GPU (slow)
DEVICE = "cuda"


def cuda_device() -> tuple[Optional[str], str]:
    """``(device name, "")`` when CUDA is usable, else ``(None, why not)``."""
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    if not torch.cuda.is_available():
        built = getattr(torch.version, "cuda", None)
        return None, (
            "torch.cuda.is_available() is False"
            + (
                f" (torch {torch.__version__}, built with CUDA {built})"
                if built
                else f" (torch {torch.__version__} is a CPU-only build)"
            )
        )
    return torch.cuda.get_device_name(0), ""


def _sync() -> None:
    if DEVICE != "cpu":
        import torch

        torch.cuda.synchronize()


def _accepts(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------------ 1 ----
def run_tests(timeout: int) -> int:
    print("## 1. CUDA tests: pytest -m gpu -q\n", flush=True)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        print(f"FAILED: pytest -m gpu did not finish in {timeout} s\n", flush=True)
        return 1
    tail = (p.stdout + p.stderr).strip().splitlines()[-25:]
    print("\n".join(tail))
    print(f"\n(pytest exit status {p.returncode}, {time.perf_counter() - t0:.0f} s)\n", flush=True)
    return 0 if p.returncode == 0 else 1


# ------------------------------------------------------------------------------------------------ 2 ----
def analyse_on_device(specs: list[Any]) -> tuple[float, list[Any]]:
    """Analyse every spec's CUDA tensor with ``analyze_matrix`` (on its device); wall seconds and the metrics."""
    from wwmonitor.analyze import analyze_matrix

    _sync()
    t0 = time.perf_counter()
    out = [analyze_matrix(s.tensor.detach(), s.name, layer_type=s.type, scale=s.scale) for s in specs]
    _sync()
    return time.perf_counter() - t0, out


def run_350m() -> int:
    import tempfile

    import torch

    from benchmarks.bench_350m import bench_snapshot, build_gpt2_medium
    from wwmonitor.layers import extract_matrices
    from wwmonitor.model import analyze_model
    from wwmonitor.monitor import Monitor

    print("## 2. 350M parameters (GPT-2-medium shapes) on the device\n", flush=True)
    t0 = time.perf_counter()
    model = build_gpt2_medium(device=DEVICE)
    _sync()
    print(f"(model built on the device in {time.perf_counter() - t0:.1f} s)", flush=True)
    snap = bench_snapshot(model)
    print(
        "| model | matrices | weights MiB | clone() on device s | snapshot() s (device -> pinned host) | "
        "snapshot / clone | copy_() on device s | first snapshot s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| GPT-2-medium float32, {DEVICE} | {snap['matrices']} | {snap['bytes'] / 2**20:.0f} | {snap['clone_s']:.4f} | "  # noqa: E501
        f"{snap['snapshot_s']:.4f} | {snap['ratio']:.2f}x | {snap['copy_s']:.4f} | {snap['cold_s']:.3f} |\n",
        flush=True,
    )

    specs = extract_matrices(model)
    rows = []
    if _accepts(Monitor.__init__, "analysis_device"):
        with tempfile.TemporaryDirectory() as d:
            with Monitor(model, d, every_n_epochs=None, queue_size=2, policy="block", analysis_device=DEVICE) as mon:
                mon.snapshot(step=0)
                mon.flush()
                res = mon.results[-1]
        rows.append(
            (
                f"Monitor(analysis_device={DEVICE!r}), one snapshot, result.meta['analysis_s']",
                res.meta["analysis_s"],
                sum(lm.status == "ok" for lm in res.layers),
                len(res.layers),
            )
        )
    else:
        print("(Monitor has no analysis_device yet: the CUDA tensors go to analyze_matrix directly)", flush=True)
    if _accepts(analyze_model, "analysis_device"):
        _sync()
        t0 = time.perf_counter()
        rep = analyze_model(model, analysis_device=DEVICE, progress=False)
        _sync()
        rows.append(
            (
                f"analyze_model(model, analysis_device={DEVICE!r})",
                time.perf_counter() - t0,
                sum(lm.status == "ok" for lm in rep.layers),
                len(rep.layers),
            )
        )
    analyse_on_device(specs[-2:])  # warm-up: CUDA context, cuSOLVER handles
    times = []
    for _ in range(2):
        t, lms = analyse_on_device(specs)
        times.append(t)
    rows.append(
        (
            f"analyze_matrix on each {DEVICE} tensor (ESD on the tensor's device), median of 2",
            statistics.median(times),
            sum(lm.status == "ok" for lm in lms),
            len(lms),
        )
    )
    print("| analysis of the whole model on the device | s | fitted / matrices |")
    print("|---|---|---|")
    for label, t, ok, n in rows:
        print(f"| {label} | **{t:.2f}** | {ok} / {n} |")
    print(flush=True)
    del model, specs
    torch.cuda.empty_cache()
    return 0


# ------------------------------------------------------------------------------------------------ 3 ----
def run_7b(layers: int, dtype_name: str) -> int:
    import torch

    from wwmonitor.analyze import analyze_matrix

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    print(
        f"## 3. 7B-shaped matrices generated on the device ({layers} of {LLAMA7B_LAYERS} Llama-7B layers, "
        f"{dtype_name})\n",
        flush=True,
    )
    g = torch.Generator(device=DEVICE).manual_seed(0)
    W = torch.randn(4096, 4096, device=DEVICE, generator=g, dtype=dtype)
    analyze_matrix(W, "warm-up")  # CUDA context, cuSOLVER handles, first-call costs
    del W
    gen_s = ana_s = 0.0
    per_kind: dict[str, list[float]] = {}
    n = ok = 0
    for i in range(layers):
        _sync()
        t0 = time.perf_counter()
        mats = [
            (f"model.layers.{i}.{name}", torch.randn(*shape, device=DEVICE, generator=g, dtype=dtype) * 0.02)
            for name, shape in LLAMA7B_SHAPES
        ]
        _sync()
        gen_s += time.perf_counter() - t0
        for name, M in mats:
            _sync()
            t0 = time.perf_counter()
            lm = analyze_matrix(M, name, layer_type="Linear")
            _sync()
            dt = time.perf_counter() - t0
            ana_s += dt
            per_kind.setdefault("x".join(str(s) for s in M.shape), []).append(dt)
            n += 1
            ok += lm.status == "ok"
        del mats
    scale = LLAMA7B_LAYERS / layers
    total = ana_s * scale
    print("| matrices | generation s | ESD + analysis s (all) | estimated for 32 layers s | goal < 60 s | fitted |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {n} | {gen_s:.1f} | {ana_s:.1f} | **{total:.1f}** | {'met' if total < GOAL_7B_S else 'missed'} | "
        f"{ok} / {n} |\n"
    )
    print("| shape | matrices | median s per matrix |")
    print("|---|---|---|")
    for shape, ts in per_kind.items():
        print(f"| {shape} | {len(ts)} | {statistics.median(ts):.3f} |")
    print(flush=True)
    torch.cuda.empty_cache()
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print what would run and whether a CUDA device is present")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-350m", action="store_true")
    ap.add_argument("--skip-7b", action="store_true")
    ap.add_argument(
        "--layers", type=int, default=LLAMA7B_LAYERS, help="7B set: analyse this many layers (scaled to 32)"
    )
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="7B set: dtype of the matrices")
    ap.add_argument("--test-timeout", type=int, default=600)
    ap.add_argument("--device", default="cuda", help="'cpu': smoke-test the code paths without a GPU (slow)")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if not 1 <= args.layers <= LLAMA7B_LAYERS:
        ap.error(f"--layers must be in 1..{LLAMA7B_LAYERS}")
    name, why = cuda_device() if DEVICE != "cpu" else ("cpu (smoke test of this script)", "")
    steps = [
        s
        for s, skip in (
            ("pytest -m gpu -q", args.skip_tests),
            ("350M benchmark with analysis on the device", args.skip_350m),
            (f"7B-shaped set: {args.layers} x 7 matrices on the device", args.skip_7b),
        )
        if not skip
    ]
    if name is None:
        print(f"no CUDA device: {why}. Nothing to check on a GPU; exiting.")
        if args.dry_run:
            print("(dry run) on a CUDA machine this would run: " + "; ".join(steps))
        return 0
    import torch

    mem = f" ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)" if DEVICE != "cpu" else ""
    print(
        f"device: {name}{mem}, torch {torch.__version__}, CUDA {torch.version.cuda}; load average "
        f"{os.getloadavg()[0]:.1f}\n",
        flush=True,
    )
    if args.dry_run:
        print("(dry run) would run: " + "; ".join(steps))
        return 0
    failed = 0
    t_all = time.perf_counter()
    for label, skip, fn in (
        ("tests", args.skip_tests, lambda: run_tests(args.test_timeout)),
        ("350m", args.skip_350m, run_350m),
        ("7b", args.skip_7b, lambda: run_7b(args.layers, args.dtype)),
    ):
        if skip:
            continue
        try:
            failed |= fn()
        except Exception as e:  # noqa: BLE001 - report and go on with the next check
            import traceback

            traceback.print_exc()
            print(f"FAILED: {label}: {type(e).__name__}: {e}\n", flush=True)
            failed = 1
    print(f"gpu_check {'FAILED' if failed else 'passed'} in {time.perf_counter() - t_all:.0f} s")
    return failed


if __name__ == "__main__":
    sys.exit(main())
