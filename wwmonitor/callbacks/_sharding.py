"""Sharding a callback's analysis over DDP ranks (framework-free; used by every trainer callback).

Used by the Lightning callbacks (:mod:`wwmonitor.callbacks._lightning_common`)
and the Hugging Face ``Trainer`` callback (:mod:`wwmonitor.callbacks.transformers`).
The callback tells :class:`ShardedSnapshots` its rank, world size and the
names of the monitored matrices; this module imports no training framework.

Distributed (DDP)
-----------------
Every rank holds the full weights.  Matrix ``i`` (extraction order) is
analysed on rank ``i mod world_size`` by a *shard* monitor (no store, no
sinks, ``policy="block"`` so no step of the shard is ever skipped) in that
rank's background thread.  At the next snapshot point (and at train end)
every rank waits for its shard, and the per-layer results, keyed by step,
are gathered to rank 0 (:func:`wwmonitor.distributed.gather_objects`, a
collective the callback reaches at the same hooks on every rank).  Rank 0
merges them into one :class:`~wwmonitor.records.SnapshotResult` per step and
hands it to the *main* monitor's :meth:`~wwmonitor.Monitor.submit` -- the same
dispatcher (store, alert rules, figures, logger sinks) a single process
uses.  Results reach the sinks one snapshot later than without DDP, equal a
single-process analysis of the same weights, and only rank 0 writes.

Without DDP (``world_size == 1``) a snapshot goes straight to the main
monitor.

Sharded parameters (FSDP2, ``fsdp=True``)
-----------------------------------------
No rank holds the full weights.  The shard is a
:class:`wwmonitor.sharded.OwnerAnalysis`: at each snapshot every rank takes
part in one exchange (a collective) that moves to the owner of matrix ``i``
(rank ``i mod world_size``) only what it needs -- its rows, or the triangular
factors of the other ranks' rows (see :mod:`wwmonitor.sharded`) -- and the
owner analyses in its background thread.  Gathering the per-layer results to
rank 0 and submitting them is the same as under DDP (also with one rank).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional, Sequence

from ..distributed import gather_objects, shard_indices
from ..metrics import LayerMetrics
from ..records import SnapshotResult
from ..summary import model_summary

log = logging.getLogger("wwmonitor")

__all__ = ["ShardedSnapshots", "merge_results"]


class ShardedSnapshots:
    """One callback's snapshots across ranks: routing, the shard monitor, the gather to rank 0.

    Parameters
    ----------
    names:
        Every monitored matrix, in extraction order (the same on every rank).
    rank, world:
        This process's rank and the world size (``1``: no sharding).
    flush_timeout:
        Seconds a rank waits for its shard's analysis before a gather.

    The callback keeps its main monitor (rank 0 only; ``None`` elsewhere) and
    passes it to :meth:`snapshot` and :meth:`collect`; every rank must call
    those at the same hooks (they contain a collective under DDP).
    """

    def __init__(
        self,
        names: Sequence[str],
        rank: int = 0,
        world: int = 1,
        *,
        flush_timeout: Optional[float] = 300.0,
        fsdp: bool = False,
    ) -> None:
        self.names = list(names)
        self.rank, self.world = int(rank), int(world)
        #: the model's parameters are sharded (FSDP2): the shard exchanges data, every rank, every snapshot
        self.fsdp = bool(fsdp)
        self.flush_timeout = flush_timeout
        #: names of the matrices this rank analyses (all of them without DDP)
        self.layers = (
            [self.names[i] for i in shard_indices(len(self.names), self.rank, self.world)]
            if self.world > 1
            else list(self.names)
        )
        self.shard: Any = None  # this rank's shard monitor under DDP
        self.pending: list[tuple[int, Optional[int]]] = []  # (step, epoch) analysed by shards, not yet gathered
        self.errors = 0

    def open_shard(
        self, model: Any, run_dir: Any, *, alert_rules: Any = None, queue_size: int = 3, options: Any = None
    ) -> None:
        """DDP: start this rank's shard monitor (no store, no sinks, ``policy="block"``); FSDP: this rank's
        :class:`~wwmonitor.sharded.OwnerAnalysis` (on every rank, owning matrices or not); a no-op otherwise."""
        if self.fsdp:
            from ..sharded import OwnerAnalysis

            inspect = alert_rules if getattr(alert_rules, "needs_weights", False) else None
            self.shard = OwnerAnalysis(
                model, layers=self.names, options=options, inspector=inspect, queue_size=queue_size
            )
            return
        if self.world == 1 or not self.layers:
            return
        from ..monitor import Monitor

        # the rules' weight inspection (correlation traps) runs where the weights are analysed
        inspect = alert_rules if getattr(alert_rules, "needs_weights", False) else None
        self.shard = Monitor(
            model,
            run_dir,
            run_name=f"shard{self.rank}",
            every_n_epochs=None,
            every_n_steps=None,
            layers=self.layers,
            store=False,
            queue_size=queue_size,
            policy="block",
            options=options,
            alerts=_WeightInspector(inspect) if inspect else None,
            announce=False,
        )

    def snapshot(self, main: Any, *, step: int, epoch: Optional[int], epoch_end: bool, model: Any = None) -> None:
        """Snapshot ``step``: into ``main`` without DDP; under DDP gather what is pending, then snapshot
        this rank's shard (on every rank, so the next gather stays aligned)."""
        kw: dict[str, Any] = {"step": step, "epoch": epoch, "epoch_end": epoch_end}
        if model is not None:
            kw["model"] = model
        if self.world == 1 and not self.fsdp:
            if main is not None:
                self.safe_snapshot(main, **kw)
            return
        self.collect(main)
        if self.shard is not None:
            self.safe_snapshot(self.shard, **kw)
        self.pending.append((step, epoch))

    def safe_snapshot(self, mon: Any, **kw: Any) -> bool:
        """``mon.snapshot(**kw)``; a failure is reported and training goes on (and, under DDP,
        every rank still reaches the next collective)."""
        try:
            return bool(mon.snapshot(**kw))
        except Exception as e:
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning(
                    "wwmonitor: snapshot at step %s failed (%s: %s); training continues (%d failure(s))",
                    kw.get("step"),
                    type(e).__name__,
                    e,
                    self.errors,
                )
            return False

    def collect(self, main: Any) -> None:
        """DDP: wait for this rank's shard, gather the pending snapshots to rank 0 and submit them to ``main``.

        Every rank calls this at the same hooks (it is a collective).  Each
        rank sends ``{step: SnapshotResult}`` of its own layers; rank 0 merges
        them per step, in step order, and submits one result per step.  A
        layer no rank reported for a step is recorded as an error entry.
        """
        pending, self.pending = self.pending, []
        if not pending or (self.world == 1 and not self.fsdp):
            return
        mine: dict[int, SnapshotResult] = {}
        if self.shard is not None:
            self.shard.flush(self.flush_timeout)
            steps = {s for s, _ in pending}
            mine = {r.step: r for r in self.shard.results if r.step in steps}
        parts = gather_objects(mine, dst=0)
        if self.rank != 0 or parts is None or main is None:
            return
        for step, epoch in pending:
            res = merge_results([p[step] for p in parts if step in p], step, epoch, self.names)
            try:
                main.submit(res)
            except Exception as e:  # a closed monitor or a bug: reported, training continues
                self.errors += 1
                log.warning(
                    "wwmonitor: could not submit the gathered results of step %s (%s: %s)", step, type(e).__name__, e
                )

    def close(self, timeout: Optional[float] = None) -> None:
        """Close the shard monitor (idempotent; the callback closes its main monitor itself)."""
        shard, self.shard = self.shard, None
        if shard is not None:
            try:
                shard.close(timeout)
            except Exception as e:
                log.warning("wwmonitor: closing the monitor failed: %r", e)


