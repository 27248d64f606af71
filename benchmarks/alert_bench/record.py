"""Train one run under ``wwmonitor.Monitor`` (default alert rules, a snapshot every epoch) and record it.

Cache layout (``cache_dir()``: ``$WWM_ALERT_BENCH_CACHE`` or ``/work/alert_bench_cache``; never in the repo)::

    <cache>/<family>/<setting>/seed<k>/
        meta.json        family, setting, seed, hyper-parameters, epochs, seconds, validation losses
                         (``val0``, ``val``), criterion ranks (``ranks0``, ``ranks``), ``diverged``,
                         the analysed matrices (``entries``: name, layer type, scale, shape), the steps,
                         and the live alerts (``alerts``) of the rules in force when it was recorded
        init.npz         the analysed matrices before training (as the monitor extracts them)
        snap_000.npz ... the matrices the monitor analysed at each snapshot (``a0``, ``a1``, ... in
                         ``entries`` order), copied inside the analysis call itself
        results.pkl      the monitor's SnapshotResult list (figures dropped), for the fast replay
        results.fingerprint  the analysis code that wrote results.pkl (see replay.analysis_fingerprint)

The matrices are recorded by wrapping the monitor's per-matrix analysis (``Monitor(analyze_fn=...)``): the
recorder copies exactly the host copy the analyser reads, then runs the default analysis on it.  So a replay
can run the *current* analysis (phases included) and every rule that reads the weights (``needs_weights``:
``inspect_weights`` gets the same matrix) on them, without re-training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .criterion import rank_stats
from .families import FAMILIES
from .families.base import Family
from .replay import FINGERPRINT, analysis_fingerprint

#: default cache folder (outside the repository)
DEFAULT_CACHE = "/work/alert_bench_cache"
FORMAT = 1


def cache_dir(path: Optional[str] = None) -> Path:
    """The cache folder: ``path``, else ``$WWM_ALERT_BENCH_CACHE``, else :data:`DEFAULT_CACHE`."""
    p = Path(path or os.environ.get("WWM_ALERT_BENCH_CACHE") or DEFAULT_CACHE).resolve()
    repo = Path(__file__).resolve().parents[2]
    if p == repo or repo in p.parents:
        raise ValueError(f"alert bench cache {p} is inside the repository {repo}; choose a folder outside it")
    return p


def run_dir(cache: Path, family: str, setting: str, seed: int) -> Path:
    return cache / family / setting / f"seed{seed}"


class Recorder:
    """``analyze_fn`` for the monitor: copies each matrix it is handed, then analyses it the default way."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, np.ndarray]] = []
        self._lock = threading.Lock()

    def __call__(self, W: Any, name: str, layer_type: str, scale: float, options: Any) -> Any:
        from wwmonitor.monitor.analyzer import default_analyze

        with self._lock:
            self.calls.append((name, layer_type, float(scale), np.array(W, copy=True)))
        return default_analyze(W, name, layer_type, scale, options)


def _ranks(task: Any) -> dict[str, list[float]]:
    return {n: list(rank_stats(W)) for n, W in task.tracked().items()}


def _initial_matrices(model: Any, kwargs: dict[str, Any]) -> dict[str, np.ndarray]:
    from wwmonitor.layers import extract_matrices
    from wwmonitor.monitor.snapshot import as_numpy

    specs = extract_matrices(model, layers=kwargs.get("layers"), exclude=kwargs.get("exclude"))
    out = {}
    for sp in specs:
        t = sp.tensor.detach().cpu() if hasattr(sp.tensor, "detach") else sp.tensor
        out[sp.name] = np.array(as_numpy(t), copy=True)
    return out


@dataclasses.dataclass
class _Trained:
    """What one monitored training run produced (before it is written to the cache)."""

    val0: float
    ranks0: dict[str, list[float]]
    val: list[Optional[float]]
    ranks: list[dict[str, list[float]]]
    steps: list[int]
    diverged: bool
    init: dict[str, np.ndarray]
    calls: list[tuple[str, str, float, np.ndarray]]
    results: list[Any]
    alerts: list[Any]
    stats: dict[str, Any]
    seconds: float
    cpu_seconds: float


