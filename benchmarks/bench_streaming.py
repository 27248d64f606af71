"""Streaming checkpoint analysis: peak memory of ``wwmonitor analyze`` on a sharded checkpoint of > 1 GB.

The benchmark makes the checkpoint itself: random float32 matrices of GPT-2-medium shapes (24 blocks,
d = 1024, vocabulary 50257, 1024 positions; 355M parameters, 1.42 GB) saved as 3 safetensors shards in a
temporary folder, deleted at the end.  Each run is a child process; its peak RSS (``ru_maxrss`` from
``os.wait4``, the same high-water mark as ``VmHWM``: anonymous and file-backed pages, so memory-mapped pages
count) is set against the checkpoint size and the largest tensor (the 50257 x 1024 embedding, 196 MiB):

* baseline: ``wwmonitor analyze`` of a one-matrix file (the interpreter, NumPy, SciPy, pandas);
* streaming, default options: ``wwmonitor analyze FOLDER`` (2 analysis threads on 2 CPUs);
* streaming, ``--low-memory`` (in-place eigen route: float64 Gram built from 128-row blocks, no float64
  copy of the matrix);
* the whole-checkpoint path it replaces: ``analyze_model(load_weights(FOLDER))`` (every shard loaded into
  a dict first, as ``wwmonitor analyze`` did before; that path imports torch for ``safetensors.torch``, so
  its own baseline -- the interpreter with torch imported -- is measured too).

Goal: peak ~ baseline + largest tensor x a small factor, independent of the checkpoint size.

Run: ``python -m benchmarks streaming``.  Prints a Markdown table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20

#: GPT-2-medium (transformers' GPT2Config(n_layer=24, n_embd=1024, n_head=16)) state-dict shapes
N_LAYER, D, VOCAB, N_POS = 24, 1024, 50257, 1024


def gpt2_medium_shapes() -> list[tuple[str, tuple[int, ...]]]:
    out: list[tuple[str, tuple[int, ...]]] = [
        ("transformer.wte.weight", (VOCAB, D)),
        ("transformer.wpe.weight", (N_POS, D)),
    ]
    for i in range(N_LAYER):
        p = f"transformer.h.{i}."
        out += [
            (p + "ln_1.weight", (D,)),
            (p + "ln_1.bias", (D,)),
            (p + "attn.c_attn.weight", (D, 3 * D)),
            (p + "attn.c_attn.bias", (3 * D,)),
            (p + "attn.c_proj.weight", (D, D)),
            (p + "attn.c_proj.bias", (D,)),
            (p + "ln_2.weight", (D,)),
            (p + "ln_2.bias", (D,)),
            (p + "mlp.c_fc.weight", (D, 4 * D)),
            (p + "mlp.c_fc.bias", (4 * D,)),
            (p + "mlp.c_proj.weight", (4 * D, D)),
            (p + "mlp.c_proj.bias", (D,)),
        ]
    out += [("transformer.ln_f.weight", (D,)), ("transformer.ln_f.bias", (D,))]
    return out


def make_checkpoint(folder: Path, shards: int = 3, seed: int = 0) -> dict[str, Any]:
    """Write the GPT-2-medium-shaped checkpoint as ``shards`` safetensors files (about equal sizes)."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    shapes = gpt2_medium_shapes()
    total = sum(4 * int(np.prod(s)) for _, s in shapes)
    rng = np.random.default_rng(seed)
    part: dict[str, Any] = {}
    size, k = 0, 1
    for name, shape in shapes:
        a = rng.standard_normal(shape, dtype=np.float32)
        a *= 0.02
        part[name] = a
        size += a.nbytes
        if size >= total * k / shards and k < shards:
            save_file(part, str(folder / f"model-{k:05d}-of-{shards:05d}.safetensors"))
            part, k = {}, k + 1
    save_file(part, str(folder / f"model-{k:05d}-of-{shards:05d}.safetensors"))
    files = sorted(folder.glob("*.safetensors"))
    largest = max(4 * int(np.prod(s)) for _, s in shapes)
    return {
        "bytes": sum(f.stat().st_size for f in files),
        "files": len(files),
        "largest": largest,
        "params": total // 4,
        "tensors": len(shapes),
    }


#: runs ``python -m wwmonitor ARGS`` (or ``-c CODE ARGS``) in this process and, at exit, writes its VmHWM to
#: the file named by ``WWM_HWM_FILE``.  (``ru_maxrss`` of a child would include the pages of the forked
#: benchmark process before ``exec``; the high-water mark of the new image is reset at ``exec``.)
_WRAP = r"""
import atexit, os, runpy, sys
def _hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            open(os.environ["WWM_HWM_FILE"], "w").write(str(int(line.split()[1]) * 1024))
atexit.register(_hwm)
if sys.argv[1] == "-c":
    code = sys.argv[2]
    sys.argv = ["-c"] + sys.argv[3:]
    exec(compile(code, "<bench>", "exec"), {"__name__": "__main__"})
else:
    sys.argv = ["wwmonitor"] + sys.argv[1:]
    runpy.run_module("wwmonitor", run_name="__main__", alter_sys=True)
"""


