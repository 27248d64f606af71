"""When a snapshot is due: one rule for the plain :class:`~wwmonitor.Monitor` and every callback.

* **Step interval** ``every_n_steps = n``: step ``s`` (optimizer steps done)
  is due when ``s > 0`` and ``s % n == 0``.  Step 0 -- no optimizer step
  yet -- is never on the step interval, in a plain loop or a callback alike.
* **Epoch interval** ``every_n_epochs = n``: the end of epoch ``e`` (0-based)
  is due when ``(e + 1) % n == 0``, whatever its step (also step 0).
  Mid-epoch calls (``epoch_end=False``) never fire on the epoch interval.
* Both ``None``: every call is due (a plain ``Monitor`` called by hand;
  callbacks refuse it: they would never snapshot).
* A step that was already snapshotted (or is stored in a resumed run) is
  never due again; that check is the caller's (:meth:`Monitor.snapshot`
  counts it as a duplicate, a callback skips it quietly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["Schedule"]


@dataclass(frozen=True)
class Schedule:
    """The snapshot intervals (validated by :class:`~wwmonitor.monitor.options.MonitorOptions`)."""

    every_n_epochs: Optional[int] = 1
    every_n_steps: Optional[int] = None

    @property
    def never(self) -> bool:
        """Whether neither interval is set (every call is due)."""
        return self.every_n_epochs is None and self.every_n_steps is None

    def step_due(self, step: Optional[int]) -> bool:
        """Whether ``step`` falls on the step interval (never step 0)."""
        n = self.every_n_steps
        return n is not None and step is not None and int(step) > 0 and int(step) % n == 0

    def epoch_due(self, epoch: Optional[int]) -> bool:
        """Whether the end of epoch ``epoch`` (0-based) falls on the epoch interval."""
        n = self.every_n_epochs
        return n is not None and epoch is not None and (int(epoch) + 1) % n == 0

    def due(self, *, step: Optional[int] = None, epoch: Optional[int] = None, epoch_end: bool = True) -> bool:
        """Whether a call at ``step`` (at the end of ``epoch`` when ``epoch_end``) is due."""
        if self.never:
            return True
        return self.step_due(step) or (epoch_end and self.epoch_due(epoch))
