"""Unchanged weights are free: a weight that has not changed since its last analysis is neither copied nor
re-analysed; its earlier result is carried forward, marked ``status="carried"``.

Which weights can be carried: a matrix whose tensor is a view of one torch parameter of the model
(:attr:`~wwmonitor.layers.MatrixSpec.param` names it, and it shares the parameter's storage) in a float
dtype (fp16, bf16, fp32, fp64).  Computed matrices -- a peft LoRA layer's effective weight
``W0 + s·B A``, its update, parametrizations -- and non-torch inputs (``matrices=`` mappings, Keras) are
copied and analysed at every snapshot.  So under LoRA the frozen layers outside the adapters (embeddings,
heads, layers without an adapter) and ``lora="all"``'s ``.base`` matrices are carried; an effective
weight is re-analysed whenever it is snapshotted.  DDP / FSDP2 monitors do not carry.

The fingerprint of a weight, :class:`Token`: the parameter object (``id``), the view's ``data_ptr``,
the parameter's version counter (``p._version``) and a checksum, the sum of the element bit patterns
read as integers of the same width (int16 for fp16/bf16, int32 for fp32, int64 for fp64), exact modulo
``2**64``.

The decision (snapshot thread, before the copy): a weight is carried when the analysis worker holds an
analysed (``status="ok"``) result of the same parameter, pointer and version whose checksum equals the
checksum of the weight now.  Otherwise it is copied.  The checksum runs only on the weights whose version
did not move -- exactly those whose copy it saves -- on their own device (one device-to-host sync per
device and snapshot); the checksum of a copied weight is taken by the worker from its host copy, off the
training thread.  The comparison is with the last *analysed* state: a weight whose previous snapshot is
still queued is copied (nothing to carry yet), and a coalesced or skipped snapshot leaves nothing behind.

Which check catches which change:

* an optimiser step, ``p.add_(...)``, ``p.copy_(...)`` under ``torch.no_grad()``, writes through
  ``p.detach()`` or a view, ``load_state_dict``: the **version counter** (shared by ``p``, its views and
  ``detach()``);
* ``p.data.mul_(...)`` / ``p.data.copy_(...)`` (``.data`` has a version counter of its own), writes through
  a NumPy array sharing the buffer (``p.detach().numpy()[...] = ...``), C extensions: the **checksum**;
* ``p.data = new_tensor``, ``model.to(...)``, a replaced module: the **pointer / parameter** (and the
  monitor re-walks the model).

Blind spot: a change that bypasses the version counter *and* leaves the sum of the bit patterns unchanged
modulo ``2**64`` -- e.g. two elements or two rows swapped in place through ``.data``.  Pass
``carry_unchanged=False`` when the training code permutes weights that way.

A carried layer's record is the earlier one with ``status="carried"`` and ``message="unchanged since step
N"`` (N: the step its metrics were computed at), its ESD and fits are that step's; the result's summary
counts them (``carried_layers``, logged as ``ww/carried_layers``).  Alert rules skip carried layers: the
same values are no new evidence (:meth:`wwmonitor.alerts.AlertRules.evaluate`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..frameworks import is_torch_module, is_torch_tensor
from ..layers import MatrixSpec
from ..metrics import CARRIED, Fits, LayerMetrics
from .snapshot import BufferSet, copy_matrices

__all__ = [
    "Token",
    "Carried",
    "CarryState",
    "CarryPlan",
    "plan_copies",
    "SnapshotCopier",
    "carry_forward",
    "host_checksum",
    "torch_checksum",
    "ParamIndex",
]

#: bit-pattern integer type of each float dtype (by name, so that torch is imported lazily)
_INT_OF = {"float16": "int16", "bfloat16": "int16", "float32": "int32", "float64": "int64"}


@dataclass(frozen=True)
class Token:
    """Fingerprint of one weight at one snapshot (see the module docstring); ``checksum`` ``None``: not taken."""

    param: int
    ptr: int
    version: int
    checksum: Optional[int] = None

    def same_place(self, other: "Token") -> bool:
        """Same parameter, pointer and version counter."""
        return (self.param, self.ptr, self.version) == (other.param, other.ptr, other.version)


@dataclass(frozen=True)
class Carried:
    """Stands in for the host copy in ``Snapshot.entries``: the weight was not copied, its earlier result is used."""

    token: Token
    shape: tuple[int, ...]


@dataclass
class _Kept:
    token: Token
    step: int
    lm: LayerMetrics
    esd: Any
    fits: Optional[Fits]


class CarryState:
    """The last analysed result of each carryable weight, with its token (written by the worker, read by the
    snapshot thread; thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, _Kept] = {}
        #: the model's parameters by name (used by the snapshot thread only)
        self.params = ParamIndex()

    def token(self, name: str) -> Optional[Token]:
        with self._lock:
            k = self._kept.get(name)
            return None if k is None else k.token

    def get(self, name: str) -> Optional[_Kept]:
        with self._lock:
            return self._kept.get(name)

    def keep(self, name: str, token: Token, step: int, lm: LayerMetrics, esd: Any, fits: Optional[Fits]) -> None:
        """Remember ``lm`` (a copy; its ESD/fits given apart) as the result of ``name`` at ``step``."""
        with self._lock:
            self._kept[name] = _Kept(
                token, int(step), replace(lm, extra=dict(lm.extra), esd=None, fits=None), esd, fits
            )

    def forget(self, name: str) -> None:
        with self._lock:
            self._kept.pop(name, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)


