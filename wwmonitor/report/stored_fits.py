"""A layer's stored ESD and the fits the monitor stored with it, as the report draws them.

The report never fits anything: the power law and the Marchenko-Pastur fit
are the analyzer's own results, read back bit for bit from the run store
(:meth:`wwmonitor.store_reader.Run.fits`, schema version 2) and turned back
into :class:`~wwmonitor.powerlaw.PowerLawFit` / :class:`~wwmonitor.mp.MPFit`
objects for the figures.  The KS landscape is the analyzer's sample of the
scan (:data:`wwmonitor.analyze.LANDSCAPE_POINTS` candidates).  A snapshot
written before the store kept fits (schema version 1) has none, and every
figure that would draw one says so.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

import numpy as np

from ..metrics import ANALYSED_STATUSES
from ..mp import MPFit
from ..powerlaw import PowerLawFit
from .pagekit import is_missing

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Run

__all__ = ["LayerFits", "layer_fits", "NOT_STORED"]

#: why a snapshot of an old run store has no fit lines
NOT_STORED = (
    "no fit stored for this snapshot (written by a wwmonitor that did not keep the fits: run store schema "
    "version 1); the report draws only stored fits, it does not re-fit"
)
#: layer statuses for which the monitor made no power-law fit
_NO_PL_FIT = ("too_few_evals", "zero_matrix", "non_finite")


class LayerFits(NamedTuple):
    """A layer's stored ESD at one snapshot and the fits stored with it.

    ``pl`` / ``mp`` are ``None`` when there is no such fit, and ``pl_note`` /
    ``mp_note`` then say why (empty when the fit is there).
    """

    evals: Any
    pl: Any
    mp: Any
    status: str
    pl_note: str = ""
    mp_note: str = ""


def _record(cls: Any, d: dict[str, Any]) -> Any:
    """``cls(**d)`` from the fields ``cls`` has (a record from a newer or older version may differ)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def _powerlaw(d: Optional[dict[str, Any]], status: str, message: str) -> tuple[Optional[PowerLawFit], str]:
    """The stored power-law fit as a :class:`PowerLawFit` (landscape as arrays), or ``None`` and why."""
    if d is None:
        if status in _NO_PL_FIT:
            return None, status
        return None, f"the monitor's fit failed ({message})" if message else "no power-law fit stored"
    land = d.get("ks_landscape")
    d = {**d, "ks_landscape": None if land is None else (np.asarray(land[0], float), np.asarray(land[1], float))}
    return _record(PowerLawFit, d), ""


def _status(run: "Run", layer: str, step: int) -> tuple[str, str]:
    """The layer's status and message at ``step`` (``"ok"``, ``""`` when not recorded)."""
    st = run.layer_status
    row = st[(st["layer"] == layer) & (st["step"] == step)]
    if not len(row):
        return "ok", ""
    msg = row["message"].iloc[0]
    return str(row["status"].iloc[0]), "" if is_missing(msg) else str(msg)


def layer_fits(run: "Run", layer: str, step: Optional[int]) -> LayerFits:
    """ESD (λ axis) of ``layer`` at ``step`` (default: the last snapshot) and the fits stored with it.

    Nothing is re-fitted: ``pl`` and ``mp`` are the analyzer's fits as the run
    store kept them (``None`` with the reason in ``pl_note`` / ``mp_note``
    when the monitor made no such fit, or the store predates stored fits).
    Raises ``KeyError`` when the run has no ESD of ``layer`` at ``step``.
    """
    step = int(step) if step is not None else run.steps[-1]
    ev = np.asarray(run.esd(layer, step), dtype=np.float64)
    status, message = _status(run, layer, step)
    stored = run.fits(layer, step)
    if stored is None:
        old = run.schema_version < 2 or status in ANALYSED_STATUSES  # analysed layers have fits stored since v2
        why = NOT_STORED if old else f"no fit stored ({message or status})"
        return LayerFits(ev, None, None, status, status if status in _NO_PL_FIT else why, why)
    pl, pl_note = _powerlaw(stored.get("powerlaw"), status, message)
    mp_d = stored.get("mp")
    mp = None if mp_d is None else _record(MPFit, mp_d)
    return LayerFits(ev, pl, mp, status, pl_note, "" if mp is not None else "no MP fit stored")
