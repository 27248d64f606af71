"""The analyzer stage: host copies of one snapshot -> :class:`SnapshotResult`.

:func:`analyse_snapshot` is pure apart from the weights it reads: arrays in,
a result out, with every layer either analysed or carrying an error status
and its reason (a layer whose weights had not changed gets its earlier result,
``status="carried"``: :mod:`.unchanged`, the one state it keeps).
:class:`AnalysisWorker` is the one background thread that drains the
snapshot queue, analyses, frees the snapshot's buffers and submits the
result to the dispatcher -- it never calls a sink or an alert rule itself.

Why a thread and not a process: the expensive parts (the float64 Gram
product and ``eigvalsh``) run in BLAS/LAPACK, which release the GIL, so a
thread overlaps with training as well as a process does, without pickling
every snapshot (measured in ``benchmarks/bench_monitor.py``).  One thread
also keeps results in the order the snapshots were queued.

BLAS threads: the analysis runs with NumPy's BLAS limited to
``blas_threads`` (default 1, via ``threadpoolctl``), so it takes one core
next to training; on a busy machine a multi-threaded OpenBLAS ``eigvalsh``
competing with training threads was measured 10-50x slower.  The CPU route
runs no torch kernel on this thread (it reads the host buffers as NumPy
views).  The torch routes (``"torch"``, ``"cuda"``) do: torch's intra-op
thread count is set per thread from the process-wide ``torch.set_num_threads``
value (the default: every core), so the worker limits its *own* OpenMP team to
``blas_threads`` as well (``omp_set_num_threads`` acts on the calling thread
only) and never changes the training thread's count.

Priority: the thread lowers its own OS priority first
(``analysis_nice``, :mod:`~wwmonitor.monitor.priority`), so training keeps
its cores and the analysis runs in what is left.

Rules that need the raw weights (correlation traps) say so with
``needs_weights``; the analyzer then calls ``inspect_weights(name, W, lm)``
on the same host copy, so the user never wires anything by hand.

Analysis device (``Monitor(analysis_device=...)``): ``"cpu"`` analyses the
host copies with NumPy/LAPACK.  ``"cuda"`` uploads one matrix at a time from
the (pinned) host copy to the GPU and computes its ESD there (float64 Gram,
``eigvalsh``, the same SVD recheck), all on a **side CUDA stream** of this
thread, so the training stream never queues behind the analysis; only the
``M`` eigenvalues come back.  ``"torch"`` runs that same torch code on the
CPU (tests).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import traceback
from dataclasses import replace
from typing import Any, Callable, Optional

from ..analyze import AnalysisOptions, analyze_matrix
from ..frameworks import is_torch_tensor
from ..metrics import CARRIED, LayerMetrics
from ..records import SnapshotResult
from ..summary import model_summary
from .faults import Faults
from .policy import SnapshotQueue
from .priority import lower_this_thread
from .snapshot import Snapshot, as_numpy
from .unchanged import Carried, CarryState, carry_forward, host_checksum

__all__ = ["analyse_snapshot", "AnalysisWorker", "AnalyzeFn", "default_analyze"]

log = logging.getLogger("wwmonitor")

#: signature of the per-matrix analysis: (array, name, layer_type, scale, options) -> LayerMetrics
AnalyzeFn = Callable[[Any, str, str, float, AnalysisOptions], LayerMetrics]


def default_analyze(W: Any, name: str, layer_type: str, scale: float, options: AnalysisOptions) -> LayerMetrics:
    """:func:`wwmonitor.analyze.analyze_matrix` with the monitor's calling convention."""
    return analyze_matrix(W, name, layer_type=layer_type, scale=scale, options=options)


def _torch_route_analyze(W: Any, name: str, layer_type: str, scale: float, options: AnalysisOptions) -> LayerMetrics:
    """:func:`default_analyze` on the torch route, on the device ``W`` is already on."""
    return analyze_matrix(W, name, layer_type=layer_type, scale=scale, options=options, device="torch")


_SIDE_STREAMS: dict[Any, Any] = {}


