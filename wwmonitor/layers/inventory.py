"""The entry points: :func:`weight_inventory` dispatches to the framework adapter, :func:`extract_matrices`
filters its result (see the package docstring for what becomes a matrix)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from ..frameworks import is_keras_model, is_torch_module
from .keras_layers import _keras_inventory
from .mapping import _mapping_inventory
from .spec import MatrixSpec, Pattern, WeightEntry, _select_skipped, _split_slices, check_lora, select
from .torch_modules import _torch_inventory


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
