"""Plain records that flow from the worker to the sinks.

``framework -> Snapshot -> worker -> SnapshotResult (+ Alerts) -> sinks``

They hold only plain Python / NumPy values so every sink (SQLite store,
TensorBoard, W&B, CSV) can consume them without importing a framework.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .metrics import LayerMetrics

__all__ = ["Alert", "SnapshotResult"]


@dataclass(frozen=True)
class Alert:
    """One fired alert.

    ``rule`` is the rule's id (e.g. ``"rank_collapse"``), ``severity`` one of
    ``"info" | "warning" | "error"``, ``layer`` the layer name or ``None`` for
    model-level alerts; ``value`` the metric value that triggered it.
    """

    step: int
    epoch: Optional[int]
    rule: str
    severity: str
    message: str
    layer: Optional[str] = None
    value: Optional[float] = None
    stop_training: bool = False


@dataclass
class SnapshotResult:
    """Everything computed for one snapshot, in step order.

    ``layers`` are the per-layer metrics (``status != "ok"`` entries carry
    their reason in ``message``); ``esds`` maps layer name -> λ-axis ESD
    (eigenvalues of ``X = WᵀW/N``, float32, ascending); ``summary`` holds
    model-level means (``mean_alpha``, ``mean_alpha_weighted``,
    ``mean_log_norm`` ...); ``alerts`` are filled by the alert rules
    before the sinks see the result.
    """

    step: int
    epoch: Optional[int]
    time: float
    layers: list[LayerMetrics]
    esds: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
