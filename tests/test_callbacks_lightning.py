"""Lightning callbacks end to end: real Trainer.fit with TensorBoard, W&B (offline) and CSV loggers.

Both the ``lightning`` and the ``pytorch_lightning`` packages are exercised
(their classes are distinct).  Tiny MLP on sklearn digits, 3 epochs of 16 steps.
"""

from __future__ import annotations

import glob
import os
import time

import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

import wwmonitor  # noqa: E402

from _wwcb_helpers import make_module, tb_accumulator, wandb_history  # noqa: E402

pytestmark = pytest.mark.slow

STEPS = [16, 32, 48]  # 512 samples / batch 32 = 16 steps per epoch


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.chdir(tmp_path)


def _pkg(name):
    if name == "lightning":
        import lightning.pytorch as pl
        from lightning.pytorch import loggers

        from wwmonitor.callbacks.lightning import WeightWatcherCallback
    else:
        pl = pytest.importorskip("pytorch_lightning")
        from pytorch_lightning import loggers

        from wwmonitor.callbacks.pytorch_lightning import WeightWatcherCallback
    return pl, loggers, WeightWatcherCallback


def _trainer(pl, tmp_path, **kw):
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=5,
        default_root_dir=str(tmp_path),
        **kw,
    )


@pytest.mark.parametrize("pkg", ["lightning", "pytorch_lightning"])
def test_fit_with_tensorboard_wandb_csv(pkg, tmp_path):
    import wandb

    pl, loggers, Callback = _pkg(pkg)
    cb = Callback(every_n_epochs=1, root=str(tmp_path / "runs"), run_name="fit", alerts="default", esd_every_n_epochs=1)
    tb = loggers.TensorBoardLogger(str(tmp_path / "tb"), name="tb")
    wb = loggers.WandbLogger(project="wwmonitor-test", save_dir=str(tmp_path), offline=True)
    csv = loggers.CSVLogger(str(tmp_path / "csv"), name="csv")
    trainer = _trainer(pl, tmp_path, max_epochs=3, logger=[tb, wb, csv], callbacks=[cb])
    trainer.fit(make_module(pkg))
    wandb.finish()
    assert trainer.global_step == 48

    # --- TensorBoard, read back with the tensorboard package
    ea = tb_accumulator(tb.log_dir)
    tags = ea.Tags()
    for layer in ("fc1", "fc2"):
        for metric in ("alpha", "stable_rank", "mp_softrank", "log_norm"):
            assert [e.step for e in ea.Scalars(f"ww.{metric}/{layer}")] == STEPS
    assert [e.step for e in ea.Scalars("ww/mean_alpha")] == STEPS
    assert "ww.alpha/out" not in tags["scalars"]  # 10 eigenvalues < min_evals: no alpha, never a sentinel
    assert [e.step for e in ea.Scalars("ww.log_norm/out")] == STEPS
    assert {"ww.esd/fc1", "ww.esd/fc2", "ww.esd/out"} <= set(tags["images"])
    imgs = ea.Images("ww.esd/fc1")
    assert [i.step for i in imgs] == STEPS and imgs[0].encoded_image_string[:4] == b"\x89PNG"
    texts = ea.Tensors("ww/phases/text_summary")
    assert [t.step for t in texts] == STEPS
    assert b"| fc1 |" in texts[-1].tensor_proto.string_val[0]
    assert "train_loss" in tags["scalars"]  # the user's own logging shares the writer

    # --- W&B offline run folder
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert len(runs) == 1
    images = glob.glob(os.path.join(runs[0], "files", "media", "images", "ww.esd", "*.png"))
    assert len(images) == 9  # 3 layers x 3 epochs
    tables = glob.glob(os.path.join(runs[0], "files", "media", "table", "ww", "layers_*.table.json"))
    assert len(tables) == 3
    # wandb-core writes the offline .wandb file in its own process; on a loaded machine the last records
    # can land a moment after finish() returned: poll (a deadline, not a timing goal)
    deadline = time.monotonic() + 60
    while True:
        rows, _ = wandb_history(runs[0])
        ww_rows = [r for r in rows if "ww.alpha/fc1" in r]
        if [int(r["ww/step"]) for r in ww_rows] == STEPS or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert [int(r["ww/step"]) for r in ww_rows] == STEPS
    assert all("ww.esd/fc1/path" in r and "ww/layers/path" in r for r in ww_rows)
    assert any("train_loss" in r for r in rows)

    # --- CSV next to the CSVLogger's metrics.csv
    df = pd.read_csv(os.path.join(csv.log_dir, "wwmonitor_metrics.csv"))
    assert sorted(df.step.unique()) == STEPS
    assert set(df.layer) == {"fc1", "fc2", "out", "__model__"}
    assert not df.duplicated(["step", "layer", "metric"]).any()

    # --- embedded run store
    run = wwmonitor.load_run(cb.monitor.run_dir)
    m = run.metrics
    assert sorted(m.step.unique()) == STEPS
    assert sorted(m.epoch.unique()) == [0, 1, 2]
    assert {"fc1", "fc2", "out"} <= set(m.layer)
    assert not m.duplicated(["step", "layer", "metric"]).any()
    tb_alpha = [e.value for e in ea.Scalars("ww.alpha/fc1")]
    store_alpha = m[(m.layer == "fc1") & (m.metric == "alpha")].sort_values("step").value.tolist()
    assert store_alpha == pytest.approx(tb_alpha, rel=1e-6)
    assert len(run.esd("fc1", 48)) == 64


