"""Checkpoint I/O: read weights from disk safely, whole or streamed.

:func:`load_weights` reads a ``.safetensors`` file, a Hugging Face style folder (``*.safetensors`` shards or
``pytorch_model.bin``), a torch checkpoint (``.pt/.pth/.bin/.ckpt``, loaded with ``weights_only=True``), an
``.npz`` (``allow_pickle=False``) or a ``.keras`` model.  Nothing is ever unpickled with arbitrary code
execution.  A file that cannot be read as its format (truncated, corrupt, an ``.npz`` holding object arrays that
would need pickle) raises ``ValueError`` naming the file and the problem.

Streaming (:mod:`.lazy`): :func:`open_weights` on a ``.safetensors`` file or a folder of shards reads only the
headers (names, shapes, dtypes, offsets) and returns a :class:`LazyWeights` of :class:`LazyTensor`; each tensor is
memory-mapped read-only when it is loaded and released when dropped, so an analysis holds at most one tensor per
worker (docs/benchmarks.md, "Streaming checkpoint analysis").  :func:`iter_weights` yields ``(name, array)`` one
tensor at a time.
"""

from __future__ import annotations

from .lazy import LazyTensor, LazyWeights, iter_weights, open_weights
from .load import load_weights

__all__ = ["load_weights", "open_weights", "iter_weights", "LazyWeights", "LazyTensor"]