def _measure(args: list[str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``python -m wwmonitor ARGS`` (or ``-c CODE ...``) in a child: wall time and peak RSS (VmHWM)."""
    with tempfile.TemporaryDirectory() as d:
        hwm = Path(d) / "hwm"
        t0 = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-c", _WRAP, *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=timeout,
            env={**os.environ, "WWM_HWM_FILE": str(hwm)},
        )
        wall = time.perf_counter() - t0
        if p.returncode != 0 or not hwm.exists():
            raise RuntimeError(f"{' '.join(args[:3])} ... failed (rc={p.returncode}):\n{p.stderr[-2000:]}")
        return {"wall_s": wall, "peak": int(hwm.read_text())}


#: the path ``wwmonitor analyze`` took before streaming: every shard loaded into one dict (safetensors.torch)
_WHOLE = (
    "import sys; from wwmonitor.checkpoint import load_weights; from wwmonitor.model import analyze_model; "
    "rep = analyze_model(load_weights(sys.argv[1]), progress=False); print(len(rep.layers))"
)


def run(keep: bool = False) -> dict[str, Any]:
    import numpy as np
    from safetensors.numpy import save_file

    tmp = Path(tempfile.mkdtemp(prefix="wwm-stream-"))
    try:
        t0 = time.perf_counter()
        ck = make_checkpoint(tmp / "gpt2-medium")
        ck["make_s"] = time.perf_counter() - t0
        save_file(
            {"w.weight": np.random.default_rng(0).standard_normal((256, 128)).astype(np.float32)},
            str(tmp / "tiny.safetensors"),
        )
        cli = ["analyze"]
        folder = str(tmp / "gpt2-medium")
        rows = [
            (
                "baseline: `wwmonitor analyze` of a one-matrix file",
                _measure(cli + [str(tmp / "tiny.safetensors"), "--no-progress"]),
            )
        ]
        rows.append(
            ("streaming (default options)", _measure(cli + [folder, "--no-progress", "--json", str(tmp / "a.json")]))
        )
        rows.append(
            (
                "streaming, `--low-memory`",
                _measure(cli + [folder, "--no-progress", "--low-memory", "--json", str(tmp / "b.json")]),
            )
        )
        rows.append(
            (
                "whole checkpoint first: `analyze_model(load_weights(folder))` (the path before; imports torch)",
                _measure(["-c", _WHOLE, folder]),
            )
        )
        rows.append(
            (
                "(baseline of the path before: the interpreter with torch and wwmonitor imported)",
                _measure(["-c", "import torch, pandas, wwmonitor.model"]),
            )
        )
        import json

        a = json.loads((tmp / "a.json").read_text())
        b = json.loads((tmp / "b.json").read_text())
        ck["matrices"] = a["summary"]["num_layers"]
        ck["max_alpha_diff"] = max(
            abs(x["alpha"] - y["alpha"])
            for x, y in zip(a["layers"], b["layers"])
            if x["alpha"] is not None and y["alpha"] is not None
        )
        return {"checkpoint": ck, "rows": rows}
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    load0 = os.getloadavg()
    r = run()
    load1 = os.getloadavg()
    ck, rows = r["checkpoint"], r["rows"]
    base = rows[0][1]["peak"]
    print(
        f"Checkpoint: {ck['params'] / 1e6:.0f}M float32 parameters in {ck['tensors']} tensors, "
        f"{ck['bytes'] / 2**30:.2f} GiB in {ck['files']} safetensors shards ({ck['matrices']} matrices analysed); "
        f"largest tensor {ck['largest'] / MiB:.0f} MiB (the 50257 x 1024 embedding); "
        f"written in {ck['make_s']:.0f} s.\n"
    )
    print(
        "| run | wall s | peak RSS MiB | peak - baseline MiB (the path's own baseline) | "
        "(peak - baseline) / largest tensor | peak / checkpoint size |"
    )
    print("|---|---|---|---|---|---|")
    for label, m in rows:
        first = label.startswith(("baseline", "(baseline"))
        extra = m["peak"] - (rows[-1][1]["peak"] if label.startswith("whole") else base)
        mib = "-" if first else f"{extra / MiB:.0f}"
        factor = "-" if first else f"**{extra / ck['largest']:.2f}x**"
        print(
            f"| {label} | {m['wall_s']:.1f} | {m['peak'] / MiB:.0f} | {mib} | {factor} | "
            f"{m['peak'] / ck['bytes']:.2f} |",
            flush=True,
        )
    print(
        f"\n(`--low-memory` alpha vs default: max |difference| {ck['max_alpha_diff']:.1e}; load average "
        f"{load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} at the start, {load1[0]:.1f} / {load1[1]:.1f} / "
        f"{load1[2]:.1f} at the end, {os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
