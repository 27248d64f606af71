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

from ..alerts import AlertRules, resolve_alerts
from ..analyze import AnalysisOptions

__all__ = ["check_interval", "store_monitor_options", "trap_analyze_fn", "stop_reason", "pump_sinks"]

log = logging.getLogger("wwmonitor")


def check_interval(name: str, value: Any, *, allow_none: bool) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a positive ``int`` (or ``None`` if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        what = "a positive integer or None" if allow_none else "a positive integer"
        raise ValueError(f"{name} must be {what}, got {value!r}")


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
) -> None:
    """Validate the options common to both callbacks and set them as attributes of ``cb``.

    ``metrics`` is checked now (an unknown metric name fails at construction,
    not in the worker); ``alerts``/``stop_on`` become ``cb.alert_rules``
    (:func:`wwmonitor.alerts.resolve_alerts`); ``config`` is copied.
    """
    from ..sinks._render import resolve_metrics

    resolve_metrics(metrics)  # validate now
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


def trap_analyze_fn(alert_rules: Any) -> Any:
    """The per-matrix analysis the alert rules need (correlation traps need the weights), else ``None``."""
    if isinstance(alert_rules, AlertRules):
        return alert_rules.analyze_fn()
    return None


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
