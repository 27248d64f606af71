"""How the :class:`~wwmonitor.Monitor` snapshots a model trained on several ranks: DDP and FSDP2 strategies.

The Monitor keeps one queue, one analysis worker and one ``stats``; a
strategy only changes what a snapshot copies and where results go:

``ddp`` (:class:`DDPStrategy`)
    Every rank holds the full weights (``DistributedDataParallel``, or a plain
    module replicated by the user).  Rank ``r`` copies and analyses only the
    matrices ``i`` with ``i mod world == r``.
``fsdp2`` (:class:`FSDP2Strategy`)
    Parameters are ``DTensor`` shards (``torch.distributed.fsdp.fully_shard``).
    A snapshot is the collective exchange of :mod:`wwmonitor.sharding.exchange`
    (every rank, on the training thread): each owner receives just what it
    needs of its matrices -- rows, or the other ranks' triangular factors --
    and no rank assembles a matrix it does not own.

Either way the worker (:class:`~wwmonitor.monitor.sharded_worker.ShardedWorker`)
gathers each analysed share to rank 0 over the monitor's own gloo process
group; rank 0 merges them and its dispatcher files one result per step to the
store, alerts and sinks.  Other ranks write nothing.  The metrics equal a
single-process analysis of the same weights (tests/test_distributed_monitor.py).

Because every rank must analyse every snapshot (the gathers pair up in
order), the queue policy is ``"block"`` under a strategy.  Building a
strategy is a collective (the monitor's process group; for FSDP2 also the
plan): construct the Monitor on every rank.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from ..distributed import broadcast_object, gather_objects, rank_world
from ..metrics import LayerMetrics
from ..sharding.detect import is_ddp_model, is_sharded_model, refuse_unsupported
from .options import DISTRIBUTED
from .policy import DEFAULT_POLICY
from .sharded_worker import ShardedWorker

__all__ = ["DISTRIBUTED", "Strategy", "DDPStrategy", "FSDP2Strategy", "choose_strategy", "apply_strategy"]

log = logging.getLogger("wwmonitor")


def choose_strategy(
    model: Any,
    distributed: str = "auto",
    *,
    options: Any = None,
    needs_weights: bool = False,
    analysis_device: str = "auto",
    timeout_s: float = 600.0,
) -> Optional["Strategy"]:
    """The strategy for ``model``: ``None`` (one process, or ``"off"``: each rank its own run),
    :class:`DDPStrategy` or :class:`FSDP2Strategy`.

    ``"auto"``: FSDP2 when the model has ``DTensor`` parameters, DDP when it is
    a ``DistributedDataParallel``, else none.  ``"ddp"``: the model's weights
    are the same on every rank (e.g. the module inside a framework's DDP
    wrapper).  FSDP1 and DeepSpeed models raise
    :class:`~wwmonitor.distributed.UnsupportedStrategyError` whatever the value.
    """
    if distributed not in DISTRIBUTED:
        raise ValueError(f"distributed must be one of {DISTRIBUTED}, got {distributed!r}")
    refuse_unsupported(model)
    if distributed == "off":
        return None
    if distributed != "auto" and model is None:
        raise ValueError(f"distributed={distributed!r} needs the model at construction (Monitor(model, ...))")
    sharded = is_sharded_model(model)
    if distributed == "fsdp2" and not sharded:
        raise ValueError("distributed='fsdp2' but the model has no DTensor parameters (apply fully_shard first)")
    if distributed == "ddp" and sharded:
        raise ValueError("distributed='ddp' but the model's parameters are DTensor shards: use 'fsdp2' or 'auto'")
    if sharded:
        return FSDP2Strategy(
            options=options, needs_weights=needs_weights, analysis_device=analysis_device, timeout_s=timeout_s
        )
    if distributed == "ddp" or is_ddp_model(model):
        return DDPStrategy(timeout_s=timeout_s)
    return None


def apply_strategy(
    model: Any, opts: Any, alerts: Any, *, analysis_device: str
) -> tuple[Optional["Strategy"], Any, Any, Any]:
    """The Monitor's strategy for ``model`` under ``opts.distributed`` (:func:`choose_strategy`), and what
    it changes: ``(strategy, opts, model, dispatch_alerts)``.  Without a strategy everything comes back
    as given.  With one the model is unwrapped (DDP), the policy is ``"block"``, and on ranks other than
    0 there is no store, no sink, no logger, no coverage line and no rule evaluation (``dispatch_alerts``
    ``None``; the rules' weight inspection still runs where the weights are analysed)."""
    strategy = choose_strategy(
        model,
        opts.distributed,
        options=opts.options,
        needs_weights=bool(getattr(alerts, "needs_weights", False)),
        analysis_device=analysis_device,
    )
    if strategy is None:
        return None, opts, model, alerts
    policy, store, sinks, dispatch = strategy.adjust(
        policy=opts.policy, store=opts.store, sinks=opts.sinks, alerts=alerts
    )
    opts = opts.replace(
        policy=policy,
        store=store,
        sinks=list(sinks),
        loggers=opts.loggers if strategy.writes else False,
        announce=opts.announce and strategy.writes,  # rank 0 speaks for the run
    )
    return strategy, opts, strategy.unwrap(model), dispatch


def _monitor_group(world: int, timeout_s: float) -> Any:
    """The monitor's own gloo process group (a collective: every rank), ``None`` for one rank."""
    if world <= 1:
        return None
    from datetime import timedelta

    import torch.distributed as dist

    return dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))


