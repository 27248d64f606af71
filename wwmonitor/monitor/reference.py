"""Distance from a reference: per-layer delta metrics of ``W − W_ref``.

``Monitor(base_model=...)`` and ``analyze_model(base_model=...)`` compare
every analysed matrix ``W`` with the matrix of the same name in a reference
``W_ref`` -- as weightwatcher's ``base_model`` option does for a finished
model (it analyses ``W_model − W_base`` layer by layer, biases ignored) --
and fill the ``delta_*`` fields of its :class:`~wwmonitor.metrics.LayerMetrics`:

* ``delta_rel_norm = ‖W − W_ref‖_F / ‖W_ref‖_F`` (``None`` when ``W_ref`` is
  all zeros, e.g. a LoRA update at initialisation);
* ``delta_alpha``, ``delta_stable_rank``, ``delta_log_spectral_norm``,
  ``delta_log_norm``: :func:`wwmonitor.analyze_matrix` of ``D = W − W_ref``
  (same options, layer type and conv scale as ``W``; no ESD kept, no phase);
  ``None`` where that analysis has none -- below ``min_evals`` there is no
  alpha, an exactly zero ``D`` (the reference step itself) has no spectrum --
  and ``delta_status`` / ``delta_message`` say why.  A LoRA update
  matrix (``<layer>.lora_update``, analysed in a compact form) gets none:
  ``delta_status="not_comparable"``.

The reference (:class:`ReferenceWeights`) is either

* ``"first"``: each matrix as it was at the first snapshot in which it
  appears (copied by the analyzer thread from that snapshot's host copy, so
  nothing extra runs on the training thread; a resumed run starts again from
  its first snapshot in this process), or
* a torch module, Keras model, mapping of name -> array (``state_dict``) or a
  checkpoint path: its matrices are extracted like the monitored model's
  (same ``conv`` and ``lora`` rules) and copied to host memory once, when the
  monitor is created.  Names are matched exactly, else by dropping whole
  leading components of the monitored name (a peft model's
  ``base_model.model.transformer.h.0.attn.c_attn.q`` finds
  ``transformer.h.0.attn.c_attn.q`` of the plain model it was made from).

Memory: one extra host copy of the monitored weights (float32 for weights
held in 16-bit floats, else their own dtype), kept for the whole run;
reference matrices no monitored matrix uses are dropped at the first
snapshot.  Cost: one more ESD per matrix and snapshot, on the analyzer thread
(the delta is computed there, never on the training thread).
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import replace
from typing import Any, Optional, Sequence

import numpy as np

from ..analyze import DEFAULT_OPTIONS, AnalysisOptions, analyze_matrix
from ..frameworks import is_torch_tensor
from ..layers import LORA_UPDATE_SUFFIX, check_lora, extract_matrices
from ..metrics import LayerMetrics
from .snapshot import as_numpy

__all__ = ["ReferenceWeights", "FIRST", "host_copy"]

#: ``base_model="first"``: the weights at the first snapshot
FIRST = "first"


def host_copy(t: Any) -> Optional[np.ndarray]:
    """A host NumPy copy of a real floating-point matrix (torch tensor on any device, NumPy, JAX,
    a lazily mapped checkpoint tensor, ...), at least float32; ``None`` when it is not one."""
    if is_torch_tensor(t):
        import torch

        t = t.detach()
        if t.device.type == "meta" or not t.is_floating_point():
            return None
        host = torch.empty(tuple(t.shape), dtype=t.dtype, device="cpu")
        host.copy_(t)  # one copy from any device, dense
        a = as_numpy(host)
        if is_torch_tensor(a):
            return None
    else:
        a = np.array(t, copy=True)
    if not np.issubdtype(a.dtype, np.floating):
        return None
    return a.astype(np.float32) if a.dtype.itemsize < 4 else a


def _sum_sq(a: np.ndarray) -> float:
    """``Σ a²`` accumulated in float64."""
    flat = a.reshape(-1)
    return float(np.einsum("i,i->", flat, flat, dtype=np.float64))


class ReferenceWeights:
    """The reference weights ``W_ref`` of the delta metrics, one host copy per monitored matrix.

    ``source``: ``"first"`` (capture each matrix at its first :meth:`apply`) or a model / mapping /
    path (see the module docstring); ``conv`` and ``lora`` select its matrices as for the monitored
    model (:func:`wwmonitor.layers.extract_matrices`).
    """

    def __init__(self, source: Any = FIRST, *, conv: str = "pool", lora: str = "effective") -> None:
        check_lora(lora)
        self.first = isinstance(source, str) and source == FIRST
        self._ref: dict[str, Optional[np.ndarray]] = {}  # None: a first matrix that is not floating-point
        self._ref_sq: dict[str, float] = {}
        self._alias: dict[str, Optional[str]] = {}
        self._bound = False
        self._lock = threading.Lock()
        if self.first:
            return
        if source is None:
            raise ValueError("base_model: expected 'first', a model, a mapping of name -> array or a path, got None")
        if isinstance(source, (str, os.PathLike)):
            from ..checkpoint import open_weights

            source = open_weights(source)
        try:
            specs = extract_matrices(source, conv=conv, lora=lora)
        except TypeError as e:
            raise TypeError(f"base_model: {e}") from e
        for spec in specs:
            a = host_copy(spec.tensor)
            if a is not None:
                self._ref[spec.name] = a
        if not self._ref:
            raise ValueError(f"base_model: no floating-point weight matrices found in {type(source).__name__}")

    @property
    def names(self) -> list[str]:
        """Names of the reference matrices held."""
        with self._lock:
            return list(self._ref)

    @property
    def nbytes(self) -> int:
        """Host memory held by the reference copies."""
        with self._lock:
            return sum(int(a.nbytes) for a in self._ref.values() if a is not None)

    def _resolve(self, name: str) -> Optional[str]:
        """The reference key of monitored matrix ``name``: itself, else the longest suffix of whole
        components that is a reference name (``None``: none)."""
        if name in self._alias:
            return self._alias[name]
        key: Optional[str] = name if name in self._ref else None
        if key is None and not self.first:
            parts = name.split(".")
            for i in range(1, len(parts)):
                cand = ".".join(parts[i:])
                if cand in self._ref:
                    key = cand
                    break
        if key is not None or not self.first:
            self._alias[name] = key
        return key

    def bind(self, names: Sequence[str]) -> None:
        """Resolve the monitored matrices ``names`` and, the first time, drop the reference matrices
        none of them uses (the reference is held once, for what is monitored)."""
        with self._lock:
            if self._bound or self.first:
                return
            used = {self._resolve(n) for n in names}
            for k in [k for k in self._ref if k not in used]:
                del self._ref[k]
            self._ref_sq = {k: v for k, v in self._ref_sq.items() if k in self._ref}
            self._bound = True

    def apply(
        self,
        name: str,
        layer_type: str,
        scale: float,
        W: Any,
        lm: LayerMetrics,
        *,
        options: AnalysisOptions = DEFAULT_OPTIONS,
        device: Optional[str] = "cpu",
    ) -> None:
        """Fill ``lm``'s ``delta_*`` fields for matrix ``name`` whose current value is ``W`` (a host
        array); never raises (a failure is ``delta_status="error"`` with the reason)."""
        try:
            self._apply(name, layer_type, scale, W, lm, options, device)
        except Exception as e:  # noqa: BLE001 - the layer's own metrics are kept
            lm.delta_status = "error"
            lm.delta_message = f"layer {name!r}: delta from the reference failed: {type(e).__name__}: {e}"

    def _apply(
        self,
        name: str,
        layer_type: str,
        scale: float,
        W: Any,
        lm: LayerMetrics,
        options: AnalysisOptions,
        device: Optional[str],
    ) -> None:
        if name.endswith(LORA_UPDATE_SUFFIX):
            lm.delta_status = "not_comparable"
            lm.delta_message = (
                f"layer {name!r}: a LoRA update is analysed in a compact form with its non-zero singular values, "
                "whose entries are not comparable between steps; the effective weight's delta is W − W_ref"
            )
            return
        A = as_numpy(W)
        if is_torch_tensor(A):  # a device tensor or a dtype NumPy cannot view
            A = host_copy(A)
        A = np.asarray(A)
        with self._lock:
            key = self._resolve(name)
            if key is None and self.first:
                self._ref[name] = host_copy(A)
                key = self._alias[name] = name
            ref = None if key is None else self._ref.get(key)
            if key is not None and ref is not None and key not in self._ref_sq:
                self._ref_sq[key] = _sum_sq(ref)
            ref_sq = self._ref_sq.get(key, 0.0) if key is not None else 0.0
        if ref is None:
            lm.delta_status = "no_reference"
            lm.delta_message = f"layer {name!r}: base_model has no matrix of this name"
            return
        if tuple(ref.shape) != tuple(A.shape):
            lm.delta_status = "shape_mismatch"
            lm.delta_message = (
                f"layer {name!r}: shape {tuple(A.shape)} differs from the reference's {tuple(ref.shape)}; no delta"
            )
            return
        D = np.subtract(A, ref, dtype=np.result_type(A.dtype, ref.dtype, np.float32))
        d_sq = _sum_sq(D)
        rel = math.sqrt(d_sq / ref_sq) if ref_sq > 0 and math.isfinite(ref_sq) else None
        lm.delta_rel_norm = rel if rel is not None and math.isfinite(rel) else None
        if d_sq == 0.0:
            lm.delta_status = "zero_matrix"
            lm.delta_message = f"layer {name!r}: W equals the reference (no delta spectrum)"
            return
        opts = replace(options, keep_esd=False, phases=False, localization=False)
        dm = analyze_matrix(D, name, layer_type=layer_type, scale=scale, options=opts, device=device)
        lm.delta_alpha = dm.alpha
        lm.delta_stable_rank = dm.stable_rank
        lm.delta_log_spectral_norm = dm.log_spectral_norm
        lm.delta_log_norm = dm.log_norm
        lm.delta_status = dm.status
        if dm.message:
            lm.delta_message = dm.message
