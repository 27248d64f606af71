"""Compare several runs (``wwmonitor compare RUN_DIR...``): a sweep, or any runs side by side.

**A sweep.** Each run contributes its *final* snapshot.  The swept parameter
is read from the runs' configs: given explicitly (``param="batch_size"``) or
detected as the config key whose value differs between runs (``seed`` and
bookkeeping keys derived from others are not candidates).  When the seed
differs too it becomes the *group*: figures show each seed and the mean ± sd
over seeds, and Spearman correlations are reported per seed.

**Runs side by side.** When no config key differs (identical configs, no
config, only the seed differs) or ``by_run=True``, the runs are compared by
name: their metric curves overlaid (one line per run), a table of each
run's final snapshot, and each layer's phase per run.

Both pages list which of the 5+1 phases the runs show, in which layers and
runs (or swept values), at the final snapshot and over training, and when
each layer changed phase (from the per-step phases in the run store).

**Ranking without test data.** When the runs recorded a validation metric
(``val_acc``, ``val_loss``, ... in their store, see
:func:`wwmonitor.integrations.record_eval_metrics`), the page also shows the
Spearman rank correlation of each model-level spectral summary with it, per
group, and which run each summary would pick as the best (:func:`ranking_frame`,
:func:`ranking_spearman`, :func:`ranking_picks`).

Outputs (``write_comparison``): ``index.html`` and its PNG figures, plus
``comparison.csv`` (one row per run and layer, final snapshot) and, with a
validation metric, ``ranking.csv`` (the Spearman correlations).

Modules: sweep statistics (:mod:`.sweep`), ranking (:mod:`.ranking`), phase
history (:mod:`.history`), the page's context (:mod:`.compare_context`) and
its sections (:mod:`.compare_sweep`, :mod:`.compare_runs`,
:mod:`.compare_phases`); this module builds the page.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

from .compare_context import _Comparison
from .compare_phases import _section_phase_changes, _section_phases_seen
from .compare_runs import _section_run_curves, _section_run_finals, _section_run_phases, _section_runs_summary
from .compare_sweep import (
    _ranking_sections,
    _section_esds,
    _section_findings,
    _section_phase_diagram,
    _section_summary,
    _section_sweep,
    _section_table,
    spearman_table_html,
)
from .history import _history, phase_changes, phase_history, phases_seen
from .pagekit import OutputError, Section, nav, page, prepare_out_dir, render_section, select_layers, write_text
from .ranking import EVAL_META_KEY, RANK_SUMMARIES, eval_metrics, ranking_frame, ranking_picks, ranking_spearman
from .sweep import (
    COMPARE_METRICS,
    PathLike,
    _load,
    _unique_names,
    detect_param,
    differing_keys,
    final_metrics_table,
    spearman_by_group,
    sweep_param,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..store import Run

__all__ = [
    "COMPARE_METRICS",
    "EVAL_META_KEY",
    "RANK_SUMMARIES",
    "detect_param",
    "differing_keys",
    "eval_metrics",
    "final_metrics_table",
    "phase_changes",
    "phase_history",
    "phases_seen",
    "ranking_frame",
    "ranking_picks",
    "ranking_spearman",
    "sweep_param",
    "spearman_by_group",
    "spearman_table_html",
    "write_comparison",
]


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
    by_run: bool = False,
    val_metric: Optional[str] = "auto",
) -> Path:
    """Write the comparison report of ``runs`` to ``out_dir/index.html`` and return its path.

    With a swept parameter (``param``, or a config key that differs
    between the runs) the page is the sweep report; without one (no key
    differs, or ``by_run=True``) the runs are compared side by side by
    name: curves overlaid, one final-snapshot row per run, phases per run.
    ``notes_html`` (trusted HTML) is inserted after the summary; the demo
    uses it for its explanation.  ``esd_layer`` is the layer whose final
    ESD is drawn for every run (default: the layer with the most
    eigenvalues among those with a power-law fit).  ``problems`` receives
    one line per figure or section that could not be drawn (the page lists
    them at the top, and shows each as a note where it belongs).
    ``val_metric`` is the validation metric the runs recorded that the
    spectral summaries are ranked against (``"auto"``: ``val_acc``,
    ``val_accuracy``, ``val_loss``, then any ``val_*``; ``None``: no ranking
    section); see :func:`ranking_frame`.

    Raises ``FileNotFoundError`` / ``ValueError`` for runs that cannot be
    read or compared and for unknown layers, and
    :class:`~wwmonitor.report.html.OutputError` (a ``ValueError``) naming
    the path when the output cannot be written.
    """
    cmp = _open_comparison(
        runs,
        out_dir,
        param=param,
        group=group,
        layers=layers,
        esd_layer=esd_layer,
        metrics=metrics,
        dpi=dpi,
        notes_html=notes_html,
        by_run=by_run,
        val_metric=val_metric,
    )
    sections = _sections(cmp)
    bodies = [render_section(cmp, section) for section in sections]
    n_problems = len(cmp.problems)
    what = "side by side" if cmp.by_run else f"swept {escape(cmp.param or '')}"
    auto_title = "wwmonitor comparison: " + (
        cmp.param or (", ".join(cmp.names) if len(cmp.names) <= 4 else f"{len(cmp.names)} runs")
    )
    html = page(
        title or auto_title,
        "\n".join([nav(sections), cmp.problems.summary_html(), *bodies]),
        subtitle=f"{len(cmp.runs)} runs · {what}"
        + (f" · {n_problems} problem{'s' if n_problems != 1 else ''}" if n_problems else ""),
    )
    if problems is not None:
        problems.extend(cmp.problems.items)
    return write_text(cmp.out / "index.html", html)


def _open_comparison(
    runs: Sequence[Union[PathLike, "Run"]],
    out_dir: PathLike,
    *,
    param: Optional[str],
    group: Optional[str],
    layers: Optional[Sequence[str]],
    esd_layer: Optional[str],
    metrics: Sequence[str],
    dpi: int,
    notes_html: str,
    by_run: bool,
    val_metric: Optional[str] = "auto",
) -> _Comparison:
    """Load the runs, build the final-snapshot table, check the layers, then create the output folder and the CSV."""
    loaded = _load(runs)
    df = final_metrics_table(loaded, param=param, group=group, by_run=by_run)
    param, group = df.attrs["param"], df.attrs["group"]
    lay = select_layers(layers, list(dict.fromkeys(df["layer"])), missing=lambda u: f"compare: layers {u} not found")
    if esd_layer is not None and esd_layer not in lay:
        raise ValueError(f"compare: --esd-layer {esd_layer!r} is not among the compared layers {lay}")
    named = _page_order(loaded, df)
    df = df[df["layer"].isin(lay)].reset_index(drop=True)
    history = _history(named, lay, [k for k in (param, group) if k is not None])
    ranking = ranking_frame([r for _, r in named], val_metric=val_metric, group=group, names=[n for n, _ in named])
    if val_metric not in (None, "auto", "none") and not len(ranking):
        known = sorted({k for _, r in named for k in eval_metrics(r)})
        raise ValueError(
            f"compare: no run recorded the validation metric {val_metric!r} (recorded: {', '.join(known) or 'none'})"
        )
    out = prepare_out_dir(out_dir, "comparison")
    _write_csvs(out, df, ranking)
    return _Comparison(
        runs=[r for _, r in named],
        names=[n for n, _ in named],
        df=df,
        history=history,
        param=param,
        group=group,
        layers=lay,
        esd_layer=esd_layer if esd_layer is not None else _default_esd_layer(df),
        metrics=metrics,
        out=out,
        dpi=dpi,
        notes_html=notes_html,
        forced_by_run=by_run,
        ranking=ranking,
    )


def _write_csvs(out: Path, df: "pd.DataFrame", ranking: "pd.DataFrame") -> None:
    """``comparison.csv`` (the final-snapshot table) and, with at least two ranked runs, ``ranking.csv`` (a stale
    one from an earlier comparison in the same folder is removed otherwise)."""
    tables = [(out / "comparison.csv", df)]
    if len(ranking) >= 2:
        tables.append((out / "ranking.csv", ranking_spearman(ranking)))
    for path, frame in tables:
        try:
            frame.to_csv(path, index=False)
        except OSError as e:
            raise OutputError(f"cannot write {str(path)!r}: {e.strerror or e}") from e
    if len(ranking) < 2:
        try:
            (out / "ranking.csv").unlink(missing_ok=True)
        except OSError:  # not ours to insist on: the page does not link it
            pass


def _page_order(loaded: Sequence["Run"], df: "pd.DataFrame") -> list[tuple[str, "Run"]]:
    """``(name, run)`` pairs in the order of the final-snapshot table (sorted by the parameter in a sweep)."""
    named = dict(zip(_unique_names(loaded), loaded))
    order = list(dict.fromkeys(df["run"])) + [n for n in named if n not in set(df["run"])]
    return [(n, named[n]) for n in order]


def _default_esd_layer(df: "pd.DataFrame") -> Optional[str]:
    """The layer with the most eigenvalues among those with a power-law fit in some run (``None``: no fit at all)."""
    cand = df.dropna(subset=["alpha"]) if "alpha" in df.columns else df
    if not len(cand):
        return None
    if "num_evals" not in df.columns:
        return str(cand["layer"].iloc[0])
    return max(cand["layer"].unique(), key=lambda L: float(df[df["layer"] == L]["num_evals"].max()))


def _sections(cmp: _Comparison) -> list[Section]:
    """The comparison page's sections in page order (a sweep, or the runs side by side)."""
    if cmp.by_run:
        return _run_sections(cmp)
    p = escape(cmp.param or "")
    out: list[Section] = [("summary", "Summary", "Summary", _section_summary)]
    if cmp.notes_html:
        out.append(("findings", "Findings", None, lambda c: c.notes_html))
    elif cmp.numeric_param:
        out.append(("findings", "Findings", f"Rank correlation with {p}", _section_findings))
    out += _ranking_sections(cmp)
    out += [
        ("sweep", f"Metrics vs {cmp.param}", f"Metrics against {p}", _section_sweep),
        ("phase-diagram", "Phase diagram", "Phase diagram", _section_phase_diagram),
        ("phases-seen", "Phases seen", "Phases seen in this sweep", _section_phases_seen),
        ("phase-changes", "Phase changes", "When each layer changed phase", _section_phase_changes),
        ("esds", "ESDs", "ESDs across the sweep", _section_esds),
        ("table", "Table", "Table", _section_table),
    ]
    return out


def _run_sections(cmp: _Comparison) -> list[Section]:
    """The sections of runs compared side by side (no swept parameter), in page order."""
    out: list[Section] = [("summary", "Summary", "Summary", _section_runs_summary)]
    if cmp.notes_html:
        out.append(("findings", "Findings", None, lambda c: c.notes_html))
    out += _ranking_sections(cmp)
    out += [
        ("curves", "Metric curves", "Metric curves", _section_run_curves),
        ("final", "Final snapshot", "Final snapshot of each run", _section_run_finals),
        ("phases", "Phases per run", "Final phase of each layer per run", _section_run_phases),
        ("phases-seen", "Phases seen", "Phases seen in these runs", _section_phases_seen),
        ("phase-changes", "Phase changes", "When each layer changed phase", _section_phase_changes),
        ("esds", "ESDs", "Final ESDs", _section_esds),
        ("table", "Table", "Table", _section_table),
    ]
    return out
