"""Sharding the spectral analysis over ``torch.distributed`` ranks.

Rule: matrix ``i`` (in extraction order) is analysed on rank ``i mod world``.
Results are gathered with ``torch.distributed`` object collectives.  Every
collective here must be called by *every* rank, in the same order -- calling
one from rank-zero-only code hangs the job; the helpers are written so that
the natural call site (all ranks) is the only correct one.

Used by the Lightning callback under DDP (each rank holds the full weights)
and by ``torchrun --nproc-per-node K -m wwmonitor analyze PATH``
(:func:`wwmonitor.model.analyze_model` shards its matrices).

FSDP and DeepSpeed shard the *parameters* themselves; reading full weights
there is a collective of its own.  :func:`check_strategy` refuses those
strategies with a clear message instead of hanging.
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
    """The training strategy shards parameters (FSDP, DeepSpeed); not supported yet."""


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


def gather_objects(obj: T, *, dst: Optional[int] = None) -> Optional[list[T]]:
    """Collect one picklable object per rank, ordered by rank.

    ``dst=None`` (default): every rank receives the list (``all_gather_object``).
    ``dst=r``: only rank ``r`` receives it (``gather_object``); other ranks get
    ``None``.  Without an initialised process group (or with one rank) this
    returns ``[obj]``.  A collective: call it on every rank.
    """
    dist = _dist()
    if dist is None or not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    world = dist.get_world_size()
    if dst is None:
        out: list[Any] = [None] * world
        dist.all_gather_object(out, obj)
        return out
    if dist.get_rank() == dst:
        out = [None] * world
        dist.gather_object(obj, out, dst=dst)
        return out
    dist.gather_object(obj, None, dst=dst)
    return None


def broadcast_object(obj: T, *, src: int = 0) -> T:
    """``obj`` from rank ``src`` on every rank (identity without a process group). A collective."""
    dist = _dist()
    if dist is None or not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
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


_SHARDED = ("FSDP", "FullyShardedDataParallel", "DeepSpeed", "ModelParallel")


def check_strategy(trainer: Any) -> None:
    """Raise :class:`UnsupportedStrategyError` for parameter-sharding Lightning strategies.

    Under FSDP / DeepSpeed (ZeRO-3) each rank holds only a shard of every
    parameter; gathering full weights is a collective that every rank must
    enter, which the callback does not do yet.  Rather than reading partial
    weights (wrong spectra) or hanging, the callback refuses at setup, on all
    ranks alike.  DDP, single device and ``ddp_spawn`` are supported.
    """
    strategy = getattr(trainer, "strategy", None)
    if strategy is None:
        return
    names = [c.__name__ for c in type(strategy).__mro__]
    hit = next((n for n in names for key in _SHARDED if key in n), None)
    if hit is not None:
        raise UnsupportedStrategyError(
            f"WeightWatcherCallback: the {type(strategy).__name__} strategy shards parameters across ranks "
            "(FSDP/DeepSpeed); reading full weight matrices there needs a collective gather that wwmonitor "
            "does not do yet. Use strategy='ddp' (or a single device), or analyse the saved checkpoint "
            "afterwards with `wwmonitor analyze` (sharded over ranks with torchrun)."
        )
