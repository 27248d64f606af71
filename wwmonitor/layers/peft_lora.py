"""peft LoRA layers: the effective weight ``W0 + Σ scaling · B A`` (as peft merges it), optionally the update
``Σ scaling · B A`` in a compact form of the same non-zero singular values, and the base weight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from .rules import _linear_specs
from .spec import LORA_UPDATE_SUFFIX, MatrixSpec
from .torch_common import _fused_hints, _is_hf_conv1d, _torch_shape, _unwrap_lora


def _lora_factors(mod: Any, embedding: bool) -> Optional[dict[str, tuple[Any, Any]]]:
    """``{adapter: (A, B)}`` -- the LoRA factors as peft multiplies them, ``B @ A`` -- or ``None``
    when one is not a 2-D floating-point tensor."""
    out: dict[str, tuple[Any, Any]] = {}
    if embedding:
        pa: Any = getattr(mod, "lora_embedding_A", None)
        pb: Any = getattr(mod, "lora_embedding_B", None)
        names = list(pa.keys()) if pa is not None else []
        pairs = [(n, pa[n], pb[n] if pb is not None and n in pb else None) for n in names]
    else:
        la, lb = mod._modules["lora_A"], mod._modules["lora_B"]
        pairs = [
            (n, getattr(la[n], "weight", None), getattr(lb[n], "weight", None) if n in lb else None) for n in la.keys()
        ]
    for n, A, B in pairs:
        for x in (A, B):
            if x is None or _torch_shape(x) is None or x.ndim != 2 or not x.is_floating_point():
                return None
        out[n] = (A, B)
    return out


@dataclass
class _Adapters:
    """Which adapters of a LoRA layer count: ``contrib`` are in its effective weight (the merged ones when any
    are merged, else the active ones; none when adapters are disabled)."""

    factors: dict[str, tuple[Any, Any]]
    scaling: Mapping[str, float]
    merged: list[str]
    active: list[str]
    disabled: bool
    contrib: list[str]
    fifo: bool  # factors multiply to the weight's storage orientation transposed (peft's fan_in_fan_out)


def _adapters(mod: Any, embedding: bool) -> Optional[_Adapters]:
    """The layer's adapters, or ``None`` when its effective weight is not ``W0 + Σ s·BA`` (DoRA and other
    variants, factors that are not 2-D float tensors, an adapter without a scaling)."""
    factors = _lora_factors(mod, embedding)
    if factors is None:
        return None
    scaling = mod.__dict__.get("scaling", {})
    variants = set(getattr(mod, "lora_variant", None) or {})
    variants |= {a for a, on in (getattr(mod, "use_dora", None) or {}).items() if on}
    merged = [a for a in getattr(mod, "merged_adapters", []) if a in factors]
    active_names = getattr(mod, "active_adapters", None) or []
    active = [a for a in ([active_names] if isinstance(active_names, str) else active_names) if a in factors]
    disabled = bool(getattr(mod, "disable_adapters", False))
    contrib = [] if disabled else merged if merged else active
    if (variants & (set(contrib) | set(merged))) or any(a not in scaling for a in set(contrib) | set(merged)):
        return None
    fifo = embedding or bool(getattr(mod, "fan_in_fan_out", False))
    return _Adapters(factors, scaling, merged, active, disabled, contrib, fifo)


def _delta(ad: _Adapters, a: str) -> Any:
    """Adapter ``a``'s update in the weight's storage orientation, as peft's ``get_delta_weight`` computes it."""
    import torch

    A, B = ad.factors[a]
    cast = B.device.type == "cpu" and B.dtype in (torch.float16, torch.bfloat16)
    d = B.float() @ A.float() if cast else B @ A
    d = (d.T if ad.fifo else d) * ad.scaling[a]
    return d.to(B.dtype) if cast else d


def _effective_and_base(w: Any, ad: _Adapters) -> tuple[Any, Any]:
    """``(effective weight, W0)`` in storage orientation; the effective weight is always a new tensor (the
    monitor never caches a computed weight)."""
    import torch

    with torch.no_grad():
        W = w.detach()
        base_w = W
        if ad.merged:  # W0: the base weight without the merged adapters (peft's unmerge, in reverse order)
            base_w = W.clone()
            for a in reversed(ad.merged):
                base_w.sub_(_delta(ad, a).to(W.dtype))
        if ad.disabled:
            return (base_w.clone() if base_w is W else base_w), base_w
        eff = W.clone()
        if not ad.merged:
            for a in ad.contrib:
                eff.add_(_delta(ad, a))
    return eff, base_w


def _held(prefix: str, ad: _Adapters) -> dict[int, str]:
    """Why the factors of adapters outside the effective weight are not analysed, by ``id``."""
    held: dict[int, str] = {}
    for a, pair in ad.factors.items():
        if a in ad.contrib:
            continue
        why = (
            f"LoRA adapters of {prefix} are disabled: not part of its effective weight"
            if ad.disabled
            else f"LoRA adapter {a!r} of {prefix} is not active: not part of its effective weight"
        )
        for p in pair:
            held[id(p)] = why
    return held


def _base_path(mname: str, mod: Any, base: Any) -> str:
    """The base layer's own module path (through nested wrappers)."""
    path, m = mname, mod
    while m is not base:
        path, m = f"{path}.base_layer" if path else "base_layer", m._modules["base_layer"]
    return path


