"""`Monitor`: the framework-neutral training-time monitor.

::

    mon = Monitor(model, run_dir="wwmonitor-runs", every_n_epochs=1)
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

The run folder and store lifecycle (naming, resume, one writer) is
:mod:`.runfolder`.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from .._validate import check_interval
from ..analyze import AnalysisOptions
from ..describe import coverage_summary
from ..frameworks import is_torch_module
from ..layers import MatrixSpec, check_lora, extract_matrices, select
from ..records import Alert, SnapshotResult
from ..store import RunStore
from .analyzer import AnalysisWorker, AnalyzeFn, default_analyze
from .dispatcher import DISPATCH_FAULTS, Dispatcher
from .faults import Faults
from .policy import POLICIES, SnapshotQueue
from .reference import ReferenceWeights
from .render import Renderer
from .runfolder import RunFolder, versions
from .snapshot import BufferPool, Snapshot, copy_matrices

__all__ = ["Monitor"]

log = logging.getLogger("wwmonitor")

_LIVE: "weakref.WeakSet[Monitor]" = weakref.WeakSet()

#: fault counters of the whole monitor (keys of ``Monitor.stats``)
FAULT_KEYS = ("worker_errors", "duplicates", "dropped_on_close", *DISPATCH_FAULTS)


@atexit.register
def _close_live_monitors() -> None:  # a script that forgot close(): flush what is queued
    for mon in list(_LIVE):
        try:
            mon.close()
        except Exception as e:  # noqa: BLE001 - interpreter shutdown: say it, do not raise
            log.warning("wwmonitor: closing run %r at exit failed: %r", getattr(mon, "run_id", "?"), e)


def _patterns(p: Any) -> Optional[list[Any]]:
    return [p] if isinstance(p, (str, type)) else None if p is None else list(p)


def _split_owner(qualname: str) -> tuple[tuple[str, ...], str]:
    """``"a.b.weight"`` -> ``(("a", "b"), "weight")``: the module path and the parameter's name."""
    *mods, name = qualname.split(".")
    return tuple(mods), name


def _still_owned(model: Any, paths: list[tuple[tuple[str, ...], str, Any]]) -> bool:
    """Whether each cached parameter is still held by the module at its path (a few dict lookups:
    cheaper than walking ``model.parameters()``; a replaced submodule or parameter fails it)."""
    for mods, name, p in paths:
        m = model
        for k in mods:
            m = m._modules.get(k)
            if m is None:
                return False
        if m._parameters.get(name) is not p:
            return False
    return True


def _check_analysis_device(device: Any) -> str:
    """``analysis_device`` validated: ``"auto" | "cpu" | "cuda" | "cuda:N" | "torch"``; ``"cuda"``
    needs CUDA (``ValueError`` naming the argument otherwise)."""
    from ..spectral import check_device, resolve_device

    device = check_device(device, "analysis_device")
    return device if device == "auto" else resolve_device(device)


def _auto_device(specs: Sequence[MatrixSpec]) -> str:
    """``analysis_device="auto"``: the CUDA device of the first matrix held on CUDA when CUDA is
    available, else ``"cpu"``."""
    from ..spectral import auto_device

    return auto_device(sp.tensor for sp in specs)


