"""The sections of the run report, one function each (body HTML under the section heading)."""

from __future__ import annotations

import functools
import json
from html import escape
from typing import TYPE_CHECKING, Any, Iterable, Optional

from .history import phase_changes, phase_history
from .pagekit import fmt, image_stem, is_missing, phase_badge, render_figure, table
from .run_context import _Report
from .stored_fits import LayerFits

if TYPE_CHECKING:  # pragma: no cover
    pass


#: columns of the final-snapshot table
TABLE_METRICS: tuple[str, ...] = (
    "alpha",
    "D",
    "num_pl_spikes",
    "ERG_gap",
    "mp_softrank",
    "stable_rank",
    "num_spikes",
    "mp_sigma2",
    "lambda_plus",
    "log_spectral_norm",
    "rank_loss",
)
#: SETOL's "ideal" layer (alpha ≈ 2 and the det X = 1 tail starting where the power-law tail does):
#: ``|alpha - 2| <= IDEAL_ALPHA_TOL`` and ``|ERG_gap| <= max(1, IDEAL_GAP_FRAC · num_pl_spikes)``
IDEAL_ALPHA_TOL = 0.25
IDEAL_GAP_FRAC = 0.05
IDEAL_LEGEND = (
    "SETOL ideal: |alpha − 2| ≤ 0.25 and |ERG_gap| ≤ max(1, 5% of num_pl_spikes), ERG_gap = detX_num − "
    "num_pl_spikes (the det X = 1 tail starts where the power-law tail starts; Martin &amp; Hinrichs, "
    "SETOL, arXiv:2507.17912; see docs/metrics.md)."
)


def setol_ideal(alpha: Any, erg_gap: Any, num_pl_spikes: Any) -> Optional[bool]:
    """Whether a layer is near SETOL's ideal (see :data:`IDEAL_LEGEND`); ``None`` when a value is missing."""
    if is_missing(alpha) or is_missing(erg_gap) or is_missing(num_pl_spikes):
        return None
    gap_tol = max(1.0, IDEAL_GAP_FRAC * float(num_pl_spikes))
    return abs(float(alpha) - 2.0) <= IDEAL_ALPHA_TOL and abs(float(erg_gap)) <= gap_tol


def _ideal_cell(d: dict) -> str:
    """The final table's SETOL-ideal cell: a green "ideal", "no", or an en dash when not computable."""
    ideal = setol_ideal(d.get("alpha"), d.get("ERG_gap"), d.get("num_pl_spikes"))
    return "–" if ideal is None else ('<span class="good">ideal</span>' if ideal else "no")


# --- the sections (each returns the HTML under its heading) -------------------------------------------------


def _section_summary(rep: _Report) -> str:
    """Run name, snapshots, layer count, alerts, and the table of layers (type, shape, N, M, Q)."""
    run, steps = rep.run, rep.steps
    no_epoch = "" if rep.x_axis == "epoch" else " Snapshots were taken without an epoch, so they are shown by step."
    parts = [
        f"<p>Run <b>{escape(run.name)}</b> in <code>{escape(str(run.path))}</code>: {len(steps)} snapshot(s), "
        f"from {escape(rep.when(steps[0]))} to {escape(rep.when(rep.last))}; {len(rep.layers)} layer(s); "
        f"{len(run.alerts)} alert(s).{no_epoch}</p>"
    ]
    rows = [
        [escape(str(r.layer)), escape(str(r.type)), escape(str(r.shape)), fmt(r.N), fmt(r.M), fmt(r.Q)]
        for r in run.layers.itertuples()
        if r.layer in rep.layers
    ]
    parts.append(table(["layer", "type", "shape", "N", "M", "Q = N/M"], rows, left=(0, 1, 2)))
    parts.append(
        '<p class="sub">Eigenvalues &lambda; are those of X = W<sup>T</sup>W/N (N = larger, M = smaller '
        "dimension). Convolution layers pool the ESDs of their kernel-position slices. Power-law fits need "
        "at least 50 eigenvalues; smaller layers get no &alpha;.</p>"
    )
    return "\n".join(parts)


def _section_curves(rep: _Report) -> str:
    """One figure: each metric against epoch (or step), one line per layer."""
    from . import figures as F

    mdf = rep.run.metrics[rep.run.metrics["layer"].isin(rep.layers)]
    recorded = set(mdf["metric"])
    present = [m for m in rep.metrics if m in recorded]
    absent = [m for m in rep.metrics if m not in recorded]
    if not present:
        return "<p>No metrics recorded.</p>"
    x = rep.x_axis
    cap = (
        f"Per-layer metrics at each snapshot, against the {x}. "
        "The green band marks 2 ≤ α ≤ 6 (weightwatcher's well-trained range)."
    )
    html = render_figure(
        rep.problems,
        "the metric curves",
        lambda: F.plot_metric_curves(mdf, metrics_to_plot=present, layers=rep.layers, x=x, ncols=2),
        rep.out,
        "metrics.png",
        rep.dpi,
        cap,
    )
    if absent:
        html += f'<p class="sub">Not recorded in this run: {escape(", ".join(absent))}.</p>'
    return html