def _side_stream(device: str) -> Any:
    """This process's analysis stream on CUDA ``device`` (one per device, created on first use):
    not the training stream, so training kernels never wait behind an ESD."""
    import torch

    dev = torch.device(device)
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    s = _SIDE_STREAMS.get(dev)
    if s is None:
        s = _SIDE_STREAMS[dev] = torch.cuda.Stream(device=dev)
    return s


def _to_device(W: Any, device: str) -> Any:
    """A host copy as the torch tensor the torch route analyses on ``device`` (``"torch"``: on the host,
    zero-copy; ``"cuda[:N]"``: uploaded, on the current -- side -- stream)."""
    from ..spectral import to_analysis_tensor

    if not is_torch_tensor(W):
        W = as_numpy(W)
    if device != "torch" and is_torch_tensor(W) and W.device.type == "cpu":
        import torch

        dev = torch.device(device)
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return W.to(dev, non_blocking=bool(W.is_pinned()))  # ordered on the side stream before the ESD
    return to_analysis_tensor(W, device)


def _failed_layer(name: str, typ: str, W: Any, reason: str) -> LayerMetrics:
    return LayerMetrics(name=name, type=typ, shape=tuple(int(s) for s in W.shape), status="error", message=reason)


def analyse_snapshot(  # long-function: one pass; per-layer error accounting
    snap: Snapshot,
    options: AnalysisOptions,
    analyze_fn: AnalyzeFn = default_analyze,
    abort: Optional[threading.Event] = None,
    inspector: Any = None,
    on_error: Optional[Callable[[str, str, BaseException], None]] = None,
    device: str = "cpu",
    reference: Any = None,
    carry: Optional[CarryState] = None,
) -> SnapshotResult:
    """Analyse every matrix of ``snap``; a layer that raises becomes ``status="error"`` with the reason.

    The λ-axis ESD and the fitted models that :func:`analyze_matrix` leaves in
    ``LayerMetrics.esd`` / ``.fits`` (``keep_esd=True``) move to
    ``SnapshotResult.esds`` / ``.fits``.  ``inspector`` (an object with
    ``inspect_weights(name, W, lm)``, e.g. alert rules that need the weights)
    sees each successfully analysed matrix; the per-rule failures it returns
    (rule id -> exception) go to ``SnapshotResult.inspect_errors``, and an
    exception it raises to ``on_error``.

    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"torch"``): where the
    ESDs are computed (see the module docstring).  Off the CPU, ``analyze_fn``
    receives a torch tensor on that device (the default one analyses it there);
    ``inspector`` always gets the host copy.

    ``reference`` (a :class:`~wwmonitor.monitor.reference.ReferenceWeights`): each layer's
    ``delta_*`` metrics against it, computed here from the host copy (same device route).

    ``carry`` (:class:`~wwmonitor.monitor.unchanged.CarryState`): entries holding a
    :class:`~wwmonitor.monitor.unchanged.Carried` get their earlier result, marked ``"carried"``; each
    analysed (``"ok"``) weight with a token in ``snap.tokens`` is remembered for later snapshots, and the
    summary counts the carried layers (``carried_layers``).  ``None``: no carrying (no such entries).
    """
    if snap.ready is not None:
        snap.ready()
    on_torch = device != "cpu"
    if on_torch and analyze_fn is default_analyze:
        analyze_fn = _torch_route_analyze
    on_cuda = device.startswith("cuda")
    # the worker keeps the ESD and uses the lean-memory eigen route (one thread, bounded memory)
    opts = options if (options.keep_esd and options.low_memory) else replace(options, keep_esd=True, low_memory=True)
    res = SnapshotResult(step=snap.step, epoch=snap.epoch, time=snap.time, layers=[])
    t0, c0 = time.perf_counter(), time.thread_time()
    if reference is not None:
        reference.bind([e[0] for e in snap.entries])
    for name, typ, scale, W in snap.entries:
        if isinstance(W, Carried):  # unchanged since its last analysis: that result, marked
            _carry_over(res, name, typ, W, carry)
            continue
        if abort is not None and abort.is_set():
            res.errors[name] = "not analysed: monitor closed before this layer was reached"
            res.layers.append(_failed_layer(name, typ, W, res.errors[name]))
            continue
        A = None if on_torch else as_numpy(W)  # the host copy as NumPy (for the inspector, made lazily off the CPU)
        try:
            if on_cuda:
                import torch

                with torch.cuda.stream(_side_stream(device)):
                    m = analyze_fn(_to_device(W, device), name, typ, scale, opts)
            else:
                m = analyze_fn(_to_device(W, device) if on_torch else A, name, typ, scale, opts)
        except Exception as e:  # noqa: BLE001 - any failure of one layer is recorded, never raised
            res.errors[name] = f"{type(e).__name__}: {e}"
            m = _failed_layer(name, typ, W, f"layer {name!r}: analysis failed: {res.errors[name]}")
            log.debug("wwmonitor: layer %s failed at step %s:\n%s", name, snap.step, traceback.format_exc())
        if inspector is not None and m.status == "ok":
            try:
                failed = inspector.inspect_weights(name, A if A is not None else as_numpy(W), m)
                if failed:
                    res.inspect_errors[name] = dict(failed)
            except Exception as e:  # noqa: BLE001 - the layer's metrics are kept
                if on_error is not None:
                    on_error("alerts", f"step {snap.step}, layer {name!r} (weight inspection)", e)
        if reference is not None and not (abort is not None and abort.is_set()):  # W − W_ref (never raises)
            if on_cuda:
                import torch

                with torch.cuda.stream(_side_stream(device)):
                    reference.apply(name, typ, scale, W, m, options=opts, device=device)
            else:
                reference.apply(name, typ, scale, W if A is None else A, m, options=opts, device=device)
        _hand_over(res, name, m)
        if carry is not None and name in snap.tokens:
            _remember(carry, snap, name, W, m, res)
    if on_cuda:  # nothing of this snapshot may still read its host buffers once they go back to the pool
        _side_stream(device).synchronize()
    res.summary = model_summary(res.layers)
    if carry is not None:
        res.summary["carried_layers"] = sum(lm.status == CARRIED for lm in res.layers)
    res.meta["analysis_s"] = time.perf_counter() - t0  # wall seconds in the worker
    res.meta["analysis_cpu_s"] = time.thread_time() - c0  # CPU seconds of the worker thread
    res.meta["analysis_device"] = device
    return res


