"""Monitor runtime: snapshots, worker thread, queue policies, faults, resume.

Real threads, real torch models, the real analysis; "slow analysis" is the
real ``analyze_matrix`` behind a gate the test opens, so queue states are
deterministic instead of timing-dependent.
"""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from wwmonitor.analyze import AnalysisOptions  # noqa: E402
from wwmonitor.monitor import Monitor  # noqa: E402
from wwmonitor.monitor.analyzer import default_analyze  # noqa: E402
from wwmonitor.records import Alert  # noqa: E402
from wwmonitor.store import load_run  # noqa: E402

from _logcheck import logs  # noqa: E402

FAST = AnalysisOptions(mp_fit=False, phases=False)


def mlp(seed: int = 0) -> "torch.nn.Module":
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)
    )


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("wwmonitor-")]


class Gate:
    """analyze_fn that blocks until opened; records the steps/layers it saw."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.calls: list[str] = []

    def __call__(self, W, name, typ, scale, options):
        self.calls.append(name)
        self.entered.set()
        assert self.open.wait(30), "test gate never opened"
        return default_analyze(W, name, typ, scale, options)


@pytest.fixture(autouse=True)
def _no_leaked_threads():
    before = set(worker_threads())
    yield
    deadline = time.monotonic() + 5
    while set(worker_threads()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(worker_threads()) - before, "a wwmonitor worker thread outlived its Monitor"


def test_training_loop_end_to_end(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(256, 64), torch.randint(0, 4, (256,))
    step = 0
    with Monitor(model, tmp_path, run_name="e2e", config={"lr": 0.5, "batch_size": 32}) as mon:
        for epoch in range(3):
            for i in range(0, 256, 32):
                loss = torch.nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
            assert mon.snapshot(step=step, epoch=epoch) is True
        run_dir = mon.run_dir
    assert not worker_threads()
    st = mon.stats
    assert (st["snapshots_taken"], st["analysed"], st["skipped"], st["errors"]) == (3, 3, 0, 0)
    assert [r.step for r in mon.results] == [8, 16, 24]

    run = load_run(run_dir)
    assert run.steps == [8, 16, 24] and list(run.snapshots["epoch"]) == [0, 1, 2]
    assert run.config == {"lr": 0.5, "batch_size": 32}
    assert run.meta["versions"]["torch"] == torch.__version__
    assert list(run.layers["layer"]) == ["0", "2", "4"]
    assert list(run.layers["shape"]) == ["96x64", "64x96", "4x64"]
    alpha = run.metrics[run.metrics.metric == "alpha"]
    assert set(alpha.layer) == {"0", "2"}  # layer "4" has 4 eigenvalues < min_evals
    assert len(alpha) == 6 and np.isfinite(alpha.value).all()
    model_rows = run.metrics[run.metrics.layer == "__model__"]
    assert {"mean_alpha", "mean_log_norm", "mean_stable_rank", "mean_alpha_weighted"} <= set(model_rows.metric)
    mean_alpha = model_rows[model_rows.metric == "mean_alpha"].value.to_numpy()
    per_layer = alpha.groupby("step").value.mean().to_numpy()
    np.testing.assert_allclose(mean_alpha, per_layer)
    # the ESD is the real one of the weights at the last step
    W = model[2].weight.detach().double().numpy()
    ev = np.linalg.eigvalsh(W @ W.T) / 96
    np.testing.assert_allclose(run.esd("2"), ev, rtol=1e-4, atol=1e-6)
    assert not np.allclose(run.esd("2", step=8), run.esd("2", step=24))  # weights moved in between
    status = run.layer_status.set_index(["step", "layer"]).status
    assert status[(8, "4")] == "too_few_evals" and status[(8, "0")] == "ok"
    wide = run.to_pandas()
    assert len(wide) == 9 and {"alpha", "phase", "status", "epoch"} <= set(wide.columns)


def test_snapshot_is_a_copy_taken_at_call_time(tmp_path):
    """Weights changed after snapshot() returns must not leak into the analysis."""
    model = mlp()
    gate = Gate()
    mon = Monitor(model, tmp_path, options=FAST, analyze_fn=gate, every_n_epochs=None)
    expected = model[0].weight.detach().double().numpy().copy()
    mon.snapshot(step=1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.0)  # in-place, like an optimiser step
    gate.open.set()
    mon.close()
    res = mon.results[0]
    assert [m.status for m in res.layers][:2] == ["ok", "ok"]
    np.testing.assert_allclose(res.esds["0"], np.linalg.eigvalsh(expected.T @ expected) / 96, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("policy", ["block", "skip", "latest"])
def test_queue_policies_when_analysis_falls_behind(tmp_path, policy):
    model = mlp()
    gate = Gate()
    mon = Monitor(model, tmp_path, queue_size=3, policy=policy, options=FAST, analyze_fn=gate, every_n_epochs=None)
    assert mon.snapshot(step=1)
    assert gate.entered.wait(10)  # the worker holds step 1 (blocked in the analysis)
    assert mon.snapshot(step=2) and mon.snapshot(step=3)  # fill the queue
    assert mon.stats["pending"] == 3
    if policy == "block":
        timer = threading.Timer(0.4, gate.open.set)
        timer.start()
        t0 = time.perf_counter()
        assert mon.snapshot(step=4) is True
        waited = time.perf_counter() - t0
        assert waited >= 0.3, waited  # it really waited for a free slot
        assert mon.stats["blocked_s"] >= 0.3
        timer.join()
    else:
        with logs("behind training"):
            out = mon.snapshot(step=4)
        assert out is (policy == "latest")
        mon.snapshot(step=5)  # second one: counted, warned only once (logged)
        gate.open.set()
    mon.close()
    st = mon.stats
    steps = [r.step for r in mon.results]
    if policy == "block":
        assert steps == [1, 2, 3, 4] and st["skipped"] == st["coalesced"] == 0
    elif policy == "skip":
        assert steps == [1, 2, 3] and st["skipped"] == 2 and st["coalesced"] == 0
    else:
        assert steps == [1, 4, 5] and st["coalesced"] == 2 and st["skipped"] == 0
    assert st["analysed"] == len(steps)
    assert st["snapshots_taken"] == st["analysed"] + st["coalesced"]
    assert load_run(mon.run_dir).steps == steps  # step order preserved in the store
    # memory bound: never more than queue_size buffer sets (the one in analysis included)
    one = sum(p.numel() * 4 for n, p in model.named_parameters() if n.endswith("weight"))
    assert 0 < st["buffer_bytes_peak"] <= 3 * one


def test_fault_in_one_layer_is_recorded_and_training_continues(tmp_path):
    def faulty(W, name, typ, scale, options):
        if name == "2":
            raise FloatingPointError("injected fault in layer 2")
        return default_analyze(W, name, typ, scale, options)

    model = mlp()
    with Monitor(model, tmp_path, options=FAST, analyze_fn=faulty) as mon:
        for e in range(2):
            mon.snapshot(step=e, epoch=e)
    assert mon.stats["errors"] == 2 and mon.stats["analysed"] == 2
    res = mon.results[-1]
    by = {m.name: m for m in res.layers}
    assert by["2"].status == "error" and "injected fault in layer 2" in by["2"].message
    assert res.errors == {"2": "FloatingPointError: injected fault in layer 2"}
    assert by["0"].status == "ok" and by["0"].alpha is not None
    run = load_run(mon.run_dir)
    st = run.layer_status[run.layer_status.layer == "2"]
    assert list(st.status) == ["error", "error"] and st.message.str.contains("injected").all()


def test_bad_matrix_fault_via_matrices(tmp_path):
    """A real analysis failure (1-D 'matrix') in one entry of ``matrices=``."""
    rng = np.random.default_rng(0)
    mats = {"good": rng.standard_normal((120, 60)).astype(np.float32), "bad": np.ones((3, 0), np.float32)}
    with Monitor(None, tmp_path, options=FAST) as mon:
        assert mon.snapshot(step=0, epoch=0, matrices=mats)
    res = mon.results[0]
    by = {m.name: m for m in res.layers}
    assert by["good"].status == "ok" and by["bad"].status == "error"
    assert "empty dimension" in res.errors["bad"]
    run = load_run(mon.run_dir)  # layers first seen at the snapshot are recorded too
    assert list(run.layers.layer) == ["good", "bad"]
    assert [d["name"] for d in run.meta["layers"]] == ["good", "bad"]


def test_non_finite_weights_alert_not_crash(tmp_path):
    model = mlp()
    with torch.no_grad():
        model[2].weight[3, 5] = float("nan")
    with Monitor(model, tmp_path, options=FAST) as mon:
        mon.snapshot(step=0, epoch=0)
        mon.snapshot(step=1, epoch=1)  # still NaN: no second alert (hysteresis)
        mon.flush()
        with torch.no_grad():
            model[2].weight[3, 5] = 0.0
        mon.snapshot(step=2, epoch=2)
        mon.flush()
        with torch.no_grad():
            model[2].weight[0, 0] = float("inf")
        mon.snapshot(step=3, epoch=3)
    fired = [(a.step, a.rule, a.layer, a.severity) for a in mon.alerts_fired]
    assert fired == [(0, "non_finite", "2", "error"), (3, "non_finite", "2", "error")]
    assert mon.results[0].layers[1].status == "non_finite"
    run = load_run(mon.run_dir)
    assert list(run.alerts.rule) == ["non_finite", "non_finite"] and list(run.alerts.step) == [0, 3]
    assert mon.should_stop is False


class StopRule:
    def __init__(self) -> None:
        self.closed_in: list[str] = []

    def evaluate(self, result):
        if result.step == 2:
            return [
                Alert(
                    step=result.step,
                    epoch=result.epoch,
                    rule="stop_me",
                    severity="error",
                    message="stop",
                    value=1.0,
                    stop_training=True,
                )
            ]
        if result.step == 3:
            raise KeyError("broken rule")
        return []

    def close(self):
        self.closed_in.append(threading.current_thread().name)


class RecordingSink:
    def __init__(self, fail_at=None) -> None:
        self.threads: set[str] = set()
        self.steps: list[int] = []
        self.alert_rules: list[list[str]] = []
        self.closed_in: list[str] = []
        self.fail_at = fail_at

    def write(self, result):
        self.threads.add(threading.current_thread().name)
        if result.step == self.fail_at:
            raise OSError("sink down")
        self.steps.append(result.step)
        self.alert_rules.append([a.rule for a in result.alerts])

    def close(self):
        self.closed_in.append(threading.current_thread().name)


def test_alerts_then_sinks_each_sink_on_one_thread_of_its_own(tmp_path):
    rule, sink, bad = StopRule(), RecordingSink(), RecordingSink(fail_at=1)
    # policy="block": five quick snapshots, every one analysed (the default "latest" may coalesce)
    mon = Monitor(mlp(), tmp_path, options=FAST, alerts=rule, sinks=[sink], every_n_epochs=None, policy="block")
    mon.add_sink(bad)
    with logs("sink down"), logs("broken rule"):
        for s in range(5):
            mon.snapshot(step=s)
        mon.close()
    assert sink.steps == [0, 1, 2, 3, 4] and bad.steps == [0, 2, 3, 4]
    assert sink.alert_rules[2] == ["stop_me"]  # alerts evaluated before the sinks saw the result
    # every sink is always called from one thread, its own (wandb's client needs one thread)
    assert len(sink.threads) == len(bad.threads) == 1 and sink.threads != bad.threads
    assert all(t.startswith("wwmonitor-sink-") for t in sink.threads | bad.threads)
    assert sink.closed_in == list(sink.threads) and bad.closed_in == list(bad.threads)
    assert rule.closed_in == [f"wwmonitor-dispatch-{mon.run_id}"]
    assert mon.should_stop is True
    st = mon.stats
    assert st["sink_errors"] == 1 and st["alert_errors"] == 1 and st["analysed"] == 5


def test_intervals_and_duplicates(tmp_path):
    mon = Monitor(mlp(), tmp_path, options=FAST, every_n_epochs=2, every_n_steps=None)
    taken = [e for e in range(6) if mon.snapshot(step=10 * e, epoch=e)]
    assert taken == [1, 3, 5]
    assert mon.snapshot(step=50, epoch=7) is False  # step already snapshotted
    assert mon.stats["duplicates"] == 1
    mon.close()
    mon2 = Monitor(mlp(), tmp_path, options=FAST, every_n_epochs=None, every_n_steps=4)
    taken = [s for s in range(1, 13) if mon2.snapshot(step=s, epoch=0, epoch_end=False)]
    assert taken == [4, 8, 12]
    assert mon2.should_snapshot(step=16) and not mon2.should_snapshot(step=17)
    mon2.close()
    assert [r.step for r in mon2.results] == [4, 8, 12]


def test_configuration_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"layers: no matrix matches \['fc9'\]"):
        Monitor(mlp(), tmp_path, layers=["fc9"])
    with pytest.raises(ValueError, match="no analysable layers"):
        Monitor(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.LayerNorm(4)), tmp_path)
    with pytest.raises(ValueError, match="no analysable layers"):
        Monitor(mlp(), tmp_path, exclude=["Linear"])
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="every_n_epochs"):
            Monitor(mlp(), tmp_path, every_n_epochs=bad)
    with pytest.raises(ValueError, match="every_n_steps"):
        Monitor(mlp(), tmp_path, every_n_steps=0)
    with pytest.raises(ValueError, match="queue_size"):
        Monitor(mlp(), tmp_path, queue_size=0)
    with pytest.raises(ValueError, match="policy"):
        Monitor(mlp(), tmp_path, policy="drop")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="run_dir .*a_file"):
        Monitor(mlp(), blocker / "runs")
    assert not worker_threads()  # failed constructions start no thread


def test_layer_selection_by_name_glob_and_type(tmp_path):
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.Flatten(), torch.nn.Linear(16, 80))
    with Monitor(m, tmp_path, layers=["Conv2d"], options=FAST, store=False) as mon:
        mon.snapshot(step=0, epoch=0)
    assert [x.name for x in mon.results[0].layers] == ["0"]
    assert mon.results[0].layers[0].shape == (9, 16, 3)
    with Monitor(m, tmp_path, layers=["*"], exclude=[torch.nn.Conv2d], options=FAST, store=False) as mon:
        mon.snapshot(step=0, epoch=0)
    assert [x.name for x in mon.results[0].layers] == ["2"]


def test_conv_snapshot_matches_direct_analysis(tmp_path):
    """The dense-block copy of a permuted conv view reproduces the pooled ESD."""
    from wwmonitor.analyze import analyze_matrix
    from wwmonitor.layers import extract_matrices

    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Conv2d(24, 32, 3))
    with Monitor(m, tmp_path, options=FAST, store=False) as mon:
        mon.snapshot(step=0, epoch=0)
    spec = extract_matrices(m)[0]
    ref = analyze_matrix(
        spec.tensor, "0", scale=spec.scale, options=AnalysisOptions(mp_fit=False, phases=False, keep_esd=True)
    )
    got = mon.results[0]
    np.testing.assert_array_equal(got.esds["0"], ref.esd)
    assert got.layers[0].alpha == ref.alpha


def test_resume_only_when_asked_and_by_state_dict(tmp_path):
    model = mlp()
    with Monitor(model, tmp_path, run_name="exp", options=FAST) as a:
        for e in range(3):
            a.snapshot(step=e * 10, epoch=e)
        state = a.state_dict()
    assert state["run_id"] == "exp" and state["last_step"] == 20 and not a.resumed

    # the same name again, resume not asked: a new run "exp-2", said in the log; "exp" untouched
    with logs(r"run 'exp' already exists.*starting a new run 'exp-2'"):
        with Monitor(model, tmp_path, run_name="exp", options=FAST, config={"lr": 2}) as d:
            assert d.snapshot(step=0, epoch=0) is True
    assert d.run_id == "exp-2" and load_run(d.run_dir).steps == [0] and not d.resumed
    assert load_run(a.run_dir).steps == [0, 10, 20] and "lr" not in load_run(a.run_dir).config

    # resume=True continues it: stored steps are not taken again (counted and said), new ones appended
    with Monitor(model, tmp_path, run_name="exp", options=FAST, resume=True) as b:
        assert b.run_dir == a.run_dir and b.resumed
        with logs("step 20 not taken: the step is already stored"):
            assert b.snapshot(step=20, epoch=2) is False
        assert b.snapshot(step=30, epoch=3) is True
        assert b.stats["duplicates"] == 1
    run = load_run(a.run_dir)
    assert run.steps == [0, 10, 20, 30]
    assert not run.metrics.duplicated(["step", "layer", "metric"]).any()
    assert len(run.meta["resumed"]) == 1

    # restart from a checkpoint's state: a fresh monitor switches to the stored run
    c = Monitor(model, tmp_path, options=FAST)
    fresh_dir = c.run_dir
    assert fresh_dir.exists()
    c.load_state_dict({**state, "last_step": 30})
    assert c.run_dir == a.run_dir and not fresh_dir.exists()  # the empty fresh run was removed
    assert c.snapshot(step=30, epoch=3) is False and c.snapshot(step=40, epoch=4) is True
    c.close()
    assert load_run(a.run_dir).steps == [0, 10, 20, 30, 40]


def test_one_writer_per_run(tmp_path):
    from wwmonitor.store import RunLockedError

    a = Monitor(mlp(), tmp_path, run_name="live", options=FAST)
    with pytest.raises(RunLockedError, match="already being written by another monitor"):
        Monitor(mlp(), tmp_path, run_name="live", options=FAST, resume=True)
    # without resume, a second live monitor of the same name gets its own run
    b = Monitor(mlp(), tmp_path, run_name="live", options=FAST)
    assert b.run_id == "live-2"
    a.snapshot(step=1, epoch=0)
    b.snapshot(step=1, epoch=0)
    a.close()
    b.close()
    assert load_run(a.run_dir).steps == [1] and load_run(b.run_dir).steps == [1]
    with Monitor(mlp(), tmp_path, run_name="live", options=FAST, resume=True) as c:  # free again after close
        assert c.run_id == "live"


def test_close_timeout_drops_counted_and_leaves_no_thread(tmp_path):
    def slow(W, name, typ, scale, options):
        time.sleep(0.3)
        return default_analyze(W, name, typ, scale, options)

    mon = Monitor(mlp(), tmp_path, options=FAST, analyze_fn=slow, queue_size=4, every_n_epochs=None)
    for s in range(4):
        mon.snapshot(step=s)
    with logs("not analysed"):
        mon.close(timeout=0.4)
    st = mon.stats
    assert st["dropped_on_close"] >= 1
    assert st["analysed"] + st["dropped_on_close"] == 4
    assert not worker_threads()
    with pytest.raises(RuntimeError, match="closed"):
        mon.snapshot(step=99)
    mon.close()  # idempotent


def test_peak_buffer_memory_bounded_under_latest(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 128))
    gate = Gate()
    mon = Monitor(
        model, tmp_path, queue_size=3, policy="latest", options=FAST, analyze_fn=gate, every_n_epochs=None, store=False
    )
    mon.snapshot(step=0)
    assert gate.entered.wait(10)
    with logs("behind training"):
        for s in range(1, 10):
            mon.snapshot(step=s)
    gate.open.set()
    mon.close()
    weights = (256 * 256 + 256 * 128) * 4
    assert mon.stats["buffer_bytes_peak"] == 3 * weights
    assert mon.stats["buffer_bytes"] == 0  # freed at close
    assert [r.step for r in mon.results] == [0, 8, 9] and mon.stats["coalesced"] == 7


def test_matrices_numpy_and_bfloat16(tmp_path):
    rng = np.random.default_rng(3)
    mats = {"a": rng.standard_normal((200, 100)).astype(np.float32)}
    bf = torch.nn.Linear(100, 200).to(torch.bfloat16)
    with Monitor(None, tmp_path, options=FAST, every_n_epochs=None) as mon:
        mon.snapshot(step=0, matrices=mats)
        mats["a"][:] = 0  # the caller reusing its array must not affect the queued copy
        mon.snapshot(step=1, model=bf)
    r0, r1 = mon.results
    assert r0.layers[0].status == "ok" and r0.layers[0].alpha is not None
    assert r1.layers[0].status == "ok" and r1.layers[0].shape == (200, 100)
    W = bf.weight.detach().float().double().numpy()  # bf16 widened exactly
    np.testing.assert_allclose(r1.esds[r1.layers[0].name], np.linalg.eigvalsh(W.T @ W) / 200, rtol=1e-4, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_snapshot_pinned_async(tmp_path):  # pragma: no cover - no GPU in CI
    model = mlp().cuda()
    gate = Gate()
    mon = Monitor(model, tmp_path, options=FAST, analyze_fn=gate, every_n_epochs=None)
    ref = model[0].weight.detach().double().cpu().numpy()
    mon.snapshot(step=0)
    with torch.no_grad():
        model[0].weight.mul_(0)
    gate.open.set()
    mon.close()
    np.testing.assert_allclose(mon.results[0].esds["0"], np.linalg.eigvalsh(ref.T @ ref) / 96, rtol=1e-4, atol=1e-6)


def test_unclosed_monitor_warning_free_gc(tmp_path):
    """Monitor used as a context manager raises no warnings on a clean run."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Monitor(mlp(), tmp_path, options=FAST) as mon:
            mon.snapshot(step=0, epoch=0)
    assert mon.stats["analysed"] == 1


