"""Every rank applies the same factors: rank 0 decides, one broadcast per snapshot step.

Under the monitor's DDP / FSDP2 strategy only rank 0 receives analysed results (the other ranks' workers
hand their shares to rank 0 and keep nothing; ``Monitor.results`` is empty there).  All ranks take their
snapshots at the same steps, so :meth:`Agreement.due` -- "a snapshot was taken since the last call" --
is true on every rank at the same ``Controller.step`` call; only then do the ranks meet in one
broadcast (of rank 0's :class:`~wwmonitor.control.decide.Decision`, or ``None``), on a gloo group of
the controller's own (the monitor's group is busy with the analysis gathers on another thread).
No collective runs at any other step.
"""

from __future__ import annotations

from typing import Any, Optional

from ..distributed import broadcast_object
from .decide import Decision

__all__ = ["Agreement"]


class Agreement:
    """The controller's broadcast of rank 0's decision (built on every rank: creating the group is a collective)."""

    def __init__(self, rank: int, world: int) -> None:
        import torch.distributed as dist

        self.rank, self.world = int(rank), int(world)
        self.group = dist.new_group(backend="gloo")
        self.broadcasts = 0

    @classmethod
    def for_monitor(cls, monitor: Any) -> Optional["Agreement"]:
        """An agreement when the monitor runs under a strategy with more than one rank, else ``None``."""
        strategy = getattr(monitor, "strategy", None)
        if strategy is None or int(getattr(strategy, "world", 1)) <= 1:
            return None
        return cls(strategy.rank, strategy.world)

    def share(self, decision: Optional[Decision]) -> Optional[Decision]:
        """Rank 0's ``decision`` on every rank (a collective: every rank calls it at the same step)."""
        self.broadcasts += 1
        return broadcast_object(decision if self.rank == 0 else None, src=0, group=self.group)
