"""Model-level summary of per-layer metrics: one definition for the monitor and ``analyze_model``.

``mean_<m> = (1/n_m) Σ_i m_i`` over the ``n_m`` layers whose metric ``m`` is
defined and finite, for ``m`` in :data:`SUMMARY_FIELDS`.  A layer without a
value (a failed fit, too few eigenvalues, an analysis error) is left out of
that mean -- never averaged in as a sentinel -- and a mean with no
contributing layer is absent from the summary, not ``NaN`` or ``0``.

``num_layers`` counts every analysed matrix, ``num_ok`` those with a
complete analysis (``status`` ``"ok"``, or ``"carried"``: unchanged weights whose earlier
metrics are repeated).  Phase counts are :func:`phase_counts`.
"""

from __future__ import annotations

import math
from typing import Sequence

from .metrics import ANALYSED_STATUSES, LayerMetrics

__all__ = ["SUMMARY_FIELDS", "model_summary", "phase_counts"]

#: the metrics averaged over layers (summary key ``mean_<name>``)
SUMMARY_FIELDS: tuple[str, ...] = (
    "alpha",
    "alpha_weighted",
    "log_norm",
    "log_spectral_norm",
    "stable_rank",
    "mp_softrank",
)


def model_summary(layers: Sequence[LayerMetrics]) -> dict[str, float]:
    """``num_layers``, ``num_ok`` and ``mean_<m>`` for each :data:`SUMMARY_FIELDS` entry with a value.

    >>> from wwmonitor.metrics import LayerMetrics
    >>> model_summary([LayerMetrics("a", alpha=2.0), LayerMetrics("b", alpha=4.0, status="fit_failed")])
    {'num_layers': 2, 'num_ok': 1, 'mean_alpha': 3.0}
    """
    out: dict[str, float] = {
        "num_layers": len(layers),
        "num_ok": sum(lm.status in ANALYSED_STATUSES for lm in layers),
    }
    for name in SUMMARY_FIELDS:
        vals = [float(v) for lm in layers if (v := getattr(lm, name)) is not None and math.isfinite(float(v))]
        if vals:
            out[f"mean_{name}"] = math.fsum(vals) / len(vals)
    return out


def phase_counts(layers: Sequence[LayerMetrics]) -> dict[str, int]:
    """Number of layers in each phase (layers without a phase are not counted)."""
    counts: dict[str, int] = {}
    for lm in layers:
        if lm.phase:
            counts[lm.phase] = counts.get(lm.phase, 0) + 1
    return counts
