"""Compare several runs (``wwmonitor compare RUN_DIR...``), e.g. a batch-size sweep.

Each run contributes its *final* snapshot.  The swept parameter is read from
the runs' configs: given explicitly (``param="batch_size"``) or detected as
the config key whose value differs between runs (``seed`` and bookkeeping
keys derived from others are not candidates).  When the seed differs too it
becomes the *group*: figures show each seed and the mean ± sd over seeds,
and Spearman correlations are reported per seed.

Outputs (``write_comparison``): ``index.html`` with metrics against the
parameter per layer, a phase diagram (layer x run), an ESD grid of one
layer across the sweep, the Spearman table and the full table, plus
``comparison.csv``.
"""
from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

import numpy as np

from .html import fmt, figure, page, phase_badge, safe_name, save, select_layers, table

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..store import Run

__all__ = [
    "COMPARE_METRICS",
    "detect_param",
    "final_metrics_table",
    "spearman_by_group",
    "spearman_table_html",
    "write_comparison",
]

#: metrics shown against the swept parameter
COMPARE_METRICS: tuple[str, ...] = ("alpha", "mp_softrank", "stable_rank", "num_spikes")
#: extra columns kept in the comparison table
TABLE_EXTRA: tuple[str, ...] = ("D", "num_pl_spikes", "log_spectral_norm", "mp_sigma2", "lambda_plus", "rank_loss")
#: config keys that are never the swept parameter (derived or bookkeeping)
NOT_SWEPT: frozenset[str] = frozenset({"seed", "run_name", "run_id", "name", "steps_per_epoch", "created", "output",
                                       "out", "run_dir", "log_dir"})
#: preferred sweep keys when several differ (first match wins)
PREFERRED: tuple[str, ...] = ("batch_size", "lr", "learning_rate", "weight_decay", "dropout", "width", "depth")

PathLike = Union[str, Path]


def _load(runs: Sequence[Union[PathLike, "Run"]]) -> list["Run"]:
    from ..store import Run, load_run

    if not runs:
        raise ValueError("compare: give at least one run folder")
    out = []
    for r in runs:
        out.append(r if isinstance(r, Run) else load_run(r))
    return out


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else v


def detect_param(configs: Sequence[Mapping[str, Any]], param: Optional[str] = None,
                 group: Optional[str] = "auto") -> tuple[str, Optional[str]]:
    """Return ``(param, group)`` for a set of run configs.

    ``param`` given: it must be present in every config.  Otherwise the
    keys whose values differ between runs (excluding :data:`NOT_SWEPT`)
    are candidates; a :data:`PREFERRED` key wins, then numeric keys, then
    alphabetical order.  ``group="auto"`` picks ``"seed"`` when seeds
    differ; ``None`` disables grouping.
    """
    keys = set().union(*[set(c) for c in configs]) if configs else set()
    if param is not None:
        missing = [i for i, c in enumerate(configs) if param not in c]
        if missing:
            raise ValueError(f"compare: --param {param!r} is missing from the config of run(s) {missing}; "
                             f"config keys: {sorted(keys)}")
    else:
        differ = []
        for k in sorted(keys):
            if k in NOT_SWEPT:
                continue
            vals = {_hashable(c.get(k)) for c in configs}
            if len(vals) > 1 and all(k in c for c in configs):
                differ.append(k)
        if not differ:
            raise ValueError(
                "compare: the runs' configs do not differ in any key, so there is no swept parameter to compare "
                f"against (config keys: {sorted(keys)}); pass --param KEY"
            )
        pref = [k for k in PREFERRED if k in differ]
        numeric = [k for k in differ if all(isinstance(c.get(k), (int, float)) and not isinstance(c.get(k), bool)
                                            for c in configs)]
        param = pref[0] if pref else (numeric[0] if numeric else differ[0])
    if group == "auto":
        g = "seed"
        group = g if (g != param and all(g in c for c in configs)
                      and len({_hashable(c.get(g)) for c in configs}) > 1) else None
    elif group is not None and any(group not in c for c in configs):
        raise ValueError(f"compare: group key {group!r} is missing from some run configs")
    return param, group


