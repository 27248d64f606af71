"""Model folders: which shard files make up the checkpoint, checked against the shard index, and adapter folders.

A Hugging Face folder may hold ``model.safetensors.index.json``, whose ``weight_map`` names the shard file
of every tensor.  :func:`safetensors_shards` reads it, and :func:`check_index` makes sure every tensor it
names was found in a shard: a shard named by the index but absent from the folder (an interrupted
download) is a ``ValueError`` naming the missing file and how many tensors it holds, never a silently smaller
model.

A PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) holds only the ``lora_A`` /
``lora_B`` factors of an update, not the weights of a model; :func:`refuse_adapter` raises a ``ValueError``
that says so and how to analyse the model with the adapter applied (see docs/reliability.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

#: the index files of sharded safetensors checkpoints that name each tensor's shard
INDEX_NAMES = ("model.safetensors.index.json",)
#: what marks a PEFT adapter folder
ADAPTER_CONFIG = "adapter_config.json"


def _read_index(folder: Path) -> Optional[tuple[Path, dict[str, str]]]:
    """``(index file, weight_map)`` of ``folder``, or ``None`` without an index; ``ValueError`` naming a bad one."""
    for name in INDEX_NAMES:
        idx = folder / name
        if not idx.is_file():
            continue
        try:
            doc = json.loads(idx.read_text(encoding="utf-8"))
            wmap = doc["weight_map"]
            if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
                raise TypeError("'weight_map' is not a mapping of tensor name -> shard file name")
        except (MemoryError, PermissionError):
            raise
        except Exception as e:  # noqa: BLE001 - JSONDecodeError, KeyError, TypeError: the index is unusable
            raise ValueError(f"{idx}: not a valid shard index ({type(e).__name__}: {' '.join(str(e).split())})") from e
        return idx, {str(k): v for k, v in wmap.items()}
    return None


def safetensors_shards(folder: Path) -> list[Path]:
    """The ``*.safetensors`` files of ``folder``, sorted by name.

    When the folder has a shard index, every shard it names must be there: a missing one is a ``ValueError``
    naming the file, the index and the number of tensors it should hold.
    """
    shards = sorted(folder.glob("*.safetensors"))
    read = _read_index(folder)
    if read is None:
        return shards
    idx, wmap = read
    present = {s.name for s in shards}
    missing: dict[str, int] = {}
    for shard in wmap.values():
        if shard not in present:
            missing[shard] = missing.get(shard, 0) + 1
    if missing:
        listed = ", ".join(f"{name} ({n} tensor{'s' if n != 1 else ''})" for name, n in sorted(missing.items()))
        raise ValueError(
            f"{folder}: shard file{'s' if len(missing) > 1 else ''} named by {idx.name} "
            f"{'are' if len(missing) > 1 else 'is'} missing: {listed}; download the missing shard(s) "
            "(an interrupted download?) or analyse a complete folder"
        )
    return shards


def check_index(folder: Path, origin: Mapping[str, Path]) -> None:
    """Every tensor that ``folder``'s shard index names was found in one of the shards read.

    ``origin``: tensor name -> the shard file it was read from.  A tensor the index names that no shard holds
    is a ``ValueError`` naming it and its shard (tensors in no index entry are analysed as found).
    """
    read = _read_index(folder)
    if read is None:
        return
    idx, wmap = read
    absent = [k for k, shard in wmap.items() if k not in origin]
    if absent:
        first = ", ".join(f"{k} (in {wmap[k]})" for k in absent[:5])
        more = f", ... ({len(absent) - 5} more)" if len(absent) > 5 else ""
        raise ValueError(
            f"{folder}: {len(absent)} tensor(s) named by {idx.name} are in no shard: {first}{more}; "
            "the shards do not match the index (re-download the checkpoint)"
        )


def refuse_adapter(path: Path) -> None:
    """``ValueError`` when ``path`` is a PEFT adapter folder or its ``adapter_model.*`` file.

    An adapter holds the low-rank factors of an update (``lora_A``, ``lora_B``), not the weights of a model;
    analysing the factors as Linear layers would give meaningless spectra.
    """
    folder = path if path.is_dir() else path.parent
    config = folder / ADAPTER_CONFIG
    if not config.is_file() or (not path.is_dir() and not path.name.startswith("adapter_model")):
        return
    base = ""
    try:
        base = str(json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") or "")
    except Exception:  # noqa: BLE001 - the base's name only improves the message
        base = ""
    named = f" for base model {base!r}" if base else ""
    raise ValueError(
        f"{path}: is a PEFT adapter{named} ({ADAPTER_CONFIG}), not a model: it holds only the lora_A/lora_B "
        "factors of an update, which are not analysed on their own. Analyse the model with the adapter applied "
        "instead: in Python, wwmonitor.analyze_model(peft.PeftModel.from_pretrained(base, folder), "
        "lora='effective+update') analyses each layer's effective weight and its update; or save the merged "
        "model (merge_and_unload().save_pretrained(...)) and analyse that folder"
    )