def _section_final(rep: _Report) -> str:
    """The last snapshot's metrics, phase and status per layer, with the fit messages and phase reasons."""
    run, last = rep.run, rep.last
    wide = run.to_pandas()
    wl = wide[(wide["step"] == last) & (wide["layer"].isin(rep.layers))]
    msg = run.layer_status[(run.layer_status["step"] == last)].set_index("layer")["message"].to_dict()
    cols = [c for c in TABLE_METRICS if c in wl.columns]
    rows = []
    for r in wl.itertuples(index=False):
        d = r._asdict()
        tip = escape(str(msg.get(d["layer"]) or ""))
        rows.append(
            [escape(str(d["layer"])), phase_badge(d.get("phase"))]
            + [fmt(d.get(c)) for c in cols]
            + [_ideal_cell(d), f'<span title="{tip}">{escape(str(d.get("status") or ""))}</span>']
        )
    parts = [table(["layer", "phase"] + cols + ["SETOL ideal", "status"], rows, left=(0, 1, len(cols) + 3))]
    notes = [f"{escape(str(k))}: {escape(str(v))}" for k, v in msg.items() if v and k in rep.layers]
    if notes:
        parts.append('<p class="sub">' + "<br>".join(notes) + "</p>")
    parts.append(
        '<p class="sub">xmin and log norms are on weightwatcher\'s σ² axis (eigenvalues of W<sup>T</sup>W); '
        "mp_sigma2 and lambda_plus on the λ axis (X = W<sup>T</sup>W/N).</p>"
    )
    parts.append(f'<p class="sub">{IDEAL_LEGEND}</p>')
    parts.append(_phase_reasons(rep))
    return "\n".join(parts)


def _phase_reasons(rep: _Report) -> str:
    """Table of why each layer got its phase at the last snapshot (empty when no reasons are stored)."""
    ph = rep.run.phases
    if "reason" not in ph.columns:
        return ""
    pr = ph[(ph["step"] == rep.last) & (ph["layer"].isin(rep.layers))]
    if not len(pr):
        return ""
    rows = [[escape(str(r.layer)), phase_badge(r.phase), escape(str(r.reason or ""))] for r in pr.itertuples()]
    return "<h3>Why each phase</h3>" + table(["layer", "phase", "reason"], rows, left=(0, 1, 2))


def _section_timeline(rep: _Report) -> str:
    """One figure: layers x snapshots, each cell coloured by its phase."""
    from . import figures as F

    ph = rep.run.phases[rep.run.phases["layer"].isin(rep.layers)]
    if not len(ph):
        return "<p>No phases recorded (phase classification off).</p>"
    fig = render_figure(
        rep.problems,
        "the phase timeline",
        lambda: F.plot_phase_timeline(ph, x=rep.x_axis, layers=rep.layers),
        rep.out,
        "phases.png",
        rep.dpi,
        "Each cell is one layer at one snapshot, coloured by its phase (Martin & Mahoney's 5+1 phases).",
    )
    return fig + _phase_change_table(rep)


def _phase_change_table(rep: _Report) -> str:
    """When each layer changed phase: one row per change (first snapshot in the new phase)."""

    changes = phase_changes(phase_history([rep.run], layers=rep.layers))
    if not len(changes):
        return "<p>No layer changed phase during the run.</p>"
    records: Iterable[Any] = changes.itertuples()  # pandas-stubs types each field as any scalar
    rows = "".join(
        f"<tr><td>{escape(str(r.layer))}</td><td>{escape(rep.when(int(r.step)))}</td>"
        f"<td>{phase_badge(r.before) if r.before else '–'} &rarr; {phase_badge(r.after) if r.after else '–'}</td></tr>"
        for r in records
    )
    return (
        f"<p>{len(changes)} phase change(s): when each layer entered a new phase.</p>"
        f"<table><tr><th>layer</th><th>at</th><th>change</th></tr>{rows}</table>"
    )


def _section_gallery(rep: _Report) -> str:
    """For each layer, its ESD figure at each gallery snapshot."""
    parts = [
        f"<p>Snapshots: {escape(', '.join(rep.when(s) for s in rep.gallery_steps))}. Left: log-log density "
        "with the power-law fit (red, dashed, from x<sub>min</sub>) and the Marchenko-Pastur density of the "
        "bulk (blue). Right: the same ESD on linear axes with the MP density, its edge &lambda;<sub>+</sub>, "
        "the Tracy-Widom margin and the spikes beyond it.</p>"
    ]
    records: Iterable[Any] = rep.run.phases.itertuples()  # pandas-stubs types each field as any scalar
    phase_at = {(r.layer, int(r.step)): r.phase for r in records}
    for L in rep.layers:
        parts.append(f"<h3>{escape(L)}</h3>")
        parts.extend(_gallery_item(rep, L, s, phase_at.get((L, s))) for s in rep.gallery_steps)
    return "\n".join(parts)


