"""Sharding the spectral analysis over ``torch.distributed`` ranks.

Rule: matrix ``i`` (in extraction order) is analysed on rank ``i mod world``.
Results are gathered with ``torch.distributed`` object collectives.  Every
collective here must be called by *every* rank, in the same order -- calling
one from rank-zero-only code hangs the job; the helpers are written so that
the natural call site (all ranks) is the only correct one.

Used by the Monitor's DDP / FSDP2 snapshot strategies (:mod:`wwmonitor.sharding`:
each rank analyses its share, rank 0 files the merged results) and by
``torchrun --nproc-per-node K -m wwmonitor analyze PATH``
(:func:`wwmonitor.model.analyze_model` shards its matrices).

FSDP and DeepSpeed shard the *parameters* themselves.  FSDP2
(``torch.distributed.fsdp.fully_shard``: ``DTensor`` parameters, dim-0
shards; Lightning's ``ModelParallelStrategy``) is analysed by
:mod:`wwmonitor.sharding` without gathering whole matrices anywhere but on
their owner rank.  :func:`check_strategy` refuses the Lightning strategies that
are not supported -- FSDP1 (``FullyShardedDataParallel`` flat parameters,
Lightning's ``FSDPStrategy``) and DeepSpeed (ZeRO-3 partitions) -- with a
clear message instead of hanging or reading partial weights; the Monitor
refuses such models itself (:func:`wwmonitor.sharding.refuse_unsupported`).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, TypeVar

__all__ = [
    "rank_world",
    "is_distributed",
    "shard_indices",
    "gather_objects",
    "broadcast_object",
    "init_from_env",
    "check_strategy",
    "UnsupportedStrategyError",
]

T = TypeVar("T")


class UnsupportedStrategyError(RuntimeError):
    """The training strategy shards parameters in a way wwmonitor cannot read (FSDP1, DeepSpeed)."""


def _dist() -> Any:
    if "torch" not in sys.modules:
        try:
            import torch  # noqa: F401
        except ImportError:
            return None
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    return dist if dist.is_available() else None


def is_distributed() -> bool:
    """``True`` when a ``torch.distributed`` process group is initialised with more than one rank."""
    dist = _dist()
    return bool(dist is not None and dist.is_initialized() and dist.get_world_size() > 1)


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, else ``(0, 1)``."""
    dist = _dist()
    if dist is not None and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Indices ``i`` in ``range(n)`` with ``i % world == rank`` (this rank's share)."""
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return list(range(rank, n, world))


def gather_objects(obj: T, *, dst: Optional[int] = None, group: Any = None) -> Optional[list[T]]:
    """Collect one picklable object per rank, ordered by rank.

    ``dst=None`` (default): every rank receives the list (``all_gather_object``).
    ``dst=r``: only rank ``r`` receives it (``gather_object``); other ranks get
    ``None``.  Without an initialised process group (or with one rank) this
    returns ``[obj]``.  ``group``: the process group (default: the default
    group; ranks are global ranks either way).  A collective: call it on every
    rank of the group.
    """
    dist = _dist()
    if dist is None or not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    world = dist.get_world_size(group)
    if dst is None:
        out: list[Any] = [None] * world
        dist.all_gather_object(out, obj, group=group)
        return out
    if dist.get_rank() == dst:
        out = [None] * world
        dist.gather_object(obj, out, dst=dst, group=group)
        return out
    dist.gather_object(obj, None, dst=dst, group=group)
    return None


def broadcast_object(obj: T, *, src: int = 0, group: Any = None) -> T:
    """``obj`` from rank ``src`` on every rank (identity without a process group). A collective."""
    dist = _dist()
    if dist is None or not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def init_from_env(backend: Optional[str] = None) -> tuple[int, int]:
    """Initialise ``torch.distributed`` from torchrun's environment (``WORLD_SIZE`` > 1).

    Returns ``(rank, world_size)``; ``(0, 1)`` when not launched by torchrun.
    ``backend`` defaults to ``"gloo"`` (the analysis gathers CPU objects).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    dist = _dist()
    if dist is None:
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or "gloo")
    return dist.get_rank(), dist.get_world_size()


#: strategy class names (any class in the strategy's MRO) that are refused, and why
_DEEPSPEED = ("DeepSpeed",)
_FSDP1 = ("FSDPStrategy", "FullyShardedDataParallel", "FSDP1")
#: supported parameter-sharding strategies (FSDP2 applied in ``configure_model``)
_FSDP2 = ("ModelParallelStrategy",)


def check_strategy(trainer: Any) -> None:
    """Raise :class:`UnsupportedStrategyError` for parameter-sharding Lightning strategies wwmonitor cannot read.

    Supported: single device, DDP (``ddp``, ``ddp_spawn``, ...) and FSDP2 --
    ``ModelParallelStrategy`` with ``fully_shard`` applied in
    ``configure_model`` (any ``DTensor`` layout other than FSDP2's dim-0
    shards, e.g. tensor parallel, is reported per layer as not analysed).
    Refused, on every rank alike, at setup: DeepSpeed (ZeRO-3 partitions
    parameters into flat buffers) and Lightning's ``FSDPStrategy``, which is
    FSDP1 (``FullyShardedDataParallel``: each rank holds a 1-D slice of a
    flattened parameter, not row blocks of a matrix).
    """
    strategy = getattr(trainer, "strategy", None)
    if strategy is None:
        return
    names = [c.__name__ for c in type(strategy).__mro__]
    if any(n in _FSDP2 for n in names):
        return
    if any(key in n for n in names for key in _DEEPSPEED):
        raise UnsupportedStrategyError(
            f"WeightWatcherCallback: the {type(strategy).__name__} strategy (DeepSpeed ZeRO) partitions parameters "
            "into flat per-rank buffers; wwmonitor cannot read weight matrices there. Use strategy='ddp', or FSDP2: "
            "lightning.pytorch.strategies.ModelParallelStrategy with torch.distributed.fsdp.fully_shard applied in "
            "configure_model (monitored without gathering the model), or analyse the saved checkpoint afterwards "
            "with `wwmonitor analyze` (sharded over ranks with torchrun)."
        )
    if any(key in n for n in names for key in _FSDP1):
        raise UnsupportedStrategyError(
            f"WeightWatcherCallback: the {type(strategy).__name__} strategy is FSDP1 (FullyShardedDataParallel): "
            "each rank holds a slice of flattened parameters, which wwmonitor cannot read as weight matrices. "
            "FSDP2 is supported: use lightning.pytorch.strategies.ModelParallelStrategy(data_parallel_size=..., "
            "tensor_parallel_size=1) and apply torch.distributed.fsdp.fully_shard in configure_model; each matrix "
            "is then analysed on one owner rank from the shards it needs. Or use strategy='ddp'."
        )
