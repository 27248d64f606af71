"""The monitor's background machinery and how it ends: :class:`Pipeline`.

One :class:`Pipeline` per :class:`~wwmonitor.Monitor`: the bounded snapshot
queue and its host buffers, the analysis thread, the dispatcher thread and
the :class:`~wwmonitor.monitor.status.RunStatus` channel between them and
the training thread.  It holds no reference to the ``Monitor`` itself, so a
``weakref.finalize`` on the monitor can close it.

A script that never calls ``close()``
-------------------------------------
Each monitor registers ``weakref.finalize(monitor, pipeline.close_unclosed)``
(no import-time hook, no process-wide list).  It runs when the monitor is
garbage collected or, at the latest, at interpreter exit.  It logs a
warning naming the run (``"... was not closed; flushing N snapshot(s) ..."``),
waits up to ``flush_timeout`` for the queued snapshots and results, closes
the sinks, and reports (warning, ``stats["dropped_on_close"]``) what it
could not write.  ``tests/test_monitor.py::test_unclosed_monitor_flushes_at_exit``
runs such a script.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

from .analyzer import AnalysisWorker
from .dispatcher import DISPATCH_FAULTS, Dispatcher
from .faults import Faults
from .policy import SnapshotQueue
from .snapshot import BufferPool
from .status import RunStatus

__all__ = ["Pipeline", "FAULT_KEYS"]

log = logging.getLogger("wwmonitor")

#: fault counters of the whole monitor (keys of ``Monitor.stats``)
FAULT_KEYS = ("worker_errors", "duplicates", "dropped_on_close", *DISPATCH_FAULTS)


class Pipeline:
    """Queue -> analysis thread -> dispatcher thread -> sinks, for one run (see the module docstring)."""

    def __init__(
        self,
        *,
        run_id: str,
        queue_size: int,
        policy: str,
        status: RunStatus,
        dispatcher: Dispatcher,
        faults: Faults,
        worker_kw: dict[str, Any],
        flush_timeout: Optional[float],
        make_worker: Any = None,
    ) -> None:
        self.run_id = run_id
        self.status = status
        self.faults = faults
        self.dispatcher = dispatcher
        self.flush_timeout = flush_timeout
        self.pool = BufferPool(queue_size)
        self.queue = SnapshotQueue(queue_size, policy, self.pool)
        make_worker = make_worker or AnalysisWorker  # DDP / FSDP2: the strategy's worker (gathers to rank 0)
        self.worker = make_worker(self.queue, dispatcher.submit, faults=faults, name=f"wwmonitor-{run_id}", **worker_kw)
        self.closed = False
        self._lock = threading.Lock()
        self.worker.start()

    def on_background_thread(self) -> bool:
        t = threading.current_thread()
        return t is self.worker.thread or t is self.dispatcher.thread or t.name.startswith("wwmonitor-sink-")

    def flush(self, timeout: Optional[float]) -> None:
        """Wait until every queued snapshot is analysed and written by every sink (warns on timeout)."""
        if self.on_background_thread():
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        idle = self.queue.wait_idle(timeout, self.worker.alive)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not (idle and self.dispatcher.wait_idle(left)):
            log.warning(
                "wwmonitor: flush timed out after %s s with %d snapshot(s) and %d result(s) pending",
                timeout,
                self.queue.pending,
                self.dispatcher.pending,
            )

    def _claim(self) -> bool:
        with self._lock:
            if self.closed:
                return False
            self.closed = True
            return True

    def close(self, timeout: Optional[float]) -> None:
        """Flush up to ``timeout``, stop both threads, close the alerts and every sink (idempotent).

        Snapshots still unanalysed at the deadline are dropped, reported and
        counted (``dropped_on_close``).
        """
        if not self._claim():
            return
        if self.on_background_thread():  # called by a sink or an alert action: no waiting on ourselves
            self.queue.close()
            threading.Thread(target=self.dispatcher.close, name="wwmonitor-close", daemon=True).start()
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        self.queue.wait_idle(timeout, self.worker.alive)
        dropped = self.queue.drain()
        if dropped or self.queue.pending:
            self.worker.abort.set()  # finish the layer in progress, skip the rest
        self.queue.close()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.worker.thread.join(left if left is None else left + 5.0)
        if dropped:
            self.faults.add(
                "dropped_on_close",
                f"wwmonitor: close() timed out after {timeout} s; {len(dropped)} "
                f"queued snapshot(s) (steps {[s.step for s in dropped]}) were not analysed",
                len(dropped),
            )
        if self.worker.alive():
            log.warning(
                "wwmonitor: the analysis thread is still inside one layer after close(); it stops "
                "after that layer (daemon thread, it will not keep the process alive)"
            )
        left = None if deadline is None else max(1.0, deadline - time.monotonic())
        if not self.dispatcher.close(left):
            log.warning(
                "wwmonitor: close() timed out with %d result(s) not written to every sink", self.dispatcher.pending
            )
        self.pool.clear()

    def close_unclosed(self) -> None:
        """The ``weakref.finalize`` of a monitor that was never closed: say so, flush, close."""
        if self.closed:
            return
        try:
            log.warning(
                "wwmonitor: run %r was not closed (call Monitor.close() or use `with Monitor(...)`); "
                "flushing %d queued snapshot(s) and %d result(s) now (up to flush_timeout=%s s)",
                self.run_id,
                self.queue.pending,
                self.dispatcher.pending,
                self.flush_timeout,
            )
            self.close(self.flush_timeout)
        except Exception as e:  # noqa: BLE001 - interpreter shutdown or gc: say it, do not raise
            log.warning("wwmonitor: closing run %r at exit failed: %r", self.run_id, e)
