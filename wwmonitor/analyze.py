"""Analysis of one matrix: ESD -> power-law fit -> MP fit -> norms -> phase -> warnings.

This module is pure (arrays in, :class:`~wwmonitor.metrics.LayerMetrics`
out) and framework-free; :mod:`wwmonitor.model` walks models and calls
:func:`analyze_matrix` per matrix.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .fit.median import median_xmin_alpha
from .frameworks import is_torch_tensor
from .metrics import Fits, LayerMetrics, detx_constraint, norm_metrics
from .powerlaw import EVALS_THRESH, fit_powerlaw
from .spectral import (
    _dtype_problem,
    check_device,
    esd_batched_scaled,
    input_problem,
    squared_singular_values_scaled,
    to_analysis_tensor,
    to_numpy,
    uses_torch_route,
)

__all__ = ["AnalysisOptions", "analyze_matrix", "analyze_spec", "analyze_evals", "DEFAULT_MIN_EVALS"]

#: Below this many eigenvalues a power-law alpha is meaningless (see docs/metrics.md).
DEFAULT_MIN_EVALS = 50

#: weightwatcher's conventions for the warning column
ALPHA_OVER_TRAINED = 2.0
ALPHA_UNDER_TRAINED = 6.0


@dataclass(frozen=True)
class AnalysisOptions:
    """Options shared by :func:`analyze_matrix` and :func:`wwmonitor.analyze_model`.

    Attributes
    ----------
    min_evals:
        Matrices with fewer eigenvalues (``M`` times the number of pooled
        slices) are reported with ``status="too_few_evals"`` and no fit.
    max_evals:
        Matrices with more eigenvalues are skipped (``None``: no limit).
    mp_fit:
        Fit the Marchenko-Pastur bulk (cheap; on by default).
    phases:
        Classify the 5+1 phase (needs ``mp_fit``).
    fix_fingers:
        Clip up to this many outlier top eigenvalues before the power-law fit
        (``0``: off); see :func:`wwmonitor.powerlaw.fit_powerlaw`.
    xmax:
        ``None`` or ``"auto"``-free float upper cut on the σ² axis.
    localization:
        Also compute eigenvector localization metrics (needs eigenvectors; slower).
    keep_esd:
        Attach the λ-axis ESD and the fitted models to the result (``LayerMetrics.esd`` /
        ``LayerMetrics.fits``), used by the monitor.
    low_memory:
        Use the in-place eigen route (Gram by BLAS ``dsyrk`` blocks, ``dsyevd``
        overwriting it; see :func:`wwmonitor.spectral.squared_singular_values`):
        ~2.5x the matrix's float32 size of working memory instead of ~6x.  The
        monitor's worker uses it; ``analyze_model`` does not, because SciPy's
        BLAS serialises concurrent calls from its thread pool.
    """

    min_evals: int = DEFAULT_MIN_EVALS
    max_evals: Optional[int] = None
    mp_fit: bool = True
    phases: bool = True
    fix_fingers: int = 0
    xmax: Optional[float] = None
    localization: bool = False
    keep_esd: bool = False
    low_memory: bool = False


DEFAULT_OPTIONS = AnalysisOptions()


def analyze_matrix(  # long-function: the public entry: argument checks, then one call per analysis step
    W: Any,
    name: str = "W",
    *,
    layer_type: str = "",
    scale: float = 1.0,
    options: AnalysisOptions = DEFAULT_OPTIONS,
    device: Optional[str] = None,
    **kwargs: Any,
) -> LayerMetrics:
    """Analyse one weight matrix ``W`` (2-D), or a stack of equally shaped
    slices ``(K, a, b)`` whose ESDs are pooled (convolution kernels).

    ``scale`` multiplies the σ²-axis eigenvalues only (weightwatcher's
    ``conv2d_norm`` uses 0.5 for Conv2d; see :class:`wwmonitor.layers.MatrixSpec`);
    the λ-axis ESD, MP fit and phase are computed from the unscaled matrix.

    Keyword arguments override fields of ``options``
    (``analyze_matrix(W, min_evals=10)``).

    ``device`` says where the ESD is computed: ``None``/``"auto"`` -- torch
    tensors on an accelerator on their device, everything else on the host
    (NumPy); ``"cpu"`` -- always on the host; ``"cuda"``/``"cuda:N"`` -- on that
    CUDA device (the matrix is moved there); ``"torch"`` -- torch's routine on
    the tensor's own device, CPU included (the device code path, testable on
    CPU).  Every route computes the same metrics (eigenvalues agree to
    ``~1e-14·λ_max``, the same SVD recheck for rank-deficient matrices).

    Never raises on bad *values*: non-finite or all-zero matrices return a
    :class:`LayerMetrics` whose ``status`` says what is wrong.  A wrong *shape*
    (1-D, empty) raises ``ValueError`` naming ``name``; input that is not a
    dense real matrix (complex, sparse, quantized, masked, object/bool dtype)
    raises ``TypeError`` naming ``name`` -- nothing is converted silently.

    Extreme scales: a matrix whose entries are so small (``|W| < 2^-400``,
    e.g. denormal ``1e-310``) or so large that ``WᵀW`` under- or overflows
    float64 is analysed as ``W / 2^e`` (``2^e`` just above ``max |W|``, an exact
    rescaling); the scale-free metrics (alpha, D, ranks, entropy, MP soft rank,
    spikes, phase) come from it, the log norms get ``2e·log10(2)`` added, and
    the scale-dependent values (``lambda_max``, ``xmin``, ``xmax``, the MP
    edges) are multiplied back where float64 can hold them and are ``None``
    otherwise, with ``status`` ``"underflow"``/``"overflow"`` naming them.
    weightwatcher's ``1e-5`` eigenvalue floor of the power-law fit is applied
    on the true scale, so such tiny matrices get no alpha (as at any scale
    whose eigenvalues are all below ``1e-5``).  Such a matrix is never
    reported as zero or rank-collapsed; only a matrix of exact zeros is.
    """
    if kwargs:
        bad = set(kwargs) - set(AnalysisOptions.__dataclass_fields__)
        if bad:
            raise TypeError(f"analyze_matrix: unknown option(s) {sorted(bad)}")
        options = AnalysisOptions(**{**options.__dict__, **kwargs})
    # Accelerator tensors stay on their device; CPU tensors become zero-copy
    # NumPy views (no torch kernels here: torch's OpenMP pool spins after each
    # kernel and was measured to slow the BLAS threads that follow).
    label = f"layer {name!r}"
    device = check_device(device)
    problem = input_problem(W, "stack" if getattr(W, "ndim", 2) == 3 else "matrix")
    if problem:
        raise TypeError(f"{label}: {problem}")
    on_torch = uses_torch_route(W, device)
    A = to_analysis_tensor(W, device, name=label) if on_torch else to_numpy(W, name=label)
    route = "torch" if on_torch else "cpu"  # A is already where it is analysed
    problem = _dtype_problem(A.dtype, "stack" if A.ndim == 3 else "matrix")
    if problem:  # e.g. a nested list of objects, only visible after conversion
        raise TypeError(f"{label}: {problem}")
    shape = tuple(int(s) for s in A.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"layer {name!r}: expected a 2-D weight matrix (or a stack of slices), got shape {shape}")
    if min(shape) == 0:
        raise ValueError(f"layer {name!r}: weight matrix has an empty dimension, shape {shape}")
    a, b = shape[-2:]
    N, M = max(a, b), min(a, b)
    K = shape[0] if len(shape) == 3 else 1
    lm = LayerMetrics(name=name, type=layer_type, shape=shape, N=N, M=M, Q=N / M, num_evals=K * M)

    if refused_before_spectrum(lm, _count_nonfinite(A), options):
        return lm

    if len(shape) == 3:
        ev, e2 = esd_batched_scaled(A, name=name, rescale_large=True, device=route)
        ev_sq = np.sort(ev.ravel())
    else:
        ev_sq, e2 = squared_singular_values_scaled(
            A, name=name, low_memory=options.low_memory, rescale_large=True, device=route
        )
    W_loc = None
    if options.localization and len(shape) == 2:
        W_loc = A if e2 == 0 else np.ldexp(np.asarray(to_numpy(A), dtype=np.float64), -(e2 // 2))
    tail = _entry_tail(A) if options.phases and options.mp_fit else None
    return analyze_evals(ev_sq * scale, lm, options=options, scale=scale, W=W_loc, exponent2=e2, entry_tail=tail)


def _entry_tail(A: Any) -> Optional[float]:
    """Tail index of the entries of ``A`` (NumPy or torch, on its own device) for phase rule 4c
    (:func:`wwmonitor.phases.entry_tail_index`); scale free."""
    from .phases import entry_tail_count, entry_tail_index, hill_tail_index

    if isinstance(A, np.ndarray):
        return entry_tail_index(A)
    import torch

    flat = A.detach().abs().flatten()
    k = entry_tail_count(int(flat.numel()))
    if k == 0:
        return None
    top = torch.topk(flat if flat.dtype in (torch.float32, torch.float64) else flat.float(), k + 1).values
    return hill_tail_index(top.double().cpu().numpy())


def analyze_spec(spec: Any, options: AnalysisOptions = DEFAULT_OPTIONS, device: Optional[str] = None) -> LayerMetrics:
    """Analyse a :class:`wwmonitor.layers.MatrixSpec` (name, type, tensor, scale) on ``device``
    (see :func:`analyze_matrix`)."""
    return analyze_matrix(
        spec.tensor, spec.name, layer_type=spec.type, scale=spec.scale, options=options, device=device
    )


def _count_nonfinite(A: Any) -> int:
    if is_torch_tensor(A):
        import torch

        return int((~torch.isfinite(A.detach())).sum().item())
    return int(np.size(A) - np.count_nonzero(np.isfinite(A)))


def refused_before_spectrum(lm: LayerMetrics, n_nonfinite: int, options: AnalysisOptions) -> bool:
    """The checks every analysis route makes before computing a spectrum, in this order: non-finite weights, then
    more eigenvalues (``lm.num_evals``) than ``options.max_evals``.  Sets ``lm``'s status, message and warning and
    returns True when the layer is not analysed."""
    name = lm.name
    if n_nonfinite:
        lm.status = "non_finite"
        lm.message = f"layer {name!r}: {n_nonfinite} non-finite weight(s) (NaN/Inf); no spectrum computed"
        lm.warning = "non-finite"
        return True
    if options.max_evals is not None and lm.num_evals > options.max_evals:
        lm.status = "too_many_evals"
        lm.message = f"layer {name!r}: {lm.num_evals} eigenvalues > max_evals={options.max_evals}; skipped"
        return True
    return False


def analyze_evals(  # long-function: the steps of one ESD in order, sharing locals
    ev_sq: np.ndarray,
    lm: LayerMetrics,
    *,
    options: AnalysisOptions = DEFAULT_OPTIONS,
    scale: float = 1.0,
    W: Optional[np.ndarray] = None,
    exponent2: int = 0,
    entry_tail: Optional[float] = None,
) -> LayerMetrics:
    """Fill ``lm`` from eigenvalues ``ev_sq`` of ``WᵀW`` (σ² axis, ascending,
    already multiplied by ``scale``).

    ``lm`` must carry ``name``, ``N``, ``M`` and ``num_evals``.
    ``exponent2``: the true eigenvalues are ``ev_sq · 2**exponent2`` (matrices
    at extreme scale, see :func:`analyze_matrix`); ``W`` is then the rescaled
    matrix.  ``entry_tail``: the tail index of the matrix entries for the
    phase rules (``None``: not known, e.g. sharded matrices).
    """
    name, N = lm.name, lm.N
    ev_sq = np.sort(np.asarray(ev_sq, dtype=np.float64))
    lam = ev_sq / (N * scale)  # λ axis, X = WᵀW/N of the unscaled matrix
    notes: list[str] = []
    if options.keep_esd:
        if not exponent2:
            lm.esd = lam.astype(np.float32)
        else:
            kept = _esd_float32(lam, exponent2)
            if kept is not None:
                lm.esd = kept
            else:
                notes.append("ESD not kept: its eigenvalues are outside the float32 range of the stored ESDs")
    if ev_sq.size == 0 or ev_sq[-1] <= 0:
        lm.status = "zero_matrix"
        lm.message = f"layer {name!r}: all weights are zero (no spectrum)"
        lm.warning = "zero-matrix"
        lm.matrix_rank, lm.rank_loss = 0, lm.M
        lm.phase, lm.phase_reason = "rank-collapse", "all eigenvalues are zero"
        return lm

    lm.__dict__.update(norm_metrics(ev_sq, (N, lm.M), None))
    a_med = median_xmin_alpha(ev_sq)  # TempBalance's alpha (wwmonitor.control), scale-free, float64
    if math.isfinite(a_med):
        lm.extra["alpha_median"] = a_med

    too_few = ev_sq.size < options.min_evals
    pl = None
    if too_few:
        lm.status = "too_few_evals"
        lm.message = (
            f"layer {name!r}: {ev_sq.size} eigenvalues < min_evals={options.min_evals}; "
            "no power-law fit (alpha would be meaningless)"
        )
        lm.warning = "too-few-evals"
    else:
        pl = _fit(ev_sq, options, exponent2)
        if pl.ok:
            lm.alpha, lm.xmin, lm.xmax, lm.D = pl.alpha, pl.xmin, pl.xmax, pl.D
            lm.sigma, lm.num_pl_spikes = pl.sigma, pl.num_pl_spikes
            lm.__dict__.update(norm_metrics(ev_sq, (N, lm.M), pl.alpha))
            if pl.alpha < ALPHA_OVER_TRAINED:
                lm.warning = "over-trained"
            elif pl.alpha > ALPHA_UNDER_TRAINED:
                lm.warning = "under-trained"
        else:
            lm.status = "fit_failed"
            lm.message = f"layer {name!r}: power-law fit failed: {pl.message}"
            lm.warning = "fit-failed"

    # SETOL's ERG (det X = 1) condition, as weightwatcher 0.7.7 analyze(detX=True) computes it;
    # scale-free count, detX_val on the σ² axis (restored with the other scaled fields below)
    lm.detX_num, lm.detX_val = detx_constraint(ev_sq)
    if lm.detX_num is not None and lm.num_pl_spikes is not None:
        lm.ERG_gap = lm.detX_num - lm.num_pl_spikes

    mp = None
    if options.mp_fit:
        from .mp import fit_mp

        mp = fit_mp(lam, lm.Q, M=lm.M)
        lm.mp_sigma2 = mp.sigma2
        lm.lambda_plus, lm.lambda_minus = mp.lambda_plus, mp.lambda_minus
        lm.tw_margin, lm.mp_softrank = mp.tw_margin, mp.mp_softrank
        lm.num_spikes, lm.mp_ks = mp.num_spikes, mp.ks
    if options.phases and mp is not None:
        from .phases import classify_phase

        # The phase rules are scale-free in alpha / n_tail; pass the λ-axis fit.
        ph = classify_phase(lam, N=N, M=lm.M, mp=mp, pl=pl, rank_loss=lm.rank_loss, entry_tail=entry_tail)
        lm.phase, lm.phase_reason = ph.phase, ph.reason
    if options.keep_esd and not exponent2:
        lm.fits = _lambda_axis_fits(pl, mp, N * scale, _fitted_sample(ev_sq, options, pl))
    if options.localization and W is not None:
        from .localization import localization_metrics

        lm.extra.update(localization_metrics(W, xmin=lm.xmin))
    if exponent2:
        _restore_scale(lm, exponent2, notes)
    dropped = []
    for k, v in list(lm.__dict__.items()):
        if isinstance(v, float) and not math.isfinite(v):
            setattr(lm, k, None)
            dropped.append(k)
    if dropped:
        notes.append(f"not finite, reported as None: {', '.join(dropped)}")
    if notes:
        lm.message = "; ".join([lm.message, *notes]) if lm.message else f"layer {name!r}: " + "; ".join(notes)
    return lm


def _lambda_axis_fits(pl: Any, mp: Any, per_lambda: float, x: Optional[np.ndarray]) -> Fits:
    """The fitted models on the λ axis of the kept ESD, as plain dicts (figures and reports draw them).

    The power-law fit is made on the σ² axis, ``λ = σ²/(N·scale)``: ``xmin``
    and ``xmax`` are divided by ``N·scale``; ``alpha``, ``D``, ``sigma`` and the
    counts are scale-free (the MLE and the KS distance are invariant under a
    common rescaling).  The MP fit is already on the λ axis.  ``x``: the sorted
    σ² eigenvalues the power-law fit used (see :func:`_fitted_sample`); the KS
    landscape is sampled from it (:func:`_sampled_landscape`).
    """
    out: Fits = {}
    if pl is not None and pl.ok:
        d = {k: v for k, v in dataclasses.asdict(pl).items() if k != "ks_landscape"}
        d["xmin"], d["xmax"] = pl.xmin / per_lambda, pl.xmax / per_lambda
        land = _sampled_landscape(x, pl) if x is not None and pl.method == "standard" else None
        d["ks_landscape"] = None if land is None else [(land[0] / per_lambda).tolist(), land[1].tolist()]
        out["powerlaw"] = d
    if mp is not None:
        out["mp"] = dataclasses.asdict(mp)
    return out


#: candidates of the stored KS landscape (log-spaced over the candidate xmins, plus the chosen one)
LANDSCAPE_POINTS = 64


def _fitted_sample(ev_sq: np.ndarray, options: AnalysisOptions, pl: Any) -> Optional[np.ndarray]:
    """The sorted σ² eigenvalues the power-law fit scanned: above the 1e-5 floor, below ``xmax``,
    without the clipped fingers (``None`` without a fit)."""
    if pl is None or not pl.ok:
        return None
    x = np.sort(ev_sq[ev_sq > EVALS_THRESH])
    if options.xmax is not None:
        x = x[x <= float(options.xmax)]
    return x[: x.size - int(pl.n_clipped)] if pl.n_clipped else x


def _sampled_landscape(x: np.ndarray, pl: Any) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """KS distance ``D(xmin)`` of the standard scan at up to :data:`LANDSCAPE_POINTS` candidates.

    The candidates are ``x[i]`` for indices log-spaced over ``0..n-2`` (the
    scan's candidates) plus the chosen ``xmin``; each ``D`` is the scan's own
    formula (:func:`wwmonitor.fit._common._ww_alpha_D`, ``O(n)`` per candidate),
    so the curve's minimum is the fit.  The report draws this instead of
    re-running the full ``O(n²)`` scan on the stored ESD.
    """
    from .fit._common import _ww_alpha_D

    n = x.size
    if n < 3:
        return None
    idx = np.unique(np.concatenate([np.geomspace(1, n - 1, LANDSCAPE_POINTS).astype(np.int64) - 1, [0]]))
    chosen = int(np.searchsorted(x, pl.xmin, side="left"))  # xmin is x[i] exactly
    idx = np.unique(np.concatenate([idx[idx <= n - 2], [min(chosen, n - 2)]]))
    logx = np.log(x)
    Ds = np.array([_ww_alpha_D(x, logx, int(i))[1] for i in idx])
    return x[idx].copy(), Ds


def _fit(ev_sq: np.ndarray, options: AnalysisOptions, exponent2: int = 0) -> Any:
    if not exponent2:
        return fit_powerlaw(ev_sq, xmax=options.xmax, fix_fingers=options.fix_fingers)
    # rescaled matrix: apply weightwatcher's eigenvalue floor and the xmax cut on the true scale
    with np.errstate(over="ignore", under="ignore"):
        floor = float(np.ldexp(EVALS_THRESH, -exponent2))
        xmax = None if options.xmax is None else float(np.ldexp(options.xmax, -exponent2))
    return fit_powerlaw(ev_sq[ev_sq > floor], xmax=xmax, fix_fingers=options.fix_fingers)


#: σ²/λ-axis values that scale with ``W²`` (multiplied back by ``2**exponent2``)
_SCALED_FIELDS = ("lambda_max", "xmin", "xmax", "mp_sigma2", "lambda_plus", "lambda_minus", "tw_margin", "detX_val")


def _restore_scale(lm: LayerMetrics, exponent2: int, notes: list[str]) -> None:
    """Put the scale ``2**exponent2`` of a rescaled matrix back: in log space for the
    log norms, by ``ldexp`` where representable for the values, ``None`` (and an
    ``"underflow"``/``"overflow"`` status naming them) where not."""
    shift = exponent2 * math.log10(2.0)
    for f in ("log_norm", "log_spectral_norm"):
        v = getattr(lm, f)
        if v is not None:
            setattr(lm, f, v + shift)
    if lm.alpha is not None:
        for f in ("alpha_weighted", "log_alpha_norm"):
            v = getattr(lm, f)
            if v is not None:
                setattr(lm, f, v + lm.alpha * shift)
    under, over = [], []
    tiny = np.finfo(np.float64).tiny
    for f in _SCALED_FIELDS:
        v = getattr(lm, f)
        if v is None or v == 0 or not math.isfinite(v):
            continue
        with np.errstate(over="ignore", under="ignore"):
            value = float(np.ldexp(v, exponent2))
        r: Optional[float] = value
        if not math.isfinite(value):
            over.append(f)
            r = None
        elif r is not None and abs(r) < tiny:
            under.append(f)
            r = None
        setattr(lm, f, r)
    if under or over:
        kind = "overflow" if over else "underflow"
        lost = ", ".join(over + under)
        notes.insert(
            0,
            (
                f"weights at extreme scale (max |W| ~ 2^{exponent2 // 2} ~ 1e{exponent2 // 2 * math.log10(2.0):.0f}): "
                f"{lost} cannot be represented in float64 "
                f"({kind}) and are None; log norms are computed in log space, scale-free metrics from W / max|W|"
            ),
        )
        lm.status = kind
        if not lm.warning:
            lm.warning = kind


def _esd_float32(lam: np.ndarray, exponent2: int) -> Optional[np.ndarray]:
    """The λ-axis ESD ``lam · 2**exponent2`` as float32, or ``None`` when its largest
    eigenvalue is not a normal float32 (the stored ESDs are float32)."""
    with np.errstate(over="ignore", under="ignore"):
        true = np.ldexp(lam, exponent2)
    top = float(true.max()) if true.size else 0.0
    f32 = np.finfo(np.float32)
    if not (float(f32.tiny) <= top <= float(f32.max)):
        return None
    return true.astype(np.float32)
