"""Recurrent families: a GRU (``gru_seq``) and an LSTM (``lstm_seq``) classifier on synthetic sequences.

``gru_seq``: sequences of 20 steps x 8 channels of Gaussian noise; one of 4 fixed random motifs (3 steps x 8)
is added at a random position; the class is the motif.  GRU (hidden 64) -> last state -> Linear 64 -> 4.

``lstm_seq``: sequences of 24 steps x 6 channels, each channel a noisy random walk with its own drift; the class
is the channel with the largest total drift (6 classes).  LSTM (hidden 64) -> last state -> Linear 64 -> 6.
"""

from __future__ import annotations

from typing import Any

from .base import Family, TorchTask, noisy_labels


class _RNNClassifier:
    @staticmethod
    def build(cell: str, n_in: int, hidden: int, n_out: int) -> Any:
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(n_in, hidden, batch_first=True)
                self.head = nn.Linear(hidden, n_out)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.head(self.rnn(x)[0][:, -1])

        return Net()


def _optim(model: Any, s: dict[str, Any]) -> Any:
    import torch

    return torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s.get("wd", 0.0))


def _motif_data(seed: int, n: int) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(400 + seed)
    motifs = torch.randn(4, 3, 8, generator=g) * 1.5
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 20, 8, generator=g)
    pos = torch.randint(0, 18, (n,), generator=g)
    for i in range(n):
        x[i, pos[i] : pos[i] + 3] += motifs[y[i]]
    return x, y


def make_gru(s: dict[str, Any], seed: int) -> TorchTask:
    import torch

    x, y = _motif_data(seed, 900)
    ytr = noisy_labels(y[:600], s.get("label_noise", 0.0), 4, seed)
    model = _RNNClassifier.build("gru", 8, 64, 4)
    return TorchTask(
        model,
        _optim(model, s),
        torch.nn.functional.cross_entropy,
        (x[:600], ytr, x[600:], y[600:]),
        batch=50,
        seed=seed,
        tracked_params=["rnn.weight_ih_l0", "rnn.weight_hh_l0"],
    )


GRU_SEQ = Family(
    name="gru_seq",
    kind="recurrent: GRU classifier, motif detection in noisy sequences",
    epochs=12,
    settings={
        "ref": {"lr": 3e-3},
        "label_noise": {"lr": 3e-3, "label_noise": 0.3},
        "wd_strong": {"lr": 3e-3, "wd": 100.0},
        "lr_huge": {"lr": 0.3},
    },
    reference="ref",
    make=make_gru,
    intent={"ref": "healthy", "label_noise": "healthy", "wd_strong": "collapse", "lr_huge": "collapse"},
)


def _drift_data(seed: int, n: int) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(500 + seed)
    drift = torch.randn(n, 1, 6, generator=g) * 0.3
    x = torch.cumsum(drift + torch.randn(n, 24, 6, generator=g), dim=1) / 4.0
    y = drift[:, 0].argmax(1)
    return x, y


def make_lstm(s: dict[str, Any], seed: int) -> TorchTask:
    import torch

    x, y = _drift_data(seed, 900)
    model = _RNNClassifier.build("lstm", 6, 64, 6)
    return TorchTask(
        model,
        _optim(model, s),
        torch.nn.functional.cross_entropy,
        (x[:600], y[:600], x[600:], y[600:]),
        batch=50,
        seed=seed,
        tracked_params=["rnn.weight_ih_l0", "rnn.weight_hh_l0"],
    )


LSTM_SEQ = Family(
    name="lstm_seq",
    kind="recurrent: LSTM classifier, which channel drifts most",
    epochs=12,
    settings={
        "ref": {"lr": 3e-3},
        "lr_small": {"lr": 3e-4},
        "wd_strong": {"lr": 3e-3, "wd": 100.0},
        "lr_huge": {"lr": 0.3},
    },
    reference="ref",
    make=make_lstm,
    intent={"ref": "healthy", "lr_small": "healthy", "wd_strong": "collapse", "lr_huge": "collapse"},
)
