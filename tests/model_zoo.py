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
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 100),
    )


def transformer(d: int = 512, layers: int = 6, ff: int = 2048) -> nn.Module:
    """nn.TransformerEncoder (d=512, 6 layers, ff 2048)."""
    layer = nn.TransformerEncoderLayer(d, 8, ff, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def small_transformer() -> nn.Module:
    return transformer(d=128, layers=2, ff=256)


BUILDERS = {
    "mlp": mlp,
    "small_mlp": small_mlp,
    "cnn": cnn,
    "transformer": transformer,
    "small_transformer": small_transformer,
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[name]().eval()


# ---------------------------------------------------------------- transformers / Keras model zoo ----
# Tiny configurations (2 layers, hidden 16-64), random init, no downloads: the families whose layers
# wwmonitor must cover (tests/test_zoo.py).  transformers and keras are imported only when called.


def _hf_configs() -> dict:
    import transformers as T

    tok = dict(pad_token_id=0, bos_token_id=0, eos_token_id=0)
    dec = dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
    )
    return {
        "gpt2": (
            T.GPT2Config,
            T.GPT2LMHeadModel,
            dict(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0),
        ),
        "bert": (
            T.BertConfig,
            T.BertModel,
            dict(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=2,
                intermediate_size=64,
                vocab_size=100,
                max_position_embeddings=64,
            ),
        ),
        "llama": (T.LlamaConfig, T.LlamaForCausalLM, dec),
        "t5": (
            T.T5Config,
            T.T5ForConditionalGeneration,
            dict(num_layers=2, num_decoder_layers=2, d_model=32, d_kv=8, num_heads=4, d_ff=64, vocab_size=100),
        ),
        "vit": (
            T.ViTConfig,
            T.ViTModel,
            dict(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=2,
                intermediate_size=64,
                image_size=32,
                patch_size=8,
            ),
        ),
        "whisper": (
            T.WhisperConfig,
            T.WhisperForConditionalGeneration,
            dict(
                encoder_layers=2,
                decoder_layers=2,
                d_model=32,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
                vocab_size=100,
                num_mel_bins=16,
                max_source_positions=32,
                max_target_positions=32,
                decoder_start_token_id=0,
                **tok,
            ),
        ),
        "convnext": (
            T.ConvNextConfig,
            T.ConvNextModel,
            dict(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], image_size=32),
        ),
        "resnet": (T.ResNetConfig, T.ResNetModel, dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])),
        # fused projections (qkv_proj with grouped-query attention, gate_up_proj) and MoE expert banks
        "phi3": (T.Phi3Config, T.Phi3ForCausalLM, {**dec, **tok}),
        "mixtral": (T.MixtralConfig, T.MixtralForCausalLM, dict(dec, num_local_experts=4, num_experts_per_tok=2)),
    }


HF_MODELS = ("gpt2", "bert", "llama", "t5", "vit", "whisper", "convnext", "resnet", "phi3", "mixtral")


def hf_model(name: str, seed: int = 0) -> nn.Module:
    """A tiny randomly initialised transformers model (``HF_MODELS``), built from its config offline."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # tiny vocabularies make the configs warn about token ids
    config_cls, model_cls, kwargs = _hf_configs()[name]
    torch.manual_seed(seed)
    return model_cls(config_cls(**kwargs)).eval()


KERAS_MODELS = ("mobilenet_v2", "resnet50", "custom")


def keras_model(name: str):
    """A Keras 3 model (``KERAS_MODELS``), random init; import keras (with ``KERAS_BACKEND`` set) first.

    ``custom`` has what keras.applications lacks: a Dense subclass, DepthwiseConv2D, SeparableConv2D, a nested
    auto-named Sequential, an LSTM and multi-head attention (EinsumDense), all with Keras-generated names.
    """
    import keras
    from keras import layers as L

    if name == "mobilenet_v2":
        return keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10)
    if name == "resnet50":
        return keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10)
    if name != "custom":
        raise KeyError(name)
    inner = keras.Sequential([L.Dense(8), L.Dense(8, name="named")])
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3)(inp)
    x = L.DepthwiseConv2D(3)(x)
    x = L.SeparableConv2D(6, 3, depth_multiplier=2)(x)
    x = L.Flatten()(x)
    x = _zoo_dense()(8)(x)
    x = inner(x)
    x = L.Reshape((2, 4))(x)
    x = L.MultiHeadAttention(2, 4)(x, x)
    x = L.LSTM(5)(x)
    return keras.Model(inp, L.Dense(3)(x))


_ZOO_DENSE: list = []


def _zoo_dense():
    """``ZooDense``, a registered Dense subclass (recognised by isinstance, not by its type name); defined on
    first use because a Keras layer class needs keras imported, with its backend chosen."""
    if not _ZOO_DENSE:
        import keras

        @keras.saving.register_keras_serializable(package="wwmonitor_zoo")
        class ZooDense(keras.layers.Dense):
            pass

        _ZOO_DENSE.append(ZooDense)
    return _ZOO_DENSE[0]