class _WeightInspector:
    """Alert-rules stand-in for a DDP shard monitor: only the weight inspection, no rule evaluation.

    The rules themselves run once, on rank 0, on the merged result; the
    per-matrix values they need from the weights (e.g. ``num_traps``) are
    computed on the rank that holds the analysis and travel in ``lm`` (``num_traps``).
    """

    needs_weights = True

    def __init__(self, rules: Any) -> None:
        self.rules = rules

    def inspect_weights(self, name: str, W: Any, lm: LayerMetrics) -> Any:
        return self.rules.inspect_weights(name, W, lm)

    def evaluate(self, result: SnapshotResult) -> list:
        return []


def merge_results(parts: list[SnapshotResult], step: int, epoch: Optional[int], names: list[str]) -> SnapshotResult:
    """One result for ``step`` from the ranks' partial results, layers in extraction order."""
    layers: dict[str, LayerMetrics] = {}
    res = SnapshotResult(step=step, epoch=epoch, time=min((p.time for p in parts), default=time.time()), layers=[])
    for p in parts:
        layers.update({lm.name: lm for lm in p.layers})
        for field in ("esds", "fits", "errors", "inspect_errors"):
            getattr(res, field).update(getattr(p, field))
        res.meta["analysis_s"] = max(res.meta.get("analysis_s", 0.0), p.meta.get("analysis_s", 0.0))
    for n in names:
        if n not in layers:  # a rank that skipped or failed this step: recorded, never dropped silently
            res.errors[n] = "no result from the rank that analyses this layer"
            layers[n] = LayerMetrics(name=n, status="error", message=f"layer {n!r}: {res.errors[n]}")
    res.layers = [layers[n] for n in names]
    res.summary = model_summary(res.layers)
    return res
