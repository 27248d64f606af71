"""Where and on how many threads the spectral math runs: the analysis device (``"cpu"``, ``"cuda[:N]"``,
``"torch"``, ``"auto"``) and the BLAS thread limit used while many matrices are analysed at once."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Iterator, Optional

from .frameworks import is_torch_tensor as _is_torch_tensor
from .inputs import _container_problem, _torch, to_numpy

__all__ = [
    "DEVICES",
    "check_device",
    "auto_device",
    "resolve_device",
    "uses_torch_route",
    "to_analysis_tensor",
    "usable_cpus",
    "blas_thread_limit",
]

log = logging.getLogger("wwmonitor")


#: ``device=`` values of the ESD functions and :func:`wwmonitor.analyze_matrix`
#: (``"cuda:1"`` etc. are accepted too).  ``"torch"`` is the torch route on the
#: tensor's own device, CPU tensors included (used to test the accelerator code on CPU).
DEVICES = ("auto", "cpu", "cuda", "torch")


def check_device(device: Optional[str], what: str = "device") -> str:
    """Normalise an analysis device (``None`` -> ``"auto"``); ``ValueError`` naming ``what`` otherwise."""
    if device is None:
        return "auto"
    if not isinstance(device, str) or not (device in DEVICES or re.fullmatch(r"cuda:\d+", device)):
        raise ValueError(f"{what} must be one of {DEVICES} (or 'cuda:N'), got {device!r}")
    return device


def auto_device(tensors: Any) -> str:
    """``device="auto"`` for a whole model: ``"cuda:N"`` -- the device of the first torch tensor held
    on CUDA -- when CUDA is available, else ``"cpu"`` (NumPy arrays, CPU tensors, Keras/TF/JAX arrays)."""
    import sys

    if "torch" not in sys.modules:
        return "cpu"
    torch = _torch()
    for t in tensors:
        dev = getattr(t, "device", None)
        if _is_torch_tensor(t) and dev is not None and dev.type == "cuda" and torch.cuda.is_available():
            return f"cuda:{dev.index if dev.index is not None else torch.cuda.current_device()}"
    return "cpu"


def resolve_device(device: Optional[str], tensors: Any = (), what: str = "analysis_device") -> str:
    """Validate ``device`` (``ValueError`` naming ``what``: an unknown value, or CUDA asked for but not
    available) and resolve ``"auto"`` with :func:`auto_device` over ``tensors``."""
    device = check_device(device, what)
    if device == "auto":
        return auto_device(tensors)
    if device.startswith("cuda"):
        torch = _torch()
        if not torch.cuda.is_available():
            raise ValueError(f"{what}={device!r} but CUDA is not available; use 'auto' or 'cpu'")
        if device != "cuda" and torch.device(device).index >= torch.cuda.device_count():
            raise ValueError(f"{what}={device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def uses_torch_route(W: Any, device: Optional[str]) -> bool:
    """Whether ``W`` is analysed by the torch route under ``device`` (see :data:`DEVICES`):
    ``"auto"`` -- torch tensors on an accelerator; ``"cpu"`` -- never; ``"torch"``/``"cuda"`` -- always."""
    device = check_device(device)
    if device == "cpu":
        return False
    if device == "auto":
        return _is_torch_tensor(W) and getattr(getattr(W, "device", None), "type", "cpu") != "cpu"
    return True


def to_analysis_tensor(W: Any, device: Optional[str], *, name: str = "W") -> Any:
    """``W`` as a torch tensor where the torch route runs it: ``"torch"`` -- its own device
    (NumPy arrays become CPU tensors, zero-copy); ``"cuda[:N]"`` -- that CUDA device
    (``RuntimeError`` when CUDA is not available); ``"auto"`` -- unchanged."""
    torch = _torch()
    device = check_device(device)
    problem = _container_problem(W)
    if problem:
        raise TypeError(f"{name}: {problem}")
    t = W.detach() if _is_torch_tensor(W) else torch.as_tensor(to_numpy(W, name=name))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"{name}: analysis device {device!r} requested but CUDA is not available")
        if t.device.type != "cuda" or (device != "cuda" and t.device != torch.device(device)):
            t = t.to(device if device != "cuda" else "cuda", non_blocking=False)
    return t


# ------------------------------------------------------------ BLAS threads ----
def usable_cpus() -> int:
    """CPUs this process may run on (``sched_getaffinity``, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _controller() -> Any:
    """A fresh ``ThreadpoolController`` (about 1 ms; sees libraries loaded
    since the last call), or ``None`` without ``threadpoolctl``."""
    try:
        from threadpoolctl import ThreadpoolController

        return ThreadpoolController()
    except Exception as e:  # noqa: BLE001 - threadpoolctl missing or broken: no limit, but say so
        _warn_once(
            f"wwmonitor: cannot inspect the BLAS libraries (threadpoolctl: {type(e).__name__}: {e}); "
            "BLAS threads are not limited"
        )
        return None


_WARNED: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        log.warning(msg)


@contextlib.contextmanager
def blas_thread_limit(n: Optional[int]) -> Iterator[None]:
    """Limit the BLAS/LAPACK libraries (OpenBLAS, MKL, BLIS) to ``n`` threads
    inside the ``with`` block, then restore the previous setting.

    The limit is process-wide (a BLAS library has one thread count) and only
    ever lowers a library's current thread count, never raises it (a user's
    ``OPENBLAS_NUM_THREADS=1`` stays in force).  ``n=None`` or a missing
    ``threadpoolctl`` leaves BLAS untouched.  OpenMP runtimes (torch's
    intra-op pool) are not changed.
    """
    tpc = _controller() if n is not None else None
    if tpc is None or n is None:
        yield
        return
    try:
        blas = tpc.select(user_api="blas")
        current = [int(lib.num_threads) for lib in blas.lib_controllers]
    except Exception as e:  # noqa: BLE001 - a broken library probe must not stop the analysis
        _warn_once(
            f"wwmonitor: cannot read the BLAS thread counts (threadpoolctl: {type(e).__name__}: {e}); "
            "BLAS threads are not limited"
        )
        yield
        return
    if not current or min(max(1, int(n)), max(current)) >= max(current):
        yield
        return
    with blas.limit(limits=max(1, int(n))):
        yield
