"""Framework objects -> named weight matrices.

:func:`extract_matrices` turns a torch ``nn.Module``, a Keras 3 model, or a
mapping of parameter name -> array (a ``state_dict``, a safetensors file's
contents, an ``.npz``) into a list of :class:`MatrixSpec`.

What becomes a matrix (``a x b``; the ESD does not depend on orientation):

* Linear / Dense / Embedding: the weight (Keras: the *effective* ``kernel``,
  which includes a LoRA delta and dequantisation).
* Conv1d/2d/3d and ConvTranspose: one ``out x in`` matrix per kernel
  position.  ``conv="pool"`` (default) keeps them as a stack ``(K, a, b)``
  whose ESDs are pooled into one per layer; ``conv="slices"`` returns one
  spec per kernel position, named ``<layer>[i,j]``.
* Fused attention projections (``in_proj_weight`` of
  ``nn.MultiheadAttention``) are split into ``.q``, ``.k``, ``.v``.
* RNN weights are split into gate blocks: LSTM ``i, f, g, o``; GRU
  ``r, z, n`` (torch) / ``z, r, h`` (Keras); plain RNN one block.

Every entry is accounted for: pass ``skipped=[]`` to
:func:`extract_matrices` to get ``(name, reason)`` for each mapping entry or
torch parameter that is not analysed -- 0-D/1-D arrays (biases, norms:
``"not a matrix (1-D)"``), non-float arrays, values that are not arrays at
all, nested mappings, parameters of modules that are not analysed, and
arrays whose name and shape match no layer rule.  Keras models do not list
skipped weights yet.  Complex, sparse or otherwise unusable *matrices* are
not skipped here: they are returned and their analysis reports the problem
as the layer's status.

Framework imports happen lazily inside the adapters.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from .frameworks import is_keras_model, is_torch_module

__all__ = ["MatrixSpec", "extract_matrices", "select", "is_keras_model", "is_torch_module"]

Pattern = Union[str, type]


@dataclass
class MatrixSpec:
    """One analysable weight matrix.

    ``tensor`` is 2-D, or a 3-D stack ``(K, a, b)`` of conv slices (pooled).
    ``scale`` multiplies the eigenvalues of ``WᵀW`` so that weightwatcher-named
    metrics match weightwatcher (0.5 for Conv2d, its ``conv2d_norm``).
    """

    name: str
    type: str
    tensor: Any
    scale: float = 1.0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.tensor.shape)

    @property
    def num_evals(self) -> int:
        s = self.shape
        k = s[0] if len(s) == 3 else 1
        return k * min(s[-2:])


def extract_matrices(
    obj: Any,
    *,
    layers: Optional[Sequence[Pattern]] = None,
    exclude: Optional[Sequence[Pattern]] = None,
    conv: str = "pool",
    skipped: Optional[list[tuple[str, str]]] = None,
) -> list[MatrixSpec]:
    """All analysable matrices of ``obj``, filtered by ``layers``/``exclude``.

    ``layers`` / ``exclude`` entries are names or glob patterns (matched
    against the matrix name and its layer-module prefix), or layer type names
    (``"Linear"``, ``"Conv2d"``) / classes.

    ``skipped``: a list to which ``(name, reason)`` is appended for every
    mapping entry / torch parameter that is not analysed (see the module
    docstring), in model order.  Entries outside the ``layers`` selection or
    matched by ``exclude`` (by name) are not listed: the caller asked for that.
    """
    if conv not in ("pool", "slices"):
        raise ValueError(f"conv must be 'pool' or 'slices', got {conv!r}")
    found: Optional[list[tuple[str, str]]] = [] if skipped is not None else None
    if is_keras_model(obj):  # before torch: a Keras model on the torch backend is also an nn.Module
        specs = list(_from_keras(obj))
    elif is_torch_module(obj):
        specs = list(_from_torch(obj, found))
    elif isinstance(obj, Mapping):
        specs = list(_from_mapping(obj, found))
    else:
        raise TypeError(
            f"cannot extract weight matrices from {type(obj).__name__}: expected a torch nn.Module, "
            "a Keras 3 model, or a mapping of parameter names to arrays"
        )
    if conv == "slices":
        specs = [s for spec in specs for s in _split_slices(spec)]
    out = select(specs, layers=layers, exclude=exclude)
    if skipped is not None and found:
        skipped.extend(_select_skipped(found, layers, exclude))
    return out


def _select_skipped(found: list[tuple[str, str]], layers: Optional[Sequence[Pattern]],
                    exclude: Optional[Sequence[Pattern]]) -> list[tuple[str, str]]:
    """The skipped entries inside the ``layers`` selection and not ``exclude``d (matched by name)."""
    if isinstance(layers, (str, type)):
        layers = [layers]
    if isinstance(exclude, (str, type)):
        exclude = [exclude]
    out = []
    for name, reason in found:
        probe = MatrixSpec(name, "", None)
        if layers and not any(_matches(probe, p) for p in layers):
            continue
        if exclude and any(_matches(probe, p) for p in exclude):
            continue
        out.append((name, reason))
    return out


def _matches(spec: MatrixSpec, pat: Pattern) -> bool:
    if isinstance(pat, type):
        return spec.type == pat.__name__
    return spec.type == pat or spec.name == pat or fnmatch.fnmatchcase(spec.name, pat) or spec.name.startswith(pat + ".") or spec.name.startswith(pat + "[")


def select(
    specs: list[MatrixSpec],
    *,
    layers: Optional[Sequence[Pattern]] = None,
    exclude: Optional[Sequence[Pattern]] = None,
) -> list[MatrixSpec]:
    """Filter ``specs``; an include pattern that matches nothing is an error."""
    if isinstance(layers, (str, type)):
        layers = [layers]
    if isinstance(exclude, (str, type)):
        exclude = [exclude]
    out = specs
    if layers:
        unknown = [p for p in layers if not any(_matches(s, p) for s in specs)]
        if unknown:
            names = ", ".join(s.name for s in specs[:12]) + (" ..." if len(specs) > 12 else "")
            raise ValueError(f"layers: no matrix matches {unknown!r}; available: {names or '(none)'}")
        out = [s for s in out if any(_matches(s, p) for p in layers)]
    if exclude:
        out = [s for s in out if not any(_matches(s, p) for p in exclude)]
    return out


def _split_slices(spec: MatrixSpec) -> list[MatrixSpec]:
    if len(spec.shape) != 3:
        return [spec]
    return [MatrixSpec(f"{spec.name}[{k}]", spec.type, spec.tensor[k], spec.scale) for k in range(spec.shape[0])]


# ---------------------------------------------------------------- torch ----
_TORCH_CONV = {"Conv1d", "Conv2d", "Conv3d", "LazyConv1d", "LazyConv2d", "LazyConv3d"}
_TORCH_CONVT = {"ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"}
_RNN_GATES = {"LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n"), "RNN": ("h",)}


def _conv_stack(w: Any, transposed: bool) -> Any:
    """(out, in, *k) -> (K, out, in); transposed (in, out, *k) -> (K, in, out)."""
    a, b = int(w.shape[0]), int(w.shape[1])
    K = int(math.prod(int(s) for s in w.shape[2:]))
    if hasattr(w, "permute"):
        return w.reshape(a, b, K).permute(2, 0, 1)
    return np.moveaxis(np.asarray(w).reshape(a, b, K), 2, 0)


def _from_torch(model: Any, skipped: Optional[list[tuple[str, str]]] = None) -> Iterator[MatrixSpec]:
    used: set[int] = set()  # ids of the parameters that became matrices
    for mname, mod in model.named_modules():
        t = type(mod).__name__
        prefix = mname or "model"
        w = getattr(mod, "weight", None)
        if _is_linear_like(mod):
            if w is not None and w.ndim == 2:
                used.add(id(w))
                yield MatrixSpec(prefix, "Linear", w.detach())
        elif t in ("Embedding", "EmbeddingBag"):
            used.add(id(w))
            yield MatrixSpec(prefix, "Embedding", w.detach())
        elif t in _TORCH_CONV:
            scale = 0.5 if t.endswith("2d") else 1.0
            used.add(id(w))
            yield MatrixSpec(prefix, t.replace("Lazy", ""), _conv_stack(w.detach(), False), scale)
        elif t in _TORCH_CONVT:
            used.add(id(w))
            yield MatrixSpec(prefix, t, _conv_stack(w.detach(), True))
        elif t == "MultiheadAttention":
            ipw = getattr(mod, "in_proj_weight", None)
            if ipw is not None:
                used.add(id(ipw))
                E = ipw.shape[0] // 3
                for i, part in enumerate("qkv"):
                    yield MatrixSpec(f"{prefix}.{part}", "MultiheadAttention", ipw.detach()[i * E:(i + 1) * E])
            else:
                for part in "qkv":
                    p = getattr(mod, f"{part}_proj_weight", None)
                    if p is not None:
                        used.add(id(p))
                        yield MatrixSpec(f"{prefix}.{part}", "MultiheadAttention", p.detach())
        elif t in _RNN_GATES:
            gates = _RNN_GATES[t]
            for pname, p in mod.named_parameters(recurse=False):
                if pname.startswith(("weight_ih", "weight_hh")) and p.ndim == 2:
                    used.add(id(p))
                    yield from _split_gates(f"{prefix}.{pname}", t, p.detach(), gates, axis=0)
    if skipped is not None:
        skipped.extend(_torch_skipped(model, used))


def _torch_skipped(model: Any, used: set[int]) -> list[tuple[str, str]]:
    """``(name, reason)`` of every parameter of ``model`` that did not become a matrix
    (each shared parameter once, under its first name)."""
    out: list[tuple[str, str]] = []
    seen: set[int] = set()
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if id(p) in used:
                continue
            full = f"{mname}.{pname}" if mname else pname
            try:
                ndim = int(p.dim())
            except Exception as e:  # noqa: BLE001 - lazy modules: the parameter has no shape yet
                out.append((full, f"parameter without a shape ({type(e).__name__}: uninitialised lazy module?)"))
                continue
            if ndim < 2:
                out.append((full, f"not a matrix ({ndim}-D)"))
            else:
                out.append((full, f"{ndim}-D parameter of a {type(mod).__name__} module, which wwmonitor does not analyse"))
    return out


def _is_linear_like(mod: Any) -> bool:
    # subclasses of nn.Linear (e.g. quantisation-aware or LoRA wrappers)
    return any(c.__name__ == "Linear" and c.__module__.startswith("torch.nn") for c in type(mod).__mro__)


def _split_gates(name: str, typ: str, w: Any, gates: Sequence[str], axis: int) -> Iterator[MatrixSpec]:
    n = int(w.shape[axis]) // len(gates)
    for g, gate in enumerate(gates):
        block = w[g * n:(g + 1) * n] if axis == 0 else w[:, g * n:(g + 1) * n]
        yield MatrixSpec(f"{name}.{gate}" if len(gates) > 1 else name, typ, block)


# ---------------------------------------------------------------- keras ----
_KERAS_GATES = {"LSTM": ("i", "f", "c", "o"), "GRU": ("z", "r", "h"), "SimpleRNN": ("h",)}


def _keras_layers(model: Any) -> Iterable[Any]:
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=True))
    out, stack = [], list(getattr(model, "layers", []))
    while stack:
        lyr = stack.pop(0)
        out.append(lyr)
        stack.extend(getattr(lyr, "layers", []) or [])
    return out


def _from_keras(model: Any) -> Iterator[MatrixSpec]:
    from keras import ops

    def npy(v: Any) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(v))

    for lyr in _keras_layers(model):
        t = type(lyr).__name__
        path = getattr(lyr, "path", None) or lyr.name
        if t in ("Dense", "EinsumDense"):
            k = getattr(lyr, "kernel", None)
            if k is None:
                continue
            k = npy(k)
            if k.ndim > 2:  # EinsumDense (d, heads, head_dim) -> (d, heads*head_dim)
                k = k.reshape(k.shape[0], -1) if k.shape[0] >= k.shape[-1] else k.reshape(-1, k.shape[-1])
            yield MatrixSpec(path, t, k)
        elif t == "Embedding":
            yield MatrixSpec(path, t, npy(lyr.embeddings))
        elif t.startswith("Conv") and "LSTM" not in t:
            k = getattr(lyr, "kernel", None)
            if k is None:
                continue
            k = npy(k)  # (*spatial, in, out) or transposed (*spatial, out, in)
            if k.ndim < 3:
                continue
            a, b = k.shape[-2], k.shape[-1]
            stack = k.reshape(-1, a, b)
            scale = 0.5 if t == "Conv2D" else 1.0
            yield MatrixSpec(path, t, stack, scale)
        elif t in _KERAS_GATES:
            cell = getattr(lyr, "cell", lyr)
            for attr in ("kernel", "recurrent_kernel"):
                v = getattr(cell, attr, None)
                if v is not None:
                    yield from _split_gates(f"{path}.{attr}", t, npy(v), _KERAS_GATES[t], axis=1)


# -------------------------------------------------------------- mapping ----
def _from_mapping(params: Mapping[str, Any], skipped: Optional[list[tuple[str, str]]] = None) -> Iterator[MatrixSpec]:
    """Infer layer kinds from parameter names and shapes (state_dict layout).

    2-D ``*.weight`` -> Linear (or Embedding when the name says so); 3/4/5-D
    ``*.weight`` -> Conv1d/2d/3d (torch layout ``out, in, *k``);
    ``*.in_proj_weight`` -> q/k/v; ``*.weight_ih_l*`` / ``weight_hh_l*`` ->
    gate blocks (LSTM when rows = 4·hidden, GRU when 3·hidden).
    Everything else -- biases, norms and other 0-D/1-D arrays, non-float
    arrays, values that are not arrays, nested mappings, arrays whose name
    and shape match no rule -- is appended to ``skipped`` with its reason.
    Complex (and sparse) matrices are returned: their analysis reports why
    they cannot be analysed.
    """
    def skip(key: str, reason: str) -> None:
        if skipped is not None:
            skipped.append((key, reason))

    hidden: dict[str, int] = {}
    for k, v in params.items():
        if (".weight_hh_l" in k or k.startswith("weight_hh_l")) and len(_shape_of(v) or ()) == 2:
            hidden[k.rsplit("weight_hh_l", 1)[0]] = int(v.shape[1])
    for key, v in params.items():
        reason = _entry_skip_reason(v)
        if reason:
            skip(key, reason)
            continue
        shape = _shape_of(v) or ()
        base, _, leaf = key.rpartition(".")
        base = base or key
        if leaf == "in_proj_weight" and shape[0] == 3 * shape[1]:
            E = shape[1]
            for i, part in enumerate("qkv"):
                yield MatrixSpec(f"{base}.{part}", "MultiheadAttention", v[i * E:(i + 1) * E])
        elif leaf.startswith(("weight_ih_l", "weight_hh_l")) and len(shape) == 2:
            h = hidden.get(key.rsplit("weight_", 1)[0], 0)
            gates = {4: _RNN_GATES["LSTM"], 3: _RNN_GATES["GRU"]}.get(shape[0] // h if h else 1, ("h",))
            yield from _split_gates(key, {4: "LSTM", 3: "GRU"}.get(len(gates), "RNN"), v, gates, axis=0)
        elif leaf in ("weight", "kernel", "embeddings") or leaf.endswith("_weight") or "." not in key:
            if len(shape) == 2:
                typ = "Embedding" if ("embed" in key.lower() or "wte" in key or "wpe" in key) else "Linear"
                yield MatrixSpec(base if leaf in ("weight", "kernel") else key, typ, v)
            elif len(shape) in (3, 4, 5):
                typ = f"Conv{len(shape) - 2}d"
                yield MatrixSpec(base, typ, _conv_stack(v, False), 0.5 if typ == "Conv2d" else 1.0)
            else:
                skip(key, f"{len(shape)}-D array: no layer rule for this name and shape {shape}")
        else:
            skip(key, f"{len(shape)}-D array: no layer rule for this name and shape {shape}")


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
        return np.issubdtype(np.dtype(dt), np.floating)
    except TypeError:
        return "float" in str(dt) or "bfloat" in str(dt)
