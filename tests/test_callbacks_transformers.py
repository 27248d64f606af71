"""Hugging Face Trainer callback end to end: real ``Trainer.train`` on the CPU.

A tiny BERT (``BertForSequenceClassification``, 2 layers, hidden 64) and a tiny
GPT-2 (``GPT2LMHeadModel``, 2 layers, n_embd 64) -- hidden 64 is the smallest
width whose matrices have the ``min_evals = 50`` eigenvalues a power-law fit
needs -- trained for a few dozen steps on random tokens, reporting to
TensorBoard and W&B (offline); a resume from a mid-run checkpoint; a stop on
an alert; 2-rank DDP with ``torchrun`` (gloo) in a subprocess; the example.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

import wwmonitor  # noqa: E402
from wwmonitor.sinks._render import image_tag, layer_tag, model_tag  # noqa: E402

from _logcheck import logs  # noqa: E402
from _wwcb_helpers import tb_accumulator, wandb_history  # noqa: E402

HERE = Path(__file__).parent
ROOT = HERE.parent
VOCAB, SEQ = 96, 16
QUERY0 = "bert.encoder.layer.0.attention.self.query"


# ------------------------------------------------------------------ models, data, arguments
def bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=SEQ,
            num_labels=2,
        )
    )


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=64, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    )


class Tokens(torch.utils.data.Dataset):
    """``n`` random token sequences; labels for classification (``lm=False``) or language modelling."""

    def __init__(self, n: int = 64, lm: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
        self.labels = self.ids.clone() if lm else (self.ids[:, 0] < VOCAB // 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def training_args(out, **kw):
    from transformers import TrainingArguments

    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=8,
        num_train_epochs=3,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=4,
        disable_tqdm=True,
        seed=0,
    )
    base.update(kw)
    return TrainingArguments(**base)


def train(model, args, callbacks, data=None, **train_kw):
    from transformers import Trainer

    trainer = Trainer(model=model, args=args, train_dataset=data if data is not None else Tokens(), callbacks=callbacks)
    trainer.train(**train_kw)
    return trainer


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_PROJECT", "wwmonitor-test")
    monkeypatch.chdir(tmp_path)
    import wandb

    # wandb keeps process-wide settings (its run directory among them) from the first wandb.init of the
    # process -- an earlier test's; start from a clean slate so this test's WANDB_DIR is the one used
    wandb.teardown()
    yield
    wandb.teardown()


def _callback():
    from wwmonitor.callbacks.transformers import WeightWatcherCallback

    return WeightWatcherCallback


def _integration(trainer, name):
    return next(c for c in trainer.callback_handler.callbacks if type(c).__name__ == name)


# ------------------------------------------------------------------ fast: options and refusals
def test_options_state_keys_and_refused_strategies(tmp_path):
    from wwmonitor.distributed import UnsupportedStrategyError

    Callback = _callback()
    a, b = Callback(every_n_epochs=1), Callback(every_n_epochs=None, every_n_steps=5)
    assert a.state_key != b.state_key and Callback(state_key="mine").state_key == "mine"
    with pytest.raises(ValueError, match="never snapshot"):
        Callback(every_n_epochs=None)
    with pytest.raises(ValueError, match="every_n_steps"):
        Callback(every_n_steps=0)
    with pytest.raises(ValueError, match="stop_on"):
        Callback(stop_on=["bogus"])
    state = types.SimpleNamespace(global_step=0, stateful_callbacks={})
    fsdp1 = r"FSDP1 \(FullyShardedDataParallel\) is not supported.*fully_shard \(FSDP2\).*'version': 2"
    for over, name in (
        ({"fsdp": "full_shard", "fsdp_config": {"version": 1}}, fsdp1),
        ({"deepspeed": "ds_config.json"}, r"DeepSpeed \(ZeRO\) is not supported.*FSDP2"),
    ):
        args = types.SimpleNamespace(**{"fsdp": None, "deepspeed": None, "output_dir": str(tmp_path), **over})
        with pytest.raises(UnsupportedStrategyError, match=name):
            a.on_train_begin(args, state, types.SimpleNamespace(), model=torch.nn.Linear(64, 64))
    assert not (tmp_path / "wwmonitor-runs").exists()  # refused before anything was written
    # FSDP2 (transformers' default fsdp_config version) is accepted: the Monitor's FSDP2 strategy monitors it
    from wwmonitor.callbacks._hf_support import check_strategy

    check_strategy(types.SimpleNamespace(fsdp="full_shard", fsdp_config={}, deepspeed=None))
    check_strategy(types.SimpleNamespace(fsdp="full_shard", fsdp_config={"version": 2}, deepspeed=None))


def test_mlflow_without_an_mlflow_sink_is_one_log_note(monkeypatch, tmp_path):
    from wwmonitor.callbacks import _hf_support

    monkeypatch.setitem(sys.modules, "wwmonitor.sinks.mlflow", None)  # the module is absent: ImportError
    cb = _callback()()
    args = types.SimpleNamespace(report_to=["mlflow"], output_dir=str(tmp_path), world_size=1)
    with logs(r"no MLflow sink", level=20):
        assert _hf_support.integration_sinks(args, "run", cb.settings.metrics, {}) == []


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_bert_reports_to_tensorboard_and_wandb(tmp_path):
    import wandb

    cb = _callback()(every_n_epochs=1, run_name="bert", alerts="default")  # run store: default place
    trainer = train(bert(), training_args(tmp_path / "out", report_to=["tensorboard", "wandb"]), [cb])
    wandb.finish()
    steps = [8, 16, 24]  # 64 samples / batch 8 = 8 optimizer steps per epoch
    assert trainer.state.global_step == 24
    assert cb.monitor.run_dir == tmp_path / "out" / "wwmonitor-runs" / "bert"
    assert [type(s).__name__ for s in cb.sinks] == ["TensorBoardSink", "WandbSink"]

    # --- TensorBoard: a run of its own, runs/wwmonitor-<run_id>, next to the Trainer's runs/<date_host>
    ea = tb_accumulator(str(tmp_path / "out" / "runs" / "wwmonitor-bert"))
    tags = ea.Tags()
    for layer in (QUERY0, "bert.encoder.layer.1.output.dense", "bert.embeddings.word_embeddings"):
        for metric in ("alpha", "stable_rank", "log_norm"):
            assert [e.step for e in ea.Scalars(layer_tag("ww", metric, layer))] == steps, (layer, metric)
    assert [e.step for e in ea.Scalars(model_tag("ww", "mean_alpha"))] == steps
    assert layer_tag("ww", "alpha", "classifier") not in tags["scalars"]  # 2 eigenvalues: no alpha, no sentinel
    assert [e.step for e in ea.Scalars(layer_tag("ww", "log_norm", "classifier"))] == steps
    assert [i.step for i in ea.Images(image_tag("ww", QUERY0))] == [8]  # esd_every_n_epochs=5: first snapshot
    own = tb_accumulator(_integration(trainer, "TensorBoardCallback").logging_dir)
    assert "train/loss" in own.Tags()["scalars"]  # the Trainer's own scalars, beside ours under runs/

    # --- W&B offline run: one row per snapshot keyed by the Trainer's step key
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert len(runs) == 1
    rows, _ = wandb_history(runs[0])
    ww_rows = [r for r in rows if layer_tag("ww", "alpha", QUERY0) in r]
    assert [int(r["ww/step"]) for r in ww_rows] == steps
    assert any("train/loss" in r for r in rows)

    # --- run store: every snapshot once, the same numbers as TensorBoard
    run = wwmonitor.load_run(cb.monitor.run_dir)
    m = run.metrics
    assert sorted(m.step.unique()) == steps and sorted(m.epoch.unique()) == [0, 1, 2]
    assert not m.duplicated(["step", "layer", "metric"]).any()
    store_alpha = m[(m.layer == QUERY0) & (m.metric == "alpha")].sort_values("step").value.tolist()
    assert store_alpha == pytest.approx([e.value for e in ea.Scalars(layer_tag("ww", "alpha", QUERY0))], rel=1e-6)
    assert run.config["batch_size"] == 8 and run.config["learning_rate"] == 1e-3


@pytest.mark.slow
def test_bert_reports_to_mlflow(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from wwmonitor.sinks.mlflow import mlflow_key

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)  # the Trainer's integration reads the env
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "wwmonitor-test")
    cb = _callback()(every_n_epochs=1, run_name="bert", alerts=None, esd_every_n_epochs=0)
    train(bert(), training_args(tmp_path / "out", num_train_epochs=2, report_to=["mlflow"]), [cb])
    assert [type(s).__name__ for s in cb.sinks] == ["MLflowSink"] and cb.monitor.stats["sink_errors"] == 0
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("wwmonitor-test").experiment_id])
    assert run.info.status == "FINISHED"  # the integration ended its run; the last snapshot still landed in it
    history = client.get_metric_history(run.info.run_id, mlflow_key(layer_tag("ww", "alpha", QUERY0)))
    assert sorted(m.step for m in history) == [8, 16]
    assert "loss" in run.data.metrics  # the Trainer's own metrics, in the same run


@pytest.mark.slow
def test_gpt2_every_n_optimizer_steps_with_gradient_accumulation(tmp_path):
    from wwmonitor.layers import extract_matrices

    cb = _callback()(
        every_n_epochs=None,
        every_n_steps=5,
        root=str(tmp_path / "runs"),
        run_name="gpt2",
        alerts=None,
        esd_every_n_epochs=0,
        policy="block",  # four snapshots three steps apart: every one analysed
    )
    # 64 samples / (batch 4 x accumulation 2) = 8 optimizer steps per epoch, 24 in all
    args = training_args(
        tmp_path / "out", per_device_train_batch_size=4, gradient_accumulation_steps=2, report_to=["tensorboard"]
    )
    trainer = train(gpt2(), args, [cb], data=Tokens(lm=True))
    assert trainer.state.global_step == 24
    steps = [5, 10, 15, 20]
    ea = tb_accumulator(str(tmp_path / "out" / "runs" / "wwmonitor-gpt2"))  # the callback's own TensorBoard run
    # GPT-2's Conv1D layers, the fused c_attn split into q, k, v
    for layer in (
        "transformer.wte",
        "transformer.h.0.attn.c_attn.q",
        "transformer.h.0.attn.c_attn.v",
        "transformer.h.1.attn.c_proj",
        "transformer.h.1.mlp.c_fc",
    ):
        assert [e.step for e in ea.Scalars(layer_tag("ww", "alpha", layer))] == steps, layer
    assert [e.step for e in ea.Scalars(layer_tag("ww", "stable_rank", "transformer.wpe"))] == steps
    run = wwmonitor.load_run(cb.monitor.run_dir)
    assert run.steps == steps
    assert set(run.metrics.layer) - {"__model__"} == {s.name for s in extract_matrices(gpt2())}
    assert run.config["batch_size"] == 8 and run.config["gradient_accumulation_steps"] == 2


@pytest.mark.slow
def test_resume_from_a_mid_run_checkpoint_continues_the_run(tmp_path):
    Callback = _callback()
    kw = dict(every_n_epochs=1, alerts="default", esd_every_n_epochs=0)  # no run_name: an automatic one
    out = tmp_path / "out"
    cb1 = Callback(**kw)
    train(bert(), training_args(out, save_strategy="epoch"), [cb1])
    run_id = cb1.monitor.run_id
    saved = json.loads((out / "checkpoint-16" / "trainer_state.json").read_text())["stateful_callbacks"]
    ww = saved["WeightWatcherCallback"]["wwmonitor"]
    assert ww["monitor"]["run_id"] == run_id and ww["last_step"] == 16 and ww["key"] == cb1.state_key

    # a new process builds a new callback; resume after epoch 2 of 3 and train to 4 epochs
    cb2 = Callback(**kw)
    t2 = train(
        bert(),
        training_args(out, num_train_epochs=4, save_strategy="epoch"),
        [cb2],
        resume_from_checkpoint=str(out / "checkpoint-16"),
    )
    assert t2.state.global_step == 32
    assert cb2.monitor.run_id == run_id and cb2.monitor.resumed
    assert [p.name for p in (out / "wwmonitor-runs").iterdir()] == [run_id]  # no second run folder
    m = wwmonitor.load_run(cb2.monitor.run_dir).metrics
    assert sorted(m.step.unique()) == [8, 16, 24, 32]
    assert not m.duplicated(["step", "layer", "metric"]).any()

    # with the Trainer's own callback restore on, the Trainer replaces the callback passed in by one built
    # from its JSON-able options (documented); that one continues the same run
    cb3 = Callback(**kw)
    t3 = train(
        bert(),
        training_args(out, num_train_epochs=5, restore_callback_states_from_checkpoint=True),
        [cb3],
        resume_from_checkpoint=str(out / "checkpoint-32"),
    )
    live = [c for c in t3.callback_handler.callbacks if type(c).__name__ == "WeightWatcherCallback"]
    assert len(live) == 1
    cb3 = live[0]
    assert cb3.settings.alerts == "default" and cb3.every_n_epochs == 1 and cb3.esd_every_n_epochs == 0
    assert cb3.monitor.run_id == run_id
    m = wwmonitor.load_run(cb3.monitor.run_dir).metrics
    assert sorted(m.step.unique()) == [8, 16, 24, 32, 40]
    assert not m.duplicated(["step", "layer", "metric"]).any()


@pytest.mark.slow
def test_fresh_train_with_a_used_run_name_starts_a_new_run(tmp_path):
    Callback = _callback()
    kw = dict(every_n_epochs=1, root=str(tmp_path / "runs"), run_name="exp", alerts=None, esd_every_n_epochs=0)
    cb1 = Callback(**kw)
    train(bert(), training_args(tmp_path / "out", num_train_epochs=1), [cb1])
    cb2 = Callback(**kw)
    with logs(r"run 'exp' already exists.*starting a new run 'exp-2'"):
        train(bert(), training_args(tmp_path / "out", num_train_epochs=2), [cb2])
    assert (cb1.monitor.run_id, cb2.monitor.run_id) == ("exp", "exp-2")
    assert wwmonitor.load_run(cb1.monitor.run_dir).steps == [8]
    assert wwmonitor.load_run(cb2.monitor.run_dir).steps == [8, 16]


@pytest.mark.slow
def test_non_finite_weights_fire_an_alert_that_stops_training(tmp_path):
    from transformers import TrainerCallback

    class PoisonClassifier(TrainerCallback):  # listed before the monitor: runs first at each step end
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == 6:
                with torch.no_grad():
                    model.classifier.weight[0, 0] = float("nan")

    cb = _callback()(
        every_n_epochs=1,
        every_n_steps=3,
        root=str(tmp_path / "runs"),
        run_name="nan",
        alerts="default",
        stop_on=["non_finite"],
        esd_every_n_epochs=0,
    )
    with logs(r"stopping training at step \d+ \(epoch [\d.]+\) on an alert \(non_finite: "):
        trainer = train(bert(), training_args(tmp_path / "out", num_train_epochs=10), [PoisonClassifier(), cb])
    fired = [a for a in cb.monitor.alerts_fired if a.rule == "non_finite"]
    assert fired and fired[0].layer == "classifier" and fired[0].step == 6 and fired[0].stop_training
    assert cb.stopped_by_alert and 6 <= trainer.state.global_step < 80
    assert 6 in wwmonitor.load_run(cb.monitor.run_dir).steps  # the snapshot with the NaN weights is stored


# ------------------------------------------------------------------ DDP: torchrun, 2 CPU ranks (gloo)
DDP_SCRIPT = textwrap.dedent(
    """
    import json, logging, os, sys
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from transformers import TrainerCallback
    from test_callbacks_transformers import Tokens, bert, train, training_args
    from wwmonitor.callbacks.transformers import WeightWatcherCallback

    seen = []  # wwmonitor's log output on this rank


    class _Catch(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())


    logging.getLogger("wwmonitor").addHandler(_Catch())
    logging.getLogger("wwmonitor").setLevel(logging.INFO)
    out = {out!r}


    class SaveWeights(TrainerCallback):  # rank 0 keeps each epoch's weights (before the monitor's snapshot)
        def on_epoch_end(self, args, state, control, model=None, **kw):
            if args.process_index == 0:
                torch.save(model.state_dict(), os.path.join(out, f"w{{state.global_step}}.pt"))


    cb = WeightWatcherCallback(every_n_epochs=1, root=os.path.join(out, "runs"), run_name="ddp",
                               esd_every_n_epochs=0,
                               # a threshold most layers exceed: alert output (log lines) on rank 0
                               alerts={{"rules": ["alpha_high"], "alpha_high": 2.5, "warmup": 0}})
    trainer = train(bert(), training_args(os.path.join(out, "hf"), report_to=["tensorboard"]), [SaveWeights(), cb])
    r = trainer.args.process_index
    info = {{"rank": r, "world": trainer.args.world_size, "shard": cb.shard_layers, "step": trainer.state.global_step,
            "has_store": cb.monitor.store is not None, "sinks": len(cb.sinks), "output": seen}}
    with open(os.path.join(out, f"rank{{r}}.json"), "w") as f:
        json.dump(info, f)
    """
)


@pytest.mark.slow
def test_ddp_two_ranks_equals_single_process_analysis(tmp_path):
    from wwmonitor.layers import extract_matrices

    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT.format(tests=str(HERE), out=str(tmp_path)))
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        str(script),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    names = [s.name for s in extract_matrices(bert())]
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in info] == [2, 2]
    assert info[0]["shard"] == names[0::2] and info[1]["shard"] == names[1::2]  # matrix i on rank i mod 2
    assert info[0]["has_store"] and not info[1]["has_store"]  # a Monitor on every rank; only rank 0 stores and logs
    assert info[0]["sinks"] == 1 and info[1]["sinks"] == 0
    steps = [4, 8, 12]  # 32 samples per rank / batch 8 = 4 steps per epoch
    assert info[0]["step"] == 12

    runs = list((tmp_path / "runs").iterdir())
    assert [p.name for p in runs] == ["ddp"]
    run = wwmonitor.load_run(runs[0])
    m = run.metrics
    assert run.steps == steps and run.config["world_size"] == 2
    assert not m.duplicated(["step", "layer", "metric"]).any()
    assert set(m[m.layer != "__model__"].layer) == set(names)

    # every metric of the gathered run == a single-process analysis of the same saved weights
    with wwmonitor.Monitor(
        None, tmp_path / "single", run_name="single", every_n_epochs=None, carry_unchanged=False
    ) as mon:
        for epoch, step in enumerate(steps):
            model = bert()
            model.load_state_dict(torch.load(tmp_path / f"w{step}.pt", weights_only=True))
            mon.snapshot(step=step, epoch=epoch, model=model)
    single = wwmonitor.load_run(tmp_path / "single" / "single").metrics
    for step in steps:
        a = m[m.step == step].set_index(["layer", "metric"]).value.sort_index()
        b = single[single.step == step].set_index(["layer", "metric"]).value.sort_index()
        assert a.index.equals(b.index), step
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-9, atol=1e-12, err_msg=f"step {step}")
    norms = m[(m.layer == QUERY0) & (m.metric == "log_norm")].sort_values("step").value.to_numpy()
    assert len(set(np.round(norms, 9))) == 3  # the steps really differ

    # TensorBoard written on rank 0 only, every step once
    ev = glob.glob(str(tmp_path / "hf" / "runs" / "wwmonitor-*" / "events.out.tfevents.*"))
    assert len({os.path.dirname(p) for p in ev}) == 1
    ea = tb_accumulator(os.path.dirname(ev[0]))
    assert [e.step for e in ea.Scalars(layer_tag("ww", "alpha", QUERY0))] == steps
    assert any("alpha_high" in msg for msg in info[0]["output"]), info[0]["output"]
    assert info[1]["output"] == []


# ------------------------------------------------------------------ the example
@pytest.mark.slow
def test_example_transformers_trainer(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "transformers_trainer.py"), "--epochs", "2", "--out", "ex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "tensorboard --logdir ex/runs" in r.stdout
    run = wwmonitor.load_run(tmp_path / "ex" / "wwmonitor-runs" / "tiny-bert")
    assert run.steps == [32, 64]
    assert len(glob.glob(str(tmp_path / "ex" / "runs" / "*" / "events.out.tfevents.*"))) == 2  # Trainer's + ours


@pytest.mark.slow
def test_example_lora_finetune_under_the_trainer_callback(tmp_path):
    """lora= and base_model= pass through the Trainer callback: the LoRA example's --trainer path."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    example = Path(__file__).parent.parent / "examples" / "lora_finetune.py"
    cmd = [sys.executable, str(example), "--out", "ex", "--epochs", "2", "--steps-per-epoch", "2", "--trainer"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    run = wwmonitor.load_run(tmp_path / "ex" / "runs" / "lora-gpt2")
    assert run.steps == [2, 4]  # 32 samples / batch 16: 2 optimizer steps per epoch
    m = run.metrics
    rel = m[(m.metric == "delta_rel_norm") & m.layer.str.endswith("h.0.attn.c_attn.q")]
    assert list(rel.step) == [2, 4] and (rel.value > 0).all()  # base_model: the weights before training
    st = run.layer_status
    upd = st[st.layer.str.endswith(".lora_update")]
    assert len(upd) and (upd.status == "too_few_evals").all()  # lora="effective+update": the rank-4 updates
