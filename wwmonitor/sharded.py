"""Deprecated location: use :mod:`wwmonitor.sharding` (this module re-exports its public names).

``OwnerAnalysis`` (a second analysis worker for FSDP2) is gone: ``Monitor(model)`` on a
``fully_shard`` model snapshots it with :class:`wwmonitor.sharding.FSDP2Strategy`.
"""

from __future__ import annotations

import warnings

from .sharding import (
    ROUTES,
    OwnedMatrix,
    ShardedSpectra,
    TransferStats,
    analyze_owned,
    analyze_sharded,
    is_sharded_model,
    sharded_specs,
)

__all__ = [
    "is_sharded_model",
    "sharded_specs",
    "ShardedSpectra",
    "OwnedMatrix",
    "TransferStats",
    "analyze_owned",
    "analyze_sharded",
    "ROUTES",
]

warnings.warn("wwmonitor.sharded is deprecated; import from wwmonitor.sharding", DeprecationWarning, stacklevel=2)
