"""What a demo sweep measured: the trend of each metric with the batch size, as plain text and as the report's
findings section.  Every sentence about the Martin & Mahoney trend is computed from the run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import DEMO_LAYERS, TREND_METRICS, DemoConfig


def format_spearman(rho: dict[str, dict[str, dict[str, float]]]) -> str:
    """Plain-text table of Spearman correlations (metric vs batch size) per seed and layer."""
    lines = ["Spearman correlation of the final metric with batch size (expected sign in brackets):"]
    metrics = list(TREND_METRICS)
    head = "  seed  layer   " + "  ".join(f"{m}({'+' if TREND_METRICS[m] > 0 else '-'})".rjust(15) for m in metrics)
    lines.append(head)
    for seed, per_layer in rho.items():
        for layer, vals in per_layer.items():
            cells = "  ".join(
                (f"{vals[m]:+.2f}" if m in vals and vals[m] is not None and math.isfinite(vals[m]) else "n/a").rjust(15)
                for m in metrics
            )
            lines.append(f"  {str(seed):>4}  {layer:<6}  {cells}")
    return "\n".join(lines)


def _val_ranking(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """The Spearman correlation of each spectral summary with the runs' validation accuracy, per seed and over
    all runs (records of :func:`wwmonitor.report.compare.ranking_spearman`)."""
    from ..report.compare import ranking_frame, ranking_spearman

    frame = ranking_frame(run_dirs, val_metric="val_acc", group="seed")
    return [{str(k): v for k, v in rec.items()} for rec in ranking_spearman(frame).to_dict(orient="records")]


def format_val_ranking(ranking: Sequence[dict[str, Any]]) -> str:
    """Plain-text table of :func:`_val_ranking`: Spearman of each summary with val_acc, per seed group."""
    groups = list(dict.fromkeys(r["group"] for r in ranking))
    metrics = list(dict.fromkeys(r["metric"] for r in ranking))
    by = {(r["group"], r["metric"]): r["rho"] for r in ranking}
    lines = [
        "Spearman correlation of each model-level summary with val_acc (lower summary = better model: expect -):",
        "  " + "metric".ljust(24) + "".join(g.rjust(12) for g in groups),
    ]
    for m in metrics:
        cells = "".join(
            (f"{by[(g, m)]:+.2f}" if by.get((g, m)) is not None and math.isfinite(by[(g, m)]) else "n/a").rjust(12)
            for g in groups
        )
        lines.append("  " + m.ljust(24) + cells)
    return "\n".join(lines)


#: ``|rho|`` from which a rank correlation with the batch size counts as a trend (present, or reversed when its
#: sign is the opposite of the expected one); below it the trend is reported absent
TREND_RHO = 0.5
#: how the metrics are named in the prose
_METRIC_WORDS = {
    "alpha": "the power-law exponent &alpha;",
    "mp_softrank": "the MP soft rank",
    "stable_rank": "the stable rank",
    "num_spikes": "the number of spikes",
}


def measure_trends(
    table: Any, *, layers: Sequence[str] = DEMO_LAYERS, metrics: dict[str, int] = TREND_METRICS
) -> dict[str, dict[str, Any]]:
    """The trend of each metric with the batch size, as this run measured it.

    ``table``: :func:`wwmonitor.report.compare.final_metrics_table` of the sweep (columns ``batch_size``,
    ``layer`` and the metrics).  For each metric the final values of ``layers`` are averaged over the layers and
    seeds per batch size; ``rho`` is the Spearman correlation of that mean with the batch size over the ``n``
    batch sizes that have one, ``first``/``last`` the mean at the smallest and largest of them.  ``verdict``:
    ``"present"`` when ``rho`` has the expected sign (``metrics[m]``) and ``|rho| >= TREND_RHO``,
    ``"reversed"`` when it has the other sign with that size, ``"absent"`` otherwise, ``"not measurable"``
    with fewer than 3 batch sizes or a constant mean.
    """
    from scipy.stats import spearmanr

    rows = table[table["layer"].isin(list(layers))] if len(table) else table
    out: dict[str, dict[str, Any]] = {}
    for m, sign in metrics.items():
        means = rows.groupby("batch_size")[m].mean().dropna() if m in rows.columns and len(rows) else None
        rec: dict[str, Any] = {"expected": sign, "n": 0, "rho": float("nan"), "verdict": "not measurable"}
        if means is not None and len(means):
            x, y = np.asarray(means.index, dtype=float), np.asarray(means.values, dtype=float)
            rec.update(n=len(x), first=float(y[0]), last=float(y[-1]), batch_first=int(x[0]), batch_last=int(x[-1]))
            if len(x) >= 3 and np.ptp(y) > 0:
                rho = float(spearmanr(x, y).statistic)
                rec["rho"] = rho
                rec["verdict"] = (
                    "present" if rho * sign >= TREND_RHO else "reversed" if -rho * sign >= TREND_RHO else "absent"
                )
        out[m] = rec
    return out


def _verdict(signed_rho: float) -> str:
    """``rho`` times the expected sign -> present / reversed / absent (see :data:`TREND_RHO`)."""
    if signed_rho >= TREND_RHO:
        return "present"
    return "reversed" if -signed_rho >= TREND_RHO else "absent"


def _trend_sentence(metric: str, t: dict[str, Any], html: bool) -> str:
    """One sentence: what the run measured for ``metric`` and what that says about the expected trend."""
    name = _METRIC_WORDS.get(metric, metric) if html else metric
    if t["verdict"] == "not measurable":
        return f"{name}: not measurable in this run ({t['n']} batch size(s) with a value, or a constant mean)."
    rho = f"Spearman {'&rho;' if html else 'rho'} = {t['rho']:+.2f} over {t['n']} batch sizes"
    span = f"mean {t['first']:.3g} at batch {t['batch_first']}, {t['last']:.3g} at batch {t['batch_last']}"
    want = "rise" if t["expected"] > 0 else "fall"
    verdict = {
        "present": f"the expected trend ({want} with the batch size) is present in this run",
        "reversed": f"the expected trend ({want} with the batch size) is reversed in this run",
        "absent": f"no trend in this run (|rho| < {TREND_RHO}; expected: {want} with the batch size)",
    }[t["verdict"]]
    return f"{name}: {verdict} ({rho}; {span})."


def format_trends(trends: dict[str, dict[str, Any]]) -> str:
    """Plain-text lines of :func:`measure_trends`, one per metric."""
    layers = ", ".join(DEMO_LAYERS)
    lines = [f"Trend with batch size, this run ({layers}, mean over layers and seeds):"]
    lines += [f"  {_trend_sentence(m, t, html=False)}" for m, t in trends.items()]
    return "\n".join(lines)


def _headline(trends: dict[str, dict[str, Any]]) -> str:
    """The report's first finding, from the measured alpha trend (the Martin & Mahoney result)."""
    a = trends.get("alpha", {"verdict": "not measurable"})
    present = [m for m, t in trends.items() if t["verdict"] == "present"]
    if a["verdict"] == "present":
        return (
            "<b>This run reproduces the finding of Martin &amp; Mahoney</b> (smaller batches, heavier-tailed and more "
            f"correlated layers): the final &alpha; rises with the batch size, and {len(present)} of "
            f"{len(trends)} trend metrics move the expected way."
        )
    return (
        "<b>This run does not show the finding of Martin &amp; Mahoney</b> in &alpha; "
        f"({a['verdict']}); {len(present)} of {len(trends)} trend metrics move the expected way. Short or small "
        "sweeps (few epochs, few batch sizes) often show no trend."
    )


