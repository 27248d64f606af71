"""Act on the spectra: controllers that set per-layer training hyper-parameters from the layers' alphas.

* :class:`TempBalance` -- per-layer learning rates (Zhou et al., NeurIPS 2023);
* :class:`AlphaDecay` -- per-module weight decay (He et al., 2025, arXiv 2506.14562).

Both read the :class:`~wwmonitor.Monitor`'s background analysis (training never waits, unless
``sync=True``), multiply whatever the optimizer's scheduler sets, and record every assignment in the
run store and the sinks (:class:`~wwmonitor.records.ControlRecord`).  The formulas are in
:mod:`wwmonitor.control.formulas` (pure NumPy).  See docs/controllers.md.  torch is imported only
when a controller is bound.
"""

from __future__ import annotations

from ..records import ControlRecord
from .alphadecay import AlphaDecay
from .base import Controller
from .tempbalance import TempBalance

__all__ = ["TempBalance", "AlphaDecay", "Controller", "ControlRecord"]
