"""Keras 3 (any backend; torch by default here): the same monitoring from ``model.fit``.

    KERAS_BACKEND=torch python examples/keras_callback.py [--epochs 4] [--out wwmonitor-examples]

The callback reads weights with ``keras.ops.convert_to_numpy`` and writes
TensorBoard events with the ``tensorboard`` package's writer, so no
TensorFlow is needed.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from wwmonitor.callbacks.keras import WeightWatcherCallback  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", default="wwmonitor-examples")
    args = ap.parse_args()
    keras.utils.set_random_seed(0)

    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean()) / X.std()).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(256, activation="relu", name="dense1"),
            keras.layers.Dense(128, activation="relu", name="dense2"),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    ww = WeightWatcherCallback(
        loggers={"tensorboard": f"{args.out}/tb/keras-mlp"},
        root=f"{args.out}/runs",
        run_name="keras-mlp",
        config={"batch_size": 16, "lr": 0.05, "backend": keras.backend.backend()},
    )
    model.fit(X, y, batch_size=16, epochs=args.epochs, callbacks=[ww], verbose=2)

    import wwmonitor

    run = wwmonitor.load_run(f"{args.out}/runs/keras-mlp")
    print(f"backend {keras.backend.backend()}: {len(run.steps)} snapshots")
    print(run.to_pandas().query("step == @run.steps[-1]")[["layer", "alpha", "stable_rank", "num_spikes", "phase"]])


if __name__ == "__main__":
    main()
