"""Monitoring models trained on several ranks: DDP and FSDP2 (``fully_shard``) inside the Monitor.

Modules, data flowing one way:

* :mod:`.detect` -- what a model is under (DTensor shards, DDP wrapper,
  FSDP1 / DeepSpeed refused with a message naming them);
* :mod:`.plan` -- FSDP2: who owns each matrix and which route its data take;
* :mod:`.exchange` -- FSDP2: the collective that moves the data to the owners;
* :mod:`.owned` -- the owner's analysis, and :func:`analyze_sharded` (one call);
* :mod:`.strategies` -- the Monitor's DDP / FSDP2 snapshot strategies;
* :mod:`.worker` -- the Monitor's worker under a strategy: analyse this rank's
  share, gather to rank 0, merge.
"""

from __future__ import annotations

from .detect import is_sharded_model, refuse_unsupported, sharded_specs, unsupported_sharding
from .exchange import ShardedSpectra
from .owned import analyze_owned, analyze_sharded
from .plan import ROUTES, OwnedMatrix, TransferStats
from .strategies import DISTRIBUTED, DDPStrategy, FSDP2Strategy, Strategy, choose_strategy
from .worker import merge_results

__all__ = [
    "is_sharded_model",
    "sharded_specs",
    "unsupported_sharding",
    "refuse_unsupported",
    "ShardedSpectra",
    "OwnedMatrix",
    "TransferStats",
    "ROUTES",
    "analyze_owned",
    "analyze_sharded",
    "DISTRIBUTED",
    "Strategy",
    "DDPStrategy",
    "FSDP2Strategy",
    "choose_strategy",
    "merge_results",
]
