"""The background worker: analysis -> alerts -> sinks, on one thread.

Why a thread and not a process: the expensive parts of the analysis (the
float64 Gram matrix product and ``eigvalsh``) run in BLAS/LAPACK, which
release the GIL, so a thread overlaps with training as well as a process
does, without pickling every snapshot through a pipe and without a second
interpreter's start-up and memory (measured in ``benchmarks/bench_monitor.py``,
section "thread vs process").  One thread also gives the two ordering
guarantees for free: results are produced in the order snapshots were queued
(step order), and every sink is called from that single thread -- required by
wandb, whose client is not thread-safe.

BLAS threads: the analysis runs with NumPy's BLAS limited to
``blas_threads`` (default 1, via ``threadpoolctl`` when it is installed), so
the worker takes one core next to training.  On a busy machine a
multi-threaded OpenBLAS ``eigvalsh`` competing with training threads was
measured 10-50x slower than single-threaded (512x512: 0.12 s vs 1-6 s).
The limit is process-wide while a snapshot is analysed (OpenBLAS has one
thread pool); torch's own intra-op threads are not affected.

Fault handling: an exception while analysing one layer becomes a
``status="error"`` entry for that layer (reason in ``message`` and in
``SnapshotResult.errors``); an exception in an alert rule or a sink is
counted and warned about.  Nothing raised here reaches the training thread.
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import traceback
import warnings
from dataclasses import replace
from typing import Any, Callable, Optional, Sequence

from ..analyze import AnalysisOptions, analyze_matrix
from ..metrics import LayerMetrics
from ..records import Alert, SnapshotResult
from .policy import SnapshotQueue
from .snapshot import Snapshot, as_numpy

__all__ = ["analyse_snapshot", "model_summary", "nonfinite_alerts", "Worker", "AnalyzeFn", "SUMMARY_FIELDS"]

log = logging.getLogger("wwmonitor")

#: signature of the per-matrix analysis: (array, name, layer_type, scale, options) -> LayerMetrics
AnalyzeFn = Callable[[Any, str, str, float, AnalysisOptions], LayerMetrics]

#: model-level means: summary key -> LayerMetrics field
SUMMARY_FIELDS = {
    "mean_alpha": "alpha",
    "mean_alpha_weighted": "alpha_weighted",
    "mean_log_norm": "log_norm",
    "mean_log_spectral_norm": "log_spectral_norm",
    "mean_stable_rank": "stable_rank",
    "mean_mp_softrank": "mp_softrank",
}


def default_analyze(W: Any, name: str, layer_type: str, scale: float, options: AnalysisOptions) -> LayerMetrics:
    """:func:`wwmonitor.analyze.analyze_matrix` with the monitor's calling convention."""
    return analyze_matrix(W, name, layer_type=layer_type, scale=scale, options=options)


def model_summary(layers: Sequence[LayerMetrics]) -> dict[str, float]:
    """Model-level means over the layers with ``status == "ok"``.

    ``mean_<m> = (1/n) Σ_i m_i`` over the ``n`` ok layers whose ``m`` is
    defined (``alpha``, ``alpha_weighted``, ``log_norm``,
    ``log_spectral_norm``, ``stable_rank``, ``mp_softrank``); a mean with no
    contributing layer is left out (never a sentinel).  Also
    ``n_layers`` and ``n_layers_ok``.
    """
    ok = [m for m in layers if m.status == "ok"]
    out: dict[str, float] = {"n_layers": float(len(layers)), "n_layers_ok": float(len(ok))}
    for key, attr in SUMMARY_FIELDS.items():
        vals = [float(v) for m in ok if (v := getattr(m, attr)) is not None and math.isfinite(float(v))]
        if vals:
            out[key] = sum(vals) / len(vals)
    return out


def nonfinite_alerts(result: SnapshotResult, active: set[str]) -> list[Alert]:
    """``rule="non_finite"`` error alerts for layers whose weights contain NaN/Inf.

    With hysteresis: a layer alerts when it *becomes* non-finite (it is then
    kept in ``active``, updated in place) and again only after its weights
    were finite in between.  No alert is added for a layer for which the
    alert rules already produced a ``non_finite`` alert in this result.
    """
    have = {a.layer for a in result.alerts if a.rule == "non_finite"}
    out = []
    for m in result.layers:
        if m.status != "non_finite":
            active.discard(m.name)
            continue
        if m.name not in active and m.name not in have:
            out.append(Alert(step=result.step, epoch=result.epoch, rule="non_finite", severity="error",
                             message=m.message or f"layer {m.name!r}: non-finite weights", layer=m.name))
        active.add(m.name)
    return out


