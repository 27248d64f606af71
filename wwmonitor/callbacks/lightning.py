"""Lightning callback for the ``lightning`` package (``import lightning.pytorch as L``).

Example::

    import lightning.pytorch as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.demos.boring_classes import BoringModel
    from wwmonitor.callbacks.lightning import WeightWatcherCallback

    trainer = L.Trainer(max_epochs=3, logger=TensorBoardLogger("logs"),
                        callbacks=[WeightWatcherCallback(every_n_epochs=1, alerts="default")])
    trainer.fit(BoringModel())

For the older ``pytorch_lightning`` package use
:mod:`wwmonitor.callbacks.pytorch_lightning` (the packages' classes are distinct).
All options: :class:`wwmonitor.callbacks._lightning_common.WeightWatcherMixin`.

Per-layer learning rates / weight decays from the spectra (TempBalance, AlphaDecay;
docs/controllers.md): add :class:`WWControlCallback` beside the monitor callback::

    from wwmonitor.callbacks.lightning import WeightWatcherCallback, WWControlCallback
    from wwmonitor.control import TempBalance

    trainer = L.Trainer(callbacks=[WeightWatcherCallback(every_n_epochs=1), WWControlCallback(TempBalance())])
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from ._lightning_common import WeightWatcherMixin
from ._lightning_control import WWControlMixin

__all__ = ["WeightWatcherCallback", "WWControlCallback"]


class WeightWatcherCallback(WeightWatcherMixin, Callback):
    __doc__ = WeightWatcherMixin.__doc__


class WWControlCallback(WWControlMixin, Callback):
    __doc__ = WWControlMixin.__doc__
