"""The mapping adapter: a ``state_dict``, safetensors or ``.npz`` contents (name -> array), layer kinds inferred
from names and shapes."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import numpy as np

from .rules import (
    _FUSED_QKV,
    _HF_CONV1D_NAMES,
    _OUT_PROJ,
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


def _identity(v: Any) -> Optional[tuple[Any, ...]]:
    """What makes two arrays the same tensor (tied weights), or ``None`` when unknown."""
    try:
        if hasattr(v, "untyped_storage") and hasattr(v, "storage_offset"):
            return (
                "torch",
                str(v.device),
                v.untyped_storage().data_ptr(),
                int(v.storage_offset()),
                tuple(v.shape),
                tuple(v.stride()),
                str(v.dtype),
            )
        if isinstance(v, np.ndarray):
            return ("numpy", v.__array_interface__["data"][0], v.shape, v.strides, str(v.dtype))
    except Exception:  # noqa: BLE001 - meta tensors, exotic arrays: never merged
        return None
    return None


def _mapping_inventory(params: Mapping[str, Any]) -> tuple[list[MatrixSpec], list[WeightEntry]]:
    """Infer layer kinds from parameter names and shapes (state_dict layout).

    2-D ``*.weight`` -> Linear (or Embedding when the name says so); 3/4/5-D
    ``*.weight`` -> Conv1d/2d/3d (torch layout ``out, in, *k``);
    ``*.in_proj_weight`` -> q/k/v; ``*.weight_ih_l*`` / ``weight_hh_l*`` ->
    gate blocks (LSTM when rows = 4·hidden, GRU when 3·hidden); fused
    ``qkv``/``gate_up_proj`` and GPT-2 ``Conv1D`` weights (detected from the
    ``c_attn``/``c_fc`` shapes, stored ``in x out``) as in the module walk;
    ``(1, N, d)`` tables; ``...experts.<name>`` 3-D banks per expert.
    Everything else -- biases, norms and other 0-D/1-D arrays, non-float
    arrays, values that are not arrays, nested mappings, tied copies, arrays
    whose name and shape match no rule -- is an entry with its reason.
    Complex (and sparse) matrices are returned: their analysis reports why
    they cannot be analysed.
    """
    specs: list[MatrixSpec] = []
    entries: list[WeightEntry] = []

    def skip(key: str, shape: Optional[tuple[int, ...]], reason: str) -> None:
        entries.append(WeightEntry(key, shape, "", (), reason))

    shapes = {k: _shape_of(v) for k, v in params.items()}
    hidden: dict[str, int] = {}
    for k, s in shapes.items():
        leaf = k.rpartition(".")[2]
        if leaf.startswith("weight_hh") and s is not None and len(s) == 2:
            hidden[k.rsplit("weight_hh", 1)[0]] = int(s[1])
    gpt2_layout = any(
        s is not None
        and len(s) == 2
        and (
            (k.endswith("c_attn.weight") and s[1] in (2 * s[0], 3 * s[0]))
            or (k.endswith("c_fc.weight") and s[1] > s[0])
        )
        for k, s in shapes.items()
    )
    first: dict[tuple[Any, ...], tuple[str, bool]] = {}  # identity -> (first key, analysed)
    for key, v in params.items():
        reason = _entry_skip_reason(v)
        shape = shapes[key]
        if reason:
            skip(key, shape, reason)
            continue
        shape = shape or ()
        ident = _identity(v)
        if ident is not None:
            if ident in first:
                skip(key, shape, _tied_reason(*first[ident]))
                continue
        made = _mapping_rule(key, v, shape, hidden, shapes, gpt2_layout)
        if ident is not None:
            first[ident] = (key, not isinstance(made, str))
        if isinstance(made, str):
            skip(key, shape, made)
            continue
        specs.extend(made)
        entries.append(WeightEntry(key, shape, made[0].type if made else "", tuple(s.name for s in made)))
    return specs, entries


def _mapping_rule(
    key: str,
    v: Any,
    shape: tuple[int, ...],
    hidden: Mapping[str, int],
    shapes: Mapping[str, Optional[tuple[int, ...]]],
    gpt2_layout: bool,
) -> Union[list[MatrixSpec], str]:
    """The matrices of one mapping entry, or why it has none."""
    base, _, leaf = key.rpartition(".")
    base = base or key
    parent, _, module = base.rpartition(".")
    no_rule = f"{len(shape)}-D array: no layer rule for this name and shape {shape}"
    if ".parametrizations." in f".{key}":
        return (
            "parametrization of a module's weight (weight norm ...): analysed as the computed weight when the "
            "model itself is given, not from a state dict"
        )
    if leaf == "in_proj_weight" and len(shape) == 2 and shape[0] == 3 * shape[1]:
        E = shape[1]
        return [
            MatrixSpec(f"{base}.{part}", "MultiheadAttention", v[i * E : (i + 1) * E], 1.0, key)
            for i, part in enumerate("qkv")
        ]
    if leaf in ("q_proj_weight", "k_proj_weight", "v_proj_weight") and len(shape) == 2:
        return [MatrixSpec(f"{base}.{leaf[0]}", "MultiheadAttention", v, 1.0, key)]
    if leaf.startswith(("weight_ih", "weight_hh")) and len(shape) == 2:
        h = hidden.get(key.rsplit("weight_", 1)[0], 0)
        gates = {4: _RNN_GATES["LSTM"], 3: _RNN_GATES["GRU"]}.get(shape[0] // h if h else 1, ("h",))
        return list(_split_gates(key, {4: "LSTM", 3: "GRU"}.get(len(gates), "RNN"), v, gates, 0, key))
    if leaf.startswith("weight_hr") and len(shape) == 2:
        return [MatrixSpec(key, "LSTM", v, 1.0, key)]
    is_weight = leaf in ("weight", "kernel")
    if not is_weight:  # raw parameters: expert banks, (1, N, d) tables, cls tokens
        if len(shape) == 3 and module == "experts" and _is_float(v):
            return _expert_specs(key, v, key)
        if _table_shape(shape):
            return [MatrixSpec(key, "Embedding", v.reshape(_table_shape(shape)), 1.0, key)]
        if _is_single_vector(shape):
            return _vector_reason(shape)
    if is_weight or leaf == "embeddings" or leaf.endswith("_weight") or "." not in key:
        name = base if is_weight else key
        if len(shape) == 2:
            if gpt2_layout and leaf == "weight" and module in _HF_CONV1D_NAMES:
                has_q = shapes.get(f"{parent}.q_attn.weight" if parent else "q_attn.weight") is not None
                return _linear_specs(name, "Conv1D", v.T, key, module, None, has_q)
            typ = "Embedding" if ("embed" in key.lower() or "wte" in key or "wpe" in key) else "Linear"
            if leaf == "weight" and module in _FUSED_QKV + ("gate_up_proj",):
                q_width = None
                for sib in _OUT_PROJ:
                    s = shapes.get(f"{parent}.{sib}.weight" if parent else f"{sib}.weight")
                    if s is not None and len(s) == 2:
                        q_width = int(s[1])
                        break
                return _linear_specs(name, typ, v, key, module, q_width)
            return [MatrixSpec(name, typ, v, 1.0, key)]
        if len(shape) in (3, 4, 5):
            typ = f"Conv{len(shape) - 2}d"
            return [MatrixSpec(base, typ, _conv_stack(v, False), 0.5 if typ == "Conv2d" else 1.0, key)]
    return no_rule


def _shape_of(v: Any) -> Optional[tuple[int, ...]]:
    """``v``'s shape as ints, or ``None`` when ``v`` is not array-like."""
    shape = getattr(v, "shape", None)
    if shape is None or getattr(v, "dtype", None) is None:
        return None
    try:
        return tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        return None


def _entry_skip_reason(v: Any) -> Optional[str]:
    """Why a mapping value is not a weight matrix to analyse, or ``None``."""
    if isinstance(v, Mapping):
        return f"nested mapping ({type(v).__name__}): its entries are not searched"
    shape = _shape_of(v)
    if shape is None:
        return f"value is not an array ({type(v).__name__})"
    if len(shape) < 2:
        return f"not a matrix ({len(shape)}-D)"
    if "complex" in str(v.dtype):
        return None  # analysed, and refused there with a status naming the layer
    if not _is_float(v):
        return f"not floating point (dtype {v.dtype})"
    return None


def _is_float(v: Any) -> bool:
    dt = getattr(v, "dtype", None)
    if dt is None:
        return False
    if hasattr(dt, "is_floating_point"):
        return bool(dt.is_floating_point)
    try:
        ok = bool(np.issubdtype(np.dtype(dt), np.floating))
    except TypeError:
        ok = False
    # bfloat16 / float8 are not NumPy floating subtypes even when ml_dtypes (imported by jax or tensorflow)
    # registers them with NumPy: judge them by name
    return ok or "float" in str(dt)