def test_analysis_runs_with_limited_blas_threads(tmp_path):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen: list[int] = []

    def probe(W, name, typ, scale, options):
        seen.extend(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")
        return default_analyze(W, name, typ, scale, options)

    with Monitor(mlp(), tmp_path, options=FAST, analyze_fn=probe, store=False) as mon:
        mon.snapshot(step=0, epoch=0)
    assert seen and set(seen) == {1}
    with pytest.raises(ValueError, match="blas_threads"):
        Monitor(mlp(), tmp_path, blas_threads=0)


def test_spec_cache_follows_parameter_storage_changes(tmp_path):
    """Walk-once caching must notice ``model.to(dtype)`` (new parameter storage)."""
    model = mlp()
    with Monitor(model, tmp_path, options=FAST, every_n_epochs=None, store=False) as mon:
        mon.snapshot(step=0)
        model.to(torch.float64)
        with torch.no_grad():
            model[0].weight.mul_(2.0)
        mon.snapshot(step=1)
    r0, r1 = mon.results
    np.testing.assert_allclose(r1.esds["0"], 4 * r0.esds["0"], rtol=1e-4)


def test_close_from_a_sink_does_not_deadlock(tmp_path):
    class Closer:
        def __init__(self):
            self.mon = None
            self.closed = False

        def write(self, result):
            self.mon.flush()  # no-op on the worker thread
            self.mon.close()

        def close(self):
            self.closed = True

    sink = Closer()
    mon = Monitor(mlp(), tmp_path, options=FAST, sinks=[sink], every_n_epochs=None, store=False)
    sink.mon = mon
    mon.snapshot(step=0)
    mon._worker.thread.join(10)
    mon._dispatcher.thread.join(10)  # the sinks are closed by the dispatcher once the write returned
    assert not mon._worker.alive() and not mon._dispatcher.thread.is_alive() and sink.closed
    with pytest.raises(RuntimeError, match="closed"):
        mon.snapshot(step=1)


def test_ctrl_c_inside_with_block_closes_quickly(tmp_path):
    def slow(W, name, typ, scale, options):
        time.sleep(1.0)
        return default_analyze(W, name, typ, scale, options)

    with pytest.raises(KeyboardInterrupt), logs("not analysed"):
        with Monitor(mlp(), tmp_path, options=FAST, analyze_fn=slow, queue_size=8, every_n_epochs=None) as mon:
            for s in range(8):
                mon.snapshot(step=s)
            raise KeyboardInterrupt
    # the backlog was cut short (8 snapshots x 3 layers x 1 s would take 24 s), not waited for
    assert mon.stats["dropped_on_close"] >= 1 and mon.stats["analysed"] + mon.stats["dropped_on_close"] == 8
    assert mon.stats["dropped_on_close"] > 0 and not worker_threads()


# ---------------------------------------------------------------- one-way pipeline, no silent failure
class StuckSink:
    """A sink whose write() never returns (until released at the end of the test)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def write(self, result):
        self.calls += 1
        self.release.wait(60)

    def close(self):
        pass


def test_a_stuck_sink_never_blocks_training_and_is_dropped_after_its_deadline(tmp_path):
    stuck, good = StuckSink(), RecordingSink()
    mon = Monitor(
        mlp(),
        tmp_path,
        options=FAST,
        sinks=[stuck, good],
        every_n_epochs=None,
        policy="block",
        queue_size=1,
        sink_timeout=0.5,
    )
    try:
        taken: list[bool] = []

        def train() -> None:  # queue_size=1 under "block": each snapshot waits for the previous analysis only
            taken.extend(mon.snapshot(step=s) for s in range(6))

        with logs(r"StuckSink did not return from write\(\) within 0.5 s at step 0; it is dropped"):
            loop = threading.Thread(target=train)
            loop.start()
            loop.join(120)  # a deadlock guard, not a timing goal: waiting on the sink would never end
            assert not loop.is_alive() and taken == [True] * 6
            mon.flush(60)
        assert good.steps == [0, 1, 2, 3, 4, 5] and stuck.calls == 1
        assert mon.stats["sinks_dropped"] == 1 and stuck not in mon.sinks and good in mon.sinks
        assert load_run(mon.run_dir).steps == [0, 1, 2, 3, 4, 5]
    finally:
        stuck.release.set()
        mon.close()


def test_a_replaced_module_is_analysed_from_its_new_weights(tmp_path):
    model = mlp()
    with Monitor(model, tmp_path, options=FAST, every_n_epochs=None) as mon:
        mon.snapshot(step=0)
        torch.manual_seed(7)
        model[0] = torch.nn.Linear(64, 96)  # same shape, new parameter objects
        with torch.no_grad():
            model[0].weight.mul_(10.0)
        mon.snapshot(step=1)
    first, second = (r.layers[0] for r in mon.results)
    W = model[0].weight.detach().numpy().astype(np.float64)
    expected = float(np.log10(np.linalg.norm(W, 2) ** 2))
    assert second.log_spectral_norm == pytest.approx(expected, rel=1e-5)
    assert second.log_spectral_norm > first.log_spectral_norm + 1.5  # 10x weights: +2 in log10 of sigma^2


def test_matrices_that_are_not_arrays_are_an_error_naming_the_key(tmp_path):
    with Monitor(None, tmp_path, options=FAST, every_n_epochs=None, store=False) as mon:
        with pytest.raises(TypeError, match=r"matrices\['bad'\]"):
            mon.snapshot(step=0, matrices={"ok": np.random.randn(80, 40), "bad": ["a", "b"]})
        with pytest.raises(TypeError, match=r"matrices\['none'\]"):
            mon.snapshot(step=1, matrices={"none": None})


def test_submit_files_results_in_step_order_and_refuses_older_steps(tmp_path):
    from wwmonitor.analyze import analyze_matrix
    from wwmonitor.records import SnapshotResult

    lm = analyze_matrix(np.random.default_rng(0).standard_normal((120, 60)), "w", options=FAST)
    sink = RecordingSink()
    with Monitor(None, tmp_path, options=FAST, sinks=[sink], every_n_epochs=None) as mon:
        assert mon.submit(SnapshotResult(step=4, epoch=1, time=0.0, layers=[lm])) is True
        with logs("result for step 2 arrived after step 4; not written"):
            assert mon.submit(SnapshotResult(step=2, epoch=0, time=0.0, layers=[lm])) is False
        assert mon.submit(SnapshotResult(step=6, epoch=2, time=0.0, layers=[lm])) is True
        mon.flush(10)
        assert mon.stats["out_of_order"] == 1
    assert sink.steps == [4, 6]
    run = load_run(mon.run_dir)
    assert run.steps == [4, 6]
    assert run.metrics.query("step == 4 and metric == 'alpha'")["value"].item() == pytest.approx(lm.alpha)


def test_a_failing_figure_loses_only_that_figure(tmp_path, monkeypatch):
    import wwmonitor.monitor.render as render

    real = render.esd_figure

    def flaky(lm, evals, fits, *, step, epoch):
        if lm.name == "2":
            raise ValueError("injected figure fault")
        return real(lm, evals, fits, step=step, epoch=epoch)

    monkeypatch.setattr(render, "esd_figure", flaky)

    class ImageSink(RecordingSink):
        wants_figures = True

        def write(self, result):
            super().write(result)
            self.figures = dict(result.figures)
            self.figure_errors = dict(result.figure_errors)

    sink = ImageSink()
    with logs("1 ESD figure.* of step 0 could not be drawn .*2: ValueError: injected figure fault"):
        with Monitor(mlp(), tmp_path, sinks=[sink], every_n_epochs=None, esd_every_n_epochs=1) as mon:
            mon.snapshot(step=0)
    assert sink.steps == [0]
    assert set(sink.figures) == {"0", "4"} and all(png[:4] == b"\x89PNG" for png in sink.figures.values())
    assert sink.figure_errors == {"2": "ValueError: injected figure fault"}
    assert mon.stats["figure_errors"] == 1 and mon.stats["sink_errors"] == 0


def test_no_figures_are_drawn_when_no_sink_writes_images(tmp_path, monkeypatch):
    import wwmonitor.monitor.render as render

    def boom(*a, **k):
        raise AssertionError("drawn although no sink wants figures")

    monkeypatch.setattr(render, "esd_figure", boom)
    with Monitor(mlp(), tmp_path, options=FAST, every_n_epochs=None, esd_every_n_epochs=1) as mon:
        mon.snapshot(step=0)
    assert mon.results[0].figures == {} and mon.stats["figure_errors"] == 0


def test_model_summary_is_one_definition(tmp_path):
    from wwmonitor.model import analyze_model

    model = mlp()
    rep = analyze_model(model, options=FAST)
    with Monitor(model, tmp_path, options=FAST, every_n_epochs=None, store=False) as mon:
        mon.snapshot(step=0)
    live = mon.results[0].summary
    offline = rep.summary()
    for key in ("mean_alpha", "mean_log_norm", "mean_stable_rank", "num_layers", "num_ok"):
        assert live[key] == pytest.approx(offline[key], rel=1e-6), key


def test_correlation_trap_rule_fires_without_any_wiring(tmp_path):
    """The rule says it needs the weights; the analyzer provides them (no analyze_fn by hand)."""
    from wwmonitor.alerts import AlertRules

    rng = np.random.default_rng(0)
    W = rng.standard_normal((200, 100))
    W[3, 7], W[50, 20] = 60.0, -60.0  # two isolated huge entries survive the shuffle: two traps
    rules = AlertRules(rules=["correlation_trap"])
    assert rules.needs_weights is True
    with Monitor(None, tmp_path, options=FAST, alerts=rules, every_n_epochs=None) as mon:
        mon.snapshot(step=0, matrices={"fc1": W, "clean": rng.standard_normal((200, 100))})
    lms = {lm.name: lm for lm in mon.results[0].layers}
    assert lms["fc1"].num_traps == 2 and lms["clean"].num_traps == 0
    fired = [(a.rule, a.layer) for a in mon.alerts_fired]
    assert fired == [("correlation_trap", "fc1")]


def test_results_carry_the_fits_the_figures_draw(tmp_path):
    """Everything a sink or report draws travels in the result: λ-axis power-law and MP fits."""
    from wwmonitor.fit import fit_powerlaw
    from wwmonitor.mp import fit_mp

    W = np.random.default_rng(1).standard_t(3, (500, 250))
    with Monitor(None, tmp_path, every_n_epochs=None) as mon:
        mon.snapshot(step=0, matrices={"w": W})
    res = mon.results[0]
    pl, mp, ev = res.fits["w"]["powerlaw"], res.fits["w"]["mp"], res.esds["w"].astype(np.float64)
    ref = fit_powerlaw(ev)  # the same fit redone on the stored (float32) λ-axis ESD
    assert pl["alpha"] == pytest.approx(ref.alpha, rel=1e-6) and pl["xmin"] == pytest.approx(ref.xmin, rel=1e-6)
    assert pl["n_tail"] == ref.n_tail and pl["alpha"] == res.layers[0].alpha
    assert mp["lambda_plus"] == pytest.approx(fit_mp(ev, 2.0, M=250).lambda_plus, rel=1e-5)
    assert mp["lambda_plus"] == res.layers[0].lambda_plus


def test_start_line_names_what_is_monitored_and_skipped(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.LayerNorm(96), torch.nn.Linear(96, 64))
    with logs(r"monitoring 2 matrices in 1 layer type.*skipped", level=20):
        mon = Monitor(model, tmp_path, options=FAST, every_n_epochs=None)
    mon.close()
    skipped = dict(mon.skipped)
    assert {"1.weight", "0.bias", "2.bias", "1.bias"} <= set(skipped), skipped
    assert all(reason for reason in skipped.values())
    assert mon.coverage.startswith("wwmonitor: monitoring 2 matrices")


UNCLOSED = """
import sys, time, numpy as np
sys.path.insert(0, {repo!r})
from wwmonitor.analyze import AnalysisOptions
from wwmonitor.monitor import Monitor

def slow(W, name, typ, scale, options):
    from wwmonitor.monitor.analyzer import default_analyze
    time.sleep(0.3)  # still queued when the script ends
    return default_analyze(W, name, typ, scale, options)

rng = np.random.default_rng(0)
mon = Monitor(None, {root!r}, run_name="forgot", every_n_epochs=None, analyze_fn=slow, alerts=None,
              options=AnalysisOptions(mp_fit=False, phases=False))
for step in (1, 2, 3):
    mon.snapshot(step=step, matrices={{"w": rng.standard_normal((50, 30))}})
print("queued", mon.stats["pending"], flush=True)
# no mon.close(): the interpreter exits with snapshots still queued
"""


def test_unclosed_monitor_flushes_at_exit_and_says_so(tmp_path):
    """No atexit hook at import: each monitor's weakref.finalize flushes it at exit, with a warning."""
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = UNCLOSED.format(repo=repo, root=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "queued" in r.stdout and int(r.stdout.split()[-1]) >= 1  # work was pending at exit
    assert "run 'forgot' was not closed" in r.stderr and "flushing" in r.stderr
    assert load_run(tmp_path / "forgot").steps == [1, 2, 3]  # nothing lost


def test_no_import_time_exit_hook_or_live_set():
    import wwmonitor.monitor.runtime as rt

    assert not hasattr(rt, "_LIVE") and not hasattr(rt, "_close_live_monitors")


def test_root_alerts_default_and_old_spellings(tmp_path):
    with pytest.warns(DeprecationWarning, match="run_dir="):
        old = Monitor(mlp(), run_dir=tmp_path, run_name="old", close_timeout=7.0, options=FAST)
    old.close()
    assert old.root == tmp_path and old.run_dir == tmp_path / "old" and old.flush_timeout == 7.0
    with Monitor(mlp(), root=tmp_path, run_name="new", alerts="default", stop_on=["non_finite"], options=FAST) as mon:
        assert type(mon.alert_rules).__name__ == "AlertRules" and mon.alert_rules.stop_on == ("non_finite",)
    assert mon.run_dir == tmp_path / "new"
    with pytest.raises(TypeError, match="did you mean every_n_steps"):
        Monitor(mlp(), tmp_path, every_n_step=2)
