"""The bounded snapshot queue and what happens when analysis falls behind.

``queue_size`` is the most snapshots held at once: waiting, being copied, or
being analysed.  Policies (``Monitor(policy=...)``) apply when that many are
already held:

``"latest"`` (the default)
    The *oldest* waiting snapshot is dropped and its buffers are reused for
    the new one, so the queue always holds the most recent snapshots;
    ``stats["coalesced"]`` counts the dropped ones (with nothing waiting,
    i.e. ``queue_size=1`` and one snapshot in analysis, the new one is skipped
    and counted in ``stats["skipped"]``).  A warning is logged on the first
    one.  Training never waits for the analysis.
``"skip"``
    The new snapshot is not taken (no copy is made); ``stats["skipped"]``
    counts it and a warning is emitted on the first skip.  Training never
    waits either.
``"block"``
    ``snapshot()`` waits until the worker takes one (training slows down to
    the analysis rate; nothing is lost).  The time spent waiting is counted in
    ``stats["blocked_s"]``.  Use it when every snapshot must be analysed
    (a record of every epoch; DDP/FSDP2 use it always, see
    :mod:`~wwmonitor.monitor.strategies`).

Why ``"latest"`` is the default: the monitor must cost training as little as
possible (training first), and when the analysis cannot keep up, the newest
weights are the ones worth analysing.  At the usual every-epoch interval the
analysis keeps up and nothing is dropped; a drop is counted and logged, never
silent.

Counting the snapshot in analysis inside ``queue_size`` bounds the snapshot
buffers to ``queue_size`` sets, which leaves one more weights-sized share of
the ``(queue_size + 1) x weights`` memory budget for the analysis' own working
set (the float64 Gram matrix of the matrix being analysed).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Optional

from .snapshot import BufferPool, BufferSet, Snapshot

__all__ = ["POLICIES", "DEFAULT_POLICY", "SnapshotQueue", "Reservation"]

POLICIES = ("block", "skip", "latest")

#: the policy of a monitor built without ``policy=``
DEFAULT_POLICY = "latest"


class Reservation:
    """A queue slot reserved by a producer; filled with :meth:`SnapshotQueue.commit`."""

    __slots__ = ("buffers", "dropped")

    def __init__(self, buffers: BufferSet, dropped: Optional[Snapshot]) -> None:
        self.buffers = buffers
        self.dropped = dropped  # the snapshot coalesced away under "latest", if any


class SnapshotQueue:
    """FIFO of :class:`Snapshot` with ``maxsize`` slots and a full-queue policy.

    Producers call :meth:`reserve` (applies the policy; returns ``None`` when
    the snapshot must be skipped), copy into ``reservation.buffers``, then
    :meth:`commit`.  The single consumer calls :meth:`get` and :meth:`done`.
    """

    def __init__(self, maxsize: int, policy: str, pool: BufferPool) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.maxsize = maxsize
        self.policy = policy
        self.pool = pool
        self._items: deque[Snapshot] = deque()
        self._reserved = 0
        self._in_flight = 0
        self._closed = False
        self.cv = threading.Condition()
        self.skipped = 0
        self.coalesced = 0
        self.blocked_s = 0.0

    # ------------------------------------------------------------ producer
    def reserve(self, consumer_alive: Callable[[], bool]) -> Optional[Reservation]:
        """Reserve a slot according to the policy (``None``: skip this snapshot)."""
        t0 = None
        with self.cv:
            while True:
                if self._closed:
                    return None
                if len(self._items) + self._reserved + self._in_flight < self.maxsize:
                    self._reserved += 1
                    if t0 is not None:
                        self.blocked_s += time.perf_counter() - t0
                    return Reservation(self.pool.acquire(), None)
                if self.policy == "skip" or not consumer_alive():
                    self.skipped += 1
                    return None
                if self.policy == "latest":
                    victim = self._items.popleft() if self._items else None
                    if victim is None:  # every slot is being filled right now by other producers
                        self.skipped += 1
                        return None
                    self.coalesced += 1
                    self._reserved += 1
                    return Reservation(victim.buffers, victim)
                if t0 is None:
                    t0 = time.perf_counter()
                self.cv.wait(0.25)

    def commit(self, res: Reservation, snap: Optional[Snapshot]) -> None:
        """Enqueue ``snap`` (or give the slot back when ``snap`` is ``None``)."""
        with self.cv:
            self._reserved -= 1
            if snap is None:
                self.pool.release(res.buffers)
            else:
                self._items.append(snap)
            self.cv.notify_all()

    # ------------------------------------------------------------ consumer
    def get(self, timeout: Optional[float] = None) -> Optional[Snapshot]:
        """Next snapshot, or ``None`` once closed and drained (or on timeout)."""
        with self.cv:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._closed and self._reserved == 0:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self.cv.wait(remaining if remaining is not None else 0.5)
            self._in_flight += 1
            snap = self._items.popleft()
            self.cv.notify_all()
            return snap

    def done(self) -> None:
        with self.cv:
            self._in_flight -= 1
            self.cv.notify_all()

    # ------------------------------------------------------------ control
    @property
    def pending(self) -> int:
        """Snapshots queued, being copied, or being analysed."""
        with self.cv:
            return len(self._items) + self._reserved + self._in_flight

    def wait_idle(self, timeout: Optional[float], consumer_alive: Callable[[], bool]) -> bool:
        """Block until nothing is pending; ``False`` on timeout or a dead consumer."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cv:
            while self._items or self._reserved or self._in_flight:
                if not consumer_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.cv.wait(min(0.25, remaining) if remaining is not None else 0.25)
            return True

    def close(self) -> None:
        with self.cv:
            self._closed = True
            self.cv.notify_all()

    def drain(self) -> list[Snapshot]:
        """Remove and return every queued snapshot (used when close times out)."""
        with self.cv:
            items = list(self._items)
            self._items.clear()
            for s in items:
                self.pool.release(s.buffers)
            self.cv.notify_all()
            return items
