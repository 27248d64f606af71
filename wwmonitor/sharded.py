"""Spectral analysis of parameter-sharded models (FSDP2) without gathering the model on any rank.

Under ``torch.distributed.fsdp.fully_shard`` (FSDP2) every parameter is a
``DTensor`` whose rows (dim 0) are split over the ranks of a 1-D device mesh,
``torch.chunk``-style: rank ``j`` holds rows ``[j·c, (j+1)·c)``, ``c =
ceil(rows / world)``.  This module analyses such a model so that

* matrix ``i`` (extraction order, the same names as
  :func:`wwmonitor.layers.extract_matrices` gives the unsharded model) is
  analysed by **one owner rank**, ``i mod world``;
* only the data that owner needs moves to it, point to point
  (``isend``/``irecv`` batched per round, never an ``all_gather``), and no
  rank ever assembles a matrix it does not own;
* the metrics equal a single-process analysis of the same weights.

Two routes per matrix, chosen from shapes alone (so every rank takes the same
decision without talking), whichever moves fewer bytes:

``gather``
    every other rank sends the owner its rows of the matrix (native dtype);
    the owner assembles the matrix and analyses it like any other.
``rfactor`` (the Gram reduce, done stably)
    when the shards split the matrix's *long* side ``N`` (``W = [W_1; ...;
    W_p]`` with ``N >= M``), ``WᵀW = Σ_r W_rᵀ W_r``: the owner needs only
    the ``M x M`` Grams, not the ``N x M`` rows.  Each rank sends, instead of
    its Gram, the triangular factor ``R_r`` of ``W_r = Q_r R_r`` (float64
    Householder QR, ``R_rᵀR_r = W_rᵀW_r``), packed as its upper triangle: half
    the bytes of the Gram, and ``[R_1; ...; R_p]`` has exactly the singular
    values of ``W``, so the owner's analysis keeps the SVD recheck of
    (nearly) rank-deficient spectra (``matrix_rank``) without a second
    round trip -- a plain Gram sum could not (its ``M·eps·λ_max`` error
    hides the small singular values).  Cost: the local QR (``2 n_r M²``
    flops instead of ``n_r M²`` for a Gram) on every rank.
    It moves ``~4 M² · 8`` bytes per other rank against ``n_r · M · esz`` for
    the rows, so it wins when a shard has more rows than ``M`` (float32;
    ``2M`` for bf16): embeddings, LM heads, MLP projections at small world sizes.

A matrix whose sharded side is the short one (``M``), whose view mixes rows
(e.g. a column slice), or whose analysis needs the weights themselves
(``localization``, alert rules that inspect weights) takes ``gather``.
Parameters that are not ``DTensor`` (not sharded) are analysed by the owner
from its own copy; ``DTensor`` layouts other than ``Shard(0)`` on a 1-D mesh
of all ranks (tensor parallel, HSDP) are reported per layer as not supported.

Public entries: :class:`ShardedSpectra` (the plan and the collective
:meth:`~ShardedSpectra.exchange`), :func:`analyze_owned`,
:func:`analyze_sharded` (one call: a :class:`~wwmonitor.model.ModelReport`
on rank ``dst``) and :class:`OwnerAnalysis` (the background analysis the
training callbacks use, see :mod:`wwmonitor.callbacks._sharding`).
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .analyze import DEFAULT_OPTIONS, AnalysisOptions, analyze_evals, analyze_matrix
from .metrics import LayerMetrics
from .spectral import esd_batched_scaled, resolve_device, squared_singular_values_scaled

__all__ = [
    "is_sharded_model",
    "sharded_specs",
    "ShardedSpectra",
    "OwnedMatrix",
    "TransferStats",
    "analyze_owned",
    "analyze_sharded",
    "OwnerAnalysis",
    "ROUTES",
]

log = logging.getLogger("wwmonitor")

#: ``route=`` values: ``"auto"`` (fewest bytes), ``"gather"`` (always rows), ``"rfactor"`` (factors wherever the
#: shards split the long side)
ROUTES = ("auto", "gather", "rfactor")

#: local shards with ``max |W|`` outside ``[2^-400, 2^400]`` are scaled by a power of two before the QR
_SCALE_LIMIT = 400


# ------------------------------------------------------------------ detection ----
def _dtensor_cls() -> Any:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.4
        try:
            from torch.distributed._tensor import DTensor
        except ImportError:
            return None
    return DTensor


def _is_dtensor(t: Any) -> bool:
    cls = _dtensor_cls()
    return cls is not None and isinstance(t, cls)


def is_sharded_model(model: Any) -> bool:
    """Whether ``model`` (a torch module) holds ``DTensor`` parameters (FSDP2 ``fully_shard``, tensor parallel)."""
    params = getattr(model, "parameters", None)
    if params is None or _dtensor_cls() is None:
        return False
    try:
        return any(_is_dtensor(p) for p in params())
    except Exception:  # noqa: BLE001 - not a torch module after all
        return False


def _with_meta_params(model: Any, fn: Callable[[], Any]) -> tuple[Any, dict[int, Any]]:
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
                if p is None or not _is_dtensor(p):
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
    model: Any, *, layers: Optional[Sequence[Any]] = None, exclude: Optional[Sequence[Any]] = None, conv: str = "pool"
) -> list[Any]:
    """The :class:`~wwmonitor.layers.MatrixSpec` list of a (possibly) sharded model -- the same names, types
    and shapes as the unsharded model -- found without any collective: a spec made from a ``DTensor``
    parameter holds a ``meta`` view of its global shape (no data)."""
    from .layers import extract_matrices

    specs, _ = _with_meta_params(model, lambda: extract_matrices(model, layers=layers, exclude=exclude, conv=conv))
    return specs


# ------------------------------------------------------------------ the plan ----
@dataclass
class _Entry:
    index: int
    name: str
    type: str
    scale: float
    shape: tuple[int, ...]
    owner: int
    route: str  # "local" | "gather" | "rfactor" | "skip" | "unsupported"
    reason: str = ""  # unsupported: why
    tensor: Any = None  # local: the real spec tensor
    param: Any = None  # DTensor parameter
    size: tuple[int, ...] = ()  # the spec's view of the parameter's contiguous global layout
    stride: tuple[int, ...] = ()
    offset: int = 0
    rows: int = 0  # parameter rows (dim 0) and elements per row
    row_elems: int = 0
    ranks: tuple[int, ...] = ()  # global rank of shard j
    sdim: int = -1  # rfactor: the spec dim that indexes parameter rows (the long side)
    span: tuple[int, int] = (0, 0)  # gather: parameter rows [lo, hi) the view touches
    bytes_gather: int = 0
    bytes_rfactor: Optional[int] = None

    def shard_rows(self, j: int) -> tuple[int, int]:
        c = -(-self.rows // len(self.ranks))
        return min(self.rows, j * c), min(self.rows, (j + 1) * c)

    @property
    def stack(self) -> bool:
        return len(self.shape) == 3

    @property
    def NM(self) -> tuple[int, int]:
        a, b = self.shape[-2:]
        return max(a, b), min(a, b)


@dataclass
class TransferStats:
    """What this rank sent and received in :meth:`ShardedSpectra.exchange` (cumulative).

    ``received_by_name``: bytes received per matrix; ``assembled``: names of the
    matrices this rank assembled in full (only ever matrices it owns);
    ``by_route``: bytes received per route.
    """

    bytes_sent: int = 0
    bytes_received: int = 0
    messages: int = 0
    exchanges: int = 0
    received_by_name: dict[str, int] = field(default_factory=dict)
    assembled: set[str] = field(default_factory=set)
    by_route: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class OwnedMatrix:
    """What the owner rank analyses for one matrix: ``kind="matrix"`` -- the matrix itself (``data``,
    spec shape); ``"rfactor"`` -- the stacked triangular factors ``[R_1; ...; R_p]`` (``(Σk, M)`` or
    ``(K, Σk, M)``, float64) of ``W / 2^exponent``; ``"status"`` -- no data (``nonfinite`` entries,
    ``max_evals`` exceeded, or ``reason`` says why it is not supported)."""

    index: int
    name: str
    type: str
    scale: float
    shape: tuple[int, ...]
    kind: str
    data: Any = None
    exponent: int = 0
    nonfinite: int = 0
    reason: str = ""

    @property
    def N(self) -> int:
        return max(self.shape[-2:])

    @property
    def M(self) -> int:
        return min(self.shape[-2:])


def _view_rows(size: Sequence[int], stride: Sequence[int], offset: int, S: int) -> tuple[int, int]:
    """Parameter rows ``[lo, hi)`` touched by a view (``S`` elements per row)."""
    last = offset + sum((n - 1) * s for n, s in zip(size, stride) if n > 0)
    return offset // S, last // S + 1


def _row_dim(size: Sequence[int], stride: Sequence[int], offset: int, S: int) -> int:
    """The one view dim whose index walks parameter rows while every other dim stays inside a row, or -1."""
    dims = [d for d, (n, s) in enumerate(zip(size, stride)) if n > 1 and s > 0 and s % S == 0]
    if len(dims) != 1:
        return -1
    d = dims[0]
    inner = offset % S + sum((n - 1) * s for e, (n, s) in enumerate(zip(size, stride)) if e != d and n > 1)
    if inner >= S or any(s <= 0 for e, (n, s) in enumerate(zip(size, stride)) if e != d and n > 1):
        return -1
    return d


def _rfactor_words(k: int, M: int) -> int:
    """float64 words of a packed ``k x M`` upper-trapezoidal factor."""
    return k * M - k * (k - 1) // 2


class ShardedSpectra:
    """The per-matrix plan for a sharded model and the collective that moves each matrix's data to its owner.

    Parameters
    ----------
    model:
        A torch module whose parameters are FSDP2 ``DTensor`` shards (plain
        parameters are fine too: they are analysed from the owner's own copy).
    layers, exclude, conv:
        Matrix selection, as :func:`wwmonitor.layers.extract_matrices`.
    options:
        :class:`~wwmonitor.analyze.AnalysisOptions` (``localization`` forces the
        ``gather`` route; ``max_evals`` skips the transfer of matrices over it).
    route:
        ``"auto"`` (fewest bytes; default), ``"gather"`` or ``"rfactor"``
        (wherever the shards split the long side).
    needs_weights:
        The owner needs the weights themselves (alert rules that inspect
        them): every sharded matrix is gathered.

    Building the plan is a collective (one object all-gather that checks every
    rank planned the same); so is :meth:`exchange`.  Call both on every rank,
    in the same order.
    """

    def __init__(
        self,
        model: Any,
        *,
        layers: Optional[Sequence[Any]] = None,
        exclude: Optional[Sequence[Any]] = None,
        conv: str = "pool",
        options: AnalysisOptions = DEFAULT_OPTIONS,
        route: str = "auto",
        needs_weights: bool = False,
    ) -> None:
        from .distributed import gather_objects, rank_world
        from .layers import extract_matrices

        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
        self.model = model
        self.options = options
        self.route = route
        self.rank, self.world = rank_world()
        self.stats = TransferStats()
        specs, owner_of = _with_meta_params(
            model, lambda: extract_matrices(model, layers=layers, exclude=exclude, conv=conv)
        )
        if not specs:
            raise ValueError(f"no analysable layers in {type(model).__name__} (layers={layers!r}, exclude={exclude!r})")
        self.entries = [self._plan(i, sp, owner_of, needs_weights) for i, sp in enumerate(specs)]
        # every rank must have planned the same routes (a mismatch would hang the exchange): check once
        mine = [(e.name, e.route, e.shape, e.owner) for e in self.entries]
        local_ok = [self._local_rows_ok(e) for e in self.entries]
        everyone = gather_objects((mine, local_ok))
        assert everyone is not None
        if any(p[0] != mine for p in everyone):
            raise RuntimeError(
                "wwmonitor: the ranks extracted different matrices from the sharded model; "
                "every rank must monitor the same model with the same layers/exclude"
            )
        for e, *oks in zip(self.entries, *[p[1] for p in everyone]):
            if not all(oks) and e.route in ("gather", "rfactor", "skip"):
                e.route, e.reason = (
                    "unsupported",
                    ("the local shards are not torch.chunk row blocks of the parameter (not FSDP2's dim-0 layout)"),
                )

    # -------------------------------------------------------------- planning
    @property
    def names(self) -> list[str]:
        """Every monitored matrix, in extraction order (the same on every rank)."""
        return [e.name for e in self.entries]

    @property
    def owners(self) -> dict[str, int]:
        return {e.name: e.owner for e in self.entries}

    @property
    def layers(self) -> list[str]:
        """The matrices this rank owns (analyses)."""
        return [e.name for e in self.entries if e.owner == self.rank]

    def routes(self) -> dict[str, str]:
        """Matrix name -> route (``local``, ``gather``, ``rfactor``, ``skip``, ``unsupported``)."""
        return {e.name: e.route for e in self.entries}

    def _plan(self, i: int, sp: Any, owner_of: dict[int, Any], needs_weights: bool) -> _Entry:
        shape = tuple(int(s) for s in sp.shape)
        e = _Entry(i, sp.name, sp.type, float(sp.scale), shape, i % self.world, "local")
        t = sp.tensor
        if getattr(getattr(t, "device", None), "type", None) != "meta":
            e.tensor = t  # from a plain (unsharded) parameter: every rank holds all of it
            return e
        p = owner_of.get(t.untyped_storage()._cdata)
        if p is None:
            e.route, e.reason = "unsupported", "computed from sharded parameters (a parametrization), not a view of one"
            return e
        e.param = p
        e.size, e.stride, e.offset = (
            tuple(int(s) for s in t.shape),
            tuple(int(s) for s in t.stride()),
            int(t.storage_offset()),
        )
        reason = self._layout_problem(p)
        if reason:
            e.route, e.reason = "unsupported", reason
            return e
        if p.placements[0].is_replicate():
            return e  # "local": every rank holds all of it
        K = shape[0] if len(shape) == 3 else 1
        N, M = e.NM
        e.rows = int(p.shape[0])
        e.row_elems = int(math.prod(int(s) for s in p.shape[1:]))
        e.ranks = tuple(int(r) for r in p.device_mesh.mesh.flatten().tolist())
        e.span = _view_rows(e.size, e.stride, e.offset, e.row_elems)
        esz = p.element_size() if hasattr(p, "element_size") else int(p.dtype.itemsize)
        rows_elsewhere = sum(
            max(0, min(hi, e.span[1]) - max(lo, e.span[0]))
            for j, (lo, hi) in enumerate(map(e.shard_rows, range(len(e.ranks))))
            if e.ranks[j] != e.owner
        )
        e.bytes_gather = rows_elsewhere * e.row_elems * esz
        d = _row_dim(e.size, e.stride, e.offset, e.row_elems)
        e.sdim = d
        if d >= 0 and self.options.max_evals is not None and K * M > self.options.max_evals:
            e.route = "skip"  # only the non-finite counts travel (analyze_matrix checks those first)
            return e
        other = len(shape) - 1 if d == len(shape) - 2 else len(shape) - 2
        long_side = d >= len(shape) - 2 and shape[d] >= shape[other]
        if long_side and not (needs_weights or self.options.localization):
            e.bytes_rfactor = sum(
                8 * (2 + K * _rfactor_words(min(n, M), M))
                for j, n in self._piece_rows(e)
                if e.ranks[j] != e.owner and n > 0
            )
        if e.bytes_rfactor is not None and (
            self.route == "rfactor" or (self.route == "auto" and e.bytes_rfactor < e.bytes_gather)
        ):
            e.route = "rfactor"
        else:
            e.route = "gather"
        return e

    def _layout_problem(self, p: Any) -> str:
        from torch.distributed.tensor.placement_types import Shard

        mesh = p.device_mesh
        if mesh.ndim != 1 or len(p.placements) != 1:
            return (
                f"DTensor layout {tuple(p.placements)} on a {mesh.ndim}-D mesh is not supported "
                "(FSDP2's Shard(0) on a 1-D mesh of all ranks is)"
            )
        pl = p.placements[0]
        if not (type(pl) is Shard and pl.dim == 0):
            if pl.is_replicate():
                return ""  # every rank holds all of it: analysed like a plain parameter
            return f"DTensor placement {pl!r} is not supported (FSDP2's Shard(dim=0) is)"
        ranks = sorted(int(r) for r in mesh.mesh.flatten().tolist())
        if ranks != list(range(self.world)):
            return f"the parameter's mesh {ranks} is not all {self.world} ranks (HSDP / sub-meshes are not supported)"
        if p.ndim < 2:
            return "a sharded parameter with fewer than 2 dimensions"
        return ""

    def _piece_rows(self, e: _Entry) -> list[tuple[int, int]]:
        """(shard j, how many indices of the spec's row dim it holds)."""
        return [(j, self._piece_range(e, j)[1] - self._piece_range(e, j)[0]) for j in range(len(e.ranks))]

    def _piece_range(self, e: _Entry, j: int) -> tuple[int, int]:
        """Indices ``[i0, i1)`` along ``e.sdim`` whose parameter rows shard ``j`` holds."""
        lo, hi = e.shard_rows(j)
        base, step = e.offset // e.row_elems, e.stride[e.sdim] // e.row_elems
        n = e.size[e.sdim]
        i0 = min(n, max(0, -(-(lo - base) // step)))
        i1 = min(n, max(0, -(-(hi - base) // step)))
        return i0, max(i0, i1)

    def _local_rows_ok(self, e: _Entry) -> bool:
        if e.route not in ("gather", "rfactor", "skip"):
            return True
        j = e.ranks.index(self.rank)
        lo, hi = e.shard_rows(j)
        local = e.param.to_local()
        return tuple(local.shape) == (hi - lo, *tuple(int(s) for s in e.param.shape[1:]))

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
            j: 2 + (0 if e.route == "skip" else K * _rfactor_words(min(n, M), M))
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

        def done() -> OwnedMatrix:
            bad = int(sum(float(p[1].item()) for p in payloads.values()))
            if e.route == "skip" or bad:
                return OwnedMatrix(e.index, e.name, e.type, e.scale, e.shape, "status", nonfinite=bad)
            exps = {j: int(p[0].item()) for j, p in payloads.items()}
            top = max(exps.values())
            blocks = []
            for j in sorted(payloads):
                k = min(dict(self._piece_rows(e))[j], M)
                R = torch.zeros((K, k, M), dtype=torch.float64, device=dev)
                iu = torch.triu_indices(k, M, device=dev)
                R[:, iu[0], iu[1]] = payloads[j][2:].view(K, -1)
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
            )

        return done

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
        out = torch.zeros(2 + K * words, dtype=torch.float64, device=local.device)
        bad = int((~torch.isfinite(X)).sum().item())
        if bad:
            out[1] = float(bad)
            return out
        amax = float(X.abs().max().item())
        ex = 0
        if amax > 2.0**_SCALE_LIMIT or 0.0 < amax < 2.0**-_SCALE_LIMIT:
            ex = math.frexp(amax)[1]
            X = torch.ldexp(X, torch.tensor(float(-ex), dtype=torch.float64, device=X.device))
        R = torch.linalg.qr(X, mode="r").R[:, :k, :]
        iu = torch.triu_indices(k, M, device=X.device)
        out[0] = float(ex)
        out[2:] = R[:, iu[0], iu[1]].reshape(-1)
        return out


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


# ------------------------------------------------------------------ analysis ----
def analyze_owned(
    om: OwnedMatrix, options: AnalysisOptions = DEFAULT_OPTIONS, device: Optional[str] = None
) -> LayerMetrics:
    """Metrics of one owned matrix: :func:`wwmonitor.analyze_matrix` for an assembled matrix, the same
    checks and :func:`~wwmonitor.analyze.analyze_evals` on the singular values of the stacked factors
    for ``rfactor`` (the eigenvalues of ``WᵀW``, with the SVD recheck) -- equal to a single-process
    analysis of the full matrix.  ``device`` as :func:`wwmonitor.analyze_matrix`."""
    name = om.name
    if om.kind == "matrix":
        return analyze_matrix(om.data, name, layer_type=om.type, scale=om.scale, options=options, device=device)
    N, M = om.N, om.M
    K = om.shape[0] if len(om.shape) == 3 else 1
    lm = LayerMetrics(name=name, type=om.type, shape=om.shape, N=N, M=M, Q=N / M, num_evals=K * M)
    if om.reason:
        lm.status, lm.warning = "error", "error"
        lm.message = f"layer {name!r}: not analysed under FSDP: {om.reason}"
        return lm
    # the same order of checks and the same messages as analyze_matrix
    if om.nonfinite:
        lm.status = "non_finite"
        lm.message = f"layer {name!r}: {om.nonfinite} non-finite weight(s) (NaN/Inf); no spectrum computed"
        lm.warning = "non-finite"
        return lm
    if options.max_evals is not None and K * M > options.max_evals:
        lm.status = "too_many_evals"
        lm.message = f"layer {name!r}: {K * M} eigenvalues > max_evals={options.max_evals}; skipped"
        return lm
    route = _route_for(om.data, device)
    if len(om.shape) == 3:
        ev, e2 = esd_batched_scaled(om.data, name=name, rescale_large=True, device=route)
        ev_sq = np.sort(ev.ravel())
    else:
        ev_sq, e2 = squared_singular_values_scaled(
            om.data, name=name, low_memory=options.low_memory, rescale_large=True, device=route
        )
    return analyze_evals(ev_sq * om.scale, lm, options=options, scale=om.scale, W=None, exponent2=e2 + 2 * om.exponent)


def _route_for(data: Any, device: Optional[str]) -> str:
    """The spectral route for owned ``data`` (a torch tensor) under ``device``."""
    if device is None or device == "auto":
        return "torch" if getattr(data.device, "type", "cpu") != "cpu" else "cpu"
    return device


def analyze_sharded(
    model: Any,
    *,
    layers: Optional[Sequence[Any]] = None,
    exclude: Optional[Sequence[Any]] = None,
    conv: str = "pool",
    options: AnalysisOptions = DEFAULT_OPTIONS,
    route: str = "auto",
    analysis_device: str = "auto",
    dst: Optional[int] = 0,
    spectra: Optional[ShardedSpectra] = None,
    **option_overrides: Any,
) -> Any:
    """Analyse a sharded (FSDP2) model: every rank analyses the matrices it owns, the metrics are gathered to
    rank ``dst`` (``None``: to every rank).  Returns a :class:`~wwmonitor.model.ModelReport` there (``None``
    elsewhere); ``meta["transfer"]`` holds this rank's :class:`TransferStats`.  A collective: call it on every
    rank.  Pass ``spectra`` to reuse a plan (and its byte counters)."""
    from .distributed import gather_objects
    from .model import ModelReport

    if option_overrides:
        bad = set(option_overrides) - set(AnalysisOptions.__dataclass_fields__)
        if bad:
            raise TypeError(f"analyze_sharded: unknown option(s) {sorted(bad)}")
        options = AnalysisOptions(**{**options.__dict__, **option_overrides})
    sp = (
        spectra
        if spectra is not None
        else ShardedSpectra(model, layers=layers, exclude=exclude, conv=conv, options=options, route=route)
    )
    owned = sp.exchange()
    device = resolve_device(analysis_device, (o.data for o in owned if o.data is not None))
    mine = {}
    for om in owned:
        try:
            mine[om.index] = analyze_owned(om, options, device)
        except Exception as e:  # noqa: BLE001 - one layer's failure is its status
            mine[om.index] = LayerMetrics(
                name=om.name,
                type=om.type,
                shape=om.shape,
                status="error",
                warning="error",
                message=f"layer {om.name!r}: {type(e).__name__}: {e}",
            )
    parts = gather_objects(mine, dst=dst)
    if parts is None:
        return None
    merged: dict[int, LayerMetrics] = {}
    for p in parts:
        merged.update(p)
    return ModelReport(
        [merged[i] for i in sorted(merged)],
        source=type(model).__name__,
        meta={
            "num_matrices": len(sp.entries),
            "world_size": sp.world,
            "sharded": True,
            "routes": sp.routes(),
            "transfer": sp.stats,
        },
    )


# ------------------------------------------------------------------ background analysis (callbacks) ----
class OwnerAnalysis:
    """A rank's share of a sharded model's monitoring, for the training callbacks (the FSDP counterpart of
    the DDP shard monitor in :mod:`wwmonitor.callbacks._sharding`).

    :meth:`snapshot` runs :meth:`ShardedSpectra.exchange` on the calling (training) thread -- a collective,
    called by every rank at the same hook -- and queues the owned matrices; one background thread analyses
    them (on ``analysis_device``; on CUDA on a side stream) into one
    :class:`~wwmonitor.records.SnapshotResult` per step (:attr:`results`).  ``queue_size`` snapshots at
    most are held (waiting or in analysis); a further snapshot waits for a free slot (never skips, so every
    rank reports every step).  Memory: the owned matrices / factors of the held snapshots (about
    ``1/world`` of the monitored weights each).
    """

    def __init__(
        self,
        model: Any,
        *,
        layers: Optional[Sequence[Any]] = None,
        exclude: Optional[Sequence[Any]] = None,
        options: Optional[AnalysisOptions] = None,
        inspector: Any = None,
        queue_size: int = 3,
        analysis_device: str = "auto",
        route: str = "auto",
        history: int = 32,
        blas_threads: Optional[int] = 1,
    ) -> None:
        from .spectral import check_device

        self.options = options if options is not None else AnalysisOptions()
        self.spectra = ShardedSpectra(
            model,
            layers=layers,
            exclude=exclude,
            options=self.options,
            route=route,
            needs_weights=inspector is not None,
        )
        self.analysis_device = check_device(analysis_device, "analysis_device")
        self.inspector = inspector
        self.blas_threads = blas_threads
        self.errors = 0
        self._results: collections.deque = collections.deque(maxlen=history)
        self._jobs: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._slots = threading.Semaphore(max(1, int(queue_size)))
        self._busy = 0
        self._closed = False
        self.abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wwmonitor-sharded", daemon=True)
        self._thread.start()

    @property
    def names(self) -> list[str]:
        return self.spectra.names

    @property
    def layers(self) -> list[str]:
        return self.spectra.layers

    @property
    def results(self) -> list[Any]:
        with self._cv:
            return list(self._results)

    @property
    def stats(self) -> TransferStats:
        return self.spectra.stats

    def snapshot(self, *, step: int, epoch: Optional[int] = None, epoch_end: bool = True, model: Any = None) -> bool:
        """Exchange (collective) and queue this rank's owned matrices of ``step`` for analysis."""
        if self._closed:
            raise RuntimeError("OwnerAnalysis is closed")
        self._slots.acquire()  # a free slot first: at most queue_size snapshots' data are ever held
        try:
            owned = self.spectra.exchange()
            ready = _stream_marker(owned)
        except BaseException:
            self._slots.release()
            raise
        with self._cv:
            self._jobs.append((int(step), epoch, time.time(), owned, ready))
            self._busy += 1
            self._cv.notify_all()
        return True

    def flush(self, timeout: Optional[float] = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._busy and self._thread.is_alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    log.warning(
                        "wwmonitor: sharded analysis flush timed out after %s s (%d snapshot(s) pending)",
                        timeout,
                        self._busy,
                    )
                    return
                self._cv.wait(left)

    def close(self, timeout: Optional[float] = None) -> None:
        if self._closed:
            return
        self.flush(timeout)
        with self._cv:
            self._closed = True
            if self._busy:
                self.abort.set()
            self._cv.notify_all()
        self._thread.join(None if timeout is None else timeout + 5.0)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._closed:
                    self._cv.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            try:
                res = self._analyse(*job)
                with self._cv:
                    self._results.append(res)
            except Exception as e:  # noqa: BLE001 - the thread must survive anything
                self.errors += 1
                log.warning("wwmonitor: sharded analysis of step %s failed (%s: %s)", job[0], type(e).__name__, e)
            finally:
                del job
                self._slots.release()
                with self._cv:
                    self._busy -= 1
                    self._cv.notify_all()

    def _analyse(self, step: int, epoch: Optional[int], t: float, owned: list[OwnedMatrix], ready: Any) -> Any:
        from .monitor.analyzer import analyse_snapshot
        from .monitor.snapshot import BufferSet, Snapshot
        from .spectral import blas_thread_limit

        data = [o.data for o in owned if o.data is not None]
        device = resolve_device(self.analysis_device, data)
        on_cuda = any(getattr(getattr(d, "device", None), "type", None) == "cuda" for d in data) or device.startswith(
            "cuda"
        )
        stream = None
        if on_cuda:
            from .monitor.analyzer import _side_stream

            cuda_dev = (
                device if device.startswith("cuda") else str(next(d.device for d in data if d.device.type == "cuda"))
            )
            stream = _side_stream(cuda_dev)
            if ready is not None:
                stream.wait_event(ready)  # the received data are complete (recorded on the training stream)

        def fn(om: Any, name: str, typ: str, scale: float, opts: AnalysisOptions) -> LayerMetrics:
            if stream is None:
                return analyze_owned(om, opts, device)
            import torch

            with torch.cuda.stream(stream):
                if device == "cpu" and om.data is not None and om.data.device.type == "cuda":
                    om.data = om.data.to("cpu")  # off the training stream; then NumPy as everywhere else
                return analyze_owned(om, opts, device)

        snap = Snapshot(
            step=step, epoch=epoch, time=t, entries=[(o.name, o.type, o.scale, o) for o in owned], buffers=BufferSet()
        )
        inspector = _OwnedInspector(self.inspector) if self.inspector is not None else None
        with blas_thread_limit(self.blas_threads):
            res = analyse_snapshot(snap, self.options, fn, self.abort, inspector)
        if stream is not None:
            stream.synchronize()  # nothing of this snapshot is still read when its tensors are freed
        res.meta["analysis_device"] = device
        self.errors += len(res.errors)
        return res


class _OwnedInspector:
    """Alert-rule weight inspection on an owned (assembled) matrix, as a host array."""

    def __init__(self, rules: Any) -> None:
        self.rules = rules

    def inspect_weights(self, name: str, om: Any, lm: LayerMetrics) -> Any:
        from .spectral import to_numpy

        if om.kind == "matrix":
            return self.rules.inspect_weights(name, to_numpy(om.data), lm)
        return None


def _stream_marker(owned: list[OwnedMatrix]) -> Any:
    """A CUDA event on the current stream after the exchange (``None`` off CUDA): the analysis stream waits
    for it before reading the received tensors."""
    for o in owned:
        d = o.data
        if d is not None and getattr(getattr(d, "device", None), "type", None) == "cuda":
            import torch

            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(d.device))
            return ev
    return None
