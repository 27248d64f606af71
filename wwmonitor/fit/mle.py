"""Power-law fits of an ESD tail (Clauset, Shalizi & Newman 2009), fast and exact.

Model (continuous power law on ``[xmin, ∞)``)::

    p(x) = (alpha - 1) / xmin · (x / xmin)^(-alpha)

Maximum-likelihood exponent for the ``n`` points ``x_i >= xmin``::

    alpha = 1 + n / Σ_{x_i >= xmin} ln(x_i / xmin)

``xmin`` is chosen among the data as the one minimising the Kolmogorov-Smirnov
distance between the fitted CDF and the empirical CDF of its tail::

    D = max_{k=0..n-1} | 1 - (x_k/xmin)^(1-alpha) - k/n |     (tail sorted ascending)

(note the empirical CDF is ``k/n``, the value *before* the step at ``x_k``;
this is weightwatcher's convention and we keep it), with the standard error
``sigma = (alpha - 1) / sqrt(n)``.

Agreement with weightwatcher 0.7.7
----------------------------------
With default arguments :func:`fit_powerlaw` returns *bit-for-bit* the
``alpha``, ``xmin``, ``D`` and ``sigma`` of weightwatcher 0.7.7's default
fitter (``WW_powerlaw.WWFit`` as called by ``WeightWatcher.fit_powerlaw``):

* eigenvalues ``<= 1e-5`` are dropped (:data:`EVALS_THRESH`);
* every remaining eigenvalue except the largest is a candidate ``xmin``;
* the first candidate with the smallest ``D`` wins;
* with fewer than :data:`SMALL_N_CUTOFF` (20) eigenvalues weightwatcher
  switches to a *small-n* estimator (bias-corrected ``alpha = 1 + (n-1)/Σ ln``,
  candidates need a tail of at least 8 points, the smallest ``D`` wins);
  we reproduce it (``fit.method == "small_n"``, :mod:`wwmonitor.fit.small_n`).

The scan over candidates is pruned exactly (:mod:`wwmonitor.fit.scan`): the
result is identical to the full ``O(n²)`` scan.

See ``docs/metrics.md`` ("Power-law fit") for the small-n rule and the "fingers" fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np

from ._common import EVALS_THRESH, _ww_alpha_D
from .scan import _scan
from .small_n import SMALL_N_CUTOFF, SMALL_N_MIN_TAIL, _small_n

#: fix_fingers: a clipped fit is accepted when its alpha is this much below the unclipped alpha
FINGER_THRESH = 1.0
#: fix_fingers: stop clipping once alpha falls to this value
FINGER_MIN_ALPHA = 2.0
#: fits whose tail has fewer points than this carry a warning message (alpha is then very noisy)
FEW_TAIL_POINTS = 10


@dataclass(frozen=True)
class PowerLawFit:
    """Result of :func:`fit_powerlaw`.

    Attributes are on the axis of the eigenvalues passed in (``xmin``, ``xmax``
    scale with the input; ``alpha``, ``D``, ``sigma`` are scale-free).

    Attributes
    ----------
    alpha:
        Power-law exponent (continuous MLE; bias-corrected for ``method="small_n"``).
    xmin, xmax:
        Smallest and largest eigenvalue of the fitted tail.
    D:
        KS distance of the fit (see module docstring for the exact formula).
    n_tail:
        Number of eigenvalues in the fitted tail (``xmin <= x <= xmax``,
        counted from ``xmin``'s position in the sorted data).
    sigma:
        Standard error ``(alpha - 1) / sqrt(n_tail)``.
    n:
        Number of eigenvalues that took part in the fit (after the ``1e-5``
        threshold, the ``xmax`` cut and finger clipping).
    status:
        ``"ok"``, ``"too_few"`` (fewer than 2 usable eigenvalues) or
        ``"failed"`` (non-finite input, degenerate tail); never a silent NaN:
        on failure the numbers are NaN *and* ``status``/``message`` say why.
    message:
        Human-readable reason for a failure, or a caution (tiny tail, small-n path).
    ks_landscape:
        ``(xmins, Ds)`` for every candidate ``xmin`` when ``keep_landscape=True``.
    method:
        ``"standard"`` (weightwatcher's KS scan), ``"small_n"`` (fewer than 20
        eigenvalues) or ``"fixed_xmin"``.
    n_clipped:
        Number of top eigenvalues removed by the ``fix_fingers`` option.
    n_evaluated:
        How many candidates needed their full KS distance (diagnostic of the pruning).
    num_pl_spikes:
        weightwatcher's ``num_pl_spikes``: the number of *input* eigenvalues
        ``>= xmin`` (counts ties at ``xmin``, clipped fingers and values above
        ``xmax``); 0 when the fit failed.
    """

    alpha: float
    xmin: float
    xmax: float
    D: float
    n_tail: int
    sigma: float
    n: int
    status: str = "ok"  # "ok" | "failed" | "too_few"
    message: str = ""
    ks_landscape: Optional[tuple[np.ndarray, np.ndarray]] = field(default=None, repr=False, compare=False)
    method: str = "standard"
    n_clipped: int = 0
    n_evaluated: int = 0
    num_pl_spikes: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _failed(n: int, status: str, message: str, method: str = "standard") -> PowerLawFit:
    nan = float("nan")
    return PowerLawFit(nan, nan, nan, nan, 0, nan, n, status, message, method=method)


def _prepare(evals: Any, xmax: Optional[float]) -> tuple[Optional[np.ndarray], Optional[PowerLawFit]]:
    from ..spectral import to_numpy  # torch tensors on any device, JAX/TF arrays

    x = np.asarray(to_numpy(evals), dtype=np.float64)
    if x.ndim != 1:
        x = x.ravel()
    if not np.isfinite(x).all():
        return None, _failed(x.size, "failed", "eigenvalues contain NaN or Inf")
    x = np.sort(x[x > EVALS_THRESH])
    if xmax is not None:
        if not (isinstance(xmax, (int, float, np.integer, np.floating)) and math.isfinite(float(xmax))):
            raise ValueError(f"fit_powerlaw: xmax must be a finite number or None, got {xmax!r}")
        x = x[x <= float(xmax)]
    return x, None


def _result(
    x: np.ndarray,
    i: int,
    a: float,
    D: float,
    method: str,
    landscape: Optional[tuple[np.ndarray, np.ndarray]],
    n_clipped: int,
    n_eval: int,
) -> PowerLawFit:
    """The :class:`PowerLawFit` of the tail ``x[i:]`` (sorted ``x``), with its cautions."""
    n = x.size
    m = n - i
    sigma = (a - 1) / np.sqrt(m)
    msgs = []
    if method == "small_n":
        msgs.append(
            f"small-n fit ({n} < {SMALL_N_CUTOFF} eigenvalues): bias-corrected alpha, "
            f"tails of >= {SMALL_N_MIN_TAIL} points"
        )
    if m < FEW_TAIL_POINTS:
        msgs.append(f"only {m} points in the fitted tail; alpha is unreliable (sigma={sigma:.3g})")
    return PowerLawFit(
        alpha=float(a),
        xmin=float(x[i]),
        xmax=float(x[-1]),
        D=float(D),
        n_tail=int(m),
        sigma=float(sigma),
        n=int(n),
        message="; ".join(msgs),
        ks_landscape=landscape,
        method=method,
        n_clipped=int(n_clipped),
        n_evaluated=int(n_eval),
    )


def _fit_sorted(x: np.ndarray, xmin: Optional[float], keep_landscape: bool, n_clipped: int = 0) -> PowerLawFit:
    """Fit the sorted, thresholded eigenvalues ``x``: fixed ``xmin``, small-n or the standard scan."""
    n = x.size
    if n < 2:
        return _failed(n, "too_few", f"only {n} eigenvalue(s) above {EVALS_THRESH} (need at least 2)")
    logx = np.log(x, dtype=np.float64)
    landscape = None
    n_eval = 1
    if xmin is not None:
        i = int(np.searchsorted(x, float(xmin), side="left"))
        if i >= n - 1:
            return _failed(n, "too_few", f"fewer than 2 eigenvalues >= xmin={xmin!r}", method="fixed_xmin")
        a, D = _ww_alpha_D(x, logx, i)
        method = "fixed_xmin"
        if not (math.isfinite(a) and a > 1):
            return _failed(n, "failed", f"tail above xmin={xmin!r} is degenerate (alpha={a})", method=method)
        if keep_landscape:
            landscape = (x[i : i + 1].copy(), np.array([D]))
    elif n < SMALL_N_CUTOFF:
        method = "small_n"
        i, a, D, Ds, problem = _small_n(x, logx)
        n_eval = n - 1
        if problem:
            return _failed(n, "failed", f"small-n fit: {problem}", method=method)
        if keep_landscape and Ds is not None:
            landscape = (x[:-1].copy(), Ds)
    else:
        method = "standard"
        i, a, D, n_eval, Ds = _scan(x, logx, full=keep_landscape)
        if i < 0 or not (math.isfinite(a) and a > 1):
            return _failed(n, "failed", "no candidate xmin gave a finite power-law fit")
        if keep_landscape and Ds is not None:
            landscape = (x[:-1].copy(), Ds)
    return _result(x, i, a, D, method, landscape, n_clipped, n_eval)


def _fix_fingers(
    x: np.ndarray, xmin: Optional[float], keep_landscape: bool, fit0: PowerLawFit, fix_fingers: int, finger_rule: str
) -> PowerLawFit:
    """weightwatcher's clip_xmax rule (RMT_Util.fit_clipped_powerlaw: finger_thresh=1, min_alpha=2).

    Refit after clipping the top ``c`` eigenvalues, ``c = 1`` (``"clip_xmax"``) or
    ``2`` (``"weightwatcher"``) up to ``fix_fingers``; the first fit whose alpha
    is more than :data:`FINGER_THRESH` below ``fit0.alpha`` wins; stop (keeping
    ``fit0``) at a failed fit or once alpha is ``<=`` :data:`FINGER_MIN_ALPHA`.
    """
    kmax = min(int(fix_fingers), x.size // 2)
    for c in range(1 if finger_rule == "clip_xmax" else 2, kmax + 1):
        f = _fit_sorted(x[:-c], xmin, keep_landscape, n_clipped=c)
        if not f.ok:
            break
        if f.alpha + FINGER_THRESH < fit0.alpha:
            return f
        if f.alpha <= FINGER_MIN_ALPHA:
            break
    return fit0


def fit_powerlaw(
    evals: Any,
    *,
    xmin: Optional[float] = None,
    xmax: Optional[float] = None,
    keep_landscape: bool = False,
    fix_fingers: int = 0,
    finger_rule: str = "clip_xmax",
) -> PowerLawFit:
    """Fit a power law to the upper tail of ``evals`` (any order, any scale).

    With default arguments the result equals weightwatcher 0.7.7's default
    fitter bit for bit (see the module docstring); the scan is pruned exactly,
    so it is 20-80x faster than weightwatcher's loop at 1k-16k eigenvalues.

    Parameters
    ----------
    evals:
        Eigenvalues (1-D array-like; any axis -- weightwatcher uses the σ² axis).
        Values ``<= 1e-5`` are ignored.
    xmin:
        Fix ``xmin`` (the tail starts at the first eigenvalue ``>= xmin``)
        instead of scanning for the minimum-KS value.
    xmax:
        Drop eigenvalues above ``xmax`` before fitting (``None``: keep all).
        The fitted density is *not* renormalised for the cut (as in weightwatcher).
    keep_landscape:
        Also return the KS distance of every candidate ``xmin``
        (``fit.ks_landscape = (xmins, Ds)``); this needs the full ``O(n²)``
        scan (vectorised, still faster than weightwatcher's loop).
    fix_fingers:
        Clip up to this many of the largest eigenvalues ("fingers": a few
        finite-size outliers above the tail that pull the KS scan onto a tiny,
        steep tail) before fitting; ``0`` turns it off.  The rule is
        weightwatcher's ``clip_xmax`` idea: refit after clipping the top ``c``
        eigenvalues for ``c = 1, 2, ..., fix_fingers`` and accept the first fit
        whose alpha is more than :data:`FINGER_THRESH` (1.0) *below* the
        unclipped alpha; stop early (keeping the unclipped fit) once a clipped
        fit's alpha is ``<= 2``.  ``fit.n_clipped`` says how many were clipped.
    finger_rule:
        ``"clip_xmax"`` (default, as above) or ``"weightwatcher"``: exactly
        weightwatcher 0.7.7's ``fix_fingers='clip_xmax'``, which starts at
        ``c = 2``; ``fix_fingers=9`` reproduces its default ``max_fingers=10``
        (it reports ``num_fingers = c - 1``; our ``n_clipped`` is ``c``).

    Returns
    -------
    PowerLawFit
        ``status != "ok"`` with a ``message`` on failure (never a silent NaN).
    """
    if not isinstance(fix_fingers, (int, np.integer)) or isinstance(fix_fingers, bool) or fix_fingers < 0:
        raise ValueError(f"fit_powerlaw: fix_fingers must be a non-negative int, got {fix_fingers!r}")
    if finger_rule not in ("clip_xmax", "weightwatcher"):
        raise ValueError(f"fit_powerlaw: finger_rule must be 'clip_xmax' or 'weightwatcher', got {finger_rule!r}")
    x, bad = _prepare(evals, xmax)
    if bad is not None:
        return bad
    assert x is not None
    fit = _fit_sorted(x, xmin, keep_landscape)
    if fix_fingers and fit.ok:
        fit = _fix_fingers(x, xmin, keep_landscape, fit, fix_fingers, finger_rule)
    if not fit.ok:
        return fit
    from ..spectral import to_numpy

    ev = np.asarray(to_numpy(evals), dtype=np.float64).ravel()
    return replace(fit, num_pl_spikes=int(np.count_nonzero(ev >= fit.xmin)))
