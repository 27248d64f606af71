"""Counting and reporting faults of the background stages (never raised into training).

Every fault -- a layer whose analysis raised, a failing alert rule, a sink
that raised or stalled, a figure that could not be drawn -- is counted under
a key of :attr:`wwmonitor.Monitor.stats` and reported as ONE log record on
the ``wwmonitor`` logger (no duplicate Python warning): the first time, then
every 100th time per key, so a fault that repeats at every snapshot does not
flood the log but its count stays exact.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

__all__ = ["Faults", "report"]

log = logging.getLogger("wwmonitor")


def report(msg: str, level: int = logging.WARNING) -> None:
    """One line on the ``wwmonitor`` logger (shown on stderr even when logging is not configured)."""
    log.log(level, msg)


class Faults:
    """Thread-safe fault counters with rate-limited reporting."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._counts = {k: 0 for k in keys}
        self._lock = threading.Lock()
        self._said: set[str] = set()

    def add(self, key: str, message: str, n: int = 1) -> int:
        """Count ``n`` faults under ``key``; report ``message`` on the first and every 100th. Returns the count."""
        with self._lock:
            before = self._counts.get(key, 0)
            self._counts[key] = after = before + n
        if before == 0 or before // 100 != after // 100:
            report(f"{message} ({key}={after})")
        return after

    def once(self, key: str, message: str, level: int = logging.WARNING) -> None:
        """Report ``message`` the first time ``key`` is seen, later ones at DEBUG level."""
        with self._lock:
            first = key not in self._said
            self._said.add(key)
        report(message, level if first else logging.DEBUG)

    def get(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key, 0)

    def snapshot(self, keys: Optional[tuple[str, ...]] = None) -> dict[str, int]:
        """A copy of the counters (all, or just ``keys``)."""
        with self._lock:
            return dict(self._counts) if keys is None else {k: self._counts.get(k, 0) for k in keys}
