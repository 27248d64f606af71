"""Sinks receive analysed snapshots from the monitor's worker thread.

:class:`Sink` is the protocol (``write(result)``, ``close()``).  Provided:

* :class:`wwmonitor.store.RunStore` -- the embedded SQLite run store, the
  default sink of every :class:`wwmonitor.Monitor` (also ``RunStore`` here);
* :class:`CSVSink`, :class:`TensorBoardSink`, :class:`WandbSink`.

The concrete sinks load lazily, so ``import wwmonitor.sinks`` imports
neither TensorBoard nor wandb.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from .base import Sink

_LAZY = {
    "RunStore": "wwmonitor.store",
    "CSVSink": "wwmonitor.sinks.csv",
    "TensorBoardSink": "wwmonitor.sinks.tensorboard",
    "WandbSink": "wwmonitor.sinks.wandb",
}

__all__ = ["Sink", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'wwmonitor.sinks' has no attribute {name!r}")
    value = getattr(import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
