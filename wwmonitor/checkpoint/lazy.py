"""Streaming: safetensors headers read, tensors memory-mapped one at a time (see the package docstring)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from .load import _one_line, load_weights

#: safetensors dtype codes NumPy maps directly (little-endian, as the format stores them)
_ST_NUMPY = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "C64": "<c8",
    "I64": "<i8",
    "U64": "<u8",
    "I32": "<i4",
    "U32": "<u4",
    "I16": "<i2",
    "U16": "<u2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
#: the other dtypes, by the name the inventory reports (BF16 is read as its bits and widened exactly to float32;
#: the 8-bit and smaller floats are read through safetensors' torch reader)
_ST_OTHER = {
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "F6_E2M3": "float6_e2m3",
    "F6_E3M2": "float6_e3m2",
    "F4": "float4_e2m1",
}


def _stub(shape: Sequence[int]) -> np.ndarray:
    """A zero-stride uint8 array of ``shape``: applying a view operation to it gives the result's shape for free."""
    return np.broadcast_to(np.zeros((), dtype=np.uint8), tuple(shape))


class LazyTensor:
    """One tensor of a ``.safetensors`` file, not read yet.

    ``shape``, ``dtype`` and ``ndim`` come from the file's header; the view
    operations the layer rules apply (``[...]`` with ints and slices, ``.T``,
    ``reshape``, ``permute``) are recorded, not executed.  :meth:`load` maps
    the tensor's bytes read-only (``numpy.memmap``: nothing is copied, pages
    are read as the analysis touches them and released when the array is
    dropped) and applies the recorded operations as views.  ``dtype`` is a
    NumPy dtype, or for dtypes NumPy lacks a name such as ``"bfloat16"``;
    bfloat16 loads as float32 (exact widening).
    """

    __slots__ = ("file", "key", "code", "offset", "nbytes_stored", "stored_shape", "ops", "shape", "dtype")

    def __init__(
        self,
        file: Path,
        key: str,
        code: str,
        offset: int,
        nbytes: int,
        shape: Sequence[int],
        ops: tuple[tuple[Any, ...], ...] = (),
        view_shape: Optional[tuple[int, ...]] = None,
    ) -> None:
        self.file, self.key, self.code, self.offset, self.nbytes_stored = file, key, code, int(offset), int(nbytes)
        self.stored_shape = tuple(int(s) for s in shape)
        self.ops = ops
        self.shape = self.stored_shape if view_shape is None else view_shape
        self.dtype: Any = np.dtype(_ST_NUMPY[code]) if code in _ST_NUMPY else _ST_OTHER.get(code, f"safetensors {code}")

    # ---- array-like metadata
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        ops = "".join(f".{o[0]}" for o in self.ops)
        return f"LazyTensor({self.file.name}:{self.key}{ops}, shape={self.shape}, dtype={self.dtype})"

    # ---- recorded view operations
    def _then(self, op: tuple[Any, ...], shape: tuple[int, ...]) -> "LazyTensor":
        return LazyTensor(
            self.file,
            self.key,
            self.code,
            self.offset,
            self.nbytes_stored,
            self.stored_shape,
            self.ops + (op,),
            tuple(int(s) for s in shape),
        )

    def __getitem__(self, index: Any) -> "LazyTensor":
        return self._then(("getitem", index), _stub(self.shape)[index].shape)

    @property
    def T(self) -> "LazyTensor":  # noqa: N802 - array protocol
        return self._then(("T",), _stub(self.shape).T.shape)

    def reshape(self, *shape: Any) -> "LazyTensor":
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return self._then(("reshape", shape), _stub(self.shape).reshape(shape).shape)

    def permute(self, *dims: Any) -> "LazyTensor":
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        return self._then(("permute", dims), np.transpose(_stub(self.shape), dims).shape)

    # ---- reading
    def load(self) -> Any:
        """The tensor (with the recorded views applied): a read-only NumPy array backed by the
        memory-mapped file (bfloat16: a float32 copy of the viewed part; 8-bit floats: a torch
        tensor from safetensors' reader).  Raises ``ValueError`` naming the file and tensor."""
        try:
            x = _map_tensor(self.file, self.key, self.code, self.offset, self.nbytes_stored, self.stored_shape)
            for op in self.ops:
                x = _apply_op(x, op)
            if self.code == "BF16":  # the upper half of a float32: widen exactly, only the part viewed, in place
                bits = np.asarray(x, dtype=np.uint32)
                bits <<= 16
                x = bits.view(np.float32)
            return x
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - any failure to read names the file and the tensor
            raise ValueError(f"{self.file}: could not read tensor {self.key!r}: {_one_line(e)}") from e

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = np.asarray(self.load())
        return a if dtype is None else a.astype(dtype)


