"""The torch adapter: every module's own weights -> matrices, then one :class:`WeightEntry` per parameter and
persistent >= 2-D buffer (tied tensors listed once as analysed, then as copies)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .peft_lora import _peft_lora_rule
from .rules import (
    _RNN_GATES,
    _conv_stack,
    _expert_specs,
    _is_single_vector,
    _linear_specs,
    _split_gates,
    _table_shape,
    _tied_reason,
    _vector_reason,
)
from .spec import MatrixSpec, WeightEntry
from .torch_common import _fused_hints, _is_hf_conv1d, _is_peft_lora, _torch_conv_type, _torch_shape, _torch_weight

#: ``(parameters used, matrices made from them)``
Group = tuple[list[Any], list[MatrixSpec]]


def _full(mname: str, rel: str) -> str:
    """The state-dict key of ``rel`` (a parameter name) in the module at ``mname``."""
    return f"{mname}.{rel}" if mname else rel


def _module_weight(mname: str, mod: Any) -> tuple[Any, list[Any], str]:
    """The module's weight (``None`` unless it is a shaped tensor), its parameters, its state-dict key."""
    w, named = _torch_weight(mod)
    if w is None or _torch_shape(w) is None:
        return None, [], ""
    return w, [p for _, p in named], _full(mname, named[0][0]) if named else _full(mname, "weight")


def _linear_groups(mname: str, mod: Any, modules: Mapping[str, Any]) -> list[Group]:
    w, used, key = _module_weight(mname, mod)
    if w is None or w.ndim != 2:
        return []
    hf = _is_hf_conv1d(mod)
    t = w.detach().T if hf else w.detach()
    q_width, has_q = _fused_hints(mname, modules, hf)
    leaf = mname.rpartition(".")[2]
    return [(used, _linear_specs(mname or "model", "Conv1D" if hf else "Linear", t, key, leaf, q_width, has_q))]


def _embedding_groups(mname: str, mod: Any) -> list[Group]:
    w, used, key = _module_weight(mname, mod)
    if w is None or w.ndim != 2:
        return []
    return [(used, [MatrixSpec(mname or "model", "Embedding", w.detach(), 1.0, key)])]


def _conv_groups(mname: str, mod: Any) -> list[Group]:
    w, used, key = _module_weight(mname, mod)
    if w is None or w.ndim < 3:
        return []
    t = _torch_conv_type(mod)
    stack = _conv_stack(w.detach(), bool(getattr(mod, "transposed", False)))
    return [(used, [MatrixSpec(mname or "model", t, stack, 0.5 if t == "Conv2d" else 1.0, key)])]


def _mha_groups(mname: str, mod: Any) -> list[Group]:
    """``in_proj_weight`` split into q, k, v; or the separate ``{q,k,v}_proj_weight``."""
    own = getattr(mod, "_parameters", {})
    prefix = mname or "model"
    ipw = own.get("in_proj_weight")
    if ipw is not None and _torch_shape(ipw) is not None:
        E = ipw.shape[0] // 3
        key = _full(mname, "in_proj_weight")
        parts = [
            MatrixSpec(f"{prefix}.{part}", "MultiheadAttention", ipw.detach()[i * E : (i + 1) * E], 1.0, key)
            for i, part in enumerate("qkv")
        ]
        return [([ipw], parts)]
    groups: list[Group] = []
    for part in "qkv":
        p = own.get(f"{part}_proj_weight")
        if p is not None and _torch_shape(p) is not None:
            key = _full(mname, f"{part}_proj_weight")
            groups.append(([p], [MatrixSpec(f"{prefix}.{part}", "MultiheadAttention", p.detach(), 1.0, key)]))
    return groups