def _accuracy_rows(cfg: DemoConfig, results: Sequence[dict[str, Any]]) -> str:
    """HTML rows: batch size, lr, SGD steps, mean train and val accuracy."""
    by_bs: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_bs.setdefault(r["batch_size"], []).append(r)
    rows = []
    for bs in sorted(by_bs):
        rs = by_bs[bs]
        train = np.mean([r["train_acc"] for r in rs])
        val = np.mean([r["val_acc"] for r in rs])
        rows.append(
            f"<tr><td>{bs}</td><td>{cfg.lr_for(bs):.4g}</td><td>{rs[0].get('steps', '–')}</td>"
            f"<td>{train:.3f}</td><td>{val:.3f}</td></tr>"
        )
    return "".join(rows)


def demo_notes_html(
    cfg: DemoConfig, results: Sequence[dict[str, Any]], rho: dict[str, Any], trends: dict[str, dict[str, Any]]
) -> str:
    """The demo's findings section of the report (HTML fragment): what this run measured, then the background."""
    from html import escape

    from ..report.compare import spearman_table_html

    lr_txt = (
        f"a constant learning rate of {cfg.lr:g}"
        if cfg.lr_scaling == "constant"
        else f"the learning rate scaled linearly with the batch size (lr = {cfg.lr:g} · batch / {cfg.lr_ref_batch})"
    )
    measured = "".join(f"<li>{_trend_sentence(m, t, html=True)}</li>" for m, t in trends.items())
    return f"""
<h2 id="findings">What this sweep measured</h2>
<p>MicroAlexNet was trained on sklearn's digits with plain SGD at {escape(lr_txt)}, no momentum and no weight
decay, for {cfg.epochs} epochs at each batch size, with seeds {escape(str(list(cfg.seeds)))}. The table and the figures
below compare the layers' spectra at the end of training.</p>
<p>{_headline(trends)}</p>
<p>Each final metric of {escape(", ".join(DEMO_LAYERS))}, averaged over these layers and the seeds per batch size,
against the batch size (a trend counts from |&rho;| &ge; {TREND_RHO}):</p>
<ul>{measured}</ul>
<p>Per seed and layer:</p>
{spearman_table_html(rho, TREND_METRICS)}
<table class="data"><thead><tr><th>batch size</th><th>lr</th><th>SGD steps</th><th>train acc (mean)</th>
<th>val acc (mean)</th></tr></thead><tbody>{_accuracy_rows(cfg, results)}</tbody></table>
<p><b>Background (not measured by this run).</b> Martin &amp; Mahoney report that smaller batches give more strongly
correlated, heavier-tailed weight matrices: a lower &alpha;, a lower MP soft rank and stable rank, and more spikes
above the Marchenko-Pastur bulk. At a constant learning rate the size of the SGD gradient noise (its
"temperature") scales like
<i>lr / batch size</i>, so the effect is expected to follow lr/batch rather than the batch size as such
(<code>wwmonitor demo --lr-scaling linear</code> keeps that ratio fixed; docs/demo-results.md records a run where
the trend then largely went away for batch sizes 8 to 64). The largest batches also take far fewer steps in the
same number of epochs (see the table), so part of their random-like look is less training.</p>
<p><b>Which metrics to trust.</b> The stable rank (&Sigma;&lambda;/&lambda;<sub>max</sub>) and the MP soft rank
need no tail fit. The power-law &alpha; is unreliable for near-random layers (a Marchenko-Pastur bulk has no
power-law tail, so &alpha; is large and noisy) and for small matrices (FC2 has M = 192 eigenvalues). The
convolution layer (64x1 slices) and FC3 (10 eigenvalues) are too small for a spectral fit and are not used for the
trend.</p>
"""