class Strategy:
    """What DDP and FSDP2 share: rank, world, the monitor's process group, the names of every matrix."""

    kind = ""

    def __init__(self, *, timeout_s: float = 600.0) -> None:
        self.rank, self.world = rank_world()
        self.group = _monitor_group(self.world, timeout_s)
        #: every monitored matrix, in extraction order (the same on every rank)
        self.names: list[str] = []
        self.owners: list[int] = []

    @property
    def writes(self) -> bool:
        """Whether this rank files results (store, alerts, sinks): rank 0 only."""
        return self.rank == 0

    @property
    def layers(self) -> list[str]:
        """The matrices this rank analyses."""
        return [n for n, r in zip(self.names, self.owners) if r == self.rank]

    def unwrap(self, model: Any) -> Any:
        return model

    def _set_names(self, names: list[str], check: bool) -> None:
        if check and self.world > 1:
            everyone = gather_objects(names, group=self.group)
            assert everyone is not None
            if any(n != names for n in everyone):
                raise RuntimeError(
                    "wwmonitor: the ranks extracted different matrices from the model; every rank must "
                    "monitor the same model with the same layers/exclude"
                )
        self.names = list(names)
        self.owners = [i % self.world for i in range(len(names))]

    def adjust(self, *, policy: str, store: Any, sinks: Any, alerts: Any) -> tuple[str, Any, Any, Any]:
        """The Monitor's ``policy``, ``store``, ``sinks`` and ``alerts`` under this strategy: ``"block"`` (every
        rank must analyse every snapshot, or the gathers would pair different steps); on ranks other than 0
        no store, no sinks and no rule evaluation (rank 0 files the merged results; the rules' weight
        inspection still runs where the weights are analysed)."""
        if policy != "block" and self.writes:  # said once, by the rank that speaks for the run
            log.log(
                logging.INFO if policy == DEFAULT_POLICY else logging.WARNING,  # the default: no user asked for it
                "wwmonitor: under %s every rank analyses every snapshot; policy=%r is replaced by 'block'",
                self.kind,
                policy,
            )
        if self.writes:
            return "block", store, sinks, alerts
        if sinks:
            log.info(
                "wwmonitor: rank %d: %d sink(s) given; under %s only rank 0 writes the store and the sinks",
                self.rank,
                len(sinks),
                self.kind,
            )
        return "block", False, (), None

    def sync_run(self, run_id: str, stored: set[int], last: Optional[int]) -> tuple[str, set[int], Optional[int]]:
        """Rank 0's run id, stored steps and last step on every rank (a collective), so all ranks name the
        same run and snapshot the same steps."""
        if self.world <= 1:
            return run_id, stored, last
        got = broadcast_object((run_id, set(stored), last), src=0, group=self.group)
        return str(got[0]), set(got[1]), got[2]

    def source(self, model: Any, matrices: Any) -> Any:
        """The model a snapshot reads (DDP: unwrapped); ``matrices=`` is refused (every rank walks the model)."""
        if matrices is not None:
            raise ValueError(f"snapshot: matrices= is not supported under {self.kind}")
        return self.unwrap(model)

    def capture(self, specs: list[Any], buffers: Any, key: Any) -> tuple[list[Any], Any]:
        """This rank's share of one snapshot (each strategy defines it)."""
        raise NotImplementedError(f"{type(self).__name__}.capture")

    def counted_capture(self, specs: list[Any], buffers: Any, key: Any, faults: Any) -> tuple[list[Any], Any]:
        """:meth:`capture`; a failure is counted in ``faults`` (``worker_errors``) and raised."""
        try:
            return self.capture(specs, buffers, key)
        except Exception as e:
            faults.add("worker_errors", f"wwmonitor: {self.kind} snapshot failed ({type(e).__name__}: {e})")
            raise

    def make_worker(self, *args: Any, **kwargs: Any) -> ShardedWorker:
        """The Monitor's analysis worker (same arguments as ``AnalysisWorker``)."""
        return ShardedWorker(*args, strategy=self, **kwargs)

    def stats(self) -> dict[str, Any]:
        return {"rank": self.rank, "world_size": self.world}