def _rnn_groups(mname: str, mod: Any) -> list[Group]:
    """Gate blocks of ``weight_ih*`` / ``weight_hh*``; the LSTM projection ``weight_hr*`` whole."""
    import torch.nn as nn

    if isinstance(mod, nn.RNNBase):
        t = {"LSTM": "LSTM", "GRU": "GRU"}.get(getattr(mod, "mode", ""), "RNN")
    else:
        t = "LSTM" if isinstance(mod, nn.LSTMCell) else "GRU" if isinstance(mod, nn.GRUCell) else "RNN"
    groups: list[Group] = []
    for pname, p in getattr(mod, "_parameters", {}).items():
        shape = _torch_shape(p) if p is not None else None
        if shape is None or len(shape) != 2:
            continue
        name = f"{mname or 'model'}.{pname}"
        if pname.startswith(("weight_ih", "weight_hh")):
            groups.append(([p], list(_split_gates(name, t, p.detach(), _RNN_GATES[t], 0, _full(mname, pname)))))
        elif pname.startswith("weight_hr"):  # LSTM projection (proj_size > 0)
            groups.append(([p], [MatrixSpec(name, t, p.detach(), 1.0, _full(mname, pname))]))
    return groups


def _raw_parameter_groups(mname: str, mod: Any, taken: list[Group], reasons: dict[int, str]) -> list[Group]:
    """Parameters no layer rule took: expert banks, a custom layer's ``weight`` (MoE router ...), ``(1, N, d)``
    tables; single vectors (cls tokens) get their skip reason in ``reasons``."""
    import torch.nn as nn

    prefix = mname or "model"
    n_experts = getattr(mod, "num_experts", None)
    groups: list[Group] = []
    for pname, p in getattr(mod, "_parameters", {}).items():
        if p is None or any(p is q for g in taken for q in g[0]):
            continue
        shape = _torch_shape(p)
        if shape is None or len(shape) < 2:
            continue
        key, floating = _full(mname, pname), p.is_floating_point()
        if isinstance(n_experts, int) and n_experts > 0 and len(shape) == 3 and shape[0] == n_experts and floating:
            groups.append(([p], _expert_specs(key, p.detach(), key)))
        elif pname == "weight" and len(shape) == 2 and floating and not isinstance(mod, nn.Bilinear):
            groups.append(([p], [MatrixSpec(prefix, "Linear", p.detach(), 1.0, key)]))
        elif pname == "weight" and len(shape) in (3, 4, 5) and floating and not isinstance(mod, nn.Bilinear):
            t = f"Conv{len(shape) - 2}d"
            stack = _conv_stack(p.detach(), False)
            groups.append(([p], [MatrixSpec(prefix, t, stack, 0.5 if t == "Conv2d" else 1.0, key)]))
        elif _table_shape(shape) and floating:
            groups.append(([p], [MatrixSpec(key, "Embedding", p.detach().reshape(_table_shape(shape)), 1.0, key)]))
        elif _is_single_vector(shape):
            reasons[id(p)] = _vector_reason(shape)
    return groups


def _torch_rule(mname: str, mod: Any, modules: Mapping[str, Any]) -> tuple[list[Group], dict[int, str]]:
    """The matrices a module's own weights make: ``([(parameters used, specs)], {id(param): skip reason})``."""
    import torch.nn as nn

    if isinstance(mod, nn.Linear) or _is_hf_conv1d(mod):
        groups = _linear_groups(mname, mod, modules)
    elif isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
        groups = _embedding_groups(mname, mod)
    elif isinstance(mod, nn.modules.conv._ConvNd):
        groups = _conv_groups(mname, mod)
    elif isinstance(mod, nn.MultiheadAttention):
        groups = _mha_groups(mname, mod)
    elif isinstance(mod, (nn.RNNBase, nn.RNNCellBase)):
        groups = _rnn_groups(mname, mod)
    else:
        groups = []
    reasons: dict[int, str] = {}
    groups += _raw_parameter_groups(mname, mod, groups, reasons)
    return groups, reasons


@dataclass
class _Claims:
    """What the first pass found, by ``id(parameter)``."""

    specs: list[MatrixSpec] = field(default_factory=list)
    claimed: dict[int, tuple[str, ...]] = field(default_factory=dict)  # -> the matrices made from it
    reasons: dict[int, str] = field(default_factory=dict)  # -> why a layer rule did not take it
    notes: dict[int, str] = field(default_factory=dict)  # -> how it is analysed (LoRA factors: in their layer)
    held: dict[int, str] = field(default_factory=dict)  # -> why no module may analyse it (inactive LoRA adapters)


