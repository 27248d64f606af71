"""Plain records that flow one way, from the analyzer to the sinks.

``framework -> Snapshot -> analyzer -> SnapshotResult -> dispatcher (alerts, figures) -> sinks``

They hold only plain Python / NumPy values, so every sink (SQLite store,
TensorBoard, W&B, CSV, MLflow) can consume them without importing a
framework or any analysis module: a :class:`SnapshotResult` carries
everything a sink or a report needs, and no sink computes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .metrics import Fits, LayerMetrics

__all__ = ["Alert", "ControlRecord", "SnapshotResult", "MODEL_LAYER"]

#: the ``layer`` name of model-level rows (summary means) in the run store, CSV files and reports
MODEL_LAYER = "__model__"


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
    (eigenvalues of ``X = WᵀW/N``, float32, ascending); ``fits`` maps layer
    name -> ``{"powerlaw": {...}, "mp": {...}}``, the fitted models *on the
    λ axis* as plain dicts (the fields of
    :class:`~wwmonitor.powerlaw.PowerLawFit` without the landscape, and of
    :class:`~wwmonitor.mp.MPFit`), present for the layers where the fit ran;
    ``summary`` holds model-level means (:func:`wwmonitor.summary.model_summary`);
    ``alerts`` are filled by the dispatcher's alert rules and ``figures``
    (layer name -> PNG bytes of the ESD figure) by its renderer, both
    before any sink sees the result.  ``errors`` maps layer -> why its
    analysis failed; ``figure_errors`` maps layer -> why its figure could not
    be drawn (that layer has no figure; everything else is kept).
    ``inspect_errors`` maps layer -> {rule id -> exception} for alert rules
    whose weight inspection failed on the analyser thread; the alert engine
    reports each one (``stats["alert_errors"]``) when it evaluates the result.
    """

    step: int
    epoch: Optional[int]
    time: float
    layers: list[LayerMetrics]
    esds: dict[str, np.ndarray] = field(default_factory=dict)
    fits: dict[str, Fits] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)
    figure_errors: dict[str, str] = field(default_factory=dict)
    inspect_errors: dict[str, dict[str, BaseException]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ControlRecord:
    """One value a controller (:mod:`wwmonitor.control`) gave one layer.

    ``step``: the training step from which it applies (its first optimizer update);
    ``controller``: ``"TempBalance"`` / ``"AlphaDecay"``; ``quantity``: ``"lr"`` or
    ``"weight_decay"``; ``alpha``: the layer's alpha it came from (``None``: not determined, the
    layer keeps the base); ``factor``: the multiplier of the base; ``base``: the optimizer's value
    (the scheduler's) for the layer's weight at ``step``; ``value = base * factor``, what that
    update used; ``source_step``: the snapshot step whose alphas decided it.
    """

    step: int
    layer: str
    controller: str
    quantity: str
    alpha: Optional[float]
    factor: float
    value: float
    base: float
    source_step: int
