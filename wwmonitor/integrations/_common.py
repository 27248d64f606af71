"""Pieces shared by the sweep integrations: flat spectral metrics for schedulers, evaluation metrics in the store.

Framework-free: imports neither Ray nor Optuna (nor torch).
"""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from ..phases import PHASES
from ..records import Alert, SnapshotResult

__all__ = [
    "PREFIX",
    "SUMMARY_KEYS",
    "flat_metrics",
    "ww_metrics",
    "record_eval_metrics",
    "metric_key",
    "lower_is_better",
]

#: prefix of every key :func:`flat_metrics` returns
PREFIX = "ww/"
#: model-level summaries always present in :func:`flat_metrics` (NaN until a layer has a value)
SUMMARY_KEYS: tuple[str, ...] = (
    "mean_alpha",
    "mean_alpha_weighted",
    "mean_log_norm",
    "mean_log_spectral_norm",
    "mean_stable_rank",
    "mean_mp_softrank",
)


def metric_key(name: str, prefix: str = PREFIX) -> str:
    """The flat key of a summary: ``"mean_alpha"`` -> ``"ww/mean_alpha"`` (a key already prefixed is kept)."""
    return name if name.startswith(prefix) else prefix + name


def lower_is_better(name: str) -> bool:
    """Whether a smaller value of a wwmonitor summary predicts a better model (heavy-tailed self-regularization).

    True for the means of alpha, alpha_weighted, the log norms, the stable rank and the MP soft rank; False
    for anything else (phase counts, alert counts)."""
    base = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    return base in SUMMARY_KEYS


def flat_metrics(
    result: Optional[SnapshotResult], alerts: Iterable[Alert] = (), *, prefix: str = PREFIX
) -> dict[str, float]:
    """One analysed snapshot as flat numeric keys for a scheduler, stopper or tracker.

    Keys (``prefix`` = ``"ww/"``):

    * ``ww/step``, ``ww/epoch`` (NaN without one) of the snapshot;
    * ``ww/mean_alpha``, ``ww/mean_alpha_weighted``, ``ww/mean_log_norm``, ``ww/mean_log_spectral_norm``,
      ``ww/mean_stable_rank``, ``ww/mean_mp_softrank``: the model-level means over the layers that have a
      value (always present, NaN when no layer has one, so that a scheduler's metric is never missing);
      ``ww/num_layers``, ``ww/num_ok``;
    * ``ww/phase_count/<phase>``: layers in each of the 5+1 phases (0 when none), and any other phase seen;
    * ``ww/alerts``: alerts of this snapshot; ``ww/alerts_total``: alerts in ``alerts`` (those fired so
      far); ``ww/alerts_stop``: 1 when one of those stops training (a rule in ``stop_on``), else 0;
      ``ww/alert/<rule>``: how many alerts of each rule fired so far.

    ``result`` ``None`` (nothing analysed yet) gives the same keys with NaN summaries and zero counts.
    """
    out: dict[str, float] = {}
    summary = result.summary if result is not None else {}
    out[prefix + "step"] = float(result.step) if result is not None else math.nan
    out[prefix + "epoch"] = float(result.epoch) if result is not None and result.epoch is not None else math.nan
    for k in SUMMARY_KEYS:
        v = summary.get(k)
        out[prefix + k] = float(v) if v is not None and math.isfinite(float(v)) else math.nan
    for k in ("num_layers", "num_ok"):
        out[prefix + k] = float(summary.get(k, 0))
    counts = {p: 0 for p in PHASES}
    for lm in result.layers if result is not None else []:
        if lm.phase:
            counts[lm.phase] = counts.get(lm.phase, 0) + 1
    for p, n in counts.items():
        out[f"{prefix}phase_count/{p}"] = float(n)
    fired = list(alerts)
    out[prefix + "alerts"] = float(len(result.alerts)) if result is not None else 0.0
    out[prefix + "alerts_total"] = float(len(fired))
    out[prefix + "alerts_stop"] = float(any(a.stop_training for a in fired))
    for a in fired:
        key = f"{prefix}alert/{a.rule}"
        out[key] = out.get(key, 0.0) + 1.0
    return out


