"""The controllers inside the frameworks, end to end (issue 19, part 3): Lightning, the Hugging Face Trainer.

Each test trains a tiny model with the monitor callback and the controller callback, captures the value
every update actually used (an optimizer step pre-hook registered after the controller's: it sees the
groups the controller split) and the scheduler's value (a global pre-hook: those run before an
optimizer's own), then requires, for every update at step ``s``:

    used value == scheduled value x factor,

where the factor is computed here -- with the published formula, the first and last layer kept --
from the alphas read back from the run store at the newest snapshot the controller applied by ``s``
(``sync=True``: the snapshot of each epoch's end, applied from that epoch's last step on).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import wwmonitor  # noqa: E402
from wwmonitor.control.formulas import alphadecay_factors, tempbalance_factors  # noqa: E402

from _wwcb_helpers import digits  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)


class Capture:
    """Per update: the training step, the scheduled value and the used value of every parameter."""

    def __init__(self, optimizer, names, quantity, step_of):
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self.opt, self.names, self.q, self.step_of = optimizer, names, quantity, step_of
        self.rows: list[tuple[int, dict[str, float], dict[str, float]]] = []
        self._base: dict[str, float] = {}
        self._handles = [
            register_optimizer_step_pre_hook(self._scheduled),  # runs before every own hook
            optimizer.register_step_pre_hook(self._used),  # after the controller's (registered at its bind)
        ]

    def _values(self, opt):
        return {self.names[id(p)]: float(g[self.q]) for g in opt.param_groups for p in g["params"]}

    def _scheduled(self, opt, args, kwargs):
        if opt is self.opt:
            self._base = self._values(opt)

    def _used(self, opt, args, kwargs):
        self.rows.append((int(self.step_of()), self._base, self._values(opt)))

    def remove(self):
        for h in self._handles:
            h.remove()


def _expected(run_dir, layers, formula, min_evals=50):
    """{step applied: {layer: factor}}, recomputed from the stored alphas (``alpha_median``) of the snapshot
    each stored record names; the records' alphas and factors must agree."""
    run = wwmonitor.load_run(run_dir)
    table = run.to_pandas().set_index(["step", "layer"])
    recs = run.control_records()
    assert recs, "no control records in the run store"
    out = {}
    for step in sorted({r.step for r in recs}):
        mine = {r.layer: r for r in recs if r.step == step}
        src = {r.source_step for r in mine.values()}
        assert len(src) == 1
        src_step = src.pop()
        rows = [table.loc[(src_step, layer)] for layer in layers]
        alphas = np.array([float(r.get("alpha_median", np.nan)) for r in rows])
        take = np.isfinite(alphas) & (np.array([float(r["num_evals"]) for r in rows]) >= min_evals)
        take[0] = take[-1] = False  # the first and last layer keep the base
        assert take.sum() >= 2, "fewer than two layers take part: the test would not test the map"
        factors = np.ones(len(layers))
        factors[take] = formula(alphas[take])
        for i, layer in enumerate(layers):
            r = mine[layer]
            if take[i]:
                assert r.alpha == pytest.approx(alphas[i], rel=1e-12)  # the record holds the stored alpha
            assert r.factor == pytest.approx(factors[i], rel=1e-9)
        out[step] = dict(zip(layers, factors))
    return out


def _check_updates(capture, expected, param_layer):
    """Every update used scheduled x the factor of the newest assignment at or before its step."""
    applied_steps = sorted(expected)
    tuned = 0
    for s, base, used in capture.rows:
        done = [a for a in applied_steps if a <= s]
        for pname, v in used.items():
            f = expected[done[-1]][param_layer[pname]] if done and pname in param_layer else 1.0
            assert v == pytest.approx(base[pname] * f, rel=1e-12, abs=0.0), (s, pname, v, base[pname], f)
            tuned += f != 1.0
    assert tuned > 0, "no update used a factor other than 1"


