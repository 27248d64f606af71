"""Power-law rank selection (the seeds' LSA K-selection): ``K`` = size of the power-law tail."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ._common import EVALS_THRESH, _alphas
from .mle import PowerLawFit, fit_powerlaw


@dataclass(frozen=True)
class PowerLawRank:
    """Result of :func:`powerlaw_rank`.

    ``K`` is the number of eigenpairs in the fitted power-law tail
    (``#{ev >= xmin}``, weightwatcher's ``num_pl_spikes``): the "latent
    dimension" chosen as in the seeds' LSA example.  ``xmins``/``Ds`` are the
    KS-distance-vs-xmin landscape (every candidate ``xmin``; for fewer than 20
    eigenvalues the small-n values, where candidates with tails under 8 points
    have ``D = 1``), ``alphas`` the plain MLE exponent ``1 + m/Σ ln(x/xmin)``
    at each candidate; ``xmins`` and ``evals`` are on the axis of the
    eigenvalues used (σ² for a matrix: eigenvalues of ``WᵀW``, not divided by ``N``).
    """

    K: int
    alpha: float
    xmin: float
    D: float
    xmins: np.ndarray = field(repr=False)
    Ds: np.ndarray = field(repr=False)
    alphas: np.ndarray = field(repr=False)
    evals: np.ndarray = field(repr=False)
    fit: PowerLawFit = field(repr=False)
    status: str = "ok"
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def powerlaw_rank(W_or_evals: Any, *, xmax: Optional[float] = None, name: str = "W") -> PowerLawRank:
    """Choose ``K`` = the size of the power-law tail of the spectrum.

    ``W_or_evals``: a 2-D matrix (NumPy / torch; eigenvalues of ``WᵀW`` via
    :func:`wwmonitor.spectral.squared_singular_values`) or a 1-D array of
    eigenvalues.  The fit is :func:`fit_powerlaw` (weightwatcher-identical) and
    the landscape is the exact KS distance of every candidate ``xmin``.
    """
    from ..spectral import squared_singular_values, to_numpy

    A = W_or_evals
    nd = len(np.shape(A)) if not hasattr(A, "ndim") else A.ndim
    if nd == 2:
        ev = squared_singular_values(A, name=name)
    elif nd == 1:
        ev = np.sort(np.asarray(to_numpy(A), dtype=np.float64))
    else:
        raise ValueError(f"powerlaw_rank: {name}: expected a 2-D matrix or 1-D eigenvalues, got {nd}-D input")
    fit = fit_powerlaw(ev, xmax=xmax, keep_landscape=True)
    empty = np.empty(0)
    if not fit.ok:
        return PowerLawRank(
            0,
            float("nan"),
            float("nan"),
            float("nan"),
            empty,
            empty,
            empty,
            ev,
            fit,
            fit.status,
            f"{name}: {fit.message}",
        )
    xs, Ds = fit.ks_landscape if fit.ks_landscape is not None else (empty, empty)
    x = np.sort(ev[ev > EVALS_THRESH])
    if xmax is not None:
        x = x[x <= xmax]
    # plain MLE exponent at every candidate (the small-n fit itself reports the bias-corrected one)
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = _alphas(np.log(x))[0] if x.size >= 2 else empty
    K = int(np.count_nonzero(ev >= fit.xmin) if xmax is None else np.count_nonzero((ev >= fit.xmin) & (ev <= xmax)))
    # (without xmax, K == fit.num_pl_spikes)
    return PowerLawRank(K, fit.alpha, fit.xmin, fit.D, xs, Ds, alphas, ev, fit, "ok", fit.message)
