"""What every callback exposes the same way: :class:`SessionAttributes`.

A callback holds one :class:`~wwmonitor.callbacks._session.CallbackSession`
(``self.session``).  Its options are readable as attributes of the same
names (``cb.layers``, ``cb.root``, ``cb.flush_timeout`` ...; ``cb.settings`` is
the whole :class:`~wwmonitor.monitor.options.MonitorOptions`), and so are the
monitor, the logger sinks, the alert rules and whether an alert stopped
training.  Framework-free.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Iterable, Optional

from .._validate import check_interval
from ..monitor.options import DEPRECATED_NAMES, MonitorOptions
from ._session import CallbackSession

__all__ = ["SessionAttributes", "check_interval", "stop_reason", "pump_sinks", "legacy_keras_loggers"]

log = logging.getLogger("wwmonitor")

_OPTION_NAMES = frozenset(MonitorOptions.names())


class SessionAttributes:
    """Mixin: the session's options and state as attributes of the callback."""

    session: CallbackSession

    @property
    def settings(self) -> MonitorOptions:
        """Every monitor option of this callback."""
        return self.session.opts

    @property
    def monitor(self) -> Any:
        """This rank's :class:`wwmonitor.Monitor` of the last fit (closed after it; under DDP / FSDP2 only
        rank 0's writes)."""
        return self.session.monitor

    @property
    def sinks(self) -> list[Any]:
        """The logger sinks attached in the last fit (rank 0)."""
        return self.session.sinks

    @property
    def alert_rules(self) -> Any:
        """The alert rules (kept across fits; their state is saved in checkpoints)."""
        return self.session.alert_rules

    @property
    def stopped_by_alert(self) -> bool:
        """Whether an alert stopped the last fit."""
        return self.session.stopped_by_alert

    @property
    def shard_layers(self) -> list[str]:
        """Names of the matrices this rank analyses (all of them without DDP / FSDP2)."""
        from ._sharding import shard_layers

        return shard_layers(self.session.monitor)

    @property
    def every_n_epochs(self) -> Optional[int]:
        return self.session.opts.every_n_epochs

    @property
    def every_n_steps(self) -> Optional[int]:
        return self.session.opts.every_n_steps

    @property
    def run_dir(self) -> Any:
        """Deprecated: the folder that holds the runs is :attr:`root`; the run's own folder is
        ``cb.monitor.run_dir``."""
        warnings.warn(
            "callback.run_dir is deprecated: the folder of all runs is callback.root, the run's own folder "
            "callback.monitor.run_dir",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.session.opts.root

    def configure(self, **changes: Any) -> None:
        """Change options before the next fit (validated; ``root``, ``run_name`` ... -- a wrapper such as
        the Ray Tune callback sets the trial's folder this way)."""
        self.session.configure(**changes)

    def __getattr__(self, name: str) -> Any:  # the options, read-only: cb.layers, cb.root, cb.flush_timeout ...
        if name in _OPTION_NAMES and "session" in self.__dict__:
            return getattr(self.session.opts, name)
        if name in DEPRECATED_NAMES and "session" in self.__dict__:
            return getattr(self.session.opts, DEPRECATED_NAMES[name])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def stop_reason(alerts_fired: Iterable[Any]) -> str:
    """``" (rule: message)"`` of the first fired alert that stops training, or ``""``."""
    fired = [a for a in alerts_fired if a.stop_training]
    return f" ({fired[0].rule}: {fired[0].message})" if fired else ""


def pump_sinks(sinks: Iterable[Any]) -> None:
    """Deliver the rows deferred W&B sinks queued (training thread); a failure is logged, never raised."""
    for s in sinks:
        try:
            s.pump()
        except Exception as e:
            log.warning("wwmonitor: W&B logging failed: %r", e)


_OLD_LOGGER_ARGS = {"log_dir": "tensorboard", "wandb": "wandb", "csv": "csv"}


def legacy_keras_loggers(every_n_epochs: Any, options: dict[str, Any]) -> Any:
    """The pre-0.5 spelling mapped (with a ``DeprecationWarning``): a log dir as the first positional
    argument, ``log_dir=``/``wandb=``/``csv=`` keywords -> ``loggers={...}``.  Returns ``every_n_epochs``."""
    if isinstance(every_n_epochs, (str, os.PathLike)):
        options["log_dir"], every_n_epochs = every_n_epochs, options.pop("_every_n_epochs", 1)
    old = {k: options.pop(k) for k in list(options) if k in _OLD_LOGGER_ARGS}
    if old:
        if isinstance(options.get("loggers"), dict):
            raise TypeError("WeightWatcherCallback (Keras): pass loggers={...} or log_dir=/wandb=/csv=, not both")
        warnings.warn(
            f"WeightWatcherCallback (Keras): {', '.join(f'{k}=' for k in old)} deprecated; use "
            "loggers={'tensorboard': log_dir, 'wandb': run, 'csv': path} (every_n_epochs is now the first argument)",
            DeprecationWarning,
            stacklevel=3,
        )
        loggers = {_OLD_LOGGER_ARGS[k]: v for k, v in old.items() if v is not None and v is not False}
        options["loggers"] = loggers or False
    return every_n_epochs
