"""Keras 3 callback: real ``model.fit`` on the torch, jax and tensorflow backends.

Keras fixes its backend at first import, so every case runs a script in a
subprocess with ``KERAS_BACKEND`` set.  The torch and jax runs hide TensorFlow
(as on an install without it) to check that nothing on those backends needs it;
all TensorFlow cases share one subprocess (importing TF takes seconds).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

if importlib.util.find_spec("keras") is None:  # not imported here: that would fix the backend
    pytest.skip("keras is not installed", allow_module_level=True)

HERE = Path(__file__).parent
pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import glob, json, os, sys
    sys.modules["tensorflow"] = None  # as on an install without TensorFlow: `import tensorflow` fails
    sys.path.insert(0, {tests!r})
    import numpy as np
    import keras
    from wwmonitor.alerts import AlertRules
    from wwmonitor.callbacks.keras import WeightWatcherCallback
    import wandb
    from _wwcb_helpers import tb_accumulator, wandb_history

    out = {out!r}
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 512)

    def build():
        block = keras.Sequential([keras.layers.Dense(128, activation="relu"),
                                  keras.layers.Dense(64, activation="relu")],
                                 name="block")  # nested: not in model.layers' top level
        inp = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inp)
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dense(64, name="proj")(h)
        h = block(h)
        model = keras.Model(inp, keras.layers.Dense(10, name="head")(h))
        model.compile(optimizer=keras.optimizers.SGD(0.05),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    model = build()
    run = wandb.init(project="wwmonitor-keras", dir=out, mode="offline")
    cb = WeightWatcherCallback(loggers={{"tensorboard": os.path.join(out, "tb"), "wandb": True,
                                        "csv": os.path.join(out, "csv")}},
                               root=os.path.join(out, "runs"), run_name="keras", alerts="default",
                               esd_every_n_epochs=1)
    async_with = keras.callbacks.CallbackList([cb], model=model)._async_train
    async_without = keras.callbacks.CallbackList([], model=model)._async_train

    class BatchHook(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    async_batchhook = keras.callbacks.CallbackList([BatchHook()], model=model)._async_train
    hist = model.fit(x, y, epochs=3, batch_size=32, callbacks=[cb], verbose=0)
    wandb.finish()

    ea = tb_accumulator(os.path.join(out, "tb"))
    tags = ea.Tags()
    scal = {{t: [e.step for e in ea.Scalars(t)] for t in tags["scalars"]}}
    wb_dir = glob.glob(os.path.join(out, "wandb", "offline-run-*"))[0]
    rows, _ = wandb_history(wb_dir)

    # stop_training through an alert: random-init layers are under-trained (alpha > 6) at once
    model2 = build()
    cb2 = WeightWatcherCallback(root=os.path.join(out, "runs"), run_name="stop",
                                alerts=AlertRules(rules=["alpha_high"], alpha_high=3.0, hysteresis=0.5, warmup=0,
                                                  warn=False),
                                stop_on=["alpha_high"])
    hist2 = model2.fit(x, y, epochs=12, batch_size=64, callbacks=[cb2], verbose=0)

    import wwmonitor
    m = wwmonitor.load_run(cb.monitor.run_dir).metrics
    res = {{
        "backend": keras.backend.backend(),
        "tf_imported": sys.modules.get("tensorflow") is not None,
        "async": [async_with, async_without, async_batchhook],
        "scalars": scal,
        "images": tags["images"],
        "texts": tags["tensors"],
        "store_steps": sorted(int(s) for s in m.step.unique()),
        "store_layers": sorted(set(m.layer)),
        "dups": bool(m.duplicated(["step", "layer", "metric"]).any()),
        "wb_images": len(glob.glob(os.path.join(wb_dir, "files", "media", "images", "ww.esd", "*.png"))),
        "wb_steps": [int(r["ww/step"]) for r in rows if "ww/step" in r],
        "csv": os.path.exists(os.path.join(out, "csv", "wwmonitor_metrics.csv")),
        "epochs2": len(hist2.history["loss"]),
        "stopped": cb2.stopped_by_alert,
        "stop_alerts": [a.rule for a in cb2.monitor.alerts_fired if a.stop_training],
    }}
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(res, f)
    """
)

