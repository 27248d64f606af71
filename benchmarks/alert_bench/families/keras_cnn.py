"""Keras family ``keras_cnn``: a Keras 3 CNN with BatchNormalization (torch backend) on generated gratings.

Images 16 x 16 x 1: a sinusoidal grating of random frequency and phase at one of 4 orientations (0, 45, 90, 135
degrees) or a checkerboard (5 classes), times a random contrast, plus Gaussian noise (std 0.5).  Model:
Conv2D 16 3x3 same, BatchNormalization, ReLU, MaxPool 2; Conv2D 64 3x3 same, BatchNormalization, ReLU,
MaxPool 2; Flatten; Dense 64 ReLU; Dense 5.  ``model.fit`` one epoch at a time (SGD, momentum 0.9, batch 32);
the monitor is ``wwmonitor.Monitor`` on the Keras model, a snapshot after every epoch.

Keras fixes its backend at first import: this module sets ``KERAS_BACKEND=torch`` when Keras is not imported
yet, and refuses to run on another backend.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import numpy as np

from .base import Family


def gratings(n: int, seed: int, size: int = 16, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    y = rng.integers(0, 5, n)
    X = np.empty((n, size, size, 1), np.float32)
    for i in range(n):
        f = rng.uniform(0.5, 1.2)
        ph = rng.uniform(0, 2 * math.pi)
        if y[i] < 4:
            th = y[i] * math.pi / 4
            img = np.sin(f * (np.cos(th) * xx + np.sin(th) * yy) + ph)
        else:
            img = np.sign(np.sin(f * xx + ph) * np.sin(f * yy + ph))
        X[i, :, :, 0] = rng.uniform(0.5, 1.5) * img
    X += rng.normal(0, noise, X.shape).astype(np.float32)
    return X, y.astype(np.int64)


def _keras() -> Any:
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    import keras

    if keras.backend.backend() != "torch":
        raise RuntimeError(f"keras_cnn needs the torch backend; Keras was imported with {keras.backend.backend()!r}")
    return keras


class KerasTask:
    """One Keras model, trained one ``fit`` epoch at a time."""

    def __init__(self, s: dict[str, Any], seed: int) -> None:
        keras = _keras()
        keras.utils.set_random_seed(seed)
        X, y = gratings(900, 900 + seed)
        self.xtr, self.xva, self.yva = X[:600], X[600:], y[600:]
        self.ytr = y[:600].copy()
        noise = s.get("label_noise", 0.0)
        if noise > 0:
            rng = np.random.default_rng(2000 + seed)
            flip = rng.random(600) < noise
            self.ytr[flip] = rng.integers(0, 5, int(flip.sum()))
        reg = keras.regularizers.L2(s["l2"]) if s.get("l2") else None
        L = keras.layers
        self.model = keras.Sequential(
            [
                keras.Input((16, 16, 1)),
                L.Conv2D(16, 3, padding="same", kernel_regularizer=reg, name="conv1"),
                L.BatchNormalization(),
                L.ReLU(),
                L.MaxPooling2D(2),
                L.Conv2D(64, 3, padding="same", kernel_regularizer=reg, name="conv2"),
                L.BatchNormalization(),
                L.ReLU(),
                L.MaxPooling2D(2),
                L.Flatten(),
                L.Dense(64, activation="relu", kernel_regularizer=reg, name="fc"),
                L.Dense(5, name="head"),
            ]
        )
        self.model.compile(
            optimizer=keras.optimizers.SGD(s["lr"], momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        self.monitor_kwargs: dict[str, Any] = {}
        self.seed = seed
        self.epoch = 0

    def train_epoch(self) -> int:
        self.model.fit(self.xtr, self.ytr, epochs=1, batch_size=32, shuffle=True, verbose=0)
        self.epoch += 1
        return int(
            self.model.optimizer.iterations.numpy()
            if hasattr(self.model.optimizer.iterations, "numpy")
            else self.model.optimizer.iterations
        )

    def val_loss(self) -> float:
        logits = np.asarray(self.model.predict(self.xva, verbose=0, batch_size=300), dtype=np.float64)
        if not np.isfinite(logits).all():
            return float("nan")
        z = logits - logits.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(-logp[np.arange(len(self.yva)), self.yva].mean())

    def tracked(self) -> dict[str, np.ndarray]:
        out = {}
        for name in ("conv2", "fc"):
            k = np.asarray(self.model.get_layer(name).kernel.numpy(), dtype=np.float32)
            out[name] = np.moveaxis(k, -1, 0).copy()  # out channels first
        return out


def make(s: dict[str, Any], seed: int) -> KerasTask:
    return KerasTask(s, seed)


KERAS_CNN = Family(
    name="keras_cnn",
    kind="Keras 3 (torch backend) CNN + BatchNormalization on generated gratings",
    epochs=10,
    settings={
        "ref": {"lr": 0.02},
        "label_noise": {"lr": 0.02, "label_noise": 0.4},
        "l2_strong": {"lr": 0.02, "l2": 1.0},
        "lr_huge": {"lr": 3.0},
    },
    reference="ref",
    make=make,
    intent={"ref": "healthy", "label_noise": "healthy", "l2_strong": "collapse", "lr_huge": "collapse"},
)
