"""An independent implementation of TempBalance's and AlphaDecay's per-layer assignments, for the agreement test.

Written from the published descriptions, not from wwmonitor: TempBalance (Zhou et al., NeurIPS 2023; public
repository YefanZhou/TempBalance, ``tempbalance.py`` and ``main_tb.py``) and AlphaDecay (He et al., 2025,
arXiv 2506.14562; public repository hed-ucas/AlphaDecay, ``WeightDecayUnbalance.py`` and ``torchrun_main.py``).
Both references share one spectral estimator and one layer selection; they differ in what the factors scale
(the learning rate, or the weight decay) and in their default ranges.  What this module reproduces:

* **Layers.**  Every ``nn.Conv2d`` and ``nn.Linear`` module (subclasses included), in ``named_modules`` order.
* **Eigenvalues.**  A linear weight ``W`` (out x in): the squared singular values of ``W``.  A conv weight
  (out, in, kh, kw): flattened to (out, in, kh*kw), scaled by ``sqrt(conv_norm)`` (``conv_norm = 0.5``), and
  read as kh*kw matrices of shape out x in (one per kernel position); the squared singular values of all of them
  are pooled into one ascending list.  The references use the weight's own dtype (TempBalance) or float32
  (AlphaDecay) and ``torch.linalg.svdvals``; here float64 (so two float64 implementations can agree to 1e-9).
* **Alpha** (``pl_fitting="median"``): with the n eigenvalues ascending, ``i = int(n / xmin_pos)``
  (``xmin_pos = 2``), ``m = n - i`` and ``alpha = 1 + m / (sum(log lam[i:]) - m * log lam[i])`` -- the
  continuous power-law MLE with xmin fixed at the median eigenvalue.  No eigenvalue is filtered
  (``filter_zeros=False``).
* **Which layers are tuned.**  The first and the last analysed layer are dropped (they keep the base value),
  then every layer with fewer than ``eigs_thresh = 50`` eigenvalues is dropped too.  The range of the
  assignment (min/max alpha, the sums of sqrt/log2, the ranks) is taken over the tuned layers only.
* **Assignment** (``base`` = the current scheduler value, ``lo``/``hi`` the min/max ratios):
  ``linear`` (``tb_linear_map``): ``lo*base + (alpha - min) / (max - min) * (hi - lo) * base`` (all alphas
  equal: ``hi*base``, as numpy's ``interp`` gives); ``sqrt``: ``sqrt(alpha) / sum(sqrt(alpha)) * n * base``;
  ``log2``: ``log2(alpha) / sum(log2(alpha)) * n * base``; ``step``: the layer whose alpha has rank r
  (0 = smallest) gets ``base * (lo + (hi - lo) * r / n)``.
  (AlphaDecay's ``tb_sqrt``/``tb_log2`` add 1e-8 inside the sum; its default map is the linear one.)
* **Followers.**  A layer's own parameters (weight and bias) take its value; a ``BatchNorm2d`` whose name,
  with ``bn`` replaced by ``conv``, is a tuned layer's name takes that layer's value (TempBalance's default
  ``batchnorm_type="name"``; AlphaDecay does the same).  LayerNorm is not a follower by default
  (``layernorm=False``).  Every other parameter takes the base value.
* **Defaults.**  TempBalance: learning-rate ratios 0.5 .. 1.5, re-assigned once per epoch from the epoch's
  end weights.  AlphaDecay: weight-decay ratios 0.666 .. 3 (``wd_min_ratio`` / ``wd_max_ratio`` argparse
  defaults; the README's example passes 0.6666 and 3), larger alpha -> larger decay
  (``alpha_positively_with_WD``), re-assigned every 500 optimizer steps (``unbalancedWD_every``) from the
  weights before that step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

ASSIGNMENTS = ("linear", "sqrt", "log2", "step")
#: the references' defaults
CONV_NORM = 0.5
XMIN_POS = 2
EIGS_THRESH = 50
TB_RANGE = (0.5, 1.5)
AD_RANGE = (0.666, 3.0)


@dataclass(frozen=True)
class RefLayer:
    """One analysed module: its ``named_modules`` name, pooled eigenvalues (ascending, float64) and alpha."""

    name: str
    eigs: np.ndarray
    alpha: float


def eigenvalues(module: nn.Module, conv_norm: float = CONV_NORM) -> np.ndarray:
    """The pooled squared singular values of a Linear or Conv2d weight, ascending, float64."""
    w = module.weight.detach().to(torch.float64)  # type: ignore[operator]
    if isinstance(module, nn.Conv2d):
        out_c, in_c = w.shape[0], w.shape[1]
        # one out x in matrix per kernel position, each scaled by sqrt(conv_norm)
        w = w.reshape(out_c, in_c, -1).permute(2, 0, 1) * math.sqrt(conv_norm)
    sv = torch.linalg.svdvals(w).reshape(-1)
    return np.sort((sv * sv).numpy())


def median_alpha(eigs: np.ndarray, xmin_pos: float = XMIN_POS) -> float:
    """Power-law MLE exponent with xmin at index ``int(n / xmin_pos)`` of the ascending eigenvalues."""
    lam = np.sort(np.asarray(eigs, dtype=np.float64))
    i = int(len(lam) / xmin_pos)
    tail = np.log(lam[i:])
    m = float(len(lam) - i)
    return float(1.0 + m / (tail.sum() - m * tail[0]))


def analysed_layers(model: nn.Module, conv_norm: float = CONV_NORM, xmin_pos: float = XMIN_POS) -> list[RefLayer]:
    """Every Linear/Conv2d module of ``model`` in ``named_modules`` order, with its eigenvalues and alpha."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            ev = eigenvalues(m, conv_norm)
            out.append(RefLayer(name, ev, median_alpha(ev, xmin_pos)))
    return out


