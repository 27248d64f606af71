"""The bench's training families (see :mod:`..split` for which are tuned on and which are held out)."""

from __future__ import annotations

from .attn import ATTN_MODADD
from .base import Family
from .conv import CONV_BN
from .keras_cnn import KERAS_CNN
from .minilm import MINILM_FT
from .mlp import MLP_CLS, MLP_REG
from .rnn import GRU_SEQ, LSTM_SEQ

FAMILIES: dict[str, Family] = {
    f.name: f for f in (MLP_CLS, MLP_REG, ATTN_MODADD, GRU_SEQ, LSTM_SEQ, CONV_BN, MINILM_FT, KERAS_CNN)
}