def ww_metrics(
    monitor: Any, *, flush: bool = True, timeout: Optional[float] = 120.0, prefix: str = PREFIX
) -> dict[str, float]:
    """:func:`flat_metrics` of ``monitor``'s latest analysed snapshot and every alert it fired so far.

    Call it from the training loop right after ``monitor.snapshot(...)`` and merge the dict into your own
    report (``tune.report({**mine, **ww_metrics(mon)})``).  ``flush=True`` first waits (up to ``timeout``
    seconds) until the queued snapshots are analysed, so the metrics are those of the snapshot just taken;
    ``flush=False`` returns at once with the latest finished analysis (it may be a snapshot behind: compare
    ``ww/step``).  Works with a :class:`wwmonitor.Monitor` or a callback that holds one (``.monitor``).
    """
    mon = monitor if _is_monitor(monitor) else getattr(monitor, "monitor", None)
    if mon is None:
        return flat_metrics(None, (), prefix=prefix)
    if flush:
        mon.flush(timeout)
    results = mon.results
    return flat_metrics(results[-1] if results else None, mon.alerts_fired, prefix=prefix)


def _clean(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if hasattr(v, "item") and callable(v.item):  # a 0-d tensor or numpy scalar
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"record_eval_metrics: {k!r} must be a number, got {type(v).__name__}")
        out[str(k)] = float(v)
    return out


def record_eval_metrics(
    target: Union[Any, str, "os.PathLike[str]"], metrics: Mapping[str, Any], *, step: Optional[int] = None
) -> Path:
    """Store a run's evaluation metrics (``{"val_acc": 0.98, "val_loss": 0.07}``) in its run store.

    ``wwmonitor compare`` ranks the runs' spectral summaries against a ``val_*`` metric recorded here (see
    :func:`wwmonitor.report.compare.ranking_frame`).  Call it whenever you evaluate; a later call updates the
    names it gives and keeps the others, so the store holds the latest (final) values.  ``target`` is a
    :class:`wwmonitor.Monitor` (open or closed), a callback holding one (``.monitor``) or a run folder.
    Values must be numbers (0-d tensors are converted).  Returns the run folder.

    Raises ``FileNotFoundError`` when the folder has no run store, ``ValueError`` when the monitor writes no
    store (``store=False``).
    """
    from ..report.compare import EVAL_META_KEY
    from ..store import DB_NAME, RunStore

    values = _clean(metrics)
    mon: Any = (
        target if _is_monitor(target) else getattr(target, "monitor", target) if hasattr(target, "monitor") else None
    )
    if hasattr(target, "monitor") and mon is None:
        raise ValueError("record_eval_metrics: the callback has no monitor yet (call it once fit has started)")
    if mon is not None:
        if mon.store is None:
            raise ValueError(f"record_eval_metrics: run {mon.run_id!r} has no run store (store=False)")
        folder = Path(mon.run_dir)
        try:
            _merge(mon.store, EVAL_META_KEY, values, step)
            return folder
        except (RuntimeError, sqlite3.ProgrammingError):  # the monitor and its store are closed: reopen below
            pass
    else:
        folder = Path(target)
    if not (folder / DB_NAME).is_file():
        raise FileNotFoundError(f"record_eval_metrics: no run store at {str(folder / DB_NAME)!r}")
    own = RunStore(folder)
    try:
        _merge(own, EVAL_META_KEY, values, step)
    finally:
        own.close()
    return folder


def _is_monitor(obj: Any) -> bool:
    """A :class:`wwmonitor.Monitor` (or look-alike): it snapshots and has a run store attribute."""
    return callable(getattr(obj, "snapshot", None)) and hasattr(obj, "store") and hasattr(obj, "run_dir")


def _merge(store: Any, key: str, values: dict[str, float], step: Optional[int]) -> None:
    old = store.get_meta(key) or {}
    items: dict[str, Any] = {key: {**(old if isinstance(old, dict) else {}), **values}}
    if step is not None:
        items[key + "_step"] = int(step)
    store.set_meta(items)
