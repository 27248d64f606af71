"""Which parameters a controller sets per layer: the monitor's matrices -> layers (modules) -> parameters.

A *layer* here is the module that owns one or more monitored matrices (a Linear, a Conv, an Embedding,
an ``nn.MultiheadAttention`` whose ``in_proj_weight`` the monitor splits into q, k, v ...); all its own
parameters (weight and bias) get the layer's value.  Matrices cut from one module form one layer, whose
alpha is the mean of theirs (they share one parameter, so they cannot have different rates).
A normalisation layer follows the layer it normalises: the analysed layer registered right before it
(``norms="batch"``: BatchNorm / SyncBatchNorm only, the reference's default; ``"all"``: also LayerNorm,
GroupNorm, RMSNorm ...; ``"none"``).  torch is imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

__all__ = ["NORMS", "Layer", "build_layers", "unwrap_model"]

#: the ``norms=`` choices
NORMS = ("batch", "all", "none")


@dataclass
class Layer:
    """One controlled layer: its module name, the monitor's matrices in it, its parameters (name, tensor)."""

    name: str
    matrices: list[str] = field(default_factory=list)
    params: list[tuple[str, Any]] = field(default_factory=list)


def unwrap_model(model: Any) -> Any:
    """The module inside a ``DistributedDataParallel`` (or any wrapper exposing ``.module`` and named like it)."""
    inner = getattr(model, "module", None)
    if inner is not None and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
        return inner
    return model


def _owner(matrix: str, modules: dict[str, Any]) -> str:
    """The module name owning a monitored matrix (``"enc.attn.q"`` -> ``"enc.attn"``, ``"conv[3]"`` -> ``"conv"``)."""
    cand = matrix
    while True:
        if cand in modules:
            return cand
        if cand == "model" and "" in modules:  # the monitor names an unnamed root module "model"
            return ""
        cut = max(cand.rfind("."), cand.rfind("["))
        if cut <= 0:
            raise ValueError(
                f"control: the monitor's layer {matrix!r} is not a module of the model given to bind() "
                "(bind the model the monitor watches)"
            )
        cand = cand[:cut]


def _is_norm(mod: Any, norms: str) -> bool:
    import torch.nn as nn

    if norms == "none":
        return False
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return True
    if norms == "batch":
        return False
    known = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
    if isinstance(mod, known) or getattr(nn, "RMSNorm", None) and isinstance(mod, nn.RMSNorm):
        return True
    return type(mod).__name__.endswith("Norm")  # e.g. transformers' LlamaRMSNorm


def _own_params(prefix: str, mod: Any) -> list[tuple[str, Any]]:
    return [(f"{prefix}.{n}" if prefix else n, p) for n, p in mod.named_parameters(recurse=False)]


def build_layers(model: Any, matrices: Sequence[str], *, norms: str = "batch") -> list[Layer]:
    """The controlled layers of ``model`` for the monitor's ``matrices`` (in the monitor's order).

    Raises ``ValueError`` naming the matrix when it belongs to no module of ``model``, and naming the
    parameter when one parameter belongs to two layers (tied weights): it cannot get two rates.
    """
    if norms not in NORMS:
        raise ValueError(f"norms must be one of {NORMS}, got {norms!r}")
    modules = dict(model.named_modules())
    layers: dict[str, Layer] = {}
    for m in matrices:
        owner = _owner(m, modules)
        layers.setdefault(owner, Layer(owner)).matrices.append(m)
    last: Optional[str] = None
    for name, mod in model.named_modules():
        if name in layers:
            layers[name].params.extend(_own_params(name, mod))
            last = name
        elif _is_norm(mod, norms):
            if last is not None:
                layers[last].params.extend(_own_params(name, mod))
        elif any(True for _ in mod.parameters(recurse=False)):
            last = None  # another weighted module in between: a later norm normalises that one
    _check_shared(list(layers.values()))
    return list(layers.values())


def _check_shared(layers: list[Layer]) -> None:
    seen: dict[int, tuple[str, str]] = {}
    for layer in layers:
        for pname, p in layer.params:
            other = seen.get(id(p))
            if other is not None and other[1] != layer.name:
                raise ValueError(
                    f"control: parameter {pname!r} belongs to layer {layer.name!r} and to layer {other[1]!r} "
                    f"(as {other[0]!r}, tied weights): one tensor cannot get two per-layer values; exclude one "
                    "of the layers from the monitor (Monitor(exclude=[...])) or untie them"
                )
            seen[id(p)] = (pname, layer.name)