def test_no_logger_and_step_snapshots(tmp_path):
    pl, _, Callback = _pkg("lightning")
    cb = Callback(every_n_epochs=None, every_n_steps=10, root=str(tmp_path / "runs"), run_name="steps")
    trainer = _trainer(pl, tmp_path, max_epochs=2, logger=False, callbacks=[cb])
    trainer.fit(make_module("lightning"))
    run = wwmonitor.load_run(cb.monitor.run_dir)
    assert sorted(run.metrics.step.unique()) == [10, 20, 30]
    assert cb.sinks == []


def test_resume_from_mid_run_checkpoint_continues_the_run(tmp_path):
    pl, loggers, Callback = _pkg("lightning")
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt_dir = tmp_path / "ckpt"
    kw = dict(every_n_epochs=1, root=str(tmp_path / "runs"), alerts="default")
    mc = ModelCheckpoint(dirpath=str(ckpt_dir), save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    cb1 = Callback(**kw)
    t1 = _trainer(pl, tmp_path, max_epochs=3, logger=False, callbacks=[cb1, mc], enable_checkpointing=True)
    t1.fit(make_module("lightning"))
    run_id = cb1.monitor.run_id
    ckpt = torch.load(ckpt_dir / "epoch=1.ckpt", weights_only=False)
    assert cb1.state_key in ckpt["callbacks"]
    assert ckpt["callbacks"][cb1.state_key]["monitor"]["run_id"] == run_id

    # a new process would build a new callback; resume from the mid-run checkpoint (after epoch 1)
    cb2 = Callback(**kw)
    t2 = _trainer(pl, tmp_path, max_epochs=4, logger=False, callbacks=[cb2], enable_checkpointing=False)
    t2.fit(make_module("lightning"), ckpt_path=str(ckpt_dir / "epoch=1.ckpt"))
    assert cb2.monitor.run_id == run_id
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run_id]  # no second run folder
    m = wwmonitor.load_run(cb2.monitor.run_dir).metrics
    assert sorted(m.step.unique()) == [16, 32, 48, 64]
    assert not m.duplicated(["step", "layer", "metric"]).any()


def test_fresh_fit_with_the_same_run_name_starts_a_new_run(tmp_path):
    from _logcheck import logs

    pl, loggers, Callback = _pkg("lightning")
    kw = dict(every_n_epochs=1, root=str(tmp_path / "runs"), run_name="exp", alerts=None)
    cb1 = Callback(**kw)
    _trainer(pl, tmp_path, max_epochs=1, logger=False, callbacks=[cb1]).fit(make_module("lightning"))
    cb2 = Callback(**kw)
    with logs(r"run 'exp' already exists.*starting a new run 'exp-2'"):
        _trainer(pl, tmp_path, max_epochs=2, logger=False, callbacks=[cb2]).fit(make_module("lightning"))
    assert (cb1.monitor.run_id, cb2.monitor.run_id) == ("exp", "exp-2")
    assert wwmonitor.load_run(cb1.monitor.run_dir).steps == [16]  # the first run is untouched
    assert wwmonitor.load_run(cb2.monitor.run_dir).steps == [16, 32]  # the second stored everything
    cb3 = Callback(**kw, resume=True)  # asked: continue "exp"
    _trainer(pl, tmp_path, max_epochs=3, logger=False, callbacks=[cb3]).fit(make_module("lightning"))
    assert cb3.monitor.run_id == "exp" and wwmonitor.load_run(cb3.monitor.run_dir).steps == [16, 32, 48]


