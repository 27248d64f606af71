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
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

import numpy as np

__all__ = ["LayerMetrics", "norm_metrics", "matrix_rank", "spectral_entropy", "METRIC_NAMES"]


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
    set to ``None``.
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
    # --- warnings / status -------------------------------------------------
    warning: str = ""
    status: str = "ok"
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, flat: bool = True) -> dict[str, Any]:
        """Plain dict; with ``flat`` the ``extra`` entries are merged in."""
        d = asdict(self)
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


_NON_METRIC = {"name", "type", "shape", "N", "M", "phase", "phase_reason", "warning", "status", "message"}

#: numeric metric names of :class:`LayerMetrics` (excluding identity fields)
METRIC_NAMES: tuple[str, ...] = tuple(
    f.name for f in fields(LayerMetrics) if f.name not in _NON_METRIC | {"extra"}
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
