"""The phase sections of a comparison page: phases seen (where, in which runs) and phase changes."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Mapping, Sequence

from ..phases import PHASES
from .compare_context import MAX_TIMELINE_ROWS, _Comparison, _when
from .history import phase_changes, phases_seen
from .pagekit import fmt, is_missing, phase_badge, render_figure, table
from .sweep import _value_label

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


#: keeps a badge and its caption on one line
_NOWRAP = '<span style="white-space:nowrap">'


# --- the phases of every run: which were seen, and when each layer changed ---------------------------------


def _section_phases_seen(cmp: _Comparison) -> str:
    """Which of the 5+1 phases the runs show, in which layers and runs (or swept values), at the end and during."""
    by = cmp.param or "run"
    final, during = phases_seen(cmp.df, by=by), phases_seen(cmp.history, by=by)
    totals: dict[str, int] = {}
    for v in cmp.df.drop_duplicates("run")[by]:
        totals[_value_label(v)] = totals.get(_value_label(v), 0) + 1
    seen = [p for p, v in final.items() if v]
    earlier = [p for p, v in during.items() if v and p not in seen]
    never = [p for p, v in during.items() if not v and not final.get(p)]
    badges = lambda ps: " ".join(phase_badge(p) for p in ps) or "none"  # noqa: E731
    who = "these runs show" if cmp.by_run else "this sweep shows"
    parts = [
        f"<p>At the final snapshot {who} <b>{len(seen)}</b> of the {len(PHASES)} phases: {badges(seen)}. "
        f"Seen only earlier in training: {badges(earlier)}. Not seen at any snapshot: {badges(never)}.</p>"
    ]
    where = "run" if cmp.by_run else f"{escape(cmp.param or '')} value"
    head = ["phase", f"final snapshot (layer: {where}s)", f"any snapshot during training (layer: {where}s)"]
    rows = [
        [phase_badge(p), _where_html(cmp, final.get(p, {}), totals), _where_html(cmp, during[p], totals)]
        for p in during
    ]
    parts.append(table(head, rows, left=(0, 1, 2)))
    ex = next((v for v, n in totals.items() if n > 1), None)
    if ex is not None:
        parts.append(
            f'<p class="sub">"{escape(ex)} (1/{totals[ex]} runs)": seen in 1 of the {totals[ex]} runs with '
            f"{escape(by)} = {escape(ex)}.</p>"
        )
    parts.append(_unphased_note(cmp, by))
    return "\n".join(parts)


def _where_html(cmp: _Comparison, seen: Mapping[str, Mapping[str, Sequence[str]]], totals: Mapping[str, int]) -> str:
    """``fc1: 8, 64`` per layer: where a phase was seen (``not seen`` when nowhere).

    A value shared by several runs (repeats over seeds) gets the count of its runs that show the phase:
    ``fc1: 8 (2/2 runs), 64 (1/2 runs)``.
    """
    if not seen:
        return '<span style="color:#8c959f">not seen</span>'
    lines = []
    for L in [*cmp.layers, *[k for k in seen if k not in cmp.layers]]:
        if L in seen:
            vals = [
                escape(v) + (f" ({len(rs)}/{totals[v]} runs)" if totals.get(v, 1) > 1 else "")
                for v, rs in seen[L].items()
            ]
            lines.append(f"<b>{escape(L)}</b>: {', '.join(vals)}")
    return "<br>".join(lines)


def _unphased_note(cmp: _Comparison, by: str) -> str:
    """The layers without a phase at the final snapshot (not fitted), with the runs or values where that is so."""
    missing: dict[str, list[str]] = {}
    for d in cmp.df.to_dict("records"):
        if is_missing(d.get("phase")) or not d.get("phase"):
            missing.setdefault(str(d["layer"]), []).append(_value_label(d[by]))
    if not missing:
        return ""
    items = "; ".join(f"{escape(L)} ({escape(', '.join(dict.fromkeys(v)))})" for L, v in missing.items())
    return f'<p class="sub">No phase at the final snapshot (the layer could not be classified): {items}.</p>'


def _section_phase_changes(cmp: _Comparison) -> str:
    """A timeline figure of each layer's phase in each run, and the table of every change with its snapshot."""
    from . import figures as F

    hist = cmp.history
    if not len(hist) or all(p is None for p in hist["phase"]):
        return "<p>No phases recorded (phase classification off).</p>"
    changes = phase_changes(hist)
    n_pairs = int(hist.groupby(["run", "layer"]).ngroups)
    changed = int(changes.groupby(["run", "layer"]).ngroups) if len(changes) else 0
    parts = [
        f"<p>{changed} of {n_pairs} layers (counted per run) changed phase at least once, {len(changes)} "
        f"change{'s' if len(changes) != 1 else ''} in all"
        + ("; the others kept one phase from their first to their last snapshot" if changed < n_pairs else "")
        + ".</p>"
    ]
    shown = cmp.layers[: max(1, MAX_TIMELINE_ROWS // max(1, len(cmp.names)))]
    labels = _timeline_labels(cmp)
    sub = hist[hist["layer"].isin(shown)].assign(run=lambda h: h["run"].map(labels))
    cap = (
        f"Each bar is one layer of one run over training, coloured by its phase at each snapshot (against the "
        f"{cmp.x_axis})"
        + (f"; the first {len(shown)} of {len(cmp.layers)} layers" if len(shown) < len(cmp.layers) else "")
        + ". Every layer is in the table below."
    )
    parts.append(
        render_figure(
            cmp.problems,
            "the phase timeline",
            lambda: F.plot_phase_changes(sub, x=cmp.x_axis, runs=[labels[n] for n in cmp.names], layers=shown),
            cmp.out,
            "phase_changes.png",
            cmp.dpi,
            cap,
        )
    )
    parts.append(_changes_table(cmp, changes))
    return "\n".join(parts)


def _timeline_labels(cmp: _Comparison) -> dict[str, str]:
    """Each run's label in the timeline (``batch_size=8`` or its name), made unique with the name when needed."""
    labels = {n: cmp.long_label(n) for n in cmp.names}
    shared = {v for v in labels.values() if list(labels.values()).count(v) > 1}
    return {n: f"{v} [{n}]" if v in shared else v for n, v in labels.items()}


def _changes_table(cmp: _Comparison, changes: "pd.DataFrame") -> str:
    """One row per run and layer: its phases over training, each change with the snapshot where it was first seen."""
    keys = [k for k in (cmp.param, cmp.group) if k is not None]
    by_pair = {key: g.to_dict("records") for key, g in changes.groupby(["run", "layer"], sort=False)}
    rows = []
    for (run, layer), h in cmp.history.groupby(["run", "layer"], sort=False):
        first = h.sort_values("step").iloc[0]
        seq = (
            f"{_NOWRAP}{phase_badge(first['phase'])} <small>from {escape(_when(first['step'], first['epoch']))}"
            "</small></span>"
        )
        pair = by_pair.get((run, layer), [])
        for c in pair:
            when = escape(_when(c["step"], c["epoch"]))
            seq += f" {_NOWRAP}→ {phase_badge(c['after'])} <small>at {when}</small></span>"
        rows.append([fmt(first[k]) for k in keys] + [escape(str(run)), escape(str(layer)), seq, fmt(len(pair))])
    head = keys + ["run", "layer", "phases over training", "changes"]
    return table(head, rows, left=tuple(range(len(head) - 1))) + (
        '<p class="sub">Each change is dated by the first snapshot in the new phase (the phases of the snapshots '
        "in between are not known). A dash (–) is a snapshot where the layer got no phase.</p>"
    )
