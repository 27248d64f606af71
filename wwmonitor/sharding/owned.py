"""The owner rank's analysis of a sharded matrix (one-call report: :mod:`wwmonitor.sharded_model`).

An owned matrix is either assembled (``gather``: analysed like any matrix)
or the stacked triangular factors ``[R_1; ...; R_p]`` of its row blocks
(``rfactor``): their singular values are exactly those of ``W``, so the
eigenvalues of ``WᵀW`` and the SVD recheck of rank-deficient spectra come
out as in a single-process analysis of the full matrix.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..analyze import DEFAULT_OPTIONS, AnalysisOptions, analyze_evals, analyze_matrix, refused_before_spectrum
from ..metrics import LayerMetrics
from ..spectral import esd_batched_scaled, squared_singular_values_scaled
from .plan import OwnedMatrix

__all__ = ["analyze_owned", "analyze_or_error"]


def analyze_owned(
    om: OwnedMatrix, options: AnalysisOptions = DEFAULT_OPTIONS, device: Optional[str] = None
) -> LayerMetrics:
    """Metrics of one owned matrix: :func:`wwmonitor.analyze_matrix` for an assembled matrix, the same
    checks and :func:`~wwmonitor.analyze.analyze_evals` on the singular values of the stacked factors
    for ``rfactor`` (the eigenvalues of ``WᵀW``, with the SVD recheck) -- equal to a single-process
    analysis of the full matrix.  ``device`` as :func:`wwmonitor.analyze_matrix`."""
    name = om.name
    if om.kind == "matrix":
        return analyze_matrix(om.data, name, layer_type=om.type, scale=om.scale, options=options, device=device)
    N, M = om.N, om.M
    K = om.shape[0] if len(om.shape) == 3 else 1
    lm = LayerMetrics(name=name, type=om.type, shape=om.shape, N=N, M=M, Q=N / M, num_evals=K * M)
    if om.reason:
        lm.status, lm.warning = "error", "error"
        lm.message = f"layer {name!r}: not analysed under FSDP: {om.reason}"
        return lm
    if refused_before_spectrum(lm, om.nonfinite, options):  # the same checks and messages as analyze_matrix
        return lm
    route = _route_for(om.data, device)
    if len(om.shape) == 3:
        ev, e2 = esd_batched_scaled(om.data, name=name, rescale_large=True, device=route)
        ev_sq = np.sort(ev.ravel())
    else:
        ev_sq, e2 = squared_singular_values_scaled(
            om.data, name=name, low_memory=options.low_memory, rescale_large=True, device=route
        )
    return analyze_evals(
        ev_sq * om.scale,
        lm,
        options=options,
        scale=om.scale,
        W=None,
        exponent2=e2 + 2 * om.exponent,
        entry_tail=om.entry_tail,
    )


def _route_for(data: Any, device: Optional[str]) -> str:
    """The spectral route for owned ``data`` (a torch tensor) under ``device``."""
    if device is None or device == "auto":
        return "torch" if getattr(data.device, "type", "cpu") != "cpu" else "cpu"
    return device


def analyze_or_error(om: OwnedMatrix, options: AnalysisOptions, device: str) -> LayerMetrics:
    """:func:`analyze_owned`; a failure becomes the layer's ``status="error"`` with the reason."""
    try:
        return analyze_owned(om, options, device)
    except Exception as e:  # noqa: BLE001 - one layer's failure is its status
        return LayerMetrics(
            name=om.name,
            type=om.type,
            shape=om.shape,
            status="error",
            warning="error",
            message=f"layer {om.name!r}: {type(e).__name__}: {e}",
        )
