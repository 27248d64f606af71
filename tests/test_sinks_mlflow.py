"""MLflow sink against a real local tracking store (sqlite backend under tmp, no server), read back with
MlflowClient."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")

import wwmonitor  # noqa: E402
from wwmonitor.metrics import LayerMetrics  # noqa: E402
from wwmonitor.records import Alert, ControlRecord, SnapshotResult  # noqa: E402
from wwmonitor.sinks._render import DEFAULT_SCALARS, layer_scalars, layer_tag, png_size  # noqa: E402
from wwmonitor.sinks.mlflow import MLflowSink, flatten_params, mlflow_key  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite tracking store for the module (creating its tables takes seconds); each test makes its own run."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("wwmonitor-test", artifact_location=(root / "artifacts").as_uri())
    return uri, client, exp, root


@pytest.fixture(autouse=True)
def _mlflow_globals(monkeypatch):
    """MLflow keeps the tracking URI and the active run in module globals: restore them after each test."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _new_run(store):
    _, client, exp, _ = store
    return client.create_run(exp).info.run_id


def _results(n: int = 3) -> list[SnapshotResult]:
    """Real analyze_matrix outputs; ESD figures drawn by the renderer stage for the first snapshot only."""
    from wwmonitor.monitor.render import Renderer

    renderer = Renderer(100)
    rng = np.random.default_rng(0)
    out = []
    for e in range(n):
        mats = {
            "enc.fc1": rng.standard_normal((200, 100)).astype(np.float32),
            "enc.fc2": rng.standard_t(2.5, (300, 120)).astype(np.float32),
            "tiny": rng.standard_normal((20, 10)).astype(np.float32),
        }
        layers = [wwmonitor.analyze_matrix(W, k, keep_esd=True) for k, W in mats.items()]
        esds = {lm.name: lm.esd for lm in layers}
        fits = {lm.name: lm.fits for lm in layers if lm.fits}
        alphas = [lm.alpha for lm in layers if lm.alpha is not None]
        alerts = (
            [
                Alert(
                    step=10 * e,
                    epoch=e,
                    rule="alpha_low",
                    severity="warning",
                    message="alpha < 2",
                    layer="enc.fc2",
                    value=1.9,
                ),
                Alert(step=10 * e, epoch=e, rule="non_finite", severity="error", message="model-level"),
            ]
            if e == 1
            else []
        )
        out.append(
            SnapshotResult(
                step=10 * e,
                epoch=e,
                time=1.7e9 + e,
                layers=layers,
                esds=esds,
                fits=fits,
                summary={"mean_alpha": float(np.mean(alphas))},
                alerts=alerts,
            )
        )
        renderer.render(out[-1])
    return out


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_metrics_artifacts_alerts_params(store, tmp_path):
    uri, client, _, _ = store
    run_id = _new_run(store)
    res = _results()
    assert set(res[0].figures) == {"enc.fc1", "enc.fc2", "tiny"} and not res[1].figures
    params = {
        "lr": 0.1,
        "optim": {"name": "sgd", "momentum": 0.9},
        "layers": ["fc1", "fc2"],
        "note": "x" * 7000,
        "bad key:ü": 1,
    }
    sink = MLflowSink(run_id, tracking_uri=uri, params=params)
    assert sink.wants_figures
    for r in res:
        sink.write(r)
    sink.close()

    # --- metrics: per key, one point per snapshot at its step, equal to the LayerMetrics
    for lm_i in range(3):
        for metric in DEFAULT_SCALARS:
            name = res[0].layers[lm_i].name
            want = [(r.step, layer_scalars(r.layers[lm_i], [metric]).get(metric)) for r in res]
            got = _history(client, run_id, layer_tag("ww", metric, name))
            assert got == [(s, v) for s, v in want if v is not None], (metric, name)
    assert res[0].layers[2].alpha is None  # "tiny": too few eigenvalues, no alpha -- never logged as a sentinel
    assert _history(client, run_id, "ww.alpha/tiny") == []
    assert _history(client, run_id, "ww.alpha/enc.fc1")[0][1] == res[0].layers[0].alpha
    assert _history(client, run_id, "ww/mean_alpha") == [(r.step, r.summary["mean_alpha"]) for r in res]
    assert _history(client, run_id, "ww/epoch") == [(0, 0.0), (10, 1.0), (20, 2.0)]
    stamps = {m.timestamp for m in client.get_metric_history(run_id, "ww/epoch")}
    assert stamps == {1.7e12, 1.7e12 + 1000, 1.7e12 + 2000}

    # --- artifacts: the ESD PNGs (bytes as rendered), one layer table per snapshot
    dst = tmp_path / "dl"
    local = client.download_artifacts(run_id, "wwmonitor", str(dst))
    esd = sorted(os.listdir(os.path.join(local, "esd")))
    assert esd == ["step_0"]
    for name, png in res[0].figures.items():
        with open(os.path.join(local, "esd", "step_0", f"{name}.png"), "rb") as f:
            data = f.read()
        assert data == png and data[:8] == b"\x89PNG\r\n\x1a\n" and min(png_size(data)) > 100
    assert sorted(os.listdir(os.path.join(local, "layers"))) == ["step_0.json", "step_10.json", "step_20.json"]
    with open(os.path.join(local, "layers", "step_10.json")) as f:
        table = json.load(f)
    assert table["step"] == 10 and table["epoch"] == 1
    cols = table["columns"]
    assert cols[:7] == ["step", "epoch", "layer", "type", "phase", "status", "reason"]
    rows = {row[2]: dict(zip(cols, row)) for row in table["data"]}
    assert list(rows) == ["enc.fc1", "enc.fc2", "tiny"]
    assert rows["enc.fc2"]["alpha"] == res[1].layers[1].alpha
    assert rows["enc.fc2"]["phase"] == res[1].layers[1].phase
    assert rows["tiny"]["alpha"] is None and rows["tiny"]["status"] == res[1].layers[2].status

    # --- alerts: a tag per rule and layer, and the snapshot's list as an artifact
    run = client.get_run(run_id)
    tags = run.data.tags
    assert tags["ww/alert/alpha_low/enc.fc2"] == "step 10 [warning] alpha < 2"
    assert tags["ww/alert/non_finite/__model__"] == "step 10 [error] model-level"
    assert sorted(os.listdir(os.path.join(local, "alerts"))) == ["step_10.json"]
    with open(os.path.join(local, "alerts", "step_10.json")) as f:
        alerts = json.load(f)
    assert [(a["rule"], a["layer"], a["value"]) for a in alerts] == [
        ("alpha_low", "enc.fc2", 1.9),
        ("non_finite", None, None),
    ]

    # --- params: flattened, values as strings, cut to MLflow's limit, keys sanitized
    p = run.data.params
    assert p["ww/lr"] == "0.1"
    assert p["ww/optim/name"] == "sgd" and p["ww/optim/momentum"] == "0.9"
    assert p["ww/layers"] == '["fc1", "fc2"]'
    assert p["ww/note"] == "x" * 6000
    assert p["ww/bad_key__"] == "1"
    points = sum(len(layer_scalars(lm, DEFAULT_SCALARS)) for r in res for lm in r.layers) + 2 * len(res)
    assert sink.metrics_logged == points  # per-layer values + mean_alpha + epoch, nothing else
    assert sink.images_logged == 3

    # --- a controller's assignments (wwmonitor.control): value and factor per layer at their step
    rec = ControlRecord(
        step=25, layer="enc.fc1", controller="TempBalance", quantity="lr", alpha=2.5, factor=1.5, value=0.15,
        base=0.1, source_step=20,
    )  # fmt: skip
    sink.write_control([rec])
    assert _history(client, run_id, "ww_control/lr/enc.fc1") == [(25, 0.15)]
    assert _history(client, run_id, "ww_control/lr_factor/enc.fc1") == [(25, 1.5)]


