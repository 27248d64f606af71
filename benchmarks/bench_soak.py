"""Soak: many snapshots of a small model with every default sink on; resources must stay flat.

A three-layer MLP is trained by SGD on random data; after every step ``Monitor.snapshot`` is called (policy
``block``, so nothing is dropped) with the run store, a TensorBoard sink (scalars and the ESD figures every
``esd_every_n_epochs`` epochs, the default 5), a CSV sink and -- when ``wandb`` imports -- a W&B sink on an
offline run.  Only the public Monitor and sink API is used.

Measured after ``Monitor.flush()`` at the end of the warm-up and at the end of the run (before ``close``):

* resident memory (``VmRSS`` of ``/proc/self/status``, MiB),
* open file descriptors (entries of ``/proc/self/fd``),
* OS threads of the process (``Threads`` of ``/proc/self/status``),

and, after ``close``, what the store holds (``wwmonitor.load_run``): every step exactly once, no (step, layer,
metric) row twice.  ``tests/test_soak.py`` runs a 240-snapshot version with asserted bounds.

Run: ``python -m benchmarks.bench_soak`` (1,000 snapshots, prints the figures); ``--write-docs`` also writes them
into the ``soak`` block of docs/reliability.md with a provenance stamp.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

DOC_BLOCKS = {"soak": "docs/reliability.md"}
N_SNAPSHOTS = 1000
WARMUP = 100


def resources() -> dict[str, float]:
    """This process's resident memory (MiB), open file descriptors and OS threads (Linux ``/proc``)."""
    status = Path("/proc/self/status").read_text().splitlines()
    fields = {line.split(":")[0]: line.split(":", 1)[1].split() for line in status}
    return {
        "rss_mib": int(fields["VmRSS"][0]) / 1024.0,
        "fds": float(len(os.listdir("/proc/self/fd"))),
        "threads": float(int(fields["Threads"][0])),
    }


