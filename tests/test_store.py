"""Run store: ESD codec, crash safety (SIGKILL), concurrent readers, locked /
full database reported without stopping training."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from wwmonitor.analyze import AnalysisOptions
from wwmonitor.metrics import LayerMetrics
from wwmonitor.records import Alert, SnapshotResult
from wwmonitor.store import RunStore, decode_esd, encode_esd, load_run

from _logcheck import logs

FAST = AnalysisOptions(mp_fit=False, phases=False)
REPO = Path(__file__).resolve().parents[1]


def _result(step: int, n_layers: int = 2, m: int = 64) -> SnapshotResult:
    rng = np.random.default_rng(step)
    layers, esds = [], {}
    for i in range(n_layers):
        lm = LayerMetrics(
            name=f"l{i}",
            type="Linear",
            shape=(2 * m, m),
            N=2 * m,
            M=m,
            Q=2.0,
            num_evals=m,
            alpha=2.0 + i + step / 10,
            log_norm=1.5,
            phase="bulk+spikes",
            phase_reason="test",
        )
        layers.append(lm)
        esds[lm.name] = np.sort(rng.random(m).astype(np.float32))
    return SnapshotResult(
        step=step,
        epoch=step // 2,
        time=time.time(),
        layers=layers,
        esds=esds,
        summary={"mean_alpha": 2.5},
        alerts=[Alert(step=step, epoch=step // 2, rule="r", severity="info", message="m", layer=None)],
    )


def test_esd_codec_roundtrip_and_compresses():
    ev = np.sort(np.random.default_rng(0).pareto(2.0, 4096).astype(np.float32))
    blob = encode_esd(ev)
    np.testing.assert_array_equal(decode_esd(blob, ev.size), ev)
    assert len(blob) < ev.nbytes


def test_store_roundtrip_and_idempotent_steps(tmp_path):
    st = RunStore(tmp_path / "r")
    st.set_meta({"name": "r", "config": {"lr": 0.1}, "meta": {"x": 1}})
    for s in (0, 1, 1, 2):  # step 1 written twice -> stored once
        st.write(_result(s))
    st.close()
    run = load_run(tmp_path / "r" / "run.sqlite")
    assert run.steps == [0, 1, 2] and run.config == {"lr": 0.1} and run.name == "r"
    a = run.metrics[(run.metrics.metric == "alpha") & (run.metrics.layer == "l1")]
    np.testing.assert_allclose(a.value, [3.0, 3.1, 3.2])
    assert list(a.epoch) == [0, 0, 1]
    np.testing.assert_array_equal(run.esd("l0", step=1), _result(1).esds["l0"])
    np.testing.assert_array_equal(run.esd("l0"), _result(2).esds["l0"])  # default: latest step
    with pytest.raises(KeyError, match="layer 'nope'"):
        run.esd("nope")
    assert run.alerts.layer.isna().all() and len(run.alerts) == 3
    assert list(run.phases.phase.unique()) == ["bulk+spikes"]
    assert list(run.summary.mean_alpha) == [2.5, 2.5, 2.5]
    with sqlite3.connect(tmp_path / "r" / "run.sqlite") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_load_run_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run store"):
        load_run(tmp_path)


_CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from wwmonitor.analyze import AnalysisOptions
    from wwmonitor.monitor import Monitor
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(model, sys.argv[1], run_name="killed", options=AnalysisOptions(mp_fit=False, phases=False),
                  every_n_epochs=None)
    step = 0
    while True:                       # trains until killed
        loss = model(torch.randn(16, 64)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        step += 1
        mon.snapshot(step=step)
        if step % 3 == 0:
            mon.flush()
            print("COMMITTED", step, flush=True)
""")


