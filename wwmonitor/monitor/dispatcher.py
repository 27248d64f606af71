"""The dispatcher: the one hand-off point between analysis and every output.

``submit(result)`` is the only way a :class:`~wwmonitor.records.SnapshotResult`
reaches the alert rules, the renderer, the run store and the sinks.  The
monitor's analysis thread submits what it analysed; a distributed run
gathers per-rank results on rank 0 and submits them there.  The dispatcher

1. keeps step order: a result whose step is not greater than the last
   dispatched one is refused, counted (``out_of_order``) and reported --
   never filed under another step;
2. evaluates the alert rules (``alerts.evaluate(result, on_error=...)``) and
   adds the monitor's own ``non_finite`` alerts;
3. draws the due ESD figures once (:class:`~wwmonitor.monitor.render.Renderer`),
   only when a sink writes images;
4. records the result in its :class:`~wwmonitor.monitor.status.RunStatus`
   (:attr:`Dispatcher.status`: history, alerts, stored steps, the stop
   request -- the one channel the training thread reads, under that
   object's lock), then hands it to every sink, each on its own writer thread.

Sinks only write.  Each sink has one thread of its own (so a sink is always
called from the same thread -- wandb's client needs that) and a deadline: a
``write`` or ``close`` that has not returned after ``sink_timeout`` seconds
marks the sink stuck; it is reported, counted (``sinks_dropped``) and gets no
further results.  Training never waits on a sink: ``submit`` only enqueues.

The dispatcher thread (alert rules, ESD figures -- matplotlib, the costliest
part) and every sink thread (SQLite, TensorBoard, W&B ...) lower their own OS
priority by ``nice`` when they start, like the analysis thread
(:mod:`~wwmonitor.monitor.priority`), so they run in the time training leaves.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from typing import Any, Callable, Optional, Sequence, Union

from ..records import Alert, ControlRecord, SnapshotResult
from .faults import Faults
from .priority import lower_this_thread
from .render import Renderer
from .status import RunStatus

__all__ = ["Dispatcher", "SinkWriter", "nonfinite_alerts", "DISPATCH_FAULTS"]

log = logging.getLogger("wwmonitor")

#: the fault counters the dispatcher owns (keys of ``Monitor.stats``)
DISPATCH_FAULTS = ("sink_errors", "store_errors", "alert_errors", "figure_errors", "sinks_dropped", "out_of_order")


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
            out.append(
                Alert(
                    step=result.step,
                    epoch=result.epoch,
                    rule="non_finite",
                    severity="error",
                    message=m.message or f"layer {m.name!r}: non-finite weights",
                    layer=m.name,
                )
            )
        active.add(m.name)
    return out


class SinkTimeout(Exception):
    """A sink call did not return within its deadline."""


class SinkWriter:
    """One sink and the thread that calls it; :meth:`call` waits at most ``timeout`` seconds."""

    def __init__(self, sink: Any, label: str, timeout: Optional[float], is_store: bool = False, nice: int = 0) -> None:
        self.sink = sink
        self.label = label
        self.timeout = timeout
        self.is_store = is_store
        self.nice = nice
        #: CPU seconds this sink's thread has used so far (updated after each call)
        self.cpu_s = 0.0
        self.dropped = False
        self._jobs: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=f"wwmonitor-sink-{label}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        lower_this_thread(self.nice, "sink")
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, done, box = job
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - handed back to the dispatcher
                box["exc"] = e
            finally:
                self.cpu_s = time.thread_time()
                done.set()

    def call(self, fn: Callable[[], None]) -> Optional[BaseException]:
        """Run ``fn`` on the sink's thread; its exception (or ``None``), or raise :class:`SinkTimeout`."""
        done = threading.Event()
        box: dict[str, BaseException] = {}
        self._jobs.put((fn, done, box))
        if not done.wait(self.timeout):
            self.dropped = True
            self._jobs.put(None)  # if it ever returns, the thread ends
            raise SinkTimeout()
        return box.get("exc")

    def stop(self, join: bool = True) -> None:
        """End the thread after its queued calls (a stuck thread is left to the daemon flag)."""
        if self.dropped:
            return
        self._jobs.put(None)
        if join and threading.current_thread() is not self.thread:
            self.thread.join(self.timeout)