def test_key_sanitizing():
    assert (
        mlflow_key("ww", "alpha", "encoder.layer.0.attention.self.query")
        == "ww/alpha/encoder.layer.0.attention.self.query"
    )
    assert mlflow_key("ww", "alpha", "dense/kernel:0") == "ww/alpha/dense/kernel_0"
    assert mlflow_key("ww", "alpha", "a b\tc+d(é)") == "ww/alpha/a_b_c_d___"
    assert mlflow_key("ww", "alpha", "/a//./b/../c/") == "ww/alpha/a/b/__/c"
    long = mlflow_key("ww", "alpha", "x" * 400)
    assert len(long) == 250 and long != mlflow_key("ww", "alpha", "x" * 401)
    assert flatten_params({"a": {"b": {"c": 1}}, "d": None, "e": {}}) == {"a/b/c": "1", "d": "None", "e": "{}"}


def test_odd_layer_names_and_batch_limit(store):
    """Names MLflow would reject are sanitized; more than 1000 metrics go in several log_batch calls."""
    uri, client, _, _ = store
    run_id = _new_run(store)
    names = [f"blocks.{i}/attn:q k" for i in range(90)] + ["ü" * 300]
    layers = [
        LayerMetrics(name=n, **{**{m: 0.5 for m in DEFAULT_SCALARS}, "alpha": 2.0 + i / 100, "stable_rank": float(i)})
        for i, n in enumerate(names)
    ]
    res = SnapshotResult(step=5, epoch=None, time=time.time(), layers=layers, summary={"mean_alpha": 2.5})
    calls = []
    real = client.log_batch

    def spy(run_id, metrics=(), params=(), tags=(), **kw):
        calls.append(len(metrics))
        return real(run_id, metrics=metrics, params=params, tags=tags, **kw)

    client.log_batch = spy
    try:
        MLflowSink(run_id, client=client, images=False).write(res)
    finally:
        del client.log_batch
    n = len(names) * len(DEFAULT_SCALARS) + 1
    assert n > 1000 and calls == [1000] * (n // 1000) + [n % 1000]
    metrics = client.get_run(run_id).data.metrics
    assert len(metrics) == n  # every key accepted by MLflow, none merged by the sanitizing
    key = mlflow_key(layer_tag("ww", "alpha", names[3]))
    assert key.startswith("ww.alpha/blocks.3") and key.endswith("attn_q_k")
    assert metrics[key] == 2.03
    assert metrics[mlflow_key(layer_tag("ww", "stable_rank", names[89]))] == 89.0
    assert metrics["ww/mean_alpha"] == 2.5
    assert "ww/epoch" not in metrics  # no epoch: not logged
    longest = [k for k in metrics if k.startswith("ww.alpha/___")]
    assert len(longest) == 1 and len(longest[0]) == 250


def test_failing_image_keeps_metrics(store, tmp_path):
    uri, client, _, _ = store
    run_id = _new_run(store)
    res = _results(1)[0]
    res.figures["enc.fc2"] = None  # an image that cannot be written
    sink = MLflowSink(run_id, client=client)
    with pytest.raises(RuntimeError, match=r"ESD images.*1 ESD image\(s\) not written \(enc.fc2\)"):
        sink.write(res)
    assert _history(client, run_id, "ww.alpha/enc.fc1") == [(0, res.layers[0].alpha)]
    local = client.download_artifacts(run_id, "wwmonitor", str(tmp_path / "dl"))
    assert sorted(os.listdir(os.path.join(local, "esd", "step_0"))) == ["enc.fc1.png", "tiny.png"]
    assert os.listdir(os.path.join(local, "layers")) == ["step_0.json"]


def test_active_run_conflicting_params_and_errors(store):
    uri, client, exp, _ = store
    with pytest.raises(ValueError, match="no active run"):
        MLflowSink(tracking_uri=uri)
    with pytest.raises(ValueError, match="not both"):
        MLflowSink("abc", client=client, tracking_uri=uri)
    with pytest.raises(TypeError, match="MlflowClient"):
        MLflowSink("abc", client=object())
    with pytest.raises(ValueError, match="unknown metric"):
        MLflowSink("abc", client=client, metrics=["nope"])
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=exp) as active:
        client.log_param(active.info.run_id, "ww/lr", "0.5")  # logged before, with another value
        sink = MLflowSink(params={"lr": 0.1, "seed": 3})  # the active run, MLflow's current tracking URI
        assert sink.run_id == active.info.run_id
        assert MLflowSink(active, client=client).run_id == active.info.run_id
        with pytest.raises(RuntimeError, match=r"params.*1 param\(s\) not written \(ww/lr\)"):
            sink.write(SnapshotResult(step=1, epoch=0, time=time.time(), layers=[]))
        sink.close()  # params are not retried
    p = client.get_run(active.info.run_id).data.params
    assert p == {"ww/lr": "0.5", "ww/seed": "3"}  # the conflicting one is kept as it was, the others logged