def _claim_matrices(walk: list[tuple[str, Any]], modules: Mapping[str, Any], lora: str) -> _Claims:
    """First pass: the matrices of every module, in walk order (a tied weight may be claimed by a later module;
    a LoRA layer is walked before its base layer and factors, which it claims)."""
    c = _Claims()
    for mname, mod in walk:
        lr = _peft_lora_rule(mname, mod, modules, lora) if _is_peft_lora(mod) else None
        how: dict[int, str] = {}
        if lr is not None:
            groups, how = lr[0], lr[2]
            c.held.update(lr[1])
        else:
            groups, why = _torch_rule(mname, mod, modules)
            c.reasons.update(why)
        for used, made in groups:
            if any(id(p) in c.claimed or id(p) in c.held for p in used):  # tied: its matrices are already listed
                continue
            c.notes.update({id(p): how[id(p)] for p in used if id(p) in how})
            c.specs.extend(made)
            names = tuple(s.name for s in made)
            for p in used:
                c.claimed[id(p)] = names
    return c


def _parameter_entry(full: str, p: Any, t: str, c: _Claims) -> WeightEntry:
    """The entry of a parameter seen for the first time."""
    shape, i = _torch_shape(p), id(p)
    if shape is None:
        return WeightEntry(full, None, t, (), "parameter without a shape (uninitialised lazy module?)")
    if i in c.claimed:
        return WeightEntry(full, shape, t, c.claimed[i], c.notes.get(i, ""))
    if i in c.held:
        return WeightEntry(full, shape, t, (), c.held[i])
    if len(shape) < 2:
        return WeightEntry(full, shape, t, (), f"not a matrix ({len(shape)}-D)")
    if i in c.reasons:
        return WeightEntry(full, shape, t, (), c.reasons[i])
    if not p.is_floating_point():
        return WeightEntry(full, shape, t, (), f"not floating point (dtype {p.dtype})")
    return WeightEntry(
        full, shape, t, (), f"{len(shape)}-D parameter of a {t} module, which wwmonitor does not analyse"
    )


def _module_entries(mname: str, mod: Any, c: _Claims, first: dict[int, str]) -> list[WeightEntry]:
    """Every parameter and persistent >= 2-D buffer of ``mod``, under each of its names (``first``: id(tensor) ->
    the first name it was listed under, shared across modules)."""
    t = type(mod).__name__
    out: list[WeightEntry] = []
    for pname, p in getattr(mod, "_parameters", {}).items():
        if p is None:
            continue
        full = _full(mname, pname)
        if id(p) in first:
            out.append(WeightEntry(full, _torch_shape(p), t, (), _tied_reason(first[id(p)], id(p) in c.claimed)))
            continue
        first[id(p)] = full
        out.append(_parameter_entry(full, p, t, c))
    transient: set[str] = getattr(mod, "_non_persistent_buffers_set", set())
    for bname, b in getattr(mod, "_buffers", {}).items():
        shape = _torch_shape(b) if b is not None else None
        if shape is None or len(shape) < 2 or bname in transient:
            continue  # state-dict entries only; vectors of buffers (BatchNorm statistics) are not weights
        full = _full(mname, bname)
        if id(b) in first:
            out.append(WeightEntry(full, shape, t, (), _tied_reason(first[id(b)], False)))
            continue
        first[id(b)] = full
        out.append(WeightEntry(full, shape, t, (), f"{len(shape)}-D buffer of a {t} module (not a trained parameter)"))
    return out


def _torch_inventory(model: Any, lora: str = "effective") -> tuple[list[MatrixSpec], list[WeightEntry]]:
    """The matrices of a torch module, then every weight tensor's entry (see the package docstring)."""
    modules = dict(model.named_modules())
    try:
        walk = list(model.named_modules(remove_duplicate=False))
    except TypeError:  # very old torch
        walk = list(model.named_modules())
    claims = _claim_matrices(walk, modules, lora)
    first: dict[int, str] = {}
    entries = [e for mname, mod in walk for e in _module_entries(mname, mod, claims, first)]
    return claims.specs, entries
