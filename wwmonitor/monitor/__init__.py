"""Training-time monitor: snapshotter -> analyzer -> dispatcher -> sinks.

Public: :class:`Monitor`.  Stages: :mod:`.snapshot` (weights to host
buffers) and :mod:`.policy` (bounded queue, ``block``/``skip``/``latest``);
:mod:`.analyzer` (buffers to ``SnapshotResult``, one thread);
:mod:`.dispatcher` (``submit``: step order, alerts, :mod:`.render` figures,
store and sinks with deadlines); :mod:`.runfolder` (run naming, resume,
one writer).
"""

from __future__ import annotations

from .policy import POLICIES
from .runtime import Monitor

__all__ = ["Monitor", "POLICIES"]
