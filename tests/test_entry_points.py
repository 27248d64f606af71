"""One tiny model through all four entry points -- a plain ``Monitor`` loop, Lightning, Keras (torch
backend) and the Hugging Face ``Trainer`` -- with the same options; everything they store and log must agree.

How the comparison is made meaningful: every entry point starts from the same weights (one NumPy draw;
Keras gets the transposed kernels) and trains with learning rate 0, so the weights at every snapshot are
identical in all four; 32 samples in batches of 8 give 4 optimizer steps per epoch in each framework.
With ``every_n_steps=3, every_n_epochs=1`` over 2 epochs the one schedule rule gives snapshots at steps
3, 4 (end of epoch 0), 6 and 8 (end of epoch 1).  Compared: the stored metrics (every layer, metric and
value), step and epoch numbering, the alerts, the TensorBoard tags with their steps, and the W&B rows'
keys and step key.  Keras fixes its backend at import, so it runs in a subprocess (the same options).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

HERE = Path(__file__).parent
SHAPES = [("fc1", 64, 96), ("fc2", 96, 64), ("out", 64, 4)]  # (name, in, out)
STEPS = [3, 4, 6, 8]
EPOCHS = [0, 0, 1, 1]


def weights() -> dict[str, np.ndarray]:
    """The starting weights, torch layout (out, in): heavy-ish tails so alpha is fitted."""
    rng = np.random.default_rng(0)
    return {n: (rng.standard_t(3, size=(o, i)) / np.sqrt(i)).astype(np.float32) for n, i, o in SHAPES}


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.standard_normal((32, 64)).astype(np.float32), rng.standard_normal((32, 4)).astype(np.float32)


def options(out: Path, name: str, run: Any) -> dict[str, Any]:
    """The same options for every entry point (only the folders differ)."""
    from wwmonitor.analyze import AnalysisOptions

    return {
        "every_n_epochs": 1,
        "every_n_steps": 3,
        "root": str(out / "runs"),
        "run_name": name,
        "alerts": {
            "rules": ["alpha_high", "non_finite"],
            "alpha_low": 1.2,
            "alpha_high": 2.0,
            "warmup": 0,
            "warn": False,
        },
        "loggers": {"tensorboard": str(out / "tb" / name), "wandb": run},
        "esd_every_n_epochs": 1,
        "esd_layers": ["fc1"],  # one figure per snapshot: drawing is the slow part
        "options": AnalysisOptions(mp_fit=False),
        "announce": False,
        "policy": "block",  # every due step analysed, whatever the machine's load (the default may coalesce)
    }


class FakeRun:
    """Records what a W&B run is asked to log (keys and step only), like an offline run's history."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.alerts: list[str] = []
        self.defined: list[tuple[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.config = type("Cfg", (), {"update": lambda *a, **k: None})()

    def define_metric(self, name: str, step_metric: Any = None, **kw: Any) -> None:
        self.defined.append((name, step_metric))

    def log(self, row: dict[str, Any], **kw: Any) -> None:
        self.rows.append({k: (v if isinstance(v, (int, float)) else type(v).__name__) for k, v in row.items()})

    def alert(self, title: str, text: str, level: Any = None, **kw: Any) -> None:
        self.alerts.append(title)

    def record(self) -> dict[str, Any]:
        return {
            "keys": sorted({k for r in self.rows for k in r}),
            "steps": [r["ww/step"] for r in self.rows],
            "alerts": self.alerts,
            "defined": sorted({str(s) for _, s in self.defined if s}),
        }


def record(run_dir: Any, tb_dir: Path, run: FakeRun) -> dict[str, Any]:
    """What an entry point left behind, in a comparable form (JSON-able)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import wwmonitor

    r = wwmonitor.load_run(run_dir)
    m = r.metrics.sort_values(["step", "layer", "metric"])
    ea = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    tb = {t: [e.step for e in ea.Scalars(t)] for t in tags["scalars"] if t.startswith("ww")}
    tb.update({t: [e.step for e in ea.Images(t)] for t in tags["images"] if t.startswith("ww")})
    return {
        "rows": [
            [int(s), int(e), str(lyr), str(k), float(v)]
            for s, e, lyr, k, v in m[["step", "epoch", "layer", "metric", "value"]].itertuples(index=False)
        ],
        "alerts": sorted([int(a.step), str(a.rule), str(a.layer)] for a in r.alerts.itertuples()),
        "tb": tb,
        "wandb": run.record(),
    }


# ------------------------------------------------------------------ the four entry points
class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for n, i, o in SHAPES:
            setattr(self, n, torch.nn.Linear(i, o))
        with torch.no_grad():
            for n, w in weights().items():
                getattr(self, n).weight.copy_(torch.from_numpy(w))
                getattr(self, n).bias.zero_()

    def forward(self, x: Any, labels: Any = None) -> Any:
        y = self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        if labels is None:
            return y
        return {"loss": torch.nn.functional.mse_loss(y, labels), "logits": y}


def plain(out: Path) -> dict[str, Any]:
    import wwmonitor

    run = FakeRun()
    model, (x, y) = Tiny(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    step = 0
    with wwmonitor.Monitor(model, **options(out, "plain", run)) as mon:
        for epoch in range(2):
            for b in range(4):
                loss = model(torch.from_numpy(x[8 * b : 8 * b + 8]), torch.from_numpy(y[8 * b : 8 * b + 8]))["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                mon.snapshot(step=step, epoch=epoch, epoch_end=False)  # due at steps 3, 6
            mon.snapshot(step=step, epoch=epoch)  # due at every epoch end
    return record(mon.run_dir, out / "tb" / "plain", run)


def lightning(out: Path) -> dict[str, Any]:
    import lightning.pytorch as L
    from torch.utils.data import DataLoader, TensorDataset

    from wwmonitor.callbacks.lightning import WeightWatcherCallback

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            t = Tiny()  # its layers, under the same names (fc1, fc2, out)
            self.fc1, self.fc2, self.out = t.fc1, t.fc2, t.out

        def training_step(self, batch: Any, i: int) -> Any:
            return Tiny.forward(self, *batch)["loss"]  # type: ignore[arg-type]

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    run = FakeRun()
    kw = options(out, "lightning", run)
    cb = WeightWatcherCallback(kw.pop("every_n_epochs"), kw.pop("every_n_steps"), **kw)
    x, y = data()
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        callbacks=[cb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(out),
    )
    trainer.fit(Module(), DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=8))
    return record(cb.monitor.run_dir, out / "tb" / "lightning", run)


def trainer(out: Path) -> dict[str, Any]:
    from transformers import Trainer, TrainingArguments

    from wwmonitor.callbacks.transformers import WeightWatcherCallback

    class Rows(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.x, self.y = data()

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"x": torch.from_numpy(self.x[i]), "labels": torch.from_numpy(self.y[i])}

    run = FakeRun()
    kw = options(out, "trainer", run)
    cb = WeightWatcherCallback(kw.pop("every_n_epochs"), kw.pop("every_n_steps"), **kw)
    args = TrainingArguments(
        str(out / "hf"),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        learning_rate=0.0,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
    )
    Trainer(model=Tiny(), args=args, train_dataset=Rows(), callbacks=[cb]).train()
    return record(cb.monitor.run_dir, out / "tb" / "trainer", run)


KERAS = """
import json, os, sys
sys.modules["tensorflow"] = None
sys.path.insert(0, {tests!r})
from pathlib import Path
import keras, numpy as np
from test_entry_points import FakeRun, SHAPES, data, options, record, weights
from wwmonitor.callbacks.keras import WeightWatcherCallback

out = Path({out!r})
layers = [keras.Input((64,))] + [keras.layers.Dense(o, name=n, activation=None if n == "out" else "relu")
                                 for n, i, o in SHAPES]
model = keras.Sequential(layers)
for n, w in weights().items():
    model.get_layer(n).set_weights([w.T, np.zeros(w.shape[0], np.float32)])
model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
run = FakeRun()
kw = options(out, "keras", run)
cb = WeightWatcherCallback(kw.pop("every_n_epochs"), kw.pop("every_n_steps"), **kw)
x, y = data()
model.fit(x, y, batch_size=8, epochs=2, shuffle=False, callbacks=[cb], verbose=0)
json.dump(record(cb.monitor.run_dir, out / "tb" / "keras", run), open(out / "keras.json", "w"))
"""


def keras(out: Path) -> dict[str, Any]:
    env = dict(os.environ, KERAS_BACKEND="torch", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    code = KERAS.format(tests=str(HERE), out=str(out))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads((out / "keras.json").read_text())


# ------------------------------------------------------------------ the test
@pytest.mark.slow
def test_four_entry_points_store_and_log_the_same(tmp_path):
    pytest.importorskip("lightning")
    pytest.importorskip("transformers")
    pytest.importorskip("keras")
    torch.set_num_threads(1)
    got = {f.__name__: f(tmp_path) for f in (plain, lightning, trainer, keras)}
    ref = got["plain"]

    # step and epoch numbering: the one schedule rule, everywhere
    assert sorted({(r[0], r[1]) for r in ref["rows"]}) == list(zip(STEPS, EPOCHS))
    assert {r[2] for r in ref["rows"]} == {"fc1", "fc2", "out", "__model__"}
    for name, rec in got.items():
        keys = [r[:4] for r in rec["rows"]]
        assert keys == [r[:4] for r in ref["rows"]], name  # same steps, epochs, layers, metric names
        # every value but `carried_layers`: with lr=0 no weight changes, and whether a framework's optimizer step
        # bumps a parameter's version counter (then it is copied and re-analysed, with equal values) or not
        # (then it is carried) is the framework's business; the values themselves must agree
        same = [r[3] != "carried_layers" for r in ref["rows"]]
        vals = np.array([r[4] for r, k in zip(rec["rows"], same) if k])
        want = np.array([r[4] for r, k in zip(ref["rows"], same) if k])
        np.testing.assert_allclose(vals, want, rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=name)
        assert rec["alerts"] == ref["alerts"], name
        assert rec["tb"] == ref["tb"], name
        assert rec["wandb"] == ref["wandb"], name
    # and the comparison is not vacuous
    assert ref["alerts"] and {a[1] for a in ref["alerts"]} == {"alpha_high"}
    assert ref["tb"]["ww/mean_alpha"] == STEPS and [t for t in ref["tb"] if t.startswith("ww.esd/")] == ["ww.esd/fc1"]
    assert ref["wandb"]["steps"] == STEPS and ref["wandb"]["defined"] == ["ww/step"]
    assert "ww.alpha/fc1" in ref["wandb"]["keys"] and ref["wandb"]["alerts"]
