"""Shared helpers of the logging sinks: which scalars to log, ESD images, phase tables.

The ESD figure itself is drawn by :func:`wwmonitor.report.figures.plot_esd`
(log-log density of the λ-axis ESD with the power-law fit line and the
Marchenko-Pastur density); here it is only rasterised to PNG / RGB arrays
with matplotlib's Agg canvas (no pyplot state, safe in the worker thread).
"""
from __future__ import annotations

import collections
import io
import math
import threading
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from ..metrics import METRIC_NAMES, LayerMetrics
from ..records import SnapshotResult

__all__ = [
    "DEFAULT_SCALARS",
    "resolve_metrics",
    "layer_scalars",
    "esd_figure",
    "esd_png",
    "figure_to_png",
    "png_to_rgb",
    "phase_markdown",
    "alerts_markdown",
    "sanitize_tag",
    "EsdSchedule",
]

#: metrics logged per layer by default (``metrics="all"`` logs every numeric field)
DEFAULT_SCALARS: tuple[str, ...] = (
    "alpha",
    "alpha_weighted",
    "D",
    "log_norm",
    "log_spectral_norm",
    "log_alpha_norm",
    "stable_rank",
    "entropy",
    "rank_loss",
    "num_pl_spikes",
    "mp_softrank",
    "num_spikes",
)


def resolve_metrics(metrics: Union[str, Sequence[str], None]) -> tuple[str, ...]:
    """``"default"``/``None`` -> :data:`DEFAULT_SCALARS`, ``"all"`` -> every numeric metric, else the names given (checked)."""
    if metrics is None or metrics == "default":
        return DEFAULT_SCALARS
    if metrics == "all":
        return METRIC_NAMES
    if isinstance(metrics, str):
        metrics = [metrics]
    names = tuple(metrics)
    bad = [m for m in names if m not in METRIC_NAMES]
    if bad:
        raise ValueError(f"metrics: unknown metric name(s) {bad}; known: {list(METRIC_NAMES)}")
    return names


def layer_scalars(lm: LayerMetrics, metrics: Iterable[str]) -> dict[str, float]:
    """The finite values among ``metrics`` of one layer (``None``/NaN are left out, never logged as 0)."""
    out: dict[str, float] = {}
    for m in metrics:
        v = getattr(lm, m, None)
        if v is None or isinstance(v, bool):
            continue
        fv = float(v)
        if math.isfinite(fv):
            out[m] = fv
    return out


class EsdSchedule:
    """When a sink draws ESD images (shared by the TensorBoard and W&B sinks).

    Due at the first snapshot, then whenever ``epoch - last_epoch >= every``
    (epochs); a snapshot without an epoch counts as one epoch (its index among
    the snapshots seen).  ``every = 0`` disables images.
    """

    def __init__(self, every_n_epochs: int) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"esd_every_n_epochs must be >= 0, got {every_n_epochs}")
        self.every = int(every_n_epochs)
        self.last_epoch: Optional[int] = None
        self.seen = 0

    def due(self, result: SnapshotResult) -> bool:
        """Whether ``result`` gets ESD images (call once per snapshot, in step order)."""
        epoch = result.epoch if result.epoch is not None else self.seen
        self.seen += 1
        if self.every == 0:
            return False
        if self.last_epoch is None or epoch - self.last_epoch >= self.every:
            self.last_epoch = epoch
            return True
        return False


def sanitize_tag(name: str) -> str:
    """Layer name usable inside a TensorBoard / W&B key (spaces and ``:`` replaced)."""
    return name.replace(" ", "_").replace(":", "_")


