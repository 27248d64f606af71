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
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ..phases import PHASES
from .html import (
    OutputError,
    Problems,
    Section,
    fmt,
    image_stem,
    is_missing,
    nav,
    page,
    phase_badge,
    prepare_out_dir,
    render_figure,
    render_section,
    select_layers,
    table,
    write_text,
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

#: metrics shown against the swept parameter
COMPARE_METRICS: tuple[str, ...] = ("alpha", "mp_softrank", "stable_rank", "num_spikes")
#: extra columns kept in the comparison table
TABLE_EXTRA: tuple[str, ...] = ("D", "num_pl_spikes", "log_spectral_norm", "mp_sigma2", "lambda_plus", "rank_loss")
#: config keys that are never the swept parameter (derived or bookkeeping)
NOT_SWEPT: frozenset[str] = frozenset(
    {"seed", "run_name", "run_id", "name", "steps_per_epoch", "created", "output", "out", "run_dir", "log_dir"}
)
#: preferred sweep keys when several differ (first match wins)
PREFERRED: tuple[str, ...] = ("batch_size", "lr", "learning_rate", "weight_decay", "dropout", "width", "depth")
#: metrics whose mean over layers is drawn and tabulated per run when runs are compared side by side
RUN_METRICS: tuple[str, ...] = ("alpha", "alpha_weighted", "stable_rank", "mp_softrank")
#: most layers drawn in the per-layer curves of runs side by side (the tables list every layer)
MAX_CURVE_LAYERS = 8
#: most bars (run x layer) in the phase timeline figure (the table lists every layer)
MAX_TIMELINE_ROWS = 80
#: run_meta key holding the evaluation metrics a run recorded ({name: value}; written by
#: :func:`wwmonitor.integrations.record_eval_metrics`)
EVAL_META_KEY = "eval_metrics"
#: model-level spectral summaries ranked against the validation metric; for each, lower is better (HTSR)
RANK_SUMMARIES: tuple[str, ...] = (
    "mean_alpha",
    "mean_alpha_weighted",
    "mean_log_norm",
    "mean_log_spectral_norm",
    "mean_stable_rank",
    "mean_mp_softrank",
)
#: validation metrics ``val_metric="auto"`` prefers (first found in every ranked run); then any ``val_*``
PREFERRED_VAL: tuple[str, ...] = ("val_acc", "val_accuracy", "val_loss")
#: a validation metric whose name contains one of these is better when lower
LOWER_IS_BETTER_WORDS: tuple[str, ...] = ("loss", "err", "mse", "mae", "perplexity", "ppl", "nll")

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


def _unique_names(runs: Sequence["Run"]) -> list[str]:
    """Each run's name; a name shared by several runs gets its folder added (``bs8 (sweepA/bs8)``), then ``#n``."""
    names = [r.name for r in runs]
    out = [f"{r.name} ({r.path.parent.name}/{r.path.name})" if names.count(r.name) > 1 else r.name for r in runs]
    counts = {n: out.count(n) for n in out}
    seen: dict[str, int] = {}
    for i, n in enumerate(out):
        if counts[n] > 1:
            seen[n] = seen.get(n, 0) + 1
            out[i] = f"{n} #{seen[n]}"
    return out


def _value_label(v: Any) -> str:
    """A config value as shown on the page (``0.001``, ``8``, ``adam``)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def differing_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Keys present in every config whose values differ between the runs (:data:`NOT_SWEPT` keys left out)."""
    keys = set().union(*[set(c) for c in configs]) if configs else set()
    return [
        k
        for k in sorted(keys)
        if k not in NOT_SWEPT and all(k in c for c in configs) and len({_hashable(c.get(k)) for c in configs}) > 1
    ]


def _config_differences(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key whose value differs between the configs or is missing from some (``seed`` included)."""
    keys = set().union(*[set(c) for c in configs]) if configs else set()
    missing = object()
    return [k for k in sorted(keys) if len({_hashable(c.get(k, missing)) for c in configs}) > 1]


def sweep_param(
    configs: Sequence[Mapping[str, Any]],
    param: Optional[str] = None,
    group: Optional[str] = "auto",
    *,
    by_run: bool = False,
) -> tuple[Optional[str], Optional[str]]:
    """``(param, group)`` as :func:`detect_param`, or ``(None, None)``: compare the runs side by side by name.

    Side by side when ``by_run`` is true, or when no ``param`` is given and
    no config key differs between the runs (identical configs, no configs,
    configs that differ only in ``seed`` or bookkeeping keys).
    """
    if by_run:
        if param is not None:
            raise ValueError(f"compare: a swept parameter ({param!r}) and by_run=True exclude each other")
        return None, None
    if param is None and not differing_keys(configs):
        return None, None
    return detect_param(configs, param, group)


def detect_param(
    configs: Sequence[Mapping[str, Any]], param: Optional[str] = None, group: Optional[str] = "auto"
) -> tuple[str, Optional[str]]:
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
            raise ValueError(
                f"compare: --param {param!r} is missing from the config of run(s) {missing}; "
                f"config keys: {sorted(keys)}"
            )
    else:
        differ = differing_keys(configs)
        if not differ:
            raise ValueError(
                "compare: the runs' configs do not differ in any key, so there is no swept parameter to compare "
                f"against (config keys: {sorted(keys)}); pass --param KEY, or compare them side by side "
                "(write_comparison / final_metrics_table do so when no key differs)"
            )
        pref = [k for k in PREFERRED if k in differ]
        numeric = [
            k
            for k in differ
            if all(isinstance(c.get(k), (int, float)) and not isinstance(c.get(k), bool) for c in configs)
        ]
        param = pref[0] if pref else (numeric[0] if numeric else differ[0])
    if group == "auto":
        g = "seed"
        group = (
            g
            if (g != param and all(g in c for c in configs) and len({_hashable(c.get(g)) for c in configs}) > 1)
            else None
        )
    elif group is not None and any(group not in c for c in configs):
        raise ValueError(f"compare: group key {group!r} is missing from some run configs")
    return param, group


def final_metrics_table(
    runs: Sequence[Union[PathLike, "Run"]],
    *,
    param: Optional[str] = None,
    group: Optional[str] = "auto",
    step: str = "last",
    by_run: bool = False,
) -> "pd.DataFrame":
    """One row per (run, layer) with the metrics of the run's final snapshot.

    Columns: ``run`` (the run's name; names shared by several runs get
    their folder added), ``path``, the parameter and the group (if any),
    ``layer``, ``phase``, ``status``, ``step``, ``epoch`` and every metric.
    The parameter and group names are stored in ``df.attrs["param"]`` and
    ``df.attrs["group"]`` (both ``None`` when the runs are compared side by
    side, see :func:`sweep_param`: the rows then keep the order of
    ``runs``); ``df.attrs["order_note"]`` says why the rows are not sorted
    by the parameter when they cannot be (mixed value types).
    """
    import pandas as pd

    loaded = _load(runs)
    param, group = sweep_param([r.config for r in loaded], param, group, by_run=by_run)
    frames = []
    for r, name in zip(loaded, _unique_names(loaded)):
        if not r.steps:
            raise ValueError(f"compare: run {r.name!r} at {str(r.path)!r} has no analysed snapshots")
        wide = r.to_pandas()
        last = r.steps[-1] if step == "last" else int(step)
        w = wide[wide["step"] == last].copy()
        w.insert(0, "run", name)
        w.insert(1, "path", str(r.path))
        for i, key in enumerate(k for k in (param, group) if k is not None):
            w.insert(2 + i, key, r.config.get(key))
        frames.append(w)
    df = pd.concat(frames, ignore_index=True)
    df.attrs["param"], df.attrs["group"], df.attrs["order_note"] = param, group, ""
    return df if param is None else _sort_by_param(df, param, group)


def _sort_by_param(df: "pd.DataFrame", param: str, group: Optional[str]) -> "pd.DataFrame":
    """``df`` sorted by the parameter, the group and the run; unsorted, with a note in its attrs, for mixed types."""
    sort = [param] + ([group] if group else []) + ["run"]
    order_note = ""
    try:
        df = df.sort_values(sort, kind="stable", ignore_index=True)
    except TypeError as e:  # mixed types in the parameter: keep the given order, and say so
        types = sorted({type(v).__name__ for v in df[param]})
        order_note = (
            f"the values of {param!r} have mixed types ({', '.join(types)}) and cannot be sorted ({e}); "
            "the runs are shown in the order given"
        )
    df.attrs["param"], df.attrs["group"], df.attrs["order_note"] = param, group, order_note
    return df


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
#: keeps a badge and its caption on one line
_NOWRAP = '<span style="white-space:nowrap">'


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


# --- ranking runs by their spectra against a validation metric ---------------------------------------------


def eval_metrics(run: "Run") -> dict[str, float]:
    """The evaluation metrics ``run`` recorded: its store's :data:`EVAL_META_KEY` entry, then any ``val_*``
    model-level metric of its final snapshot (``layer == "__model__"``) not already there; finite numbers only."""
    from ..store import DB_NAME, _open_ro

    out: dict[str, float] = {}
    db = run.path / DB_NAME
    if db.is_file():
        conn = _open_ro(db)
        try:
            row = conn.execute("SELECT value FROM run_meta WHERE key=?", (EVAL_META_KEY,)).fetchone()
        finally:
            conn.close()
        stored = json.loads(row[0]) if row is not None else {}
        for k, v in stored.items() if isinstance(stored, dict) else ():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                out[str(k)] = float(v)
    if run.steps and len(run.metrics):
        m = run.metrics
        last = m[(m["step"] == run.steps[-1]) & (m["layer"] == "__model__") & m["metric"].str.startswith("val_")]
        for k, v in zip(last["metric"], last["value"]):
            if k not in out and not is_missing(v) and math.isfinite(float(v)):
                out[str(k)] = float(v)
    return out


def val_higher_is_better(name: str) -> bool:
    """Whether a larger value of the validation metric ``name`` is better (``False`` for losses and errors)."""
    low = name.lower()
    return not any(w in low for w in LOWER_IS_BETTER_WORDS)


def _choose_val_metric(evals: Sequence[Mapping[str, float]], val_metric: Optional[str]) -> Optional[str]:
    """The validation metric to rank by: ``val_metric``, or (``"auto"``) the first of :data:`PREFERRED_VAL`,
    then of the other ``val_*`` names, recorded by most runs (at least two)."""
    if val_metric is None or val_metric == "none":
        return None
    if val_metric != "auto":
        return val_metric
    counts: dict[str, int] = {}
    for e in evals:
        for k in e:
            if k.startswith("val_"):
                counts[k] = counts.get(k, 0) + 1
    names = [k for k in PREFERRED_VAL if k in counts] + sorted(k for k in counts if k not in PREFERRED_VAL)
    names = [k for k in names if counts[k] >= 2]
    return max(names, key=lambda k: counts[k]) if names else None  # max keeps the first among equal counts


def ranking_frame(
    runs: Sequence[Union[PathLike, "Run"]],
    *,
    val_metric: Optional[str] = "auto",
    group: Optional[str] = None,
    names: Optional[Sequence[str]] = None,
) -> "pd.DataFrame":
    """One row per run that recorded the validation metric: ``run``, ``path``, the ``group`` key (if any),
    the validation metric, the ``step`` and ``epoch`` of the run's final snapshot and each
    :data:`RANK_SUMMARIES` entry there.

    The summaries are the model-level means over every monitored layer (the ``mean_*`` values the monitor
    stores and the sweep integrations report, e.g. ``ww/mean_alpha``).  ``df.attrs``: ``val_metric`` (``None``
    when no metric was found: the frame is then empty), ``higher_is_better``, ``group``, ``n_runs`` (runs given)
    and ``missing`` (names of the runs without the metric).
    """
    import pandas as pd

    loaded = _load(runs)
    names = list(names) if names is not None else _unique_names(loaded)
    evals = [eval_metrics(r) for r in loaded]
    val = _choose_val_metric(evals, val_metric)
    rows, missing = [], []
    for name, r, ev in zip(names, loaded, evals):
        if val is None or val not in ev or not r.steps:
            missing.append(name)
            continue
        summ = r.summary
        last = summ[summ["step"] == r.steps[-1]]
        row: dict[str, Any] = {"run": name, "path": str(r.path)}
        if group is not None:
            row[group] = r.config.get(group)
        row[val] = ev[val]
        row["step"] = int(r.steps[-1])
        epoch: Any = last["epoch"].iloc[0] if len(last) else None
        row["epoch"] = None if is_missing(epoch) else int(epoch)
        for m in RANK_SUMMARIES:
            row[m] = (
                float(last[m].iloc[0])
                if m in last.columns and len(last) and not is_missing(last[m].iloc[0])
                else float("nan")
            )
        rows.append(row)
    cols = (
        ["run", "path"] + ([group] if group else []) + ([val] if val else []) + ["step", "epoch"] + list(RANK_SUMMARIES)
    )
    df = pd.DataFrame(rows, columns=cols)
    df.attrs.update(
        val_metric=val,
        higher_is_better=val_higher_is_better(val) if val else None,
        group=group,
        n_runs=len(loaded),
        missing=missing,
    )
    return df


def _ranking_groups(df: "pd.DataFrame") -> list[tuple[str, "pd.DataFrame"]]:
    """``(label, rows)`` per group of a :func:`ranking_frame` (sorted), then ``"all runs"`` when grouped."""
    group = df.attrs.get("group")
    if not group:
        return [("all runs", df)]
    out = [(f"{group} = {_value_label(g)}", d) for g, d in df.groupby(group, sort=True)]
    return out + ([("all runs", df)] if len(out) > 1 else [])


def ranking_spearman(df: "pd.DataFrame") -> "pd.DataFrame":
    """The Spearman rank correlation of each summary with the validation metric, per group and over all runs.

    ``df`` is :func:`ranking_frame`'s table.  Columns ``group`` (``"seed = 0"`` ..., ``"all runs"``),
    ``metric``, ``n`` (runs with both values) and ``rho`` (``scipy.stats.spearmanr``; NaN below 3 runs or
    when either side is constant).  Against a validation metric where higher is better a summary that ranks
    runs well (lower is better) has ``rho`` near −1; against a loss, near +1.
    """
    import pandas as pd
    from scipy.stats import spearmanr

    val = df.attrs.get("val_metric")
    rows = []
    if val:
        for label, d in _ranking_groups(df):
            for m in RANK_SUMMARIES:
                t = d[[val, m]].dropna()
                x, y = np.asarray(t[m], dtype=float), np.asarray(t[val], dtype=float)
                rho = (
                    float("nan") if len(t) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0 else float(spearmanr(x, y).statistic)
                )
                rows.append({"group": label, "metric": m, "n": int(len(t)), "rho": rho})
    return pd.DataFrame(rows, columns=["group", "metric", "n", "rho"])


def ranking_picks(df: "pd.DataFrame") -> "pd.DataFrame":
    """Per group: the best run by the validation metric, and the run each summary would pick (its lowest value).

    Columns ``group``, ``metric`` (``"validation"`` for the best run itself), ``run``, ``value`` (the
    summary's value, or the validation value), ``val`` (that run's validation value), ``best`` (whether it is a
    best run by validation) and ``gap`` (how much worse its validation value is than the best, ≥ 0).
    """
    import pandas as pd

    val = df.attrs.get("val_metric")
    higher = bool(df.attrs.get("higher_is_better"))
    rows = []
    if val:
        for label, d in _ranking_groups(df):
            d = d.dropna(subset=[val])
            if not len(d):
                continue
            best_val = d[val].max() if higher else d[val].min()
            b = d[d[val] == best_val].iloc[0]
            rows.append(
                {
                    "group": label,
                    "metric": "validation",
                    "run": b["run"],
                    "value": float(b[val]),
                    "val": float(b[val]),
                    "best": True,
                    "gap": 0.0,
                }
            )
            for m in RANK_SUMMARIES:
                t = d.dropna(subset=[m])
                if not len(t):
                    continue
                p = t.loc[t[m].idxmin()]
                gap = (best_val - p[val]) if higher else (p[val] - best_val)
                rows.append(
                    {
                        "group": label,
                        "metric": m,
                        "run": p["run"],
                        "value": float(p[m]),
                        "val": float(p[val]),
                        "best": bool(p[val] == best_val),
                        "gap": float(gap),
                    }
                )
    return pd.DataFrame(rows, columns=["group", "metric", "run", "value", "val", "best", "gap"])


def _run_label(row: Any, param: Optional[str], group: Optional[str]) -> str:
    """A run's column label: its parameter value, and ``·group`` when grouped (its name without a parameter)."""
    if param is None:
        return str(row["run"])
    lab = _value_label(row[param])
    if group:
        lab += f"·{row[group]}"
    return lab


def _when(step: Any, epoch: Any) -> str:
    """``"epoch 3 (step 120)"``, or ``"step 120"`` for a snapshot without an epoch."""
    return f"step {int(step)}" if is_missing(epoch) else f"epoch {int(epoch)} (step {int(step)})"


@dataclass
class _Comparison:
    """Everything the sections of the comparison page share.

    ``runs`` and ``names`` are in page order (sorted by the parameter, or
    as given when the runs are compared side by side, ``param is None``);
    ``history`` is the :func:`phase_history` of the compared layers.
    """

    runs: list["Run"]
    names: list[str]
    df: "pd.DataFrame"
    history: "pd.DataFrame"
    param: Optional[str]
    group: Optional[str]
    layers: list[str]
    esd_layer: Optional[str]
    metrics: Sequence[str]
    out: Path
    dpi: int
    notes_html: str = ""
    forced_by_run: bool = False
    problems: Problems = field(default_factory=Problems)
    #: :func:`ranking_frame` of the runs (empty: no validation metric recorded)
    ranking: Optional["pd.DataFrame"] = None

    @property
    def by_run(self) -> bool:
        """Whether the runs are compared side by side by name (no swept parameter)."""
        return self.param is None

    @property
    def by_name(self) -> dict[str, "Run"]:
        """Each run under its (unique) name."""
        return dict(zip(self.names, self.runs))

    @property
    def numeric_param(self) -> bool:
        """Whether every value of the swept parameter is a number (then it is plotted and correlated)."""
        return self.param is not None and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            for v in self.df[self.param]
        )

    @property
    def x_axis(self) -> str:
        """``"epoch"`` when every snapshot of every run has one, else ``"step"``."""
        return "epoch" if len(self.history) and self.history["epoch"].notna().all() else "step"

    def long_label(self, run: str) -> str:
        """A run as named in figures: ``batch_size=8, seed=0`` in a sweep, else the run's name."""
        if self.by_run:
            return run
        row = self.df[self.df["run"] == run].iloc[0]
        return f"{self.param}={_value_label(row[self.param])}" + (
            f", {self.group}={row[self.group]}" if self.group else ""
        )


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


#: one panel of the ESD grid: (title, eigenvalues, power-law fit, MP fit, phase)
EsdItem = tuple[str, Any, Any, Any, Optional[str]]


def _esd_items(cmp: _Comparison, sel: "pd.DataFrame") -> tuple[list[EsdItem], list[str]]:
    """The ESD panel of each selected run, and a counted note for each run whose ESD cannot be read."""
    from .html import layer_fits

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