def _peft_lora_rule(
    mname: str, mod: Any, modules: Mapping[str, Any], lora: str
) -> Optional[tuple[list[tuple[list[Any], list[MatrixSpec]]], dict[int, str], dict[int, str]]]:
    """The matrices of a peft LoRA layer: ``([(parameters used, specs)], {id: skip reason}, {id: note})``,
    or ``None`` when it is not one this rule computes (then its submodules are walked as usual).

    The effective weight mirrors peft's merge (``get_delta_weight`` + in-place add): for every
    contributing adapter ``a``, ``delta = transpose(B_a @ A_a, fan_in_fan_out) * scaling[a]`` (in
    float32 for (b)float16 factors on the CPU, as peft does) added to a copy of the base weight.
    """
    import torch.nn as nn

    base = _unwrap_lora(mod)
    hf = _is_hf_conv1d(base)
    embedding = isinstance(base, nn.Embedding)
    if not (isinstance(base, nn.Linear) or hf or embedding):
        return None
    w = getattr(base, "_parameters", {}).get("weight")
    if w is None or _torch_shape(w) is None or w.ndim != 2 or not w.is_floating_point():
        return None  # parametrized / quantized / lazy base weights: walked as plain modules
    ad = _adapters(mod, embedding)
    if ad is None:
        return None
    prefix = mname or "model"
    key = f"{_base_path(mname, mod, base)}.weight"
    eff, base_w = _effective_and_base(w, ad)
    typ = "Conv1D" if hf else "Embedding" if embedding else "Linear"
    eff_an = eff.T if hf else eff  # the analysis orientation: out x in (Embedding: as stored)
    if embedding:
        made = [MatrixSpec(prefix, typ, eff_an, 1.0, key)]
    else:
        q_width, has_q = _fused_hints(mname, modules, hf)
        made = _linear_specs(prefix, typ, eff_an, key, mname.rpartition(".")[2], q_width, has_q)
    parts, start = [], 0
    for sp in made:  # row blocks of the split (fused q/k/v ...)
        parts.append((sp.name, start, int(sp.shape[0])))
        start += int(sp.shape[0])
    out = list(made)
    if lora in ("effective+update", "all"):
        adapters = ad.contrib or ad.active or list(ad.factors)
        param = _lora_param(mname, ad.contrib or list(ad.factors), embedding)
        out += _lora_update_specs(
            parts, typ, ad.factors, adapters, bool(ad.contrib), ad.scaling, transposed=ad.fifo != hf, param=param
        )
    if lora == "all":
        b_an = base_w.T if hf else base_w
        out += [MatrixSpec(f"{n}.base", typ, b_an[s : s + k], 1.0, key) for n, s, k in parts]
    used = [w] + [p for a in ad.contrib for p in ad.factors[a]]
    note = f"analysed as part of {prefix} (effective weight)"
    return [(used, out)], _held(prefix, ad), {id(p): note for p in used}


def _lora_param(mname: str, adapters: Sequence[str], embedding: bool) -> str:
    if not adapters:
        return ""
    rel = f"lora_embedding_B.{adapters[0]}" if embedding else f"lora_B.{adapters[0]}.weight"
    return f"{mname}.{rel}" if mname else rel


def _lora_update_specs(
    parts: list[tuple[str, int, int]],
    typ: str,
    factors: Mapping[str, tuple[Any, Any]],
    adapters: Sequence[str],
    nonzero: bool,
    scaling: Mapping[str, float],
    *,
    transposed: bool,
    param: str,
) -> list[MatrixSpec]:
    """``<part>.lora_update``: ``Σ scaling[a] · B_a A_a`` (analysis orientation) for each row block, as a
    matrix with at most ``Σ r`` rows or columns and the same non-zero singular values (see
    :func:`_low_rank_core`); zero (``zero_matrix`` status) when no adapter contributes."""
    import torch

    with torch.no_grad():
        lefts, rights = [], []
        for a in adapters:
            A, B = (x.detach().float() for x in factors[a])
            L, R = (A.T, B.T) if transposed else (B, A)  # delta (analysis orientation) = L @ R
            lefts.append(L * float(scaling.get(a, 1.0)))
            rights.append(R)
        L, R = torch.cat(lefts, dim=1), torch.cat(rights, dim=0)
        out = []
        for name, s, k in parts:
            core = _low_rank_core(L[s : s + k], R)
            core = core if nonzero else torch.zeros_like(core)
            out.append(MatrixSpec(f"{name}{LORA_UPDATE_SUFFIX}", typ, core, 1.0, param))
    return out


def _low_rank_core(L: Any, R: Any) -> Any:
    """A matrix whose singular values are those of ``L @ R`` (``n x r`` times ``r x m``), of shape
    ``n x min(m, r)`` (``n >= m``) or ``min(n, r) x m``: the long side is kept, the zero singular values
    of the rank-``r`` product are dropped.  ``L @ R = L (Q R_R)ᵀ`` with ``Rᵀ = Q R_R`` (reduced QR,
    orthonormal ``Q``) has the singular values of ``L R_Rᵀ``; symmetrically ``L = Q R_L``."""
    import torch

    n, m = int(L.shape[0]), int(R.shape[1])
    if n >= m:
        return L @ torch.linalg.qr(R.T, mode="reduced")[1].T
    return torch.linalg.qr(L, mode="reduced")[1] @ R
