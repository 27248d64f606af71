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


# --- the CI skip rule ---------------------------------------------------------------------------------------
#
# Under CI=true nothing may be skipped: a skip there means a dependency or a resource is missing and a check
# silently did not run.  That covers skips at collection time (a module-level ``pytest.importorskip`` or
# ``pytest.skip(..., allow_module_level=True)``: the whole module is skipped and never yields a test), which become
# collection errors, and skips at run time (``skipif`` markers, ``pytest.skip``/``importorskip`` in a test or a
# fixture), which become failures.  The one exception: tests marked ``@pytest.mark.gpu`` (they need a CUDA device,
# which the CI machine does not have) may skip at run time.  A module-level skip cannot carry that marker: skip a
# GPU test with ``@pytest.mark.gpu`` + ``@pytest.mark.skipif(...)`` on the test itself.  xfail is not a skip.


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def _reason(rep: pytest.CollectReport | pytest.TestReport) -> str:
    lr = rep.longrepr
    return str(lr[-1]) if isinstance(lr, tuple) and len(lr) == 3 else str(lr)


_ALLOWED_SKIPS = pytest.StashKey[set]()  # nodeids of gpu-marked tests that skipped


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ALLOWED_SKIPS] = set()


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """A module (or any collector) skipped at collection time fails the run under CI=true."""
    rep = yield
    if _ci() and rep.skipped:
        rep.outcome = "failed"
        rep.longrepr = f"{collector.nodeid}: skipped under CI=true, which is not allowed: {_reason(rep)}"
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A test skipped at run time fails under CI=true unless it is marked ``gpu``."""
    rep = yield
    if _ci() and rep.skipped and not hasattr(rep, "wasxfail"):
        if item.get_closest_marker("gpu") is not None:
            item.config.stash[_ALLOWED_SKIPS].add(rep.nodeid)
        else:
            rep.outcome = "failed"
            rep.longrepr = f"skipped under CI=true, which is not allowed: {_reason(rep)}"
    return rep


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Backstop: any skip that reached the report by another path (a plugin's own report) still fails the run."""
    if not _ci():
        return
    allowed = config.stash.get(_ALLOWED_SKIPS, set())
    stray = [
        r
        for r in terminalreporter.stats.get("skipped", [])
        if not hasattr(r, "wasxfail") and getattr(r, "nodeid", None) not in allowed
    ]
    if stray:
        terminalreporter.section("skips not allowed under CI=true", sep="=", red=True, bold=True)
        for r in stray:
            terminalreporter.line(f"{getattr(r, 'nodeid', '?')}: {_reason(r)}")
        terminalreporter._session.exitstatus = pytest.ExitCode.TESTS_FAILED
