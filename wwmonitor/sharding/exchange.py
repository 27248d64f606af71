"""The collective that moves each sharded matrix's data to its owner rank (see :mod:`.plan` for the routes).

:class:`ShardedSpectra` is a :class:`~wwmonitor.sharding.plan.ShardPlan` with
:meth:`~ShardedSpectra.exchange`: one batch of point-to-point sends/receives
per round of ``world`` consecutive matrices (distinct owners), never an
all-gather; the owner gets the rows it lacks (``gather``) or the other
ranks' packed triangular factors (``rfactor``).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .plan import OwnedMatrix, ShardPlan, _Entry, _rfactor_words

__all__ = ["ShardedSpectra"]

#: local shards with ``max |W|`` outside ``[2^-400, 2^400]`` are scaled by a power of two before the QR
_SCALE_LIMIT = 400


class ShardedSpectra(ShardPlan):
    """The plan (:class:`~wwmonitor.sharding.plan.ShardPlan`, same parameters) and the collective
    :meth:`exchange` that moves each matrix's data to its owner.  Both are collectives: call them on every
    rank, in the same order."""

    # -------------------------------------------------------------- exchange
    def exchange(self) -> list[OwnedMatrix]:
        """Move each matrix's data to its owner; return this rank's owned matrices, in extraction order.

        A collective: every rank calls it at the same point (between optimizer
        steps, when the parameters are sharded).  Work per round of ``world``
        consecutive matrices (distinct owners) is one batch of point-to-point
        sends/receives; each rank computes its local factors (``rfactor``) on
        its shard's device.  The returned data are private copies (training may
        go on and update the parameters).
        """
        import torch

        t0 = time.perf_counter()
        out: list[OwnedMatrix] = []
        with torch.no_grad():
            for start in range(0, len(self.entries), max(1, self.world)):
                out.extend(self._round(self.entries[start : start + self.world]))
        self.stats.exchanges += 1
        self.stats.seconds += time.perf_counter() - t0
        return out

    def _round(self, entries: Sequence[_Entry]) -> list[OwnedMatrix]:
        import torch.distributed as dist

        ops: list[Any] = []
        finish: list[Callable[[], Optional[OwnedMatrix]]] = []
        for e in entries:
            if e.route == "local":
                if e.owner == self.rank:
                    finish.append(
                        functools.partial(
                            lambda e: OwnedMatrix(
                                e.index, e.name, e.type, e.scale, e.shape, "matrix", data=_local_full(e)
                            ),
                            e,
                        )
                    )
            elif e.route == "unsupported":
                if e.owner == self.rank:
                    finish.append(
                        functools.partial(
                            lambda e: OwnedMatrix(e.index, e.name, e.type, e.scale, e.shape, "status", reason=e.reason),
                            e,
                        )
                    )
            elif e.route == "gather":
                finish.append(self._gather(e, ops))
            else:  # rfactor, skip
                finish.append(self._factors(e, ops))
        if ops and self.world > 1:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        owned = [f() for f in finish]
        return [o for o in owned if o is not None]

    def _count(self, e: _Entry, nbytes: int, received: bool) -> None:
        if received:
            self.stats.bytes_received += nbytes
            self.stats.received_by_name[e.name] = self.stats.received_by_name.get(e.name, 0) + nbytes
            self.stats.by_route[e.route] = self.stats.by_route.get(e.route, 0) + nbytes
        else:
            self.stats.bytes_sent += nbytes
        self.stats.messages += 1

    def _gather(self, e: _Entry, ops: list[Any]) -> Callable[[], Optional[OwnedMatrix]]:
        """Rows ``e.span`` of the parameter, from every shard that holds some, to the owner."""
        import torch
        import torch.distributed as dist

        lo_s, hi_s = e.span
        local = _contiguous_local(e.param)
        me = e.ranks.index(self.rank)
        if self.rank != e.owner:
            lo, hi = e.shard_rows(me)
            a, b = max(lo, lo_s), min(hi, hi_s)
            if b > a:
                piece = local[a - lo : b - lo].contiguous()
                ops.append(dist.P2POp(dist.isend, piece, e.owner))
                self._count(e, piece.numel() * piece.element_size(), received=False)
            return lambda: None
        buf = torch.empty((hi_s - lo_s, *local.shape[1:]), dtype=local.dtype, device=local.device)
        for j, r in enumerate(e.ranks):
            lo, hi = e.shard_rows(j)
            a, b = max(lo, lo_s), min(hi, hi_s)
            if b <= a:
                continue
            dst = buf[a - lo_s : b - lo_s]
            if r == self.rank:
                dst.copy_(local[a - lo : b - lo])
            else:
                ops.append(dist.P2POp(dist.irecv, dst, r))
                self._count(e, dst.numel() * dst.element_size(), received=True)

        def done() -> OwnedMatrix:
            W = buf.as_strided(e.size, e.stride, e.offset - lo_s * e.row_elems)
            self.stats.assembled.add(e.name)
            return OwnedMatrix(e.index, e.name, e.type, e.scale, e.shape, "matrix", data=W)

        return done

    def _factors(self, e: _Entry, ops: list[Any]) -> Callable[[], Optional[OwnedMatrix]]:
        """``rfactor``: each shard's packed ``R`` (plus its exponent and non-finite count) to the owner;
        ``skip``: only the counts."""
        import torch
        import torch.distributed as dist

        N, M = e.NM
        K = e.shape[0] if e.stack else 1
        local = _contiguous_local(e.param)
        dev = local.device
        payloads: dict[int, Any] = {}
        me = e.ranks.index(self.rank)
        mine = self._local_factor(e, local, me, counts_only=e.route == "skip")
        sizes = {
            j: 2 + (0 if e.route == "skip" else K * _rfactor_words(min(n, M), M) + self.tail_values(e, n))
            for j, n in self._piece_rows(e)
            if n > 0
        }
        if self.rank != e.owner:
            if me in sizes:
                ops.append(dist.P2POp(dist.isend, mine, e.owner))
                self._count(e, mine.numel() * 8, received=False)
            return lambda: None
        for j, r in enumerate(e.ranks):
            if j not in sizes:
                continue
            if r == self.rank:
                payloads[j] = mine
            else:
                payloads[j] = torch.empty(sizes[j], dtype=torch.float64, device=dev)
                ops.append(dist.P2POp(dist.irecv, payloads[j], r))
                self._count(e, sizes[j] * 8, received=True)

        return functools.partial(self._stack_factors, e, payloads, dev)

    def _stack_factors(self, e: _Entry, payloads: dict[int, Any], dev: Any) -> OwnedMatrix:
        """The owner's view of an ``rfactor`` matrix once the payloads arrived: the stacked factors at one
        exponent and the entry tail index (or just the non-finite count; ``skip``: the counts only)."""
        import torch

        N, M = e.NM
        K = e.shape[0] if e.stack else 1
        bad = int(sum(float(p[1].item()) for p in payloads.values()))
        if e.route == "skip" or bad:
            return OwnedMatrix(e.index, e.name, e.type, e.scale, e.shape, "status", nonfinite=bad)
        exps = {j: int(p[0].item()) for j, p in payloads.items()}
        top = max(exps.values())
        blocks, tails = [], []
        for j in sorted(payloads):
            k = min(dict(self._piece_rows(e))[j], M)
            words = K * _rfactor_words(k, M)
            R = torch.zeros((K, k, M), dtype=torch.float64, device=dev)
            iu = torch.triu_indices(k, M, device=dev)
            R[:, iu[0], iu[1]] = payloads[j][2 : 2 + words].view(K, -1)
            tails.append(payloads[j][2 + words :])
            if exps[j] != top:
                R = torch.ldexp(R, torch.tensor(float(exps[j] - top), dtype=torch.float64, device=dev))
            blocks.append(R)
        stacked = torch.cat(blocks, dim=1)
        return OwnedMatrix(
            e.index,
            e.name,
            e.type,
            e.scale,
            e.shape,
            "rfactor",
            data=stacked if e.stack else stacked[0],
            exponent=top,
            entry_tail=_entry_tail(tails, e),
        )

    def _local_factor(self, e: _Entry, local: Any, j: int, counts_only: bool = False) -> Any:
        """``[exponent, non-finite count, packed R]`` (float64) of this shard's rows of the matrix
        (``counts_only``: just the first two)."""
        import torch

        N, M = e.NM
        K = e.shape[0] if e.stack else 1
        i0, i1 = self._piece_range(e, j)
        lo = e.shard_rows(j)[0]
        head = torch.zeros(2, dtype=torch.float64, device=local.device)
        if i1 <= i0:
            return head
        size = list(e.size)
        size[e.sdim] = i1 - i0
        piece = local.as_strided(
            size, e.stride, e.offset + i0 * e.stride[e.sdim] - lo * e.row_elems + local.storage_offset()
        )
        if not e.stack:
            piece = piece.unsqueeze(0)
            sdim = e.sdim + 1
        else:
            sdim = e.sdim
        if counts_only:
            head[1] = float((~torch.isfinite(piece)).sum().item())
            return head
        X = (piece if sdim == 1 else piece.transpose(1, 2)).to(torch.float64)  # (K, n, M): rows along the shards
        k = min(X.shape[1], M)
        words = _rfactor_words(k, M)
        t = self.tail_values(e, i1 - i0)
        out = torch.zeros(2 + K * words + t, dtype=torch.float64, device=local.device)
        bad = int((~torch.isfinite(X)).sum().item())
        if bad:
            out[1] = float(bad)
            return out
        if t:  # the piece's largest |entries|, before any rescaling (the owner's entry tail index)
            out[2 + K * words :] = torch.topk(X.abs().flatten(), t).values
        amax = float(X.abs().max().item())
        ex = 0
        if amax > 2.0**_SCALE_LIMIT or 0.0 < amax < 2.0**-_SCALE_LIMIT:
            ex = math.frexp(amax)[1]
            X = torch.ldexp(X, torch.tensor(float(-ex), dtype=torch.float64, device=X.device))
        R = torch.linalg.qr(X, mode="r").R[:, :k, :]
        iu = torch.triu_indices(k, M, device=X.device)
        out[0] = float(ex)
        out[2 : 2 + K * words] = R[:, iu[0], iu[1]].reshape(-1)
        return out


def _entry_tail(tails: list[Any], e: _Entry) -> Optional[float]:
    """The matrix's entry tail index from its pieces' largest ``|W_ij|`` (their union holds the matrix's
    ``entry_tail_count + 1`` largest); ``None`` when none travelled (phases off, or too few entries)."""
    from ..phases import entry_tail_count, hill_tail_index

    vals = [t.double().cpu().numpy() for t in tails if t.numel()]
    if not vals:
        return None
    k = entry_tail_count(int(math.prod(e.shape)))
    top = np.sort(np.concatenate(vals))[-(k + 1) :]
    return hill_tail_index(top)


def _contiguous_local(p: Any) -> Any:
    """The local shard of a DTensor parameter, contiguous (FSDP2's already are: no copy)."""
    local = p.to_local().detach()
    return local if local.is_contiguous() else local.contiguous()


def _local_full(e: _Entry) -> Any:
    """A private copy of a matrix every rank holds in full -- a plain parameter, or a replicated DTensor
    (training goes on updating the parameter)."""
    if e.tensor is not None:
        return e.tensor.detach().clone()
    local = _contiguous_local(e.param)
    return local.as_strided(e.size, e.stride, e.offset + local.storage_offset()).clone()
