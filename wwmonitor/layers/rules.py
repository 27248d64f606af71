"""Layout rules shared by the adapters: fused projections split into q/k/v or gate/up, RNN gate blocks, conv
kernel stacks, expert banks, batch-broadcast tables, and the skip reasons they share."""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from .spec import MatrixSpec

_RNN_GATES = {"LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n"), "RNN": ("h",)}
#: Linear layers holding query, key and value rows, in that order (see the module docstring)
_FUSED_QKV = ("qkv", "qkv_proj", "Wqkv")
#: sibling output projections: their input width is the query width (grouped-query attention)
_OUT_PROJ = ("o_proj", "out_proj", "Wo", "proj")
#: transformers' Conv1D layers of the GPT-2 family (weights stored in x out)
_HF_CONV1D_NAMES = ("c_attn", "c_proj", "c_fc", "q_attn")


def _tied_reason(first: str, analysed: bool = True) -> str:
    if analysed:
        return f"same tensor as {first} (tied weights; analysed once, listed under that name)"
    return f"same tensor as {first} (tied weights)"


def _vector_reason(shape: tuple[int, ...]) -> str:
    return f"not a matrix: shape {shape} is a single vector (cls/mask token)"


def _conv_stack(w: Any, transposed: bool) -> Any:
    """(out, in, *k) -> (K, out, in); transposed (in, out, *k) -> (K, in, out)."""
    a, b = int(w.shape[0]), int(w.shape[1])
    K = int(math.prod(int(s) for s in w.shape[2:]))
    if hasattr(w, "permute"):
        return w.reshape(a, b, K).permute(2, 0, 1)
    return np.moveaxis(np.asarray(w).reshape(a, b, K), 2, 0)


def _split_rows(
    name: str, typ: str, w: Any, parts: Sequence[str], sizes: Sequence[int], param: str
) -> list[MatrixSpec]:
    """Row blocks of ``w`` (``out x in``) of the given ``sizes``, named ``<name>.<part>``."""
    out, start = [], 0
    for part, n in zip(parts, sizes):
        out.append(MatrixSpec(f"{name}.{part}", typ, w[start : start + n], 1.0, param))
        start += n
    return out


def _qkv_sizes(rows: int, q_width: Optional[int]) -> Optional[tuple[int, int, int]]:
    """Row counts of q, k, v in a fused projection of ``rows`` rows (``None``: layout unknown)."""
    if q_width and 0 < q_width < rows and (rows - q_width) % 2 == 0:
        kv = (rows - q_width) // 2
        return q_width, kv, kv
    if rows % 3 == 0:
        return rows // 3, rows // 3, rows // 3
    return None


def _linear_specs(
    name: str, typ: str, w: Any, param: str, leaf: str, q_width: Optional[int] = None, has_q_attn: bool = False
) -> list[MatrixSpec]:
    """The matrices of an ``out x in`` Linear-like weight ``w`` whose module is called ``leaf``."""
    rows, cols = int(w.shape[0]), int(w.shape[1])
    if leaf in _FUSED_QKV:
        sizes = _qkv_sizes(rows, q_width)
        if sizes:
            return _split_rows(name, typ, w, "qkv", sizes, param)
    elif leaf == "gate_up_proj" and rows % 2 == 0:
        return _split_rows(name, typ, w, ("gate", "up"), (rows // 2, rows // 2), param)
    elif leaf == "c_attn" and typ == "Conv1D":
        if rows == 3 * cols:
            return _split_rows(name, typ, w, "qkv", (cols,) * 3, param)
        if rows == 2 * cols and has_q_attn:  # cross-attention: the query is q_attn
            return _split_rows(name, typ, w, "kv", (cols,) * 2, param)
    return [MatrixSpec(name, typ, w, 1.0, param)]


def _split_gates(name: str, typ: str, w: Any, gates: Sequence[str], axis: int, param: str = "") -> Iterator[MatrixSpec]:
    n = int(w.shape[axis]) // len(gates)
    for g, gate in enumerate(gates):
        block = w[g * n : (g + 1) * n] if axis == 0 else w[:, g * n : (g + 1) * n]
        yield MatrixSpec(f"{name}.{gate}" if len(gates) > 1 else name, typ, block, 1.0, param)


def _expert_specs(name: str, w: Any, param: str) -> list[MatrixSpec]:
    return [MatrixSpec(f"{name}[{e}]", "Experts", w[e], 1.0, param) for e in range(int(w.shape[0]))]


def _table_shape(shape: tuple[int, ...]) -> Optional[tuple[int, int]]:
    """``(N, d)`` for a ``(1, N, d)`` batch-broadcast table, else ``None``."""
    if len(shape) == 3 and shape[0] == 1 and shape[1] >= 2 and shape[2] >= 2:
        return shape[1], shape[2]
    return None


def _is_single_vector(shape: tuple[int, ...]) -> bool:
    """A >= 2-D shape with at most one dimension > 1 (``(1, 1, d)``: a cls token)."""
    return len(shape) >= 2 and sum(1 for s in shape if s > 1) <= 1
