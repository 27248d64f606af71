"""What every trainer callback needs under DDP / FSDP2 (framework-free; the Monitor does the work).

Under DDP and FSDP2 (``fully_shard``) the callback builds its
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

import logging
from typing import Any, Optional, Sequence

from ..sharding.detect import is_sharded_model, refuse_unsupported

log = logging.getLogger("wwmonitor")

__all__ = ["monitor_distributed", "open_rank_monitor", "safe_snapshot", "refuse_unsupported"]


def monitor_distributed(model: Any, world: int) -> str:
    """``Monitor(distributed=...)`` for a callback's model on ``world`` ranks: ``"fsdp2"`` for ``DTensor``
    parameters, ``"ddp"`` for a replicated module (trainers hand callbacks the module inside their DDP
    wrapper), ``"auto"`` in one process."""
    if is_sharded_model(model):
        return "fsdp2"
    return "ddp" if world > 1 else "auto"


def open_rank_monitor(
    cb: Any,
    model: Any,
    run_dir: Any,
    world: int,
    *,
    sinks: Sequence[Any] = (),
    config: Optional[dict] = None,
    restored: Optional[dict] = None,
) -> Any:
    """This rank's :class:`~wwmonitor.Monitor` of a trainer callback (every rank; rank 0 writes).

    ``restored`` is the ``"monitor"`` entry of a checkpoint's callback state:
    its run is continued.  Otherwise the run is ``cb.run_name`` under
    ``run_dir`` (an existing run of that name is continued only with
    ``cb.resume``).  The monitor never snapshots on its own (both intervals
    ``None``): the callback decides when.
    """
    from ..monitor import Monitor
    from ._options import monitor_kwargs

    restored = restored or {}
    run_kw: dict[str, Any] = {"run_name": cb.run_name, "resume": cb.resume}
    if restored.get("run_id"):  # a restored checkpoint: continue its run
        run_kw = {"run_name": restored["run_id"], "resume": True}
    return Monitor(
        model,
        restored.get("run_root") or run_dir,
        every_n_epochs=None,
        every_n_steps=None,
        sinks=list(sinks),
        config=config,
        distributed=monitor_distributed(model, world),
        **run_kw,
        **monitor_kwargs(cb),
    )


def shard_layers(monitor: Any) -> list[str]:
    """The matrices this rank analyses (all of them in one process)."""
    st = getattr(monitor, "strategy", None)
    return list(st.layers) if st is not None else [n for n, _, _ in getattr(monitor, "_layer_info", [])]


def safe_snapshot(monitor: Any, cb: Any, **kw: Any) -> bool:
    """``monitor.snapshot(**kw)``; a failure is logged (first and every 100th, counted in ``cb.errors``)
    and training goes on."""
    try:
        return bool(monitor.snapshot(**kw))
    except Exception as e:
        cb.errors = getattr(cb, "errors", 0) + 1
        if cb.errors == 1 or cb.errors % 100 == 0:
            log.warning(
                "wwmonitor: snapshot at step %s failed (%s: %s); training continues (%d failure(s))",
                kw.get("step"),
                type(e).__name__,
                e,
                cb.errors,
            )
        return False
