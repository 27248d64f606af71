"""What wwmonitor analyses in a model, weight by weight: :func:`describe` and :func:`coverage_summary`.

``describe(model_or_path)`` lists every weight tensor of >= 2 dimensions --
state-dict entry (torch parameters and persistent buffers), or Keras weight --
with the matrices analysed from it, or the reason it is skipped; nothing is
dropped silently.  ``coverage_summary(specs, skipped)`` is the one-line
summary the monitor logs when it starts.

Only numpy is needed to import this module; :func:`describe` imports pandas.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

from .layers import MatrixSpec, weight_inventory

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["describe", "coverage_summary", "COLUMNS"]

#: the columns of :func:`describe`'s table
COLUMNS = ["param", "matrix", "shape", "type", "status", "reason"]


def describe(model_or_path: Any, *, conv: str = "pool", lora: str = "effective") -> pd.DataFrame:
    """One row per weight tensor of >= 2 dimensions of ``model_or_path``, in model order.

    ``model_or_path``: a torch ``nn.Module``, a Keras 3 model, a mapping of
    name -> array (``state_dict``), or a path that :func:`wwmonitor.analyze_model`
    accepts (``.safetensors``, Hugging Face folder, torch checkpoint, ``.npz``,
    ``.keras``).

    Columns: ``param`` (state-dict key / Keras weight path ``<layer>/<weight>``),
    ``matrix`` (the matrices analysed from it, comma-separated; ``""`` when
    skipped), ``shape`` (tuple), ``type`` (owning module / layer class; ``""``
    for a state-dict entry that is not analysed), ``status`` (``"analysed"`` or
    ``"skipped"``), ``reason`` (why it is skipped; for an analysed weight ``""``
    or how it is analysed: the base weight and ``lora_A`` / ``lora_B`` factors
    of a peft LoRA layer are ``"analysed as part of <layer> (effective
    weight)"``, the factors of an inactive adapter are skipped with the reason).
    ``lora``: what is analysed of a LoRA layer (``"effective"``,
    ``"effective+update"``, ``"all"``; see :mod:`wwmonitor.layers`).

    ``df.attrs`` holds ``source`` (the path, if any), ``num_matrices`` (the
    matrices a monitor or ``analyze_model`` would analyse, with
    ``conv=conv``), ``num_vectors`` (0-D/1-D entries -- biases, norms -- not
    listed) and ``num_other`` (mapping values that are not arrays, not listed).
    """
    import pandas as pd

    source = ""
    obj = model_or_path
    if isinstance(obj, (str, os.PathLike)):
        from .checkpoint import load_weights

        source = str(obj)
        obj = load_weights(obj)
    specs, entries = weight_inventory(obj, conv=conv, lora=lora)
    rows = []
    vectors = other = 0
    for e in entries:
        if e.shape is None:
            other += 1
            continue
        if len(e.shape) < 2:
            vectors += 1
            continue
        rows.append(
            {
                "param": e.param,
                "matrix": ", ".join(e.matrices),
                "shape": tuple(e.shape),
                "type": e.type,
                "status": "analysed" if e.matrices else "skipped",
                "reason": e.reason,
            }
        )
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs.update({"source": source, "num_matrices": len(specs), "num_vectors": vectors, "num_other": other})
    return df


def coverage_summary(specs: Sequence[MatrixSpec], skipped: Sequence[tuple[str, str]], *, show: int = 5) -> str:
    """One line: how many matrices are monitored, of which layer types, and what was skipped and why.

    ``specs``: the monitored matrices (``extract_matrices(...)``); ``skipped``:
    its ``skipped=`` list of ``(name, reason)``.  Skipped weights that are
    matrices (a shape the rules do not know, tied copies, ...) are named
    first, then vectors (biases, norms); at most ``show`` names, then a count.

    ``"wwmonitor: monitoring 14 matrices in 2 layer types (Conv1D 12, Embedding 2); skipped 27:
    lm_head.weight (same tensor as transformer.wte.weight ...), transformer.h.0.ln_1.weight (not a matrix (1-D)),
    ... (+22 more)"``
    """
    types = Counter(str(s.type) for s in specs)
    n_types = len(types)
    kinds = ", ".join(f"{t} {n}" for t, n in sorted(types.items(), key=lambda kv: (-kv[1], kv[0])))
    line = (
        f"wwmonitor: monitoring {len(specs)} matri{'x' if len(specs) == 1 else 'ces'} in {n_types} layer "
        f"type{'' if n_types == 1 else 's'}" + (f" ({kinds})" if kinds else "")
    )
    if not skipped:
        return line + "; skipped none"

    def is_vector(reason: str) -> bool:
        return reason.startswith(("not a matrix (0-D)", "not a matrix (1-D)"))

    ordered = [x for x in skipped if not is_vector(x[1])] + [x for x in skipped if is_vector(x[1])]
    shown = ", ".join(f"{n} ({' '.join(str(r).split())})" for n, r in ordered[:show])
    more = f", ... (+{len(ordered) - show} more)" if len(ordered) > show else ""
    return f"{line}; skipped {len(skipped)}: {shown}{more}"
