"""The family split of the alert bench, fixed before the first tuning run (issue 16).

Alert rules may be tuned on the ``TUNE`` families only; the budget is reported on the ``HELDOUT`` families,
which nobody tuned on.  Each half holds an attention model, a recurrent model, a convolutional model with
normalisation layers and an MLP, so that a rule tuned on one half meets every kind of layer it was tuned on,
in a model and a task it has not seen.

Do not move a family between the halves after tuning started: that would make the held-out figures tuned.
"""

from __future__ import annotations

#: families the alert rules may be tuned on
TUNE: tuple[str, ...] = (
    "mlp_cls",  # MLP classification (make_classification), with a label-noise setting
    "attn_modadd",  # one-layer transformer on modular addition, grokking-style long full-batch training
    "gru_seq",  # GRU classifier on synthetic sequences
    "conv_bn",  # torch CNN with BatchNorm on generated shape images
)

#: families held out: never used for tuning, the budget is measured on them
HELDOUT: tuple[str, ...] = (
    "mlp_reg",  # MLP regression (make_friedman1 features)
    "lstm_seq",  # LSTM classifier on synthetic sequences (another task than gru_seq)
    "minilm_ft",  # full fine-tune of the first layers of the pretrained all-MiniLM-L6-v2
    "keras_cnn",  # Keras 3 (torch backend) CNN with BatchNormalization on generated textures
)

SPLITS: dict[str, tuple[str, ...]] = {"tune": TUNE, "heldout": HELDOUT, "all": TUNE + HELDOUT}

assert not set(TUNE) & set(HELDOUT)