def _map_tensor(file: Path, key: str, code: str, offset: int, nbytes: int, shape: tuple[int, ...]) -> Any:
    """The stored tensor ``key`` of ``file``: memory-mapped read-only (NumPy dtypes; BF16 as its
    uint16 bits), or read by safetensors' torch reader for dtypes NumPy lacks."""
    if code in _ST_NUMPY or code == "BF16":
        dt = np.dtype(_ST_NUMPY.get(code, "<u2"))
        n = int(math.prod(shape))
        if n * dt.itemsize != nbytes:
            raise ValueError(f"tensor {key!r}: header says {nbytes} bytes for shape {shape} of {code}")
        if n == 0:
            return np.zeros(shape, dtype=dt)
        return np.memmap(file, dtype=dt, mode="r", offset=offset, shape=shape or (1,)).reshape(shape)
    from safetensors import safe_open  # 8-bit floats and newer: torch's dtypes

    with safe_open(str(file), framework="pt") as f:
        return f.get_tensor(key)


def _apply_op(x: Any, op: tuple[Any, ...]) -> Any:
    kind = op[0]
    if kind == "getitem":
        return x[op[1]]
    if kind == "T":
        return x.T
    if kind == "reshape":
        return x.reshape(op[1])
    if kind == "permute":
        return x.permute(*op[1]) if hasattr(x, "permute") else np.transpose(x, op[1])
    raise ValueError(f"unknown view operation {kind!r}")


class LazyWeights(Mapping):
    """Mapping name -> :class:`LazyTensor` over one ``.safetensors`` file or a folder of shards.

    Built from the headers only (:func:`open_weights`); in the order
    :func:`load_weights` returns the tensors (shards sorted by name, tensors by
    position in the shard).  :meth:`iter_arrays` yields ``(name, array)`` one
    tensor at a time.
    """

    def __init__(self, entries: dict[str, LazyTensor], files: Sequence[Path], source: Path) -> None:
        self._entries = entries
        self.files = list(files)
        self.source = source

    def __getitem__(self, key: str) -> LazyTensor:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"LazyWeights({self.source}, {len(self)} tensors in {len(self.files)} file(s))"

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data in the files."""
        return sum(t.nbytes_stored for t in self._entries.values())

    def iter_arrays(self) -> Iterator[tuple[str, Any]]:
        """``(name, array)`` for every tensor, each read only when reached; drop it before the next."""
        for k, t in self._entries.items():
            yield k, t.load()

    @classmethod
    def from_files(cls, files: Sequence[Path], source: Optional[Path] = None) -> "LazyWeights":
        entries: dict[str, LazyTensor] = {}
        origin: dict[str, Path] = {}
        for f in files:
            for t in _read_safetensors_header(f):
                if t.key in entries:  # never let one shard silently replace another's tensor
                    raise ValueError(
                        f"{source or f}: tensor {t.key!r} is in two shards, {origin[t.key].name} and {f.name}"
                    )
                entries[t.key], origin[t.key] = t, f
        return cls(entries, files, source or Path(files[0]))


def _read_safetensors_header(p: Path) -> list[LazyTensor]:
    """The tensors of ``p`` from its header (no tensor data is read), in file order.

    The file is validated by safetensors itself (header, dtypes, offsets and
    size); a file it refuses is a ``ValueError`` naming ``p``.
    """
    try:
        from safetensors import safe_open
    except ImportError as e:
        raise ImportError(
            f"{p}: reading .safetensors files needs the 'safetensors' package (pip install safetensors)"
        ) from e
    try:
        with safe_open(str(p), framework="numpy") as f:  # checks the header against the file
            order = list(f.offset_keys()) if hasattr(f, "offset_keys") else list(f.keys())
        with open(p, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        out = []
        for k in order:
            info = header[k]
            begin, end = (int(v) for v in info["data_offsets"])
            out.append(LazyTensor(p, k, str(info["dtype"]), 8 + n + begin, end - begin, info["shape"]))
        return out
    except (MemoryError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError
        raise ValueError(f"{p}: not a valid .safetensors file (truncated or corrupt?): {_one_line(e)}") from e


def open_weights(path: os.PathLike | str) -> Any:
    """Open the weights at ``path`` for streaming where the format allows it.

    A ``.safetensors`` file or a folder of ``*.safetensors`` shards gives a
    :class:`LazyWeights` (name -> :class:`LazyTensor`, nothing read but the
    headers; errors as :func:`load_weights`: a corrupt shard or a tensor in
    two shards is a ``ValueError`` naming the file).  Any other format is
    loaded whole by :func:`load_weights`.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    if p.is_dir():
        shards = sorted(p.glob("*.safetensors"))
        if shards:
            return LazyWeights.from_files(shards, p)
    elif p.suffix.lower() == ".safetensors":
        return LazyWeights.from_files([p], p)
    return load_weights(p)


def iter_weights(path: os.PathLike | str) -> Iterator[tuple[str, Any]]:
    """``(name, array)`` of every weight at ``path``; for safetensors one tensor at a time
    (memory-mapped, read when reached), for other formats from the loaded dict."""
    w = open_weights(path)
    if isinstance(w, LazyWeights):
        yield from w.iter_arrays()
    elif isinstance(w, Mapping):
        yield from w.items()
    else:
        raise ValueError(f"{path}: holds a model ({type(w).__name__}), not a mapping of named weights")
