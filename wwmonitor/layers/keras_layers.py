"""The Keras 3 adapter: the layer tree walked with stable names, each layer's own variables -> matrices, then
one :class:`WeightEntry` per variable."""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import numpy as np

from .rules import _is_single_vector, _split_gates, _vector_reason
from .spec import MatrixSpec, WeightEntry

_KERAS_GATES = {"LSTM": ("i", "f", "c", "o"), "GRU": ("z", "r", "h"), "SimpleRNN": ("h",)}


def _snake_case(name: str) -> str:
    """Keras' ``to_snake_case``: how it names an unnamed layer (``MyDense`` -> ``my_dense``)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras_children(layer: Any) -> list[Any]:
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=False))
    return list(getattr(layer, "layers", []) or [])


def _stable_names(layers: Sequence[Any]) -> list[str]:
    """Names of sibling layers with Keras-generated names (``dense_7``) renumbered in order."""
    auto: list[Optional[str]] = []
    for lyr in layers:
        snake = _snake_case(type(lyr).__name__)
        auto.append(snake if re.fullmatch(re.escape(snake) + r"(_\d+)?", str(lyr.name)) else None)
    taken = {str(lyr.name) for lyr, a in zip(layers, auto) if a is None}
    counts: dict[str, int] = {}
    out = []
    for lyr, base in zip(layers, auto):
        if base is None:
            out.append(str(lyr.name))
            continue
        while True:
            k = counts.get(base, 0)
            counts[base] = k + 1
            cand = base if k == 0 else f"{base}_{k}"
            if cand not in taken:
                break
        taken.add(cand)
        out.append(cand)
    return out


def _keras_walk(model: Any) -> list[tuple[str, Any]]:
    """``(name, layer)`` for every layer inside ``model``, depth first, each once (stable names)."""
    out: list[tuple[str, Any]] = []
    seen = {id(model)}

    def visit(layer: Any, prefix: str) -> None:
        kids = [k for k in _keras_children(layer) if id(k) not in seen]
        for k in kids:
            seen.add(id(k))
        for k, n in zip(kids, _stable_names(kids)):
            out.append((prefix + n, k))
            visit(k, prefix + n + "/")

    visit(model, "")
    return out


def _keras_own_variables(layer: Any, sub: Sequence[Any]) -> list[Any]:
    """The variables ``layer`` created itself (not its sublayers')."""
    own = getattr(layer, "_trainable_variables", None)
    other = getattr(layer, "_non_trainable_variables", None)
    if own is not None and other is not None:
        return list(own) + list(other)
    inner = {id(v) for s in sub for v in getattr(s, "weights", [])}
    return [v for v in getattr(layer, "weights", []) if id(v) not in inner]


def _keras_classes() -> dict[str, tuple[type, ...]]:
    from keras import layers as L

    def pick(*names: str) -> tuple[type, ...]:
        return tuple(getattr(L, n) for n in names if hasattr(L, n))

    return {
        "dense": pick("Dense", "EinsumDense"),
        "embedding": pick("Embedding"),
        "depthwise": pick("DepthwiseConv1D", "DepthwiseConv2D"),
        "separable": pick("SeparableConv1D", "SeparableConv2D"),
        "conv": pick("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"),
        "rnn": pick("LSTM", "GRU", "SimpleRNN"),
        "cell": pick("LSTMCell", "GRUCell", "SimpleRNNCell"),
    }


def _keras_base(lyr: Any, classes: tuple[type, ...]) -> str:
    """The public Keras class among ``classes`` that ``lyr`` is an instance of (its type for filters)."""
    for c in type(lyr).__mro__:
        if c in classes:
            return c.__name__
    return type(lyr).__name__


def _einsum_matrix(k: np.ndarray, equation: Optional[str]) -> np.ndarray:
    """An EinsumDense kernel as ``inputs x outputs`` (contracted kernel axes first)."""
    if k.ndim == 2:
        return k
    try:
        lhs, out = str(equation).replace(".", "").split("->")
        inp, ker = lhs.split(",")
        ins = [i for i, c in enumerate(ker) if c in inp and c not in out]
        outs = [i for i, c in enumerate(ker) if c not in inp and c in out]
        if ins and outs and len(ins) + len(outs) == k.ndim:
            a = int(np.prod([k.shape[i] for i in ins]))
            return np.transpose(k, ins + outs).reshape(a, -1)
    except (ValueError, AttributeError):
        pass
    return k.reshape(k.shape[0], -1) if k.shape[0] >= k.shape[-1] else k.reshape(-1, k.shape[-1])


def _keras_depthwise_stack(k: np.ndarray) -> np.ndarray:
    """A depthwise kernel ``(*k, C, mult)`` as torch stores it, ``(K, C*mult, 1)`` slices."""
    K = int(np.prod(k.shape[:-2]))
    return k.reshape(K, -1, 1)


Group = tuple[list[Any], list[MatrixSpec]]


class _Walk:
    """A Keras model's layers (stable names), each layer's own variables and every variable's name
    ``<layer path>/<variable name>``, each variable once, in model order."""

    def __init__(self, model: Any) -> None:
        self.layers = _keras_walk(model)
        self.kids = {id(lyr): _keras_children(lyr) for _, lyr in [("", model)] + self.layers}
        self.pname: dict[int, str] = {}
        self.order: list[tuple[Any, Any]] = []  # (variable, owning layer or None)
        for name, lyr in [("", model)] + self.layers:
            for v in _keras_own_variables(lyr, self.kids.get(id(lyr), [])):
                if id(v) not in self.pname:
                    vname = str(getattr(v, "name", "")).rsplit("/", 1)[-1]
                    self.pname[id(v)] = f"{name}/{vname}" if name else vname
                    self.order.append((v, lyr))
        top = str(getattr(model, "name", ""))
        for v in getattr(model, "weights", []):  # anything not held by a layer of the walk
            if id(v) not in self.pname:
                path = str(getattr(v, "path", None) or getattr(v, "name", "weight"))
                self.pname[id(v)] = path[len(top) + 1 :] if top and path.startswith(top + "/") else path
                self.order.append((v, None))

    def var(self, lyr: Any, *names: str) -> list[Any]:
        """The layer's own variables called one of ``names``."""
        own = _keras_own_variables(lyr, self.kids.get(id(lyr), []))
        return [v for v in own if str(getattr(v, "name", "")).rsplit("/", 1)[-1] in names]

    def key(self, v: Any) -> str:
        return self.pname.get(id(v), "")


def _npy(v: Any) -> np.ndarray:
    from keras import ops

    return np.asarray(ops.convert_to_numpy(v))


def _dense(w: _Walk, name: str, lyr: Any, cls: tuple[type, ...]) -> list[Group]:
    used = w.var(lyr, "kernel", "lora_kernel_a", "lora_kernel_b")
    k = getattr(lyr, "kernel", None)
    if k is None or not used:
        return []
    m = _einsum_matrix(_npy(k), getattr(lyr, "equation", None))
    return [(used, [MatrixSpec(name, _keras_base(lyr, cls), m, 1.0, w.key(used[0]))])]


def _embedding(w: _Walk, name: str, lyr: Any) -> list[Group]:
    used = w.var(lyr, "embeddings", "lora_embeddings_a", "lora_embeddings_b")
    e = getattr(lyr, "embeddings", None)
    out: list[Group] = []
    if e is not None and used:
        out.append((used, [MatrixSpec(name, "Embedding", _npy(e), 1.0, w.key(used[0]))]))
    for v in w.var(lyr, "reverse_embeddings"):  # keras_hub ReversibleEmbedding, untied output projection
        out.append(([v], [MatrixSpec(f"{name}.reverse", "Embedding", _npy(v), 1.0, w.key(v))]))
    return out


def _depthwise(w: _Walk, name: str, lyr: Any, cls: tuple[type, ...]) -> list[Group]:
    t = _keras_base(lyr, cls)
    scale = 0.5 if t.endswith("2D") else 1.0
    return [
        ([v], [MatrixSpec(name, t, _keras_depthwise_stack(_npy(v)), scale, w.key(v))])
        for v in w.var(lyr, "kernel", "depthwise_kernel")
    ]


def _separable(w: _Walk, name: str, lyr: Any, cls: tuple[type, ...]) -> list[Group]:
    t = _keras_base(lyr, cls)
    scale = 0.5 if t.endswith("2D") else 1.0
    out: list[Group] = []
    for v in w.var(lyr, "depthwise_kernel"):
        out.append(([v], [MatrixSpec(f"{name}.depthwise", t, _keras_depthwise_stack(_npy(v)), scale, w.key(v))]))
    for v in w.var(lyr, "pointwise_kernel"):
        k = _npy(v)
        out.append(
            ([v], [MatrixSpec(f"{name}.pointwise", t, k.reshape(-1, k.shape[-2], k.shape[-1]), scale, w.key(v))])
        )
    return out


def _conv(w: _Walk, name: str, lyr: Any, cls: tuple[type, ...]) -> list[Group]:
    used = w.var(lyr, "kernel")
    k = getattr(lyr, "kernel", None)
    if k is None or not used:
        return []
    k = _npy(k)  # (*spatial, in, out) or transposed (*spatial, out, in)
    if k.ndim < 3:
        return []
    t = _keras_base(lyr, cls)
    stack = k.reshape(-1, k.shape[-2], k.shape[-1])
    return [(used, [MatrixSpec(name, t, stack, 0.5 if t == "Conv2D" else 1.0, w.key(used[0]))])]


def _recurrent(w: _Walk, name: str, lyr: Any, cls: dict[str, tuple[type, ...]]) -> list[Group]:
    if isinstance(lyr, cls["rnn"]):
        t, cell = _keras_base(lyr, cls["rnn"]), getattr(lyr, "cell", lyr)
    else:
        t, cell = _keras_base(lyr, cls["cell"]).replace("Cell", ""), lyr
    out: list[Group] = []
    for attr in ("kernel", "recurrent_kernel"):
        v = getattr(cell, attr, None)
        if v is not None and len(getattr(v, "shape", ())) == 2:
            gates = _KERAS_GATES.get(t, ("h",))
            out.append(([v], list(_split_gates(f"{name}.{attr}", t, _npy(v), gates, axis=1, param=w.key(v)))))
    return out


def _layer_groups(w: _Walk, name: str, lyr: Any, cls: dict[str, tuple[type, ...]]) -> list[Group]:
    """The matrices of one layer, by the first class family it belongs to."""
    if isinstance(lyr, cls["dense"]):
        return _dense(w, name, lyr, cls["dense"])
    if isinstance(lyr, cls["embedding"]):
        return _embedding(w, name, lyr)
    if isinstance(lyr, cls["depthwise"]):
        return _depthwise(w, name, lyr, cls["depthwise"])
    if isinstance(lyr, cls["separable"]):
        return _separable(w, name, lyr, cls["separable"])
    if isinstance(lyr, cls["conv"]):
        return _conv(w, name, lyr, cls["conv"])
    if isinstance(lyr, cls["rnn"]) or isinstance(lyr, cls["cell"]):
        return _recurrent(w, name, lyr, cls)
    return []


def _entry(v: Any, lyr: Any, p: str, claimed: dict[int, tuple[str, ...]]) -> WeightEntry:
    """One variable's entry: the matrices made from it, or why none was."""
    shape = tuple(int(s) for s in getattr(v, "shape", ()))
    t = type(lyr).__name__ if lyr is not None else ""
    if id(v) in claimed:
        return WeightEntry(p, shape, t, claimed[id(v)])
    if len(shape) < 2:
        return WeightEntry(p, shape, t, (), f"not a matrix ({len(shape)}-D)")
    if "float" not in str(getattr(v, "dtype", "float")):
        return WeightEntry(p, shape, t, (), f"not floating point (dtype {v.dtype})")
    if _is_single_vector(shape):
        return WeightEntry(p, shape, t, (), _vector_reason(shape))
    if p.rsplit("/", 1)[-1] == "bias":  # EinsumDense: one bias per head and unit
        return WeightEntry(p, shape, t, (), f"a bias ({len(shape)}-D), not a weight matrix")
    what = f"a {t} layer" if t else "no layer of the model"
    return WeightEntry(p, shape, t, (), f"{len(shape)}-D weight of {what}, which wwmonitor does not analyse")


def _keras_inventory(model: Any) -> tuple[list[MatrixSpec], list[WeightEntry]]:
    """The matrices of a Keras model, then every variable's entry (see the package docstring)."""
    cls = _keras_classes()
    w = _Walk(model)
    specs: list[MatrixSpec] = []
    claimed: dict[int, tuple[str, ...]] = {}
    for name, lyr in w.layers:
        for used, made in _layer_groups(w, name, lyr, cls):
            if not used or any(id(v) in claimed for v in used):
                continue
            specs.extend(made)
            for v in used:
                claimed[id(v)] = tuple(s.name for s in made)
    return specs, [_entry(v, lyr, w.pname[id(v)], claimed) for v, lyr in w.order]
