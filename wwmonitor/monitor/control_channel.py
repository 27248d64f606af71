"""The controllers' half of :class:`~wwmonitor.Monitor`: what a :mod:`wwmonitor.control` controller reads
from and hands to the monitor.

:class:`ControlChannel` is a mixin of ``Monitor`` (it uses the monitor's ``_dispatcher``, ``_counts``,
``_layer_info`` and ``_strategy``).  Data keeps flowing one way: a controller reads the analysed results
(``Monitor.results``) and hands its assignments to :meth:`~ControlChannel.record_control`, which queues
them on the dispatcher like a result; only the store and the sinks write them.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..records import ControlRecord

__all__ = ["ControlChannel"]


class ControlChannel:
    """Controller access of a monitor (mixin; see the module docstring)."""

    _dispatcher: Any
    _counts: dict[str, int]
    _layer_info: list[tuple[str, str, tuple[int, ...]]]
    _strategy: Any

    def record_control(self, records: Sequence[ControlRecord]) -> None:
        """File a controller's assignments: run store (table ``control``) and every sink with
        ``write_control(records)``, on the dispatcher's thread (returns at once).  Under DDP / FSDP2 only
        rank 0 writes (other ranks have no store and no sinks)."""
        self._dispatcher.submit_control(records)

    @property
    def layer_names(self) -> list[str]:
        """The monitored matrices' names, in extraction order (empty before the model is first seen)."""
        if self._strategy is not None:
            return list(self._strategy.names)
        return [name for name, _, _ in self._layer_info]

    @property
    def snapshots_taken(self) -> int:
        """How many snapshots were queued so far (cheap; ``stats`` has it too)."""
        return int(self._counts["snapshots_taken"])
