"""The renderer stage: ESD figures drawn once per snapshot, before any sink sees it.

The dispatcher calls :meth:`Renderer.render` on a result when at least one
of its sinks writes images (``sink.wants_figures``).  Figures are drawn from
what the result already carries -- the λ-axis ESD (``result.esds``) and the
fitted models (``result.fits``: power law and Marchenko-Pastur on the same
axis) -- with :func:`wwmonitor.report.figures.plot_esd`; nothing is fitted
here.  Each figure is rasterised to PNG bytes into ``result.figures``; a
figure that fails is recorded in ``result.figure_errors`` (layer -> reason)
and counted, and only that figure is lost.

Drawing costs ~0.1-0.7 s of CPU per layer (matplotlib), so figures are drawn
on a schedule (:class:`EsdSchedule`, in epochs) and only for sinks that want
them.
"""

from __future__ import annotations

import io
from typing import Any, Optional, Sequence

import numpy as np

from ..metrics import LayerMetrics
from ..records import SnapshotResult

__all__ = ["EsdSchedule", "Renderer", "esd_figure", "figure_to_png"]


class EsdSchedule:
    """When ESD figures are drawn.

    Due at the first snapshot, then whenever ``epoch - last_epoch >= every``
    (epochs); a snapshot without an epoch counts as one epoch (its index among
    the snapshots seen).  ``every = 0`` disables figures.
    """

    def __init__(self, every_n_epochs: int) -> None:
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 0:
            raise ValueError(f"esd_every_n_epochs must be an integer >= 0, got {every_n_epochs!r}")
        self.every = int(every_n_epochs)
        self.last_epoch: Optional[int] = None
        self.seen = 0

    def due(self, result: SnapshotResult) -> bool:
        """Whether ``result`` gets figures (call once per snapshot, in step order)."""
        epoch = result.epoch if result.epoch is not None else self.seen
        self.seen += 1
        if self.every == 0:
            return False
        if self.last_epoch is None or epoch - self.last_epoch >= self.every:
            self.last_epoch = epoch
            return True
        return False


def _fit_objects(fits: dict[str, Any]) -> tuple[Any, Any]:
    """The ``PowerLawFit`` and ``MPFit`` objects the plotting functions take, built from plain dicts."""
    from ..mp import MPFit
    from ..powerlaw import PowerLawFit

    pl = PowerLawFit(**fits["powerlaw"]) if fits.get("powerlaw") else None
    mp = MPFit(**fits["mp"]) if fits.get("mp") else None
    return pl, mp


def esd_figure(lm: LayerMetrics, evals: np.ndarray, fits: dict[str, Any], *, step: int, epoch: Optional[int]) -> Any:
    """The ESD figure of one layer (log-log density, power-law line, MP density), or ``None``
    when the ESD has no positive eigenvalue.  ``fits`` is ``result.fits[layer]`` (may be empty:
    then no fitted line is drawn -- never a fit made here)."""
    from ..report.figures import plot_esd

    ev = np.asarray(evals, dtype=np.float64)
    if ev.size == 0 or not np.isfinite(ev).all() or ev.max() <= 0:
        return None
    pl, mp = _fit_objects(fits)
    when = f"step {step}" + (f", epoch {epoch}" if epoch is not None else "")
    alpha = f", alpha={lm.alpha:.2f}" if lm.alpha is not None else ""
    phase = f", {lm.phase}" if lm.phase else ""
    if lm.status != "ok":
        phase += f", {lm.status.replace('_', ' ')}"
    return plot_esd(
        ev,
        fit=pl if pl is not None and pl.ok else None,
        mp=mp,
        fit_powerlaw_if_missing=False,
        title=f"{lm.name} ({when}{alpha}{phase})",
    )


def figure_to_png(fig: Any, dpi: int = 80) -> bytes:
    """Rasterise a matplotlib figure to PNG bytes with the Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


class Renderer:
    """Draws the due ESD figures of a result into ``result.figures``.

    Parameters
    ----------
    esd_every_n_epochs:
        Figure interval in epochs (first snapshot always; ``0``: never).
    esd_layers:
        Layer names to draw (default: all analysed layers with an ESD).
    dpi:
        Raster resolution of the PNGs.
    """

    def __init__(self, esd_every_n_epochs: int = 5, esd_layers: Optional[Sequence[str]] = None, dpi: int = 80) -> None:
        self.schedule = EsdSchedule(esd_every_n_epochs)
        self.layers = None if esd_layers is None else set(esd_layers)
        self.dpi = int(dpi)

    def render(self, result: SnapshotResult) -> int:
        """Draw the figures of ``result`` if due; returns how many figures failed."""
        if not self.schedule.due(result):
            return 0
        failed = 0
        for lm in result.layers:
            ev = result.esds.get(lm.name)
            if ev is None or (self.layers is not None and lm.name not in self.layers):
                continue
            try:
                fig = esd_figure(lm, ev, result.fits.get(lm.name, {}), step=int(result.step), epoch=result.epoch)
                if fig is None:
                    result.figure_errors[lm.name] = "no positive eigenvalue to draw"
                    continue
                result.figures[lm.name] = figure_to_png(fig, dpi=self.dpi)
            except Exception as e:  # noqa: BLE001 - one figure lost, counted; the row is kept
                result.figure_errors[lm.name] = f"{type(e).__name__}: {e}"
                failed += 1
        return failed
