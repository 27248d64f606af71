"""GPT-2-medium shapes for ``benchmarks/bench_350m.py``: the model, the weightwatcher subset timing and the
whole-snapshot memory child (the parts ``python -m benchmarks 350m`` prints beside its docs block)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20
#: transformer blocks (24 for GPT-2-medium; ``WWM_BENCH_350M_BLOCKS=2`` smoke-tests the benchmark in a minute)
N_BLOCKS = int(os.environ.get("WWM_BENCH_350M_BLOCKS", "24"))
QUEUE = 2


def build_gpt2_medium(
    dtype: Any = None, device: str = "cpu", n_layer: Optional[int] = None, n_embd: int = 1024, vocab_size: int = 50257
) -> Any:
    """Random-initialised GPT-2-medium (355M parameters), float32 unless ``dtype`` says otherwise
    (``n_layer``/``n_embd``/``vocab_size``: smaller shapes for smoke runs)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=N_BLOCKS if n_layer is None else n_layer, n_embd=n_embd, n_head=16, vocab_size=vocab_size)
    with warnings.catch_warnings(), torch.device(device):  # built (and initialised) where it will live
        warnings.simplefilter("ignore")
        model = GPT2LMHeadModel(cfg).eval()
    if dtype is not None:
        model = model.to(dtype)
    return model


def monitored_params(model: Any) -> list[Any]:
    """The parameters whose storage backs the monitored matrices."""
    from wwmonitor.layers import extract_matrices

    ptrs = {s.tensor.untyped_storage().data_ptr() for s in extract_matrices(model)}
    return [p for p in model.parameters() if p.untyped_storage().data_ptr() in ptrs]


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
from benchmarks.gpt2_350m import build_gpt2_medium, monitored_params, QUEUE
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
