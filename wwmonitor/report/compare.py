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
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

import numpy as np

from .html import (OutputError, Problems, Section, fmt, image_stem, is_missing, nav, page, phase_badge,
                   prepare_out_dir, render_figure, render_section, select_layers, table, write_text)

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
    """Each run as a :class:`~wwmonitor.store.Run` (folders are loaded; their errors name the file)."""
    from ..store import Run, load_run

    if not runs:
        raise ValueError("compare: give at least one run folder")
    out = []
    for r in runs:
        out.append(r if isinstance(r, Run) else load_run(r))
    return out


def _hashable(v: Any) -> Any:
    """A config value usable in a set (dicts and lists as canonical JSON)."""
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
    ``df.attrs["group"]``; ``df.attrs["order_note"]`` says why the rows are
    not sorted by the parameter when they cannot be (mixed value types).
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
    order_note = ""
    try:
        df = df.sort_values(sort, kind="stable", ignore_index=True)
    except TypeError as e:  # mixed types in the parameter: keep the given order, and say so
        types = sorted({type(v).__name__ for v in df[param]})
        order_note = (f"the values of {param!r} have mixed types ({', '.join(types)}) and cannot be sorted ({e}); "
                      "the runs are shown in the order given")
    df.attrs["param"], df.attrs["group"], df.attrs["order_note"] = param, group, order_note
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
    """A run's column label: its parameter value, and ``·group`` when grouped."""
    v = row[param]
    lab = f"{v:g}" if isinstance(v, float) else str(v)
    if group:
        lab += f"·{row[group]}"
    return lab


@dataclass
class _Comparison:
    """Everything the sections of the comparison page share."""

    runs: list["Run"]
    df: "pd.DataFrame"
    param: str
    group: Optional[str]
    layers: list[str]
    esd_layer: Optional[str]
    metrics: Sequence[str]
    out: Path
    dpi: int
    notes_html: str = ""
    problems: Problems = field(default_factory=Problems)

    @property
    def numeric_param(self) -> bool:
        """Whether every value of the swept parameter is a number (then it is plotted and correlated)."""
        return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                   for v in self.df[self.param])


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
    problems: Optional[list[str]] = None,
) -> Path:
    """Write the comparison report of ``runs`` to ``out_dir/index.html`` and return its path.

    ``notes_html`` (trusted HTML) is inserted after the summary; the demo
    uses it for its explanation.  ``esd_layer`` is the layer whose final
    ESD is drawn for every run (default: the layer with the most
    eigenvalues among those with a power-law fit).  ``problems`` receives
    one line per figure or section that could not be drawn (the page lists
    them at the top, and shows each as a note where it belongs).

    Raises ``FileNotFoundError`` / ``ValueError`` for runs that cannot be
    read or compared and for unknown layers, and
    :class:`~wwmonitor.report.html.OutputError` (a ``ValueError``) naming
    the path when the output cannot be written.
    """
    cmp = _open_comparison(runs, out_dir, param=param, group=group, layers=layers, esd_layer=esd_layer,
                           metrics=metrics, dpi=dpi, notes_html=notes_html)
    sections = _sections(cmp)
    bodies = [render_section(cmp, section) for section in sections]
    n_problems = len(cmp.problems)
    html = page(title or f"wwmonitor comparison: {cmp.param}",
                "\n".join([nav(sections), cmp.problems.summary_html(), *bodies]),
                subtitle=f"{len(cmp.runs)} runs · swept {escape(cmp.param)}"
                + (f" · {n_problems} problem{'s' if n_problems != 1 else ''}" if n_problems else ""))
    if problems is not None:
        problems.extend(cmp.problems.items)
    return write_text(cmp.out / "index.html", html)


