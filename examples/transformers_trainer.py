"""Hugging Face Trainer: one callback adds weight spectra to the Trainer's TensorBoard logs and a run store.

    python examples/transformers_trainer.py [--epochs 3] [--out wwmonitor-examples/transformers]

Fine-tunes a tiny BERT (2 layers, hidden 64, built from a config: nothing is
downloaded) on a synthetic task -- is the majority of a sequence's tokens
from the lower half of the vocabulary? -- for a few seconds on the CPU.
Then ``tensorboard --logdir <out>/runs`` shows the Trainer's ``train/loss``
next to ``ww.alpha/<layer>`` and friends, ESD images and phase labels, and
``wwmonitor report <out>/wwmonitor-runs/tiny-bert`` writes the HTML report.
"""

from __future__ import annotations

import argparse

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from wwmonitor.callbacks.transformers import WeightWatcherCallback

VOCAB, SEQ = 128, 16


class MajorityTokens(torch.utils.data.Dataset):
    """Random token sequences; label 1 when most tokens come from the lower half of the vocabulary."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        low = torch.rand(n, 1, generator=g) < 0.5
        p = torch.where(low, 0.7, 0.3).expand(n, SEQ)  # P(token from the lower half)
        lower = torch.bernoulli(p, generator=g).bool()
        half = torch.randint(0, VOCAB // 2, (n, SEQ), generator=g)
        self.ids = torch.where(lower, half, half + VOCAB // 2)
        self.labels = (lower.sum(1) * 2 > SEQ).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default="wwmonitor-examples/transformers", help="the Trainer's output_dir")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    model = BertForSequenceClassification(
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
    training = TrainingArguments(
        output_dir=args.out,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        report_to=["tensorboard"],
        logging_steps=8,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    # snapshot at every epoch end; the run store goes to <out>/wwmonitor-runs/tiny-bert
    ww = WeightWatcherCallback(every_n_epochs=1, run_name="tiny-bert", alerts="default")
    trainer = Trainer(model=model, args=training, train_dataset=MajorityTokens(512), callbacks=[ww])
    trainer.train()

    import wwmonitor

    run = wwmonitor.load_run(ww.monitor.run_dir)
    last = run.to_pandas().query("step == @run.steps[-1]")
    print(last[["layer", "alpha", "stable_rank", "num_spikes", "phase"]].to_string(index=False))
    print(f"snapshots at steps {run.steps}; final train loss {trainer.state.log_history[-1].get('train_loss'):.3f}")
    print(f"TensorBoard: tensorboard --logdir {args.out}/runs")
    print(f"report:      wwmonitor report {ww.monitor.run_dir}")


if __name__ == "__main__":
    main()
