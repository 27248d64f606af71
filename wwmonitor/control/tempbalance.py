"""TempBalance: a learning rate per layer from the layer's alpha (Zhou et al., NeurIPS 2023)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import Controller
from .formulas import ASSIGNMENTS, TEMPBALANCE_RANGE, _check_range, tempbalance_factors

__all__ = ["TempBalance"]


class TempBalance(Controller):
    """Per-layer learning rates: ``lr_layer = lr_scheduled × factor(alpha_layer)``.

    A layer whose ESD is lighter-tailed (larger alpha: less trained) gets a larger rate.  Default: the
    paper's linear map of ``[min alpha, max alpha]`` to ``lr_range = (0.5, 1.5)`` over the layers that
    take part, alpha from the median-xmin fit; the first and last layer keep the scheduled rate
    (``keep_ends``), as do layers with fewer than ``min_evals`` eigenvalues or no alpha.  BatchNorm
    layers follow the conv/linear layer before them (``norms``).  The factors multiply whatever the
    optimizer's scheduler sets, only for the update.  Formulas: :func:`~wwmonitor.control.formulas.tempbalance_factors`;
    timing and binding: :class:`~wwmonitor.control.base.Controller`; docs/controllers.md.

    Parameters
    ----------
    assignment:
        ``"linear"`` (default), ``"sqrt"``, ``"log2"`` or ``"step"``.
    lr_range:
        ``(low, high)`` factors of the linear and step maps.
    alpha:
        ``"median"`` (the reference's fit, default) or ``"clauset"`` (the monitor's own alpha).
    keep_ends, min_evals, norms, sync, record:
        See :class:`~wwmonitor.control.base.Controller`.
    """

    name = "TempBalance"
    quantity = "lr"

    def __init__(
        self,
        *,
        assignment: str = "linear",
        lr_range: Sequence[float] = TEMPBALANCE_RANGE,
        alpha: str = "median",
        keep_ends: bool = True,
        min_evals: int = 50,
        norms: str = "batch",
        sync: bool = False,
        record: bool = True,
    ) -> None:
        if assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
        self.assignment = assignment
        self.lr_range = _check_range(lr_range, "lr_range")
        super().__init__(alpha=alpha, keep_ends=keep_ends, min_evals=min_evals, norms=norms, sync=sync, record=record)

    def assign(self, alphas: np.ndarray) -> np.ndarray:
        return tempbalance_factors(alphas, assignment=self.assignment, lr_range=self.lr_range)

    def __repr__(self) -> str:
        return (
            f"TempBalance(assignment={self.assignment!r}, lr_range={self.lr_range}, "
            f"alpha={self.alpha!r}, sync={self.sync})"
        )