def _open_comparison(runs: Sequence[Union[PathLike, "Run"]], out_dir: PathLike, *, param: Optional[str],
                     group: Optional[str], layers: Optional[Sequence[str]], esd_layer: Optional[str],
                     metrics: Sequence[str], dpi: int, notes_html: str) -> _Comparison:
    """Load the runs, build the final-snapshot table, check the layers, then create the output folder and the CSV."""
    loaded = _load(runs)
    df = final_metrics_table(loaded, param=param, group=group)
    param, group = df.attrs["param"], df.attrs["group"]
    lay = select_layers(layers, list(dict.fromkeys(df["layer"])), missing=lambda u: f"compare: layers {u} not found")
    if esd_layer is not None and esd_layer not in lay:
        raise ValueError(f"compare: --esd-layer {esd_layer!r} is not among the compared layers {lay}")
    df = df[df["layer"].isin(lay)].reset_index(drop=True)
    out = prepare_out_dir(out_dir, "comparison")
    csv = out / "comparison.csv"
    try:
        df.to_csv(csv, index=False)
    except OSError as e:
        raise OutputError(f"cannot write {str(csv)!r}: {e.strerror or e}") from e
    return _Comparison(runs=loaded, df=df, param=param, group=group, layers=lay,
                       esd_layer=esd_layer if esd_layer is not None else _default_esd_layer(df),
                       metrics=metrics, out=out, dpi=dpi, notes_html=notes_html)


def _default_esd_layer(df: "pd.DataFrame") -> Optional[str]:
    """The layer with the most eigenvalues among those with a power-law fit in some run (``None``: no fit at all)."""
    cand = df.dropna(subset=["alpha"]) if "alpha" in df.columns else df
    if not len(cand):
        return None
    if "num_evals" not in df.columns:
        return str(cand["layer"].iloc[0])
    return max(cand["layer"].unique(), key=lambda L: float(df[df["layer"] == L]["num_evals"].max()))


def _sections(cmp: _Comparison) -> list[Section]:
    """The comparison page's sections in page order."""
    p = escape(cmp.param)
    out: list[Section] = [("summary", "Summary", "Summary", _section_summary)]
    if cmp.notes_html:
        out.append(("findings", "Findings", None, lambda c: c.notes_html))
    elif cmp.numeric_param:
        out.append(("findings", "Findings", f"Rank correlation with {p}", _section_findings))
    out += [("sweep", f"Metrics vs {cmp.param}", f"Metrics against {p}", _section_sweep),
            ("phase-diagram", "Phase diagram", "Phase diagram", _section_phase_diagram),
            ("esds", "ESDs", "ESDs across the sweep", _section_esds),
            ("table", "Table", "Table", _section_table)]
    return out


# --- the sections (each returns the HTML under its heading) -------------------------------------------------

def _section_summary(cmp: _Comparison) -> str:
    """How many runs, the swept parameter and its values, the grouping, the layers."""
    df, param, group = cmp.df, cmp.param, cmp.group
    values = ", ".join(sorted({str(v) for v in df[param]}, key=lambda s: (len(s), s)))
    html = (f"<p>{len(cmp.runs)} runs, swept parameter <b>{escape(param)}</b> = {escape(values)}"
            + (f", grouped by <b>{escape(group)}</b> ({df[group].nunique()} values)" if group else "")
            + f"; layers: {escape(', '.join(cmp.layers))}. Each run contributes its final snapshot.</p>")
    note = df.attrs.get("order_note")
    if note:
        html += f'<p class="note">Note: {escape(note)}.</p>'
    return html


def _section_findings(cmp: _Comparison) -> str:
    """The Spearman rank correlation of each metric with the parameter, per group and layer."""
    rho = spearman_by_group(cmp.df, param=cmp.param, group=cmp.group, metrics=cmp.metrics, layers=cmp.layers)
    return spearman_table_html(rho, None, cmp.group or "group")


def _section_sweep(cmp: _Comparison) -> str:
    """One figure: each metric against the parameter, per layer (mean ± sd over the groups)."""
    from . import figures as F

    param, group = cmp.param, cmp.group
    if not cmp.numeric_param:
        return f"<p>{escape(param)} is not numeric; see the table below.</p>"
    cap = (f"Final-snapshot metrics per layer against {escape(param)}"
           + (" (faint dots: each run; line: mean ± sd over " + escape(group) + ")" if group else "")
           + ". Green band: 2 ≤ α ≤ 6.")
    build = lambda: F.plot_sweep(cmp.df, param=param, metrics_to_plot=cmp.metrics, layers=cmp.layers,  # noqa: E731
                                 group=group)
    return render_figure(cmp.problems, f"the metrics against {param}", build, cmp.out, "sweep.png", cmp.dpi, cap)


