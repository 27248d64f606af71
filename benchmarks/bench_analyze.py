"""analyze_model vs weightwatcher 0.7.7 ``analyze()`` (default and ``mp_fit=True``).

Three models (random init, same weights for both tools): an MLP
784-1024-1024-10, a CNN (4 Conv2d 3x3, 64-128 channels, + Linear) and an
``nn.TransformerEncoder`` (d=512, 6 layers, ff 2048). Calls alternate
between the tools, median of ``REPEATS``. Our default run always includes
the MP fit and the phase, so it is compared with both weightwatcher modes.
"""
from __future__ import annotations

import logging
import statistics
import sys
import time
from pathlib import Path

REPEATS = 3


def _median_time(fn, repeats: int = REPEATS) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import torch
    from model_zoo import build

    import wwmonitor

    torch.set_num_threads(torch.get_num_threads())
    import weightwatcher as ww  # import silences warnings process-wide; fine inside the benchmark

    logging.disable(logging.CRITICAL)
    print("| model | matrices (ours / ww) | wwmonitor (MP fit + phase) | ww default | ww mp_fit=True | ww default / ours | ww mp_fit / ours |")
    print("|---|---|---|---|---|---|---|")
    for name in ("mlp", "cnn", "transformer"):
        model = build(name)
        watcher = ww.WeightWatcher(model=model)
        rep = wwmonitor.analyze_model(model, progress=False)  # warm-up
        n_ww = len(watcher.analyze())
        ours, ww_def, ww_mp = [], [], []
        for _ in range(REPEATS):
            ours.append(_median_time(lambda: wwmonitor.analyze_model(model, progress=False), 1))
            ww_def.append(_median_time(lambda: watcher.analyze(), 1))
            ww_mp.append(_median_time(lambda: watcher.analyze(mp_fit=True), 1))
        o, d, m = statistics.median(ours), statistics.median(ww_def), statistics.median(ww_mp)
        print(f"| {name} | {len(rep)} / {n_ww} | {o:.3f} s | {d:.3f} s | {m:.3f} s | {d / o:.1f}x | {m / o:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