def test_two_instances_need_distinct_state_keys():
    _, _, Callback = _pkg("lightning")
    a, b = Callback(every_n_epochs=1), Callback(every_n_epochs=2)
    assert a.state_key != b.state_key
    assert Callback(state_key="mine").state_key == "mine"
    with pytest.raises(ValueError, match="every_n_epochs"):
        Callback(every_n_epochs=0)
    with pytest.raises(ValueError, match="never snapshot"):
        Callback(every_n_epochs=None)
    with pytest.raises(ValueError, match="stop_on"):
        Callback(stop_on=["bogus"])


def test_fsdp_is_refused_with_a_clear_message(tmp_path):
    pl, _, Callback = _pkg("lightning")
    from lightning.pytorch.strategies import FSDPStrategy

    from wwmonitor.distributed import UnsupportedStrategyError

    fsdp = FSDPStrategy.__new__(FSDPStrategy)  # only its type is inspected; nothing is launched

    class _T:
        strategy = fsdp

    with pytest.raises(UnsupportedStrategyError, match="FSDP"):
        Callback().setup(_T(), None, "fit")


def test_over_regularized_run_fires_rank_collapse_and_stops(tmp_path):
    """Heavy weight decay on fc1 + inputs in an 8-dim subspace: fc1's other 56 directions get no
    gradient and decay by (1 - lr*wd) = 0.8 per step, so fc1 collapses towards rank 8 of 64."""
    pl, _, Callback = _pkg("lightning")
    cb = Callback(
        every_n_epochs=1,
        root=str(tmp_path / "runs"),
        run_name="overreg",
        alerts={"warn": False},
        stop_on=["rank_collapse"],
    )
    trainer = _trainer(pl, tmp_path, max_epochs=8, logger=False, callbacks=[cb])
    trainer.fit(make_module("lightning", lr=0.1, weight_decay=2.0, low_rank=8, decay_first_only=True))
    fired = [a for a in cb.monitor.alerts_fired if a.rule == "rank_collapse"]
    assert fired and fired[0].layer == "fc1" and fired[0].stop_training
    assert fired[0].epoch < 7  # before the final epoch
    assert cb.stopped_by_alert and trainer.current_epoch < 7
    alerts = wwmonitor.load_run(cb.monitor.run_dir).alerts
    assert "rank_collapse" in set(alerts.rule)


def test_healthy_run_fires_no_warning(tmp_path):
    pl, _, Callback = _pkg("lightning")
    cb = Callback(
        every_n_epochs=1,
        root=str(tmp_path / "runs"),
        run_name="healthy",
        alerts="default",
        stop_on=["rank_collapse"],
    )
    trainer = _trainer(pl, tmp_path, max_epochs=4, logger=False, callbacks=[cb])
    trainer.fit(make_module("lightning", lr=0.1, batch_size=8))  # same net and data, full-rank inputs, no decay
    alpha = wwmonitor.load_run(cb.monitor.run_dir).metrics.query("metric == 'alpha' and layer in ['fc1', 'fc2']")
    assert alpha.value.between(2, 6).all()  # it really is healthy (heavy-tailed, not over/under-trained)
    bad = [a for a in cb.monitor.alerts_fired if a.severity != "info"]
    assert bad == []
    assert not cb.stopped_by_alert and trainer.current_epoch == 4


def test_non_finite_weights_alert_and_stop(tmp_path):
    pl, _, Callback = _pkg("lightning")

    class PoisonFc2(pl.Callback):  # listed before the monitor: runs first at epoch end
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                with torch.no_grad():
                    pl_module.fc2.weight[0, 0] = float("nan")

    cb = Callback(
        every_n_epochs=1, root=str(tmp_path / "runs"), run_name="nan", alerts={"warn": False}, stop_on=["non_finite"]
    )
    trainer = _trainer(pl, tmp_path, max_epochs=8, logger=False, callbacks=[PoisonFc2(), cb])
    trainer.fit(make_module("lightning"))  # must not raise
    fired = [a for a in cb.monitor.alerts_fired if a.rule == "non_finite"]
    assert fired and fired[0].layer == "fc2" and fired[0].epoch == 1 and fired[0].severity == "error"
    assert cb.stopped_by_alert and trainer.current_epoch < 7
    m = wwmonitor.load_run(cb.monitor.run_dir).metrics
    assert 32 in set(m.step)  # the snapshot with NaN weights is stored (layer status), not dropped