def _section_phase_diagram(cmp: _Comparison) -> str:
    """One figure: layers x runs, coloured by each run's final phase."""
    from . import figures as F

    df, param, group = cmp.df, cmp.param, cmp.group
    runs_order = list(dict.fromkeys(df["run"]))
    first = df.drop_duplicates("run").set_index("run")
    labels = [_run_label(first.loc[r], param, group) for r in runs_order]
    cells: dict[str, dict[str, Any]] = {lab: {} for lab in labels}
    for r in df.itertuples(index=False):
        d = r._asdict()
        cells[labels[runs_order.index(d["run"])]][d["layer"]] = d.get("phase")
    build = lambda: F.plot_phase_diagram(cells, run_labels=labels, layers=cmp.layers,  # noqa: E731
                                         xlabel=param + (f" · {group}" if group else ""))
    cap = ("Phase of each layer at the end of each run (columns sorted by " + escape(param)
           + (f", then {escape(group)}" if group else "") + ").")
    return render_figure(cmp.problems, "the phase diagram", build, cmp.out, "phase_diagram.png", cmp.dpi, cap)


def _section_esds(cmp: _Comparison) -> str:
    """One figure: the final ESD of one layer in every run (first group only, to keep it readable)."""
    if cmp.esd_layer is None:
        return "<p>No layer with a power-law fit to show.</p>"
    layer, group = cmp.esd_layer, cmp.group
    sel = cmp.df[cmp.df["layer"] == layer]
    g0 = None
    if group:
        g0 = sorted(sel[group].unique())[0]
        sel = sel[sel[group] == g0]
    items, notes = _esd_items(cmp, sel)
    if items:
        cap = (f"Final ESD of layer {escape(layer)} in each run"
               + (f" ({escape(group)} = {escape(str(g0))})" if group else "")
               + ": log-log density, power-law fit (red) and MP bulk density (blue).")
        notes.append(render_figure(cmp.problems, f"the ESD grid of {layer}", lambda: _esd_grid(items), cmp.out,
                                   f"esd_grid_{image_stem(layer)}.png", cmp.dpi, cap))
    return "\n".join(notes)


#: one panel of the ESD grid: (title, eigenvalues, power-law fit, MP fit, phase)
EsdItem = tuple[str, Any, Any, Any, Optional[str]]


def _esd_items(cmp: _Comparison, sel: "pd.DataFrame") -> tuple[list[EsdItem], list[str]]:
    """The ESD panel of each selected run, and a counted note for each run whose ESD cannot be read."""
    from .html import layer_fits

    by_name = {r.name: r for r in cmp.runs}
    items, notes = [], []
    for row in sel.itertuples(index=False):
        d = row._asdict()
        label = f"{cmp.param} = {_run_label(d, cmp.param, None)}"
        try:
            f = layer_fits(by_name[d["run"]], cmp.esd_layer, int(d["step"]))
        except Exception as e:  # noqa: BLE001 - a missing or unreadable ESD is shown and counted
            notes.append(cmp.problems.note(f"the final ESD of {cmp.esd_layer} in run {d['run']} ({label})", e))
            continue
        items.append((label, f.evals, f.pl, f.mp, d.get("phase")))
    return items, notes


def _section_table(cmp: _Comparison) -> str:
    """Every run and layer with its metrics (also written as ``comparison.csv``)."""
    df, param, group = cmp.df, cmp.param, cmp.group
    cols = [c for c in list(cmp.metrics) + list(TABLE_EXTRA) if c in df.columns]
    head = [param] + ([group] if group else []) + ["layer", "phase"] + cols + ["run"]
    rows = []
    for r in df.itertuples(index=False):
        d = r._asdict()
        rows.append([fmt(d[param])] + ([fmt(d[group])] if group else [])
                    + [escape(str(d["layer"])), phase_badge(d.get("phase"))]
                    + [fmt(d.get(c)) for c in cols] + [escape(str(d["run"]))])
    html = table(head, rows, left=(len(head) - 1, (2 if group else 1), (3 if group else 2)))
    return html + ('<p class="sub">Also saved as <a href="comparison.csv">comparison.csv</a>. Run folders: '
                   + escape(", ".join(sorted({str(r.path) for r in cmp.runs}))) + "</p>")


def _esd_grid(items: Sequence[EsdItem], ncols: int = 3) -> Any:
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
                   title=f"{title}" + (f" — {phase}" if not is_missing(phase) and phase else ""))
    for ax in axs[n:]:
        ax.set_visible(False)
    return fig
