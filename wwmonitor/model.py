"""Model-level analysis: :func:`analyze_model` and :class:`ModelReport`.

Accepts a torch ``nn.Module``, a ``state_dict`` (or any mapping of name ->
array), a Keras 3 model, or a path (read by :mod:`wwmonitor.checkpoint`:
``.safetensors`` file or folder of shards, torch checkpoint, ``.npz``,
``.keras``; never unpickled with arbitrary code execution).

Every entry is accounted for: a :class:`ModelReport` holds one
:class:`~wwmonitor.metrics.LayerMetrics` per analysed matrix (with its
``status``) and ``skipped``, the ``(name, reason)`` of every other entry.

Streaming: given the path of a ``.safetensors`` file or of a folder of
shards, :func:`analyze_model` never loads the checkpoint: it opens it with
:func:`wwmonitor.checkpoint.open_weights` and each analysis thread maps one
tensor, analyses it and drops it, so at most ``workers`` tensors are
resident at once.  Under ``torch.distributed`` each rank maps only the
tensors of the matrices it analyses.

The checkpoint readers (``load_weights``, ``open_weights``, ``iter_weights``,
``LazyWeights``, ``LazyTensor``) moved to :mod:`wwmonitor.checkpoint`; importing
them from here still works, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

from . import checkpoint
from ._deprecated import moved
from .analyze import DEFAULT_OPTIONS, AnalysisOptions, analyze_spec
from .compute import blas_thread_limit, resolve_device, usable_cpus
from .layers import MatrixSpec, Pattern, extract_matrices
from .metrics import LayerMetrics

__all__ = ["analyze_model", "ModelReport", "summarize"]

log = logging.getLogger("wwmonitor")

#: names that lived here before the checkpoint readers got their own package (issue 17)
__getattr__ = moved(
    __name__,
    {n: "wwmonitor.checkpoint" for n in ("load_weights", "open_weights", "iter_weights", "LazyWeights", "LazyTensor")},
)


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
    options = _with_overrides(options, option_overrides)
    if isinstance(base_model, str) and base_model == "first":
        raise ValueError("analyze_model: base_model='first' is a Monitor option; give a model, mapping or path")
    source = str(obj) if isinstance(obj, (str, os.PathLike)) else ""
    if source:
        obj = checkpoint.open_weights(obj)  # safetensors: headers only, tensors are mapped one by one in _analyze_one
    skipped: list[tuple[str, str]] = []
    specs = extract_matrices(obj, layers=layers, exclude=exclude, conv=conv, skipped=skipped, lora=lora)
    if not specs:
        raise _nothing_to_analyse(source or type(obj).__name__, skipped)
    device = resolve_device(analysis_device, (s.tensor for s in specs))
    rank, world = _dist_rank_world(distributed)
    mine = list(range(len(specs)))
    if world > 1:
        from .distributed import shard_indices

        mine = shard_indices(len(specs), rank, world)
    show = progress if progress is not None else (len(specs) > 8 and sys.stderr.isatty() and rank == 0)
    n_workers = _worker_count(workers, device, world, len(mine))
    results = _analyze_local(specs, mine, options, n_workers, on_layer, show, device)
    if base_model is not None:  # delta metrics against the reference, one matrix (and its copy) at a time
        _apply_reference(base_model, specs, mine, results, conv=conv, lora=lora, options=options, device=device)
    if world > 1:
        from .distributed import gather_objects

        results = {i: lm for part in (gather_objects(results) or []) for i, lm in part.items()}
    meta: dict[str, Any] = {"num_matrices": len(specs), "world_size": world}
    if isinstance(obj, checkpoint.LazyWeights):
        meta["streamed"] = True
    return ModelReport([results[i] for i in sorted(results)], source=source, meta=meta, skipped=skipped)


def _with_overrides(options: AnalysisOptions, overrides: dict[str, Any]) -> AnalysisOptions:
    """``options`` with ``analyze_model``'s keyword overrides applied; ``TypeError`` naming unknown ones."""
    if not overrides:
        return options
    bad = set(overrides) - set(AnalysisOptions.__dataclass_fields__)
    if bad:
        raise TypeError(f"analyze_model: unknown option(s) {sorted(bad)}")
    return AnalysisOptions(**{**options.__dict__, **overrides})


def _nothing_to_analyse(what: str, skipped: Sequence[tuple[str, str]]) -> ValueError:
    """The error for a model without analysable matrices, listing (the first ten) skipped entries and why."""
    listed = ""
    if skipped:
        listed = f"; skipped {len(skipped)}: " + ", ".join(f"{n} ({r})" for n, r in skipped[:10])
        listed += f", ... ({len(skipped) - 10} more)" if len(skipped) > 10 else ""
    return ValueError(
        f"no analysable weight matrices found in {what} "
        f"(need Linear/Dense, Embedding, Conv, attention or RNN weights){listed}"
    )


def _worker_count(workers: Optional[int], device: str, world: int, n_mine: int) -> int:
    """Analysis threads: ``workers``, else 1 on CUDA and the usable CPUs (per local rank) on the CPU; at most one
    per matrix."""
    n = (
        (1 if device.startswith("cuda") else _default_workers(usable_cpus(), world))
        if workers is None
        else int(workers)
    )
    if n < 1:
        raise ValueError(f"analyze_model: workers must be >= 1, got {workers}")
    return min(n, max(1, n_mine))


def _analyze_local(
    specs: Sequence[MatrixSpec],
    mine: Sequence[int],
    options: AnalysisOptions,
    n_workers: int,
    on_layer: Optional[Callable[[LayerMetrics], None]],
    show: bool,
    device: str,
) -> dict[int, LayerMetrics]:
    """This rank's matrices analysed, by index; BLAS limited to ``cpus // n_workers`` threads meanwhile."""
    results: dict[int, LayerMetrics] = {}
    it: Any = mine
    if show:
        from tqdm.auto import tqdm

        it = tqdm(mine, desc="analyze", unit="matrix", file=sys.stderr)
    if options.low_memory:
        # the in-place route calls SciPy's BLAS (dsyrk/dsyevd), a second OpenBLAS loaded on first use: load it
        # now so that the thread limit below covers it (unlimited, 2 workers x 2 threads on 2 cores ran 8x slower)
        import scipy.linalg.blas  # noqa: F401
    with blas_thread_limit(max(1, usable_cpus() // n_workers) if n_workers > 1 else None):
        if n_workers == 1:
            for i in it:
                results[i] = _analyze_one(specs[i], options, device)
                if on_layer is not None:
                    on_layer(results[i])
        else:
            _analyze_concurrently(specs, mine, options, n_workers, results, on_layer, it if show else None, device)
    return results


def _apply_reference(
    base_model: Any,
    specs: Sequence[MatrixSpec],
    mine: Sequence[int],
    results: dict[int, LayerMetrics],
    *,
    conv: str,
    lora: str,
    options: AnalysisOptions,
    device: str,
) -> None:
    """Add the ``delta_*`` metrics against ``base_model`` to ``results``, one matrix at a time."""
    from .monitor.reference import ReferenceWeights

    ref = ReferenceWeights(base_model, conv=conv, lora=lora)
    ref.bind([specs[i].name for i in mine])
    for i in mine:
        t = specs[i].tensor
        w = t.load() if isinstance(t, checkpoint.LazyTensor) else t
        ref.apply(specs[i].name, specs[i].type, specs[i].scale, w, results[i], options=options, device=device)


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
        # streamed checkpoint: map this matrix's tensor now, drop it after
        if isinstance(spec.tensor, checkpoint.LazyTensor):
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