def open_files() -> list[str]:
    """What this process's file descriptors point at (``/proc/self/fd`` link targets)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed meanwhile (the listing's own descriptor)
            pass
    return out


def _wandb_run(folder: Path) -> Any:
    """An offline W&B run, or ``None`` where wandb is not installed."""
    try:
        import wandb
    except ImportError:
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(mode="offline", dir=str(folder), project="wwmonitor-soak", reinit="create_new")


def _default_sinks(root: Path, use_wandb: bool) -> tuple[list[Any], Any]:
    """TensorBoard (with figures), CSV and -- where wandb imports and ``use_wandb`` -- W&B on an offline run."""
    from wwmonitor.sinks.csv import CSVSink
    from wwmonitor.sinks.tensorboard import TensorBoardSink
    from wwmonitor.sinks.wandb import WandbSink

    run = _wandb_run(root) if use_wandb else None
    sinks: list[Any] = [TensorBoardSink(root / "tb"), CSVSink(root / "csv")]
    if run is not None:
        sinks.append(WandbSink(run))
    return sinks, run


def soak(
    n: int = N_SNAPSHOTS,
    warmup: int = WARMUP,
    root: Optional[Path] = None,
    *,
    use_wandb: bool = True,
    esd_every_n_epochs: int = 5,
) -> dict[str, Any]:
    """Take ``n`` snapshots (one per training step, epoch = step) and return the resource figures and the store
    check.  ``esd_every_n_epochs``: how often the sinks get the ESD figures (the Monitor's default, 5).

    Longer than 60 lines on purpose: one straight measurement script (train, snapshot, sample, close, check),
    kept in one piece so the order of the measurements relative to ``flush``/``close`` stays visible."""
    import numpy as np
    import torch
    from torch import nn

    import wwmonitor

    if not 0 < warmup < n:
        raise ValueError(f"need 0 < warmup < n, got warmup={warmup}, n={n}")
    tmp = None
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="wwmonitor-soak-")
        root = Path(tmp.name)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
    sinks, run = _default_sinks(root, use_wandb)
    t0 = time.perf_counter()
    start, start_files = resources(), open_files()
    mon = wwmonitor.Monitor(
        model,
        root / "runs",
        run_name="soak",
        sinks=sinks,
        announce=False,
        esd_every_n_epochs=esd_every_n_epochs,
        policy="block",  # the soak checks that every one of its snapshots is stored exactly once
    )
    samples: list[dict[str, float]] = []
    for step in range(n):
        i = (step * 32) % 256
        loss = nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.snapshot(step=step, epoch=step)
        if step + 1 == warmup or (step + 1 > warmup and (step + 1 - warmup) % max(1, (n - warmup) // 4) == 0):
            mon.flush()
            samples.append({"step": float(step + 1), **resources()})
    mon.flush()
    end = resources()
    stats = dict(mon.stats)
    run_dir = mon.run_dir
    mon.close()
    if run is not None:
        run.finish()
    wall = time.perf_counter() - t0
    after_close, open_after = resources(), open_files()
    result = {
        "n": n,
        "warmup": warmup,
        "sinks": [type(s).__name__ for s in sinks],
        "start": start,
        "warm": samples[0],
        "samples": samples,
        "end": end,
        "after_close": after_close,
        "opened_not_closed": sorted((Counter(open_after) - Counter(start_files)).elements()),
        "wall_s": wall,
        **_store_check(run_dir, n),
        "stats": {k: v for k, v in stats.items() if isinstance(v, (int, float))},
        "csv_rows": _csv_steps(root / "csv"),
        "np_version": np.__version__,
    }
    if tmp is not None:
        tmp.cleanup()
    return result


def _store_check(run_dir: Path, n: int) -> dict[str, Any]:
    """What the store of the run at ``run_dir`` holds: stored and distinct steps, duplicated metric rows."""
    import wwmonitor

    stored = wwmonitor.load_run(run_dir)
    steps, m = stored.steps, stored.metrics
    return {
        "steps_stored": len(steps),
        "distinct_steps": len(set(steps)),
        "steps_expected": n,
        "all_steps_once": sorted(steps) == list(range(n)),
        "duplicate_metric_rows": int(m.duplicated(["step", "layer", "metric"]).sum()),
        "metric_rows": int(len(m)),
    }


def _csv_steps(folder: Path) -> int:
    """Distinct steps written by the CSV sink."""
    import csv

    files = list(folder.glob("*.csv"))
    if not files:
        return 0
    with open(files[0], newline="") as fh:
        return len({row.get("step") for row in csv.DictReader(fh)})


def measure(quick: bool = False) -> dict[str, Any]:
    return soak(60, 20) if quick else soak()


def render(r: dict[str, Any]) -> dict[str, str]:
    """The ``soak`` block: figures at warm-up and end, growth, store check."""
    w, e, c = r["warm"], r["end"], r["after_close"]
    once = f"every step 0..{r['n'] - 1} exactly once" if r["all_steps_once"] else "**steps missing or repeated**"
    lines = [
        f"{r['n']:,} snapshots (one per SGD step) of a 3-layer MLP (64-96-64-10), sinks: run store, "
        f"{', '.join(r['sinks'])}; warm-up = the first {r['warmup']} snapshots.",
        "",
        "| | at warm-up | at the end | growth | after `close()` |",
        "|---|---|---|---|---|",
        f"| resident memory | {w['rss_mib']:.1f} MiB | {e['rss_mib']:.1f} MiB | "
        f"{e['rss_mib'] - w['rss_mib']:+.1f} MiB | {c['rss_mib']:.1f} MiB |",
        f"| open file descriptors | {w['fds']:.0f} | {e['fds']:.0f} | {e['fds'] - w['fds']:+.0f} | {c['fds']:.0f} |",
        f"| OS threads | {w['threads']:.0f} | {e['threads']:.0f} | {e['threads'] - w['threads']:+.0f} | "
        f"{c['threads']:.0f} |",
        "",
        "Resident memory at each sample after warm-up (MiB): "
        + ", ".join(f"{s['rss_mib']:.1f} (step {s['step']:.0f})" for s in r["samples"])
        + ".",
        "",
        f"Store: {r['steps_stored']:,} steps stored, {r['distinct_steps']:,} distinct, "
        f"{once}; "
        f"{r['duplicate_metric_rows']} duplicated (step, layer, metric) rows out of {r['metric_rows']:,}. "
        f"CSV sink: {r['csv_rows']:,} distinct steps. Monitor counters: "
        + ", ".join(f"{k} {v:.4g}" for k, v in sorted(r["stats"].items()) if v)
        + f". Wall time {r['wall_s']:.1f} s.",
    ]
    return {"soak": "\n".join(lines)}


def main(argv: Optional[list[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    from benchmarks import docs_blocks

    load0 = docs_blocks.load_average()
    body = render(measure(quick="--quick" in args))["soak"]
    load1 = docs_blocks.load_average()
    print(body, flush=True)
    if "--write-docs" in args:
        cmd = "python -m benchmarks.bench_soak --write-docs" + (" --quick" if "--quick" in args else "")
        stamped = docs_blocks.stamp(cmd, load0, load1) + "\n\n" + body
        docs_blocks.write_block(docs_blocks.ROOT / DOC_BLOCKS["soak"], "soak", stamped)


if __name__ == "__main__":
    main()
