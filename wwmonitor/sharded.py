"""Deprecated location: use :mod:`wwmonitor.sharding` and :func:`wwmonitor.sharded_model.analyze_sharded`.

``OwnerAnalysis`` (a second analysis worker for FSDP2) is gone: ``Monitor(model)`` on a
``fully_shard`` model snapshots it with :class:`wwmonitor.sharding.FSDP2Strategy`.
"""

from __future__ import annotations

import warnings

from .sharded_model import analyze_sharded
from .sharding import ROUTES, OwnedMatrix, ShardedSpectra, TransferStats, analyze_owned, is_sharded_model, sharded_specs

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

_MSG = "wwmonitor.sharded is deprecated; import from wwmonitor.sharding (analyze_sharded: wwmonitor.sharded_model)"
warnings.warn(_MSG, DeprecationWarning, stacklevel=2)