def _matrix_specs(matrices: Mapping[str, Any]) -> list[MatrixSpec]:
    """``matrices`` (name -> array) as specs; a value that is not an array is an error naming its key."""
    specs = []
    for name, arr in matrices.items():
        if not hasattr(arr, "shape"):
            try:
                arr = np.asarray(arr)
            except Exception as e:  # noqa: BLE001
                raise TypeError(f"matrices[{name!r}]: not an array ({type(arr).__name__}): {e}") from e
            if arr.dtype == object or arr.ndim < 2:
                raise TypeError(
                    f"matrices[{name!r}]: expected a 2-D (or 3-D stacked) numeric array, "
                    f"got {type(matrices[name]).__name__}"
                )
        specs.append(MatrixSpec(str(name), "matrix", arr))
    return specs


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
        Name (and folder) of the run.  If a run of that name exists it is
        continued only with ``resume=True``; otherwise a new run
        ``<name>-2`` (``-3`` ...) is started and a log line says so.
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
        Object with ``evaluate(result[, on_error]) -> list[Alert]`` (and
        optionally ``close()``), called by the dispatcher before the sinks;
        if it has ``needs_weights = True`` (e.g. :class:`~wwmonitor.alerts.AlertRules`
        with the ``correlation_trap`` rule), the analyzer also calls its
        ``inspect_weights(name, W, lm)`` on every analysed matrix.
    queue_size, policy:
        Most snapshots held at once (waiting or in analysis; default 3:
        one in analysis, two waiting) and what to do when that many are held:
        ``"block" | "skip" | "latest"`` (see :mod:`wwmonitor.monitor.policy`).
    options:
        :class:`~wwmonitor.analyze.AnalysisOptions` (``keep_esd`` is forced on).
    config:
        Run configuration to store (hyper-parameters; reports read it).
    resume:
        Continue an existing run of the same ``run_name`` (default ``False``:
        start ``<name>-2``); steps already stored are not snapshotted again.
    close_timeout:
        Seconds :meth:`close` waits for queued snapshots.
    store:
        Write the embedded SQLite run store (``True``), none (``False``), or
        use this :class:`~wwmonitor.store.RunStore` (its folder becomes the
        run folder; ``run_dir``/``run_name`` are then ignored).
    analyze_fn:
        Per-matrix analysis ``(W, name, type, scale, options) -> LayerMetrics``
        (default :func:`wwmonitor.analyze.analyze_matrix`).
    sink_timeout:
        Seconds a sink's ``write``/``close`` may take; a sink that does not
        return in time is reported, counted (``stats["sinks_dropped"]``) and
        gets no further results.  Training never waits on a sink.
    esd_every_n_epochs, esd_layers:
        ESD figures for the sinks that write images (TensorBoard, W&B): drawn
        once per due snapshot by the dispatcher's renderer, at the first
        snapshot and then every ``esd_every_n_epochs`` epochs (``0``: never),
        for ``esd_layers`` (default all).
    announce:
        Log the one-line coverage summary at start (matrices monitored,
        layer types, weights skipped and why); it is always kept in
        :attr:`coverage` / :attr:`skipped`.
    history:
        How many recent :class:`SnapshotResult` to keep in :attr:`results`.
    blas_threads:
        NumPy BLAS threads for the analysis (default 1: the worker uses one
        core next to training; ``None``: leave the BLAS default).  Needs
        ``threadpoolctl``; without it the BLAS default is used.
    analysis_device:
        Where the ESDs are computed: ``"cpu"`` (NumPy/LAPACK on the worker
        thread), ``"cuda"`` / ``"cuda:N"`` (on the GPU, on a side CUDA stream of
        the worker so training kernels never queue behind it) or ``"auto"``
        (default: ``"cuda"`` -- the device of the model's first CUDA matrix --
        when the model is on CUDA and CUDA is available, else ``"cpu"``;
        resolved at the first snapshot and kept for the run).  Snapshots are
        host copies either way (pinned, asynchronous, as before): with
        ``"cuda"`` the worker uploads **one matrix at a time** to the GPU,
        so the analysis holds at most one matrix (float64) and its Gram
        in GPU memory, at the price of a host round trip over PCIe
        (device->host at snapshot time on a copy stream, host->device per
        matrix on the side stream; both off the training stream).  Keeping
        ``queue_size`` snapshots on the device instead would cost
        ``queue_size`` times the monitored weights in GPU memory.
        The metrics do not depend on the device (same float64 algorithm and
        SVD recheck).  ``"torch"`` runs the device code on the CPU (tests).
    lora:
        What is analysed of a peft LoRA layer: ``"effective"`` (default: the
        weight it computes with, ``W0 + scaling·B·A``, recomputed at every
        snapshot), ``"effective+update"`` (also ``<layer>.lora_update``, the
        rank-``r`` update) or ``"all"`` (also ``<layer>.base``, ``W0``); see
        :mod:`wwmonitor.layers`.
    base_model:
        Reference for the per-layer delta metrics (``delta_rel_norm``,
        ``delta_alpha``, ... of ``W − W_ref``; :mod:`wwmonitor.monitor.reference`):
        ``None`` (default: none), ``"first"`` (the weights at the first
        snapshot), or a model, a mapping of name -> array (``state_dict``) or a
        checkpoint path.  Costs one extra host copy of the monitored weights
        and one more ESD per matrix on the analysis thread.
    distributed:
        Training on several ranks (:mod:`wwmonitor.sharding`): ``"auto"``
        (default: FSDP2 when the model's parameters are ``DTensor`` shards of
        ``torch.distributed.fsdp.fully_shard``, DDP when it is a
        ``DistributedDataParallel``, else one process), ``"ddp"`` (the weights
        are replicated on every rank, e.g. the module inside a framework's DDP
        wrapper), ``"fsdp2"`` or ``"off"`` (every rank its own run).  Under DDP
        or FSDP2 construct the Monitor and call :meth:`snapshot` on every rank
        at the same steps: each rank analyses the matrices ``i`` with
        ``i mod world == rank`` (FSDP2: after one exchange that brings the
        owner just what it needs), rank 0 merges them and files them to its
        store, alerts and sinks; other ranks write nothing.  The metrics equal a
        single-process analysis.  ``policy`` is ``"block"`` there.  FSDP1
        (``FullyShardedDataParallel``) and DeepSpeed raise
        :class:`~wwmonitor.distributed.UnsupportedStrategyError`.

    Raises
    ------
    ValueError
        Bad configuration, naming the argument: unknown layer names, no
        analysable layers, non-positive intervals or queue size, unknown
        policy, an unwritable ``run_dir``.
    RunLockedError
        Another live monitor writes the same run (``resume=True`` twice).
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
        resume: bool = False,
        close_timeout: Optional[float] = 60.0,
        store: Union[bool, RunStore] = True,
        analyze_fn: Optional[AnalyzeFn] = None,
        history: int = 32,
        blas_threads: Optional[int] = 1,
        sink_timeout: Optional[float] = 60.0,
        esd_every_n_epochs: int = 5,
        esd_layers: Optional[Sequence[str]] = None,
        analysis_device: str = "auto",
        lora: str = "effective",
        base_model: Any = None,
        announce: bool = True,
        distributed: str = "auto",
    ) -> None:
        self.every_n_epochs = check_interval("every_n_epochs", every_n_epochs)
        self.every_n_steps = check_interval("every_n_steps", every_n_steps)
        self.queue_size = int(check_interval("queue_size", queue_size, allow_none=False))  # type: ignore[arg-type]
        self.history = int(check_interval("history", history, allow_none=False))  # type: ignore[arg-type]
        if blas_threads is not None:
            check_interval("blas_threads", blas_threads)
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.analysis_device = _check_analysis_device(analysis_device)
        self.lora = check_lora(lora)
        if close_timeout is not None and not close_timeout > 0:
            raise ValueError(f"close_timeout must be > 0 or None, got {close_timeout!r}")
        if options is not None and not isinstance(options, AnalysisOptions):
            raise TypeError(f"options must be an AnalysisOptions, got {type(options).__name__}")
        if alerts is not None and not callable(getattr(alerts, "evaluate", None)):
            raise TypeError(f"alerts must have an evaluate(result) method, got {type(alerts).__name__}")
        for i, s in enumerate(sinks):
            if not (callable(getattr(s, "write", None)) and callable(getattr(s, "close", None))):
                raise TypeError(f"sinks[{i}] ({type(s).__name__}) needs write(result) and close() methods")
        self.model = model
        self.announce = bool(announce)
        self.layers, self.exclude = _patterns(layers), _patterns(exclude)
        self.policy = policy
        self.options = options if options is not None else AnalysisOptions()
        weights_rules = alerts  # their weight inspection runs wherever the weights are analysed
        self._strategy = self._choose_strategy(model, distributed, alerts)
        if self._strategy is not None:  # DDP / FSDP2: rank 0 files the merged results, other ranks write nothing
            model = self.model = self._strategy.unwrap(model)
            policy, store, sinks, alerts = self._strategy.adjust(policy=policy, store=store, sinks=sinks, alerts=alerts)
            self.policy = policy
            self.announce = self.announce and self._strategy.writes  # rank 0 speaks for the run
        self.config = dict(config or {})
        self.close_timeout = close_timeout
        self._lock = threading.RLock()  # serialises snapshot() / run switching
        self._results: deque[SnapshotResult] = deque(maxlen=self.history)
        self._alerts: list[Alert] = []
        self._out_lock = threading.Lock()
        self.should_stop = False
        self._closed = False
        self._faults = Faults(FAULT_KEYS)
        self._counts = {"snapshots_taken": 0}
        self._layer_info: list[tuple[str, str, tuple[int, ...]]] = []
        self._spec_cache: Optional[tuple[Any, list[MatrixSpec], list[Any], list[Any], int]] = None
        self._spec_gen = 0
        self._device: Optional[str] = None if self.analysis_device == "auto" else self.analysis_device
        if model is not None:  # validate the layer selection now
            first = self._extract(model, None)
            self._layer_info = [(s.name, s.type, s.shape) for s in first]
            if self._device is None:
                self._device = _auto_device(first)
        #: reference of the delta metrics: one host copy of the monitored weights (None: no deltas)
        self._reference = None if base_model is None else ReferenceWeights(base_model, lora=self.lora)
        if self._reference is not None and self._layer_info:
            self._reference.bind([n for n, _, _ in self._layer_info])

        # --- run folder and store
        given = store if isinstance(store, RunStore) else None
        self._folder = RunFolder(Path(run_dir), run_name, resume=resume, use_store=store is not False, store=given)
        self._folder.open(self._meta(), self.config, given)
        if self._layer_info:
            self._folder.record_layers(self._layer_info, self._model_class(model))
        self._last_step: Optional[int] = max(self._folder.stored_steps) if self._folder.stored_steps else None
        if self._strategy is not None:  # every rank snapshots the same steps (rank 0's run decides)
            self._folder.run_id, self._folder.stored_steps, self._last_step = self._strategy.sync_run(
                self._folder.run_id, self._folder.stored_steps, self._last_step
            )

        # --- analyzer -> dispatcher
        self._dispatcher = Dispatcher(
            ([self.store] if self.store is not None else []) + list(sinks),
            alerts=alerts,
            renderer=Renderer(esd_every_n_epochs, esd_layers),
            on_result=self._on_result,
            store=self.store,
            sink_timeout=sink_timeout,
            faults=self._faults,
            name=f"wwmonitor-dispatch-{self.run_id}",
        )
        self._dispatcher.resume_after(self._last_step)
        self._pool = BufferPool(self.queue_size)
        self._queue = SnapshotQueue(self.queue_size, policy, self._pool)
        inspector = weights_rules if getattr(weights_rules, "needs_weights", False) else None
        make_worker = AnalysisWorker if self._strategy is None else self._strategy.make_worker
        self._worker = make_worker(
            self._queue,
            self._dispatcher.submit,
            options=self.options,
            analyze_fn=analyze_fn or default_analyze,
            inspector=inspector,
            faults=self._faults,
            name=f"wwmonitor-{self.run_id}",
            blas_threads=blas_threads,
            device=self._device or "cpu",
            reference=self._reference,
        )
        self._worker.start()
        _LIVE.add(self)

    def _choose_strategy(self, model: Any, distributed: str, alerts: Any) -> Any:
        from .strategies import choose_strategy

        return choose_strategy(
            model,
            distributed,
            options=self.options,
            needs_weights=bool(getattr(alerts, "needs_weights", False)),
            analysis_device=self.analysis_device,
        )

    @property
    def strategy(self) -> Any:
        """The DDP / FSDP2 snapshot strategy (:mod:`wwmonitor.monitor.strategies`: ``kind``, ``rank``,
        ``world``, ``layers`` -- the matrices this rank analyses); ``None`` in a single process."""
        return self._strategy

    # ------------------------------------------------------------ run folder
    @property
    def run_id(self) -> str:
        """This run's id (its folder name)."""
        return self._folder.run_id

    @property
    def run_name(self) -> str:
        return self._folder.run_name

    @property
    def run_dir(self) -> Path:
        """This run's folder (``run_dir/<run_id>``)."""
        return self._folder.path

    @property
    def store(self) -> Optional[RunStore]:
        """The run store (``None`` with ``store=False``)."""
        return self._folder.store

    @property
    def coverage(self) -> str:
        """The one-line summary logged at start: matrices monitored, layer types, weights skipped and why."""
        return getattr(self, "_coverage", "") or ""

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """``(weight name, reason)`` for every weight of the model that is not analysed."""
        return list(getattr(self, "_skipped", []))

    @property
    def resumed(self) -> bool:
        """Whether this monitor continues a run that already existed."""
        return self._folder.resumed

    def _meta(self) -> dict[str, Any]:
        def names(ps: Optional[list[Any]]) -> Optional[list[str]]:
            return None if ps is None else [str(getattr(p, "__name__", p)) for p in ps]

        return {
            "versions": versions(),
            "platform": __import__("platform").platform(),
            "monitor": {
                "every_n_epochs": self.every_n_epochs,
                "every_n_steps": self.every_n_steps,
                "analysis_device": self.analysis_device,
                "queue_size": self.queue_size,
                "policy": self.policy,
                "layers": names(self.layers),
                "exclude": names(self.exclude),
                "options": asdict(self.options),
            },
        }

    @staticmethod
    def _model_class(model: Any) -> Optional[str]:
        return None if model is None else f"{type(model).__module__}.{type(model).__qualname__}"

    # ------------------------------------------------------------ selection
    def _extract(self, model: Any, matrices: Optional[Mapping[str, Any]]) -> list[MatrixSpec]:
        skipped: list[tuple[str, str]] = []
        if matrices is not None:
            specs = select(_matrix_specs(matrices), layers=self.layers, exclude=self.exclude)
        elif self._strategy is not None:
            specs = self._strategy.extract(
                model, layers=self.layers, exclude=self.exclude, lora=self.lora, skipped=skipped
            )
        else:
            specs = extract_matrices(model, layers=self.layers, exclude=self.exclude, skipped=skipped, lora=self.lora)
        if specs and not getattr(self, "_coverage", None):  # the first walk: say what is monitored and skipped
            self._coverage = coverage_summary(specs, skipped)
            self._skipped = skipped
            if self.announce:
                log.info(self._coverage)
        if not specs:
            what = "matrices" if matrices is not None else f"model {type(model).__name__}"
            raise ValueError(f"no analysable layers in {what} (layers={self.layers!r}, exclude={self.exclude!r})")
        return specs

    def _specs_for(self, model: Any, matrices: Optional[Mapping[str, Any]]) -> tuple[list[MatrixSpec], Any]:
        """Specs for this snapshot, and a cache key when they can be reused.

        For a torch module whose matrices are all views of its parameters the
        walk is done once and reused while the module holds the very same
        parameter objects (a replaced submodule, ``model[0] = nn.Linear(...)``,
        brings new ones) and every one keeps its storage (``data_ptr``:
        ``model.to(...)``, ``.half()`` or a ``param.data = ...`` swap change
        it).  Any change triggers a fresh walk.
        """
        if matrices is not None or not is_torch_module(model) or getattr(self._strategy, "kind", "") == "fsdp2":
            return self._extract(model, matrices), None
        c = self._spec_cache
        if (
            c is not None
            and c[0]() is model
            and _still_owned(model, c[2])
            and all(p.data_ptr() == ptr for p, ptr in c[3])
        ):
            return c[1], c[4]
        specs = self._extract(model, None)
        owners = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        by_storage = {p.untyped_storage().data_ptr(): p for p in model.parameters()}
        backing = []
        for sp in specs:
            t = sp.tensor
            p = by_storage.get(t.untyped_storage().data_ptr()) if hasattr(t, "untyped_storage") else None
            if p is None or id(p) not in owners:  # computed weights (parametrizations ...): walk every time
                self._spec_cache = None
                return specs, None
            backing.append(p)
        uniq = list({id(p): p for p in backing}.values())
        paths = [(*_split_owner(owners[id(p)]), p) for p in uniq]
        self._spec_gen += 1
        self._spec_cache = (weakref.ref(model), specs, paths, [(p, p.data_ptr()) for p in uniq], self._spec_gen)
        return specs, self._spec_gen

    # ------------------------------------------------------------ triggering
    def _already_have(self, step: int) -> bool:
        return step in self._folder.stored_steps or (self._last_step is not None and step <= self._last_step)

    def should_snapshot(
        self, *, epoch: Optional[int] = None, step: Optional[int] = None, epoch_end: bool = True
    ) -> bool:
        """Whether a call with these arguments falls on a monitoring interval
        (and its step is not already stored)."""
        if step is not None and self._already_have(step):
            return False
        if self.every_n_epochs is None and self.every_n_steps is None:
            return True
        if self.every_n_steps is not None and step is not None and step % self.every_n_steps == 0:
            return True
        if self.every_n_epochs is not None and epoch is not None and epoch_end:
            return (int(epoch) + 1) % self.every_n_epochs == 0
        return False

    def snapshot(
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
        has) or when the queue policy skipped it (``stats["skipped"]``).
        Only the copy (and, under ``policy="block"``, waiting for a free
        analysis slot -- never for a sink) happens on the calling thread.

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
                    if step in self._folder.stored_steps
                    else f"is not after the last snapshot (step {self._last_step})"
                )
                self._faults.add("duplicates", f"wwmonitor: snapshot at step {step} not taken: the step {where}")
                return False
            if not self.should_snapshot(epoch=epoch, step=step, epoch_end=epoch_end):
                return False
            src = model if model is not None else self.model
            if self._strategy is not None:
                if matrices is not None:
                    raise ValueError(f"snapshot: matrices= is not supported under {self._strategy.kind}")
                src = self._strategy.unwrap(src)
            if src is None and matrices is None:
                raise ValueError("snapshot: no model to read (pass model= here or to Monitor(), or matrices=)")
            specs, key = self._specs_for(src, matrices)
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
                entries, ready = self._capture(specs, res.buffers, key)
                if key is None:  # computed weights (LoRA effective ...): the plan must not keep them alive
                    res.buffers.plan = None
                snap = Snapshot(
                    step=step,
                    epoch=None if epoch is None else int(epoch),
                    time=time.time(),
                    entries=entries,
                    buffers=res.buffers,
                    ready=ready,
                )
            finally:
                self._queue.commit(res, snap)
            self._pool.note_size()
            self._last_step = step
            self._counts["snapshots_taken"] += 1
            return True

    def _capture(self, specs: list[MatrixSpec], buffers: Any, key: Any) -> tuple[list[Any], Any]:
        """Copy the weights of one snapshot (under DDP / FSDP2: this rank's share, see :mod:`wwmonitor.sharding`)."""
        if self._strategy is None:
            return copy_matrices(specs, buffers, key)
        try:
            return self._strategy.capture(specs, buffers, key)
        except Exception as e:
            self._faults.add(
                "worker_errors", f"wwmonitor: {self._strategy.kind} snapshot failed ({type(e).__name__}: {e})"
            )
            raise

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
            if self._already_have(result.step) and result.step in self._folder.stored_steps:
                self._faults.add(
                    "duplicates", f"wwmonitor: result for step {result.step} not written: the step is already stored"
                )
                return False
            ok = self._dispatcher.submit(result)
            if ok:
                self._last_step = max(int(result.step), self._last_step if self._last_step is not None else -1)
            return ok

    # ------------------------------------------------------------ results
    def _on_result(self, res: SnapshotResult) -> None:
        with self._out_lock:
            self._results.append(res)
            self._alerts.extend(res.alerts)
            self._folder.stored_steps.add(res.step)
            if any(a.stop_training for a in res.alerts):
                self.should_stop = True

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
        (layers whose analysis raised), ``duplicates`` (steps already taken
        or stored), ``out_of_order`` (submitted results refused), ``store_errors``,
        ``sink_errors``, ``sinks_dropped`` (sinks past ``sink_timeout``),
        ``alert_errors`` (failing rules and weight inspections),
        ``figure_errors``, ``worker_errors``, ``dropped_on_close``,
        ``pending`` (snapshots not yet analysed), ``dispatch_pending``
        (results not yet through every sink), ``blocked_s`` (time
        ``snapshot()`` waited under ``block``), ``buffer_bytes`` /
        ``buffer_bytes_peak`` (host snapshot buffers now / at most)."""
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
        )
        if self._strategy is not None:
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
    def _on_background_thread(self) -> bool:
        t = threading.current_thread()
        return t is self._worker.thread or t is self._dispatcher.thread or t.name.startswith("wwmonitor-sink-")

    def flush(self, timeout: Optional[float] = None) -> None:
        """Wait until every queued snapshot has been analysed and written by every sink.

        Logs a warning (does not raise) when ``timeout`` seconds pass first.
        A no-op when called from one of the monitor's own threads (an alert
        action or a sink).
        """
        if self._on_background_thread():
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        idle = self._queue.wait_idle(timeout, self._worker.alive)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not (idle and self._dispatcher.wait_idle(left)):
            log.warning(
                "wwmonitor: flush timed out after %s s with %d snapshot(s) and %d result(s) pending",
                timeout,
                self._queue.pending,
                self._dispatcher.pending,
            )

    def close(self, timeout: Optional[float] = None) -> None:
        """Flush (up to ``timeout``, default ``close_timeout``), stop the
        threads and close every sink and the alerts object (each sink on its
        own thread).  Snapshots still unanalysed at the deadline are dropped,
        reported and counted in ``stats["dropped_on_close"]``.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _LIVE.discard(self)
        if self._on_background_thread():
            # called by a sink or an alert action: no waiting on ourselves
            self._queue.close()
            threading.Thread(target=self._dispatcher.close, name="wwmonitor-close", daemon=True).start()
            return
        timeout = self.close_timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        self._queue.wait_idle(timeout, self._worker.alive)
        dropped = self._queue.drain()
        if dropped or self._queue.pending:
            self._worker.abort.set()  # finish the layer in progress, skip the rest
        self._queue.close()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._worker.thread.join(left if left is None else left + 5.0)
        if dropped:
            self._faults.add(
                "dropped_on_close",
                f"wwmonitor: close() timed out after {timeout} s; {len(dropped)} "
                f"queued snapshot(s) (steps {[s.step for s in dropped]}) were not analysed",
                len(dropped),
            )
        if self._worker.alive():
            log.warning(
                "wwmonitor: the analysis thread is still inside one layer after close(); it stops "
                "after that layer (daemon thread, it will not keep the process alive)"
            )
        left = None if deadline is None else max(1.0, deadline - time.monotonic())
        if not self._dispatcher.close(left):
            log.warning(
                "wwmonitor: close() timed out with %d result(s) not written to every sink", self._dispatcher.pending
            )
        self._pool.clear()

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
        return {
            "version": 1,
            "run_root": str(self._folder.root),
            "run_id": self.run_id,
            "run_name": self.run_name,
            "last_step": self._last_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the run recorded in ``state`` (from :meth:`state_dict`): a restored checkpoint.

        If this monitor had started a different, still empty run, that run's
        folder is removed and the monitor switches to the checkpoint's run;
        snapshots with steps at or below the stored ``last_step`` are not taken again.
        """
        rid = str(state["run_id"])
        root = Path(state.get("run_root") or self._folder.root)
        last = state.get("last_step")
        with self._lock:
            if rid != self.run_id or root != self._folder.root:
                self.flush()
                old = self._folder.store
                self._folder.switch(root, rid, state.get("run_name"), self._meta(), self.config)
                if old is not None and self._folder.store is not None:
                    self._dispatcher.replace_sink(old, self._folder.store)
                if self._layer_info:
                    self._folder.record_layers(self._layer_info, self._model_class(self.model))
                if self._folder.stored_steps:
                    top = max(self._folder.stored_steps)
                    self._last_step = top if self._last_step is None else max(top, self._last_step)
            if last is not None:
                self._last_step = max(int(last), self._last_step if self._last_step is not None else int(last))
            self._dispatcher.resume_after(self._last_step)

    def __repr__(self) -> str:
        return f"Monitor(run_id={self.run_id!r}, run_dir={str(self.run_dir)!r}, policy={self.policy!r})"
