"""`Monitor`: the framework-neutral training-time monitor.

::

    mon = Monitor(model, "wwmonitor-runs", every_n_epochs=1)
    for epoch in range(E):
        train_one_epoch(...)
        mon.snapshot(epoch=epoch, step=global_step)   # copies weights, returns at once
    mon.close()                                       # flush, stop the threads, close the sinks

Three stages, data flowing one way:

* snapshotter (:mod:`.snapshot`, on the calling thread): weights -> host buffers,
  queued under a policy (:mod:`.policy`);
* analyzer (:mod:`.analyzer`, one background thread): buffers -> ``SnapshotResult``;
* dispatcher (:mod:`.dispatcher`, its own thread): step order, alerts,
  figures (:mod:`.render`), the run store and every sink; public
  :meth:`Monitor.submit` feeds it results analysed elsewhere (DDP ranks).

The options are :class:`~.options.MonitorOptions` (declared once, shared with every callback); when a call
is due is :class:`~.schedule.Schedule`; the threads and how they end are :class:`~.lifecycle.Pipeline`;
what the dispatcher reports back is :class:`~.status.RunStatus`; the run folder and store lifecycle
(naming, resume, one writer) is :mod:`.runfolder`; what the controllers read and file, :mod:`.control_channel`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..analyze import AnalysisOptions
from ..layers import MatrixSpec
from ..records import Alert, SnapshotResult
from ..store import RunStore
from .analyzer import default_analyze
from .control_channel import ControlChannel
from .dispatcher import Dispatcher
from .faults import Faults
from .lifecycle import FAULT_KEYS, Pipeline
from .loggers import build_logger_sinks
from .options import MonitorOptions
from .reference import ReferenceWeights
from .render import Renderer
from .runfolder import RunFolder
from .runstate import RunFolderAccess
from .schedule import Schedule
from .selection import Selection
from .snapshot import Snapshot
from .status import RunStatus
from .strategies import apply_strategy
from .unchanged import SnapshotCopier

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import OptionKwargs

__all__ = ["Monitor", "FAULT_KEYS"]

log = logging.getLogger("wwmonitor")


def _resolve_device(device: str) -> str:
    """``analysis_device`` resolved: ``"auto"`` stays (decided at the first walk); ``"cuda"`` needs CUDA
    (``ValueError`` naming the argument otherwise)."""
    from ..spectral import resolve_device

    return device if device == "auto" else resolve_device(device)


def _auto_device(specs: Sequence[MatrixSpec]) -> str:
    """``analysis_device="auto"``: the CUDA device of the first matrix held on CUDA when CUDA is
    available, else ``"cpu"``."""
    from ..spectral import auto_device

    return auto_device(sp.tensor for sp in specs)


class Monitor(RunFolderAccess, ControlChannel):
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
    root:
        Folder that holds the runs (default ``"wwmonitor-runs"``); this run's
        folder is ``root/<run_id>`` (:attr:`run_dir`).  ``run_dir=`` is the
        old name of this argument (it still works, with a ``DeprecationWarning``).
    **options:
        Every :class:`~wwmonitor.monitor.options.MonitorOptions` field, by
        keyword (the same names, defaults and meaning as the callbacks):
        ``run_name``, ``resume``, ``every_n_epochs``, ``every_n_steps``,
        ``layers``, ``exclude``, ``alerts`` (default ``"default"``),
        ``stop_on``, ``sinks``, ``loggers``, ``metrics``, ``queue_size``,
        ``policy``, ``options`` (:class:`~wwmonitor.analyze.AnalysisOptions`),
        ``config``, ``flush_timeout`` (``close_timeout``: old name),
        ``sink_timeout``, ``store``, ``analyze_fn``, ``history``,
        ``blas_threads``, ``analysis_nice``, ``esd_every_n_epochs``, ``esd_layers``,
        ``analysis_device``, ``lora``, ``base_model``, ``announce``,
        ``distributed``, ``carry_unchanged``.  A ``MonitorOptions`` object
        can be passed as ``settings=`` instead.

    Notes
    -----
    ``alerts`` objects with ``needs_weights = True`` (e.g. :class:`~wwmonitor.alerts.AlertRules`
    with the ``correlation_trap`` rule) also get ``inspect_weights(name, W, lm)`` on
    the analysis thread.  ``analysis_device="cuda"`` uploads one matrix at a time
    to the GPU on a side stream (snapshots stay host copies); the metrics do not
    depend on the device (same float64 algorithm).  GPU behaviour: not yet run on a GPU.

    ``distributed`` (:mod:`wwmonitor.monitor.strategies`): under DDP / FSDP2 build the Monitor and
    call :meth:`snapshot` on every rank at the same steps; rank 0 alone files the merged results.
    A monitor that is never closed is flushed and closed when it is garbage
    collected or at interpreter exit, with a warning (:mod:`wwmonitor.monitor.lifecycle`).

    Raises
    ------
    ValueError
        Bad configuration, naming the argument: unknown layer names, no
        analysable layers, non-positive intervals or queue size, unknown
        policy, an unwritable ``root``.
    TypeError
        An unknown option name (the closest known one is suggested).
    RunLockedError
        Another live monitor writes the same run (``resume=True`` twice).
    """

    def __init__(
        self,
        model: Any = None,
        root: Optional[Union[str, os.PathLike]] = None,
        *,
        settings: Optional[MonitorOptions] = None,
        **options: "Unpack[OptionKwargs]",
    ) -> None:
        kw: dict[str, Any] = dict(options)
        if root is not None:
            if "run_dir" in kw:
                raise TypeError("Monitor: root given twice (positionally and as run_dir=)")
            kw["root"] = root
        if settings is not None and not isinstance(settings, MonitorOptions):
            raise TypeError(f"settings must be a MonitorOptions, got {type(settings).__name__}")
        opts = MonitorOptions.from_kwargs("Monitor", settings, **kw)
        self.analysis_device = _resolve_device(opts.analysis_device)
        self.alert_rules = opts.resolved_alerts()
        # DDP / FSDP2 (a collective: every rank): rank 0 files the merged results, other ranks write nothing
        self._strategy: Any
        self._strategy, opts, model, self._dispatch_alerts = apply_strategy(
            model, opts, self.alert_rules, analysis_device=self.analysis_device
        )
        self.settings = opts
        self.model = model
        self.schedule = Schedule(opts.every_n_epochs, opts.every_n_steps)
        self.options = opts.options if opts.options is not None else AnalysisOptions()
        self.config = dict(opts.config)
        self._selection = Selection(opts.layers, opts.exclude, opts.lora, opts.announce, self._strategy)
        self._lock = threading.RLock()  # serialises snapshot() / run switching
        self._closed = False
        self._faults = Faults(FAULT_KEYS)
        self._counts = {"snapshots_taken": 0}
        self._layer_info: list[tuple[str, str, tuple[int, ...]]] = []
        self._device: Optional[str] = None if self.analysis_device == "auto" else self.analysis_device
        if model is not None:  # validate the layer selection now
            first = self._selection.extract(model, None)
            self._layer_info = [(s.name, s.type, s.shape) for s in first]
            if self._device is None:
                self._device = _auto_device(first)
        #: reference of the delta metrics: one host copy of the monitored weights (None: no deltas)
        self._reference = None if opts.base_model is None else ReferenceWeights(opts.base_model, lora=opts.lora)
        if self._reference is not None and self._layer_info:
            self._reference.bind([n for n, _, _ in self._layer_info])
        self._copier = SnapshotCopier(opts.carry_unchanged, self._strategy, self._faults)  # :mod:`.unchanged`
        self._open_folder(opts, model)
        self._start_pipeline(opts)

    def _open_folder(self, opts: MonitorOptions, model: Any) -> None:
        given = opts.store if isinstance(opts.store, RunStore) else None
        root = Path(opts.root if opts.root is not None else "wwmonitor-runs")
        use = opts.store is not False
        self._folder = RunFolder(root, opts.run_name, resume=opts.resume, use_store=use, store=given)
        self._folder.open(self._meta(), self.config, given)
        if self._layer_info:
            self._folder.record_layers(self._layer_info, self._model_class(model))
        self._last_step: Optional[int] = max(self._folder.stored_steps) if self._folder.stored_steps else None
        if self._strategy is not None:  # every rank snapshots the same steps (rank 0's run decides)
            self._folder.run_id, self._folder.stored_steps, self._last_step = self._strategy.sync_run(
                self._folder.run_id, self._folder.stored_steps, self._last_step
            )

    def _start_pipeline(self, opts: MonitorOptions) -> None:
        alerts = self.alert_rules
        sinks = list(opts.sinks)
        if isinstance(opts.loggers, Mapping):
            sinks += build_logger_sinks(opts.loggers, opts.metrics, self.config)
        self._status = RunStatus(opts.history, self._folder.stored_steps)
        self._dispatcher = Dispatcher(
            ([self.store] if self.store is not None else []) + sinks,
            alerts=self._dispatch_alerts,
            renderer=Renderer(opts.esd_every_n_epochs, opts.esd_layers),
            status=self._status,
            store=self.store,
            sink_timeout=opts.sink_timeout,
            faults=self._faults,
            name=f"wwmonitor-dispatch-{self.run_id}",
            nice=opts.analysis_nice,
        )
        self._dispatcher.resume_after(self._last_step)
        worker_kw = {
            "options": self.options,
            "analyze_fn": opts.analyze_fn or default_analyze,
            "inspector": alerts if getattr(alerts, "needs_weights", False) else None,
            "blas_threads": opts.blas_threads,
            "nice": opts.analysis_nice,
            "device": self._device or "cpu",
            "reference": self._reference,
            "carry": self._copier.state,
        }
        self._pipe = Pipeline(
            run_id=self.run_id,
            queue_size=opts.queue_size,
            policy=opts.policy,
            status=self._status,
            dispatcher=self._dispatcher,
            faults=self._faults,
            worker_kw=worker_kw,
            flush_timeout=opts.flush_timeout,
            make_worker=None if self._strategy is None else self._strategy.make_worker,
        )
        self._queue, self._pool, self._worker = self._pipe.queue, self._pipe.pool, self._pipe.worker
        # a script that forgets close(): flushed with a warning at gc or exit (no reference to self kept)
        self._finalizer = weakref.finalize(self, self._pipe.close_unclosed)

    @property
    def strategy(self) -> Any:
        """The DDP / FSDP2 snapshot strategy (:mod:`wwmonitor.monitor.strategies`: ``kind``, ``rank``,
        ``world``, ``layers`` -- the matrices this rank analyses); ``None`` in a single process."""
        return self._strategy

    # ------------------------------------------------------------ options
    every_n_epochs = property(lambda self: self.settings.every_n_epochs, doc="The epoch interval.")
    every_n_steps = property(lambda self: self.settings.every_n_steps, doc="The step interval.")
    queue_size = property(lambda self: self.settings.queue_size, doc="Most snapshots held at once.")
    policy = property(lambda self: self.settings.policy, doc="What to do when the queue is full.")
    history = property(lambda self: self.settings.history, doc="How many recent results are kept.")
    lora = property(lambda self: self.settings.lora, doc="What is analysed of a LoRA layer.")
    flush_timeout = property(lambda self: self.settings.flush_timeout, doc="Seconds flush/close wait.")
    announce = property(lambda self: self.settings.announce, doc="Whether the coverage line is logged.")
    layers = property(lambda self: self._selection.layers, doc="The layer selection patterns.")
    exclude = property(lambda self: self._selection.exclude, doc="The excluded patterns.")

    @property
    def close_timeout(self) -> Optional[float]:
        """Old name of :attr:`flush_timeout`."""
        return self.settings.flush_timeout

    # ------------------------------------------------------------ triggering
    def _already_have(self, step: int) -> bool:
        return self._status.is_stored(step) or (self._last_step is not None and step <= self._last_step)

    def should_snapshot(
        self, *, epoch: Optional[int] = None, step: Optional[int] = None, epoch_end: bool = True
    ) -> bool:
        """Whether a call with these arguments falls on a monitoring interval
        (:class:`~wwmonitor.monitor.schedule.Schedule`) and its step is not already taken or stored."""
        if step is not None and self._already_have(step):
            return False
        return self.schedule.due(step=step, epoch=epoch, epoch_end=epoch_end)

    def snapshot(  # long-function: keyword signature and docstring-like argument checks of the public entry point
        self,
        *,
        step: int,
        epoch: Optional[int] = None,
        model: Any = None,
        matrices: Optional[Mapping[str, Any]] = None,
        epoch_end: bool = True,
    ) -> bool:
        """Copy the monitored weights and queue them for analysis.

        Returns ``True`` when a snapshot was queued, ``False`` when the call
        is off-interval, when ``step`` is not greater than the last
        snapshotted or stored step (``stats["duplicates"]``, reported: this
        keeps results in step order, and a resumed run skips what it already
        has) or when the queue policy skipped it (``stats["skipped"]``). Only the copy happens on the
        calling thread (and, under ``policy="block"`` only, waiting for a free analysis slot; never a sink).

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
            if self._already_have(step):
                where = (
                    "is already stored in this resumed run"
                    if self._status.is_stored(step)
                    else f"is not after the last snapshot (step {self._last_step})"
                )
                self._faults.add("duplicates", f"wwmonitor: snapshot at step {step} not taken: the step {where}")
                return False
            if not self.should_snapshot(epoch=epoch, step=step, epoch_end=epoch_end):
                return False
            src = model if model is not None else self.model
            if self._strategy is not None:
                src = self._strategy.source(src, matrices)
            if src is None and matrices is None:
                raise ValueError("snapshot: no model to read (pass model= here or to Monitor(), or matrices=)")
            specs, key = self._selection.specs_for(src, matrices)
            self._first_seen(src, specs)
            res = self._queue.reserve(self._worker.alive)
            if res is None:
                self._faults.once(
                    "skip",
                    f"wwmonitor: analysis is behind training; snapshot at step {step} skipped "
                    f"(policy={self.policy!r}, queue_size={self.queue_size}); see Monitor.stats",
                )
                return False
            if res.dropped is not None:
                self._faults.once(
                    "coalesce",
                    f"wwmonitor: analysis is behind training; queued snapshot at step "
                    f"{res.dropped.step} replaced by step {step} (policy='latest')",
                )
            snap = None
            try:
                entries, ready, key, tokens = self._copier.copy(src, specs, res.buffers, key)
                if key is None:  # computed weights (LoRA effective ...): the plan must not keep them alive
                    res.buffers.plan = None
                snap = Snapshot(
                    step=step,
                    epoch=None if epoch is None else int(epoch),
                    time=time.time(),
                    entries=entries,
                    buffers=res.buffers,
                    ready=ready,
                    tokens=tokens,
                )
            finally:
                self._queue.commit(res, snap)
            self._pool.note_size()
            self._last_step = step
            self._counts["snapshots_taken"] += 1
            return True

    def _first_seen(self, src: Any, specs: Sequence[MatrixSpec]) -> None:
        """The first snapshot of a monitor built without a model: decide ``"auto"``, record the layers."""
        if self._device is None:  # "auto" without a model at construction: decided by the first snapshot
            self._device = self._worker.device = _auto_device(specs)
        if not self._layer_info:  # model first seen here
            self._layer_info = [(s.name, s.type, s.shape) for s in specs]
            try:
                self._folder.record_layers(self._layer_info, self._model_class(src))
            except Exception as e:  # noqa: BLE001 - a locked/full store must not stop training
                self._faults.add(
                    "store_errors",
                    f"wwmonitor: recording the layers of run {self.run_id!r} failed ({type(e).__name__}: {e})",
                )

    def submit(self, result: SnapshotResult) -> bool:
        """Hand a result analysed elsewhere (e.g. gathered from DDP ranks) to alerts, store and sinks.

        The one public hand-off point: the same path the monitor's own
        analyses take.  Results must come in step order; a step not after
        the last snapshotted/submitted one returns ``False`` and is counted
        (``stats["out_of_order"]``), never filed under another step.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError(f"Monitor for run {self.run_id!r} is closed")
            if self._status.is_stored(result.step):
                self._faults.add(
                    "duplicates", f"wwmonitor: result for step {result.step} not written: the step is already stored"
                )
                return False
            ok = self._dispatcher.submit(result)
            if ok:
                self._last_step = max(int(result.step), self._last_step if self._last_step is not None else -1)
            return ok

    # ------------------------------------------------------------ results
    @property
    def results(self) -> list[SnapshotResult]:
        """The most recent analysed snapshots (``history`` of them), in step order."""
        return self._status.results()

    @property
    def alerts_fired(self) -> list[Alert]:
        """Every alert produced so far (rules' and the monitor's own ``non_finite``)."""
        return self._status.alerts()

    @property
    def should_stop(self) -> bool:
        """Whether an alert asked to stop training (a rule listed in ``stop_on`` fired)."""
        return self._status.stop_requested

    @property
    def stop_alert(self) -> Optional[Alert]:
        """The first alert that asked to stop training (``None``: none)."""
        return self._status.stop_alert

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: ``snapshots_taken``, ``skipped`` (policy ``skip`` or dead worker), ``coalesced``
        (policy ``latest``), ``analysed``, ``errors`` (layers whose analysis raised), ``duplicates`` (steps
        already taken or stored), ``out_of_order`` (submitted results refused), ``store_errors``,
        ``sink_errors``, ``sinks_dropped`` (sinks past ``sink_timeout``), ``alert_errors`` (failing rules
        and weight inspections), ``figure_errors``, ``worker_errors``, ``dropped_on_close``, ``pending``
        (snapshots not yet analysed), ``dispatch_pending`` (results not yet through every sink),
        ``blocked_s`` (time ``snapshot()`` waited under ``block``), ``buffer_bytes`` / ``buffer_bytes_peak``
        (host snapshot buffers now / at most), ``monitor_cpu_s`` (CPU seconds of the background threads:
        analysis, dispatcher, sinks; ``time.thread_time`` of each)."""
        out: dict[str, Any] = dict(self._counts)
        out.update(self._faults.snapshot())
        out.update(
            skipped=self._queue.skipped,
            coalesced=self._queue.coalesced,
            analysed=self._worker.analysed,
            errors=self._worker.layer_errors,
            pending=self._queue.pending,
            blocked_s=self._queue.blocked_s,
            dispatch_pending=self._dispatcher.pending,
            buffer_bytes=self._pool.total_bytes,
            buffer_bytes_peak=self._pool.peak_bytes,
            monitor_cpu_s=self._worker.cpu_s + self._dispatcher.cpu_s,
        )
        if self._strategy is not None:  # rank, world_size (FSDP2: exchange bytes and seconds)
            out.update(self._strategy.stats())
        return out

    @property
    def sinks(self) -> list[Any]:
        """The sinks still receiving results (the run store first)."""
        return self._dispatcher.sinks

    def add_sink(self, sink: Any) -> None:
        """Add a sink; it receives every result dispatched from now on."""
        if self._closed:
            raise RuntimeError(f"Monitor for run {self.run_id!r} is closed")
        self._dispatcher.add_sink(sink)

    # ------------------------------------------------------------ lifecycle
    def flush(self, timeout: Optional[float] = None) -> None:
        """Wait until every queued snapshot has been analysed and written by every sink.

        Logs a warning (does not raise) when ``timeout`` seconds pass first
        (default: wait as long as it takes).  A no-op when called from one of
        the monitor's own threads (an alert action or a sink).
        """
        self._pipe.flush(timeout)

    def close(self, timeout: Optional[float] = None) -> None:
        """Flush (up to ``timeout``, default ``flush_timeout``), stop the
        threads and close every sink and the alerts object (each sink on its
        own thread).  Snapshots still unanalysed at the deadline are dropped,
        reported and counted in ``stats["dropped_on_close"]``.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._finalizer.detach()
        self._pipe.close(self.flush_timeout if timeout is None else timeout)

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Ctrl-C: do not keep the user waiting for the whole backlog
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.close(timeout=min(5.0, self.flush_timeout or 5.0) if interrupted else None)

    def __repr__(self) -> str:
        return f"Monitor(run_id={self.run_id!r}, run_dir={str(self.run_dir)!r}, policy={self.policy!r})"