def _carry_over(res: SnapshotResult, name: str, typ: str, c: Carried, carry: Optional[CarryState]) -> None:
    """A carried entry's earlier result into ``res`` (an error layer when it is gone: never silently missing)."""
    if carry is None:
        m, esd, fits = _failed_layer(name, typ, c, f"layer {name!r}: not analysed: carried without a state"), None, None
    else:
        m, esd, fits = carry_forward(carry, name, typ, c)
    if m.status == "error":
        res.errors[name] = m.message
    m.esd, m.fits = esd, fits
    _hand_over(res, name, m)


def _remember(carry: CarryState, snap: Snapshot, name: str, W: Any, m: LayerMetrics, res: SnapshotResult) -> None:
    """Keep an analysed weight's result with its fingerprint (checksum of the host copy) for later snapshots."""
    checksum = host_checksum(W) if m.status == "ok" else None
    if checksum is None:
        carry.forget(name)
        return
    token = replace(snap.tokens[name], checksum=checksum)
    carry.keep(name, token, snap.step, m, res.esds.get(name), res.fits.get(name))


def _hand_over(res: SnapshotResult, name: str, m: LayerMetrics) -> None:
    """Move the layer's ESD and fits from its metrics record to the result's typed fields."""
    if m.esd is not None:
        res.esds[name] = m.esd
    if m.fits:
        res.fits[name] = m.fits
    m.esd, m.fits = None, None
    res.layers.append(m)


