"""Distance from a reference: ``delta_rel_norm`` and the spectrum of ``W − W_ref`` over training.

A small MLP trained a few SGD steps under a real ``Monitor``; the weights are
saved at every snapshot and the delta metrics are checked against NumPy's
formula and :func:`analyze_matrix` of the saved difference.  The reference is
the first snapshot, or a ``base_model`` given as a model, a state dict, a
mapping of NumPy arrays or a safetensors file.  The values reach the run
store and TensorBoard like every other metric.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import wwmonitor  # noqa: E402
from wwmonitor.analyze import AnalysisOptions, analyze_matrix  # noqa: E402
from wwmonitor.metrics import METRIC_NAMES, LayerMetrics  # noqa: E402
from wwmonitor.monitor import Monitor  # noqa: E402
from wwmonitor.monitor.reference import ReferenceWeights  # noqa: E402
from wwmonitor.sinks._render import DEFAULT_SCALARS  # noqa: E402

from _wwcb_helpers import tb_accumulator  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_blas_thread")
torch.set_num_threads(1)

FAST = AnalysisOptions(mp_fit=False, phases=False)
NAMES = ("0", "2", "4")  # 96x64, 64x96, 4x64 (too few eigenvalues for alpha)
DELTA_SPECTRAL = ("delta_alpha", "delta_stable_rank", "delta_log_spectral_norm", "delta_log_norm")


def mlp(seed: int = 0) -> "torch.nn.Module":
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)
    )


def weights(model) -> dict[str, np.ndarray]:
    return {n: model[int(n)].weight.detach().numpy().copy() for n in NAMES}


def rel_norm(W: np.ndarray, R: np.ndarray) -> float:
    W, R = W.astype(np.float64), R.astype(np.float64)
    return float(np.linalg.norm(W - R) / np.linalg.norm(R))


def run_training(tmp_path, steps: int = 3, sinks=(), **kw):
    """Snapshots at steps 0..steps-1 (step 0 before any update); the weights saved at each."""
    model = mlp(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(128, 64, generator=g), torch.randint(0, 4, (128,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    saved = []
    with Monitor(
        model,
        tmp_path,
        run_name="deltas",
        every_n_epochs=None,
        options=FAST,
        analysis_device="cpu",
        sinks=list(sinks),
        **kw,
    ) as mon:
        for step in range(steps):
            for _ in range(3 if step else 0):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            saved.append(weights(model))
            assert mon.snapshot(step=step)
        mon.flush()
        results = mon.results
    return model, results, saved, mon.run_dir


def by_name(res) -> dict[str, LayerMetrics]:
    return {lm.name: lm for lm in res.layers}


def check_delta(lm: LayerMetrics, W: np.ndarray, R: np.ndarray) -> None:
    """``lm``'s delta metrics are the formula and ``analyze_matrix`` of the (float32) difference."""
    assert lm.delta_rel_norm == pytest.approx(rel_norm(W, R), rel=1e-6), lm.name
    dm = analyze_matrix(W - R, lm.name, layer_type=lm.type, options=FAST)
    assert lm.delta_status == dm.status, lm.name
    for f in DELTA_SPECTRAL:
        want = getattr(dm, f[len("delta_") :])
        got = getattr(lm, f)
        assert (got is None) == (want is None), (lm.name, f)
        if want is not None:
            assert got == pytest.approx(want, rel=1e-9), (lm.name, f)


# ------------------------------------------------------------------ reference = the first snapshot
def test_delta_from_the_first_snapshot(tmp_path):
    _, results, saved, _ = run_training(tmp_path, base_model="first")
    assert [r.step for r in results] == [0, 1, 2]
    for lm in results[0].layers:  # the reference step: exactly zero, and no spectrum of a zero matrix
        assert lm.delta_rel_norm == 0.0
        assert lm.delta_status == "zero_matrix" and "equals the reference" in lm.delta_message
        assert all(getattr(lm, f) is None for f in DELTA_SPECTRAL)
        assert lm.status == ("too_few_evals" if lm.name == "4" else "ok")  # the layer's own analysis as ever
    for r, W in zip(results[1:], saved[1:]):
        layers = by_name(r)
        for n in NAMES:
            lm = layers[n]
            assert lm.delta_rel_norm > 0
            check_delta(lm, W[n], saved[0][n])
        assert layers["0"].delta_alpha is not None and layers["0"].delta_status == "ok"
        small = layers["4"]  # 4 eigenvalues: norms, but no alpha -- a status, not a sentinel
        assert small.delta_status == "too_few_evals" and small.delta_alpha is None
        assert small.delta_stable_rank is not None and "min_evals" in small.delta_message
    assert by_name(results[2])["0"].delta_rel_norm > by_name(results[1])["0"].delta_rel_norm  # moving away