# ------------------------------------------------------------------ Lightning
def _lightning_module(epochs):
    import lightning.pytorch as pl
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    X, y = digits(256)

    class MLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.fc1, self.fc2, self.fc3, self.out = (
                nn.Linear(64, 64),
                nn.Linear(64, 64),
                nn.Linear(64, 64),
                nn.Linear(64, 10),
            )

        def forward(self, x):
            return self.out(torch.relu(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))))

        def training_step(self, batch, _):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)}

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            return DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True, generator=g)

    return MLP()


def test_lightning_tempbalance_rates_are_the_stored_alphas_assignment(tmp_path):
    import lightning.pytorch as pl

    from wwmonitor.callbacks.lightning import WeightWatcherCallback, WWControlCallback
    from wwmonitor.control import TempBalance

    model = _lightning_module(3)
    names = {id(p): n for n, p in model.named_parameters()}
    param_layer = {n: n.rsplit(".", 1)[0] for n in names.values()}  # a layer's own weight and bias
    got: dict[str, Capture] = {}

    class Hook(pl.Callback):  # after WWControlCallback in the list: its on_train_start runs after the bind
        def on_train_start(self, trainer, pl_module):
            got["c"] = Capture(trainer.optimizers[0], names, "lr", lambda: trainer.global_step)

    ww = WeightWatcherCallback(every_n_epochs=1, root=str(tmp_path / "runs"), run_name="tb", loggers=False)
    ctl = WWControlCallback(TempBalance(sync=True))
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ctl, ww, Hook()],  # the controller first: it must not depend on the order
    )
    try:
        trainer.fit(model)
    finally:
        if "c" in got:
            got["c"].remove()
    assert trainer.global_step == 24
    layers = ["fc1", "fc2", "fc3", "out"]
    assert ctl.controller.layers == layers
    expected = _expected(ww.monitor.run_dir, layers, tempbalance_factors)
    assert sorted(expected) == [
        8,
        16,
    ]  # each epoch end's snapshot, before the next epoch (sync=True); the last is never used
    _check_updates(got["c"], expected, param_layer)
    # the scheduler kept its own values: StepLR halves the base every epoch
    assert {round(b["fc2.weight"], 12) for s, b, _ in got["c"].rows} == {0.05, 0.025, 0.0125}
    assert ctl.controller._splitter is None  # released at fit end


def test_lightning_errors_name_the_missing_monitor_and_several_optimizers(tmp_path):
    import lightning.pytorch as pl

    from wwmonitor.callbacks.lightning import WeightWatcherCallback, WWControlCallback
    from wwmonitor.control import TempBalance

    kw = dict(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    kw.update(enable_progress_bar=False, enable_model_summary=False, limit_train_batches=1)
    trainer = pl.Trainer(callbacks=[WWControlCallback(TempBalance())], **kw)
    with pytest.raises(ValueError, match="no WeightWatcherCallback in trainer.callbacks"):
        trainer.fit(_lightning_module(1))

    class TwoOpt(type(_lightning_module(1))):  # manual optimization, two optimizers
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, _):
            for opt in self.optimizers():
                opt.zero_grad()
                self.manual_backward(torch.nn.functional.cross_entropy(self(batch[0]), batch[1]))
                opt.step()

        def configure_optimizers(self):
            head = list(self.out.parameters())
            body = [p for n, p in self.named_parameters() if not n.startswith("out.")]
            return [torch.optim.SGD(body, lr=0.05), torch.optim.SGD(head, lr=0.05)]

    ww = WeightWatcherCallback(every_n_epochs=1, root=str(tmp_path / "runs"), loggers=False)
    trainer = pl.Trainer(callbacks=[ww, WWControlCallback(TempBalance())], **kw)
    with pytest.raises(ValueError, match="returned 2 optimizers.*optimizer_index="):
        trainer.fit(TwoOpt())