def _gallery_item(rep: _Report, layer: str, step: int, phase: Optional[str]) -> str:
    """The two-panel ESD figure of ``layer`` at ``step``, or the note saying why it could not be drawn."""
    from . import figures as F

    at = rep.when(step)
    what = f"the ESD of {layer} at {at}"
    try:
        f = rep.fits(layer, step)
    except Exception as e:  # noqa: BLE001 - a missing or unreadable ESD is shown and counted
        return rep.problems.note(what, e)
    cap = f"{escape(layer)} at {escape(at)}: {f.evals.size} eigenvalues"
    if f.pl is None:
        cap += f" (no power-law fit: {escape(f.pl_note)})"
    if f.mp is None:
        cap += f" (no MP fit: {escape(f.mp_note)})"
    build = lambda: F.plot_esd_panel(
        f.evals,
        fit=f.pl,
        mp=f.mp,
        title=f"{layer} at {at}",  # noqa: E731
        phase=None if is_missing(phase) else phase,
        fit_powerlaw_if_missing=False,
    )
    return render_figure(rep.problems, what, build, rep.out, f"esd_{image_stem(layer)}_{step}.png", rep.dpi, cap)


def _section_diagnostics(rep: _Report) -> str:
    """For each layer with a power-law fit at the last snapshot: CCDF, KS landscape and scree plot."""
    parts = [
        "<p>For each layer with a power-law fit: the CCDF with the fit, the Kolmogorov-Smirnov distance for "
        "every candidate x<sub>min</sub> (the fit takes the minimum), and the scree plot with the tail size K "
        "and the MP edge.</p>"
    ]
    no_fit: list[str] = []
    for L in rep.layers:
        what = f"the fit diagnostics of {L}"
        try:
            f = rep.fits(L, rep.last)
        except Exception as e:  # noqa: BLE001 - a missing or unreadable ESD is shown and counted
            parts.append(rep.problems.note(what, e))
            continue
        if f.pl is None:
            no_fit.append(f"{L} ({f.pl_note})")
            continue
        title = f"{L} at {rep.when(rep.last)}"
        parts.append(
            render_figure(
                rep.problems,
                what,
                functools.partial(_diagnostics_figure, f, title),
                rep.out,
                f"diag_{image_stem(L)}.png",
                rep.dpi,
                f"{escape(L)}: fit diagnostics",
            )
        )
    if no_fit:
        parts.append(f'<p class="sub">No power-law fit, so no diagnostics: {escape("; ".join(no_fit))}.</p>')
    return "\n".join(parts)


def _diagnostics_figure(f: LayerFits, title: str) -> Any:
    """Three panels: CCDF with the power-law fit, KS distance against xmin, scree plot."""
    from matplotlib.figure import Figure

    from . import figures as F

    fig = Figure(figsize=(15.5, 3.9), dpi=100, layout="constrained")
    axs = fig.subplots(1, 3)
    F.plot_esd(f.evals, fit=f.pl, kind="ccdf", ax=axs[0], title="CCDF with power-law fit")
    if f.pl.ks_landscape is not None:
        F.plot_ks_landscape(f.evals, fit=f.pl, ax=axs[1])
    else:  # the analyzer samples the landscape of the standard scan only
        axs[1].text(0.5, 0.5, f"no KS landscape stored ({f.pl.method} fit)", ha="center", transform=axs[1].transAxes)
        axs[1].set_axis_off()
    F.plot_scree(f.evals, fit=f.pl, mp=f.mp, ax=axs[2])
    fig.suptitle(title, fontsize=12)
    return fig


def _section_alerts(rep: _Report) -> str:
    """Every alert that fired: step, epoch, layer, rule, severity, value, message."""
    alerts = rep.run.alerts
    if not len(alerts):
        return "<p>No alerts fired in this run.</p>"
    rows = []
    for r in alerts.itertuples():
        sev = escape(str(r.severity or ""))
        layer = "(model)" if is_missing(r.layer) or not r.layer else str(r.layer)
        rows.append(
            [
                fmt(r.step),
                fmt(r.epoch),
                escape(layer),
                escape(str(r.rule)),
                f'<span class="sev-{sev}">{sev}</span>',
                fmt(r.value),
                escape(str(r.message or "")),
            ]
        )
    return table(["step", "epoch", "layer", "rule", "severity", "value", "message"], rows, left=(2, 3, 4, 6))


def _section_config(rep: _Report) -> str:
    """The config given to the monitor, and its metadata (versions, settings) folded away."""
    run = rep.run
    if run.config:
        html = table(
            ["key", "value"],
            [[escape(str(k)), escape(json.dumps(v, default=str))] for k, v in sorted(run.config.items())],
            left=(0, 1),
        )
    else:
        html = "<p>No config was given to the monitor.</p>"
    if run.meta:
        html += (
            "<details><summary>Monitor metadata (versions, settings)</summary><pre>"
            + escape(json.dumps(run.meta, indent=1, default=str))
            + "</pre></details>"
        )
    return html
