"""One writer per run folder: an advisory lock file beside ``run.sqlite``.

A run store has exactly one writer at a time.  The writer holds an exclusive
``flock`` on ``<run folder>/run.lock`` for as long as it is open; a second
writer -- another :class:`~wwmonitor.Monitor` with the same ``run_name`` and
``resume=True``, in this process or another -- gets :class:`RunLockedError`
naming the folder and the holder, instead of interleaving its steps with the
first.  Readers (:func:`wwmonitor.load_run`, reports) never take the lock.

The lock is released by :meth:`WriterLock.release` and, if the process dies,
by the operating system (``flock`` locks belong to the open file), so a
crashed run never leaves a stale lock behind.  On platforms without
``fcntl`` (Windows) no lock is taken and that is said once in the log.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import IO, Optional

__all__ = ["WriterLock", "RunLockedError", "LOCK_NAME"]

log = logging.getLogger("wwmonitor")

LOCK_NAME = "run.lock"


class RunLockedError(RuntimeError):
    """Another writer has this run folder open."""


class WriterLock:
    """Exclusive, non-blocking writer lock on ``folder/run.lock``.

    Raises :class:`RunLockedError` when another open writer holds it.  The
    file records the holder (``pid`` and start time) for the error message.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fh: Optional[IO[str]] = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            log.info("wwmonitor: no fcntl on this platform; the one-writer check of %s is off", folder)
            return
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown holder"
            fh.close()
            raise RunLockedError(
                f"run folder {str(folder)!r} is already being written by another monitor ({holder}); "
                "a run store has one writer at a time: close the other monitor, or use another run_name"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
        fh.flush()
        self._fh = fh

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fh is not None

    def release(self) -> None:
        """Release the lock (idempotent)."""
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()  # closing the file drops the flock