def test_lightning_resume_continues_with_the_checkpoints_factors(tmp_path):
    import lightning.pytorch as pl

    from wwmonitor.callbacks.lightning import WeightWatcherCallback, WWControlCallback
    from wwmonitor.control import TempBalance

    kw = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    kw.update(default_root_dir=str(tmp_path))
    ww = WeightWatcherCallback(every_n_epochs=1, root=str(tmp_path / "runs"), run_name="r", loggers=False)
    first = WWControlCallback(TempBalance(sync=True))
    trainer = pl.Trainer(max_epochs=2, callbacks=[ww, first], **kw)
    trainer.fit(_lightning_module(2))
    saved = first.controller.factors  # from the step-8 snapshot; the checkpoint was written at step 16
    assert len(set(saved.values())) > 1
    seen = {}

    class Hook(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.update(second.controller.factors)

    ww2 = WeightWatcherCallback(every_n_epochs=1, root=str(tmp_path / "runs"), run_name="r", loggers=False)
    second = WWControlCallback(TempBalance(sync=True))
    trainer = pl.Trainer(max_epochs=3, callbacks=[ww2, second, Hook()], **kw)
    trainer.fit(_lightning_module(3), ckpt_path=trainer_ckpt(tmp_path))
    assert seen == saved  # bound with the checkpoint's factors before the first resumed update
    assert trainer.global_step == 24


def trainer_ckpt(root):
    (path,) = root.glob("**/checkpoints/*.ckpt")
    return str(path)


# ------------------------------------------------------------------ Hugging Face Trainer
def test_trainer_alphadecay_decays_are_the_stored_alphas_assignment(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainerCallback

    from wwmonitor.callbacks.transformers import WeightWatcherCallback, WWControlCallback
    from wwmonitor.control import AlphaDecay

    from test_callbacks_transformers import Tokens, bert, training_args

    model = bert()
    names = {id(p): n for n, p in model.named_parameters()}
    ww = WeightWatcherCallback(every_n_epochs=1, loggers=False, run_name="ad")
    ctl = WWControlCallback(AlphaDecay(sync=True), ww)
    args = training_args(tmp_path / "out", num_train_epochs=3, weight_decay=0.1, lr_scheduler_type="linear")
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(32), callbacks=[ctl, ww])
    state = {}

    class Hook(TrainerCallback):  # after the controller in the list: its first on_step_begin binds it
        def on_step_begin(self, args, st, control, optimizer=None, **kw):
            if "c" not in state:  # the torch optimizer inside accelerate's AcceleratedOptimizer
                state["c"] = Capture(optimizer.optimizer, names, "weight_decay", lambda: trainer.state.global_step)

    trainer.add_callback(Hook())
    try:
        trainer.train()
    finally:
        if "c" in state:
            state["c"].remove()
    cap = state["c"]
    groups = cap.opt.param_groups
    assert len(groups) == 2 and sorted(g["weight_decay"] for g in groups) == [0.0, 0.1]  # the Trainer's layout
    layers = ctl.controller.layers
    layer_of = {n: n.rsplit(".", 1)[0] for n in names.values() if n.rsplit(".", 1)[0] in layers}
    expected = _expected(ww.monitor.run_dir, layers, alphadecay_factors)
    assert sorted(expected) == [4, 8]
    _check_updates(cap, expected, layer_of)


# ------------------------------------------------------------------ the example
def test_example_tempbalance_lightning(tmp_path, monkeypatch, capsys):
    """The user example, in this process (Lightning is imported already): records in the store, printed."""
    import runpy
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "tempbalance_lightning.py"
    monkeypatch.setattr(sys, "argv", [str(example), "--epochs", "2", "--out", "ex", "--sync"])
    runpy.run_path(str(example), run_name="__main__")
    out = capsys.readouterr().out
    recs = wwmonitor.load_run(tmp_path / "ex" / "runs" / "tempbalance-mlp").control_records()
    assert {r.layer for r in recs} == {"net.0", "net.2", "net.4", "net.6"} and {r.step for r in recs} == {57}
    assert f"{len(recs)} assignments recorded" in out
    tuned = [r for r in recs if r.factor != 1.0]
    assert sorted(r.layer for r in tuned) == ["net.2", "net.4"]  # the first and last layer keep the base
    assert sorted(round(r.factor, 9) for r in tuned) == [0.5, 1.5]  # the linear map's ends
    for r in recs:
        assert f"{r.layer:8s} " in out and r.value == pytest.approx(r.base * r.factor, rel=1e-12)
