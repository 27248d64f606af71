"""Power-law fit: ``wwmonitor.fit_powerlaw`` vs weightwatcher 0.7.7's fitter vs ``powerlaw.Fit``.

Inputs: ESDs (eigenvalues of WᵀW, not divided by N, as weightwatcher fits
them) of heavy-tailed random matrices: Student-t (3 degrees of freedom)
entries, 2048x1024 blocks pooled like the kernel positions of a conv layer,
giving n = 1k, 4k and 16k eigenvalues.

All three fitters run in ONE child process, interleaved per repetition, so
they see the same machine load (weightwatcher must not be imported into this
process: importing it silences all warnings process-wide and reconfigures the
root logger).  weightwatcher's fitter is ``WW_powerlaw.WWFit`` on the
eigenvalues above 1e-5, exactly what ``WeightWatcher.fit_powerlaw`` runs by
default; ``powerlaw.Fit`` runs with its defaults (``xmin`` scan, continuous).
Times are medians; the "identical" column compares (xmin, alpha, D) bit for bit.

Run: ``python -m benchmarks powerlaw`` (prints a Markdown table).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SIZES = (1024, 4096, 16384)
BLOCK = (2048, 1024)  # (N, M) of each pooled block


def make_esd(n: int, seed: int = 0) -> np.ndarray:
    """n eigenvalues of WᵀW pooled from n/1024 Student-t(3) 2048x1024 blocks."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n // BLOCK[1]):
        W = rng.standard_t(3.0, size=BLOCK)
        out.append(np.linalg.eigvalsh(W.T @ W))
    return np.concatenate(out)


_CHILD = r"""
import json, sys, time, warnings, io, contextlib, logging
import numpy as np
data = np.load(sys.argv[1])
cfg = json.loads(sys.argv[2])
from wwmonitor.powerlaw import fit_powerlaw
from weightwatcher.WW_powerlaw import WWFit
logging.getLogger().setLevel(logging.ERROR)
import powerlaw
res = {}
for key in data.files:
    ev = data[key]
    nz = ev[ev > 1e-5]
    reps = cfg["reps"][key]
    t_ours, t_ww, t_pl = [], [], []
    for r in range(reps["ours"]):
        t0 = time.perf_counter(); f = fit_powerlaw(ev); t_ours.append(time.perf_counter() - t0)
        if r < reps["ww"]:
            t0 = time.perf_counter(); w = WWFit(nz); t_ww.append(time.perf_counter() - t0)
        if r < reps["powerlaw"]:
            with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
                  contextlib.redirect_stderr(io.StringIO())):
                warnings.simplefilter("ignore")
                t0 = time.perf_counter(); p = powerlaw.Fit(nz, verbose=False)
                a_pl = float(p.power_law.alpha); x_pl = float(p.power_law.xmin); t_pl.append(time.perf_counter() - t0)
    res[key] = dict(n=int(ev.size), t_ours=t_ours, t_ww=t_ww, t_pl=t_pl,
                    ours=[f.xmin, f.alpha, f.D, f.n_tail, f.n_evaluated],
                    ww=[float(w.xmin), float(w.alpha), float(w.D)],
                    pl=[x_pl, a_pl])
print(json.dumps(res))
"""


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_pl_") as d:
        path = Path(d) / "esd.npz"
        np.savez(path, **{f"n{n}": make_esd(n, seed=n) for n in SIZES})
        reps = {f"n{n}": {"ours": 7, "ww": 5 if n <= 4096 else 3, "powerlaw": 3 if n <= 1024 else 1} for n in SIZES}
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p])
        env.setdefault("MPLBACKEND", "Agg")
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), json.dumps({"reps": reps})],
            capture_output=True,
            text=True,
            env=env,
            timeout=3600,
        )
        if out.returncode != 0:
            raise RuntimeError(f"benchmark child failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def table(res: dict) -> str:
    lines = [
        "| n eigenvalues | wwmonitor | weightwatcher WWFit | powerlaw.Fit | speed-up vs weightwatcher "
        "| speed-up vs powerlaw | identical (xmin, alpha, D) | alpha (ours = ww) | alpha powerlaw "
        "| full-D evaluations |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(res, key=lambda k: res[k]["n"]):
        r = res[key]
        to, tw, tp = (float(np.median(r[k])) for k in ("t_ours", "t_ww", "t_pl"))
        same = r["ours"][:3] == r["ww"]
        lines.append(
            f"| {r['n']} | {to * 1e3:.1f} ms | {tw * 1e3:.1f} ms | {tp:.2f} s | {tw / to:.1f}x | {tp / to:.0f}x | "
            f"{'yes' if same else 'NO'} | {r['ours'][1]:.4f} | {r['pl'][1]:.4f} | {r['ours'][4]} of {r['n'] - 1} |"
        )
    return "\n".join(lines)


def main() -> None:
    res = run()
    print(table(res))
    print(
        "\nMedian wall times, all three fitters interleaved in one child process. "
        "Input: Student-t(3) 2048x1024 blocks pooled to n eigenvalues of WᵀW (σ² axis)."
    )


if __name__ == "__main__":
    main()