BACKENDS = ["torch"] + (["jax"] if importlib.util.find_spec("jax") is not None else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_fit(backend, tmp_path):
    if backend == "torch":
        pytest.importorskip("torch")
    script = tmp_path / "keras_fit.py"
    script.write_text(SCRIPT.format(tests=str(HERE), out=str(tmp_path)))
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
        "MPLBACKEND": "Agg",
    }
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "result.json").read_text())

    assert r["backend"] == backend
    assert not r["tf_imported"]  # TensorBoard events written without TensorFlow (hidden in the script)
    # torch and jax are thread-safe Keras backends: async dispatch is on without callbacks; the callback keeps
    # it on, while a batch hook turns it off (so the check can fail)
    assert r["async"] == [True, True, False]

    steps = [16, 32, 48]  # optimizer iterations at the ends of epochs 0..2 (512 / 32 per epoch)
    dense = ["block/dense", "block/dense_1", "proj"]
    for layer in dense:
        assert r["scalars"][f"ww.alpha/{layer.replace('/', '.')}"] == steps, layer  # '/' kept in one section
    assert r["scalars"]["ww/mean_alpha"] == steps
    assert {f"ww.esd/{d.replace('/', '.')}" for d in dense} <= set(r["images"])
    assert "ww/phases/text_summary" in r["texts"]
    assert r["store_steps"] == steps and not r["dups"]
    assert {"conv", "proj", "block/dense", "block/dense_1", "head"} <= set(r["store_layers"])
    assert r["wb_images"] >= 3 * 3 and r["wb_steps"] == steps
    assert r["csv"]
    assert r["stopped"] and r["epochs2"] < 12 and "alpha_high" in r["stop_alerts"]