def test_close_logs_params_without_snapshot(store):
    uri, client, _, _ = store
    run_id = _new_run(store)
    MLflowSink(run_id, client=client, params={"a": 1}).close()
    assert client.get_run(run_id).data.params == {"ww/a": "1"}


@pytest.mark.slow
def test_lightning_mlflow_logger_gets_ww_metrics(store, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("lightning")
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import MLFlowLogger

    from wwmonitor.callbacks.lightning import WeightWatcherCallback

    from _wwcb_helpers import make_module

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    uri, client, _, _ = store
    lg = MLFlowLogger(experiment_name="lightning", tracking_uri=uri, artifact_location=(tmp_path / "art").as_uri())
    cb = WeightWatcherCallback(
        every_n_epochs=1, run_dir=str(tmp_path / "runs"), run_name="fit", esd_every_n_epochs=1, config={"lr": 0.05}
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=lg,
        callbacks=[cb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=5,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(make_module("lightning"))
    assert [type(s).__name__ for s in cb.sinks] == ["MLflowSink"]
    assert cb.sinks[0].run_id == lg.run_id

    steps = [16, 32]
    store_run = wwmonitor.load_run(cb.monitor.run_dir).metrics
    for layer in ("fc1", "fc2"):
        hist = _history(client, lg.run_id, f"ww.alpha/{layer}")
        assert [s for s, _ in hist] == steps
        want = store_run[(store_run.layer == layer) & (store_run.metric == "alpha")].sort_values("step").value
        assert [v for _, v in hist] == pytest.approx(want.tolist(), rel=1e-9)
    assert [s for s, _ in _history(client, lg.run_id, "ww/mean_alpha")] == steps
    run = client.get_run(lg.run_id)
    assert "train_loss" in run.data.metrics  # the logger's own metrics, same run
    assert run.data.params["ww/lr"] == "0.05" and run.data.params["ww/world_size"] == "1"
    arts = {a.path for a in client.list_artifacts(lg.run_id, "wwmonitor/esd/step_16")}
    assert arts == {f"wwmonitor/esd/step_16/{n}.png" for n in ("fc1", "fc2", "out")}
    assert {a.path for a in client.list_artifacts(lg.run_id, "wwmonitor/layers")} == {
        "wwmonitor/layers/step_16.json",
        "wwmonitor/layers/step_32.json",
    }
    assert cb.monitor.stats["sink_errors"] == 0
