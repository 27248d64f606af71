"""AlphaDecay: a weight decay per module from the module's alpha (He et al., 2025, arXiv 2506.14562)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import Controller
from .formulas import ALPHADECAY_RANGE, _check_range, alphadecay_factors

__all__ = ["AlphaDecay"]


class AlphaDecay(Controller):
    """Per-module weight decay: ``wd_module = wd_group × factor(alpha_module)``.

    A module with a heavier-tailed ESD (smaller alpha: stronger feature learning) gets weaker decay, a
    lighter-tailed one stronger: the linear map of ``[min alpha, max alpha]`` to ``wd_range`` (the
    AlphaDecay repository's defaults ``(0.666, 3.0)``), alpha from the median-xmin fit; first and last
    module and modules with fewer than ``min_evals`` eigenvalues keep the group's decay.  It updates
    whenever the monitor has a newer result: the reference recomputes every 500 optimizer steps, so
    build the monitor with ``every_n_steps=500`` to match.  A group's decay of 0 (a no-decay group of
    biases and norms) stays 0.  Formula: :func:`~wwmonitor.control.formulas.alphadecay_factors`.

    Parameters
    ----------
    wd_range:
        ``(low, high)`` factors of the smallest and the largest alpha.
    alpha, keep_ends, min_evals, norms, sync, record:
        See :class:`~wwmonitor.control.tempbalance.TempBalance` and
        :class:`~wwmonitor.control.base.Controller`.
    """

    name = "AlphaDecay"
    quantity = "weight_decay"

    def __init__(
        self,
        *,
        wd_range: Sequence[float] = ALPHADECAY_RANGE,
        alpha: str = "median",
        keep_ends: bool = True,
        min_evals: int = 50,
        norms: str = "batch",
        sync: bool = False,
        record: bool = True,
    ) -> None:
        self.wd_range = _check_range(wd_range, "wd_range")
        super().__init__(alpha=alpha, keep_ends=keep_ends, min_evals=min_evals, norms=norms, sync=sync, record=record)

    def assign(self, alphas: np.ndarray) -> np.ndarray:
        return alphadecay_factors(alphas, wd_range=self.wd_range)

    def __repr__(self) -> str:
        return f"AlphaDecay(wd_range={self.wd_range}, alpha={self.alpha!r}, sync={self.sync})"
