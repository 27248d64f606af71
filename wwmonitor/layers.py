"""Framework objects -> named weight matrices.

:func:`extract_matrices` turns a torch ``nn.Module``, a Keras 3 model, or a
mapping of parameter name -> array (a ``state_dict``, a safetensors file's
contents, an ``.npz``) into a list of :class:`MatrixSpec`;
:func:`weight_inventory` also returns one :class:`WeightEntry` per weight
tensor saying which matrices were taken from it, or why none was.

Layers are recognised by structure -- ``isinstance`` and weight shapes --
never by an exact type name, so subclasses count as their base layer.  What
becomes a matrix (``a x b``; the ESD does not depend on orientation):

* Linear / Dense / EinsumDense / Embedding: the weight (Keras: the
  *effective* ``kernel``, which includes a LoRA delta and dequantisation;
  EinsumDense kernels are reshaped to ``inputs x outputs`` from the equation).
* transformers' ``Conv1D`` (GPT-2, OpenAI GPT, ImageGPT, DecisionTransformer,
  CLVP): a Linear whose weight is stored ``in x out``; it is transposed to
  ``out x in``, like ``nn.Linear``.
* Conv1d/2d/3d and ConvTranspose (Keras ConvND/ConvNDTranspose): one
  ``out x in`` matrix per kernel position.  ``conv="pool"`` (default) keeps
  them as a stack ``(K, a, b)`` whose ESDs are pooled into one per layer;
  ``conv="slices"`` returns one spec per kernel position, named
  ``<layer>[i]``.  Grouped convolutions are analysed as their stored
  ``out x in/groups`` slices.  Depthwise kernels (torch ``groups ==
  in_channels``, Keras ``DepthwiseConv1D/2D`` and the depthwise half of
  ``SeparableConv1D/2D``) have no channel-mixing matrix: they are analysed
  like torch stores them, ``kh*kw`` slices of ``C*multiplier x 1``, pooled
  (``kh*kw`` eigenvalues, the per-tap filter energies -- too few for a
  power-law fit, so only norms are reported); Keras' separable pointwise
  kernel is the 1x1 conv ``<layer>.pointwise``.  See docs/faq.md.
* Fused projections, split into the parts the model uses:
  ``nn.MultiheadAttention.in_proj_weight`` -> ``.q``, ``.k``, ``.v``;
  GPT-2's ``c_attn`` (``Conv1D``) -> ``.q``, ``.k``, ``.v`` (``.k``, ``.v``
  for the cross-attention ``c_attn`` next to a ``q_attn``); Linear layers
  named ``qkv``, ``qkv_proj`` or ``Wqkv`` -> ``.q``, ``.k``, ``.v`` (ViT-style
  ``qkv``, BLIP, SAM, Qwen2-VL vision, Phi-3 ``qkv_proj``, ModernBERT, MPT and
  DBRX ``Wqkv``: query rows first, then key, then value; with grouped-query
  attention the query width is read from the sibling output projection
  ``o_proj``/``out_proj``/``Wo``/``proj``); Linear ``gate_up_proj`` ->
  ``.gate``, ``.up`` (halves: Phi-3, GLM, GLM-4, Dia).  Per-head interleaved
  layouts (GPT-NeoX, Bloom and Falcon ``query_key_value``) are analysed as
  one unsplit matrix.
* MoE expert banks stored as 3-D parameters ``(num_experts, a, b)``
  (transformers >= 5 ``...experts.gate_up_proj`` / ``down_proj``): one matrix
  per expert, named ``<param>[e]``, type ``Experts`` (gate and up are not
  split: their layout differs between families).
* RNN weights are split into gate blocks: LSTM ``i, f, g, o``; GRU
  ``r, z, n`` (torch) / ``z, r, h`` (Keras); plain RNN one block; the LSTM
  projection ``weight_hr_l*`` is one matrix.
* Learned tables broadcast over the batch, raw parameters of shape
  ``(1, N, d)`` (ViT's ``position_embeddings``): the ``N x d`` table, type
  ``Embedding``.

* peft LoRA layers (``lora.Linear`` over ``nn.Linear`` or GPT-2's ``Conv1D``,
  ``lora.Embedding``; recognised by their ``base_layer`` / ``lora_A`` /
  ``lora_B`` / ``scaling`` structure): the *effective* weight the layer
  computes with, ``W0 + Σ scaling[a] · B_a A_a`` over its active adapters
  (transposed like peft's ``fan_in_fan_out``; an adapter already merged into
  ``W0`` is not added twice; disabled adapters add nothing; dropout does not
  act on weights), named after the LoRA layer (``...attn.c_attn.q``) and
  split like the base layer.  It is computed afresh at every call (a new
  tensor, so a monitor copies the current value).  ``lora=`` adds
  ``<matrix>.lora_update`` (``"effective+update"``: the update
  ``Σ scaling · B A``, as a matrix of at most ``r`` rows/columns with the
  same non-zero singular values -- a rank-``r`` update has ``r`` non-zero
  eigenvalues, reported without a power-law fit below ``min_evals``) and
  ``<matrix>.base`` (``"all"``: ``W0`` without merged adapters).  The
  ``lora_A`` / ``lora_B`` factors are listed as analysed as part of the layer;
  those of inactive adapters as skipped.  LoRA variants (DoRA, ...) and
  other LoRA layer kinds (conv, attention) are walked as plain modules.

Tied weights (one tensor under several names: GPT-2's ``lm_head`` and
``wte``) are analysed once, under the first name; the others are listed as
skipped, ``"same tensor as <first>"``.

Every weight is accounted for: pass ``skipped=[]`` to
:func:`extract_matrices` to get ``(name, reason)`` for each mapping entry,
torch parameter (and >= 2-D persistent buffer) or Keras weight that is not
analysed -- 0-D/1-D arrays (biases, norms: ``"not a matrix (1-D)"``),
non-float arrays, values that are not arrays at all, nested mappings,
parameters of modules that are not analysed, tied copies, and arrays whose
name and shape match no layer rule.  Complex, sparse or otherwise unusable
*matrices* are not skipped here: they are returned and their analysis
reports the problem as the layer's status.

Names are stable: torch names are the module paths (the state-dict keys
without ``.weight``).  Keras names are the layer's path inside the model --
without the model's own (auto-numbered) name, nested models keep theirs
(``block/dense``) -- and layer names that Keras generated (``dense_7``) are
renumbered in model order within their scope (``dense``, ``dense_1``, ...),
so the same model built twice in one process, or saved and loaded, gets the
same names.

Framework imports happen lazily inside the adapters.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from .frameworks import is_keras_model, is_torch_module

__all__ = [
    "MatrixSpec",
    "WeightEntry",
    "extract_matrices",
    "weight_inventory",
    "select",
    "is_keras_model",
    "is_torch_module",
    "LORA_MODES",
    "LORA_UPDATE_SUFFIX",
]

Pattern = Union[str, type]

#: what is analysed of a peft LoRA layer: its effective weight; also the update; also the base weight
LORA_MODES = ("effective", "effective+update", "all")
#: name suffix of a LoRA update matrix (analysed in a compact form: not comparable entry by entry)
LORA_UPDATE_SUFFIX = ".lora_update"


@dataclass
class MatrixSpec:
    """One analysable weight matrix.

    ``tensor`` is 2-D, or a 3-D stack ``(K, a, b)`` of conv slices (pooled).
    ``scale`` multiplies the eigenvalues of ``WᵀW`` so that weightwatcher-named
    metrics match weightwatcher (0.5 for Conv2d, its ``conv2d_norm``).
    ``param``: the weight it was taken from (state-dict key / Keras weight
    path; ``""`` when unknown).
    """

    name: str
    type: str
    tensor: Any
    scale: float = 1.0
    param: str = ""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.tensor.shape)

    @property
    def num_evals(self) -> int:
        s = self.shape
        k = s[0] if len(s) == 3 else 1
        return k * min(s[-2:])


@dataclass
class WeightEntry:
    """One weight tensor of a model (state-dict entry, torch parameter or persistent buffer, Keras weight).

    ``param``: state-dict key / Keras weight path (``<layer>/<weight>``).
    ``shape``: ``None`` when the entry is not an array.  ``type``: the owning
    module / layer class (``""`` for mapping entries that were not analysed).
    ``matrices``: names of the matrices analysed from it (empty: skipped,
    ``reason`` says why; when analysed, ``reason`` may note how, e.g. a
    LoRA factor ``"analysed as part of <layer> (effective weight)"``).
    """

    param: str
    shape: Optional[tuple[int, ...]]
    type: str
    matrices: tuple[str, ...] = ()
    reason: str = ""

    @property
    def analysed(self) -> bool:
        return bool(self.matrices)

    @property
    def ndim(self) -> Optional[int]:
        return None if self.shape is None else len(self.shape)


def extract_matrices(
    obj: Any,
    *,
    layers: Optional[Sequence[Pattern]] = None,
    exclude: Optional[Sequence[Pattern]] = None,
    conv: str = "pool",
    skipped: Optional[list[tuple[str, str]]] = None,
    lora: str = "effective",
) -> list[MatrixSpec]:
    """All analysable matrices of ``obj``, filtered by ``layers``/``exclude``.

    ``layers`` / ``exclude`` entries are names or glob patterns (matched
    against the matrix name and its layer-module prefix), or layer type names
    (``"Linear"``, ``"Conv2d"``) / classes.

    ``skipped``: a list to which ``(name, reason)`` is appended for every
    mapping entry / torch parameter / Keras weight that is not analysed (see
    the module docstring), in model order.  Entries outside the ``layers``
    selection or matched by ``exclude`` (by name) are not listed: the caller
    asked for that.

    ``lora``: what is analysed of a peft LoRA layer (see the module
    docstring): ``"effective"`` (default), ``"effective+update"`` or ``"all"``.
    """
    specs, entries = weight_inventory(obj, conv=conv, lora=lora)
    out = select(specs, layers=layers, exclude=exclude)
    if skipped is not None:
        found = [(e.param, e.reason) for e in entries if not e.matrices]
        skipped.extend(_select_skipped(found, layers, exclude))
    return out


def weight_inventory(
    obj: Any, *, conv: str = "pool", lora: str = "effective"
) -> tuple[list[MatrixSpec], list[WeightEntry]]:
    """Every matrix of ``obj`` (unfiltered) and one :class:`WeightEntry` per weight tensor, in model order.

    Each entry names the matrices taken from it, or says why none was; every
    matrix's ``param`` names its entry.  ``lora``: see :func:`extract_matrices`.
    """
    if conv not in ("pool", "slices"):
        raise ValueError(f"conv must be 'pool' or 'slices', got {conv!r}")
    check_lora(lora)
    if is_keras_model(obj):  # before torch: a Keras model on the torch backend is also an nn.Module
        specs, entries = _keras_inventory(obj)
    elif is_torch_module(obj):
        specs, entries = _torch_inventory(obj, lora)
    elif isinstance(obj, Mapping):
        specs, entries = _mapping_inventory(obj)
    else:
        raise TypeError(
            f"cannot extract weight matrices from {type(obj).__name__}: expected a torch nn.Module, "
            "a Keras 3 model, or a mapping of parameter names to arrays"
        )
    if conv == "slices":
        parts = {spec.name: [s.name for s in _split_slices(spec)] for spec in specs if len(spec.shape) == 3}
        specs = [s for spec in specs for s in _split_slices(spec)]
        if parts:
            entries = [
                WeightEntry(e.param, e.shape, e.type, tuple(n for m in e.matrices for n in parts.get(m, [m])), e.reason)
                for e in entries
            ]
    return specs, entries


def check_lora(lora: Any, what: str = "lora") -> str:
    """``lora`` validated (one of :data:`LORA_MODES`); ``ValueError`` naming ``what`` otherwise."""
    if not isinstance(lora, str) or lora not in LORA_MODES:
        raise ValueError(f"{what} must be one of {LORA_MODES}, got {lora!r}")
    return lora


def _select_skipped(
    found: list[tuple[str, str]], layers: Optional[Sequence[Pattern]], exclude: Optional[Sequence[Pattern]]
) -> list[tuple[str, str]]:
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
    return (
        spec.type == pat
        or spec.name == pat
        or fnmatch.fnmatchcase(spec.name, pat)
        or spec.name.startswith(pat + ".")
        or spec.name.startswith(pat + "[")
    )


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
    return [
        MatrixSpec(f"{spec.name}[{k}]", spec.type, spec.tensor[k], spec.scale, spec.param) for k in range(spec.shape[0])
    ]


# ------------------------------------------------------- shared rules ----
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


# ---------------------------------------------------------------- torch ----
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


def _torch_rule(
    mname: str, mod: Any, modules: Mapping[str, Any]
) -> tuple[list[tuple[list[Any], list[MatrixSpec]]], dict[int, str]]:
    """The matrices a module's own weights make: ``([(parameters used, specs)], {id(param): skip reason})``."""
    import torch.nn as nn

    prefix = mname or "model"
    parent_name, _, leaf = mname.rpartition(".")
    groups: list[tuple[list[Any], list[MatrixSpec]]] = []
    reasons: dict[int, str] = {}
    own = getattr(mod, "_parameters", {})

    def full(rel: str) -> str:
        return f"{mname}.{rel}" if mname else rel

    def weight() -> tuple[Any, list[Any], str]:
        """The weight (``None`` unless it is a shaped tensor), its parameters, its state-dict key."""
        w, named = _torch_weight(mod)
        if w is None or _torch_shape(w) is None:
            return None, [], ""
        return w, [p for _, p in named], full(named[0][0]) if named else full("weight")

    if isinstance(mod, nn.Linear) or _is_hf_conv1d(mod):
        w, used, key = weight()
        if w is not None and w.ndim == 2:
            hf = _is_hf_conv1d(mod)
            t = w.detach().T if hf else w.detach()
            q_width, has_q = _fused_hints(mname, modules, hf)
            groups.append((used, _linear_specs(prefix, "Conv1D" if hf else "Linear", t, key, leaf, q_width, has_q)))
    elif isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
        w, used, key = weight()
        if w is not None and w.ndim == 2:
            groups.append((used, [MatrixSpec(prefix, "Embedding", w.detach(), 1.0, key)]))
    elif isinstance(mod, nn.modules.conv._ConvNd):
        w, used, key = weight()
        if w is not None and w.ndim >= 3:
            t = _torch_conv_type(mod)
            transposed = bool(getattr(mod, "transposed", False))
            scale = 0.5 if t == "Conv2d" else 1.0
            groups.append((used, [MatrixSpec(prefix, t, _conv_stack(w.detach(), transposed), scale, key)]))
    elif isinstance(mod, nn.MultiheadAttention):
        ipw = own.get("in_proj_weight")
        if ipw is not None and _torch_shape(ipw) is not None:
            E = ipw.shape[0] // 3
            groups.append(
                (
                    [ipw],
                    [
                        MatrixSpec(
                            f"{prefix}.{part}",
                            "MultiheadAttention",
                            ipw.detach()[i * E : (i + 1) * E],
                            1.0,
                            full("in_proj_weight"),
                        )
                        for i, part in enumerate("qkv")
                    ],
                )
            )
        else:
            for part in "qkv":
                p = own.get(f"{part}_proj_weight")
                if p is not None and _torch_shape(p) is not None:
                    groups.append(
                        (
                            [p],
                            [
                                MatrixSpec(
                                    f"{prefix}.{part}",
                                    "MultiheadAttention",
                                    p.detach(),
                                    1.0,
                                    full(f"{part}_proj_weight"),
                                )
                            ],
                        )
                    )
    elif isinstance(mod, (nn.RNNBase, nn.RNNCellBase)):
        if isinstance(mod, nn.RNNBase):
            t = {"LSTM": "LSTM", "GRU": "GRU"}.get(getattr(mod, "mode", ""), "RNN")
        else:
            t = "LSTM" if isinstance(mod, nn.LSTMCell) else "GRU" if isinstance(mod, nn.GRUCell) else "RNN"
        for pname, p in own.items():
            shape = _torch_shape(p) if p is not None else None
            if shape is None or len(shape) != 2:
                continue
            name = f"{prefix}.{pname}"
            if pname.startswith(("weight_ih", "weight_hh")):
                groups.append(([p], list(_split_gates(name, t, p.detach(), _RNN_GATES[t], 0, full(pname)))))
            elif pname.startswith("weight_hr"):  # LSTM projection (proj_size > 0)
                groups.append(([p], [MatrixSpec(name, t, p.detach(), 1.0, full(pname))]))
    n_experts = getattr(mod, "num_experts", None)
    for pname, p in own.items():  # raw parameters: expert banks, (1, N, d) tables, cls tokens
        if p is None or any(p is q for g in groups for q in g[0]):
            continue
        shape = _torch_shape(p)
        if shape is None or len(shape) < 2:
            continue
        key = full(pname)
        if (
            isinstance(n_experts, int)
            and len(shape) == 3
            and shape[0] == n_experts
            and n_experts > 0
            and p.is_floating_point()
        ):
            groups.append(([p], _expert_specs(key, p.detach(), key)))
        elif (
            pname == "weight"
            and len(shape) in (2, 3, 4, 5)
            and p.is_floating_point()
            and not isinstance(mod, nn.Bilinear)
        ):  # a custom layer's weight (MoE router, ...), as in a state dict
            if len(shape) == 2:
                groups.append(([p], [MatrixSpec(prefix, "Linear", p.detach(), 1.0, key)]))
            else:
                t = f"Conv{len(shape) - 2}d"
                groups.append(
                    ([p], [MatrixSpec(prefix, t, _conv_stack(p.detach(), False), 0.5 if t == "Conv2d" else 1.0, key)])
                )
        elif _table_shape(shape) and p.is_floating_point():
            groups.append(([p], [MatrixSpec(key, "Embedding", p.detach().reshape(_table_shape(shape)), 1.0, key)]))
        elif _is_single_vector(shape):
            reasons[id(p)] = _vector_reason(shape)
    return groups, reasons


