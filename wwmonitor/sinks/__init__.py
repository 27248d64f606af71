"""Sinks receive analysed snapshots from the monitor's worker thread.

:class:`Sink` is the protocol (``write(result)``, ``close()``).  Provided:

* :class:`wwmonitor.store.RunStore` -- the embedded SQLite run store, the
  default sink of every :class:`wwmonitor.Monitor` (also ``RunStore`` here);
* :class:`CSVSink`, :class:`TensorBoardSink`, :class:`WandbSink`, :class:`MLflowSink`.

The concrete sinks load lazily, so ``import wwmonitor.sinks`` imports
neither TensorBoard, wandb nor mlflow.
"""

from __future__ import annotations

from .._lazy import lazy_exports
from .base import Sink

_LAZY = {
    "RunStore": "wwmonitor.store",
    "CSVSink": "wwmonitor.sinks.csv",
    "TensorBoardSink": "wwmonitor.sinks.tensorboard",
    "WandbSink": "wwmonitor.sinks.wandb",
    "MLflowSink": "wwmonitor.sinks.mlflow",
}

__all__ = ["Sink", *sorted(_LAZY)]


__getattr__, __dir__ = lazy_exports(globals(), _LAZY, __all__)
