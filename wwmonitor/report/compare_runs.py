"""The sections of a comparison of runs side by side (summary, curves, final values, phases per run)."""

from __future__ import annotations

import json
from html import escape
from typing import TYPE_CHECKING, Any, Iterable, Optional

from ..phases import PHASES
from .compare_context import MAX_CURVE_LAYERS, RUN_METRICS, _Comparison, _when
from .compare_phases import _NOWRAP
from .history import phase_changes
from .pagekit import fmt, is_missing, phase_badge, render_figure, table
from .sweep import _config_differences

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


# --- runs side by side (no swept parameter) ----------------------------------------------------------------


def _section_runs_summary(cmp: _Comparison) -> str:
    """Which runs, why they are compared side by side, how their configs differ, and each run's snapshots."""
    configs = [r.config for r in cmp.runs]
    diff = _config_differences(configs)
    if cmp.forced_by_run:
        why = "compared side by side by run name, as asked"
    elif not any(configs):
        why = "no run has a config, so there is no swept parameter: they are compared side by side by run name"
    elif diff:
        why = (
            f"their configs differ only in {', '.join(diff)}, which is not a swept parameter, so they are "
            "compared side by side by run name"
        )
    else:
        why = "their configs are identical, so there is no swept parameter: they are compared side by side by run name"
    html = (
        f"<p>{len(cmp.runs)} runs; {escape(why)}. Layers: {escape(', '.join(cmp.layers))}. The curves show "
        "every snapshot, the tables each run's final snapshot.</p>"
    )
    rows = []
    for name, r in zip(cmp.names, cmp.runs):
        first, last = r.snapshots.iloc[0], r.snapshots.iloc[-1]
        rows.append(
            [
                escape(name),
                fmt(len(r.steps)),
                escape(_when(first["step"], first["epoch"])),
                escape(_when(last["step"], last["epoch"])),
            ]
            + [escape(json.dumps(r.config[k], default=str)) if k in r.config else "–" for k in diff]
            + [f"<code>{escape(str(r.path))}</code>"]
        )
    html += table(["run", "snapshots", "first", "last", *diff, "folder"], rows, left=(0, 2, 3, 4 + len(diff)))
    if configs[0] and not diff:
        items = ", ".join(f"{k} = {json.dumps(v, default=str)}" for k, v in sorted(configs[0].items()))
        items = items if len(items) <= 600 else items[:600] + " …"
        html += f'<p class="sub">Config of every run: {escape(items)}</p>'
    return html


def _section_run_curves(cmp: _Comparison) -> str:
    """Two figures against epoch (or step), one line per run: the means over layers, and each layer's metrics."""
    from . import figures as F

    frame = _curve_frame(cmp)
    if not len(frame):
        return "<p>No metrics recorded.</p>"
    x, means = cmp.x_axis, _layer_means(frame)
    cap = (
        f"The mean over the compared layers of each metric at each snapshot, one line per run, against the {x}; "
        "a layer without a value (e.g. no power-law fit) is left out of that mean. Green band: 2 ≤ α ≤ 6."
    )
    html = render_figure(
        cmp.problems,
        "the curves of the means over layers",
        lambda: F.plot_run_curves(means, metrics_to_plot=RUN_METRICS, x=x, runs=cmp.names, prefix="mean "),
        cmp.out,
        "curves.png",
        cmp.dpi,
        cap,
    )
    shown = cmp.layers[:MAX_CURVE_LAYERS]
    cap = (
        f"Each layer's metrics at each snapshot, one line per run (rows: layers), against the {x}"
        + (
            f"; the first {len(shown)} of {len(cmp.layers)} layers (choose others with <code>--layers</code>)"
            if len(shown) < len(cmp.layers)
            else ""
        )
        + "."
    )
    html += render_figure(
        cmp.problems,
        "the per-layer curves",
        lambda: F.plot_run_curves(frame, metrics_to_plot=cmp.metrics, x=x, runs=cmp.names, layers=shown),
        cmp.out,
        "curves_layers.png",
        cmp.dpi,
        cap,
    )
    return html