def _train_monitored(family: Family, setting: str, seed: int, rules: Any) -> _Trained:
    """Train one run with a snapshot after every epoch; the criterion's inputs are taken alongside."""
    import torch

    import wwmonitor
    from wwmonitor.alerts import AlertRules

    torch.manual_seed(seed)
    np.random.seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    task = family.make(family.settings[setting], seed)
    init = _initial_matrices(task.model, task.monitor_kwargs)
    val0, ranks0 = task.val_loss(), _ranks(task)
    rec = Recorder()
    val: list[Optional[float]] = []
    ranks: list[dict[str, list[float]]] = []
    steps: list[int] = []
    diverged = False
    with (
        tempfile.TemporaryDirectory() as tmp,
        wwmonitor.Monitor(
            task.model,
            tmp,
            store=False,
            alerts=rules if rules is not None else AlertRules(log_alerts=False),
            analyze_fn=rec,
            history=family.epochs + 1,
            esd_every_n_epochs=0,
            policy="block",
            announce=False,
            **task.monitor_kwargs,
        ) as mon,
    ):
        for epoch in range(family.epochs):
            step = task.train_epoch()
            v = task.val_loss()
            r = _ranks(task)
            diverged = diverged or not math.isfinite(v) or any(not math.isfinite(x[0]) for x in r.values())
            val.append(v if math.isfinite(v) else None)
            ranks.append(r)
            steps.append(step)
            mon.snapshot(step=step, epoch=epoch)
        mon.flush()
        results, alerts, stats = list(mon.results), list(mon.alerts_fired), dict(mon.stats)
    return _Trained(
        val0,
        ranks0,
        val,
        ranks,
        steps,
        diverged,
        init,
        rec.calls,
        results,
        alerts,
        stats,
        time.perf_counter() - t0,
        time.process_time() - c0,
    )


def train_and_record(family: Family, setting: str, seed: int, cache: Path, rules: Any = None) -> dict[str, Any]:
    """Train ``family``/``setting``/``seed`` under a monitor with the default alert rules (or ``rules``); write the
    cache entry.  Returns the ``meta`` dict written to ``meta.json``.
    """
    tr = _train_monitored(family, setting, seed, rules)
    what = f"{family.name}/{setting}/seed{seed}"
    results = tr.results
    if len(results) != family.epochs:
        raise RuntimeError(f"{what}: {len(results)} results for {family.epochs} snapshots")
    names = [lm.name for lm in results[0].layers]
    per = len(names)
    chunks = [tr.calls[k * per : (k + 1) * per] for k in range(len(results))]
    if per * len(results) != len(tr.calls) or any([c[0] for c in ch] != names for ch in chunks):
        raise RuntimeError(f"{what}: the recorded matrices do not match the monitor's results")
    out = run_dir(cache, family.name, setting, seed)
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    tmp_out.mkdir(parents=True)
    np.savez(tmp_out / "init.npz", **{f"a{i}": tr.init[n] for i, n in enumerate(names) if n in tr.init})
    for k, chunk in enumerate(chunks):
        np.savez(tmp_out / f"snap_{k:03d}.npz", **{f"a{i}": c[3] for i, c in enumerate(chunk)})
    for r in results:
        r.figures.clear()
    with open(tmp_out / "results.pkl", "wb") as f:
        pickle.dump(results, f, protocol=pickle.HIGHEST_PROTOCOL)
    (tmp_out / FINGERPRINT).write_text(analysis_fingerprint() + "\n")
    meta = {
        "format": FORMAT,
        "family": family.name,
        "setting": setting,
        "seed": seed,
        "hyper": family.settings[setting],
        "reference": family.reference,
        "intent": family.intent.get(setting, ""),
        "epochs": family.epochs,
        "seconds": tr.seconds,
        "cpu_seconds": tr.cpu_seconds,
        "val0": tr.val0 if math.isfinite(tr.val0) else None,
        "val": tr.val,
        "ranks0": tr.ranks0,
        "ranks": tr.ranks,
        "diverged": tr.diverged,
        "steps": tr.steps,
        "entries": [[c[0], c[1], c[2], list(c[3].shape)] for c in chunks[0]],
        "alerts": [dataclasses.asdict(a) for a in tr.alerts],
        "monitor_stats": {k: v for k, v in tr.stats.items() if isinstance(v, (int, float, str))},
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp_out / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp_out.rename(out)
    return meta


def record(
    families: list[str], seeds: list[int], cache: Path, settings: Optional[list[str]] = None, log: Any = print
) -> list[dict[str, Any]]:
    """Record every (family, setting, seed); returns the metas."""
    import torch

    torch.set_num_threads(1)
    logging.getLogger("wwmonitor").setLevel(logging.ERROR)
    metas = []
    for fam in families:
        family = FAMILIES[fam]
        for setting in family.settings:
            if settings and setting not in settings:
                continue
            for seed in seeds:
                meta = train_and_record(family, setting, seed, cache)
                log(f"recorded {fam}/{setting}/seed{seed}: {meta['seconds']:.1f} s ({meta['cpu_seconds']:.1f} s CPU)")
                metas.append(meta)
    return metas
