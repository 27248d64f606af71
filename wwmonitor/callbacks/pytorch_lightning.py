"""Lightning callback for the ``pytorch_lightning`` package (``import pytorch_lightning as pl``).

Example::

    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger
    from wwmonitor.callbacks.pytorch_lightning import WeightWatcherCallback

    trainer = pl.Trainer(max_epochs=3, logger=TensorBoardLogger("logs"),
                         callbacks=[WeightWatcherCallback(every_n_epochs=1)])

The same implementation as :mod:`wwmonitor.callbacks.lightning`, bound to
``pytorch_lightning.Callback`` (a ``lightning`` callback is rejected by a
``pytorch_lightning.Trainer`` and vice versa).
"""

from __future__ import annotations

from pytorch_lightning.callbacks import Callback

from ._lightning_common import WeightWatcherMixin
from ._lightning_control import WWControlMixin

__all__ = ["WeightWatcherCallback", "WWControlCallback"]


class WeightWatcherCallback(WeightWatcherMixin, Callback):
    __doc__ = WeightWatcherMixin.__doc__


class WWControlCallback(WWControlMixin, Callback):
    __doc__ = WWControlMixin.__doc__