def _curve_frame(cmp: _Comparison) -> "pd.DataFrame":
    """The runs' per-layer metrics at every snapshot (compared layers and metrics), long, with a ``run`` column."""
    import pandas as pd

    wanted = set(RUN_METRICS) | set(cmp.metrics)
    frames = [
        r.metrics[r.metrics["layer"].isin(cmp.layers) & r.metrics["metric"].isin(wanted)].assign(run=name)
        for name, r in zip(cmp.names, cmp.runs)
    ]
    return pd.concat(frames, ignore_index=True)


def _layer_means(frame: "pd.DataFrame") -> "pd.DataFrame":
    """The mean over layers of each metric at each snapshot of each run (layers without a value left out)."""
    g = frame.groupby(["run", "step", "metric"], sort=False)
    return g.agg(value=("value", "mean"), epoch=("epoch", "first")).reset_index()


def _section_run_finals(cmp: _Comparison) -> str:
    """One row per run: its final snapshot, the means over layers, its phases counted, phase changes and alerts."""
    changes = phase_changes(cmp.history)
    cols = [m for m in RUN_METRICS if m in cmp.df.columns]
    rows = []
    for name, r in zip(cmp.names, cmp.runs):
        d = cmp.df[cmp.df["run"] == name]
        when = _when(d["step"].iloc[0], d["epoch"].iloc[0]) if len(d) else "–"
        fitted = f"{int(d['alpha'].notna().sum())} of {len(d)}" if "alpha" in d.columns else "–"
        rows.append(
            [escape(name), escape(when)]
            + [fmt(d[c].mean()) for c in cols]
            + [fitted, _phase_counts_html(d["phase"]), fmt(int((changes["run"] == name).sum())), fmt(len(r.alerts))]
        )
    head = (
        ["run", "final snapshot"]
        + [f"mean {c}" for c in cols]
        + ["layers with α", "final phases", "phase changes", "alerts"]
    )
    return table(head, rows, left=(0, 1, len(head) - 3)) + (
        '<p class="sub">Means over the compared layers at each run\'s final snapshot; a layer without a value (no '
        "power-law fit: fewer than 50 eigenvalues or a failed fit) is left out of that mean. Final phases: how many "
        "layers are in each phase. Phase changes and alerts are counted over the whole run.</p>"
    )


def _phase_counts_html(phases: Iterable[Any]) -> str:
    """Badges with the number of layers in each phase, in the order of the 5+1 phases (``–``: no phase)."""
    counts: dict[Optional[str], int] = {}
    for p in phases:
        key = None if is_missing(p) or not p else str(p)
        counts[key] = counts.get(key, 0) + 1
    order = (
        [p for p in PHASES if p in counts]
        + [p for p in counts if p is not None and p not in PHASES]
        + ([None] if None in counts else [])
    )
    return " ".join(f"{_NOWRAP}{counts[p]}× {phase_badge(p)}</span>" for p in order) or "–"


def _section_run_phases(cmp: _Comparison) -> str:
    """A table: one row per layer, one column per run, each cell the layer's phase at that run's final snapshot."""
    final = {(d["run"], d["layer"]): d.get("phase") for d in cmp.df.to_dict("records")}
    rows = []
    for L in cmp.layers:
        rows.append(
            [escape(L)]
            + [phase_badge(final[(n, L)]) if (n, L) in final else "<small>not in run</small>" for n in cmp.names]
        )
    return table(["layer", *cmp.names], rows, left=tuple(range(len(cmp.names) + 1))) + (
        "<p class=\"sub\">The phase of each layer at each run's final snapshot (Martin &amp; Mahoney's 5+1 phases); "
        'how each layer got there is under <a href="#phase-changes">Phase changes</a>.</p>'
    )