def final_metrics_table(
    runs: Sequence[Union[PathLike, "Run"]],
    *,
    param: Optional[str] = None,
    group: Optional[str] = "auto",
    step: str = "last",
) -> "pd.DataFrame":
    """One row per (run, layer) with the metrics of the run's final snapshot.

    Columns: ``run``, ``path``, the parameter, the group (if any),
    ``layer``, ``phase``, ``status``, ``step``, ``epoch`` and every metric.
    The parameter and group names are stored in ``df.attrs["param"]`` and
    ``df.attrs["group"]``.
    """
    import pandas as pd

    loaded = _load(runs)
    param, group = detect_param([r.config for r in loaded], param, group)
    frames = []
    for r in loaded:
        if not r.steps:
            raise ValueError(f"compare: run {r.name!r} at {str(r.path)!r} has no analysed snapshots")
        wide = r.to_pandas()
        last = r.steps[-1] if step == "last" else int(step)
        w = wide[wide["step"] == last].copy()
        w.insert(0, "run", r.name)
        w.insert(1, "path", str(r.path))
        w.insert(2, param, r.config.get(param))
        if group is not None:
            w.insert(3, group, r.config.get(group))
        frames.append(w)
    df = pd.concat(frames, ignore_index=True)
    sort = [param] + ([group] if group else []) + ["run"]
    try:
        df = df.sort_values(sort, kind="stable", ignore_index=True)
    except TypeError:  # mixed types in the parameter: keep the given order
        pass
    df.attrs["param"], df.attrs["group"] = param, group
    return df


