"""What the sections of a comparison page share (:class:`_Comparison`), and its labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from .pagekit import Problems, is_missing
from .sweep import _value_label

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..store import Run


#: metrics whose mean over layers is drawn and tabulated per run when runs are compared side by side
RUN_METRICS: tuple[str, ...] = ("alpha", "alpha_weighted", "stable_rank", "mp_softrank")
#: most layers drawn in the per-layer curves of runs side by side (the tables list every layer)
MAX_CURVE_LAYERS = 8
#: most bars (run x layer) in the phase timeline figure (the table lists every layer)
MAX_TIMELINE_ROWS = 80


def _run_label(row: Any, param: Optional[str], group: Optional[str]) -> str:
    """A run's column label: its parameter value, and ``·group`` when grouped (its name without a parameter)."""
    if param is None:
        return str(row["run"])
    lab = _value_label(row[param])
    if group:
        lab += f"·{row[group]}"
    return lab


def _when(step: Any, epoch: Any) -> str:
    """``"epoch 3 (step 120)"``, or ``"step 120"`` for a snapshot without an epoch."""
    return f"step {int(step)}" if is_missing(epoch) else f"epoch {int(epoch)} (step {int(step)})"


@dataclass
class _Comparison:
    """Everything the sections of the comparison page share.

    ``runs`` and ``names`` are in page order (sorted by the parameter, or
    as given when the runs are compared side by side, ``param is None``);
    ``history`` is the :func:`phase_history` of the compared layers.
    """

    runs: list["Run"]
    names: list[str]
    df: "pd.DataFrame"
    history: "pd.DataFrame"
    param: Optional[str]
    group: Optional[str]
    layers: list[str]
    esd_layer: Optional[str]
    metrics: Sequence[str]
    out: Path
    dpi: int
    notes_html: str = ""
    forced_by_run: bool = False
    problems: Problems = field(default_factory=Problems)
    #: :func:`ranking_frame` of the runs (empty: no validation metric recorded)
    ranking: Optional["pd.DataFrame"] = None

    @property
    def by_run(self) -> bool:
        """Whether the runs are compared side by side by name (no swept parameter)."""
        return self.param is None

    @property
    def by_name(self) -> dict[str, "Run"]:
        """Each run under its (unique) name."""
        return dict(zip(self.names, self.runs))

    @property
    def numeric_param(self) -> bool:
        """Whether every value of the swept parameter is a number (then it is plotted and correlated)."""
        return self.param is not None and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            for v in self.df[self.param]
        )

    @property
    def x_axis(self) -> str:
        """``"epoch"`` when every snapshot of every run has one, else ``"step"``."""
        return "epoch" if len(self.history) and self.history["epoch"].notna().all() else "step"

    def long_label(self, run: str) -> str:
        """A run as named in figures: ``batch_size=8, seed=0`` in a sweep, else the run's name."""
        if self.by_run:
            return run
        row = self.df[self.df["run"] == run].iloc[0]
        return f"{self.param}={_value_label(row[self.param])}" + (
            f", {self.group}={row[self.group]}" if self.group else ""
        )


#: one panel of the ESD grid: (title, eigenvalues, power-law fit, MP fit, phase)
EsdItem = tuple[str, Any, Any, Any, Optional[str]]
