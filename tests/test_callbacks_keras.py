"""Keras 3 callback: real ``model.fit`` on the torch backend (and jax when installed).

Keras fixes its backend at first import, so every case runs a script in a
subprocess with ``KERAS_BACKEND`` set.
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
        block = keras.Sequential([keras.layers.Dense(128, activation="relu"), keras.layers.Dense(64, activation="relu")],
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
    cb = WeightWatcherCallback(log_dir=os.path.join(out, "tb"), wandb=True, csv=os.path.join(out, "csv"),
                               run_dir=os.path.join(out, "runs"), run_name="keras", alerts="default",
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
    cb2 = WeightWatcherCallback(run_dir=os.path.join(out, "runs"), run_name="stop",
                                alerts=AlertRules(rules=["alpha_high"], warmup=0, warn=False), stop_on=["alpha_high"])
    hist2 = model2.fit(x, y, epochs=12, batch_size=64, callbacks=[cb2], verbose=0)

    import wwmonitor
    m = wwmonitor.load_run(cb.monitor.run_dir).metrics
    res = {{
        "backend": keras.backend.backend(),
        "tf_imported": "tensorflow" in sys.modules,
        "async": [async_with, async_without, async_batchhook],
        "scalars": scal,
        "images": tags["images"],
        "texts": tags["tensors"],
        "store_steps": sorted(int(s) for s in m.step.unique()),
        "store_layers": sorted(set(m.layer)),
        "dups": bool(m.duplicated(["step", "layer", "metric"]).any()),
        "wb_images": len(glob.glob(os.path.join(wb_dir, "files", "media", "images", "ww", "esd", "*.png"))),
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
    env = {**os.environ, "KERAS_BACKEND": backend, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
           "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "result.json").read_text())

    assert r["backend"] == backend
    assert not r["tf_imported"]  # TensorBoard events written without TensorFlow
    # torch and jax are thread-safe Keras backends: async dispatch is on without callbacks; the callback keeps
    # it on, while a batch hook turns it off (so the check can fail)
    assert r["async"] == [True, True, False]

    steps = [16, 32, 48]  # optimizer iterations at the ends of epochs 0..2 (512 / 32 per epoch)
    dense = ["block/dense", "block/dense_1", "proj"]
    for layer in dense:
        assert r["scalars"][f"ww/alpha/{layer}"] == steps, layer
    assert r["scalars"]["ww/model/mean_alpha"] == steps
    assert {f"ww/esd/{d}" for d in dense} <= set(r["images"])
    assert "ww/phases/text_summary" in r["texts"]
    assert r["store_steps"] == steps and not r["dups"]
    assert {"conv", "proj", "block/dense", "block/dense_1", "head"} <= set(r["store_layers"])
    assert r["wb_images"] >= 3 * 3 and r["wb_steps"] == steps
    assert r["csv"]
    assert r["stopped"] and r["epochs2"] < 12 and "alpha_high" in r["stop_alerts"]
