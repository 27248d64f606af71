"""Option handling and small pieces shared by the Keras and Lightning callbacks.

Both callbacks take the same monitor options (run store, layer selection,
alert rules, logged metrics, queue) and keep them as public attributes of
the same names; both pump deferred W&B sinks from the training thread and
report the alert that stopped training the same way.  Framework-free: this
module imports neither Keras nor Lightning.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, Sequence, Union

from .._validate import check_interval
from ..alerts import AlertRules, resolve_alerts
from ..analyze import AnalysisOptions

__all__ = ["check_interval", "store_monitor_options", "monitor_kwargs", "stop_reason", "pump_sinks"]

log = logging.getLogger("wwmonitor")


def store_monitor_options(
    cb: Any,
    *,
    run_dir: Any,
    run_name: Optional[str],
    layers: Optional[Sequence[Any]],
    exclude: Optional[Sequence[Any]],
    alerts: Union[None, bool, str, dict, AlertRules],
    stop_on: Sequence[str],
    metrics: Union[str, Sequence[str]],
    esd_every_n_epochs: int,
    queue_size: int,
    policy: str,
    options: Optional[AnalysisOptions],
    config: Optional[dict],
    flush_timeout: Optional[float],
    resume: bool = False,
) -> None:
    """Validate the options common to both callbacks and set them as attributes of ``cb``.

    ``metrics`` is checked now (an unknown metric name fails at construction,
    not in the worker); ``alerts``/``stop_on`` become ``cb.alert_rules``
    (:func:`wwmonitor.alerts.resolve_alerts`); ``config`` is copied.
    """
    from ..sinks._render import resolve_metrics

    resolve_metrics(metrics)  # validate now
    if isinstance(esd_every_n_epochs, bool) or not isinstance(esd_every_n_epochs, int) or esd_every_n_epochs < 0:
        raise ValueError(f"esd_every_n_epochs must be an integer >= 0, got {esd_every_n_epochs!r}")
    cb.run_dir = run_dir
    cb.run_name = run_name
    cb.layers = layers
    cb.exclude = exclude
    cb.alert_rules = resolve_alerts(alerts, stop_on=stop_on)
    cb.metrics = metrics
    cb.esd_every_n_epochs = int(esd_every_n_epochs)
    cb.queue_size = queue_size
    cb.policy = policy
    cb.options = options
    cb.config = dict(config or {})
    cb.flush_timeout = flush_timeout
    cb.resume = bool(resume)


def monitor_kwargs(cb: Any) -> dict[str, Any]:
    """The :class:`wwmonitor.Monitor` arguments a callback passes from its stored options."""
    return {"layers": cb.layers, "exclude": cb.exclude, "alerts": cb.alert_rules, "queue_size": cb.queue_size,
            "policy": cb.policy, "options": cb.options, "esd_every_n_epochs": cb.esd_every_n_epochs}


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
