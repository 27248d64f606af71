"""Model-level analysis: :func:`analyze_model` and :class:`ModelReport`.

Accepts a torch ``nn.Module``, a ``state_dict`` (or any mapping of name ->
array), a Keras 3 model, or a path: ``.safetensors`` file, Hugging Face
style folder (``*.safetensors`` shards or ``pytorch_model.bin``), torch
checkpoint (``.pt/.pth/.bin/.ckpt``, loaded with ``weights_only=True``),
``.npz`` (``allow_pickle=False``) or ``.keras``.  Nothing is ever unpickled
with arbitrary code execution.  A file that cannot be read as its format
(truncated, corrupt, an ``.npz`` holding object arrays that would need
pickle) raises ``ValueError`` naming the file and the problem.

Every entry is accounted for: a :class:`ModelReport` holds one
:class:`~wwmonitor.metrics.LayerMetrics` per analysed matrix (with its
``status``) and ``skipped``, the ``(name, reason)`` of every other entry.

Streaming: given the path of a ``.safetensors`` file or of a folder of
shards, :func:`analyze_model` never loads the checkpoint.  It reads the
shards' headers (:func:`open_weights`: names, shapes, dtypes, offsets) and
each analysis thread then maps one tensor, read-only, analyses it and drops
it, so at most ``workers`` tensors are resident at once and peak memory
follows the largest tensor, not the checkpoint (docs/benchmarks.md,
"Streaming checkpoint analysis").  Under ``torch.distributed`` each rank
maps only the tensors of the matrices it analyses.  :func:`load_weights`
still returns everything as a dict for callers that want one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from .analyze import DEFAULT_OPTIONS, AnalysisOptions, analyze_spec
from .layers import MatrixSpec, Pattern, extract_matrices
from .metrics import LayerMetrics
from .spectral import blas_thread_limit, resolve_device, usable_cpus

__all__ = [
    "analyze_model",
    "ModelReport",
    "load_weights",
    "open_weights",
    "iter_weights",
    "LazyWeights",
    "LazyTensor",
    "summarize",
]

_TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}

log = logging.getLogger("wwmonitor")


@dataclass
class ModelReport:
    """Per-matrix metrics of a model plus model-level summaries.

    ``layers``: one entry per analysed matrix, in model order (a matrix that
    could not be analysed is there with its ``status``/``message``).
    ``skipped``: ``(name, reason)`` of every state-dict entry / torch
    parameter that is not a weight matrix to analyse (biases and norms:
    ``"not a matrix (1-D)"``; values that are not arrays; non-float arrays;
    ...), see :func:`wwmonitor.layers.extract_matrices`.  Not filled for
    Keras models.
    """

    layers: list[LayerMetrics]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_pandas(self) -> Any:  # pandas.DataFrame
        """One row per analysed matrix: name, type, shape, N, M, Q, metrics, phase, warning, status."""
        import pandas as pd

        rows = [lm.to_dict() for lm in self.layers]
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        """Model-level means over layers whose fit succeeded (see :func:`summarize`),
        plus ``num_skipped``, the number of entries in :attr:`skipped`."""
        out = summarize(self.layers)
        out["num_skipped"] = len(self.skipped)
        return out

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> LayerMetrics:
        for lm in self.layers:
            if lm.name == name:
                return lm
        raise KeyError(name)


def summarize(layers: Sequence[LayerMetrics]) -> dict[str, Any]:
    """Model-level summary: :func:`wwmonitor.summary.model_summary` (the one definition the
    monitor uses too) plus ``phase_counts`` (layers per phase)."""
    from .summary import model_summary, phase_counts

    return {**model_summary(layers), "phase_counts": phase_counts(layers)}


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


# --------------------------------------------------------------- streaming ----
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


def analyze_model(
    obj: Any,
    *,
    layers: Optional[Sequence[Pattern]] = None,
    exclude: Optional[Sequence[Pattern]] = None,
    conv: str = "pool",
    options: AnalysisOptions = DEFAULT_OPTIONS,
    progress: Optional[bool] = None,
    distributed: Optional[bool] = None,
    on_layer: Optional[Callable[[LayerMetrics], None]] = None,
    workers: Optional[int] = None,
    analysis_device: str = "auto",
    base_model: Any = None,
    lora: str = "effective",
    **option_overrides: Any,
) -> ModelReport:
    """Analyse every weight matrix of ``obj``.

    Parameters
    ----------
    obj:
        torch module, state_dict / mapping of arrays, Keras 3 model, or a path
        (see module docstring).  A ``.safetensors`` file or a folder of shards
        is streamed: each tensor is memory-mapped when its matrix is analysed
        and dropped afterwards (at most ``workers`` at once), never the whole
        checkpoint; other formats are loaded with :func:`load_weights`.
    layers, exclude:
        Names, glob patterns or layer types to include / skip.
    conv:
        ``"pool"``: one pooled ESD per conv layer; ``"slices"``: one per kernel position.
    options, **option_overrides:
        :class:`~wwmonitor.analyze.AnalysisOptions` (e.g. ``min_evals=50``).
    progress:
        Show a tqdm bar on stderr (default: when stderr is a terminal and there are > 8 matrices).
    distributed:
        Shard matrices over ``torch.distributed`` ranks (matrix ``i`` on rank
        ``i mod world_size``) and gather on every rank (default: when a
        process group is initialised).
    on_layer:
        Called with each matrix's :class:`LayerMetrics`, in model order.
    workers:
        Threads analysing matrices concurrently (default: the usable CPUs,
        divided by ``LOCAL_WORLD_SIZE`` under ``torch.distributed``; at most
        one per matrix).  With more than one worker, BLAS gets at most
        ``max(1, cpus // workers)`` threads for the duration of the call
        (restored afterwards; never raised above its current count): the
        eigensolvers release the GIL, and one BLAS thread per concurrently
        analysed matrix was measured faster than threaded BLAS on one matrix
        at a time (docs/benchmarks.md).  ``workers=1`` analyses sequentially.
        Results do not depend on ``workers``.
    analysis_device:
        Where the ESDs are computed: ``"cpu"`` (NumPy; CUDA tensors are copied
        to the host one matrix at a time), ``"cuda"`` / ``"cuda:N"`` (torch on
        the GPU; host tensors are uploaded one matrix at a time) or ``"auto"``
        (default: ``"cuda"`` when the model has a tensor on CUDA and CUDA is
        available, else ``"cpu"``).  On CUDA ``workers`` defaults to 1.  The
        metrics do not depend on the device (see :func:`wwmonitor.analyze_matrix`).
    base_model:
        A reference (model, mapping of name -> array, or path): each matrix also
        gets the ``delta_*`` metrics of ``W − W_ref`` (``delta_rel_norm``,
        ``delta_alpha``, ...; see :mod:`wwmonitor.monitor.reference`), computed
        after the matrices' own analysis, one matrix at a time.
    lora:
        What is analysed of a peft LoRA layer: ``"effective"``,
        ``"effective+update"`` or ``"all"`` (see :mod:`wwmonitor.layers`).

    A failure in one matrix is recorded in its ``status``/``message``; the
    rest of the model is still analysed.
    """
    if option_overrides:
        bad = set(option_overrides) - set(AnalysisOptions.__dataclass_fields__)
        if bad:
            raise TypeError(f"analyze_model: unknown option(s) {sorted(bad)}")
        options = AnalysisOptions(**{**options.__dict__, **option_overrides})
    if isinstance(base_model, str) and base_model == "first":
        raise ValueError("analyze_model: base_model='first' is a Monitor option; give a model, mapping or path")
    source = ""
    if isinstance(obj, (str, os.PathLike)):
        source = str(obj)
        obj = open_weights(obj)  # safetensors: headers only, tensors are mapped one by one in _analyze_one
    skipped: list[tuple[str, str]] = []
    specs = extract_matrices(obj, layers=layers, exclude=exclude, conv=conv, skipped=skipped, lora=lora)
    if not specs:
        listed = ""
        if skipped:
            listed = f"; skipped {len(skipped)}: " + ", ".join(f"{n} ({r})" for n, r in skipped[:10])
            listed += f", ... ({len(skipped) - 10} more)" if len(skipped) > 10 else ""
        raise ValueError(
            f"no analysable weight matrices found in {source or type(obj).__name__} "
            f"(need Linear/Dense, Embedding, Conv, attention or RNN weights){listed}"
        )
    device = resolve_device(analysis_device, (s.tensor for s in specs))
    rank, world = _dist_rank_world(distributed)
    mine = list(range(len(specs)))
    if world > 1:
        from .distributed import shard_indices

        mine = shard_indices(len(specs), rank, world)
    show = progress if progress is not None else (len(specs) > 8 and sys.stderr.isatty() and rank == 0)
    results: dict[int, LayerMetrics] = {}
    it: Any = mine
    if show:
        from tqdm.auto import tqdm

        it = tqdm(mine, desc="analyze", unit="matrix", file=sys.stderr)
    cpus = usable_cpus()
    n_workers = (1 if device.startswith("cuda") else _default_workers(cpus, world)) if workers is None else int(workers)
    if n_workers < 1:
        raise ValueError(f"analyze_model: workers must be >= 1, got {workers}")
    n_workers = min(n_workers, max(1, len(mine)))
    if options.low_memory:
        # the in-place route calls SciPy's BLAS (dsyrk/dsyevd), a second OpenBLAS loaded on first use: load it
        # now so that the thread limit below covers it (unlimited, 2 workers x 2 threads on 2 cores ran 8x slower)
        import scipy.linalg.blas  # noqa: F401
    with blas_thread_limit(max(1, cpus // n_workers) if n_workers > 1 else None):
        if n_workers == 1:
            for i in it:
                results[i] = _analyze_one(specs[i], options, device)
                if on_layer is not None:
                    on_layer(results[i])
        else:
            _analyze_concurrently(specs, mine, options, n_workers, results, on_layer, it if show else None, device)
    if base_model is not None:  # delta metrics against the reference, one matrix (and its copy) at a time
        from .monitor.reference import ReferenceWeights

        ref = ReferenceWeights(base_model, conv=conv, lora=lora)
        ref.bind([specs[i].name for i in mine])
        for i in mine:
            t = specs[i].tensor
            ref.apply(
                specs[i].name,
                specs[i].type,
                specs[i].scale,
                t.load() if isinstance(t, LazyTensor) else t,
                results[i],
                options=options,
                device=device,
            )
    if world > 1:
        from .distributed import gather_objects

        gathered = gather_objects(results) or []
        results = {}
        for part in gathered:
            results.update(part)
    layers_out = [results[i] for i in sorted(results)]
    meta: dict[str, Any] = {"num_matrices": len(specs), "world_size": world}
    if isinstance(obj, LazyWeights):
        meta["streamed"] = True
    return ModelReport(layers_out, source=source, meta=meta, skipped=skipped)


def _default_workers(cpus: int, world: int) -> int:
    if world > 1:
        raw = os.environ.get("LOCAL_WORLD_SIZE", "1")
        try:
            local = int(raw)
        except ValueError:
            log.warning(
                "wwmonitor: LOCAL_WORLD_SIZE=%r is not an integer; assuming 1 process per node (%d analysis threads)",
                raw,
                cpus,
            )
            local = 1
        return max(1, cpus // max(1, local))
    return cpus


def _cost(spec: MatrixSpec) -> float:
    """Rough flop count of one ESD (Gram + tridiagonal reduction), for scheduling."""
    shape = tuple(int(s) for s in spec.shape)
    if len(shape) < 2:
        return 0.0
    a, b = shape[-2:]
    k = shape[0] if len(shape) == 3 else 1
    n, m = max(a, b), min(a, b)
    return float(k) * (n * m * m + 1.4 * m**3)


def _analyze_concurrently(
    specs: Sequence[MatrixSpec],
    mine: Sequence[int],
    options: AnalysisOptions,
    n_workers: int,
    results: dict[int, LayerMetrics],
    on_layer: Optional[Callable[[LayerMetrics], None]],
    bar: Any,
    device: str = "auto",
) -> None:
    """Analyse ``specs[i]`` for ``i`` in ``mine`` on a thread pool, largest
    matrices first (longest-processing-time scheduling); ``on_layer`` and the
    progress bar advance in model order on the calling thread."""
    from concurrent.futures import ThreadPoolExecutor

    order = sorted(mine, key=lambda i: -_cost(specs[i]))
    pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="wwmonitor-analyze")
    try:
        futures = {i: pool.submit(_analyze_one, specs[i], options, device) for i in order}
        for i in mine:
            results[i] = futures[i].result()
            if bar is not None:
                bar.update(1)
            if on_layer is not None:
                on_layer(results[i])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if bar is not None:
        bar.close()


def _analyze_one(spec: MatrixSpec, options: AnalysisOptions, device: str = "auto") -> LayerMetrics:
    try:
        if isinstance(spec.tensor, LazyTensor):  # streamed checkpoint: map this matrix's tensor now, drop it after
            spec = replace(spec, tensor=spec.tensor.load())
        return analyze_spec(spec, options, device)
    except Exception as e:  # never stop halfway through a model: the failure is the layer's status
        lm = LayerMetrics(name=spec.name, type=spec.type, shape=spec.shape)
        lm.status, lm.warning = "error", "error"
        msg = str(e)
        # errors of analyze_matrix already name the layer; others get its name and their type
        lm.message = msg if msg.startswith(f"layer {spec.name!r}") else f"layer {spec.name!r}: {type(e).__name__}: {e}"
        log.debug("wwmonitor: layer %s could not be analysed", spec.name, exc_info=True)
        return lm


def _dist_rank_world(distributed: Optional[bool]) -> tuple[int, int]:
    if distributed is False:
        return 0, 1
    if "torch" not in sys.modules and not distributed:
        return 0, 1
    try:
        import torch.distributed as dist
    except ImportError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if distributed:
        raise RuntimeError("analyze_model(distributed=True) needs an initialised torch.distributed process group")
    return 0, 1
