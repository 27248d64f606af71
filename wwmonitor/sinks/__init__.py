"""Sinks receive analysed snapshots from the monitor's worker thread.

:class:`Sink` is the protocol (``write(result)``, ``close()``);
:class:`wwmonitor.store.RunStore` is the embedded SQLite run store, the
default sink of every :class:`wwmonitor.Monitor`.
"""
from __future__ import annotations

from .base import Sink

__all__ = ["Sink"]
