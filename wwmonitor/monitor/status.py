"""The one channel from the dispatcher thread back to the training thread: :class:`RunStatus`.

The dispatcher (its own thread) records every dispatched result here; the
:class:`~wwmonitor.Monitor` (training thread) only reads it.  Every field is
guarded by one lock, and readers get copies -- nothing the dispatcher writes
is read any other way.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Iterable, Optional

from ..records import Alert, SnapshotResult

__all__ = ["RunStatus"]


class RunStatus:
    """Results, alerts, stored steps and the stop request of one run (thread-safe).

    Parameters
    ----------
    history:
        How many recent results :meth:`results` keeps.
    stored:
        Steps already in the run store (a resumed run).
    """

    def __init__(self, history: int = 32, stored: Iterable[int] = ()) -> None:
        self._lock = threading.Lock()
        self._results: deque[SnapshotResult] = deque(maxlen=int(history))
        self._alerts: list[Alert] = []
        self._stored: set[int] = {int(s) for s in stored}
        self._stop: Optional[Alert] = None

    # ------------------------------------------------------------ writer (dispatcher thread)
    def record(self, res: SnapshotResult) -> None:
        """A result went through alerts and figures (called before the sinks get it)."""
        with self._lock:
            self._results.append(res)
            self._alerts.extend(res.alerts)
            self._stored.add(int(res.step))
            if self._stop is None:
                self._stop = next((a for a in res.alerts if a.stop_training), None)

    def reset_stored(self, stored: Iterable[int]) -> None:
        """The run changed (a restored checkpoint): its stored steps."""
        with self._lock:
            self._stored = {int(s) for s in stored}

    # ------------------------------------------------------------ readers (any thread)
    def is_stored(self, step: int) -> bool:
        with self._lock:
            return int(step) in self._stored

    def stored_steps(self) -> set[int]:
        with self._lock:
            return set(self._stored)

    @property
    def stop_requested(self) -> bool:
        """Whether an alert with ``stop_training`` was dispatched."""
        with self._lock:
            return self._stop is not None

    @property
    def stop_alert(self) -> Optional[Alert]:
        """The first alert that asked to stop training (``None``: none)."""
        with self._lock:
            return self._stop

    def results(self) -> list[SnapshotResult]:
        with self._lock:
            return list(self._results)

    def alerts(self) -> list[Alert]:
        with self._lock:
            return list(self._alerts)
