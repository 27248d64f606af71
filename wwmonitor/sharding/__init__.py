"""Reading models trained on several ranks: DTensor (FSDP2 ``fully_shard``) shards, DDP wrappers, refusals.

Modules, data flowing one way (no monitor, store or output here):

* :mod:`.detect` -- what a model is under (DTensor shards, DDP wrapper,
  FSDP1 / DeepSpeed refused with a message naming them);
* :mod:`.plan` -- FSDP2: who owns each matrix and which route its data take;
* :mod:`.exchange` -- FSDP2: the collective that moves the data to the owners;
* :mod:`.owned` -- the owner's analysis (the one-call report: :mod:`wwmonitor.sharded_model`);

The Monitor's DDP / FSDP2 snapshot strategies that use them are
:mod:`wwmonitor.monitor.strategies` and :mod:`wwmonitor.monitor.sharded_worker`
(this package imports nothing of the monitor).
"""

from __future__ import annotations

from .detect import is_sharded_model, refuse_unsupported, sharded_specs, unsupported_sharding
from .exchange import ShardedSpectra
from .owned import analyze_owned
from .plan import ROUTES, OwnedMatrix, TransferStats

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
]
