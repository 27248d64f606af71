"""What kind of parallel training a model is under, found from the model alone (no collective).

* :func:`is_sharded_model`: ``DTensor`` parameters (FSDP2 ``fully_shard``, tensor parallel).
* :func:`sharded_specs`: the matrices of such a model -- the same names, types
  and shapes as the unsharded model -- without touching any shard's data.
* :func:`unsupported_sharding`: FSDP1 (``FullyShardedDataParallel``) and
  DeepSpeed models, which hold flat per-rank slices wwmonitor cannot read as
  matrices; :func:`refuse_unsupported` turns that into
  :class:`~wwmonitor.distributed.UnsupportedStrategyError` with a message that
  names the strategy and says what is supported.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from ..distributed import UnsupportedStrategyError

__all__ = [
    "is_dtensor",
    "is_sharded_model",
    "is_ddp_model",
    "sharded_specs",
    "with_meta_params",
    "unsupported_sharding",
    "refuse_unsupported",
    "FSDP1_MESSAGE",
    "DEEPSPEED_MESSAGE",
]

#: what every refusal says is supported
SUPPORTED = (
    "Supported: a single process, DDP (torch.nn.parallel.DistributedDataParallel, or a plain module under "
    "torchrun with Monitor(distributed='ddp')) and FSDP2 (torch.distributed.fsdp.fully_shard)."
)
FSDP1_MESSAGE = (
    "FSDP1 (FullyShardedDataParallel) is not supported: each rank holds a slice of flattened parameters, which "
    "wwmonitor cannot read as weight matrices; use torch.distributed.fsdp.fully_shard (FSDP2). " + SUPPORTED
)
DEEPSPEED_MESSAGE = (
    "DeepSpeed (ZeRO) is not supported: it partitions parameters into flat per-rank buffers, which wwmonitor "
    "cannot read as weight matrices; use torch.distributed.fsdp.fully_shard (FSDP2) or DDP, or analyse a saved "
    "checkpoint with `wwmonitor analyze`. " + SUPPORTED
)


def _dtensor_cls() -> Any:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.4
        try:
            from torch.distributed._tensor import DTensor
        except ImportError:
            return None
    return DTensor


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``torch.distributed`` ``DTensor``."""
    cls = _dtensor_cls()
    return cls is not None and isinstance(t, cls)


def _parameters(model: Any) -> list[Any]:
    params = getattr(model, "parameters", None)
    if params is None:
        return []
    try:
        return list(params())
    except Exception:  # noqa: BLE001 - not a torch module after all
        return []


def is_sharded_model(model: Any) -> bool:
    """Whether ``model`` (a torch module) holds ``DTensor`` parameters (FSDP2 ``fully_shard``, tensor parallel)."""
    return _dtensor_cls() is not None and any(is_dtensor(p) for p in _parameters(model))


def is_ddp_model(model: Any) -> bool:
    """Whether ``model`` is wrapped in ``torch.nn.parallel.DistributedDataParallel``."""
    return any(c.__name__ == "DistributedDataParallel" for c in type(model).__mro__) and hasattr(model, "module")


def unsupported_sharding(model: Any) -> Optional[str]:
    """The message for a model under FSDP1 or DeepSpeed, ``None`` for anything else."""
    if model is None:
        return None
    names = {c.__name__ for c in type(model).__mro__}
    if names & {"DeepSpeedEngine", "PipelineEngine"}:
        return DEEPSPEED_MESSAGE
    modules = getattr(model, "modules", None)
    if callable(modules):
        try:
            if any(type(m).__name__ == "FullyShardedDataParallel" for m in modules()):
                return FSDP1_MESSAGE
        except Exception:  # noqa: BLE001 - not a torch module after all
            return None
    for p in _parameters(model):
        if type(p).__name__ == "FlatParameter" or getattr(p, "_is_flat_param", False):
            return FSDP1_MESSAGE
        if hasattr(p, "ds_id") or hasattr(p, "ds_status"):  # ZeRO-3 partitioned parameter
            return DEEPSPEED_MESSAGE
    return None


def refuse_unsupported(model: Any, who: str = "Monitor") -> None:
    """Raise :class:`UnsupportedStrategyError` (``"<who>: <message>"``) for an FSDP1 or DeepSpeed model."""
    msg = unsupported_sharding(model)
    if msg is not None:
        raise UnsupportedStrategyError(f"{who}: {msg}")


def with_meta_params(model: Any, fn: Callable[[], Any]) -> tuple[Any, dict[int, Any]]:
    """Run ``fn()`` with every ``DTensor`` parameter of ``model`` replaced by a ``meta`` parameter of its
    global shape (no memory, no communication); returns ``(fn(), {storage id of the meta param: DTensor})``.
    Tied parameters get one meta parameter, so ties are still seen.  Everything is put back."""
    import torch

    swapped: list[tuple[Any, str, Any]] = []
    meta_of: dict[int, Any] = {}
    owner: dict[int, Any] = {}
    try:
        for mod in model.modules():
            for pname, p in list(mod._parameters.items()):
                if p is None or not is_dtensor(p):
                    continue
                m = meta_of.get(id(p))
                if m is None:
                    m = torch.nn.Parameter(
                        torch.empty(tuple(p.shape), dtype=p.dtype, device="meta"), requires_grad=p.requires_grad
                    )
                    meta_of[id(p)] = m
                    owner[m.untyped_storage()._cdata] = p
                swapped.append((mod, pname, p))
                mod._parameters[pname] = m
        return fn(), owner
    finally:
        for mod, pname, p in reversed(swapped):
            mod._parameters[pname] = p


def sharded_specs(
    model: Any,
    *,
    layers: Optional[Sequence[Any]] = None,
    exclude: Optional[Sequence[Any]] = None,
    conv: str = "pool",
    skipped: Optional[list[tuple[str, str]]] = None,
    lora: str = "effective",
) -> list[Any]:
    """The :class:`~wwmonitor.layers.MatrixSpec` list of a (possibly) sharded model -- the same names, types
    and shapes as the unsharded model -- found without any collective: a spec made from a ``DTensor``
    parameter holds a ``meta`` view of its global shape (no data)."""
    from ..layers import extract_matrices

    specs, _ = with_meta_params(
        model,
        lambda: extract_matrices(model, layers=layers, exclude=exclude, conv=conv, skipped=skipped, lora=lora),
    )
    return specs