def _torch_inventory(model: Any, lora: str = "effective") -> tuple[list[MatrixSpec], list[WeightEntry]]:
    specs: list[MatrixSpec] = []
    entries: list[WeightEntry] = []
    modules = dict(model.named_modules())
    claimed: dict[int, tuple[str, ...]] = {}  # id(parameter) -> the matrices made from it
    reasons: dict[int, str] = {}
    notes: dict[int, str] = {}  # id(parameter) -> how it is analysed (LoRA factors: as part of their layer)
    held: dict[int, str] = {}  # id(parameter) -> why no module may analyse it (inactive LoRA adapters)
    first: dict[int, str] = {}  # id(tensor) -> the first name it was listed under
    try:
        walk = list(model.named_modules(remove_duplicate=False))
    except TypeError:  # very old torch
        walk = list(model.named_modules())
    for mname, mod in walk:  # first the matrices (a tied weight may be claimed by a later module) ...
        lr = _peft_lora_rule(mname, mod, modules, lora) if _is_peft_lora(mod) else None
        how: dict[int, str] = {}
        why: dict[int, str]
        if lr is not None:  # the LoRA layer is walked before its base layer and factors, which it claims
            groups, why, how = lr[0], {}, lr[2]
            held.update(lr[1])
        else:
            groups, why = _torch_rule(mname, mod, modules)
        reasons.update(why)
        for used, made in groups:
            if any(id(p) in claimed or id(p) in held for p in used):  # tied: its matrices are already in the list
                continue
            notes.update({id(p): how[id(p)] for p in used if id(p) in how})
            specs.extend(made)
            names = tuple(s.name for s in made)
            for p in used:
                claimed[id(p)] = names
    for mname, mod in walk:  # ... then every parameter and persistent >= 2-D buffer, under each of its names
        t = type(mod).__name__
        for pname, p in getattr(mod, "_parameters", {}).items():
            if p is None:
                continue
            full = f"{mname}.{pname}" if mname else pname
            shape = _torch_shape(p)
            if id(p) in first:
                entries.append(WeightEntry(full, shape, t, (), _tied_reason(first[id(p)], id(p) in claimed)))
                continue
            first[id(p)] = full
            if shape is None:
                entries.append(WeightEntry(full, None, t, (), "parameter without a shape (uninitialised lazy module?)"))
            elif id(p) in claimed:
                entries.append(WeightEntry(full, shape, t, claimed[id(p)], notes.get(id(p), "")))
            elif id(p) in held:
                entries.append(WeightEntry(full, shape, t, (), held[id(p)]))
            elif len(shape) < 2:
                entries.append(WeightEntry(full, shape, t, (), f"not a matrix ({len(shape)}-D)"))
            elif id(p) in reasons:
                entries.append(WeightEntry(full, shape, t, (), reasons[id(p)]))
            elif not p.is_floating_point():
                entries.append(WeightEntry(full, shape, t, (), f"not floating point (dtype {p.dtype})"))
            else:
                entries.append(
                    WeightEntry(
                        full,
                        shape,
                        t,
                        (),
                        f"{len(shape)}-D parameter of a {t} module, which wwmonitor does not analyse",
                    )
                )
        transient: set[str] = getattr(mod, "_non_persistent_buffers_set", set())
        for bname, b in getattr(mod, "_buffers", {}).items():
            shape = _torch_shape(b) if b is not None else None
            if shape is None or len(shape) < 2 or bname in transient:
                continue  # state-dict entries only; vectors of buffers (BatchNorm statistics) are not weights
            full = f"{mname}.{bname}" if mname else bname
            if id(b) in first:
                entries.append(WeightEntry(full, shape, t, (), _tied_reason(first[id(b)], False)))
                continue
            first[id(b)] = full
            entries.append(
                WeightEntry(full, shape, t, (), f"{len(shape)}-D buffer of a {t} module (not a trained parameter)")
            )
    return specs, entries


