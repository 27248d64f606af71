"""`Monitor`: the framework-neutral training-time monitor.

::

    mon = Monitor(model, run_dir="wwmonitor-runs", every_n_epochs=1)
    for epoch in range(E):
        train_one_epoch(...)
        mon.snapshot(epoch=epoch, step=global_step)   # copies weights, returns at once
    mon.close()                                       # flush, stop the worker, close the sinks

``snapshot()`` copies the monitored matrices to host memory on the calling
thread (:mod:`.snapshot`) and queues them (:mod:`.policy`); one background
thread analyses them and feeds alerts and sinks (:mod:`.worker`).  The
embedded run store (:class:`wwmonitor.store.RunStore`) is always the first
sink unless ``store=False``.
"""
from __future__ import annotations

import atexit
import logging
import os
import platform
import re
import secrets
import shutil
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..analyze import AnalysisOptions
from ..layers import MatrixSpec, extract_matrices, is_torch_module, select
from ..records import Alert, SnapshotResult
from ..store import DB_NAME, RunStore
from .policy import POLICIES, SnapshotQueue
from .snapshot import BufferPool, Snapshot, copy_matrices
from .worker import AnalyzeFn, Worker, default_analyze, warn

__all__ = ["Monitor"]

log = logging.getLogger("wwmonitor")

_LIVE: "weakref.WeakSet[Monitor]" = weakref.WeakSet()


@atexit.register
def _close_live_monitors() -> None:  # a script that forgot close(): flush what is queued
    for mon in list(_LIVE):
        try:
            mon.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _check_interval(name: str, v: Any) -> Optional[int]:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
    return int(v)