class DDPStrategy(Strategy):
    """Replicated weights: rank ``r`` copies and analyses matrices ``i ≡ r (mod world)``."""

    kind = "ddp"

    def unwrap(self, model: Any) -> Any:
        """The module inside ``DistributedDataParallel`` (so the names are the plain model's)."""
        return model.module if is_ddp_model(model) else model

    def extract(self, model: Any, *, layers: Any, exclude: Any, lora: str, skipped: list) -> list[Any]:
        from ..layers import extract_matrices

        specs = extract_matrices(model, layers=layers, exclude=exclude, skipped=skipped, lora=lora)
        names = [s.name for s in specs]
        if names != self.names:
            self._set_names(names, check=not self.names)
        return specs

    def capture(self, specs: list[Any], buffers: Any, key: Any) -> tuple[list[Any], Any]:
        """Copy this rank's share of ``specs`` into ``buffers`` (:func:`wwmonitor.monitor.snapshot.copy_matrices`)."""
        from .snapshot import copy_matrices

        return copy_matrices([s for s, r in zip(specs, self.owners) if r == self.rank], buffers, key)


class FSDP2Strategy(Strategy):
    """``DTensor`` (FSDP2) shards: a snapshot is the exchange that brings each owner its matrices' data."""

    kind = "fsdp2"

    def __init__(
        self, *, options: Any, needs_weights: bool, analysis_device: str = "auto", timeout_s: float = 600.0
    ) -> None:
        super().__init__(timeout_s=timeout_s)
        from ..analyze import AnalysisOptions

        self.options = options if options is not None else AnalysisOptions()
        self.needs_weights = needs_weights
        self.analysis_device = analysis_device
        self.spectra: Any = None

    def extract(self, model: Any, *, layers: Any, exclude: Any, lora: str, skipped: list) -> list[Any]:
        """The plan's specs (``meta`` views: no data).  The first call builds the plan -- a collective."""
        from ..sharding.exchange import ShardedSpectra

        if self.spectra is None:
            self.spectra = ShardedSpectra(
                model,
                layers=layers,
                exclude=exclude,
                options=self.options,
                needs_weights=self.needs_weights,
                lora=lora,
            )
            self._set_names(self.spectra.names, check=False)  # the plan already checked the ranks agree
            skipped.extend(self.spectra.skipped)
        elif model is not self.spectra.model:
            raise ValueError(
                "under FSDP2 the Monitor snapshots the model it was built with; snapshot(model=...) cannot change it"
            )
        return self.spectra.specs

    def capture(self, specs: list[Any], buffers: Any, key: Any) -> tuple[list[Any], Any]:
        """The exchange (a collective, on every rank); the entries are this rank's owned matrices."""
        owned = self.spectra.exchange()
        return [(o.name, o.type, o.scale, o) for o in owned], _ready(owned)

    def device(self) -> str:
        """``analysis_device`` resolved over this rank's local shards."""
        from ..spectral import resolve_device

        shards = [e.param.to_local() for e in self.spectra.entries if e.param is not None]
        return resolve_device(self.analysis_device, shards + [e.tensor for e in self.spectra.entries])

    def make_worker(self, *args: Any, **kwargs: Any) -> ShardedWorker:
        from .analyzer import default_analyze

        if kwargs.get("analyze_fn") not in (None, default_analyze):
            raise ValueError("analyze_fn is not supported under FSDP2 (the owner analyses factors, not matrices)")
        if kwargs.get("reference") is not None:
            raise ValueError("base_model is not supported under FSDP2 yet (the delta needs the full matrix)")
        kwargs["analyze_fn"] = _owned_analyze(self.device())
        kwargs["device"] = "cpu"  # the worker passes each OwnedMatrix through; _owned_analyze picks the route
        if kwargs.get("inspector") is not None:
            kwargs["inspector"] = _OwnedInspector(kwargs["inspector"])
        return super().make_worker(*args, **kwargs)

    def stats(self) -> dict[str, Any]:
        st = self.spectra.stats if self.spectra is not None else None
        return {
            **super().stats(),
            "exchange_bytes_sent": st.bytes_sent if st else 0,
            "exchange_bytes_received": st.bytes_received if st else 0,
            "exchange_s": st.seconds if st else 0.0,
        }


