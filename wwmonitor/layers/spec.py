"""What the adapters produce: :class:`MatrixSpec` (one matrix to analyse), :class:`WeightEntry` (one weight
tensor and what became of it), and the name/type filter :func:`select`."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

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