# ---------------------------------------------------------------------------------------------- tensorflow ----
# One subprocess runs every TensorFlow case (graph mode, XLA, mixed precision, MirroredStrategy, stop_on) and
# writes one JSON; the tests below each check their case.  Every case compares the run store's last snapshot with
# ``wwmonitor.analyze_matrix`` on the model's final kernels, read with ``get_weights()`` (not through wwmonitor).
TF_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path.insert(0, {tests!r})
    t0 = time.perf_counter()
    import numpy as np
    import tensorflow as tf
    import keras
    import wwmonitor
    from wwmonitor.alerts import AlertRules
    from wwmonitor.callbacks.keras import WeightWatcherCallback
    from wwmonitor.layers import extract_matrices
    from _wwcb_helpers import tb_accumulator

    out = {out!r}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 8, 8, 8)).astype("float32")
    y = rng.integers(0, 10, 256)
    EPOCHS, BATCH = 2, 32  # 8 optimizer steps per epoch
    LAYERS = ["conv", "proj", "block/d1", "block/d2", "head"]

    def build(jit_compile="auto"):
        block = keras.Sequential([keras.layers.Dense(64, activation="relu", name="d1"),
                                  keras.layers.Dense(64, activation="relu", name="d2")], name="block")
        inp = keras.Input((8, 8, 8))
        h = keras.layers.Conv2D(16, 3, activation="relu", name="conv")(inp)
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dense(64, name="proj")(h)
        h = block(h)
        model = keras.Model(inp, keras.layers.Dense(10, name="head")(h))
        model.compile(optimizer=keras.optimizers.SGD(0.05),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile)
        return model

    def layer(model, path):
        lyr = model.get_layer(path.split("/")[0])
        return lyr.get_layer(path.split("/")[1]) if "/" in path else lyr

    def reference(model, dtype="float32"):
        # analyze_matrix on the final kernels: Dense (in, out); Conv2D (kh, kw, in, out) -> (kh*kw, in, out), 0.5
        ref = {{}}
        for path in LAYERS:
            lyr = layer(model, path)
            W = lyr.get_weights()[0].astype(dtype)
            conv = W.ndim == 4
            lm = wwmonitor.analyze_matrix(W.reshape(-1, *W.shape[-2:]) if conv else W, path,
                                          layer_type="Conv2D" if conv else "Dense", scale=0.5 if conv else 1.0)
            ref[path] = {{k: float(v) for k, v in lm.to_dict().items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None}}
        return ref

    class Steps(keras.callbacks.Callback):  # the optimizer's iteration count at each epoch end
        def __init__(self):
            super().__init__()
            self.steps = []

        def on_epoch_end(self, epoch, logs=None):
            self.steps.append(int(self.model.optimizer.iterations.numpy()))

    def case(name, jit_compile="auto", strategy=None, policy=None, **cb_kwargs):
        t = time.perf_counter()
        keras.utils.set_random_seed(0)
        if policy:
            keras.mixed_precision.set_global_policy(policy)
        try:
            if strategy is not None:
                with strategy.scope():
                    model = build(jit_compile)
            else:
                model = build(jit_compile)
            cb = WeightWatcherCallback(root=os.path.join(out, "runs"), run_name=name, **cb_kwargs)
            rec = Steps()
            model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, callbacks=[cb, rec], verbose=0)
            specs = extract_matrices(model)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        m = wwmonitor.load_run(cb.monitor.run_dir).metrics
        last = m[m.step == m.step.max()]
        store = {{lyr: dict(zip(g.metric, g.value.astype(float))) for lyr, g in last.groupby("layer")}}
        kern = layer(model, "proj").kernel
        return model, cb, {{
            "store_steps": sorted(int(s) for s in m.step.unique()),
            "epoch_steps": rec.steps,
            "store_layers": sorted(set(m.layer)),
            "dups": bool(m.duplicated(["step", "layer", "metric"]).any()),
            "store": store,
            "ref": reference(model),
            "spec_dtypes": {{s.name: str(np.asarray(s.tensor).dtype) for s in specs}},
            "run_eagerly": bool(model.run_eagerly),
            "jit_compile": bool(model.jit_compile),
            "optimizer": type(model.optimizer).__name__,
            "kernel_dtype": str(kern.dtype),
            "kernel_value_type": type(getattr(kern, "value", kern)).__name__,
            "compute_dtype": layer(model, "proj").compute_dtype,
            "async": [keras.callbacks.CallbackList([cb], model=model)._async_train,
                      keras.callbacks.CallbackList([], model=model)._async_train],
            "seconds": time.perf_counter() - t,
        }}

    res = {{"backend": keras.backend.backend(), "import_seconds": time.perf_counter() - t0}}
    # the pre-0.5 spelling (log_dir=, csv=) still works, with a DeprecationWarning
    model, cb, res["graph"] = case("graph", log_dir=os.path.join(out, "tb"), csv=os.path.join(out, "csv"),
                                   alerts="default", esd_every_n_epochs=2)  # one set of ESD images
    ea = tb_accumulator(os.path.join(out, "tb"))
    res["graph"]["tb_alpha_steps"] = [e.step for e in ea.Scalars("ww.alpha/proj")]
    res["graph"]["tb_images"] = ea.Tags()["images"]
    res["graph"]["csv"] = os.path.exists(os.path.join(out, "csv", "wwmonitor_metrics.csv"))
    res["jit"] = case("jit", jit_compile=True, alerts=None)[2]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    model, cb, res["mirrored"] = case("mirrored", strategy=strategy, alerts=None)
    res["mirrored"]["replicas"] = strategy.num_replicas_in_sync
    res["mirrored"]["model_strategy"] = type(model.distribute_strategy).__name__
    model, cb, res["mixed"] = case("mixed", policy="mixed_float16", alerts=None)
    res["mixed"]["ref_float16"] = reference(model, "float16")

    t = time.perf_counter()
    keras.utils.set_random_seed(0)
    model = build()
    cb = WeightWatcherCallback(root=os.path.join(out, "runs"), run_name="stop",
                               alerts=AlertRules(rules=["alpha_high"], alpha_high=3.0, hysteresis=0.5, warmup=0,
                                                 warn=False),
                               stop_on=["alpha_high"])
    hist = model.fit(x, y, epochs=12, batch_size=64, callbacks=[cb], verbose=0)
    res["stop"] = {{"epochs": len(hist.history["loss"]), "stopped": cb.stopped_by_alert,
                   "alerts": [a.rule for a in cb.monitor.alerts_fired if a.stop_training],
                   "seconds": time.perf_counter() - t}}
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(res, f)
    """
)

HAS_TF = importlib.util.find_spec("tensorflow") is not None


@pytest.fixture(scope="module")
def tf_run(tmp_path_factory):
    if not HAS_TF:
        pytest.skip("tensorflow is not installed (requirements-dev.txt pins tensorflow-cpu)")
    tmp = tmp_path_factory.mktemp("keras_tf")
    script = tmp / "keras_tf.py"
    script.write_text(TF_SCRIPT.format(tests=str(HERE), out=str(tmp)))
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "OMP_NUM_THREADS": "1",
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MPLBACKEND": "Agg",
    }
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((tmp / "result.json").read_text())
    assert r["backend"] == "tensorflow"
    return r


def _check_case(c):
    """Steps, layers and metrics of one TensorFlow case against the final kernels."""
    # one snapshot per epoch end, at the optimizer's iteration count (8 steps per epoch)
    assert c["store_steps"] == c["epoch_steps"] and not c["dups"]
    assert {"conv", "proj", "block/d1", "block/d2", "head"} <= set(c["store_layers"])
    # the last snapshot was taken from the final weights: every metric equals analyze_matrix on them
    for layer, ref in c["ref"].items():
        got = c["store"][layer]
        assert "log_norm" in ref and ("alpha" in ref or layer == "head"), layer  # head: 10 eigenvalues, no fit
        for metric, value in ref.items():
            if metric in got:
                assert got[metric] == pytest.approx(value, rel=1e-9, abs=1e-12), (layer, metric)
        assert {"log_norm", "stable_rank", "lambda_max"} | ({"alpha"} & set(ref)) <= set(got), layer
    # weights are read as the variables' float32, whatever the compute dtype
    assert set(c["spec_dtypes"].values()) == {"float32"}
    # TensorFlow is not a thread-safe Keras backend: no async dispatch with or without the callback
    assert c["async"][0] == c["async"][1]


def test_keras_tensorflow_graph(tf_run):
    c = tf_run["graph"]
    assert not c["run_eagerly"] and not c["jit_compile"]  # default fit: a tf.function, no XLA
    assert c["epoch_steps"] == [8, 16]
    _check_case(c)
    assert c["tb_alpha_steps"] == [8, 16] and "ww.esd/proj" in c["tb_images"] and c["csv"]


def test_keras_tensorflow_jit_compile(tf_run):
    c = tf_run["jit"]
    assert c["jit_compile"] and not c["run_eagerly"]
    assert c["epoch_steps"] == [8, 16]
    _check_case(c)


def test_keras_tensorflow_mixed_precision(tf_run):
    c = tf_run["mixed"]
    # mixed_float16: float32 variables, float16 compute, loss scaling
    assert c["kernel_dtype"] == "float32" and c["compute_dtype"] == "float16"
    assert c["optimizer"] == "LossScaleOptimizer"
    # the step counts applied updates: a step the loss scaler skips (non-finite gradients) does not count
    assert 0 < c["epoch_steps"][0] <= 8 and c["epoch_steps"][-1] <= 16
    _check_case(c)  # the snapshot is the float32 variables ...
    # ... which the check tells apart from their float16 casts
    f16 = tf_run["mixed"]["ref_float16"]
    assert any(f16[layer]["log_norm"] != pytest.approx(c["ref"][layer]["log_norm"], rel=1e-9) for layer in f16)


def test_keras_tensorflow_mirrored_strategy(tf_run):
    c = tf_run["mirrored"]
    assert c["replicas"] == 1 and c["model_strategy"] == "MirroredStrategy"
    assert c["kernel_value_type"] == "MirroredVariable"
    assert c["epoch_steps"] == [8, 16]
    _check_case(c)


def test_keras_tensorflow_stop_on_alert(tf_run):
    s = tf_run["stop"]
    assert s["stopped"] and s["epochs"] < 12 and "alpha_high" in s["alerts"]


# -------------------------------------------------------------------------------- missing backend error ----
ERROR_CASES = {
    # a backend that is not installed here at all (openvino), one hidden from the import system (tensorflow),
    # and Keras itself missing
    "openvino": ("openvino", "", ["'openvino' backend", "pip install openvino"]),
    "tensorflow": (
        "tensorflow",
        "tensorflow",
        ["'tensorflow' backend", "pip install 'wwmonitor[keras-tensorflow]'", "pip install tensorflow"],
    ),
    "jax": ("jax", "jax", ["'jax' backend", "pip install 'wwmonitor[keras-jax]'"]),
    "no-keras": ("torch", "keras", ["needs Keras 3", "pip install 'wwmonitor[keras-torch]'"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_missing_backend_error(case, tmp_path):
    backend, hide, expected = ERROR_CASES[case]
    if case == "openvino" and importlib.util.find_spec("openvino") is not None:
        hide = "openvino"  # installed after all: hide it like the others
    code = textwrap.dedent(f"""
        import sys
        if {hide!r}:
            sys.modules[{hide!r}] = None  # `import {hide}` fails as if it were not installed
        try:
            import wwmonitor.callbacks.keras
        except ImportError as e:
            print("IMPORTERROR:" + str(e))
        else:
            print("imported")
    """)
    env = {**os.environ, "KERAS_BACKEND": backend}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("IMPORTERROR:")), proc.stdout)
    for text in expected:
        assert text in line, (text, line)
