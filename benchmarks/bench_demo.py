"""The demo's batch-size sweep (``wwmonitor demo`` defaults), written into docs/demo-results.md.

``measure()`` runs :func:`wwmonitor.demo.run_demo` with its defaults (9 batch sizes x 3 seeds, 20 epochs; several
minutes) in a temporary folder; ``render()`` turns the run's ``summary.json`` into the ``demo`` block: what the
sweep measured about the Martin & Mahoney trend (:func:`wwmonitor.demo.measure_trends`, computed on this run, and
saying so when a trend is absent), the final metrics of FC1 and FC2 per batch size and seed (mean ± sd over the
seeds), and the accuracies.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from pathlib import Path

#: block name -> Markdown file this benchmark writes with ``python -m benchmarks --write-docs``
DOC_BLOCKS = {"demo": "docs/demo-results.md"}
#: the metrics tabulated per layer, with their number format
METRICS = {"alpha": "{:.2f}", "stable_rank": "{:.1f}", "mp_softrank": "{:.3f}", "num_spikes": "{:.0f}"}


def measure(quick: bool = False) -> dict:
    """The demo's ``summary.json`` (``quick``: 3 batch sizes, 1 seed, 2 epochs: a smoke run of the pipeline)."""
    from wwmonitor.demo import DemoConfig, run_demo

    with tempfile.TemporaryDirectory(prefix="wwmonitor-demo-") as tmp:
        kw = {"batch_sizes": (64, 256, 512), "seeds": (0,), "epochs": 2, "workers": 1} if quick else {}
        cfg = DemoConfig(out=tmp, progress=False, report=False, **kw)
        run_demo(cfg, echo=lambda s: None)
        return json.loads((Path(tmp) / "summary.json").read_text())


def _cell(values: list[float], fmt: str) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return fmt.format(vals[0])
    return f"{fmt.format(statistics.mean(vals))} ± {fmt.format(statistics.stdev(vals))}"


def _metric_table(rows: list[dict], layer: str, metric: str, seeds: list) -> list[str]:
    """Markdown: one row per batch size, one column per seed, then mean ± sd."""
    fmt = METRICS[metric]
    out = [
        f"**{layer}: {metric}**",
        "",
        "| batch size | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
        "|---:|" + "---:|" * (len(seeds) + 1),
    ]
    for bs in sorted({r["batch_size"] for r in rows}):
        by_seed = {r["seed"]: r.get(metric) for r in rows if r["batch_size"] == bs and r["layer"] == layer}
        cells = [_cell([by_seed.get(s)], fmt) for s in seeds]
        out.append(f"| {bs} | " + " | ".join(cells) + f" | {_cell(list(by_seed.values()), fmt)} |")
    return out + [""]


def render(summary: dict) -> dict[str, str]:
    """The ``demo`` block from a demo run's ``summary.json``."""
    from wwmonitor.demo import DEMO_LAYERS, format_trends

    cfg, rows = summary["config"], summary["final_metrics"]
    seeds = list(cfg["seeds"])
    out = [
        f"Run: batch sizes {cfg['batch_sizes']} x seeds {seeds}, {cfg['epochs']} epochs, lr {cfg['lr']:g} "
        f"({cfg['lr_scaling']}), {summary['seconds']:.0f} s wall on {cfg['workers']} worker(s).",
        "",
        "What this run measured (Spearman of the mean final metric over "
        f"{', '.join(DEMO_LAYERS)} and the seeds with the batch size):",
        "",
        "```text",
        format_trends(summary["trends"]),
        "```",
        "",
    ]
    for layer in DEMO_LAYERS:
        for metric in METRICS:
            out += _metric_table(rows, layer, metric, seeds)
    out += [
        "**Accuracy (mean over seeds)**",
        "",
        "| batch size | SGD steps | train acc | val acc |",
        "|---:|---:|---:|---:|",
    ]
    for bs in sorted({r["batch_size"] for r in summary["runs"]}):
        rs = [r for r in summary["runs"] if r["batch_size"] == bs]
        train = statistics.mean(r["train_acc"] for r in rs)
        val = statistics.mean(r["val_acc"] for r in rs)
        out.append(f"| {bs} | {rs[0]['steps']} | {train:.3f} | {val:.3f} |")
    return {"demo": "\n".join(out)}


def main() -> None:
    print(render(measure())["demo"], flush=True)


if __name__ == "__main__":
    main()