@pytest.mark.slow
def test_sigkill_mid_run_keeps_every_committed_snapshot(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    committed: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(committed) < 4 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("COMMITTED"):
                committed.append(int(line.split()[1]))
        # a reader in this process while the writer is alive
        live = load_run(tmp_path / "killed")
        assert set(range(1, committed[-1] + 1)) <= set(live.steps)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, err
    assert len(committed) == 4, err
    assert (tmp_path / "killed" / "run.sqlite-wal").exists()  # killed: no clean close/checkpoint
    run = load_run(tmp_path / "killed")
    assert set(range(1, committed[-1] + 1)) <= set(run.steps)  # every completed snapshot survived
    assert run.steps == list(range(1, max(run.steps) + 1))
    # every stored snapshot is complete (one transaction per snapshot): both layers, metrics and ESD
    per_step = run.layer_status.groupby("step").layer.nunique()
    assert (per_step == 2).all()
    for s in run.steps:
        assert run.esd("1", step=s).shape == (64,)
    # and the run resumes after the crash without duplicating steps (the killed writer held no lock any more)
    import torch

    from wwmonitor.monitor import Monitor

    m = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 64))
    with Monitor(m, tmp_path, run_name="killed", options=FAST, every_n_epochs=None, resume=True) as mon:
        assert mon.snapshot(step=max(run.steps)) is False
        assert mon.snapshot(step=max(run.steps) + 1) is True
    assert load_run(tmp_path / "killed").steps == list(range(1, max(run.steps) + 2))


@pytest.mark.slow
def test_readable_from_another_process_while_training(tmp_path):
    torch = pytest.importorskip("torch")
    from wwmonitor.monitor import Monitor

    model = torch.nn.Sequential(torch.nn.Linear(64, 128))
    with Monitor(model, tmp_path, run_name="live", options=FAST, every_n_epochs=None) as mon:
        for s in range(3):
            mon.snapshot(step=s)
        mon.flush()
        code = (
            "import sys; from wwmonitor.store import load_run; r = load_run(sys.argv[1]); "
            "print(r.steps, r.esd('0').shape[0], len(r.metrics) > 0)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(mon.run_dir)], capture_output=True, text=True, cwd=REPO, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[0, 1, 2] 64 True"
        mon.snapshot(step=3)  # the writer keeps going after the external read
    assert load_run(mon.run_dir).steps == [0, 1, 2, 3]


def test_locked_database_reported_training_continues(tmp_path):
    torch = pytest.importorskip("torch")
    from wwmonitor.monitor import Monitor

    model = torch.nn.Sequential(torch.nn.Linear(64, 128))
    store = RunStore(tmp_path / "locked", busy_timeout=0.2)
    mon = Monitor(model, store=store, options=FAST, every_n_epochs=None)
    assert mon.run_dir == tmp_path / "locked"
    mon.snapshot(step=0)
    mon.flush()
    other = sqlite3.connect(tmp_path / "locked" / "run.sqlite", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process/tool holds the write lock
    with logs("database is locked.*training continues"):
        assert mon.snapshot(step=1) is True
        mon.flush()
    assert mon.stats["store_errors"] == 1 and mon.stats["analysed"] == 2
    other.execute("ROLLBACK")
    other.close()
    mon.snapshot(step=2)
    mon.close()
    assert mon.stats["store_errors"] == 1
    assert load_run(mon.run_dir).steps == [0, 2]  # step 1 reported lost; earlier and later intact


def test_full_disk_reported_training_continues(tmp_path):
    torch = pytest.importorskip("torch")
    from wwmonitor.monitor import Monitor

    model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.Linear(512, 256))
    store = RunStore(tmp_path / "full", max_bytes=96 * 1024)
    mon = Monitor(model, store=store, options=FAST, every_n_epochs=None, policy="block")  # all 40 analysed
    with logs("full"):
        for s in range(40):
            assert mon.snapshot(step=s) is True
        mon.close()
    st = mon.stats
    assert st["analysed"] == 40 and st["store_errors"] > 0
    run = load_run(mon.run_dir)
    assert 0 < len(run.steps) < 40
    assert run.steps == list(range(len(run.steps)))  # everything before the disk filled is intact
    assert st["store_errors"] == 40 - len(run.steps)