def test_no_base_model_no_deltas(tmp_path):
    _, results, _, run_dir = run_training(tmp_path, steps=2)
    for lm in results[-1].layers:
        assert lm.delta_status == "" and lm.delta_message == ""
        assert lm.delta_rel_norm is None and all(getattr(lm, f) is None for f in DELTA_SPECTRAL)
    assert not wwmonitor.load_run(run_dir).metrics.metric.str.startswith("delta_").any()


def test_deltas_are_computed_on_the_analysis_thread(tmp_path, monkeypatch):
    threads = []
    orig = ReferenceWeights.apply

    def spy(self, *a, **k):
        threads.append(threading.current_thread().name)
        return orig(self, *a, **k)

    monkeypatch.setattr(ReferenceWeights, "apply", spy)
    run_training(tmp_path, steps=2, base_model="first")
    assert len(threads) == 2 * len(NAMES)
    assert all(t.startswith("wwmonitor-") and t != threading.current_thread().name for t in threads)


# ------------------------------------------------------------------ reference = a base model
def _safetensors(model, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


BASES = {
    "model": lambda m, p: m,
    "state_dict": lambda m, p: m.state_dict(),
    "numpy": lambda m, p: {k: v.numpy() for k, v in m.state_dict().items()},
    "safetensors": lambda m, p: _safetensors(m, p / "base.safetensors"),
}


@pytest.mark.parametrize("form", sorted(BASES))
def test_delta_from_a_base_model(tmp_path, form):
    base = mlp(seed=7)
    ref = weights(base)
    _, results, saved, run_dir = run_training(tmp_path, steps=2, base_model=BASES[form](base, tmp_path))
    for r, W in zip(results, saved):
        for n in NAMES:
            lm = by_name(r)[n]
            assert lm.delta_rel_norm > 0.5  # a different initialisation: far away from the first step on
            check_delta(lm, W[n], ref[n])
    m = wwmonitor.load_run(run_dir).metrics
    first = m[(m.metric == "delta_rel_norm") & (m.step == 0)].set_index("layer").value
    assert first.to_dict() == pytest.approx({n: rel_norm(saved[0][n], ref[n]) for n in NAMES}, rel=1e-6)


def test_base_model_is_copied_once(tmp_path):
    """base_model=the model itself: the reference is a copy taken when the monitor is created."""
    model = mlp(0)
    before = weights(model)
    with Monitor(model, tmp_path, every_n_epochs=None, options=FAST, analysis_device="cpu", base_model=model) as mon:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(2.0)
        mon.snapshot(step=1)
        mon.flush()
        res = mon.results[0]
    for n in NAMES:  # W = 2 W_ref: ‖W − W_ref‖ / ‖W_ref‖ = 1
        assert by_name(res)[n].delta_rel_norm == pytest.approx(1.0, rel=1e-6)
        check_delta(by_name(res)[n], 2 * before[n], before[n])


# ------------------------------------------------------------------ run store and TensorBoard
def test_deltas_reach_the_run_store_and_tensorboard(tmp_path):
    from wwmonitor.sinks.tensorboard import EventWriter, TensorBoardSink

    assert "delta_rel_norm" in DEFAULT_SCALARS and "delta_rel_norm" in METRIC_NAMES
    assert "delta_alpha" in METRIC_NAMES and "delta_status" not in METRIC_NAMES
    sink = TensorBoardSink(EventWriter(tmp_path / "tb"), close_writer=True, images=False)
    _, results, saved, run_dir = run_training(tmp_path, sinks=[sink], base_model="first")
    m = wwmonitor.load_run(run_dir).metrics
    rel = m[m.metric == "delta_rel_norm"]
    assert len(rel) == 3 * len(NAMES)
    for r in results:
        for lm in r.layers:
            v = rel[(rel.step == r.step) & (rel.layer == lm.name)].value
            assert list(v) == [pytest.approx(lm.delta_rel_norm)]
    alpha = m[m.metric == "delta_alpha"]
    assert set(alpha.step) == {1, 2} and "4" not in set(alpha.layer)  # None is not stored: no row at all
    assert set(m[m.metric == "delta_stable_rank"].step) == {1, 2}
    ea = tb_accumulator(str(tmp_path / "tb"))
    for n in NAMES:
        got = [(e.step, e.value) for e in ea.Scalars(f"ww.delta_rel_norm/{n}")]
        assert [s for s, _ in got] == [0, 1, 2]
        assert [v for _, v in got] == pytest.approx([rel_norm(W[n], saved[0][n]) for W in saved], rel=1e-5)
    assert not any(t.startswith("ww.delta_alpha/") for t in ea.Tags()["scalars"])  # default scalars: rel norm only


# ------------------------------------------------------------------ ReferenceWeights and analyze_model
def test_reference_names_shapes_and_memory():
    base = {
        "module.0.weight": np.ones((8, 6), np.float32),
        "module.2.weight": np.full((4, 8), 2.0, np.float32),
        "extra.weight": np.zeros((5, 5), np.float16),
        "zero.weight": np.zeros((3, 4), np.float32),
    }
    ref = ReferenceWeights(base)
    assert sorted(ref.names) == ["extra", "module.0", "module.2", "zero"]
    assert ref.nbytes == 4 * (48 + 32 + 25 + 12)  # 16-bit floats are held as float32
    ref.bind(["wrapper.module.0", "module.2", "other", "zero"])  # a leading wrapper is dropped; unused ones too
    assert sorted(ref.names) == ["module.0", "module.2", "zero"]

    def delta(name, W):
        lm = LayerMetrics(name=name)
        ref.apply(name, "Linear", 1.0, W, lm, options=FAST)
        return lm

    lm = delta("wrapper.module.0", np.full((8, 6), 1.5, np.float32))
    assert lm.delta_rel_norm == pytest.approx(0.5) and lm.delta_status == "too_few_evals"
    assert lm.delta_stable_rank == pytest.approx(1.0)  # a constant delta has rank 1
    lm = delta("module.2", np.ones((8, 4), np.float32))
    assert lm.delta_status == "shape_mismatch" and lm.delta_rel_norm is None and "(8, 4)" in lm.delta_message
    lm = delta("other", np.ones((2, 2), np.float32))
    assert lm.delta_status == "no_reference" and lm.delta_rel_norm is None
    lm = delta("zero", np.ones((3, 4), np.float32))  # ‖W_ref‖ = 0: no relative norm, the spectrum still
    assert lm.delta_rel_norm is None and lm.delta_log_norm == pytest.approx(np.log10(12.0))
    lm = delta("module.2", np.full((4, 8), np.nan, np.float32))
    assert lm.delta_status == "non_finite" and lm.delta_rel_norm is None
    lm = delta("x.lora_update", np.ones((3, 4), np.float32))
    assert lm.delta_status == "not_comparable"
    with pytest.raises(TypeError, match="base_model"):
        ReferenceWeights(42)
    with pytest.raises(ValueError, match="no floating-point weight matrices"):
        ReferenceWeights({"ids": np.arange(12).reshape(3, 4)})


def test_analyze_model_base_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.Flatten(), torch.nn.Linear(64, 80))
    base = {k: v.detach().clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rep = wwmonitor.analyze_model(net, base_model=base, options=FAST, workers=1)
    plain = wwmonitor.analyze_model(net, options=FAST, workers=1)
    for lm, lm0 in zip(rep.layers, plain.layers):
        w, w0 = net.state_dict()[f"{lm.name}.weight"].numpy(), base[f"{lm.name}.weight"].numpy()
        assert lm.delta_rel_norm == pytest.approx(rel_norm(w, w0), rel=1e-6)
        assert lm.alpha == lm0.alpha and lm.log_norm == lm0.log_norm  # the layer's own metrics are untouched
        assert lm.delta_stable_rank is not None and lm.delta_status in ("ok", "too_few_evals")
    conv = rep["0"]  # pooled 3x3 kernel positions, 16x3 slices, conv2d scale 0.5 as for W
    D = (net[0].weight.detach() - base["0.weight"]).numpy()
    dm = analyze_matrix(np.moveaxis(D.reshape(16, 3, 9), 2, 0), "0", layer_type="Conv2d", scale=0.5, options=FAST)
    assert conv.delta_log_norm == pytest.approx(dm.log_norm, rel=1e-9) and conv.delta_status == dm.status
    assert "delta_rel_norm" in rep.to_pandas().columns
    with pytest.raises(ValueError, match="base_model='first' is a Monitor option"):
        wwmonitor.analyze_model(net, base_model="first")