def spearman_by_group(
    df: "pd.DataFrame",
    *,
    param: str,
    group: Optional[str] = None,
    metrics: Sequence[str] = COMPARE_METRICS,
    layers: Optional[Sequence[str]] = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Spearman rank correlation of each metric with ``param``, per group and layer.

    Returns ``{group_value: {layer: {metric: rho}}}`` (``"all"`` as the only
    group key without grouping).  ``rho`` is NaN when fewer than 3 runs have
    the metric or either side is constant.
    """
    from scipy.stats import spearmanr

    lay = list(layers) if layers is not None else list(dict.fromkeys(df["layer"]))
    groups = [("all", df)] if group is None else [(str(g), d) for g, d in df.groupby(group, sort=True)]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for gname, d in groups:
        per: dict[str, dict[str, float]] = {}
        for L in lay:
            s = d[d["layer"] == L]
            vals: dict[str, float] = {}
            for m in metrics:
                if m not in s.columns:
                    continue
                t = s[[param, m]].dropna()
                x = np.asarray(t[param], dtype=float)
                y = np.asarray(t[m], dtype=float)
                if len(t) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
                    vals[m] = float("nan")
                else:
                    vals[m] = float(spearmanr(x, y).statistic)
            if any(math.isfinite(v) for v in vals.values()):
                per[L] = vals
        out[gname] = per
    return out


def spearman_table_html(rho: Mapping[str, Mapping[str, Mapping[str, float]]],
                        expected: Optional[Mapping[str, int]] = None, group: str = "seed") -> str:
    """HTML table of :func:`spearman_by_group` output; cells with the expected sign are green, others red."""
    metrics: list[str] = []
    for per in rho.values():
        for vals in per.values():
            for m in vals:
                if m not in metrics:
                    metrics.append(m)
    heads = [group, "layer"] + [m + (f" (expect {'+' if expected[m] > 0 else '−'})" if expected and m in expected else "")
                                for m in metrics]
    rows = []
    for g, per in rho.items():
        for L, vals in per.items():
            cells = []
            for m in metrics:
                v = vals.get(m, float("nan"))
                if v is None or not math.isfinite(v):
                    cells.append("–")
                    continue
                cls = ""
                if expected and m in expected:
                    cls = "good" if v * expected[m] > 0 else "bad"
                cells.append(f'<span class="{cls}">{v:+.2f}</span>')
            rows.append([escape(str(g)), escape(str(L))] + cells)
    return table(heads, rows, left=(0, 1))


def _run_label(row: Any, param: str, group: Optional[str]) -> str:
    v = row[param]
    lab = f"{v:g}" if isinstance(v, float) else str(v)
    if group:
        lab += f"·{row[group]}"
    return lab


def write_comparison(
    runs: Sequence[Union[PathLike, "Run"]],
    out_dir: PathLike,
    *,
    param: Optional[str] = None,
    group: Optional[str] = "auto",
    layers: Optional[Sequence[str]] = None,
    esd_layer: Optional[str] = None,
    metrics: Sequence[str] = COMPARE_METRICS,
    title: Optional[str] = None,
    notes_html: str = "",
    dpi: int = 90,
) -> Path:
    """Write the comparison report of ``runs`` to ``out_dir/index.html`` and return its path.

    ``notes_html`` (trusted HTML) is inserted after the summary; the demo
    uses it for its explanation.  ``esd_layer`` is the layer whose final
    ESD is drawn for every run (default: the layer with the most
    eigenvalues among those with a power-law fit).
    """
    from . import figures as F
    from .html import layer_fits

    loaded = _load(runs)
    df = final_metrics_table(loaded, param=param, group=group)
    param, group = df.attrs["param"], df.attrs["group"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    all_layers = list(dict.fromkeys(df["layer"]))
    lay = select_layers(layers, all_layers, missing=lambda u: f"compare: layers {u} not found")
    df = df[df["layer"].isin(lay)].reset_index(drop=True)
    df.to_csv(out / "comparison.csv", index=False)
    numeric_param = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                        for v in df[param])

    parts: list[str] = []
    parts.append('<nav><a href="#summary">Summary</a><a href="#findings">Findings</a><a href="#sweep">Metrics vs '
                 f'{escape(param)}</a><a href="#phase-diagram">Phase diagram</a><a href="#esds">ESDs</a>'
                 '<a href="#table">Table</a></nav>')
    parts.append('<h2 id="summary">Summary</h2>')
    runs_txt = ", ".join(sorted({str(v) for v in df[param]}, key=lambda s: (len(s), s)))
    parts.append(f"<p>{len(loaded)} runs, swept parameter <b>{escape(param)}</b> = {escape(runs_txt)}"
                 + (f", grouped by <b>{escape(group)}</b> ({df[group].nunique()} values)" if group else "")
                 + f"; layers: {escape(', '.join(lay))}. Each run contributes its final snapshot.</p>")
    if notes_html:
        parts.append(notes_html)
    elif numeric_param:
        rho = spearman_by_group(df, param=param, group=group, metrics=metrics, layers=lay)
        parts.append('<h2 id="findings">Rank correlation with ' + escape(param) + "</h2>")
        parts.append(spearman_table_html(rho, None, group or "group"))

    parts.append(f'<h2 id="sweep">Metrics against {escape(param)}</h2>')
    if numeric_param:
        fig = F.plot_sweep(df, param=param, metrics_to_plot=metrics, layers=lay, group=group)
        parts.append(figure(save(fig, out, "sweep.png", dpi),
                            f"Final-snapshot metrics per layer against {escape(param)}"
                            + (" (faint dots: each run; line: mean ± sd over " + escape(group) + ")" if group else "")
                            + ". Green band: 2 ≤ α ≤ 6."))
    else:
        parts.append(f"<p>{escape(param)} is not numeric; see the table below.</p>")

    parts.append('<h2 id="phase-diagram">Phase diagram</h2>')
    runs_order = list(dict.fromkeys(df["run"]))
    first = df.drop_duplicates("run").set_index("run")
    labels = [_run_label(first.loc[r], param, group) for r in runs_order]
    cells = {lab: {} for lab in labels}
    for r in df.itertuples(index=False):
        d = r._asdict()
        cells[labels[runs_order.index(d["run"])]][d["layer"]] = d.get("phase")
    fig = F.plot_phase_diagram(cells, run_labels=labels, layers=lay,
                               xlabel=param + (f" · {group}" if group else ""))
    parts.append(figure(save(fig, out, "phase_diagram.png", dpi),
                        "Phase of each layer at the end of each run (columns sorted by "
                        + escape(param) + (f", then {escape(group)}" if group else "") + ")."))

    # ESD grid of one layer across the sweep (first group only, to keep it readable)
    if esd_layer is None:
        cand = df.dropna(subset=["alpha"]) if "alpha" in df.columns else df
        if len(cand):
            esd_layer = max(cand["layer"].unique(), key=lambda L: float(df[df["layer"] == L]["num_evals"].max())
                            if "num_evals" in df.columns else 0.0)
    parts.append('<h2 id="esds">ESDs across the sweep</h2>')
    if esd_layer is not None and esd_layer in lay:
        sel = df[df["layer"] == esd_layer]
        if group:
            g0 = sorted(sel[group].unique())[0]
            sel = sel[sel[group] == g0]
        items = []
        by_name = {r.name: r for r in loaded}
        for row in sel.itertuples(index=False):
            d = row._asdict()
            run = by_name[d["run"]]
            try:
                ev, pl, mpf, _ = layer_fits(run, esd_layer, int(d["step"]))
            except KeyError:
                continue
            items.append((f"{param} = {_run_label(d, param, None)}", ev, pl, mpf, d.get("phase")))
        if items:
            fig = _esd_grid(items)
            name = save(fig, out, f"esd_grid_{safe_name(esd_layer)}.png", dpi)
            parts.append(figure(name, f"Final ESD of layer {escape(esd_layer)} in each run"
                                + (f" ({escape(group)} = {escape(str(g0))})" if group else "")
                                + ": log-log density, power-law fit (red) and MP bulk density (blue)."))
    else:
        parts.append("<p>No layer with a power-law fit to show.</p>")

    parts.append('<h2 id="table">Table</h2>')
    cols = [c for c in list(metrics) + list(TABLE_EXTRA) if c in df.columns]
    head = [param] + ([group] if group else []) + ["layer", "phase"] + cols + ["run"]
    rows = []
    for r in df.itertuples(index=False):
        d = r._asdict()
        rows.append([fmt(d[param])] + ([fmt(d[group])] if group else []) + [escape(str(d["layer"])), phase_badge(d.get("phase"))]
                    + [fmt(d.get(c)) for c in cols] + [escape(str(d["run"]))])
    parts.append(table(head, rows, left=(len(head) - 1, (2 if group else 1), (3 if group else 2))))
    parts.append('<p class="sub">Also saved as <a href="comparison.csv">comparison.csv</a>. Run folders: '
                 + escape(", ".join(sorted({str(r.path) for r in loaded}))) + "</p>")

    html = page(title or f"wwmonitor comparison: {param}", "\n".join(parts),
                subtitle=f"{len(loaded)} runs · swept {escape(param)}")
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index


def _esd_grid(items: Sequence[tuple[str, Any, Any, Any, Optional[str]]], ncols: int = 3) -> Any:
    """Small multiples: one log-log ESD panel (PL fit + MP density) per run."""
    from matplotlib.figure import Figure

    from . import figures as F

    n = len(items)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(5.3 * ncols, 3.9 * nrows), dpi=100, layout="constrained")
    axs = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, ev, pl, mpf, phase) in zip(axs, items):
        F.plot_esd(ev, fit=pl, mp=mpf, ax=ax, fit_powerlaw_if_missing=False,
                   title=f"{title}" + (f" — {phase}" if phase else ""))
    for ax in axs[n:]:
        ax.set_visible(False)
    return fig
