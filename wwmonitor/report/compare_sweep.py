"""The sections of a sweep comparison page (summary, findings, ranking, sweep figures, ESDs, table)."""

from __future__ import annotations

import math
from html import escape
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from .compare_context import EsdItem, _Comparison, _run_label
from .pagekit import Section, fmt, image_stem, is_missing, phase_badge, render_figure, table
from .ranking import RANK_SUMMARIES, ranking_picks, ranking_spearman
from .stored_fits import layer_fits
from .sweep import TABLE_EXTRA, spearman_by_group

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def spearman_table_html(
    rho: Mapping[str, Mapping[str, Mapping[str, float]]],
    expected: Optional[Mapping[str, int]] = None,
    group: str = "seed",
) -> str:
    """HTML table of :func:`spearman_by_group` output; cells with the expected sign are green, others red."""
    metrics: list[str] = []
    for per in rho.values():
        for vals in per.values():
            for m in vals:
                if m not in metrics:
                    metrics.append(m)
    heads = [group, "layer"] + [
        m + (f" (expect {'+' if expected[m] > 0 else '−'})" if expected and m in expected else "") for m in metrics
    ]
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


# --- the sections (each returns the HTML under its heading) -------------------------------------------------


def _section_summary(cmp: _Comparison) -> str:
    """How many runs, the swept parameter and its values, the grouping, the layers."""
    df, param, group = cmp.df, cmp.param, cmp.group
    assert param is not None  # the sweep sections run only with a swept key
    values = ", ".join(sorted({str(v) for v in df[param]}, key=lambda s: (len(s), s)))
    html = (
        f"<p>{len(cmp.runs)} runs, swept parameter <b>{escape(param)}</b> = {escape(values)}"
        + (f", grouped by <b>{escape(group)}</b> ({df[group].nunique()} values)" if group else "")
        + f"; layers: {escape(', '.join(cmp.layers))}. Each run contributes its final snapshot.</p>"
    )
    note = df.attrs.get("order_note")
    if note:
        html += f'<p class="note">Note: {escape(note)}.</p>'
    return html


def _section_findings(cmp: _Comparison) -> str:
    """The Spearman rank correlation of each metric with the parameter, per group and layer."""
    assert cmp.param is not None  # the sweep sections run only with a swept key
    rho = spearman_by_group(cmp.df, param=cmp.param, group=cmp.group, metrics=cmp.metrics, layers=cmp.layers)
    if not any(rho.values()):
        return (
            f"<p>No rank correlation: it needs at least 3 different values of {escape(cmp.param or '')}"
            + (f" within a {escape(cmp.group)}" if cmp.group else "")
            + " and a metric that varies.</p>"
        )
    return spearman_table_html(rho, None, cmp.group or "group")


def _ranking_sections(cmp: _Comparison) -> list[Section]:
    """The ranking section, when at least two runs recorded the validation metric (none otherwise)."""
    if cmp.ranking is None or len(cmp.ranking) < 2:
        return []
    val = escape(str(cmp.ranking.attrs["val_metric"]))
    return [
        ("ranking", "Ranking by validation", f"Ranking runs without test data: spectra against {val}", _section_ranking)
    ]


def _section_ranking(cmp: _Comparison) -> str:
    """The Spearman correlation of each spectral summary with the validation metric, and each one's pick."""
    df = cmp.ranking
    assert df is not None
    val, higher = str(df.attrs["val_metric"]), bool(df.attrs["higher_is_better"])
    shown = [m for m in RANK_SUMMARIES if df[m].notna().any()]
    parts = [
        f"<p>{len(df)} of {df.attrs['n_runs']} runs recorded <b>{escape(val)}</b> ("
        + ("higher" if higher else "lower")
        + " is better). Each spectral summary below is the model-level mean "
        "over every monitored layer at the run's final snapshot, computed from the weights alone; in the "
        "heavy-tailed self-regularization picture a <i>lower</i> value of each predicts a better model, so a summary "
        f"that ranks the runs like {escape(val)} has a Spearman correlation near <b>{'−1' if higher else '+1'}"
        "</b> (green) with it.</p>"
    ]
    ends = sorted({int(e) for e in df["epoch"] if not is_missing(e)})
    if len(ends) > 1:
        parts.append(
            f'<p class="note">The runs\' final snapshots are at different epochs ({ends[0]} to {ends[-1]}): '
            "runs stopped early (by a scheduler, a pruner or an alert) are ranked by their last snapshot "
            "and their last recorded validation value.</p>"
        )
    missing = df.attrs.get("missing") or []
    if missing:
        more = f" and {len(missing) - 12} more" if len(missing) > 12 else ""
        parts.append(f'<p class="sub">Without {escape(val)} (not ranked): {escape(", ".join(missing[:12]))}{more}.</p>')
    parts.append(_ranking_rho_table(ranking_spearman(df), shown, -1 if higher else +1))
    parts.append(_ranking_picks_table(cmp, ranking_picks(df), shown, val, higher))
    return "\n".join(parts)


