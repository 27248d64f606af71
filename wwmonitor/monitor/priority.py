"""Training first: the monitor's background threads run at a lower OS priority than training.

On Linux every thread has its own nice value (the kernel schedules threads, and
``setpriority(PRIO_PROCESS, tid, n)`` with a thread id changes that one thread).
:func:`lower_this_thread` is called once, first thing, by each CPU-consuming thread
of a monitor -- the analysis worker and the dispatcher (alert rules, ESD figures,
sink hand-off) -- and raises that thread's nice value by ``analysis_nice``
(``Monitor(analysis_nice=10)``, the default; ``0`` leaves it).  The nice value is
relative to the thread's current one (inherited from the thread that started it)
and is capped at 19.  Threads the worker itself starts later (an OpenMP team of a
torch kernel, say) inherit the lowered value.

Raising one's own nice value needs no privilege on Linux.  Where it is not
possible (not Linux: elsewhere ``PRIO_PROCESS`` names a process, not a thread; or
the call fails), the thread runs at the normal priority and the reason is logged once
per process and thread kind on the ``wwmonitor`` logger; the monitor works the same.

Why it matters: on a 2-core machine that trains on every core, a background
thread at the same priority takes its share of CPU time from training; at nice
10 the scheduler gives it roughly a tenth of a core's weight while training
runs (CFS weights 1024 vs 110), so it mostly runs in the gaps.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Optional

__all__ = ["MAX_NICE", "lower_this_thread", "thread_nice"]

log = logging.getLogger("wwmonitor")

#: the largest nice value (lowest priority) Linux accepts
MAX_NICE = 19

_said: set[str] = set()
_said_lock = threading.Lock()


def thread_nice() -> Optional[int]:
    """The calling thread's nice value (``None`` where the platform cannot tell)."""
    get = getattr(os, "getpriority", None)
    native = getattr(threading, "get_native_id", None)
    if not sys.platform.startswith("linux") or get is None or native is None:
        return None
    try:
        return int(get(os.PRIO_PROCESS, native()))
    except OSError:
        return None


def lower_this_thread(nice: int, what: str) -> Optional[str]:
    """Raise the calling thread's nice value by ``nice`` (capped at :data:`MAX_NICE`).

    Returns ``None`` when done (or when ``nice`` is 0), else the reason it was not
    done -- also logged once per ``what`` (e.g. ``"analysis"``) on the ``wwmonitor``
    logger.  Never raises.
    """
    if nice <= 0:
        return None
    setp = getattr(os, "setpriority", None)
    native = getattr(threading, "get_native_id", None)
    if not sys.platform.startswith("linux") or setp is None or native is None:
        # elsewhere (macOS, BSD) PRIO_PROCESS takes a process id, not a thread's: never guess
        return _cannot(what, f"per-thread nice values are a Linux feature (platform {sys.platform!r})")
    try:
        tid = native()
        now = int(os.getpriority(os.PRIO_PROCESS, tid))
        setp(os.PRIO_PROCESS, tid, min(MAX_NICE, now + int(nice)))
    except OSError as e:
        return _cannot(what, f"os.setpriority failed ({type(e).__name__}: {e})")
    return None


def _cannot(what: str, reason: str) -> str:
    msg = f"wwmonitor: the {what} thread runs at the normal priority: {reason}"
    with _said_lock:
        first = what not in _said
        _said.add(what)
    log.log(logging.INFO if first else logging.DEBUG, msg)
    return msg
