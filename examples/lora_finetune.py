"""LoRA fine-tuning with peft: monitor the effective weights, the rank-r updates and the distance travelled.

    python examples/lora_finetune.py [--out wwmonitor-examples/lora] [--epochs 3] [--tensorboard] [--trainer]

A tiny GPT-2 (2 layers, n_embd 64, built from a config: nothing is
downloaded) gets peft LoRA adapters (r = 4) on its attention and MLP
projections and is fine-tuned for a few seconds on the CPU on a synthetic
task (continue a sequence counting up modulo the vocabulary).  The plain
``wwmonitor.Monitor``

* analyses the *effective* weight of every adapted layer, ``W0 + scaling·B·A``
  -- what the model computes with -- under the layer's own name
  (``...attn.c_attn.q``), recomputed at every snapshot;
* with ``lora="effective+update"`` also the update ``scaling·B·A`` itself
  (``<layer>.lora_update``): a rank-4 matrix, so 4 non-zero eigenvalues and no
  power-law alpha (``status == "too_few_evals"``);
* with ``base_model="first"`` logs how far each matrix moved from the first
  snapshot: ``delta_rel_norm = ‖W − W_ref‖_F / ‖W_ref‖_F`` and the spectrum of
  ``W − W_ref`` (``delta_alpha``, ``delta_stable_rank``, ...).

With ``--trainer`` the same fine-tune runs under the Hugging Face ``Trainer``
with :class:`wwmonitor.callbacks.transformers.WeightWatcherCallback` and the
same options (``lora="effective+update"``; ``base_model=`` a copy of the
model before training, so the first snapshot already shows the distance).

The run store is ``<out>/runs/lora-gpt2`` (``wwmonitor report`` it); with
``--tensorboard``, ``tensorboard --logdir <out>/tb`` shows
``ww.delta_rel_norm/<layer>`` next to ``ww.alpha/<layer>``.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import torch

VOCAB, SEQ = 96, 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="wwmonitor-examples/lora", help="output folder (run store, TensorBoard logs)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps-per-epoch", type=int, default=8)
    ap.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs to <out>/tb")
    ap.add_argument("--trainer", action="store_true", help="train with the Hugging Face Trainer and its callback")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", module="peft")  # "fan_in_fan_out is set to True" for Conv1D targets
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    import wwmonitor

    hf_logging.set_verbosity_error()
    base = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=SEQ, bos_token_id=0, eos_token_id=0)
    )
    lora = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True
    )  # GPT-2's Conv1D stores its weights in x out
    model = get_peft_model(base, lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)

    def batch(n: int = 16) -> torch.Tensor:  # sequences counting up modulo VOCAB from a random start
        return (torch.randint(0, VOCAB, (n, 1)) + torch.arange(SEQ)) % VOCAB

    if args.trainer:
        run_dir = train_with_trainer(model, batch, args)
        report(run_dir, args)
        return
    step = 0
    sinks = []
    if args.tensorboard:
        from wwmonitor.sinks.tensorboard import EventWriter, TensorBoardSink

        sinks.append(TensorBoardSink(EventWriter(f"{args.out}/tb"), close_writer=True))
    # every call snapshots (both intervals None); effective weights + rank-4 updates; deltas from step 0
    with wwmonitor.Monitor(
        model,
        root=f"{args.out}/runs",
        run_name="lora-gpt2",
        every_n_epochs=None,
        lora="effective+update",
        base_model="first",
        sinks=sinks,
        analysis_device="cpu",
        config={"r": 4, "lora_alpha": 8, "lr": 2e-3, "example": "lora_finetune"},
    ) as mon:
        mon.snapshot(step=0)  # the reference: the weights before fine-tuning
        for epoch in range(args.epochs):
            model.train()
            for _ in range(args.steps_per_epoch):
                ids = batch()
                loss = model(input_ids=ids, labels=ids).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
            mon.snapshot(step=step, epoch=epoch)  # returns at once; the effective weights are copied
            print(f"epoch {epoch}: loss {loss.item():.3f}")
        run_dir = mon.run_dir
    report(run_dir, args)


def train_with_trainer(model: torch.nn.Module, batch: Any, args: argparse.Namespace) -> Any:
    """The same fine-tune under ``transformers.Trainer``; the callback gets the same monitor options."""
    import copy

    from transformers import Trainer, TrainingArguments

    from wwmonitor.callbacks.transformers import WeightWatcherCallback

    ids = batch(16 * args.steps_per_epoch)
    data = [{"input_ids": row, "labels": row} for row in ids]
    cb = WeightWatcherCallback(
        every_n_epochs=1,
        root=f"{args.out}/runs",
        run_name="lora-gpt2",
        lora="effective+update",
        base_model=copy.deepcopy(model),  # the weights before fine-tuning
        loggers={"tensorboard": f"{args.out}/tb"} if args.tensorboard else False,
        analysis_device="cpu",
        config={"r": 4, "lora_alpha": 8, "lr": 2e-3, "example": "lora_finetune", "trainer": True},
    )
    targs = TrainingArguments(
        f"{args.out}/hf",
        num_train_epochs=args.epochs,
        per_device_train_batch_size=16,
        learning_rate=2e-3,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    Trainer(model=model, args=targs, train_dataset=data, callbacks=[cb]).train()
    return cb.monitor.run_dir


def report(run_dir: Any, args: argparse.Namespace) -> None:
    import wwmonitor

    run = wwmonitor.load_run(run_dir)
    last = run.to_pandas().query("step == @run.steps[-1]")
    short = last.assign(layer=last["layer"].str.replace("base_model.model.transformer.", "", regex=False))
    adapted = short[short["layer"].str.contains("attn.c_attn|mlp.c_fc", regex=True)]
    print(
        adapted[["layer", "alpha", "matrix_rank", "num_evals", "delta_rel_norm", "delta_stable_rank"]].to_string(
            index=False
        )
    )
    print(f"snapshots at steps {run.steps}")
    if args.tensorboard:
        print(f"TensorBoard: tensorboard --logdir {args.out}/tb")
    print(f"run store:   {run_dir}")


if __name__ == "__main__":
    main()
