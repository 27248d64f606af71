"""The HTML run report (``wwmonitor report RUN_DIR``): :func:`write_report`.

The report is a static, self-contained page: inline CSS, no scripts, PNG
figures beside it referenced by relative paths, so it opens from disk with
no server (``file://.../index.html``) and can be zipped or attached as is.

Nothing that goes wrong is hidden: a figure or section that cannot be drawn
is replaced by a visible note naming it and the error, and counted in a list
of problems at the top of the page (:class:`Problems`).  An output folder or
file that cannot be written raises :class:`OutputError` naming the path.

Modules: the page kit shared with the comparison (:mod:`.pagekit`), the
report's context (:mod:`.run_context`) and sections (:mod:`.run_sections`),
the stored fits it draws (:mod:`.stored_fits`; nothing is re-fitted).
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Optional, Sequence

from ..records import MODEL_LAYER
from .pagekit import (
    OutputError,
    Problems,
    Section,
    figure,
    fmt,
    image_stem,
    is_missing,
    nav,
    page,
    phase_badge,
    pick_steps,
    plural,
    prepare_out_dir,
    render_section,
    select_layers,
    table,
    write_text,
)
from .run_context import REPORT_METRICS, _epochs_by_step, _Report
from .run_sections import (
    IDEAL_LEGEND,
    TABLE_METRICS,
    _section_alerts,
    _section_config,
    _section_curves,
    _section_diagnostics,
    _section_final,
    _section_gallery,
    _section_summary,
    _section_timeline,
    setol_ideal,
)
from .stored_fits import LayerFits, layer_fits

__all__ = [
    "write_report",
    "REPORT_METRICS",
    "TABLE_METRICS",
    "IDEAL_LEGEND",
    "setol_ideal",
    "pick_steps",
    "LayerFits",
    "layer_fits",
    "OutputError",
    "Problems",
    "figure",
    "fmt",
    "image_stem",
    "is_missing",
    "phase_badge",
    "page",
    "table",
]


def _open_report(
    run_dir: "str | Path",
    out_dir: "Optional[str | Path]",
    esd_steps: Optional[Sequence[int]],
    n_esd_steps: int,
    layers: Optional[Sequence[str]],
    metrics: Sequence[str],
    dpi: int,
) -> _Report:
    """Load the run, check the requested layers and steps, then create the output folder."""
    from ..store import load_run

    run = load_run(run_dir)
    steps = run.steps
    if not steps:
        raise ValueError(f"run {run.name!r} at {str(run.path)!r} has no analysed snapshots yet")
    all_layers = run.layer_names or sorted(set(run.metrics["layer"]) - {MODEL_LAYER})
    lay = select_layers(layers, all_layers, missing=lambda u: f"layers {u} are not in run {run.name!r}")
    if esd_steps is not None:
        bad = [s for s in esd_steps if int(s) not in steps]
        if bad:
            raise ValueError(f"esd_steps {bad} are not snapshots of run {run.name!r}; steps: {steps}")
        gsteps = [int(s) for s in esd_steps]
    else:
        gsteps = pick_steps(steps, n_esd_steps)
    out = prepare_out_dir(Path(out_dir) if out_dir is not None else run.path / "report")
    return _Report(
        run=run,
        out=out,
        layers=lay,
        steps=steps,
        gallery_steps=gsteps,
        metrics=metrics,
        dpi=dpi,
        epoch_of=_epochs_by_step(run),
    )


def _sections(rep: _Report) -> list[Section]:
    """The report's sections in page order."""
    last = escape(rep.when(rep.last))
    return [
        ("summary", "Summary", "Summary", _section_summary),
        ("curves", "Metric curves", "Metric curves", _section_curves),
        ("final", "Final snapshot", f"Final snapshot: {last}", _section_final),
        ("phases", "Phase timeline", "Phase timeline", _section_timeline),
        ("esd", "ESD gallery", "ESD gallery", _section_gallery),
        ("diagnostics", "Fit diagnostics", f"Fit diagnostics ({last})", _section_diagnostics),
        ("alerts", "Alerts", "Alerts", _section_alerts),
        ("config", "Config", "Run config", _section_config),
    ]


def write_report(
    run_dir: "str | Path",
    out_dir: "Optional[str | Path]" = None,
    *,
    esd_steps: Optional[Sequence[int]] = None,
    n_esd_steps: int = 3,
    layers: Optional[Sequence[str]] = None,
    metrics: Sequence[str] = REPORT_METRICS,
    dpi: int = 90,
    title: Optional[str] = None,
    problems: Optional[list[str]] = None,
) -> Path:
    """Build the static HTML report of one run; return the path of ``index.html``.

    Parameters
    ----------
    run_dir:
        A run folder (containing ``run.sqlite``) as written by the monitor.
    out_dir:
        Where to write ``index.html`` and the PNGs (default ``run_dir/report``).
    esd_steps:
        Snapshots (steps) for the ESD gallery; default: ``n_esd_steps``
        spread over the run (first, middle, last).
    layers:
        Layers to include (default: all the run has).
    problems:
        A list that receives one line per figure or section that could not
        be drawn (the page shows the same list at the top).

    The page contains: run summary, per-layer metric curves against epoch
    (step when the run has no epochs), a table of the final snapshot, the
    phase timeline (layers x snapshots), the ESD gallery (log-log density
    with the power-law fit and the MP density, plus the linear MP
    histogram), fit diagnostics of the last snapshot (CCDF, KS distance vs
    xmin, scree), the alerts table and the run config.

    Raises ``FileNotFoundError`` / ``ValueError`` for a run that cannot be
    read or an unknown layer or step, and :class:`OutputError` (a
    ``ValueError``) naming the path when the output cannot be written.
    """
    rep = _open_report(run_dir, out_dir, esd_steps, n_esd_steps, layers, metrics, dpi)
    sections = _sections(rep)
    bodies = [render_section(rep, section) for section in sections]
    body = "\n".join([nav(sections), rep.problems.summary_html(), *bodies])
    html = page(
        title or f"wwmonitor report: {rep.run.name}",
        body,
        subtitle=f"{len(rep.steps)} snapshots · {len(rep.layers)} layers · {escape(str(rep.run.path))}"
        + (f" · {plural(len(rep.problems), 'problem')}" if len(rep.problems) else ""),
    )
    if problems is not None:
        problems.extend(rep.problems.items)
    return write_text(rep.out / "index.html", html)
