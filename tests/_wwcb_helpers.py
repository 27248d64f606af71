"""Helpers shared by the callback / sink tests (real frameworks, tiny models)."""

from __future__ import annotations

import glob
import os
import struct
from typing import Any


def read_wandb_records(path: str) -> list[Any]:
    """Parse a wandb ``.wandb`` run file (LevelDB-style log of protobuf Records).

    Layout: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of
    chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first,
    3 middle, 4 last); a block tail shorter than 7 bytes is padding.
    """
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def wandb_history(run_dir: str) -> tuple[list[dict[str, str]], list[Any]]:
    """(history rows as {key: value_json}, alert records) of the offline run in ``run_dir``."""
    files = glob.glob(os.path.join(run_dir, "*.wandb"))
    assert len(files) == 1, files
    rows, alerts = [], []
    for rec in read_wandb_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            rows.append({(i.key or "/".join(i.nested_key)): i.value_json for i in rec.history.item})
        elif kind == "alert":
            alerts.append(rec.alert)
    return rows, alerts


def tb_accumulator(path: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(path, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def digits(n: int = 512, seed: int = 0, low_rank: int | None = None):
    """sklearn digits (ships with sklearn; no download), standardised, as float32 tensors.

    ``low_rank=k`` projects the inputs onto their top-k principal directions
    (the data then spans a k-dimensional subspace -- used to force rank collapse).
    """
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(X))[:n]
    X = (X[idx] - X.mean(0)) / (X.std(0) + 1e-6)
    if low_rank is not None:
        U, S, Vt = np.linalg.svd(X, full_matrices=False)
        X = (U[:, :low_rank] * S[:low_rank]) @ Vt[:low_rank]
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y[idx], dtype=torch.long)


def make_module(
    pkg: str,
    *,
    hidden: int = 128,
    lr: float = 0.05,
    weight_decay: float = 0.0,
    low_rank: int | None = None,
    n: int = 512,
    batch_size: int = 32,
    decay_first_only: bool = False,
):
    """A tiny MLP LightningModule on digits for package ``pkg`` ("lightning" or "pytorch_lightning").

    ``decay_first_only``: weight decay on ``fc1`` only (with ``low_rank`` inputs this over-regularises
    fc1: its directions outside the data subspace get no gradient and decay geometrically).
    """
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    if pkg == "lightning":
        import lightning.pytorch as pl
    else:
        import pytorch_lightning as pl

    X, y = digits(n, low_rank=low_rank)

    class TinyMLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.fc1 = nn.Linear(64, hidden)
            self.fc2 = nn.Linear(hidden, 64)
            self.out = nn.Linear(64, 10)

        def forward(self, x):
            return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

        def training_step(self, batch, _):
            xb, yb = batch
            loss = nn.functional.cross_entropy(self(xb), yb)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            if decay_first_only:
                rest = [p for n_, p in self.named_parameters() if not n_.startswith("fc1.")]
                groups = [
                    {"params": self.fc1.parameters(), "weight_decay": weight_decay},
                    {"params": rest, "weight_decay": 0.0},
                ]
                return torch.optim.SGD(groups, lr=lr)
            return torch.optim.SGD(self.parameters(), lr=lr, weight_decay=weight_decay)

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            return DataLoader(TensorDataset(X, y), batch_size=batch_size, shuffle=True, generator=g)

    return TinyMLP()
