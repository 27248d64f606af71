"""wwmonitor: watch the weight spectra of a neural network while it trains.

Public API (re-exported here; everything else is importable but internal)::

    ev  = wwmonitor.esd(W)              # eigenvalues of X = WᵀW/N, ascending
    fit = wwmonitor.fit_powerlaw(ev)    # Clauset MLE, xmin by minimum KS distance
    m   = wwmonitor.analyze_matrix(W)   # LayerMetrics with phase
    rep = wwmonitor.analyze_model(obj)  # torch / Keras / safetensors / dict of arrays
    mon = wwmonitor.Monitor(model, ...) # training-time monitor
    run = wwmonitor.load_run(path)      # read a run store
    df  = wwmonitor.describe(model)     # every weight: analysed, or skipped and why

Only numpy and scipy are imported by ``import wwmonitor``; framework
integrations load lazily.
"""

from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "esd": "wwmonitor.spectral",
    "esd_batched": "wwmonitor.spectral",
    "fit_powerlaw": "wwmonitor.powerlaw",
    "PowerLawFit": "wwmonitor.powerlaw",
    "powerlaw_rank": "wwmonitor.powerlaw",
    "fit_truncated_powerlaw": "wwmonitor.powerlaw",
    "compare_distributions": "wwmonitor.powerlaw",
    "TPLFit": "wwmonitor.powerlaw",
    "PowerLawRank": "wwmonitor.powerlaw",
    "LikelihoodRatio": "wwmonitor.powerlaw",
    "fit_mp": "wwmonitor.mp",
    "mp_pdf": "wwmonitor.mp",
    "mp_cdf": "wwmonitor.mp",
    "PhaseResult": "wwmonitor.phases",
    "localization_metrics": "wwmonitor.localization",
    "PHASE_GENERATORS": "wwmonitor.synthetic",
    "MPFit": "wwmonitor.mp",
    "classify_phase": "wwmonitor.phases",
    "PHASES": "wwmonitor.phases",
    "LayerMetrics": "wwmonitor.metrics",
    "analyze_matrix": "wwmonitor.analyze",
    "AnalysisOptions": "wwmonitor.analyze",
    "analyze_model": "wwmonitor.model",
    "ModelReport": "wwmonitor.model",
    "Monitor": "wwmonitor.monitor",
    "load_run": "wwmonitor.store",
    "Run": "wwmonitor.store",
    "RunStore": "wwmonitor.store",
    "AlertRules": "wwmonitor.alerts",
    "write_report": "wwmonitor.report.html",
    "write_comparison": "wwmonitor.report.compare",
    "describe": "wwmonitor.describe",
}

__all__ = sorted(_LAZY) + ["__version__"]


__getattr__, __dir__ = lazy_exports(globals(), _LAZY, __all__)

# ``describe`` is also the name of the module defining it: bound here, at import (it needs numpy only), so that
# importing ``wwmonitor.describe`` first (``from wwmonitor.describe import coverage_summary``) cannot leave the
# module object under the function's name.
from .describe import describe as describe  # noqa: E402
