"""One call: a sharded (FSDP2) model's :class:`~wwmonitor.model.ModelReport` on one rank.

Outside :mod:`wwmonitor.sharding` on purpose: the report type lives in
:mod:`wwmonitor.model`, and the sharding package (which the Monitor imports)
must not depend on it, or the package's modules would import in a circle.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from .analyze import DEFAULT_OPTIONS, AnalysisOptions
from .compute import resolve_device
from .distributed import gather_objects
from .metrics import LayerMetrics
from .model import ModelReport
from .sharding.exchange import ShardedSpectra
from .sharding.owned import analyze_or_error

__all__ = ["analyze_sharded"]


def analyze_sharded(
    model: Any,
    *,
    layers: Optional[Sequence[Any]] = None,
    exclude: Optional[Sequence[Any]] = None,
    conv: str = "pool",
    options: AnalysisOptions = DEFAULT_OPTIONS,
    route: str = "auto",
    analysis_device: str = "auto",
    dst: Optional[int] = 0,
    spectra: Optional[ShardedSpectra] = None,
    **option_overrides: Any,
) -> Any:
    """Analyse a sharded (FSDP2) model: every rank analyses the matrices it owns, the metrics are gathered to
    rank ``dst`` (``None``: to every rank).  Returns a :class:`~wwmonitor.model.ModelReport` there (``None``
    elsewhere); ``meta["transfer"]`` holds this rank's :class:`TransferStats`.  A collective: call it on every
    rank.  Pass ``spectra`` to reuse a plan (and its byte counters)."""
    if option_overrides:
        bad = set(option_overrides) - set(AnalysisOptions.__dataclass_fields__)
        if bad:
            raise TypeError(f"analyze_sharded: unknown option(s) {sorted(bad)}")
        options = AnalysisOptions(**{**options.__dict__, **option_overrides})
    sp = (
        spectra
        if spectra is not None
        else ShardedSpectra(model, layers=layers, exclude=exclude, conv=conv, options=options, route=route)
    )
    owned = sp.exchange()
    device = resolve_device(analysis_device, (o.data for o in owned if o.data is not None))
    mine = {om.index: analyze_or_error(om, options, device) for om in owned}
    parts = gather_objects(mine, dst=dst)
    if parts is None:
        return None
    merged: dict[int, LayerMetrics] = {}
    for p in parts:
        merged.update(p)
    return ModelReport(
        [merged[i] for i in sorted(merged)],
        source=type(model).__name__,
        meta={
            "num_matrices": len(sp.entries),
            "world_size": sp.world,
            "sharded": True,
            "routes": sp.routes(),
            "transfer": sp.stats,
        },
    )