@dataclass
class CarryPlan:
    """What one snapshot copies (``copy``, with the copy-plan ``key``) and carries; ``tokens``: the copied
    weights' fingerprints (checksum taken later by the worker, from the host copy)."""

    copy: list[MatrixSpec]
    key: Any
    tokens: dict[str, Token]
    carried: dict[str, Carried]

    def merge(
        self, specs: Sequence[MatrixSpec], copied: list[tuple[str, str, float, Any]]
    ) -> list[tuple[str, str, float, Any]]:
        """The snapshot's entries in the specs' order: the copies, and a :class:`Carried` for each carried weight."""
        if not self.carried:
            return copied
        by_name = {e[0]: e for e in copied}
        out = []
        for sp in specs:
            c = self.carried.get(sp.name)
            out.append((sp.name, sp.type, float(sp.scale), c) if c is not None else by_name[sp.name])
        return out


def _int_dtype(t: Any) -> Any:
    import torch

    name = _INT_OF.get(str(t.dtype).replace("torch.", ""))
    return None if name is None else getattr(torch, name)


def _checksums(tensors: list[Any]) -> list[int]:
    """The bit-pattern checksum of each torch tensor: host tensors in NumPy (:func:`host_checksum`, about 7x
    faster than torch's integer sum on one thread), device tensors on their device, one transfer per device."""
    import torch

    out: list[int] = [0] * len(tensors)
    by_dev: dict[Any, list[int]] = {}
    for i, t in enumerate(tensors):
        c = host_checksum(t)
        if c is None:
            by_dev.setdefault(t.device, []).append(i)
        else:
            out[i] = c
    with torch.no_grad():
        for idx in by_dev.values():
            sums = torch.stack([torch_checksum(tensors[i]) for i in idx])
            for i, v in zip(idx, sums.tolist()):
                out[i] = int(v)
    return out


def torch_checksum(t: Any) -> Any:
    """The checksum of a float torch tensor as a 0-d int64 tensor on its device (torch kernels: the route of
    weights on an accelerator; wraps modulo ``2**64`` like NumPy, so it equals :func:`host_checksum`)."""
    import torch

    return t.view(_int_dtype(t)).sum(dtype=torch.int64)


def host_checksum(W: Any) -> Optional[int]:
    """The checksum of a CPU torch tensor (a weight on the host, or a host copy), in NumPy: no torch kernel,
    so none on the worker thread either; ``None`` for anything else."""
    if not is_torch_tensor(W) or W.device.type != "cpu":
        return None
    it = _int_dtype(W)
    if it is None:
        return None
    return int(np.sum(W.view(it).numpy(), dtype=np.int64))


class ParamIndex:
    """``state-dict key -> parameter`` of the last model seen, rebuilt when the model or the spec key changes."""

    def __init__(self) -> None:
        self._for: Any = None
        self.params: dict[str, Any] = {}

    def of(self, model: Any, key: Any) -> dict[str, Any]:
        ident = (id(model), key)
        if key is None or self._for != ident:
            self.params = dict(model.named_parameters(remove_duplicate=False))
            self._for = ident
        return self.params


