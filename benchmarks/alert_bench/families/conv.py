"""Convolutional family ``conv_bn``: a torch CNN with BatchNorm on generated shape images.

Images 16 x 16, one channel: a filled square, a ring, a cross, a horizontal or a vertical bar (5 classes) at a
random position and size, plus Gaussian noise (std 0.3).  CNN: Conv 1->16 3x3, BatchNorm, ReLU, MaxPool 2;
Conv 16->64 3x3, BatchNorm, ReLU, MaxPool 2; Flatten; Linear 1024 -> 64, ReLU; Linear 64 -> 5.  SGD with
momentum 0.9, batch 32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Family, TorchTask, noisy_labels


def shapes(n: int, seed: int, size: int = 16, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (``n, 1, size, size``, float32) of 5 shape classes and their labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    X = np.zeros((n, 1, size, size), np.float32)
    y = rng.integers(0, 5, n)
    for i in range(n):
        r = rng.integers(3, 6)
        cy, cx = rng.integers(r, size - r, 2)
        d = np.maximum(abs(yy - cy), abs(xx - cx))
        if y[i] == 0:
            img = d <= r
        elif y[i] == 1:
            img = np.abs(np.hypot(yy - cy, xx - cx) - r) < 0.8
        elif y[i] == 2:
            img = ((abs(yy - cy) <= 1) | (abs(xx - cx) <= 1)) & (d <= r)
        elif y[i] == 3:
            img = (abs(yy - cy) <= 1) & (abs(xx - cx) <= r)
        else:
            img = (abs(xx - cx) <= 1) & (abs(yy - cy) <= r)
        X[i, 0] = img
    X += rng.normal(0, noise, X.shape).astype(np.float32)
    return X, y.astype(np.int64)


def make(s: dict[str, Any], seed: int) -> TorchTask:
    import torch
    from torch import nn

    X, y = shapes(900, 600 + seed)
    x, yt = torch.from_numpy(X), torch.from_numpy(y)
    ytr = noisy_labels(yt[:600], s.get("label_noise", 0.0), 5, seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(1024, 64),
        nn.ReLU(),
        nn.Linear(64, 5),
    )
    opt = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=0.9, weight_decay=s.get("wd", 0.0))
    return TorchTask(
        model,
        opt,
        torch.nn.functional.cross_entropy,
        (x[:600], ytr, x[600:], yt[600:]),
        batch=32,
        seed=seed,
        tracked_params=["4.weight", "9.weight"],
    )


CONV_BN = Family(
    name="conv_bn",
    kind="conv + BatchNorm: CNN on generated shape images",
    epochs=10,
    settings={
        "ref": {"lr": 0.02},
        "label_noise": {"lr": 0.02, "label_noise": 0.4},
        "wd_strong": {"lr": 0.02, "wd": 0.5},
        "lr_huge": {"lr": 3.0},
    },
    reference="ref",
    make=make,
    intent={"ref": "healthy", "label_noise": "healthy", "wd_strong": "collapse", "lr_huge": "collapse"},
)