def analyse_snapshot(snap: Snapshot, options: AnalysisOptions, analyze_fn: AnalyzeFn = default_analyze,
                     abort: Optional[threading.Event] = None) -> SnapshotResult:
    """Analyse every matrix of ``snap``; per-layer exceptions become ``status="error"``.

    The λ-axis ESD that :func:`analyze_matrix` leaves in ``extra["esd"]``
    (``keep_esd=True``) is moved to ``SnapshotResult.esds``.
    """
    if snap.ready is not None:
        snap.ready()
    # the worker keeps the ESD and uses the lean-memory eigen route (one thread, bounded memory)
    opts = options if (options.keep_esd and options.low_memory) else replace(options, keep_esd=True, low_memory=True)
    res = SnapshotResult(step=snap.step, epoch=snap.epoch, time=snap.time, layers=[])
    t0, c0 = time.perf_counter(), time.thread_time()
    for name, typ, scale, W in snap.entries:
        if abort is not None and abort.is_set():
            res.errors[name] = "not analysed: monitor closed before this layer was reached"
            res.layers.append(LayerMetrics(name=name, type=typ, shape=tuple(W.shape), status="error",
                                           message=res.errors[name]))
            continue
        try:
            m = analyze_fn(as_numpy(W), name, typ, scale, opts)
        except Exception as e:  # noqa: BLE001 - any failure of one layer is recorded, never raised
            reason = f"{type(e).__name__}: {e}"
            res.errors[name] = reason
            m = LayerMetrics(name=name, type=typ, shape=tuple(int(s) for s in W.shape), status="error",
                             message=f"layer {name!r}: analysis failed: {reason}")
            log.debug("wwmonitor: layer %s failed at step %s:\n%s", name, snap.step, traceback.format_exc())
        esd = m.extra.pop("esd", None)
        if esd is not None:
            res.esds[name] = esd
        res.layers.append(m)
    res.summary = model_summary(res.layers)
    res.meta["analysis_s"] = time.perf_counter() - t0  # wall seconds in the worker
    res.meta["analysis_cpu_s"] = time.thread_time() - c0  # CPU seconds of the worker thread
    return res


class Worker:
    """One daemon thread draining a :class:`SnapshotQueue`.

    For each snapshot: analyse -> release the buffers -> ``alerts.evaluate``
    -> monitor-made non-finite alerts -> ``on_result`` -> every sink's
    ``write``.  On stop it closes the alerts object and the sinks, from the
    same thread.
    """

    def __init__(self, queue: SnapshotQueue, *, options: AnalysisOptions, sinks: list[Any], alerts: Any,
                 on_result: Callable[[SnapshotResult], None], on_error: Callable[[str, str, BaseException], None],
                 analyze_fn: AnalyzeFn = default_analyze, name: str = "wwmonitor-worker",
                 blas_threads: Optional[int] = 1) -> None:
        self.queue = queue
        self.options = options
        self.sinks = sinks
        self.alerts = alerts
        self.on_result = on_result
        self.on_error = on_error
        self.analyze_fn = analyze_fn
        self.blas_threads = blas_threads
        self._tpc: Any = None
        self.abort = threading.Event()
        self._nonfinite: set[str] = set()
        self.layer_errors = 0
        self.analysed = 0
        self._sinks_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def add_sink(self, sink: Any) -> None:
        with self._sinks_lock:
            self.sinks.append(sink)

    def _run(self) -> None:
        try:
            while True:
                snap = self.queue.get()
                if snap is None:
                    break
                try:
                    self._process(snap)
                except Exception as e:  # noqa: BLE001 - the worker must survive anything
                    self.on_error("worker", f"step {snap.step}", e)
                finally:
                    self.queue.done()
        finally:
            self._close_outputs()

    def _blas_limit(self) -> Any:
        """Context manager limiting NumPy's BLAS threads during one analysis."""
        if self.blas_threads is None:
            return contextlib.nullcontext()
        if self._tpc is None:
            try:
                from threadpoolctl import ThreadpoolController

                self._tpc = ThreadpoolController()
            except Exception:  # noqa: BLE001 - threadpoolctl missing: run unlimited
                self.blas_threads = None
                return contextlib.nullcontext()
        return self._tpc.limit(limits=self.blas_threads, user_api="blas")

    def _process(self, snap: Snapshot) -> None:
        try:
            with self._blas_limit():
                res = analyse_snapshot(snap, self.options, self.analyze_fn, self.abort)
        finally:
            self.queue.pool.release(snap.buffers)  # free for the next snapshot as early as possible
            snap.entries = []
        self.layer_errors += len(res.errors)
        if self.alerts is not None:
            try:
                res.alerts.extend(self.alerts.evaluate(res) or [])
            except Exception as e:  # noqa: BLE001
                self.on_error("alerts", f"step {res.step}", e)
        res.alerts.extend(nonfinite_alerts(res, self._nonfinite))
        self.analysed += 1
        self.on_result(res)
        with self._sinks_lock:
            sinks = list(self.sinks)
        for sink in sinks:
            try:
                sink.write(res)
            except Exception as e:  # noqa: BLE001
                self.on_error(f"sink:{type(sink).__name__}", f"step {res.step}", e)

    def _close_outputs(self) -> None:
        if self.alerts is not None and hasattr(self.alerts, "close"):
            try:
                self.alerts.close()
            except Exception as e:  # noqa: BLE001
                self.on_error("alerts", "close", e)
        with self._sinks_lock:
            sinks = list(self.sinks)
        for sink in sinks:
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001
                self.on_error(f"sink:{type(sink).__name__}", "close", e)


def warn(msg: str) -> None:
    """A ``RuntimeWarning`` plus a log line (used for every reported fault)."""
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
