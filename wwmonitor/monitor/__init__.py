"""Training-time monitor: non-blocking snapshots, a background worker, sinks.

Public: :class:`Monitor`.  Internals: :mod:`.snapshot` (copying weights to
host buffers), :mod:`.policy` (bounded queue, ``block``/``skip``/``latest``),
:mod:`.worker` (analysis thread feeding alerts and sinks).
"""
from __future__ import annotations

from .policy import POLICIES
from .runtime import Monitor

__all__ = ["Monitor", "POLICIES"]