def _safe_id(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip(".-")
    if not s:
        raise ValueError(f"run_name {name!r} has no usable characters for a folder name")
    return s


def _versions() -> dict[str, str]:
    from .. import __version__

    out = {"wwmonitor": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("scipy", "torch", "keras", "lightning", "pytorch_lightning", "jax", "tensorflow"):
        m = sys.modules.get(mod)
        if m is not None and getattr(m, "__version__", None):
            out[mod] = str(m.__version__)
    return out


class Monitor:
    """Watch a model's weight spectra while it trains, without blocking it.

    Example::

        import torch, wwmonitor
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with wwmonitor.Monitor(model, "wwmonitor-runs", run_name="demo", config={"lr": 0.1}) as mon:
            for epoch in range(3):
                loss = model(torch.randn(32, 64)).pow(2).mean()
                opt.zero_grad(); loss.backward(); opt.step()
                mon.snapshot(step=epoch + 1, epoch=epoch)    # returns at once
        run = wwmonitor.load_run(mon.run_dir)
        run.metrics.query("metric == 'alpha'")             # step, epoch, layer, metric, value

    Parameters
    ----------
    model:
        A torch ``nn.Module``, a Keras 3 model, or a mapping name -> array;
        may be ``None`` when every :meth:`snapshot` passes ``model=`` or
        ``matrices=``.
    run_dir:
        Parent folder of all runs; this run's store goes to
        ``run_dir/<run_id>/run.sqlite``.
    run_name:
        Name (and folder) of the run.  With ``resume=True`` an existing run
        of that name is continued; otherwise a fresh ``<name>-2`` ... is made.
        Default: ``run-<UTC time>-<random>``.
    every_n_epochs, every_n_steps:
        Snapshot intervals (positive integers or ``None``).  An epoch-end call
        (``epoch`` given, ``epoch_end=True``) snapshots when
        ``(epoch + 1) % every_n_epochs == 0``; any call snapshots when
        ``step % every_n_steps == 0``.  Both ``None``: every call snapshots.
    layers, exclude:
        Names, glob patterns, layer-type names (``"Linear"``) or classes
        selecting the matrices (see :func:`wwmonitor.layers.select`).
    sinks:
        Extra :class:`~wwmonitor.sinks.Sink` objects (after the run store).
    alerts:
        Object with ``evaluate(result) -> list[Alert]`` (and optionally
        ``close()``), called on the worker thread before the sinks.
    queue_size, policy:
        Most snapshots held at once (waiting or in analysis; default 3:
        one in analysis, two waiting) and what to do when that many are held:
        ``"block" | "skip" | "latest"`` (see :mod:`wwmonitor.monitor.policy`).
    options:
        :class:`~wwmonitor.analyze.AnalysisOptions` (``keep_esd`` is forced on).
    config:
        Run configuration to store (hyper-parameters; reports read it).
    resume:
        Continue an existing run of the same ``run_name``; steps already
        stored are skipped.
    close_timeout:
        Seconds :meth:`close` waits for queued snapshots.
    store:
        Write the embedded SQLite run store (``True``), none (``False``), or
        use this :class:`~wwmonitor.store.RunStore` (its folder becomes the
        run folder; ``run_dir``/``run_name`` are then ignored).
    analyze_fn:
        Per-matrix analysis ``(W, name, type, scale, options) -> LayerMetrics``
        (default :func:`wwmonitor.analyze.analyze_matrix`).
    history:
        How many recent :class:`SnapshotResult` to keep in :attr:`results`.
    blas_threads:
        NumPy BLAS threads for the analysis (default 1: the worker uses one
        core next to training; ``None``: leave the BLAS default).  Needs
        ``threadpoolctl``; without it the BLAS default is used.

    Raises
    ------
    ValueError
        Bad configuration, naming the argument: unknown layer names, no
        analysable layers, non-positive intervals or queue size, unknown
        policy, an unwritable ``run_dir``.
    """

    def __init__(
        self,
        model: Any = None,
        run_dir: Union[str, os.PathLike] = "wwmonitor-runs",
        *,
        run_name: Optional[str] = None,
        every_n_epochs: Optional[int] = 1,
        every_n_steps: Optional[int] = None,
        layers: Optional[Sequence[Any]] = None,
        exclude: Optional[Sequence[Any]] = None,
        sinks: Sequence[Any] = (),
        alerts: Any = None,
        queue_size: int = 3,
        policy: str = "block",
        options: Optional[AnalysisOptions] = None,
        config: Optional[Mapping[str, Any]] = None,
        resume: bool = True,
        close_timeout: Optional[float] = 60.0,
        store: Union[bool, RunStore] = True,
        analyze_fn: Optional[AnalyzeFn] = None,
        history: int = 32,
        blas_threads: Optional[int] = 1,
    ) -> None:
        self.every_n_epochs = _check_interval("every_n_epochs", every_n_epochs)
        self.every_n_steps = _check_interval("every_n_steps", every_n_steps)
        if isinstance(queue_size, bool) or not isinstance(queue_size, (int, np.integer)) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive integer, got {queue_size!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if close_timeout is not None and not close_timeout > 0:
            raise ValueError(f"close_timeout must be > 0 or None, got {close_timeout!r}")
        if options is not None and not isinstance(options, AnalysisOptions):
            raise TypeError(f"options must be an AnalysisOptions, got {type(options).__name__}")
        if alerts is not None and not callable(getattr(alerts, "evaluate", None)):
            raise TypeError(f"alerts must have an evaluate(result) method, got {type(alerts).__name__}")
        for i, s in enumerate(sinks):
            if not (callable(getattr(s, "write", None)) and callable(getattr(s, "close", None))):
                raise TypeError(f"sinks[{i}] ({type(s).__name__}) needs write(result) and close() methods")
        if blas_threads is not None and (isinstance(blas_threads, bool) or not isinstance(blas_threads, int)
                                         or blas_threads < 1):
            raise ValueError(f"blas_threads must be a positive integer or None, got {blas_threads!r}")
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history!r}")
        self.model = model
        self.layers = [layers] if isinstance(layers, (str, type)) else None if layers is None else list(layers)
        self.exclude = [exclude] if isinstance(exclude, (str, type)) else None if exclude is None else list(exclude)
        self.queue_size = int(queue_size)
        self.policy = policy
        self.options = options if options is not None else AnalysisOptions()
        self.config = dict(config or {})
        self.close_timeout = close_timeout
        self._lock = threading.RLock()  # serialises snapshot() / run switching
        self._results: deque[SnapshotResult] = deque(maxlen=int(history))
        self._alerts: list[Alert] = []
        self._out_lock = threading.Lock()
        self.should_stop = False
        self._closed = False
        self._counts = {"snapshots_taken": 0, "duplicates": 0, "sink_errors": 0, "store_errors": 0,
                        "alert_errors": 0, "worker_errors": 0, "dropped_on_close": 0}
        self._warned: set[str] = set()
        self._layer_info: list[tuple[str, str, tuple[int, ...]]] = []
        self._spec_cache: Optional[tuple[Any, list[MatrixSpec], list[tuple[Any, int]], int]] = None
        self._spec_gen = 0

        if model is not None:  # validate the layer selection now
            specs = self._extract(model, None)
            self._layer_info = [(s.name, s.type, s.shape) for s in specs]

        # --- run folder and store
        self._root = Path(run_dir)
        self._fresh = False
        self._store: Optional[RunStore] = None
        self._stored_steps: set[int] = set()
        self._last_step: Optional[int] = None
        self._use_store = store is not False
        given_store = store if isinstance(store, RunStore) else None
        if given_store is not None:
            self._root, self.run_id = given_store.folder.parent, given_store.folder.name
        else:
            self.run_id = self._pick_run_id(run_name, resume)
        self.run_name = run_name or self.run_id
        if self._use_store:
            self._open_store(given_store)

        # --- queue + worker
        self._pool = BufferPool(self.queue_size)
        self._queue = SnapshotQueue(self.queue_size, policy, self._pool)
        sink_list: list[Any] = ([self._store] if self._store is not None else []) + list(sinks)
        self._worker = Worker(self._queue, options=self.options, sinks=sink_list, alerts=alerts,
                              on_result=self._on_result, on_error=self._on_error,
                              analyze_fn=analyze_fn or default_analyze, name=f"wwmonitor-{self.run_id}",
                              blas_threads=blas_threads)
        self._worker.start()
        _LIVE.add(self)

    # ------------------------------------------------------------ run folder
    def _pick_run_id(self, run_name: Optional[str], resume: bool) -> str:
        if run_name is None:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            return f"run-{stamp}-{secrets.token_hex(3)}"
        rid = _safe_id(run_name)
        if resume or not self._use_store or not (self._root / rid / DB_NAME).exists():
            return rid
        n = 2
        while (self._root / f"{rid}-{n}" / DB_NAME).exists():
            n += 1
        return f"{rid}-{n}"

    @property
    def run_dir(self) -> Path:
        """This run's folder (``run_dir/<run_id>``)."""
        return self._root / self.run_id

    def _open_store(self, given: Optional[RunStore] = None) -> None:
        folder = self.run_dir
        if self._root.exists() and not os.access(self._root, os.W_OK | os.X_OK):
            raise ValueError(f"run_dir {str(self._root)!r} is not writable")
        if given is not None:
            store = given
            existed = bool(store.stored_steps()) or store.get_meta("created") is not None
        else:
            existed = (folder / DB_NAME).exists()
            try:
                store = RunStore(folder)
            except ValueError as e:
                raise ValueError(f"run_dir {str(self._root)!r} is not writable: {e}") from e
        self._fresh = not existed
        self._stored_steps = set(store.stored_steps())
        self._last_step = max(self._stored_steps) if self._stored_steps else None
        meta = store.get_meta("meta", {}) or {}
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        meta.update({
            "versions": _versions(),
            "monitor": {"every_n_epochs": self.every_n_epochs, "every_n_steps": self.every_n_steps,
                        "queue_size": self.queue_size, "policy": self.policy,
                        "layers": None if self.layers is None else [str(getattr(p, "__name__", p)) for p in self.layers],
                        "exclude": None if self.exclude is None else [str(getattr(p, "__name__", p)) for p in self.exclude],
                        "options": asdict(self.options)},
            "platform": platform.platform(),
        })
        if self.model is not None:
            meta["model_class"] = f"{type(self.model).__module__}.{type(self.model).__qualname__}"
        if self._layer_info:
            meta["layers"] = [{"name": n, "type": t, "shape": list(s)} for n, t, s in self._layer_info]
        if existed:
            meta.setdefault("resumed", []).append(now)
        items: dict[str, Any] = {"meta": meta, "run_id": self.run_id, "schema_version": 1}
        if not existed:
            items.update({"name": self.run_name, "created": now})
        old_cfg = store.get_meta("config", None)
        items["config"] = {**(old_cfg or {}), **self.config} if existed else self.config
        store.set_meta(items)
        if self._layer_info:
            store.set_layers(self._layer_info)
        self._store = store

    # ------------------------------------------------------------ selection
    def _extract(self, model: Any, matrices: Optional[Mapping[str, Any]]) -> list[MatrixSpec]:
        if matrices is not None:
            specs = []
            for name, arr in matrices.items():
                if not hasattr(arr, "shape"):
                    arr = np.asarray(arr)
                specs.append(MatrixSpec(str(name), "matrix", arr))
            specs = select(specs, layers=self.layers, exclude=self.exclude)
        else:
            specs = extract_matrices(model, layers=self.layers, exclude=self.exclude)
        if not specs:
            what = "matrices" if matrices is not None else f"model {type(model).__name__}"
            raise ValueError(f"no analysable layers in {what} (layers={self.layers!r}, exclude={self.exclude!r})")
        return specs

    def _specs_for(self, model: Any, matrices: Optional[Mapping[str, Any]]) -> tuple[list[MatrixSpec], Any]:
        """Specs for this snapshot, and a cache key when they can be reused.

        For a torch module whose matrices are all views of its parameters the
        walk is done once and reused while every backing parameter keeps its
        storage (``data_ptr``); ``model.to(...)``, ``.half()`` or a
        ``param.data = ...`` swap changes it and triggers a fresh walk.
        """
        if matrices is not None or not is_torch_module(model):
            return self._extract(model, matrices), None
        c = self._spec_cache
        if c is not None and c[0]() is model and all(p.data_ptr() == ptr for p, ptr in c[2]):
            return c[1], c[3]
        specs = self._extract(model, None)
        by_storage = {p.untyped_storage().data_ptr(): p for p in model.parameters()}
        backing = []
        for sp in specs:
            t = sp.tensor
            p = by_storage.get(t.untyped_storage().data_ptr()) if hasattr(t, "untyped_storage") else None
            if p is None:  # computed weights (parametrizations ...): walk at every snapshot
                self._spec_cache = None
                return specs, None
            backing.append(p)
        uniq = {id(p): p for p in backing}.values()
        self._spec_gen += 1
        self._spec_cache = (weakref.ref(model), specs, [(p, p.data_ptr()) for p in uniq], self._spec_gen)
        return specs, self._spec_gen

    # ------------------------------------------------------------ triggering
    def should_snapshot(self, *, epoch: Optional[int] = None, step: Optional[int] = None,
                        epoch_end: bool = True) -> bool:
        """Whether a call with these arguments falls on a monitoring interval
        (and its step is not already stored)."""
        if step is not None and (step in self._stored_steps or (self._last_step is not None and step <= self._last_step)):
            return False
        if self.every_n_epochs is None and self.every_n_steps is None:
            return True
        if self.every_n_steps is not None and step is not None and step % self.every_n_steps == 0:
            return True
        if self.every_n_epochs is not None and epoch is not None and epoch_end:
            return (int(epoch) + 1) % self.every_n_epochs == 0
        return False

    def snapshot(self, *, step: int, epoch: Optional[int] = None, model: Any = None,
                 matrices: Optional[Mapping[str, Any]] = None, epoch_end: bool = True) -> bool:
        """Copy the monitored weights and queue them for analysis.

        Returns ``True`` when a snapshot was queued, ``False`` when the call
        is off-interval, ``step`` is not greater than the last snapshotted or
        stored step (``stats["duplicates"]``; this keeps results in step
        order and makes a resumed run skip what it already has) or the queue
        policy skipped it (``stats["skipped"]``).  Only the copy
        (and, under ``policy="block"``, waiting for a free slot) happens on
        the calling thread.

        ``model`` overrides the constructor's model for this call;
        ``matrices`` (name -> array) bypasses model walking.  Pass
        ``epoch_end=False`` for mid-epoch calls so ``every_n_epochs`` does
        not fire on them.
        """
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        step = int(step)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"Monitor for run {self.run_id!r} is closed")
            if step in self._stored_steps or (self._last_step is not None and step <= self._last_step):
                self._counts["duplicates"] += 1
                return False
            if not self.should_snapshot(epoch=epoch, step=step, epoch_end=epoch_end):
                return False
            src = model if model is not None else self.model
            if src is None and matrices is None:
                raise ValueError("snapshot: no model to read (pass model= here or to Monitor(), or matrices=)")
            specs, key = self._specs_for(src, matrices)
            if not self._layer_info and self._store is not None:  # model first seen here
                self._layer_info = [(s.name, s.type, s.shape) for s in specs]
                try:
                    self._store.set_layers(self._layer_info)
                    meta = self._store.get_meta("meta", {}) or {}
                    meta["layers"] = [{"name": n, "type": t, "shape": list(sh)} for n, t, sh in self._layer_info]
                    if src is not None:
                        meta["model_class"] = f"{type(src).__module__}.{type(src).__qualname__}"
                    self._store.set_meta({"meta": meta})
                except Exception as e:  # noqa: BLE001 - a locked/full store must not stop training
                    self._on_error(f"sink:{type(self._store).__name__}", f"step {step} (layer metadata)", e)
            res = self._queue.reserve(self._worker.alive)
            if res is None:
                self._report_once("skip", f"wwmonitor: analysis is behind training; snapshot at step {step} skipped "
                                  f"(policy={self.policy!r}, queue_size={self.queue_size}); see Monitor.stats")
                return False
            if res.dropped is not None:
                self._report_once("coalesce", f"wwmonitor: analysis is behind training; queued snapshot at step "
                                  f"{res.dropped.step} replaced by step {step} (policy='latest')")
            snap = None
            try:
                entries, ready = copy_matrices(specs, res.buffers, key)
                snap = Snapshot(step=step, epoch=None if epoch is None else int(epoch), time=time.time(),
                                entries=entries, buffers=res.buffers, ready=ready)
            finally:
                self._queue.commit(res, snap)
            self._pool.note_size()
            self._last_step = step
            self._counts["snapshots_taken"] += 1
            return True

    # ------------------------------------------------------------ results
    def _on_result(self, res: SnapshotResult) -> None:
        with self._out_lock:
            self._results.append(res)
            self._alerts.extend(res.alerts)
            self._stored_steps.add(res.step)
            if any(a.stop_training for a in res.alerts):
                self.should_stop = True

    def _on_error(self, where: str, what: str, exc: BaseException) -> None:
        is_store = self._store is not None and where == f"sink:{type(self._store).__name__}"
        key = "store_errors" if is_store else "alert_errors" if where == "alerts" else \
            "worker_errors" if where == "worker" else "sink_errors"
        with self._out_lock:
            self._counts[key] += 1
            n = self._counts[key]
        if n == 1 or n % 100 == 0:
            extra = " Earlier snapshots stay in the store; training continues." if is_store else ""
            warn(f"wwmonitor: {where} failed at {what} ({type(exc).__name__}: {exc}); {key}={n}.{extra}")

    def _report_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn(msg)
        else:
            log.info(msg)

    @property
    def results(self) -> list[SnapshotResult]:
        """The most recent analysed snapshots (``history`` of them), in step order."""
        with self._out_lock:
            return list(self._results)

    @property
    def alerts_fired(self) -> list[Alert]:
        """Every alert produced so far (rules' and the monitor's own ``non_finite``)."""
        with self._out_lock:
            return list(self._alerts)

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: ``snapshots_taken``, ``skipped`` (policy ``skip`` or dead
        worker), ``coalesced`` (policy ``latest``), ``analysed``, ``errors``
        (layers whose analysis raised), ``duplicates`` (steps already stored),
        ``store_errors``, ``sink_errors``, ``alert_errors``, ``worker_errors``,
        ``dropped_on_close``, ``pending``, ``blocked_s`` (time ``snapshot()``
        waited under ``block``), ``buffer_bytes`` / ``buffer_bytes_peak``
        (host snapshot buffers now / at most)."""
        with self._out_lock:
            out: dict[str, Any] = dict(self._counts)
        out.update(skipped=self._queue.skipped, coalesced=self._queue.coalesced, analysed=self._worker.analysed,
                   errors=self._worker.layer_errors, pending=self._queue.pending, blocked_s=self._queue.blocked_s,
                   buffer_bytes=self._pool.total_bytes, buffer_bytes_peak=self._pool.peak_bytes)
        return out

    def add_sink(self, sink: Any) -> None:
        """Add a sink; it receives every result analysed from now on."""
        if not (callable(getattr(sink, "write", None)) and callable(getattr(sink, "close", None))):
            raise TypeError(f"sink {type(sink).__name__} needs write(result) and close() methods")
        if self._closed:
            raise RuntimeError(f"Monitor for run {self.run_id!r} is closed")
        self._worker.add_sink(sink)

    # ------------------------------------------------------------ lifecycle
    def flush(self, timeout: Optional[float] = None) -> None:
        """Wait until every queued snapshot has been analysed and written.

        Warns (does not raise) when ``timeout`` seconds pass first.  A no-op
        when called from the worker thread itself (an alert action or sink).
        """
        if threading.current_thread() is self._worker.thread:
            return
        if not self._queue.wait_idle(timeout, self._worker.alive) and self._queue.pending:
            warn(f"wwmonitor: flush timed out after {timeout} s with {self._queue.pending} snapshot(s) pending")

    def close(self, timeout: Optional[float] = None) -> None:
        """Flush (up to ``timeout``, default ``close_timeout``), stop the
        worker and close every sink and the alerts object (on the worker
        thread).  Snapshots still unanalysed at the deadline are dropped and
        counted in ``stats["dropped_on_close"]``.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if threading.current_thread() is self._worker.thread:
            # called by a sink or alert action: no waiting on ourselves; the worker
            # finishes the queue and closes the outputs when it returns
            self._queue.close()
            _LIVE.discard(self)
            return
        timeout = self.close_timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        self._queue.wait_idle(timeout, self._worker.alive)
        dropped = self._queue.drain()
        if dropped or self._queue.pending:
            self._worker.abort.set()  # finish the layer in progress, skip the rest
        self._queue.close()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._worker.thread.join(remaining if remaining is None else remaining + 5.0)
        with self._out_lock:
            self._counts["dropped_on_close"] += len(dropped)
        if dropped:
            warn(f"wwmonitor: close() timed out after {timeout} s; {len(dropped)} queued snapshot(s) "
                 f"(steps {[s.step for s in dropped]}) were not analysed")
        if self._worker.alive():
            warn("wwmonitor: the worker is still inside one layer's analysis after close(); it stops "
                 "after that layer (daemon thread, it will not keep the process alive)")
        self._pool.clear()
        _LIVE.discard(self)

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Ctrl-C: do not keep the user waiting for the whole backlog
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.close(timeout=min(5.0, self.close_timeout or 5.0) if interrupted else None)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue this run: the run folder, id and
        last snapshotted step."""
        return {"version": 1, "run_root": str(self._root), "run_id": self.run_id, "run_name": self.run_name,
                "last_step": self._last_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the run recorded in ``state`` (from :meth:`state_dict`).

        If this monitor had started a different, still empty run, that run's
        folder is removed and the monitor switches to the checkpoint's run;
        snapshots with steps at or below the stored ``last_step`` are skipped.
        """
        rid = str(state["run_id"])
        root = Path(state.get("run_root") or self._root)
        last = state.get("last_step")
        with self._lock:
            if rid != self.run_id or root != self._root:
                self.flush()
                old_folder, old_store, fresh = self.run_dir, self._store, self._fresh
                empty = old_store is not None and not old_store.stored_steps()
                self._root, self.run_id = root, rid
                self.run_name = str(state.get("run_name") or rid)
                if self._use_store:
                    self._open_store()
                    self._worker.sinks[:] = [self._store if s is old_store else s for s in self._worker.sinks]
                if old_store is not None:
                    old_store.close()
                    if fresh and empty and old_folder != self.run_dir:
                        shutil.rmtree(old_folder, ignore_errors=True)
            if last is not None:
                self._last_step = max(int(last), self._last_step if self._last_step is not None else int(last))

    def __repr__(self) -> str:
        return f"Monitor(run_id={self.run_id!r}, run_dir={str(self.run_dir)!r}, policy={self.policy!r})"
