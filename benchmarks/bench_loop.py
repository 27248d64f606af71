"""Training-loop overhead of the monitor, side by side: the same model on the same data, with and without a
``Monitor`` snapshotting every epoch.

For each of an MLP, a CNN and a small transformer, ``REPS`` pairs of training runs are interleaved (monitor off /
on, the order alternating per pair, so that a change in the machine's load hits both sides alike); each run starts
from the same seed and trains ``EPOCHS`` epochs of a few seconds, with ``snapshot()`` at every epoch end.  The
overhead of pair *i* is ``t_on / t_off - 1`` of the training loop (up to the return of the last ``snapshot()``);
the table gives its median and range, the same with ``close()`` included (the analysis of the last snapshot, which
no training overlaps), and the monitor's own CPU time (``Monitor.stats["monitor_cpu_s"]``: the analysis,
dispatcher and sink threads, ``time.thread_time`` of each).  The monitor runs with its defaults (``policy="latest"``,
``analysis_nice=10``, ``blas_threads=1``, figures every 5 epochs, the run store); torch keeps its default thread
count (every core), as in a user's script.  Goal: overhead at most ``GOAL`` on every model.

Run: ``python -m benchmarks loop`` (prints the table) or ``python -m benchmarks --write-docs loop``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from typing import Any, Callable

#: the goal: loop overhead at most 3 %
GOAL = 0.03
#: pairs (monitor off / on) per model, and epochs per run (a snapshot at the end of each)
REPS, EPOCHS = 5, 3
#: ``--quick``: a smoke run of the pipeline (8x narrower models, 2 steps per epoch), never for the docs
QUICK_REPS, QUICK_EPOCHS = 1, 2
#: torch threads of the training loop (one: on a shared 2-core machine two OpenMP threads of training stall
#: each other whenever one is descheduled, and the figures would measure that, not the monitor)
TRAIN_THREADS = 1
#: block name -> Markdown file this benchmark writes with ``python -m benchmarks --write-docs``
DOC_BLOCKS = {"loop": "docs/benchmarks.md"}


def _tasks(quick: bool = False) -> dict[str, tuple[Callable[[], Any], Callable[[Any], Any], str, int]]:
    """name -> (model factory, batch maker (generator -> (x, y)), data description, steps per epoch); ``quick``:
    the same architectures 8x narrower, two steps per epoch (a smoke run)."""
    import torch
    from torch import nn

    k = 8 if quick else 1
    h, c, d = 1024 // k, 32 // k, 256 // k

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(784, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))

    def cnn() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 4 * c, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * c, 8 * c),
            nn.ReLU(),
            nn.Linear(8 * c, 10),
        )

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(1000, d)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                layer = nn.TransformerEncoderLayer(d, 4, 4 * d, batch_first=True)
                self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(d, 10)

        def forward(self, x: Any) -> Any:
            return self.head(self.enc(self.emb(x)).mean(1))

    def images(g: Any) -> tuple[Any, Any]:
        return torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)

    def vectors(g: Any) -> tuple[Any, Any]:
        return torch.randn(128, 784, generator=g), torch.randint(0, 10, (128,), generator=g)

    def tokens(g: Any) -> tuple[Any, Any]:
        return torch.randint(0, 1000, (16, 32), generator=g), torch.randint(0, 10, (16,), generator=g)

    steps = (2, 2, 2) if quick else (100, 25, 40)
    return {
        f"MLP 784-{h}-{h}-10": (mlp, vectors, "batch 128", steps[0]),
        f"CNN 3 conv ({c}-{2 * c}-{4 * c}) + 2 linear": (cnn, images, "batch 64 of 3x32x32", steps[1]),
        f"Transformer d={d}, 2 layers, ff {4 * d}": (Tiny, tokens, "batch 16 x 32 tokens", steps[2]),
    }


def _run(make: Callable[[], Any], batches: list[Any], epochs: int, root: Any) -> dict[str, Any]:
    """One training run (SGD, cross-entropy); ``root``: a Monitor snapshotting every epoch end there, or ``None``."""
    import torch

    from wwmonitor.monitor import Monitor

    torch.manual_seed(0)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mon = Monitor(model, root, every_n_epochs=1, announce=False) if root is not None else None
    step = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for x, y in batches:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        if mon is not None:
            mon.snapshot(step=step, epoch=epoch)
    loop = time.perf_counter() - t0
    out: dict[str, Any] = {"loop_s": loop, "total_s": loop}
    if mon is not None:
        mon.close()
        out["total_s"] = time.perf_counter() - t0
        st = mon.stats
        out.update({k: st[k] for k in ("monitor_cpu_s", "analysed", "coalesced", "skipped", "blocked_s")})
    return out


def measure(quick: bool = False) -> list[dict[str, Any]]:
    """One row per model: per-pair overheads (loop, with close), the runs' seconds and the monitor's CPU time."""
    import torch

    reps, epochs = (QUICK_REPS, QUICK_EPOCHS) if quick else (REPS, EPOCHS)
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        return [_model_rows(name, task, reps, epochs) for name, task in _tasks(quick).items()]
    finally:
        torch.set_num_threads(threads)


def _model_rows(name: str, task: Any, reps: int, epochs: int) -> dict[str, Any]:
    """``reps`` interleaved pairs of runs of one model (the order alternating per pair)."""
    import torch

    make, batch, data, steps = task
    g = torch.Generator().manual_seed(1)
    batches = [batch(g) for _ in range(steps)]
    off: list[dict[str, Any]] = []
    on: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        _run(make, batches[:2], 1, d)  # warm-up: imports, allocator, the first analysis
        for r in range(reps):
            for kind in ("off", "on") if r % 2 == 0 else ("on", "off"):
                res = _run(make, batches, epochs, f"{d}/r{r}" if kind == "on" else None)
                (on if kind == "on" else off).append(res)
    return _row(name, data, len(batches), epochs, off, on)


def _row(name: str, data: str, steps: int, epochs: int, off: list[dict], on: list[dict]) -> dict[str, Any]:
    loop = [b["loop_s"] / a["loop_s"] - 1 for a, b in zip(off, on)]
    total = [b["total_s"] / a["loop_s"] - 1 for a, b in zip(off, on)]
    med = statistics.median(loop)
    return {
        "model": name,
        "data": data,
        "steps": steps,
        "epochs": epochs,
        "reps": len(loop),
        "epoch_s": statistics.median(a["loop_s"] for a in off) / epochs,
        "overhead": med,
        "overhead_min": min(loop),
        "overhead_max": max(loop),
        "overhead_close": statistics.median(total),
        "cpu_s": statistics.median(b["monitor_cpu_s"] for b in on),
        "analysed": sum(b["analysed"] for b in on),
        "dropped": sum(b["coalesced"] + b["skipped"] for b in on),
        "snapshots": epochs * len(on),
        "ok": med <= GOAL,
    }


def render(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The docs block: one row per model with its verdict, and the summary sentence computed from the rows."""
    lines = [
        "| model | data, steps per epoch | epoch s (off) | pairs | loop overhead, median (min .. max) | "
        "incl. close() | monitor CPU s per run | snapshots analysed / taken | goal ≤ 3% |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['data']}, {r['steps']} | {r['epoch_s']:.2f} | {r['reps']} | "
            f"**{100 * r['overhead']:+.1f}%** ({100 * r['overhead_min']:+.1f}% .. {100 * r['overhead_max']:+.1f}%) | "
            f"{100 * r['overhead_close']:+.1f}% | {r['cpu_s']:.2f} | {r['analysed']} / {r['snapshots']} | "
            f"{'met' if r['ok'] else 'not met'} |"
        )
    missed = [r for r in rows if not r["ok"]]
    if not missed:
        summary = f"In this run the goal (median loop overhead ≤ 3%) is met on all {len(rows)} models."
    else:
        which = ", ".join(f"{r['model']} ({100 * r['overhead']:+.1f}%)" for r in missed)
        met = f"{len(rows) - len(missed)} of {len(rows)}"
        summary = f"In this run the goal (median loop overhead ≤ 3%) is met on {met} models; not met: {which}."
    return {"loop": "\n".join(lines) + "\n\n" + summary}


def main() -> None:
    print(render(measure())["loop"], flush=True)


if __name__ == "__main__":
    main()