def tuned(
    layers: list[RefLayer], *, remove_first: bool = True, remove_last: bool = True, eigs_thresh: int = EIGS_THRESH
) -> list[RefLayer]:
    """The layers that get their own value: first/last dropped, then those with < ``eigs_thresh`` eigenvalues."""
    kept = list(layers)
    if remove_first:
        kept = kept[1:]
    if remove_last:
        kept = kept[:-1]
    return [ly for ly in kept if len(ly.eigs) >= eigs_thresh]


def _linear(a: np.ndarray, base: float, lo: float, hi: float) -> np.ndarray:
    amin, amax = float(a.min()), float(a.max())
    if amax == amin:
        return np.full(len(a), hi * base)
    return (lo + (a - amin) / (amax - amin) * (hi - lo)) * base


def _sqrt(a: np.ndarray, base: float, lo: float, hi: float) -> np.ndarray:
    r = np.sqrt(a)
    return r / r.sum() * len(a) * base


def _log2(a: np.ndarray, base: float, lo: float, hi: float) -> np.ndarray:
    r = np.log2(a)
    return r / r.sum() * len(a) * base


def _step(a: np.ndarray, base: float, lo: float, hi: float) -> np.ndarray:
    n = len(a)
    out = np.empty(n)
    for rank, layer in enumerate(np.argsort(a)):
        out[layer] = base * (lo + (hi - lo) * rank / n)
    return out


_ASSIGN: dict[str, Callable[[np.ndarray, float, float, float], np.ndarray]] = {
    "linear": _linear,
    "sqrt": _sqrt,
    "log2": _log2,
    "step": _step,
}


def assign(alphas: np.ndarray, func: str, base: float, lo: float, hi: float) -> np.ndarray:
    """The values (not factors) the reference gives the tuned layers, in their order."""
    if func not in _ASSIGN:
        raise ValueError(f"assignment {func!r}: expected one of {ASSIGNMENTS}")
    a = np.asarray(alphas, dtype=np.float64)
    if len(a) == 0:
        return a
    return _ASSIGN[func](a, float(base), float(lo), float(hi))


def layer_values(
    model: nn.Module,
    base: float,
    *,
    func: str = "linear",
    value_range: tuple[float, float] = TB_RANGE,
    remove_first: bool = True,
    remove_last: bool = True,
    eigs_thresh: int = EIGS_THRESH,
    layers: Optional[list[RefLayer]] = None,
) -> dict[str, float]:
    """Module name -> assigned value, for every tuned layer and its BatchNorm2d follower (others: ``base``)."""
    layers = analysed_layers(model) if layers is None else layers
    chosen = tuned(layers, remove_first=remove_first, remove_last=remove_last, eigs_thresh=eigs_thresh)
    vals = assign(np.array([ly.alpha for ly in chosen]), func, base, *value_range)
    out = {ly.name: float(v) for ly, v in zip(chosen, vals)}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and name.replace("bn", "conv") in out:
            out[name] = out[name.replace("bn", "conv")]
    return out


def parameter_values(model: nn.Module, per_module: dict[str, float], base: float) -> dict[str, float]:
    """Parameter name -> value: a module's direct parameters take the module's value, the rest ``base``."""
    out = {}
    for mname, m in model.named_modules():
        for pname, _ in m.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            out[full] = per_module.get(mname, base)
    return out


def tempbalance_rates(model: nn.Module, base_lr: float, func: str = "linear", **kw) -> dict[str, float]:
    """TempBalance: module name -> learning rate (tuned layers and followers)."""
    return layer_values(model, base_lr, func=func, value_range=kw.pop("lr_range", TB_RANGE), **kw)


def alphadecay_decays(model: nn.Module, base_wd: float, **kw) -> dict[str, float]:
    """AlphaDecay: module name -> weight decay (linear map, larger alpha -> larger decay)."""
    return layer_values(model, base_wd, func="linear", value_range=kw.pop("wd_range", AD_RANGE), **kw)
