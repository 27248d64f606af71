"""Ranking runs without test data: model-level spectral summaries against a recorded validation metric."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

import numpy as np

from .pagekit import is_missing
from .sweep import PathLike, _load, _unique_names, _value_label

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..store import Run


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


# --- ranking runs by their spectra against a validation metric ---------------------------------------------


def eval_metrics(run: "Run") -> dict[str, float]:
    """The evaluation metrics ``run`` recorded: its store's :data:`EVAL_META_KEY` entry, then any ``val_*``
    model-level metric of its final snapshot (``layer == "__model__"``) not already there; finite numbers only."""
    from ..store_format import DB_NAME
    from ..store_reader import _open_ro

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
