"""torch helpers shared by the module walk and the peft LoRA rule: shapes, transformers' ``Conv1D``,
parametrized weights, sibling hints for fused projections, and recognising a peft LoRA wrapper."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from .rules import _FUSED_QKV, _OUT_PROJ

_TORCH_CONV_NAMES = {"Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"}


def _torch_shape(t: Any) -> Optional[tuple[int, ...]]:
    try:
        return tuple(int(s) for s in t.shape)
    except Exception:  # noqa: BLE001 - an uninitialised lazy parameter has no shape
        return None


def _is_hf_conv1d(mod: Any) -> bool:
    """transformers' ``Conv1D`` (or a subclass): a Linear with its weight stored ``in x out``."""
    return any(c.__name__ == "Conv1D" and c.__module__.startswith("transformers") for c in type(mod).__mro__)


def _torch_conv_type(mod: Any) -> str:
    for c in type(mod).__mro__:
        if c.__name__ in _TORCH_CONV_NAMES and c.__module__.startswith("torch.nn"):
            return c.__name__
    return "ConvTranspose" if getattr(mod, "transposed", False) else "Conv"


def _torch_weight(mod: Any) -> tuple[Any, list[tuple[str, Any]]]:
    """``(weight, [(name, parameter)] it is made of)``, names relative to ``mod``; a parametrized
    weight (weight norm ...) is computed from its originals."""
    w = getattr(mod, "_parameters", {}).get("weight")
    if w is not None:
        return w, [("weight", w)]
    has_plist = hasattr(mod, "parametrizations")
    plist = getattr(getattr(mod, "parametrizations", None), "weight", None) if has_plist else None
    if plist is not None:
        try:
            return mod.weight, [(f"parametrizations.weight.{n}", p) for n, p in plist.named_parameters()]
        except Exception:  # noqa: BLE001 - a parametrization that cannot be evaluated: its originals are listed
            return None, []
    return None, []


def _fused_hints(mname: str, modules: Mapping[str, Any], hf: bool) -> tuple[Optional[int], bool]:
    """``(q_width, has_q_attn)`` of the Linear-like module at ``mname`` (see :func:`_linear_specs`), read
    from its siblings (``o_proj``/``out_proj``/``Wo``/``proj``, ``q_attn``; LoRA-wrapped ones too)."""
    import torch.nn as nn

    parent_name, _, leaf = mname.rpartition(".")
    parent = modules.get(parent_name) if mname else None
    q_width = None
    if leaf in _FUSED_QKV and parent is not None:
        for sib in _OUT_PROJ:
            o = _unwrap_lora(getattr(parent, sib, None))
            ow = getattr(o, "weight", None) if isinstance(o, nn.Linear) else None
            if ow is not None and _torch_shape(ow) is not None and ow.ndim == 2:
                q_width = int(ow.shape[1])
                break
    has_q = parent is not None and hf and _is_hf_conv1d(_unwrap_lora(getattr(parent, "q_attn", None)))
    return q_width, has_q


def _is_peft_lora(mod: Any) -> bool:
    """A peft LoRA layer (``peft.tuners.lora.LoraLayer``), by structure: a ``base_layer`` submodule,
    ``lora_A`` / ``lora_B`` module dicts and a ``scaling`` dict (read without peft's attribute forwarding)."""
    sub = getattr(mod, "_modules", None)
    if not isinstance(sub, dict) or "base_layer" not in sub:
        return False
    import torch.nn as nn

    return (
        isinstance(sub.get("lora_A"), nn.ModuleDict)
        and isinstance(sub.get("lora_B"), nn.ModuleDict)
        and isinstance(getattr(mod, "__dict__", {}).get("scaling"), dict)
    )


def _unwrap_lora(mod: Any) -> Any:
    """The base layer of a peft LoRA layer (through nested wrappers); anything else unchanged."""
    while mod is not None and _is_peft_lora(mod):
        mod = mod._modules["base_layer"]
    return mod