# ----------------------------------------------------------------- peft ----
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


def _peft_lora_rule(
    mname: str, mod: Any, modules: Mapping[str, Any], lora: str
) -> Optional[tuple[list[tuple[list[Any], list[MatrixSpec]]], dict[int, str], dict[int, str]]]:
    """The matrices of a peft LoRA layer: ``([(parameters used, specs)], {id: skip reason}, {id: note})``,
    or ``None`` when it is not one this rule computes (then its submodules are walked as usual).

    The effective weight mirrors peft's merge (``get_delta_weight`` + in-place add): for every
    contributing adapter ``a``, ``delta = transpose(B_a @ A_a, fan_in_fan_out) * scaling[a]`` (in
    float32 for (b)float16 factors on the CPU, as peft does) added to a copy of the base weight.
    """
    import torch
    import torch.nn as nn

    base = _unwrap_lora(mod)
    hf = _is_hf_conv1d(base)
    embedding = isinstance(base, nn.Embedding)
    if not (isinstance(base, nn.Linear) or hf or embedding):
        return None
    w = getattr(base, "_parameters", {}).get("weight")
    if w is None or _torch_shape(w) is None or w.ndim != 2 or not w.is_floating_point():
        return None  # parametrized / quantized / lazy base weights: walked as plain modules
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
        return None  # DoRA and other variants: their effective weight is not W0 + s·BA
    fifo = embedding or bool(getattr(mod, "fan_in_fan_out", False))

    def delta(a: str) -> Any:  # storage orientation, as peft's get_delta_weight
        A, B = factors[a]
        cast = B.device.type == "cpu" and B.dtype in (torch.float16, torch.bfloat16)
        d = B.float() @ A.float() if cast else B @ A
        d = (d.T if fifo else d) * scaling[a]
        return d.to(B.dtype) if cast else d

    prefix = mname or "model"
    path, m = mname, mod
    while m is not base:  # the base layer's own path (through nested wrappers)
        path, m = f"{path}.base_layer" if path else "base_layer", m._modules["base_layer"]
    key = f"{path}.weight"
    with torch.no_grad():
        W = w.detach()
        base_w = W
        if merged:  # W0: the base weight without the merged adapters (peft's unmerge, in reverse order)
            base_w = W.clone()
            for a in reversed(merged):
                base_w.sub_(delta(a).to(W.dtype))
        if disabled:
            eff = base_w.clone() if base_w is W else base_w
        else:
            eff = W.clone()  # always a new tensor: the monitor never caches a computed weight
            if not merged:
                for a in contrib:
                    eff.add_(delta(a))
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
    used = [w] + [p for a in contrib for p in factors[a]]
    out = list(made)
    if lora in ("effective+update", "all"):
        out += _lora_update_specs(
            parts,
            typ,
            factors,
            contrib or active or list(factors),
            bool(contrib),
            scaling,
            transposed=fifo != hf,
            param=_lora_param(mname, contrib or list(factors), embedding),
        )
    if lora == "all":
        b_an = base_w.T if hf else base_w
        out += [MatrixSpec(f"{n}.base", typ, b_an[s : s + k], 1.0, key) for n, s, k in parts]
    note = f"analysed as part of {prefix} (effective weight)"
    notes = {id(p): note for p in used}
    held: dict[int, str] = {}
    for a, pair in factors.items():
        if a in contrib:
            continue
        why = (
            f"LoRA adapters of {prefix} are disabled: not part of its effective weight"
            if disabled
            else f"LoRA adapter {a!r} of {prefix} is not active: not part of its effective weight"
        )
        for p in pair:
            held[id(p)] = why
    return [(used, out)], held, notes


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


