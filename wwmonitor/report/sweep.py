"""Sweep statistics: which config key was swept, each run's final metrics, Spearman correlations."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..store import Run


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
