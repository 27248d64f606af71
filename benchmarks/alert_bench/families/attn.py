"""Attention family ``attn_modadd``: a one-layer transformer on modular addition, grokking-style training.

Task: ``(a + b) mod P`` with ``P = 23``; the sequence is ``[a, b, =]`` and the answer is read at ``=``.  A fixed
random share of the ``P²`` pairs trains (full batch; 80%, 50% in ``grok_long``), the rest validates.  Model:
token and position embeddings (width 64), one pre-norm block of ``nn.MultiheadAttention`` (4 heads) and a
64-256-64 ReLU MLP, LayerNorm, unembedding 64 -> P.  AdamW (betas 0.9, 0.98), 25 full-batch steps per epoch
(50 in ``grok_long``, with half the pairs held out): the long weight-decayed training of grokking experiments
(memorise first, generalise later).
"""

from __future__ import annotations

from typing import Any

from .base import Family, TorchTask

P = 23
WIDTH = 64


def _model() -> Any:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(P + 1, WIDTH)
            self.pos = nn.Parameter(torch.randn(3, WIDTH) * 0.02)
            self.ln1 = nn.LayerNorm(WIDTH)
            self.attn = nn.MultiheadAttention(WIDTH, 4, batch_first=True)
            self.ln2 = nn.LayerNorm(WIDTH)
            self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.ReLU(), nn.Linear(4 * WIDTH, WIDTH))
            self.lnf = nn.LayerNorm(WIDTH)
            self.unembed = nn.Linear(WIDTH, P)

        def forward(self, x: Any) -> Any:
            h = self.tok(x) + self.pos
            a = self.ln1(h)
            h = h + self.attn(a, a, a, need_weights=False)[0]
            h = h + self.mlp(self.ln2(h))
            return self.unembed(self.lnf(h[:, -1]))

    return Block()


def make(s: dict[str, Any], seed: int) -> TorchTask:
    import torch

    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    x = torch.stack([a.ravel(), b.ravel(), torch.full((P * P,), P)], 1)
    y = (a.ravel() + b.ravel()) % P
    perm = torch.randperm(P * P, generator=torch.Generator().manual_seed(300 + seed))
    n = int(s.get("train_fraction", 0.8) * P * P)
    tr, va = perm[:n], perm[n:]
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s["wd"], betas=(0.9, 0.98))
    tracked = ["attn.in_proj_weight", "attn.out_proj.weight", "mlp.0.weight", "mlp.2.weight"]
    return TorchTask(
        model,
        opt,
        torch.nn.functional.cross_entropy,
        (x[tr], y[tr], x[va], y[va]),
        batch=n,
        seed=seed,
        tracked_params=tracked,
        steps_per_epoch=s.get("steps", 25),
    )


ATTN_MODADD = Family(
    name="attn_modadd",
    kind="attention: 1-layer transformer, modular addition, grokking-style long training",
    epochs=16,
    settings={
        "ref": {"lr": 3e-3, "wd": 1.0},
        "grok_long": {"lr": 3e-3, "wd": 1.0, "train_fraction": 0.5, "steps": 50},
        "no_wd": {"lr": 3e-3, "wd": 0.0},
        "wd_strong": {"lr": 3e-3, "wd": 30.0},
        "lr_huge": {"lr": 0.2, "wd": 1.0},
    },
    reference="ref",
    make=make,
    intent={
        "ref": "healthy",
        "grok_long": "healthy",
        "no_wd": "healthy",
        "wd_strong": "collapse",
        "lr_huge": "collapse",
    },
)
