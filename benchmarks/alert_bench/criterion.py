"""The bench's own verdict on a run: *healthy* or *collapsing*, without wwmonitor.

Fixed in code before any alert of the bench was looked at (issue 16, part 1).  Inputs, all computed by the bench
itself with ``torch.linalg.svdvals`` (float64) and the family's validation loss:

* ``L0``: the validation loss before training; ``L_t``: after epoch ``t`` (``t = 0 .. E-1``); ``L_end = L_{E-1}``;
* for every *tracked* matrix ``m`` (the family's trained hidden weight matrices: no embeddings, no output head,
  no normalisation parameters; a conv kernel as ``out x (in·kh·kw)``): its stable rank
  ``SR = ||W||_F^2 / σ_max^2`` and its numerical rank ``NR = #{σ_i > 1e-3 · σ_max}``, before training (``_0``)
  and after the last epoch (``_end``);
* the *reference run* ``R``: the same family and seed trained with the family's standard recipe (its reference
  setting); ``L*_R = min_t R.L_t`` its best validation loss and ``G = L0_R − L*_R > 0`` its gain.

Two conditions:

* **val_bad**: ``L_end > L*_R + 0.5 · G`` -- at its end the run keeps less than half the improvement the
  standard recipe achieves (measured from the run's own ``L0``, so ``L_end > L0 − 0.5·G`` when the two start
  alike);
* **structure_lost**: some tracked matrix has ``SR_end < 0.5 · min(SR_0, SR_end(R))`` or
  ``NR_end < 0.5 · min(NR_0, NR_end(R))`` (it lost half of its rank against both its initial state and the
  reference run's final state), or ``||W_end||_F < 0.25 · min(||W_0||_F, ||W_end(R)||_F)`` (it shrank toward
  zero: with normalisation layers a shrinking matrix keeps its rank while the model stops computing anything).

A run is

1. **collapsing** when a tracked weight or the validation loss is not finite at some epoch (*diverged*), or
   when it is ``val_bad`` *and* ``structure_lost``;
2. **failed** when it is ``val_bad`` but kept its structure (it learned badly -- too small or chaotic steps,
   noisy labels -- without a collapse of its matrices): reported in the table, outside the budget, because it
   is neither a healthy run that must stay silent nor a collapse that must be warned about;
3. **healthy** otherwise (including runs whose matrices became low-rank while the validation loss stayed good:
   a low-rank solution is not a collapse).

The reference run is judged by the same rules against itself (so only divergence can make it collapsing); a
reference run that gains nothing (``G <= 0``) makes its family/seed invalid, reported as such.

The *best-validation epoch* is ``argmin_t L_t`` over the finite ``L_t``, the *last epoch* ``E − 1``.  A setting's
name says what it was meant to do; the label says what happened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

#: ``val_bad``: the run keeps less than this fraction of the reference's validation-loss gain
KEEP_GAIN = 0.5
#: ``rank_lost``: a tracked matrix's final rank below this fraction of both its own start and the reference
RANK_FRACTION = 0.5
#: ``structure_lost``: a tracked matrix's final Frobenius norm below this fraction of both its start and the reference
NORM_FRACTION = 0.25
#: numerical rank tolerance relative to σ_max
NR_TOL = 1e-3


def rank_stats(W: Any) -> tuple[float, int, float]:
    """``(stable rank, numerical rank, Frobenius norm)`` of a matrix (a conv kernel is flattened to
    ``out x rest``).  ``(nan, 0, nan)`` when ``W`` is not finite; ``(0.0, 0, 0.0)`` for an all-zero matrix.
    """
    import torch

    t = torch.as_tensor(np.asarray(W, dtype=np.float64))
    t = t.reshape(t.shape[0], -1)
    if not bool(torch.isfinite(t).all()):
        return float("nan"), 0, float("nan")
    s = torch.linalg.svdvals(t)
    smax = float(s[0]) if s.numel() else 0.0
    if smax <= 0.0:
        return 0.0, 0, 0.0
    return float((s**2).sum() / smax**2), int((s > NR_TOL * smax).sum()), float(torch.sqrt((s**2).sum()))


@dataclass
class Verdict:
    """The criterion's label for one run and why."""

    label: str  # "healthy" | "collapsing" | "failed" | "invalid"
    why: str
    best_epoch: int
    last_epoch: int


def _finite(x: Optional[float]) -> bool:
    return x is not None and math.isfinite(x)


def best_epoch(val: Sequence[Optional[float]]) -> int:
    """``argmin`` of the finite validation losses (0 when none is finite)."""
    finite = [(v, i) for i, v in enumerate(val) if _finite(v)]
    return min(finite)[1] if finite else 0


def judge(run: Mapping[str, Any], ref: Mapping[str, Any]) -> Verdict:
    """Label ``run`` against the reference run ``ref`` (same family and seed; may be ``run`` itself).

    Both are the ``meta`` dicts the recorder writes: ``val0`` (float), ``val`` (list per epoch), ``ranks0`` and
    ``ranks`` (matrix -> ``[SR, NR, ||W||_F]``, before training and per epoch: ``ranks[t][m]``), ``diverged`` (bool).
    """
    val = [None if v is None else float(v) for v in run["val"]]
    last = len(val) - 1
    best = best_epoch(val)
    ref_val = [float(v) for v in ref["val"] if _finite(v)]
    if not ref_val or not _finite(ref["val0"]) or min(ref_val) >= float(ref["val0"]):
        return Verdict("invalid", "the reference run gained nothing on the validation loss", best, last)
    if run.get("diverged") or not all(_finite(v) for v in val):
        return Verdict("collapsing", "diverged: non-finite weights or validation loss", best, last)
    l_star = min(ref_val)
    gain = float(ref["val0"]) - l_star
    l_end = val[-1]
    val_bad = l_end is not None and l_end > l_star + KEEP_GAIN * gain
    lost = []
    end, start, ref_end = run["ranks"][-1], run["ranks0"], ref["ranks"][-1]
    for m, (sr, nr, fn) in end.items():
        sr0, nr0, fn0 = start[m]
        srr, nrr, fnr = ref_end.get(m, (sr0, nr0, fn0))
        if not _finite(sr) or sr < RANK_FRACTION * min(sr0, srr):
            lost.append(f"{m}: SR {sr:.2g} vs start {sr0:.2g} / ref {srr:.2g}")
        elif nr < RANK_FRACTION * min(nr0, nrr):
            lost.append(f"{m}: NR {nr} vs start {nr0} / ref {nrr}")
        elif fn < NORM_FRACTION * min(fn0, fnr):
            lost.append(f"{m}: ||W|| {fn:.2g} vs start {fn0:.2g} / ref {fnr:.2g}")
    vtxt = f"val {l_end:.3g} vs ref best {l_star:.3g} + {KEEP_GAIN:g}x gain {gain:.3g}"
    if val_bad and lost:
        more = f" (+{len(lost) - 1} more)" if len(lost) > 1 else ""
        return Verdict("collapsing", f"{vtxt}; structure lost: {lost[0]}{more}", best, last)
    if val_bad:
        return Verdict("failed", f"{vtxt}; structure kept", best, last)
    return Verdict("healthy", "val ok, " + (f"structure lost ({lost[0]})" if lost else "structure kept"), best, last)
