"""Shared pytest setup: quiet, deterministic, single-threaded heavy libs."""
from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


import pytest  # noqa: E402


@pytest.fixture
def one_blas_thread():
    """Run the test with NumPy's BLAS limited to one thread (threadpoolctl; unlimited if it is missing).

    BLAS threads fight each other on a loaded 2-core machine; one thread is much faster.
    Use with ``pytestmark = pytest.mark.usefixtures("one_blas_thread")``.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(1):
        yield


#: the only skips allowed when CI=true: hardware this CI machine does not have
_CI_ALLOWED_SKIPS = ("CUDA",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skipped test is a failure (nothing the issues ask for may be skipped in CI),
    except for tests that need a GPU."""
    outcome = yield
    rep = outcome.get_result()
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and rep.skipped:
        reason = str(rep.longrepr[-1]) if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        if not any(tag in reason for tag in _CI_ALLOWED_SKIPS) and not hasattr(rep, "wasxfail"):
            rep.outcome = "failed"
            rep.longrepr = f"skipped under CI=true, which is not allowed: {reason}"