def _ranking_rho_table(rho: "pd.DataFrame", shown: Sequence[str], expect: int) -> str:
    """The table of :func:`ranking_spearman`: one row per group, one column per summary (green: expected sign)."""
    rows = []
    for label, d in rho.groupby("group", sort=False):
        by = dict(zip(d["metric"], d["rho"]))
        cells = []
        for m in shown:
            r = by.get(m, float("nan"))
            if is_missing(r) or not math.isfinite(r):
                cells.append("–")
            else:
                cells.append(f'<span class="{"good" if r * expect > 0 else "bad"}">{r:+.2f}</span>')
        rows.append([escape(str(label)), fmt(int(d["n"].max()) if len(d) else 0)] + cells)
    return table(["group", "runs"] + [f"{m} (expect {'−' if expect < 0 else '+'})" for m in shown], rows, left=(0,)) + (
        '<p class="sub">Spearman rank correlation across the runs of each group (a dash: fewer than 3 runs with '
        'both values, or a constant column); also saved as <a href="ranking.csv">ranking.csv</a>.</p>'
    )


def _ranking_picks_table(cmp: _Comparison, picks: "pd.DataFrame", shown: Sequence[str], val: str, higher: bool) -> str:
    """The table of :func:`ranking_picks`: the best run by validation and each summary's pick, per group."""
    groups = list(dict.fromkeys(picks["group"]))
    by = {(g, m): rec for g, m, rec in zip(picks["group"], picks["metric"], picks.to_dict("records"))}
    rows = []
    for m in ["validation", *shown]:
        cells = []
        for g in groups:
            rec = by.get((g, m))
            if rec is None:
                cells.append("–")
                continue
            mark = (
                ""
                if m == "validation"
                else ' <span class="good">✓ best</span>'
                if rec["best"]
                else f' <span class="bad">{fmt(-rec["gap"] if higher else rec["gap"], 3)}</span>'
            )
            cells.append(
                f"{escape(cmp.long_label(str(rec['run'])))}<br><small>{escape(val)} = "
                f"{fmt(rec['val'], 4)}{mark}</small>"
            )
        rows.append([f"best by {escape(val)}" if m == "validation" else f"lowest {escape(m)}", *cells])
    return table(["pick", *groups], rows, left=tuple(range(len(groups) + 1))) + (
        f'<p class="sub">The run each summary would pick as the best (its lowest value), with that run\'s '
        f"{escape(val)} and how far it is from the best run's ({'−' if higher else '+'}: worse).</p>"
    )


def _section_sweep(cmp: _Comparison) -> str:
    """One figure: each metric against the parameter, per layer (mean ± sd over the groups)."""
    from . import figures as F

    param, group = cmp.param, cmp.group
    assert param is not None  # the sweep sections run only with a swept key
    if not cmp.numeric_param:
        return f"<p>{escape(param)} is not numeric; see the table below.</p>"
    cap = (
        f"Final-snapshot metrics per layer against {escape(param)}"
        + (" (faint dots: each run; line: mean ± sd over " + escape(group) + ")" if group else "")
        + ". Green band: 2 ≤ α ≤ 6."
    )
    build = lambda: F.plot_sweep(
        cmp.df,
        param=param,
        metrics_to_plot=cmp.metrics,
        layers=cmp.layers,  # noqa: E731
        group=group,
    )
    return render_figure(cmp.problems, f"the metrics against {param}", build, cmp.out, "sweep.png", cmp.dpi, cap)


