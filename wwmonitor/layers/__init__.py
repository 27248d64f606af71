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

Modules: :mod:`.spec` (the result types and the filter), :mod:`.inventory` (the entry points),
:mod:`.rules` (layout rules the adapters share), one adapter per input kind -- :mod:`.torch_modules`
(with :mod:`.torch_common` and :mod:`.peft_lora`), :mod:`.keras_layers`, :mod:`.mapping`.
"""

from __future__ import annotations

from ..frameworks import is_keras_model, is_torch_module
from .inventory import extract_matrices, weight_inventory
from .spec import LORA_MODES, LORA_UPDATE_SUFFIX, MatrixSpec, Pattern, WeightEntry, check_lora, select

__all__ = [
    "MatrixSpec",
    "WeightEntry",
    "Pattern",
    "extract_matrices",
    "weight_inventory",
    "select",
    "check_lora",
    "is_keras_model",
    "is_torch_module",
    "LORA_MODES",
    "LORA_UPDATE_SUFFIX",
]
