"""Training-framework callbacks.

Import the one for your framework (each imports only its framework)::

    from wwmonitor.callbacks.lightning import WeightWatcherCallback          # lightning
    from wwmonitor.callbacks.pytorch_lightning import WeightWatcherCallback  # pytorch_lightning
    from wwmonitor.callbacks.keras import WeightWatcherCallback              # Keras 3
    from wwmonitor.callbacks.transformers import WeightWatcherCallback       # Hugging Face Trainer

Plain PyTorch needs no callback: use :class:`wwmonitor.Monitor` directly.
"""

__all__: list[str] = []
