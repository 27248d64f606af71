"""Whole-file loaders: :func:`load_weights` and one reader per format (see the package docstring)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

_TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}


def load_weights(path: os.PathLike | str) -> Any:
    """Load a model or weight mapping from ``path`` safely.

    Returns a mapping name -> array (or a Keras model for ``.keras``).
    Raises ``FileNotFoundError`` / ``ValueError`` naming the path and format.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    if p.is_dir():
        shards = sorted(p.glob("*.safetensors"))
        if shards:
            out: dict[str, Any] = {}
            origin: dict[str, Path] = {}
            for s in shards:
                for k, v in _load_safetensors(s).items():
                    if k in out:  # never let one shard silently replace another's tensor
                        raise ValueError(f"{p}: tensor {k!r} is in two shards, {origin[k].name} and {s.name}")
                    out[k], origin[k] = v, s
            return out
        for name in ("pytorch_model.bin", "model.pt", "model.pth"):
            if (p / name).exists():
                return _load_torch(p / name)
        raise ValueError(f"{p}: folder holds no *.safetensors or pytorch_model.bin weights")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(p)
    if suffix in _TORCH_SUFFIXES:
        return _load_torch(p)
    if suffix == ".npz":
        return _load_npz(p)
    if suffix == ".keras":
        import keras

        try:
            return keras.saving.load_model(p, safe_mode=True)
        except (MemoryError, PermissionError):
            raise
        except Exception as e:  # noqa: BLE001 - any failure to read the file is reported naming it
            raise ValueError(f"{p}: could not be loaded as a Keras model ({_one_line(e)})") from e
    raise ValueError(
        f"{p}: unknown weight file format {suffix!r}; expected .safetensors, .pt/.pth/.bin/.ckpt, "
        ".npz, .keras or a Hugging Face model folder"
    )


def _one_line(e: BaseException) -> str:
    """``Type: message`` of ``e`` on one line."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _load_safetensors(p: Path) -> dict[str, Any]:
    try:
        from safetensors.torch import load_file

        def load() -> dict[str, Any]:
            return dict(load_file(str(p), device="cpu"))
    except ImportError:
        try:
            from safetensors.numpy import load_file as load_np
        except ImportError as e:
            raise ImportError(
                f"{p}: reading .safetensors files needs the 'safetensors' package (pip install safetensors)"
            ) from e

        def load() -> dict[str, Any]:
            return dict(load_np(str(p)))

    try:
        return load()
    except (MemoryError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError
        raise ValueError(f"{p}: not a valid .safetensors file (truncated or corrupt?): {_one_line(e)}") from e


def _load_npz(p: Path) -> dict[str, Any]:
    """Arrays of an ``.npz`` archive, loaded without pickle; every problem a ``ValueError`` naming ``p``."""
    try:
        z = np.load(p, allow_pickle=False)
    except (MemoryError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # noqa: BLE001 - BadZipFile, EOFError, ValueError: not an archive
        what = (
            "numpy would read it as pickled data, which wwmonitor never loads" if "pickle" in str(e) else _one_line(e)
        )
        raise ValueError(f"{p}: not a valid .npz archive (not a zip archive of .npy arrays; {what})") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{p}: holds a single .npy array, not an .npz archive of named arrays "
            "(save weights with numpy.savez(path, name=array, ...))"
        )
    out: dict[str, Any] = {}
    with z:
        for k in z.files:
            try:
                out[k] = z[k]
            except MemoryError:
                raise
            except ValueError as e:
                if "pickle" in str(e):
                    raise ValueError(
                        f"{p}: array {k!r} is an object array, which needs pickle to load; wwmonitor loads "
                        ".npz files with allow_pickle=False (save numeric arrays only)"
                    ) from e
                raise ValueError(f"{p}: corrupt .npz archive (array {k!r}: {_one_line(e)})") from e
            except Exception as e:  # noqa: BLE001 - BadZipFile (CRC), zlib.error, EOFError: damaged member
                raise ValueError(f"{p}: corrupt .npz archive (array {k!r}: {_one_line(e)})") from e
    return out


def _load_torch(p: Path) -> dict[str, Any]:
    import torch

    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle with code objects is refused by weights_only
        raise ValueError(
            f"{p}: could not be loaded safely with torch.load(weights_only=True) ({type(e).__name__}: {e}). "
            "wwmonitor never unpickles arbitrary code; save a state_dict or a .safetensors file."
        ) from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        return obj
    raise ValueError(f"{p}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