def _token_of(sp: MatrixSpec, params: dict[str, Any]) -> Optional[Token]:
    """The fingerprint (no checksum) of a spec that is a float view of one parameter; ``None`` otherwise."""
    t, p = sp.tensor, params.get(sp.param)
    if p is None or not is_torch_tensor(t) or _int_dtype(t) is None or t.device != p.device:
        return None
    if t.untyped_storage().data_ptr() != p.untyped_storage().data_ptr():  # computed (LoRA effective, ...)
        return None
    return Token(id(p), int(t.data_ptr()), int(p._version))


def plan_copies(state: CarryState, model: Any, specs: list[MatrixSpec], key: Any) -> CarryPlan:
    """Split ``specs`` into the weights to copy and those carried (see the module docstring).

    ``key``: the specs' cache key (:meth:`~wwmonitor.monitor.selection.Selection.specs_for`); the returned
    plan's key also names the carried set, so each copy plan is built once per distinct split.
    """
    if not is_torch_module(model):
        return CarryPlan(list(specs), key, {}, {})
    params = state.params.of(model, key)
    tokens: dict[str, Token] = {}
    candidates: list[tuple[MatrixSpec, Token]] = []
    for sp in specs:
        tok = _token_of(sp, params)
        if tok is None:
            continue
        prev = state.token(sp.name)
        if prev is not None and prev.checksum is not None and prev.same_place(tok):
            candidates.append((sp, tok))
        else:
            tokens[sp.name] = tok
    carried: dict[str, Carried] = {}
    if candidates:
        sums = _checksums([sp.tensor for sp, _ in candidates])
        for (sp, tok), c in zip(candidates, sums):
            prev = state.token(sp.name)
            if prev is not None and prev.checksum == c:
                carried[sp.name] = Carried(replace(tok, checksum=c), sp.shape)
            else:  # changed behind the version counter (.data, a shared NumPy buffer): copied
                tokens[sp.name] = tok
    copy = [sp for sp in specs if sp.name not in carried]
    plan_key = None if key is None else (key, tuple(sorted(carried)))
    return CarryPlan(copy, plan_key, tokens, carried)


class SnapshotCopier:
    """The copy step of :meth:`Monitor.snapshot <wwmonitor.monitor.runtime.Monitor.snapshot>`: the changed
    weights only (``carry``, single process), every weight, or this rank's share under DDP / FSDP2
    (``strategy.counted_capture``; FSDP2: the exchange, a collective).  ``state``: the worker's
    :class:`CarryState` (``None``: carrying is off)."""

    def __init__(self, carry: bool, strategy: Any = None, faults: Any = None) -> None:
        self.strategy, self.faults = strategy, faults
        self.state: Optional[CarryState] = CarryState() if carry and strategy is None else None

    def copy(
        self, model: Any, specs: list[MatrixSpec], buffers: BufferSet, key: Any
    ) -> tuple[list[tuple[str, str, float, Any]], Optional[Callable[[], None]], Any, dict[str, Token]]:
        """``(entries, ready, copy-plan key, tokens)`` of one snapshot; the unchanged weights' entries
        hold a :class:`Carried`."""
        if self.strategy is not None:
            return (*self.strategy.counted_capture(specs, buffers, key, self.faults), key, {})
        if self.state is None:
            return (*copy_matrices(specs, buffers, key), key, {})
        plan = plan_copies(self.state, model, specs, key)
        entries, ready = copy_matrices(plan.copy, buffers, plan.key)
        return plan.merge(specs, entries), ready, plan.key, plan.tokens


def carry_forward(state: CarryState, name: str, typ: str, c: Carried) -> tuple[LayerMetrics, Any, Optional[Fits]]:
    """The carried layer's record (marked, with the step it was computed at), ESD and fits.

    When the earlier result is no longer the one the snapshot matched (it was replaced in between -- only
    possible when a weight's values change and change back behind the version counter), the layer is an
    ``"error"`` saying so: never silently another step's values.
    """
    k = state.get(name)
    if k is None or k.token != c.token:
        msg = f"layer {name!r}: not analysed: marked unchanged, but its earlier result was replaced meanwhile"
        return LayerMetrics(name=name, type=typ, shape=c.shape, status="error", message=msg), None, None
    note = f"unchanged since step {k.step}" + (f"; {k.lm.message}" if k.lm.message else "")
    return replace(k.lm, status=CARRIED, message=note, extra=dict(k.lm.extra)), k.esd, k.fits
