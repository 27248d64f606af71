"""MLP families: classification (``mlp_cls``) and regression (``mlp_reg``) on scikit-learn generators."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Family, TorchTask, noisy_labels


def _split(X: np.ndarray, y: np.ndarray, n_train: int) -> tuple[Any, Any, Any, Any]:
    import torch

    X = ((X - X[:n_train].mean(0)) / X[:n_train].std(0)).astype(np.float32)
    return (
        torch.from_numpy(X[:n_train]),
        torch.from_numpy(y[:n_train]),
        torch.from_numpy(X[n_train:]),
        torch.from_numpy(y[n_train:]),
    )


def _optim(model: Any, s: dict[str, Any]) -> Any:
    import torch

    if s["opt"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=0.9, weight_decay=s.get("wd", 0.0))
    return torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s.get("wd", 0.0))


# ----------------------------------------------------------------------------------------- classification
def make_cls(s: dict[str, Any], seed: int) -> TorchTask:
    """6 classes of ``make_classification`` (40 features, 12 informative), 800 train / 400 validation;
    MLP 40-256-256-6 (ReLU), cross-entropy, batch 32."""
    import torch
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=1200,
        n_features=40,
        n_informative=12,
        n_redundant=8,
        n_classes=6,
        n_clusters_per_class=2,
        class_sep=1.2,
        random_state=100 + seed,
    )
    xtr, ytr, xva, yva = _split(X, y.astype(np.int64), 800)
    ytr = noisy_labels(ytr, s.get("label_noise", 0.0), 6, seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(40, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 6)
    )
    return TorchTask(
        model,
        _optim(model, s),
        torch.nn.functional.cross_entropy,
        (xtr, ytr, xva, yva),
        batch=32,
        seed=seed,
        tracked_params=["0.weight", "2.weight"],
    )


MLP_CLS = Family(
    name="mlp_cls",
    kind="MLP classification (make_classification, 6 classes)",
    epochs=12,
    settings={
        "ref": {"opt": "sgd", "lr": 0.02},
        "label_noise": {"opt": "sgd", "lr": 0.02, "label_noise": 0.4},
        "wd_1e-3": {"opt": "sgd", "lr": 0.02, "wd": 1e-3},
        "wd_strong": {"opt": "sgd", "lr": 0.02, "wd": 0.3},
        "lr_huge": {"opt": "sgd", "lr": 1.5},
    },
    reference="ref",
    make=make_cls,
    intent={
        "ref": "healthy",
        "label_noise": "healthy",
        "wd_1e-3": "healthy",
        "wd_strong": "collapse",
        "lr_huge": "collapse",
    },
)


# ----------------------------------------------------------------------------------------- regression
def make_reg(s: dict[str, Any], seed: int) -> TorchTask:
    """``make_friedman1`` (30 features, 5 of them used, noise 0.5) with the target standardised, 700 train /
    300 validation; MLP 30-128-128-1 (tanh), mean squared error, batch 32."""
    import torch
    from sklearn.datasets import make_friedman1

    X, y = make_friedman1(n_samples=1000, n_features=30, noise=s.get("noise", 0.5), random_state=200 + seed)
    y = ((y - y[:700].mean()) / y[:700].std()).astype(np.float32)[:, None]
    xtr, ytr, xva, yva = _split(X, y, 700)
    model = torch.nn.Sequential(
        torch.nn.Linear(30, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128), torch.nn.Tanh(), torch.nn.Linear(128, 1)
    )
    return TorchTask(
        model,
        _optim(model, s),
        torch.nn.functional.mse_loss,
        (xtr, ytr, xva, yva),
        batch=32,
        seed=seed,
        tracked_params=["0.weight", "2.weight"],
    )


MLP_REG = Family(
    name="mlp_reg",
    kind="MLP regression (make_friedman1)",
    epochs=12,
    settings={
        "ref": {"opt": "adam", "lr": 3e-3},
        "noisy_target": {"opt": "adam", "lr": 3e-3, "noise": 3.0},
        "lr_small": {"opt": "adam", "lr": 2e-4},
        "wd_30": {"opt": "adam", "lr": 3e-3, "wd": 30.0},
        "wd_strong": {"opt": "adam", "lr": 3e-3, "wd": 150.0},
        "lr_huge": {"opt": "adam", "lr": 0.5},
    },
    reference="ref",
    make=make_reg,
    intent={
        "ref": "healthy",
        "noisy_target": "healthy",
        "lr_small": "healthy",
        "wd_30": "collapse",
        "wd_strong": "collapse",
        "lr_huge": "collapse",
    },
)
