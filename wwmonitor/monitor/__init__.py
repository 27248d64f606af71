"""Training-time monitor: snapshotter -> analyzer -> dispatcher -> sinks.

Public: :class:`Monitor`.  Stages: :mod:`.snapshot` (weights to host
buffers) and :mod:`.policy` (bounded queue, ``block``/``skip``/``latest``);
:mod:`.analyzer` (buffers to ``SnapshotResult``, one thread);
:mod:`.dispatcher` (``submit``: step order, alerts, :mod:`.render` figures,
store and sinks with deadlines); :mod:`.runfolder` (run naming, resume,
one writer); :mod:`.options` (:class:`MonitorOptions`, every option once,
shared with the callbacks) and :mod:`.schedule` (:class:`Schedule`, when a
snapshot is due); :mod:`.lifecycle` (the threads and how they end) and
:mod:`.status` (the dispatcher's one channel back to the training thread).
"""

from __future__ import annotations

from .options import MonitorOptions
from .policy import POLICIES
from .runtime import Monitor
from .schedule import Schedule

__all__ = ["Monitor", "MonitorOptions", "Schedule", "POLICIES"]
