"""Framework detection by type, without importing any framework.

One place for the checks every other module needs ("is this a torch tensor?",
"is this a Keras model?"), done on the object's class and module names so
that ``import wwmonitor`` never pulls in torch, keras, jax or tensorflow.
"""

from __future__ import annotations

from typing import Any

__all__ = ["is_torch_tensor", "is_torch_module", "is_keras_model"]


def is_torch_tensor(x: Any) -> bool:
    """``True`` for a ``torch.Tensor`` (or subclass, e.g. ``nn.Parameter``, ``DTensor``)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def is_torch_module(obj: Any) -> bool:
    """``True`` for a ``torch.nn.Module`` instance (any subclass)."""
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(obj).__mro__)


def is_keras_model(obj: Any) -> bool:
    """``True`` for a Keras 3 ``Layer``/``Model`` instance (any subclass)."""
    return any(c.__module__.startswith("keras") and c.__name__ in ("Layer", "Model") for c in type(obj).__mro__)