def _section_phase_diagram(cmp: _Comparison) -> str:
    """One figure: layers x runs, coloured by each run's final phase."""
    from . import figures as F

    df, param, group = cmp.df, cmp.param, cmp.group
    runs_order = list(dict.fromkeys(df["run"]))
    first = {d["run"]: d for d in df.drop_duplicates("run").to_dict("records")}
    labels = [_run_label(first[r], param, group) for r in runs_order]
    cells: dict[str, dict[str, Any]] = {lab: {} for lab in labels}
    for d in df.to_dict("records"):
        cells[labels[runs_order.index(d["run"])]][d["layer"]] = d.get("phase")
    build = lambda: F.plot_phase_diagram(
        cells,
        run_labels=labels,
        layers=cmp.layers,  # noqa: E731
        xlabel=(param or "run") + (f" · {group}" if group else ""),
    )
    cap = (
        "Phase of each layer at the end of each run (columns sorted by "
        + escape(param or "run")
        + (f", then {escape(group)}" if group else "")
        + ")."
    )
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
        cap = (
            f"Final ESD of layer {escape(layer)} in each run"
            + (f" ({escape(group)} = {escape(str(g0))})" if group else "")
            + ": log-log density, power-law fit (red) and MP bulk density (blue)."
        )
        notes.append(
            render_figure(
                cmp.problems,
                f"the ESD grid of {layer}",
                lambda: _esd_grid(items),
                cmp.out,
                f"esd_grid_{image_stem(layer)}.png",
                cmp.dpi,
                cap,
            )
        )
    return "\n".join(notes)


def _esd_items(cmp: _Comparison, sel: "pd.DataFrame") -> tuple[list[EsdItem], list[str]]:
    """The ESD panel of each selected run, and a counted note for each run whose ESD cannot be read."""

    by_name = cmp.by_name
    items, notes = [], []
    for d in sel.to_dict("records"):
        label = d["run"] if cmp.by_run else f"{cmp.param} = {_run_label(d, cmp.param, None)}"
        try:
            f = layer_fits(by_name[d["run"]], str(cmp.esd_layer), int(d["step"]))
        except Exception as e:  # noqa: BLE001 - a missing or unreadable ESD is shown and counted
            notes.append(cmp.problems.note(f"the final ESD of {cmp.esd_layer} in run {d['run']} ({label})", e))
            continue
        items.append((label, f.evals, f.pl, f.mp, d.get("phase")))
    return items, notes


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
        F.plot_esd(
            ev,
            fit=pl,
            mp=mpf,
            ax=ax,
            fit_powerlaw_if_missing=False,
            title=f"{title}" + (f" — {phase}" if not is_missing(phase) and phase else ""),
        )
    for ax in axs[n:]:
        ax.set_visible(False)
    return fig


def _section_table(cmp: _Comparison) -> str:
    """Every run and layer with its metrics (also written as ``comparison.csv``)."""
    df = cmp.df
    keys = [k for k in (cmp.param, cmp.group) if k is not None] or ["run"]
    cols = [c for c in list(cmp.metrics) + list(TABLE_EXTRA) if c in df.columns]
    head = keys + ["layer", "phase"] + cols + (["run"] if not cmp.by_run else [])
    rows = []
    for d in df.to_dict("records"):
        rows.append(
            [fmt(d[k]) for k in keys]
            + [escape(str(d["layer"])), phase_badge(d.get("phase"))]
            + [fmt(d.get(c)) for c in cols]
            + ([escape(str(d["run"]))] if not cmp.by_run else [])
        )
    left = (len(keys), len(keys) + 1) + ((len(head) - 1,) if not cmp.by_run else (0,))
    wide = table(head, rows, left=left).replace(
        '<table class="data">', '<table class="data" style="white-space:nowrap">', 1
    )
    html = f'<div style="overflow-x:auto">{wide}</div>'
    return html + (
        '<p class="sub">Also saved as <a href="comparison.csv">comparison.csv</a>. Run folders: '
        + escape(", ".join(sorted({str(r.path) for r in cmp.runs})))
        + "</p>"
    )