class Dispatcher:
    """Step order, alerts, figures and sinks for one run (see the module docstring).

    Parameters
    ----------
    sinks:
        Objects with ``write(result)`` and ``close()``; the run store first.
    alerts:
        Object with ``evaluate(result[, on_error])`` (and optionally ``close()``), or ``None``.
    renderer:
        Draws figures when a sink has ``wants_figures = True``.
    status:
        Where every dispatched result is recorded, after alerts and figures, before the sinks
        (default: a new :class:`RunStatus`); the training thread reads :attr:`status` only.
    store:
        The run store among ``sinks`` (its failures count as ``store_errors``).
    sink_timeout:
        Seconds a sink's ``write``/``close`` may take before it is dropped (``None``: no deadline).
    nice:
        How much the dispatcher and sink threads raise their nice value (``0``: not at all).
    """

    def __init__(
        self,
        sinks: Sequence[Any],
        *,
        alerts: Any = None,
        renderer: Optional[Renderer] = None,
        status: Optional[RunStatus] = None,
        store: Any = None,
        sink_timeout: Optional[float] = 60.0,
        faults: Optional[Faults] = None,
        name: str = "wwmonitor-dispatch",
        nice: int = 0,
    ) -> None:
        if sink_timeout is not None and not sink_timeout > 0:
            raise ValueError(f"sink_timeout must be > 0 or None, got {sink_timeout!r}")
        self.alerts = alerts
        self.renderer = renderer if renderer is not None else Renderer()
        #: the channel back to the training thread (written here, read by the monitor)
        self.status = status if status is not None else RunStatus()
        self.sink_timeout = sink_timeout
        self.faults = faults if faults is not None else Faults(DISPATCH_FAULTS)
        self._store = store
        self.nice = nice
        self._writers: list[SinkWriter] = []
        self._wlock = threading.Lock()
        for s in sinks:
            self.add_sink(s)
        self._alerts_take_on_error = _accepts_on_error(alerts)
        self._nonfinite: set[str] = set()
        self._inbox: "queue.Queue[Union[SnapshotResult, tuple[ControlRecord, ...], None]]" = queue.Queue()
        self._last_step: Optional[int] = None
        self._order_lock = threading.Lock()
        self._busy = 0
        self._idle = threading.Condition()
        self.dispatched = 0
        #: CPU seconds of the dispatcher thread and of the sink threads it has retired (see :attr:`cpu_s`)
        self._cpu_s = 0.0
        self._retired_cpu_s = 0.0
        self._closed = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    # ------------------------------------------------------------ public
    def submit(self, result: SnapshotResult) -> bool:
        """Queue ``result`` for alerts, figures and sinks; returns at once.

        Returns ``False`` (and counts ``out_of_order``, with a log line naming
        both steps) when ``result.step`` is not greater than the last step
        submitted: results are filed in step order, never under another step.
        """
        if not isinstance(result, SnapshotResult):
            raise TypeError(f"submit: expected a SnapshotResult, got {type(result).__name__}")
        with self._order_lock:
            if self._closed:
                raise RuntimeError("submit: the dispatcher is closed")
            if self._last_step is not None and result.step <= self._last_step:
                self.faults.add(
                    "out_of_order",
                    f"wwmonitor: result for step {result.step} arrived after step "
                    f"{self._last_step}; not written (results are kept in step order)",
                )
                return False
            self._last_step = int(result.step)
            with self._idle:
                self._busy += 1
            self._inbox.put(result)
        return True

    def submit_control(self, records: Sequence[ControlRecord]) -> None:
        """Queue a controller's assignments for every sink with ``write_control(records)`` (the run store
        first); returns at once.  They keep their own steps (training steps): no step-order check."""
        batch = tuple(records)
        if not all(isinstance(r, ControlRecord) for r in batch):
            raise TypeError("submit_control: expected ControlRecord objects")
        if not batch:
            return
        with self._order_lock:
            if self._closed:
                raise RuntimeError("submit_control: the dispatcher is closed")
            with self._idle:
                self._busy += 1
            self._inbox.put(batch)

    @property
    def last_step(self) -> Optional[int]:
        return self._last_step

    def resume_after(self, step: Optional[int]) -> None:
        """Results must come after ``step`` (a resumed run's last stored step)."""
        with self._order_lock:
            if step is not None and (self._last_step is None or step > self._last_step):
                self._last_step = int(step)

    def add_sink(self, sink: Any) -> None:
        """Add a sink; it receives every result dispatched from now on."""
        if not (callable(getattr(sink, "write", None)) and callable(getattr(sink, "close", None))):
            raise TypeError(f"sink {type(sink).__name__} needs write(result) and close() methods")
        label = f"{type(sink).__name__}-{len(self._writers)}"
        w = SinkWriter(sink, label, self.sink_timeout, is_store=sink is self._store, nice=self.nice)
        with self._wlock:
            self._writers.append(w)

    def replace_sink(self, old: Any, new: Any) -> None:
        """Swap one sink for another (the run store, when a checkpoint switches runs)."""
        with self._wlock:
            for i, w in enumerate(self._writers):
                if w.sink is old:
                    w.stop(join=False)
                    self._retired_cpu_s += w.cpu_s
                    self._writers[i] = SinkWriter(new, w.label, self.sink_timeout, is_store=w.is_store, nice=self.nice)
        if old is self._store:
            self._store = new

    @property
    def sinks(self) -> list[Any]:
        """The sinks still receiving results."""
        with self._wlock:
            return [w.sink for w in self._writers if not w.dropped]

    @property
    def cpu_s(self) -> float:
        """CPU seconds used so far by the dispatcher thread (alerts, figures) and every sink thread."""
        with self._wlock:
            sinks = sum(w.cpu_s for w in self._writers)
        return self._cpu_s + self._retired_cpu_s + sinks

    @property
    def pending(self) -> int:
        """Results submitted and not yet through every sink."""
        with self._idle:
            return self._busy

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Wait until every submitted result went through all sinks; ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left if left is not None else 1.0)
        return True

    def close(self, timeout: Optional[float] = None) -> bool:
        """Dispatch what is queued (up to ``timeout``), then close the alerts and every sink.

        Returns ``False`` when results were still queued at the deadline (they
        are counted by the caller and not written).
        """
        with self._order_lock:
            if self._closed:
                return True
            self._closed = True
        done = self.wait_idle(timeout)
        self._inbox.put(None)  # the thread closes the alerts and sinks (each call bounded by sink_timeout)
        if threading.current_thread() is not self.thread:
            self.thread.join()
        return done

    # ------------------------------------------------------------ thread
    def _run(self) -> None:
        lower_this_thread(self.nice, "dispatcher")
        while True:
            res = self._inbox.get()
            if res is None:
                self._close_outputs()
                self._cpu_s = time.thread_time()
                return
            try:
                if isinstance(res, tuple):
                    self._dispatch_control(res)
                else:
                    self._dispatch(res)
            except Exception as e:  # noqa: BLE001 - the dispatcher must survive anything
                where = f"step {res.step}" if isinstance(res, SnapshotResult) else "controller records"
                self.faults.add("sink_errors", f"wwmonitor: dispatching {where} failed ({type(e).__name__}: {e})")
            finally:
                self._cpu_s = time.thread_time()
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _dispatch(self, res: SnapshotResult) -> None:
        self._evaluate_alerts(res)
        res.alerts.extend(nonfinite_alerts(res, self._nonfinite))
        with self._wlock:
            writers = [w for w in self._writers if not w.dropped]
        if any(getattr(w.sink, "wants_figures", False) for w in writers):
            failed = self.renderer.render(res)
            if failed:
                first = next(iter(res.figure_errors.items()))
                self.faults.add(
                    "figure_errors",
                    f"wwmonitor: {failed} ESD figure(s) of step {res.step} could not "
                    f"be drawn (e.g. {first[0]}: {first[1]}); the other outputs are written",
                    failed,
                )
        self.dispatched += 1
        self.status.record(res)
        for w in writers:
            self._write(w, _call(w.sink.write, res), f"step {res.step}")

    def _dispatch_control(self, records: tuple[ControlRecord, ...]) -> None:
        with self._wlock:
            writers = [w for w in self._writers if not w.dropped and callable(getattr(w.sink, "write_control", None))]
        for w in writers:
            self._write(w, _call(w.sink.write_control, records), f"step {records[0].step}")

    def _evaluate_alerts(self, res: SnapshotResult) -> None:
        if self.alerts is None:
            return

        def on_error(where: str, what: str, exc: BaseException) -> None:
            self.faults.add("alert_errors", f"wwmonitor: {where} failed at {what} ({type(exc).__name__}: {exc})")

        try:
            fired = (
                self.alerts.evaluate(res, on_error=on_error)
                if self._alerts_take_on_error
                else self.alerts.evaluate(res)
            )
            res.alerts.extend(fired or [])
        except Exception as e:  # noqa: BLE001 - a broken rules object loses the alerts, not the row
            on_error("alerts", f"step {res.step}", e)

    def _write(self, w: SinkWriter, fn: Callable[[], None], where: str) -> None:
        key = "store_errors" if w.is_store else "sink_errors"
        try:
            exc = w.call(fn)
        except SinkTimeout:
            self.faults.add(
                "sinks_dropped",
                f"wwmonitor: sink {type(w.sink).__name__} did not return from write() "
                f"within {self.sink_timeout} s at {where}; it is dropped and gets no further "
                "results (training continues)",
            )
            return
        if exc is not None:
            extra = " Earlier snapshots stay in the store; training continues." if w.is_store else ""
            self.faults.add(
                key,
                f"wwmonitor: sink {type(w.sink).__name__} failed at {where} ({type(exc).__name__}: {exc}).{extra}",
            )

    def _close_outputs(self) -> None:
        if self.alerts is not None and callable(getattr(self.alerts, "close", None)):
            try:
                self.alerts.close()
            except Exception as e:  # noqa: BLE001
                self.faults.add("alert_errors", f"wwmonitor: closing the alert rules failed ({type(e).__name__}: {e})")
        with self._wlock:
            writers = [w for w in self._writers if not w.dropped]
        for w in writers:
            key = "store_errors" if w.is_store else "sink_errors"
            try:
                exc = w.call(w.sink.close)
            except SinkTimeout:
                self.faults.add(
                    "sinks_dropped",
                    f"wwmonitor: sink {type(w.sink).__name__} did not return from "
                    f"close() within {self.sink_timeout} s; abandoned",
                )
                continue
            if exc is not None:
                self.faults.add(
                    key, f"wwmonitor: closing sink {type(w.sink).__name__} failed ({type(exc).__name__}: {exc})"
                )
            w.stop()


def _call(fn: Callable[[Any], None], arg: Any) -> Callable[[], None]:
    """``fn(arg)`` as a call without arguments (bound now, not when the sink thread runs it)."""
    return lambda: fn(arg)


def _accepts_on_error(alerts: Any) -> bool:
    """Whether ``alerts.evaluate`` takes an ``on_error`` keyword (user objects may not)."""
    fn = getattr(alerts, "evaluate", None)
    if fn is None:
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "on_error" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
