"""wwmonitor: watch the weight spectra of a neural network while it trains.

The root namespace holds what a user calls::

    ev  = wwmonitor.esd(W)              # eigenvalues of X = WᵀW/N, ascending
    fit = wwmonitor.fit_powerlaw(ev)    # Clauset MLE, xmin by minimum KS distance
    mp  = wwmonitor.fit_mp(ev, Q)       # Marchenko-Pastur bulk fit
    K   = wwmonitor.powerlaw_rank(A)    # LSA K selection
    m   = wwmonitor.analyze_matrix(W)   # LayerMetrics with phase
    rep = wwmonitor.analyze_model(obj)  # torch / Keras / safetensors / dict of arrays
    df  = wwmonitor.describe(model)     # every weight: analysed, or skipped and why
    mon = wwmonitor.Monitor(model, ...) # training-time monitor (alerts=wwmonitor.AlertRules(...))
    run = wwmonitor.load_run(path)      # read a run store
    wwmonitor.write_report(run_dir)     # HTML report of one run; write_comparison(...) of several

Result types, options and helpers live in their modules (``wwmonitor.metrics.LayerMetrics``,
``wwmonitor.model.ModelReport``, ``wwmonitor.powerlaw.PowerLawFit``, ...).  The names this namespace used
to re-export still resolve, with a ``DeprecationWarning`` naming the new import path.

Only numpy and scipy are imported by ``import wwmonitor``; framework integrations load lazily.
"""

from __future__ import annotations

from typing import Any

from ._deprecated import moved
from ._lazy import lazy_exports

__version__ = "0.1.0"

#: public name -> defining module (loaded on first access)
_LAZY = {
    "esd": "wwmonitor.spectral",
    "fit_powerlaw": "wwmonitor.powerlaw",
    "powerlaw_rank": "wwmonitor.powerlaw",
    "fit_mp": "wwmonitor.mp",
    "analyze_matrix": "wwmonitor.analyze",
    "analyze_model": "wwmonitor.model",
    "Monitor": "wwmonitor.monitor",
    "load_run": "wwmonitor.store",
    "AlertRules": "wwmonitor.alerts",
    "write_report": "wwmonitor.report.html",
    "write_comparison": "wwmonitor.report.compare",
    "describe": "wwmonitor.describe",
}

#: names re-exported here before issue 17 (internals and result types): old name -> module that defines it
_MOVED = {
    "esd_batched": "wwmonitor.spectral",
    "PowerLawFit": "wwmonitor.powerlaw",
    "fit_truncated_powerlaw": "wwmonitor.powerlaw",
    "compare_distributions": "wwmonitor.powerlaw",
    "TPLFit": "wwmonitor.powerlaw",
    "PowerLawRank": "wwmonitor.powerlaw",
    "LikelihoodRatio": "wwmonitor.powerlaw",
    "mp_pdf": "wwmonitor.mp",
    "mp_cdf": "wwmonitor.mp",
    "MPFit": "wwmonitor.mp",
    "PhaseResult": "wwmonitor.phases",
    "classify_phase": "wwmonitor.phases",
    "PHASES": "wwmonitor.phases",
    "localization_metrics": "wwmonitor.localization",
    "PHASE_GENERATORS": "wwmonitor.synthetic",
    "LayerMetrics": "wwmonitor.metrics",
    "AnalysisOptions": "wwmonitor.analyze",
    "ModelReport": "wwmonitor.model",
    "Run": "wwmonitor.store",
    "RunStore": "wwmonitor.store",
}

__all__ = sorted(_LAZY) + ["__version__"]

_public_getattr, __dir__ = lazy_exports(globals(), _LAZY, __all__)
_moved_getattr = moved(__name__, _MOVED)


def __getattr__(name: str) -> Any:
    """A public name (loaded lazily), or a moved one (warns, see ``_MOVED``); else ``AttributeError``."""
    if name in _LAZY:
        return _public_getattr(name)
    return _moved_getattr(name)


# ``describe`` is also the name of the module defining it: bound here, at import (it needs numpy only), so that
# importing ``wwmonitor.describe`` first (``from wwmonitor.describe import coverage_summary``) cannot leave the
# module object under the function's name.
from .describe import describe as describe  # noqa: E402