# ---------------------------------------------------------------- keras ----
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


def _keras_inventory(model: Any) -> tuple[list[MatrixSpec], list[WeightEntry]]:
    from keras import ops

    def npy(v: Any) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(v))

    cls = _keras_classes()
    walk = _keras_walk(model)
    kids_of: dict[int, list[Any]] = {}
    for _, lyr in [("", model)] + walk:
        kids_of[id(lyr)] = _keras_children(lyr)
    # names of the variables: <layer name>/<variable name>, each variable once, in model order
    pname: dict[int, str] = {}
    order: list[tuple[Any, Any]] = []  # (variable, owning layer)
    for name, lyr in [("", model)] + walk:
        for v in _keras_own_variables(lyr, kids_of.get(id(lyr), [])):
            if id(v) in pname:
                continue
            vname = str(getattr(v, "name", "")).rsplit("/", 1)[-1]
            pname[id(v)] = f"{name}/{vname}" if name else vname
            order.append((v, lyr))
    top = str(getattr(model, "name", ""))
    for v in getattr(model, "weights", []):  # anything not held by a layer of the walk
        if id(v) not in pname:
            path = str(getattr(v, "path", None) or getattr(v, "name", "weight"))
            pname[id(v)] = path[len(top) + 1 :] if top and path.startswith(top + "/") else path
            order.append((v, None))

    def var(lyr: Any, *names: str) -> list[Any]:
        return [
            v
            for v in _keras_own_variables(lyr, kids_of.get(id(lyr), []))
            if str(getattr(v, "name", "")).rsplit("/", 1)[-1] in names
        ]

    specs: list[MatrixSpec] = []
    claimed: dict[int, tuple[str, ...]] = {}

    def add(used: list[Any], made: list[MatrixSpec]) -> None:
        if not used or any(id(v) in claimed for v in used):
            return
        specs.extend(made)
        for v in used:
            claimed[id(v)] = tuple(s.name for s in made)

    for name, lyr in walk:
        if isinstance(lyr, cls["dense"]):
            used = var(lyr, "kernel", "lora_kernel_a", "lora_kernel_b")
            k = getattr(lyr, "kernel", None)
            if k is not None and used:
                t = _keras_base(lyr, cls["dense"])
                add(
                    used,
                    [
                        MatrixSpec(
                            name,
                            t,
                            _einsum_matrix(npy(k), getattr(lyr, "equation", None)),
                            1.0,
                            pname.get(id(used[0]), ""),
                        )
                    ],
                )
        elif isinstance(lyr, cls["embedding"]):
            used = var(lyr, "embeddings", "lora_embeddings_a", "lora_embeddings_b")
            e = getattr(lyr, "embeddings", None)
            if e is not None and used:
                add(used, [MatrixSpec(name, "Embedding", npy(e), 1.0, pname.get(id(used[0]), ""))])
            for v in var(lyr, "reverse_embeddings"):  # keras_hub ReversibleEmbedding, untied output projection
                add([v], [MatrixSpec(f"{name}.reverse", "Embedding", npy(v), 1.0, pname[id(v)])])
        elif isinstance(lyr, cls["depthwise"]):
            t = _keras_base(lyr, cls["depthwise"])
            for v in var(lyr, "kernel", "depthwise_kernel"):
                add(
                    [v],
                    [
                        MatrixSpec(
                            name, t, _keras_depthwise_stack(npy(v)), 0.5 if t.endswith("2D") else 1.0, pname[id(v)]
                        )
                    ],
                )
        elif isinstance(lyr, cls["separable"]):
            t = _keras_base(lyr, cls["separable"])
            scale = 0.5 if t.endswith("2D") else 1.0
            for v in var(lyr, "depthwise_kernel"):
                add([v], [MatrixSpec(f"{name}.depthwise", t, _keras_depthwise_stack(npy(v)), scale, pname[id(v)])])
            for v in var(lyr, "pointwise_kernel"):
                k = npy(v)
                add(
                    [v],
                    [MatrixSpec(f"{name}.pointwise", t, k.reshape(-1, k.shape[-2], k.shape[-1]), scale, pname[id(v)])],
                )
        elif isinstance(lyr, cls["conv"]):
            used = var(lyr, "kernel")
            k = getattr(lyr, "kernel", None)
            if k is not None and used:
                k = npy(k)  # (*spatial, in, out) or transposed (*spatial, out, in)
                if k.ndim >= 3:
                    t = _keras_base(lyr, cls["conv"])
                    add(
                        used,
                        [
                            MatrixSpec(
                                name,
                                t,
                                k.reshape(-1, k.shape[-2], k.shape[-1]),
                                0.5 if t == "Conv2D" else 1.0,
                                pname[id(used[0])],
                            )
                        ],
                    )
        elif isinstance(lyr, cls["rnn"]) or isinstance(lyr, cls["cell"]):
            if isinstance(lyr, cls["rnn"]):
                t = _keras_base(lyr, cls["rnn"])
                cell = getattr(lyr, "cell", lyr)
            else:
                t = _keras_base(lyr, cls["cell"]).replace("Cell", "")
                cell = lyr
            for attr in ("kernel", "recurrent_kernel"):
                v = getattr(cell, attr, None)
                if v is not None and len(getattr(v, "shape", ())) == 2:
                    add(
                        [v],
                        list(
                            _split_gates(
                                f"{name}.{attr}",
                                t,
                                npy(v),
                                _KERAS_GATES.get(t, ("h",)),
                                axis=1,
                                param=pname.get(id(v), ""),
                            )
                        ),
                    )

    entries: list[WeightEntry] = []
    for v, lyr in order:
        shape = tuple(int(s) for s in getattr(v, "shape", ()))
        t = type(lyr).__name__ if lyr is not None else ""
        p = pname[id(v)]
        if id(v) in claimed:
            entries.append(WeightEntry(p, shape, t, claimed[id(v)]))
        elif len(shape) < 2:
            entries.append(WeightEntry(p, shape, t, (), f"not a matrix ({len(shape)}-D)"))
        elif "float" not in str(getattr(v, "dtype", "float")):
            entries.append(WeightEntry(p, shape, t, (), f"not floating point (dtype {v.dtype})"))
        elif _is_single_vector(shape):
            entries.append(WeightEntry(p, shape, t, (), _vector_reason(shape)))
        elif p.rsplit("/", 1)[-1] == "bias":  # EinsumDense: one bias per head and unit
            entries.append(WeightEntry(p, shape, t, (), f"a bias ({len(shape)}-D), not a weight matrix"))
        else:
            what = f"a {t} layer" if t else "no layer of the model"
            entries.append(
                WeightEntry(p, shape, t, (), f"{len(shape)}-D weight of {what}, which wwmonitor does not analyse")
            )
    return specs, entries


# -------------------------------------------------------------- mapping ----
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
