"""Training first (issue 20, part 1): the monitor's threads run at a lower OS priority, the analysis never makes
training wait under the default policy, the worker's own torch threads are capped, and the host analysis
releases the GIL inside LAPACK."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wwmonitor.analyze import AnalysisOptions  # noqa: E402
from wwmonitor.monitor import Monitor, priority  # noqa: E402
from wwmonitor.monitor.analyzer import default_analyze  # noqa: E402

from _logcheck import logs  # noqa: E402

FAST = AnalysisOptions(mp_fit=False, phases=False)
LINUX = sys.platform.startswith("linux")


def tiny() -> "torch.nn.Module":
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.ReLU(), torch.nn.Linear(48, 16))


def _nice_of(tid: int) -> int:
    """A thread's nice value read back from the kernel (field 19 of /proc/self/task/<tid>/stat)."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[16])  # fields after "(comm)" start at field 3: nice is field 19


@pytest.mark.skipif(not LINUX, reason="per-thread nice values are a Linux feature; the other path is tested below")
def test_background_threads_run_at_a_lower_priority_and_training_keeps_its_own(tmp_path):
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with Monitor(tiny(), tmp_path, every_n_epochs=None, options=FAST, analysis_nice=2) as mon:
        assert mon.snapshot(step=1)
        mon.flush()  # the worker, the dispatcher and the store's sink thread have each run
        want = min(priority.MAX_NICE, base + 2)
        assert _nice_of(mon._worker.thread.native_id) == want
        assert _nice_of(mon._dispatcher.thread.native_id) == want
        assert {_nice_of(w.thread.native_id) for w in mon._dispatcher._writers} == {want}
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the training thread
        assert mon.stats["monitor_cpu_s"] > 0
    with Monitor(tiny(), tmp_path, every_n_epochs=None, options=FAST, analysis_nice=0) as mon:
        assert mon.snapshot(step=1)
        mon.flush()
        assert _nice_of(mon._worker.thread.native_id) == base  # 0: left as it is


def test_where_the_os_refuses_the_reason_is_logged_once(monkeypatch):
    def refuse(*a):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(priority, "_said", set())
    monkeypatch.setattr(os, "setpriority", refuse, raising=False)
    monkeypatch.setattr(os, "getpriority", lambda *a: 0, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    with logs("analysis thread runs at the normal priority: os.setpriority failed .*not permitted", logging.INFO):
        assert "not permitted" in priority.lower_this_thread(10, "analysis")
    with logs("", logging.DEBUG) as said:  # the second time: DEBUG only
        priority.lower_this_thread(10, "analysis")
    assert [r.levelno for r in said] == [logging.DEBUG]
    monkeypatch.setattr(sys, "platform", "darwin")  # elsewhere PRIO_PROCESS names a process: never called
    with logs("sink thread runs at the normal priority: per-thread nice values are a Linux feature", logging.INFO):
        priority.lower_this_thread(10, "sink")
    assert priority.lower_this_thread(0, "sink") is None  # 0: nothing asked, nothing said


def test_default_policy_never_blocks_training_when_the_analysis_is_slow(tmp_path):
    gate, entered = threading.Event(), threading.Event()

    def slow(W, name, *a):  # an analysis far slower than training: held until the loop is done
        entered.set()
        gate.wait(30)
        return default_analyze(W, name, *a)

    mon = Monitor(tiny(), tmp_path, every_n_epochs=None, options=FAST, analyze_fn=slow, queue_size=2)
    assert mon.policy == "latest"
    try:
        assert mon.snapshot(step=0)
        assert entered.wait(10)
        t0 = time.perf_counter()
        with logs("behind training"):
            taken = [mon.snapshot(step=s) for s in range(1, 8)]
        assert time.perf_counter() - t0 < 5.0  # no waiting on the held analysis (which would never end here)
        assert all(taken) and mon.stats["blocked_s"] == 0.0 and mon.stats["coalesced"] == 6
    finally:
        gate.set()
        mon.close()
    assert [r.step for r in mon.results] == [0, 7]  # the newest snapshot is the one analysed


def test_worker_caps_its_own_torch_threads_not_trainings(tmp_path):
    seen: list[int] = []

    def record(W, name, *a):
        seen.append(torch.get_num_threads())
        return default_analyze(W, name, *a)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with Monitor(
            tiny(), tmp_path, every_n_epochs=None, options=FAST, analyze_fn=record, analysis_device="torch"
        ) as m:
            m.snapshot(step=1)
        assert seen and set(seen) == {1}  # blas_threads=1 on the worker thread
        assert torch.get_num_threads() == 2  # the training thread's count is untouched
    finally:
        torch.set_num_threads(before)


def test_gil_free_lapack_gives_scipys_results_bit_for_bit():
    from scipy.linalg import eigh
    from scipy.linalg.blas import dsyrk

    from wwmonitor import _nogil_lapack

    assert _nogil_lapack.available()
    B = np.random.default_rng(0).standard_normal((300, 120))
    G1 = np.zeros((120, 120), order="F")
    G2 = G1.copy(order="F")
    for s in range(0, 300, 128):
        blk = np.ascontiguousarray(B[s : s + 128])
        G1 = dsyrk(1.0, blk, beta=1.0, c=G1, trans=1, lower=1, overwrite_c=1)
        _nogil_lapack.dsyrk_lower_add(G2, blk)
    assert np.array_equal(np.tril(G1), np.tril(G2))
    ref = eigh(G1.copy(order="F"), lower=True, eigvals_only=True, check_finite=False, driver="evd")
    assert np.array_equal(_nogil_lapack.dsyevd_values_lower(G2), ref)
    with pytest.raises(ValueError, match="Fortran"):
        _nogil_lapack.dsyevd_values_lower(np.ones((3, 3)))  # C order refused, never misread
