"""What the sections of one run report share (:class:`_Report`): the run, the selection, the output."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .pagekit import Problems, is_missing
from .stored_fits import LayerFits, layer_fits

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Run


# --------------------------------------------------------------------------
# the run report
# --------------------------------------------------------------------------

#: metrics plotted against epoch (or step) in the report
REPORT_METRICS: tuple[str, ...] = ("alpha", "mp_softrank", "stable_rank", "num_spikes", "log_spectral_norm", "D")


@dataclass
class _Report:
    """Everything the sections of one run report share: the run, the selection, the output, the problems."""

    run: "Run"
    out: Path
    layers: list[str]
    steps: list[int]
    gallery_steps: list[int]
    metrics: Sequence[str]
    dpi: int
    problems: Problems = field(default_factory=Problems)
    epoch_of: dict[int, Optional[int]] = field(default_factory=dict)
    _fits: dict[tuple[str, int], LayerFits] = field(default_factory=dict)

    @property
    def last(self) -> int:
        """The last analysed step."""
        return self.steps[-1]

    @property
    def x_axis(self) -> str:
        """``"epoch"`` when every snapshot has one, else ``"step"``."""
        return "epoch" if all(e is not None for e in self.epoch_of.values()) else "step"

    def when(self, step: int) -> str:
        """``"epoch 3 (step 120)"``, or ``"step 120"`` for a snapshot without an epoch."""
        e = self.epoch_of.get(step)
        return f"epoch {e} (step {step})" if e is not None else f"step {step}"

    def fits(self, layer: str, step: int) -> LayerFits:
        """:func:`layer_fits`, computed once per (layer, step)."""
        key = (layer, int(step))
        if key not in self._fits:
            self._fits[key] = layer_fits(self.run, layer, int(step))
        return self._fits[key]


def _epochs_by_step(run: "Run") -> dict[int, Optional[int]]:
    """Each snapshot's epoch (``None`` where the snapshot was taken without one)."""
    return {int(s): (None if is_missing(e) else int(e)) for s, e in zip(run.snapshots["step"], run.snapshots["epoch"])}
