"""Phase history of runs: each layer's phase at every stored snapshot, its changes, the phases seen."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from ..phases import PHASES
from .pagekit import is_missing
from .sweep import PathLike, _load, _unique_names, _value_label

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..store import Run


def phase_history(
    runs: Sequence[Union[PathLike, "Run"]], *, layers: Optional[Sequence[str]] = None, keys: Sequence[str] = ()
) -> "pd.DataFrame":
    """Every layer's phase at every snapshot of every run, from the run stores' per-step phases.

    Columns ``run`` (named as in :func:`final_metrics_table`), the config
    ``keys`` (e.g. the swept parameter), ``step``, ``epoch``, ``layer`` and
    ``phase`` (``None`` where the layer got no phase, e.g. too few
    eigenvalues); rows in run, layer, step order.
    """
    loaded = _load(runs)
    return _history(list(zip(_unique_names(loaded), loaded)), layers, keys)


def _history(
    named: Sequence[tuple[str, "Run"]], layers: Optional[Sequence[str]], keys: Sequence[str]
) -> "pd.DataFrame":
    """:func:`phase_history` of runs already loaded and named, in the given order."""
    import pandas as pd

    frames = []
    for name, r in named:
        h = r.layer_status[["step", "layer"]].merge(
            r.phases[["step", "layer", "phase"]], on=["step", "layer"], how="left"
        )
        h = h.merge(r.snapshots[["step", "epoch"]], on="step", how="inner")
        if layers is not None:
            h = h[h["layer"].isin(list(layers))]
        order = {L: i for i, L in enumerate(layers if layers is not None else r.layer_names)}
        h = h.assign(_o=h["layer"].map(order)).sort_values(["_o", "layer", "step"], kind="stable")
        h = h.drop(columns="_o").assign(run=name, **{k: [r.config.get(k)] * len(h) for k in keys})
        frames.append(h)
    cols = ["run", *keys, "step", "epoch", "layer", "phase"]
    out = pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)
    out["phase"] = [None if is_missing(p) or not p else str(p) for p in out["phase"]]
    return out


def phase_changes(history: "pd.DataFrame") -> "pd.DataFrame":
    """One row per change of a layer's phase between consecutive snapshots of a run.

    ``history`` is :func:`phase_history`'s table.  Columns ``run``,
    ``layer``, ``step``, ``epoch`` (the first snapshot in the new phase),
    ``before`` and ``after`` (``None``: no phase at that snapshot).
    """
    import pandas as pd

    rows = []
    for (run, layer), h in history.groupby(["run", "layer"], sort=False):
        h = h.sort_values("step")
        prev: Any = _NOTHING
        for step, epoch, ph in zip(h["step"], h["epoch"], h["phase"]):
            ph = None if is_missing(ph) or not ph else str(ph)
            if prev is not _NOTHING and ph != prev:
                rows.append(
                    {
                        "run": run,
                        "layer": layer,
                        "step": int(step),
                        "epoch": None if is_missing(epoch) else int(epoch),
                        "before": prev,
                        "after": ph,
                    }
                )
            prev = ph
    return pd.DataFrame(rows, columns=["run", "layer", "step", "epoch", "before", "after"])


_NOTHING = object()


def phases_seen(frame: "pd.DataFrame", *, by: str = "run") -> dict[str, dict[str, dict[str, list[str]]]]:
    """Where each phase occurs among the rows of ``frame``: ``{phase: {layer: {value of by: [runs]}}}``.

    ``frame`` has columns ``run``, ``layer``, ``phase`` and ``by`` (``"run"``
    or a config key such as the swept parameter); pass
    :func:`final_metrics_table` for the final snapshots or
    :func:`phase_history` for every snapshot.  Every one of the 5+1 phases is
    a key, in :data:`~wwmonitor.phases.PHASES` order (an empty dict: not
    seen), then any other phase name found; rows without a phase are left
    out.  Values of ``by`` are keyed by their label (``8``, ``0.001``).
    """
    out: dict[str, dict[str, dict[str, list[str]]]] = {p: {} for p in PHASES}
    for run, layer, ph, v in zip(frame["run"], frame["layer"], frame["phase"], frame[by]):
        if is_missing(ph) or not ph:
            continue
        runs = out.setdefault(str(ph), {}).setdefault(str(layer), {}).setdefault(_value_label(v), [])
        if run not in runs:
            runs.append(run)
    return out