def _owned_analyze(device: str) -> Callable[..., LayerMetrics]:
    """The worker's per-matrix analysis of an :class:`~wwmonitor.sharding.plan.OwnedMatrix` on ``device``
    (CUDA data: on the analysis side stream, never the training stream)."""
    from ..sharding.owned import analyze_owned

    def fn(om: Any, name: str, typ: str, scale: float, opts: Any) -> LayerMetrics:
        data = om.data
        if data is None or getattr(getattr(data, "device", None), "type", "cpu") != "cuda":
            return analyze_owned(om, opts, device)
        import torch

        from .analyzer import _side_stream

        with torch.cuda.stream(_side_stream(str(data.device))):
            if device == "cpu":
                om.data = data.to("cpu")
            return analyze_owned(om, opts, device)

    return fn


class _OwnedInspector:
    """Alert-rule weight inspection on an owned (assembled) matrix, as a host array."""

    needs_weights = True

    def __init__(self, rules: Any) -> None:
        self.rules = rules

    def inspect_weights(self, name: str, om: Any, lm: LayerMetrics) -> Any:
        """The rules' failures (rule id -> exception), like ``AlertRules.inspect_weights``; ``None`` when the
        owner holds factors, not the matrix (no weights to inspect)."""
        from ..spectral import to_numpy

        if om.kind == "matrix":
            return self.rules.inspect_weights(name, to_numpy(om.data), lm)
        return None


def _ready(owned: list[Any]) -> Optional[Callable[[], None]]:
    """Off CUDA ``None``; on CUDA a wait for an event recorded after the exchange (the worker reads the
    received tensors only once they are complete)."""
    for o in owned:
        d = o.data
        if d is not None and getattr(getattr(d, "device", None), "type", None) == "cuda":
            import torch

            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(d.device))
            return ev.synchronize
    return None
