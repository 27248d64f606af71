"""Re-evaluate the *current* default alert rules on recorded runs, without re-training.

Two modes:

* ``"reanalyse"`` (default): every recorded snapshot's matrices go through the monitor's own analysis stage
  (:func:`wwmonitor.monitor.analyzer.analyse_snapshot`, the current analysis code and phase classifier) with the
  rules as the weight inspector when they need the weights (``needs_weights``: e.g. ``correlation_trap`` reads
  the very matrix the live monitor would have handed it), then through what the dispatcher does with a result
  (``rules.evaluate(result, on_error)`` and the monitor's ``non_finite`` alerts), in step order.  This is the
  live monitor's path minus the threads and the sinks; ``tests/test_alert_bench.py`` checks that it gives the
  same alerts as the live monitor on a recorded run.
* ``"results"`` (fast): the recorded :class:`~wwmonitor.records.SnapshotResult` objects (the analysis as it was
  at record time) go straight to the rules; rules that need the weights still get ``inspect_weights`` on the
  recorded matrices.  Use it only while the analysis and the phases are unchanged since recording.

After a change of the analysis or the phases, ``python -m benchmarks.alert_bench refresh`` re-analyses every
recorded run once and rewrites its ``results.pkl`` (:func:`refresh_results`), so that ``"results"`` is right
(and fast) again.

``results.pkl`` is written together with ``results.fingerprint``, a hash of the wwmonitor sources outside
``wwmonitor/alerts`` (:func:`analysis_fingerprint`); ``"results"`` refuses a run whose fingerprint differs from
the current code's (the pickled results would be another analysis, or not even load into the current classes):
``refresh`` first, or replay with ``"reanalyse"``.  Changing only the alert rules keeps the fingerprint.

A rule that raises is counted in ``rule_errors`` of the replayed run (the table shows them), as in the monitor.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

MODES = ("reanalyse", "results")


@dataclass
class Replayed:
    """One recorded run and the alerts the current rules give on it."""

    meta: dict[str, Any]
    alerts: list[Any]  # wwmonitor.records.Alert
    rule_errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    #: the replayed SnapshotResults (only with ``keep_results=True``)
    results: list[Any] = field(default_factory=list)


FINGERPRINT = "results.fingerprint"


def analysis_fingerprint() -> str:
    """SHA-256 over the wwmonitor sources outside ``wwmonitor/alerts`` (paths and contents)."""
    import hashlib

    import wwmonitor

    root = Path(wwmonitor.__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith("alerts/"):
            continue
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def check_fingerprint(path: Path) -> None:
    """``ValueError`` unless ``path/results.pkl`` was written by the current analysis code."""
    f = path / FINGERPRINT
    have = f.read_text().strip() if f.exists() else None
    if have != analysis_fingerprint():
        why = "has no fingerprint" if have is None else "was written by other analysis code"
        raise ValueError(
            f"{path}/results.pkl {why}: run `python -m benchmarks.alert_bench refresh` with the current code first, "
            "or replay with mode 'reanalyse'"
        )


def load_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / "meta.json").read_text())


def recorded_runs(cache: Path, families: Optional[list[str]] = None) -> list[Path]:
    """Folders of the recorded runs under ``cache`` (optionally of ``families`` only), sorted."""
    out = []
    for meta in sorted(cache.glob("*/*/seed*/meta.json")):
        if families is None or meta.parent.parent.parent.name in families:
            out.append(meta.parent)
    return out


def _matrices(path: Path, k: int, meta: dict[str, Any]) -> list[tuple[str, str, float, np.ndarray]]:
    with np.load(path / f"snap_{k:03d}.npz") as z:
        return [(name, typ, float(scale), z[f"a{i}"]) for i, (name, typ, scale, _shape) in enumerate(meta["entries"])]


def replay_run(
    path: Path, rules: Any = None, mode: str = "reanalyse", options: Any = None, keep_results: bool = False
) -> Replayed:
    """The alerts of ``rules`` (default: ``AlertRules(log_alerts=False)``, the default rules) on one recorded run."""
    import time

    from wwmonitor.alerts import AlertRules
    from wwmonitor.analyze import AnalysisOptions
    from wwmonitor.monitor.analyzer import analyse_snapshot
    from wwmonitor.monitor.dispatcher import nonfinite_alerts
    from wwmonitor.monitor.snapshot import BufferSet, Snapshot

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    t0 = time.perf_counter()
    meta = load_meta(path)
    rules = rules if rules is not None else AlertRules(log_alerts=False)
    options = options if options is not None else AnalysisOptions()  # the Monitor's default
    inspector = rules if getattr(rules, "needs_weights", False) else None
    errors: dict[str, int] = {}

    def on_error(where: str, what: str, exc: BaseException) -> None:
        errors[where] = errors.get(where, 0) + 1

    recorded = None
    if mode == "results":
        check_fingerprint(path)
        with open(path / "results.pkl", "rb") as f:
            recorded = pickle.load(f)
    active: set[str] = set()
    alerts: list[Any] = []
    kept: list[Any] = []
    for k, step in enumerate(meta["steps"]):
        mats = _matrices(path, k, meta)
        if recorded is None:
            snap = Snapshot(step=step, epoch=k, time=0.0, entries=mats, buffers=BufferSet())
            res = analyse_snapshot(snap, options, inspector=inspector, on_error=on_error)
        else:
            res = recorded[k]
            res.alerts = []
            if inspector is not None:
                by_name = {m[0]: m[3] for m in mats}
                for lm in res.layers:
                    if lm.status == "ok":
                        inspector.inspect_weights(lm.name, by_name[lm.name], lm)
        fired = rules.evaluate(res, on_error=on_error)
        res.alerts.extend(fired or [])
        res.alerts.extend(nonfinite_alerts(res, active))
        alerts.extend(res.alerts)
        if keep_results:
            kept.append(res)
    for k, v in getattr(rules, "rule_errors", {}).items():
        errors.setdefault(f"alert:{k}", v)
    return Replayed(meta, alerts, errors, time.perf_counter() - t0, kept)


def replay(
    cache: Path,
    families: Optional[list[str]] = None,
    mode: str = "reanalyse",
    rules_factory: Optional[Callable[[], Any]] = None,
    seeds: Optional[list[int]] = None,
    refresh: bool = False,
    settings_filter: Optional[list[str]] = None,
) -> list[Replayed]:
    """Replay every recorded run of ``families`` (and ``seeds``, ``settings_filter``) with fresh rules from
    ``rules_factory``.

    ``refresh`` (with ``mode="reanalyse"``): also rewrite each run's ``results.pkl`` with the results of the
    current analysis (:func:`refresh_results`).
    """
    if refresh and mode != "reanalyse":
        raise ValueError("refresh needs mode='reanalyse'")
    out = []
    for path in recorded_runs(cache, families):
        if seeds is not None and int(path.name[4:]) not in seeds:
            continue
        if settings_filter is not None and path.parent.name not in settings_filter:
            continue
        rep = replay_run(path, rules_factory() if rules_factory else None, mode, keep_results=refresh)
        if refresh:
            refresh_results(path, rep.results)
            rep.results = []
        out.append(rep)
    return out


def refresh_results(path: Path, results: list[Any]) -> None:
    """Replace ``path/results.pkl`` by ``results`` (alerts removed), atomically (a reader never sees half a file)."""
    for r in results:
        r.alerts = []
        r.figures.clear()
    tmp = path / "results.pkl.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(results, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path / "results.pkl")
    (path / FINGERPRINT).write_text(analysis_fingerprint() + "\n")
