"""Per-layer metrics: the :class:`LayerMetrics` record and the norm/rank formulas.

Two eigenvalue axes are used, and every field says which:

* ``σ²`` axis -- eigenvalues of ``WᵀW`` (squared singular values, *not*
  divided by ``N``).  weightwatcher reports ``xmin``, ``xmax``,
  ``lambda_max`` and all log norms on this axis, so fields sharing a name with
  a weightwatcher column are computed here and hold exactly its value.
* ``λ`` axis -- eigenvalues of ``X = WᵀW/N`` (the seeds' convention), used by
  :func:`wwmonitor.esd`, the Marchenko-Pastur fit (``mp_*``,
  ``lambda_plus``) and the plots.

Formulas (``ev`` = eigenvalues on the σ² axis, ``ev_max`` the largest):

* ``log_norm = log10(Σ ev)``  (squared Frobenius norm)
* ``log_spectral_norm = log10(ev_max)``  (squared spectral norm)
* ``alpha_weighted = alpha · log10(ev_max)``
* ``log_alpha_norm = log10(Σ ev^alpha)``  (Schatten alpha-norm to the alpha)
* ``stable_rank = Σ ev / ev_max``
* ``entropy = -Σ p_i ln p_i / ln(R)`` with ``p_i = ev_i/Σ ev`` and
  ``R = matrix_rank`` (weightwatcher's normalised matrix entropy)
* ``matrix_rank = #{σ_i > σ_max · max(a, b) · eps}`` (NumPy's default tolerance)
* ``rank_loss = M - matrix_rank``
* ``num_pl_spikes = #{ev >= xmin}`` (size of the fitted power-law tail)
* ``detX_num``, ``detX_val``, ``ERG_gap``: SETOL's ``det X = 1`` (ERG) condition,
  see :func:`detx_constraint`
* ``delta_*``: distance from a reference ``W_ref`` (``Monitor(base_model=...)``,
  ``analyze_model(base_model=...)``; :mod:`wwmonitor.monitor.reference`):
  ``delta_rel_norm = ‖W − W_ref‖_F / ‖W_ref‖_F`` and the metrics of the same
  name (alpha, stable rank, ...) of the difference ``W − W_ref``
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Optional

import numpy as np

#: fitted models of one layer on the λ axis, as plain dicts: ``{"powerlaw": {...}, "mp": {...}}`` (the
#: fields of :class:`~wwmonitor.powerlaw.PowerLawFit` with ``ks_landscape`` as ``[xmins, Ds]`` lists
#: sampled at up to 64 candidates, and of :class:`~wwmonitor.mp.MPFit`); a key is absent when that fit
#: did not run or failed
Fits = dict[str, dict[str, Any]]

__all__ = [
    "LayerMetrics",
    "Fits",
    "norm_metrics",
    "matrix_rank",
    "spectral_entropy",
    "detx_constraint",
    "METRIC_NAMES",
    "CARRIED",
    "ANALYSED_STATUSES",
]

#: status of a layer whose weights had not changed since an earlier snapshot: its metrics are that
#: snapshot's, carried forward (``message``: ``"unchanged since step N"``; see :mod:`wwmonitor.monitor.unchanged`)
CARRIED = "carried"
#: statuses whose metrics are a complete analysis (computed now, or carried forward unchanged)
ANALYSED_STATUSES: tuple[str, ...] = ("ok", CARRIED)


@dataclass
class LayerMetrics:
    """All metrics of one analysed weight matrix (or pooled conv layer).

    ``status`` is ``"ok"`` when every metric was computed; otherwise it names
    what went wrong (``"non_finite"``, ``"too_few_evals"``, ``"fit_failed"``,
    ``"zero_matrix"`` (every weight exactly zero), ``"too_many_evals"``,
    ``"underflow"`` / ``"overflow"`` (weights at an extreme scale: a
    scale-dependent value such as ``lambda_max`` cannot be represented in
    float64; the message names them), ``"error"``) and ``message`` says why.
    Metrics that could not be computed are ``None``, never a sentinel like
    ``-1``; ``message`` also names metrics that came out non-finite and were
    set to ``None``.  ``"carried"``: the weights had not changed since step
    ``N`` (``message``: ``"unchanged since step N"``), whose complete metrics
    are repeated here (:data:`ANALYSED_STATUSES`).
    """

    name: str
    type: str = ""
    shape: tuple[int, ...] = ()
    N: int = 0
    M: int = 0
    Q: float = float("nan")
    num_evals: int = 0
    # --- power law (σ² axis for xmin/xmax) -------------------------------
    alpha: Optional[float] = None
    xmin: Optional[float] = None
    xmax: Optional[float] = None
    D: Optional[float] = None
    sigma: Optional[float] = None
    num_pl_spikes: Optional[int] = None
    # --- norms and ranks (σ² axis) ----------------------------------------
    alpha_weighted: Optional[float] = None
    log_alpha_norm: Optional[float] = None
    log_norm: Optional[float] = None
    log_spectral_norm: Optional[float] = None
    lambda_max: Optional[float] = None
    stable_rank: Optional[float] = None
    entropy: Optional[float] = None
    matrix_rank: Optional[int] = None
    rank_loss: Optional[int] = None
    # --- SETOL ERG / det X = 1 condition (see detx_constraint) ----------------
    #: number of largest eigenvalues (on the unit-mean axis) whose product first drops below 1
    detX_num: Optional[int] = None
    #: the smallest of those eigenvalues, σ² axis (weightwatcher's ``detX_val``)
    detX_val: Optional[float] = None
    #: ``detX_num - num_pl_spikes`` (0: the ERG tail and the power-law tail start together)
    ERG_gap: Optional[int] = None
    # --- Marchenko-Pastur (λ axis, X = WᵀW/N) -----------------------------
    mp_sigma2: Optional[float] = None
    lambda_plus: Optional[float] = None
    lambda_minus: Optional[float] = None
    tw_margin: Optional[float] = None
    mp_softrank: Optional[float] = None
    num_spikes: Optional[int] = None
    mp_ks: Optional[float] = None
    # --- phase -----------------------------------------------------------
    phase: Optional[str] = None
    phase_reason: str = ""
    # --- distance from a reference W_ref (None: no reference; see wwmonitor.monitor.reference) ----
    #: ‖W − W_ref‖_F / ‖W_ref‖_F (None when W_ref is all zeros)
    delta_rel_norm: Optional[float] = None
    #: alpha, stable rank, log10 of the squared spectral and Frobenius norms of W − W_ref (σ² axis)
    delta_alpha: Optional[float] = None
    delta_stable_rank: Optional[float] = None
    delta_log_spectral_norm: Optional[float] = None
    delta_log_norm: Optional[float] = None
    #: status of the delta's analysis ("" without a reference; "ok", "zero_matrix", "too_few_evals",
    #: "no_reference", "shape_mismatch", ...), its reason in ``delta_message``
    delta_status: str = ""
    #: why the delta could not be analysed ("" when ``delta_status`` is "" or "ok")
    delta_message: str = ""
    # --- alert rules that read the weights (filled on the analyser thread) ---------------------
    #: correlation traps (``wwmonitor.alerts.correlation_traps``); ``None``: not computed
    num_traps: Optional[int] = None
    # --- warnings / status -------------------------------------------------
    warning: str = ""
    status: str = "ok"
    message: str = ""
    #: optional extra metrics (eigenvector localization of ``analyze_model(localization=True)``)
    extra: dict[str, Any] = field(default_factory=dict)
    #: the λ-axis ESD (eigenvalues of ``X = WᵀW/N``, float32, ascending) when ``keep_esd``; the monitor's
    #: analyzer moves it to :attr:`wwmonitor.records.SnapshotResult.esds` (not part of :meth:`to_dict`)
    esd: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    #: the fitted models on the λ axis (:data:`Fits`) when ``keep_esd``; moved to
    #: :attr:`wwmonitor.records.SnapshotResult.fits` by the analyzer (not part of :meth:`to_dict`)
    fits: Optional["Fits"] = field(default=None, repr=False, compare=False)

    def to_dict(self, flat: bool = True) -> dict[str, Any]:
        """Plain dict of the metrics (without :attr:`esd` and :attr:`fits`); with ``flat`` the
        ``extra`` entries are merged in."""
        d = asdict(replace(self, esd=None, fits=None))
        d.pop("esd")
        d.pop("fits")
        d["shape"] = "x".join(str(s) for s in self.shape)
        extra = d.pop("extra")
        if flat:
            d.update(extra)
        else:
            d["extra"] = extra
        return d

    def numeric(self) -> dict[str, float]:
        """The numeric metrics only (for loggers): name -> float, Nones dropped."""
        out: dict[str, float] = {}
        for k, v in self.to_dict().items():
            if k in _NON_METRIC:
                continue
            if isinstance(v, (bool, np.bool_)):
                continue
            if isinstance(v, (int, float, np.integer, np.floating)) and v is not None:
                fv = float(v)
                if math.isfinite(fv):
                    out[k] = fv
        return out


_NON_METRIC = {
    "name",
    "type",
    "shape",
    "N",
    "M",
    "phase",
    "phase_reason",
    "warning",
    "status",
    "message",
    "delta_status",
    "delta_message",
}

#: numeric metric names of :class:`LayerMetrics` (excluding identity fields)
METRIC_NAMES: tuple[str, ...] = tuple(
    f.name for f in fields(LayerMetrics) if f.name not in _NON_METRIC | {"extra", "esd", "fits"}
)


def matrix_rank(ev: np.ndarray, shape: tuple[int, int]) -> int:
    """Numerical rank from eigenvalues of ``WᵀW`` (σ² axis).

    ``#{σ_i > σ_max · max(a, b) · eps(float64)}`` -- NumPy's
    ``matrix_rank`` tolerance applied to ``σ_i = sqrt(ev_i)``.
    """
    sv = np.sqrt(np.clip(ev, 0, None))
    if sv.size == 0 or sv.max() == 0:
        return 0
    tol = sv.max() * max(shape) * np.finfo(np.float64).eps
    return int(np.count_nonzero(sv > tol))


#: weightwatcher adds this to p and to the rank inside its entropy (RMT_Util.matrix_entropy)
_WW_EPSILON = 1e-10


def spectral_entropy(ev: np.ndarray, rank: int) -> float:
    """Normalised spectral entropy ``-Σ p ln p / ln(rank)``, ``p = ev/Σ ev`` (in [0, 1]).

    As in weightwatcher 0.7.7, ``1e-10`` is added to every ``p_i`` and to the
    rank, so a rank-1 matrix gives a finite value and the result matches its
    ``entropy`` column to float precision.
    """
    s = ev.sum()
    if s <= 0:
        return 0.0
    p = ev / s + _WW_EPSILON
    return float(-(p * np.log(p)).sum() / np.log(rank + _WW_EPSILON))


def norm_metrics(ev: np.ndarray, shape: tuple[int, int], alpha: Optional[float]) -> dict[str, Any]:
    """Norms and ranks from eigenvalues ``ev`` of ``WᵀW`` (σ² axis)."""
    ev = np.asarray(ev, dtype=np.float64)
    M = ev.size
    ev_max = float(ev.max())
    total = float(ev.sum())
    rank = matrix_rank(ev, shape)
    out: dict[str, Any] = {
        "lambda_max": ev_max,
        "log_norm": math.log10(total),
        "log_spectral_norm": math.log10(ev_max),
        "stable_rank": total / ev_max,
        "matrix_rank": rank,
        "rank_loss": M - rank,
        "entropy": spectral_entropy(ev, rank),
    }
    if alpha is not None and math.isfinite(alpha):
        out["alpha_weighted"] = alpha * math.log10(ev_max)
        # Σ ev^alpha computed in log space to avoid overflow
        pos = ev[ev > 0]
        lse = np.logaddexp.reduce(alpha * np.log(pos))
        out["log_alpha_norm"] = float(lse / math.log(10))
    return out


#: the log-space scan of :func:`detx_constraint` trusts its own decision for an index only where
#: every partial product of weightwatcher's ``np.prod(r[idx:])`` stays a normal float64: the product
#: of the factors below 1 must exceed ``e^-700`` (the smallest normal is ``e^-708.4``)
_DETX_LOG_SAFE = 700.0


def detx_constraint(ev: np.ndarray) -> tuple[Optional[int], Optional[float]]:
    """SETOL's ``det X = 1`` (ERG) condition as weightwatcher 0.7.7 evaluates it: ``(detX_num, detX_val)``.

    ``ev``: all eigenvalues of ``WᵀW`` (σ² axis, ascending, the same array whose largest is
    ``lambda_max``).  Definition (weightwatcher 0.7.7 ``WeightWatcher.apply_detX``,
    ``weightwatcher.py`` lines 3077-3127, with ``RMT_Util.rescale_eigenvalues`` (lines
    1100-1108) and ``RMT_Util.detX_constraint`` (lines 1116-1163)):

    1. Rescale to unit mean (``Σ r = n``, i.e. ``Tr X = n``):
       ``Wscale = sqrt(n)/sqrt(Σ ev)``, ``r = Wscale² · ev``.
    2. Scan from the top: for ``idx = n-1, n-2, …, 1`` the first ``idx`` with
       ``Π_{j>=idx} r_j < 1`` gives ``detX_num = n - idx`` -- the number of largest
       eigenvalues needed for their product (their ``det``) to fall below 1, i.e. the tail on
       which ``Σ ln r`` (the trace-log) crosses 0.
    3. ``detX_val = r[idx] / Wscale²`` -- the smallest eigenvalue of that tail, back on the σ²
       axis (weightwatcher's ``detX_val``; its ``detX_val_unrescaled`` is ``r[idx]``, despite
       the name the *rescaled* value).

    Kept as in weightwatcher: when no ``idx >= 1`` qualifies (only the smallest eigenvalue
    pulls the product below 1; by AM-GM the product of all ``n`` is ``<= 1``), it reports
    ``detX_num = n`` but ``detX_val`` from ``idx = 1``.
    ``(None, None)`` where weightwatcher reports a placeholder ``(0, ev[0])``: fewer than 2
    eigenvalues, or ``r[0] >= r[-1]`` (a flat spectrum, where the product of all ``n`` is
    exactly 1).

    Cost: ``O(n)`` plus one ``O(n)`` product per uncertain index.  The scan is done in log space
    (suffix sums of ``ln r``); every index whose sum is within the rounding bound of 0, or whose
    product underflows on the way (the factors below 1 multiply to less than ``e^-700``: roughly
    ``n > 3000`` for a random square matrix), is decided by weightwatcher's own expression
    ``np.prod(r[idx:]) < 1.0``.  The count is therefore the one weightwatcher's float arithmetic
    gives, including its float64 underflow, which makes it stop before the exact trace-log
    crossing on large spectra (docs/metrics.md).
    """
    ev = np.asarray(ev, dtype=np.float64)
    n = int(ev.size)
    if n < 2:
        return None, None
    with np.errstate(all="ignore"):
        wscale = np.sqrt(n) / np.sqrt(np.sum(ev))
        w2 = wscale * wscale
        r = w2 * ev
    if not (np.isfinite(w2) and r[0] < r[-1]):
        return None, None
    idx = _detx_index(r)
    if idx is None:  # weightwatcher: loop ran out, num_evals stays n, idx is left at 1
        num, idx = n, 1
    else:
        num = n - idx
    return num, float(r[idx] / w2)


def _detx_index(r: np.ndarray) -> Optional[int]:
    """Largest ``idx`` in ``1..n-1`` with ``np.prod(r[idx:]) < 1.0`` (``None``: there is none).

    ``np.prod`` multiplies ``r[idx:]`` in ascending order: first the factors below 1 (the partial
    product falls to ``e^L``, ``L = Σ ln r_j`` over them), then those from 1 up (it rises
    monotonically to ``e^s``, ``s = Σ_{j>=idx} ln r_j``; ``inf`` past the float64 range).  Where
    ``L > -700`` nothing underflows, so the float product is ``e^s`` to ``n·eps`` (or ``inf`` when
    ``s > 709``): ``s > tol`` means "not below 1" and ``s < -tol`` means "below 1" for certain.
    Every other index (``|s| <= tol``, or ``L <= -700`` where the small factors underflow, possibly
    to 0) is decided by evaluating ``np.prod(r[idx:]) < 1.0`` itself, scanning from the top.
    """
    n = r.size
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.log(r)
    if np.isnan(lr).any():
        return _detx_index_literal(r)
    s = np.cumsum(lr[::-1])[::-1]  # s[i] = Σ_{j>=i} ln r_j; -inf once a zero is included
    m = int(np.searchsorted(r, 1.0))  # first factor >= 1 (r[-1] > 1: the mean is 1)
    low = np.zeros(n)
    with np.errstate(invalid="ignore"):
        low[:m] = s[:m] - s[m]  # L: Σ ln r_j over the factors below 1 in r[idx:]
    fin = lr[np.isfinite(lr)]
    eps = float(np.finfo(np.float64).eps)
    # bound on |float product / exact product - 1| and on the cumsum's rounding, with room to spare
    tol = 1e-12 + 4.0 * n * eps * (1.0 + float(np.abs(fin).sum()))
    safe = low > -_DETX_LOG_SAFE  # False for -inf and NaN
    surely_not = safe & (s > tol)
    surely_below = safe & (s < -tol)
    with np.errstate(all="ignore"):
        for idx in np.flatnonzero(~surely_not[1:])[::-1] + 1:  # descending, the certain "no"s skipped
            if surely_below[idx] or np.prod(r[idx:]) < 1.0:
                return int(idx)
    return None


def _detx_index_literal(r: np.ndarray) -> Optional[int]:
    """weightwatcher's loop itself (``RMT_Util.detX_constraint``), ``O(n · detX_num)``."""
    with np.errstate(all="ignore"):
        for idx in range(r.size - 1, 0, -1):
            if np.prod(r[idx:]) < 1.0:
                return idx
    return None
