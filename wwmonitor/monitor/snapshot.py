"""Copying weight matrices off the training path.

A *snapshot* is a host-memory copy of every monitored matrix at one training
step.  It is taken on the calling (training) thread -- so it reflects exactly
one step, never a mix of steps -- and then handed to the background worker.

Design (see ``docs/benchmarks.md`` for the measured cost):

* **Reusable buffers.**  Copies go into a :class:`BufferPool` of at most
  ``queue_size`` buffer sets (one per held snapshot, the one in analysis
  included), allocated on first use and reused afterwards, so the snapshot
  buffers take at most ``queue_size x`` the monitored weights' size -- the
  remaining share of the ``(queue_size + 1) x`` budget is for the analysis'
  working set -- and no allocation happens on the hot path after warm-up.
* **Dense copies.**  A matrix that is a permuted view of a dense block (the
  ``(K, out, in)`` stack of a conv kernel, see :mod:`wwmonitor.layers`) is
  copied as that flat block -- a plain ``memcpy`` -- and the same strides are
  re-applied to the host buffer.  A strided gather would be several times
  slower than the ``clone()`` it is compared with.
* **Fused matrices in one copy.**  Several matrices that are strided views
  of one storage (q/k/v of a fused ``c_attn``/``in_proj_weight``, LSTM
  gates) are copied together as the dense range of storage they span --
  one ``memcpy`` instead of one strided gather each -- when that range is
  no larger than their sizes summed; each matrix is then a view of that
  host buffer with its own offset and strides.
* **CUDA.**  Device tensors are copied with ``non_blocking=True`` into pinned
  host buffers on a dedicated copy stream that first waits for the current
  stream (so it sees the latest weights).  The training stream then waits for
  the copy's event *on the GPU* (``wait_event``), so later in-place optimiser
  updates cannot race the copy, while the host thread returns at once.  Only
  the worker blocks, on that event, before it reads the buffers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..frameworks import is_torch_tensor as _is_torch

__all__ = ["Snapshot", "BufferSet", "BufferPool", "copy_matrices", "nbytes_of", "as_numpy"]


@dataclass(eq=False)
class BufferSet:
    """Host buffers of one snapshot, keyed by matrix name (flat, 1-D)."""

    bufs: dict[str, Any] = field(default_factory=dict)
    #: cached copy plan (see :func:`copy_matrices`) and the spec generation it was built for
    plan: Any = None
    plan_key: Any = None
    _nbytes: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes of host memory held (updated whenever the buffers change)."""
        return self._nbytes


@dataclass
class Snapshot:
    """One queued snapshot: host copies plus what the worker needs to read them.

    ``entries`` are ``(name, layer_type, scale, host_array)``; ``ready`` (if
    not ``None``) blocks until asynchronous device-to-host copies are done.
    An entry whose weights were not copied because they had not changed holds a
    :class:`~wwmonitor.monitor.unchanged.Carried` instead of an array;
    ``tokens`` are the fingerprints of the copied weights that may be carried
    later (:mod:`wwmonitor.monitor.unchanged`).
    """

    step: int
    epoch: Optional[int]
    time: float
    entries: list[tuple[str, str, float, Any]]
    buffers: BufferSet
    ready: Optional[Callable[[], None]] = None
    tokens: dict[str, Any] = field(default_factory=dict)


def nbytes_of(x: Any) -> int:
    """Size in bytes of a NumPy array or torch tensor."""
    if hasattr(x, "element_size") and hasattr(x, "numel"):
        return int(x.element_size() * x.numel())
    return int(getattr(x, "nbytes", 0))


class BufferPool:
    """At most ``max_sets`` :class:`BufferSet` objects, recycled.

    ``acquire`` never creates more than ``max_sets`` sets; the monitor's queue
    accounting guarantees one is free whenever it asks.  ``peak_bytes`` is the
    largest total size of all sets alive at once (the snapshot part of the
    monitor's extra host memory).
    """

    def __init__(self, max_sets: int) -> None:
        if max_sets < 1:
            raise ValueError(f"max_sets must be >= 1, got {max_sets}")
        self.max_sets = max_sets
        self._free: list[BufferSet] = []
        self._all: list[BufferSet] = []
        self._lock = threading.Lock()
        self.peak_bytes = 0

    def acquire(self) -> BufferSet:
        with self._lock:
            if self._free:
                return self._free.pop()
            if len(self._all) >= self.max_sets:
                raise RuntimeError(f"buffer pool exhausted ({self.max_sets} sets in use)")
            bs = BufferSet()
            self._all.append(bs)
            return bs

    def release(self, bs: BufferSet) -> None:
        with self._lock:
            self._free.append(bs)

    @property
    def total_bytes(self) -> int:
        """Bytes held by all sets alive now (in use or free)."""
        with self._lock:
            return sum(b.nbytes for b in self._all)

    def note_size(self) -> None:
        """Update ``peak_bytes`` (called after a copy filled a set)."""
        total = self.total_bytes
        with self._lock:
            self.peak_bytes = max(self.peak_bytes, total)

    def clear(self) -> None:
        """Drop the free sets (their memory goes back to the allocator)."""
        with self._lock:
            free = {id(b) for b in self._free}
            self._all = [b for b in self._all if id(b) not in free]
            self._free.clear()


