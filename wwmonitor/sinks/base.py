"""The sink interface: where analysed snapshots go.

A sink is any object with two methods::

    class MySink:
        def write(self, result: SnapshotResult) -> None: ...   # one analysed snapshot
        def close(self) -> None: ...                           # flush and release resources

The monitor calls both from its single worker thread, in step order, so a
sink needs no locking of its own (and wandb's non-thread-safe client is
safe to use).  A sink may also have ``write_control(records)``: it then receives the
assignments of the controllers of :mod:`wwmonitor.control` (a sequence of
:class:`~wwmonitor.records.ControlRecord`), on the same thread.  An exception raised by ``write`` is counted in
``Monitor.stats["sink_errors"]`` and warned about; the sink keeps receiving
later results and training is never interrupted.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..records import SnapshotResult

__all__ = ["Sink"]


@runtime_checkable
class Sink(Protocol):
    """Receives every :class:`~wwmonitor.records.SnapshotResult` of a run."""

    def write(self, result: SnapshotResult) -> None:
        """Consume one analysed snapshot (called from the worker thread)."""
        ...

    def close(self) -> None:
        """Flush and release resources (called once, from the worker thread)."""
        ...