def esd_figure(lm: LayerMetrics, evals: np.ndarray, *, step: int, epoch: Optional[int]):
    """The ESD figure of one layer: :func:`wwmonitor.report.figures.plot_esd` with the MP fit.

    ``evals`` is the λ-axis ESD (eigenvalues of ``X = WᵀW/N``).  The power-law
    line is drawn only when the layer has an ``alpha`` (its fit on the λ axis
    has the same alpha: the MLE is scale-free).  Returns a matplotlib
    ``Figure`` or ``None`` when the ESD has no positive eigenvalue.
    """
    from ..mp import fit_mp
    from ..report.figures import plot_esd

    ev = np.asarray(evals, dtype=np.float64)
    if ev.size == 0 or not np.isfinite(ev).all() or ev.max() <= 0:
        return None
    mp = None
    try:
        Q = lm.Q if lm.Q and math.isfinite(lm.Q) else 1.0
        mp = fit_mp(ev, max(Q, 1.0), M=lm.M or None)
    except Exception:  # the figure is still useful without the MP overlay
        mp = None
    when = f"step {step}" + (f", epoch {epoch}" if epoch is not None else "")
    alpha = f", alpha={lm.alpha:.2f}" if lm.alpha is not None else ""
    phase = f", {lm.phase}" if lm.phase else ""
    if lm.status != "ok":
        phase += f", {lm.status.replace('_', ' ')}"
    # the power-law line only where the analysis itself produced a fit (not for layers with too
    # few eigenvalues, whose alpha is deliberately not reported)
    return plot_esd(ev, mp=mp, fit_powerlaw_if_missing=lm.alpha is not None,
                    title=f"{lm.name} ({when}{alpha}{phase})")


_PNG_CACHE: "collections.OrderedDict[tuple, Optional[bytes]]" = collections.OrderedDict()
_PNG_LOCK = threading.Lock()


def esd_png(result: SnapshotResult, lm: LayerMetrics, *, dpi: int = 80) -> Optional[bytes]:
    """PNG of :func:`esd_figure` for one layer of ``result``, or ``None``.

    Rendering costs ~0.1-0.6 s per figure, so the PNG is cached (last 64)
    per (snapshot object, step, layer, dpi): the TensorBoard and W&B sinks of
    one monitor, which see the same result object, draw each ESD once.
    """
    ev = result.esds.get(lm.name)
    if ev is None:
        return None
    key = (id(result), int(result.step), lm.name, int(dpi))
    with _PNG_LOCK:
        if key in _PNG_CACHE:
            return _PNG_CACHE[key]
    fig = esd_figure(lm, ev, step=int(result.step), epoch=result.epoch)
    png = figure_to_png(fig, dpi=dpi) if fig is not None else None
    with _PNG_LOCK:
        _PNG_CACHE[key] = png
        while len(_PNG_CACHE) > 64:
            _PNG_CACHE.popitem(last=False)
    return png


def figure_to_png(fig, dpi: int = 80) -> bytes:
    """Rasterise a matplotlib figure to PNG bytes with the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def figure_to_rgb(fig, dpi: int = 80) -> np.ndarray:
    """Rasterise a matplotlib figure to an ``(H, W, 3)`` uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def png_to_rgb(png: bytes) -> np.ndarray:
    """Decode PNG bytes to an ``(H, W, 3)`` uint8 array (matplotlib's reader)."""
    import matplotlib.image as mpimg

    arr = mpimg.imread(io.BytesIO(png), format="png")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return arr[..., :3]


def phase_markdown(result: SnapshotResult) -> str:
    """Markdown table ``layer | phase | alpha | reason`` of one snapshot."""
    rows = ["| layer | phase | alpha | reason |", "|---|---|---|---|"]
    for lm in result.layers:
        a = f"{lm.alpha:.2f}" if lm.alpha is not None else "-"
        reason = (lm.phase_reason or lm.message or lm.status).replace("|", "/")
        rows.append(f"| {lm.name} | {lm.phase or lm.status} | {a} | {reason} |")
    return "\n".join(rows)


def alerts_markdown(result: SnapshotResult) -> str:
    """Markdown list of the snapshot's alerts (empty string when there are none)."""
    return "\n".join(
        f"- **{a.severity.upper()}** `{a.rule}`" + (f" ({a.layer})" if a.layer else "") + f": {a.message}"
        for a in result.alerts
    )