def as_numpy(x: Any) -> Any:
    """A host torch tensor as a NumPy array without running any torch kernel.

    float16/32/64 are zero-copy views; bfloat16 is widened exactly to float32
    in NumPy (a bfloat16 is the upper half of a float32).  Keeping torch
    kernels off the worker thread matters: a thread torch did not create gets
    OpenMP's default team size, and its spinning OpenMP threads were measured
    to slow the training thread down on a busy 2-core machine.
    Other inputs are returned unchanged.
    """
    if not _is_torch(x) or x.device.type != "cpu":
        return x
    import torch

    if x.dtype in (torch.float32, torch.float64, torch.float16):
        return x.numpy()
    if x.dtype == torch.bfloat16:  # one float32-sized array, shifted in place (no second temporary)
        wide = x.view(torch.int16).numpy().view(np.uint16).astype(np.uint32)
        wide <<= 16
        return wide.view(np.float32)
    return x


def _dense_block(t: Any) -> Optional[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """If view ``t`` covers exactly a dense block of its storage (any order of
    positive strides), return ``(storage_offset, size, stride)``; else ``None``."""
    size, stride = tuple(t.shape), tuple(t.stride())
    if any(s <= 0 for s, n in zip(stride, size) if n > 1):
        return None
    extent = 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if extent != t.numel():
        return None
    return int(t.storage_offset()), size, stride


def _flat_torch_buffer(bs: BufferSet, name: str, numel: int, dtype: Any, pin: bool) -> Any:
    import torch

    buf = bs.bufs.get(name)
    if buf is None or not _is_torch(buf) or buf.numel() != numel or buf.dtype != dtype or bool(buf.is_pinned()) != pin:
        buf = torch.empty(numel, dtype=dtype, pin_memory=pin)
        bs.bufs[name] = buf
    return buf


class _CudaCopier:
    """Per-device copy streams for the asynchronous device-to-host path."""

    def __init__(self) -> None:
        self.streams: dict[Any, Any] = {}

    def stream(self, device: Any) -> Any:
        import torch

        s = self.streams.get(device)
        if s is None:
            s = torch.cuda.Stream(device=device)
            self.streams[device] = s
        return s


_CUDA = _CudaCopier()


@dataclass
class _Plan:
    cpu: list[tuple[Any, Any]]  # (dst, src): synchronous host copies
    cuda: dict[Any, list[tuple[Any, Any]]]  # device -> (pinned dst, src view)
    entries: list[tuple[str, str, float, Any]]  # what the worker reads


def copy_matrices(
    specs: list[Any], bs: BufferSet, key: Any = None
) -> tuple[list[tuple[str, str, float, Any]], Optional[Callable[[], None]]]:
    """Copy each spec's tensor into ``bs`` (host memory); return the entries
    ``(name, type, scale, host_view)`` and a ``ready`` callable (``None`` when
    every copy was synchronous).

    ``specs`` are :class:`wwmonitor.layers.MatrixSpec`-like objects (``name``,
    ``type``, ``tensor``, ``scale``); tensors may be torch tensors on any
    device or array-likes (NumPy, JAX, ...).

    ``key`` identifies a list of specs whose tensors are persistent views of
    the model's parameters (same objects at every call).  With a key, the
    copy plan -- source views, destination buffers, host views -- is built
    once per buffer set and reused, so a warm snapshot is just the
    ``copy_`` calls.
    """
    if key is None or bs.plan_key != key or bs.plan is None:
        bs.plan = _build_plan(specs, bs)
        bs.plan_key = key
    plan: _Plan = bs.plan
    for dst, src in plan.cpu:
        if isinstance(dst, np.ndarray):
            np.copyto(dst, src)
        else:
            dst.copy_(src)
    ready = _cuda_copy(plan.cuda) if plan.cuda else None
    return list(plan.entries), ready


def _span(t: Any) -> Optional[tuple[int, int]]:
    """``(first, last + 1)``: the range of storage elements view ``t`` addresses (non-negative strides), else
    ``None``."""
    size, stride = tuple(t.shape), tuple(t.stride())
    if t.numel() == 0 or any(s < 0 for s in stride):
        return None
    first = int(t.storage_offset())
    return first, first + 1 + sum((n - 1) * s for n, s in zip(size, stride))


def _fused_groups(specs: list[Any]) -> dict[str, tuple[str, int, int]]:
    """Matrix name -> ``(group key, first, last + 1)`` for strided (non-dense) torch views that share one storage
    with other such views and whose joint storage range is no larger than their sizes summed (so one dense copy
    of the range costs no more memory than a copy of each).  The group key names the shared host buffer."""
    by_storage: dict[tuple[Any, ...], list[tuple[str, int, int, int]]] = {}
    for spec in specs:
        t = spec.tensor
        if not _is_torch(t) or _dense_block(t) is not None:
            continue
        sp = _span(t)
        if sp is None:
            continue
        key = (t.untyped_storage().data_ptr(), t.device, t.dtype)
        by_storage.setdefault(key, []).append((spec.name, sp[0], sp[1], t.numel()))
    out: dict[str, tuple[str, int, int]] = {}
    for members in by_storage.values():
        lo, hi = min(m[1] for m in members), max(m[2] for m in members)
        if len(members) < 2 or hi - lo > sum(m[3] for m in members):
            continue
        gkey = "\x1f".join(m[0] for m in members)  # cannot collide with a matrix name
        out.update({m[0]: (gkey, lo, hi) for m in members})
    return out


def _build_plan(specs: list[Any], bs: BufferSet) -> _Plan:  # long-function: one pass over three kinds of copy
    plan = _Plan([], {}, [])
    keep = set()
    groups = _fused_groups(specs)
    copied: set[str] = set()
    for spec in specs:
        name, typ, scale = spec.name, spec.type, float(getattr(spec, "scale", 1.0))
        t = spec.tensor
        keep.add(name)
        if _is_torch(t) and name in groups:  # one flat copy of the fused range, this matrix a view of it
            t = t.detach()
            gkey, lo, hi = groups[name]
            cuda = t.device.type == "cuda"
            flat = _flat_torch_buffer(bs, gkey, hi - lo, t.dtype, pin=cuda)
            keep.add(gkey)
            if gkey not in copied:
                copied.add(gkey)
                src = t.as_strided((hi - lo,), (1,), lo)
                (plan.cuda.setdefault(t.device, []) if cuda else plan.cpu).append((flat, src))
            host = flat.as_strided(tuple(t.shape), tuple(t.stride()), int(t.storage_offset()) - lo)
            plan.entries.append((name, typ, scale, host))
            continue
        if _is_torch(t):
            t = t.detach()
            dense = _dense_block(t)
            cuda = t.device.type == "cuda"
            flat = _flat_torch_buffer(bs, name, t.numel(), t.dtype, pin=cuda)
            if dense is not None:  # copy the dense block as one flat memcpy, re-apply the strides on the host
                src, dst = t.as_strided((t.numel(),), (1,), dense[0]), flat
                host = flat.as_strided(dense[1], dense[2], 0)
            else:
                src, dst = t, flat.view(t.shape)
                host = dst
            (plan.cuda.setdefault(t.device, []) if cuda else plan.cpu).append((dst, src))
        else:
            a = np.asarray(t)
            buf = bs.bufs.get(name)
            if not isinstance(buf, np.ndarray) or buf.size != a.size or buf.dtype != a.dtype:
                buf = np.empty(a.size, dtype=a.dtype)
                bs.bufs[name] = buf
            host = buf.reshape(a.shape)
            plan.cpu.append((host, a))
        plan.entries.append((name, typ, scale, host))
    for stale in set(bs.bufs) - keep:  # layers that disappeared (matrices= changed)
        del bs.bufs[stale]
    bs._nbytes = sum(nbytes_of(b) for b in bs.bufs.values())
    return plan


def _cuda_copy(jobs: dict[Any, list[tuple[Any, Any]]]) -> Callable[[], None]:
    """Enqueue device->pinned-host copies; return a callable waiting for them."""
    import torch

    events = []
    for device, pairs in jobs.items():
        stream = _CUDA.stream(device)
        current = torch.cuda.current_stream(device)
        stream.wait_stream(current)  # see every kernel already queued on the training stream
        with torch.cuda.stream(stream):
            for dst, src in pairs:
                if not src.is_contiguous():  # a non-dense view: gather on the device first
                    src = src.contiguous()
                    src.record_stream(stream)  # keep the temporary alive until the copy ran
                dst.copy_(src, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(stream)
        current.wait_event(ev)  # later in-place updates wait for the copy (on the GPU, not the host)
        events.append(ev)

    def ready() -> None:
        for ev in events:
            ev.synchronize()

    return ready
