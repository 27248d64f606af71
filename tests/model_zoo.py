"""Small deterministic torch models shared by tests and benchmarks.

``build(name, seed)`` returns the same weights in every process, so a model
can be rebuilt inside a weightwatcher subprocess instead of being pickled.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def mlp() -> nn.Module:
    """MLP 784-1024-1024-10 (the benchmark model)."""
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


def small_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(200, 300), nn.ReLU(), nn.Linear(300, 120), nn.ReLU(), nn.Linear(120, 60))


def cnn() -> nn.Module:
    """4 Conv2d 3x3 (64-128 channels) + Linear."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(128, 100),
    )


def transformer(d: int = 512, layers: int = 6, ff: int = 2048) -> nn.Module:
    """nn.TransformerEncoder (d=512, 6 layers, ff 2048)."""
    layer = nn.TransformerEncoderLayer(d, 8, ff, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def small_transformer() -> nn.Module:
    return transformer(d=128, layers=2, ff=256)


BUILDERS = {"mlp": mlp, "small_mlp": small_mlp, "cnn": cnn, "transformer": transformer, "small_transformer": small_transformer}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[name]().eval()
