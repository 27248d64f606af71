"""The per-matrix plan for a parameter-sharded (FSDP2) model: who owns each matrix, which route its data take.

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

The exchange itself is :mod:`wwmonitor.sharding.exchange`; the owner's
analysis :mod:`wwmonitor.sharding.owned`; the Monitor's snapshot strategy
for such models :mod:`wwmonitor.monitor.strategies`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..analyze import DEFAULT_OPTIONS, AnalysisOptions
from .detect import with_meta_params

__all__ = ["ROUTES", "ShardPlan", "TransferStats", "OwnedMatrix"]

#: ``route=`` values: ``"auto"`` (fewest bytes), ``"gather"`` (always rows), ``"rfactor"`` (factors wherever the
#: shards split the long side)
ROUTES = ("auto", "gather", "rfactor")


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
    #: ``rfactor``: the tail index of the matrix entries (phase rule 4c), from the pieces' largest ``|W_ij|``
    entry_tail: Optional[float] = None

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


class ShardPlan:
    """The per-matrix plan for a sharded model (the collective that moves the data is
    :class:`wwmonitor.sharding.exchange.ShardedSpectra`, a subclass).

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
    lora:
        As :func:`wwmonitor.layers.extract_matrices` (a LoRA weight computed
        from sharded parameters is reported per layer as not supported).

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
        lora: str = "effective",
    ) -> None:
        from ..distributed import rank_world
        from ..layers import extract_matrices

        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
        self.model = model
        self.options = options
        self.route = route
        self.rank, self.world = rank_world()
        self.stats = TransferStats()
        #: weights of the model that are not analysed, and why (``extract_matrices(skipped=...)``)
        self.skipped: list[tuple[str, str]] = []
        specs, owner_of = with_meta_params(
            model,
            lambda: extract_matrices(model, layers=layers, exclude=exclude, conv=conv, skipped=self.skipped, lora=lora),
        )
        #: the specs of every monitored matrix (``meta`` views for sharded parameters: no data)
        self.specs = specs
        if not specs:
            raise ValueError(f"no analysable layers in {type(model).__name__} (layers={layers!r}, exclude={exclude!r})")
        self.entries = [self._plan(i, sp, owner_of, needs_weights) for i, sp in enumerate(specs)]
        self._check_agreement()

    def _check_agreement(self) -> None:
        """Every rank must have planned the same routes (a mismatch would hang the exchange): one object
        all-gather checks it, and marks matrices whose local shards are not FSDP2's row blocks."""
        from ..distributed import gather_objects

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
                8 * (2 + K * _rfactor_words(min(n, M), M) + self.tail_values(e, n))
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

    def tail_values(self, e: _Entry, n: int) -> int:
        """How many of a piece's largest ``|W_ij|`` travel with its factors (``rfactor``), for the entry tail
        index of phase rule 4c (:func:`wwmonitor.phases.entry_tail_index`, computed on the owner from the
        union of the pieces' largest entries, which holds the matrix's largest): ``entry_tail_count + 1``, at
        most the piece's ``K·n·M`` entries; 0 when the phases are off or the matrix is too small."""
        from ..phases import entry_tail_count

        if not (self.options.phases and self.options.mp_fit):
            return 0
        K = e.shape[0] if e.stack else 1
        k = entry_tail_count(int(math.prod(e.shape)))
        return 0 if k == 0 else min(k + 1, K * n * e.NM[1])

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
