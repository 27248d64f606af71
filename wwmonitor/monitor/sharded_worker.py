"""The Monitor's one analysis worker under DDP / FSDP2: analyse this rank's share, gather it to rank 0.

:class:`ShardedWorker` is the Monitor's :class:`~wwmonitor.monitor.analyzer.AnalysisWorker`
with one more step per snapshot: after analysing the matrices this rank owns,
it gathers the partial result to rank 0 over the monitor's own process group
(gloo, so it never shares a communicator with training collectives), and rank
0 merges the parts (:func:`merge_results`) and hands one result per step to
the dispatcher -- the same store, alerts and sinks as a single process.

Every rank takes part in every gather, in snapshot order, whatever happened:
a snapshot whose analysis failed still sends a result whose layers carry the
error, so the ranks never fall out of step and no failure is lost.  A failed
gather is counted in ``Monitor.stats["worker_errors"]`` and logged.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

from ..distributed import gather_objects
from ..metrics import LayerMetrics
from ..records import SnapshotResult
from ..summary import model_summary
from .analyzer import AnalysisWorker
from .snapshot import Snapshot

__all__ = ["ShardedWorker", "merge_results"]

#: SnapshotResult fields that are per-step, not per-layer (never merged by key)
_NOT_PER_LAYER = ("layers", "summary", "meta", "alerts")


class ShardedWorker(AnalysisWorker):
    """An :class:`AnalysisWorker` whose results are gathered over ranks (``strategy`` gives rank, group and
    the names of every monitored matrix); only rank 0 submits (merged) results to the dispatcher."""

    def __init__(self, *args: Any, strategy: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.strategy = strategy

    def _process(self, snap: Snapshot) -> None:
        """This rank's result (or one whose layers say why the analysis failed), gathered to rank 0."""
        self._deliver(self._analyse_or_fail(snap))

    def _analyse_or_fail(self, snap: Snapshot) -> SnapshotResult:
        """This rank's result for ``snap``; if the analysis itself raised, a result whose layers say why."""
        entries = [(name, typ, getattr(W, "shape", ())) for name, typ, _, W in snap.entries]
        try:
            return self._analyse(snap)
        except Exception as e:  # noqa: BLE001 - reported, and the gather still runs on every rank
            why = f"analysis failed on rank {self.strategy.rank}: {type(e).__name__}: {e}"
            self.faults.add("worker_errors", f"wwmonitor: step {snap.step}: {why}")
            res = SnapshotResult(step=snap.step, epoch=snap.epoch, time=snap.time, layers=[])
            for name, typ, shape in entries:
                res.errors[name] = why
                res.layers.append(
                    LayerMetrics(name=name, type=typ, shape=tuple(int(s) for s in shape), status="error", message=why)
                )
            self.layer_errors += len(entries)
            return res

    def _deliver(self, res: SnapshotResult) -> None:
        """Gather ``res`` to rank 0 (every rank); rank 0 merges and submits."""
        st = self.strategy
        try:
            parts = gather_objects(res, dst=0, group=st.group)
        except Exception as e:  # noqa: BLE001 - a broken or timed-out group: counted, the snapshot is lost
            self.faults.add(
                "worker_errors",
                f"wwmonitor: gathering step {res.step} from {st.world} ranks failed ({type(e).__name__}: {e}); "
                "that snapshot is lost",
            )
            return
        if parts is None:  # not rank 0: rank 0 files the merged result
            return
        wrong = [r for r, p in enumerate(parts) if p.step != res.step]
        if wrong:
            self.faults.add(
                "worker_errors",
                f"wwmonitor: ranks {wrong} sent other steps than step {res.step} "
                f"({[parts[r].step for r in wrong]}); their layers are recorded as errors",
            )
        merged = merge_results([p for p in parts if p.step == res.step], res.step, res.epoch, st.names)
        self.layer_errors += len(merged.errors) - len(res.errors)  # the other ranks' failed layers
        self.submit(merged)


def merge_results(parts: list[SnapshotResult], step: int, epoch: Optional[int], names: list[str]) -> SnapshotResult:
    """One result for ``step`` from the ranks' partial results, layers in extraction order (``names``).

    Per-layer mappings (``esds``, ``fits``, ``errors`` ... every dict field of
    :class:`~wwmonitor.records.SnapshotResult` keyed by layer) are united; a
    layer no rank reported is recorded as an error, never dropped silently.
    """
    layers: dict[str, LayerMetrics] = {}
    res = SnapshotResult(step=step, epoch=epoch, time=min((p.time for p in parts), default=time.time()), layers=[])
    keyed = [
        f.name
        for f in dataclasses.fields(SnapshotResult)
        if f.name not in _NOT_PER_LAYER and isinstance(getattr(res, f.name), dict)
    ]
    for p in parts:
        layers.update({lm.name: lm for lm in p.layers})
        for name in keyed:
            getattr(res, name).update(getattr(p, name))
        for k in ("analysis_s", "analysis_cpu_s"):
            res.meta[k] = max(res.meta.get(k, 0.0), p.meta.get(k, 0.0))
        if "analysis_device" in p.meta:
            res.meta["analysis_device"] = p.meta["analysis_device"]
    for n in names:
        if n not in layers:
            res.errors[n] = "no result from the rank that analyses this layer"
            layers[n] = LayerMetrics(name=n, status="error", message=f"layer {n!r}: {res.errors[n]}")
    res.layers = [layers[n] for n in names]
    res.summary = model_summary(res.layers)
    res.meta["world_size"] = len(parts)
    return res
