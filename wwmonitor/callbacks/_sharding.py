"""What every trainer callback needs under DDP / FSDP2 (framework-free; the Monitor does the work).

Under DDP and FSDP2 (``fully_shard``) the callback session
(:class:`~wwmonitor.callbacks._session.CallbackSession`) builds its
:class:`~wwmonitor.Monitor` on **every** rank with the model and
``distributed=`` set by :func:`monitor_distributed`; the Monitor's snapshot
strategy (:mod:`wwmonitor.monitor.strategies`) analyses each rank's share of
the matrices and files the merged results on rank 0 -- one worker, one queue,
one ``stats`` per rank.  The callback only decides *when* to snapshot, on
every rank at the same hooks (a snapshot is a collective under FSDP2, and
the ranks' results are gathered in snapshot order).

FSDP1 (``FullyShardedDataParallel``) and DeepSpeed are refused, by name, by
:func:`refuse_unsupported` (the Monitor refuses them too).
"""

from __future__ import annotations

from typing import Any

from ..sharding.detect import is_sharded_model, refuse_unsupported

__all__ = ["monitor_distributed", "shard_layers", "refuse_unsupported"]


def monitor_distributed(model: Any, world: int, chosen: str = "auto") -> str:
    """``Monitor(distributed=...)`` for a callback's model on ``world`` ranks: the user's ``chosen`` value
    when it is not ``"auto"``; else ``"fsdp2"`` for ``DTensor`` parameters, ``"ddp"`` for a replicated
    module (trainers hand callbacks the module inside their DDP wrapper), ``"auto"`` in one process."""
    if chosen != "auto":
        return chosen
    if is_sharded_model(model):
        return "fsdp2"
    return "ddp" if world > 1 else "auto"


def shard_layers(monitor: Any) -> list[str]:
    """The matrices this rank analyses (all of them in one process; none without a monitor)."""
    if monitor is None:
        return []
    st = getattr(monitor, "strategy", None)
    return list(st.layers) if st is not None else [n for n, _, _ in getattr(monitor, "_layer_info", [])]
