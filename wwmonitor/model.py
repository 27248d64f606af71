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
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .analyze import DEFAULT_OPTIONS, AnalysisOptions, analyze_spec
from .layers import MatrixSpec, Pattern, extract_matrices
from .metrics import LayerMetrics
from .spectral import blas_thread_limit, usable_cpus

__all__ = ["analyze_model", "ModelReport", "load_weights", "summarize"]

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

    def to_pandas(self):  # -> pandas.DataFrame
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
            raise ImportError(f"{p}: reading .safetensors files needs the 'safetensors' package "
                              "(pip install safetensors)") from e

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
        what = ("numpy would read it as pickled data, which wwmonitor never loads"
                if "pickle" in str(e) else _one_line(e))
        raise ValueError(f"{p}: not a valid .npz archive (not a zip archive of .npy arrays; {what})") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{p}: holds a single .npy array, not an .npz archive of named arrays "
                         "(save weights with numpy.savez(path, name=array, ...))")
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
                        ".npz files with allow_pickle=False (save numeric arrays only)") from e
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
    **option_overrides: Any,
) -> ModelReport:
    """Analyse every weight matrix of ``obj``.

    Parameters
    ----------
    obj:
        torch module, state_dict / mapping of arrays, Keras 3 model, or a path
        (see module docstring).
    layers, exclude:
        Names, glob patterns or layer types to include / skip.
    conv:
        ``"pool"``: one pooled ESD per conv layer; ``"slices"``: one per kernel position.
    options, **option_overrides:
        :class:`~wwmonitor.analyze.AnalysisOptions` (e.g. ``min_evals=50``).
    progress:
        Show a tqdm bar (default: when stderr is a terminal and there are > 8 matrices).
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

    A failure in one matrix is recorded in its ``status``/``message``; the
    rest of the model is still analysed.
    """
    if option_overrides:
        bad = set(option_overrides) - set(AnalysisOptions.__dataclass_fields__)
        if bad:
            raise TypeError(f"analyze_model: unknown option(s) {sorted(bad)}")
        options = AnalysisOptions(**{**options.__dict__, **option_overrides})
    source = ""
    if isinstance(obj, (str, os.PathLike)):
        source = str(obj)
        obj = load_weights(obj)
    skipped: list[tuple[str, str]] = []
    specs = extract_matrices(obj, layers=layers, exclude=exclude, conv=conv, skipped=skipped)
    if not specs:
        listed = ""
        if skipped:
            listed = f"; skipped {len(skipped)}: " + ", ".join(f"{n} ({r})" for n, r in skipped[:10])
            listed += f", ... ({len(skipped) - 10} more)" if len(skipped) > 10 else ""
        raise ValueError(
            f"no analysable weight matrices found in {source or type(obj).__name__} "
            f"(need Linear/Dense, Embedding, Conv, attention or RNN weights){listed}"
        )
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

        it = tqdm(mine, desc="analyze", unit="matrix")
    cpus = usable_cpus()
    n_workers = _default_workers(cpus, world) if workers is None else int(workers)
    if n_workers < 1:
        raise ValueError(f"analyze_model: workers must be >= 1, got {workers}")
    n_workers = min(n_workers, max(1, len(mine)))
    with blas_thread_limit(max(1, cpus // n_workers) if n_workers > 1 else None):
        if n_workers == 1:
            for i in it:
                results[i] = _analyze_one(specs[i], options)
                if on_layer is not None:
                    on_layer(results[i])
        else:
            _analyze_concurrently(specs, mine, options, n_workers, results, on_layer, it if show else None)
    if world > 1:
        from .distributed import gather_objects

        gathered = gather_objects(results)
        results = {}
        for part in gathered:
            results.update(part)
    layers_out = [results[i] for i in sorted(results)]
    return ModelReport(layers_out, source=source, meta={"num_matrices": len(specs), "world_size": world},
                       skipped=skipped)


def _default_workers(cpus: int, world: int) -> int:
    if world > 1:
        raw = os.environ.get("LOCAL_WORLD_SIZE", "1")
        try:
            local = int(raw)
        except ValueError:
            log.warning("wwmonitor: LOCAL_WORLD_SIZE=%r is not an integer; assuming 1 process per node "
                        "(%d analysis threads)", raw, cpus)
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
    return float(k) * (n * m * m + 1.4 * m ** 3)


def _analyze_concurrently(
    specs: Sequence[MatrixSpec],
    mine: Sequence[int],
    options: AnalysisOptions,
    n_workers: int,
    results: dict[int, LayerMetrics],
    on_layer: Optional[Callable[[LayerMetrics], None]],
    bar: Any,
) -> None:
    """Analyse ``specs[i]`` for ``i`` in ``mine`` on a thread pool, largest
    matrices first (longest-processing-time scheduling); ``on_layer`` and the
    progress bar advance in model order on the calling thread."""
    from concurrent.futures import ThreadPoolExecutor

    order = sorted(mine, key=lambda i: -_cost(specs[i]))
    pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="wwmonitor-analyze")
    try:
        futures = {i: pool.submit(_analyze_one, specs[i], options) for i in order}
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


def _analyze_one(spec: MatrixSpec, options: AnalysisOptions) -> LayerMetrics:
    try:
        return analyze_spec(spec, options)
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