class AnalysisWorker:
    """One daemon thread: snapshot queue -> :func:`analyse_snapshot` -> ``submit``.

    Buffers go back to the pool as soon as a snapshot is analysed.  The
    result is submitted before the queue slot is marked done, so once the
    queue is idle every result is in the dispatcher.
    """

    def __init__(
        self,
        queue: SnapshotQueue,
        submit: Callable[[SnapshotResult], Any],
        *,
        options: AnalysisOptions,
        analyze_fn: AnalyzeFn = default_analyze,
        inspector: Any = None,
        faults: Optional[Faults] = None,
        name: str = "wwmonitor-worker",
        blas_threads: Optional[int] = 1,
        device: str = "cpu",
        reference: Any = None,
        nice: int = 0,
        carry: Optional[CarryState] = None,
    ) -> None:
        self.queue = queue
        self.submit = submit
        self.options = options
        self.analyze_fn = analyze_fn
        self.inspector = inspector
        self.faults = faults if faults is not None else Faults(("worker_errors", "alert_errors"))
        self.blas_threads = blas_threads
        #: how much the thread raises its own nice value when it starts (0: not at all)
        self.nice = nice
        #: where the ESDs are computed ("cpu", "cuda[:N]", "torch"); set before the first snapshot is queued
        self.device = device
        #: ReferenceWeights of the delta metrics (None: none)
        self.reference = reference
        #: earlier results of unchanged weights (None: carrying is off)
        self.carry = carry
        self._tpc: Any = None
        self.abort = threading.Event()
        self.layer_errors = 0
        self.analysed = 0
        #: CPU seconds this thread has used so far (``time.thread_time``, updated after each snapshot)
        self.cpu_s = 0.0
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def _on_error(self, where: str, what: str, exc: BaseException) -> None:
        self.faults.add("alert_errors", f"wwmonitor: {where} failed at {what} ({type(exc).__name__}: {exc})")

    def _run(self) -> None:
        lower_this_thread(self.nice, "analysis")
        while True:
            snap = self.queue.get()
            if snap is None:
                return
            try:
                self._process(snap)
            except Exception as e:  # noqa: BLE001 - the worker must survive anything
                self.faults.add(
                    "worker_errors",
                    f"wwmonitor: analysing step {snap.step} failed ({type(e).__name__}: {e}); that snapshot is lost",
                )
            finally:
                self.cpu_s = time.thread_time()
                self.queue.done()

    def _process(self, snap: Snapshot) -> None:
        """Analyse one snapshot and hand the result on (the sharded worker gathers it to rank 0 instead)."""
        self.submit(self._analyse(snap))

    def _analyse(self, snap: Snapshot) -> SnapshotResult:
        try:
            with self._blas_limit():
                res = analyse_snapshot(
                    snap,
                    self.options,
                    self.analyze_fn,
                    self.abort,
                    self.inspector,
                    self._on_error,
                    device=self.device,
                    reference=self.reference,
                    carry=self.carry,
                )
        finally:
            self.queue.pool.release(snap.buffers)  # free for the next snapshot as early as possible
            snap.entries = []
        self.layer_errors += len(res.errors)
        self.analysed += 1
        return res

    def _blas_limit(self) -> Any:
        """Context manager limiting NumPy's BLAS threads during one analysis (and, on a torch route,
        this thread's own OpenMP team: torch's intra-op threads of the worker, not of training)."""
        if self.blas_threads is None:
            return contextlib.nullcontext()
        if self._tpc is None:
            try:
                from threadpoolctl import ThreadpoolController

                self._tpc = ThreadpoolController()
            except ImportError:
                self.faults.once(
                    "no-threadpoolctl",
                    "wwmonitor: threadpoolctl is not installed; the analysis "
                    "runs with the BLAS default thread count (blas_threads is ignored)",
                )
                self.blas_threads = None
                return contextlib.nullcontext()
        if self.device == "cpu" or "torch" not in sys.modules:  # the CPU route runs no torch kernel here
            return self._tpc.limit(limits=self.blas_threads, user_api="blas")
        import torch

        torch.get_num_threads()  # torch sets this thread's team size on first use: let it, then limit it
        return self._tpc.limit(limits={"blas": self.blas_threads, "openmp": self.blas_threads})
