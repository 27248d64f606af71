"""Option handling and small pieces shared by the callbacks (Keras, Lightning, Hugging Face ``Trainer``).

The callbacks take the same monitor options (run store, layer selection,
alert rules, logged metrics, queue) and keep them as public attributes of
the same names; they pump deferred W&B sinks from the training thread and
report the alert that stopped training the same way.  The trainer callbacks
(Lightning, ``Trainer``) also share how rank 0's monitor is opened and what
their checkpoint state holds (:func:`open_main_monitor`,
:func:`callback_state`, :func:`apply_callback_state`).  Framework-free: this
module imports no training framework.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, Sequence, Union

from .._validate import check_interval
from ..alerts import AlertRules, resolve_alerts
from ..analyze import AnalysisOptions

__all__ = [
    "MonitorOptions",
    "check_interval",
    "store_monitor_options",
    "monitor_kwargs",
    "stop_reason",
    "pump_sinks",
    "open_main_monitor",
    "callback_state",
    "apply_callback_state",
]

log = logging.getLogger("wwmonitor")


class MonitorOptions:
    """The public attributes :func:`store_monitor_options` sets on a callback, declared for type checkers.

    Annotations only (no values, no methods): a callback class lists it among its bases so that
    ``self.layers`` etc. have types; nothing changes at run time.
    """

    run_dir: Any
    run_name: Optional[str]
    layers: Optional[Sequence[Any]]
    exclude: Optional[Sequence[Any]]
    alert_rules: Optional[AlertRules]
    metrics: Union[str, Sequence[str]]
    esd_every_n_epochs: int
    queue_size: int
    policy: str
    options: Optional[AnalysisOptions]
    config: dict[str, Any]
    flush_timeout: Optional[float]
    resume: bool


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
    return {
        "layers": cb.layers,
        "exclude": cb.exclude,
        "alerts": cb.alert_rules,
        "queue_size": cb.queue_size,
        "policy": cb.policy,
        "options": cb.options,
        "esd_every_n_epochs": cb.esd_every_n_epochs,
    }


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


def open_main_monitor(
    cb: Any,
    model: Any,
    run_dir: Any,
    names: Sequence[str],
    *,
    sinks: Sequence[Any] = (),
    config: Optional[dict] = None,
    restored: Optional[dict] = None,
) -> Any:
    """Rank 0's :class:`wwmonitor.Monitor` of a trainer callback (store, alert rules, sinks).

    ``restored`` is the ``"monitor"`` entry of a checkpoint's callback state
    (:meth:`wwmonitor.Monitor.state_dict`): its run is continued (same folder,
    ``resume=True``).  Without one the run is ``cb.run_name`` under
    ``run_dir`` and an existing run of that name is continued only with
    ``cb.resume`` (otherwise the monitor starts ``<name>-2`` and says so).
    The monitor never snapshots on its own (both intervals ``None``): the
    callback decides when.
    """
    from ..monitor import Monitor

    restored = restored or {}
    run_kw: dict[str, Any] = {"run_name": cb.run_name, "resume": cb.resume}
    if restored.get("run_id"):  # a restored checkpoint: continue its run
        run_kw = {"run_name": restored["run_id"], "resume": True}
    kw = monitor_kwargs(cb)
    kw["layers"] = list(names)
    return Monitor(
        model,
        restored.get("run_root") or run_dir,
        every_n_epochs=None,
        every_n_steps=None,
        sinks=list(sinks),
        config=config,
        **run_kw,
        **kw,
    )


def callback_state(cb: Any, monitor: Any, last_step: Optional[int]) -> dict[str, Any]:
    """A trainer callback's checkpoint state (JSON-able): the monitor's run, the last snapshotted step and
    the alert rules' hysteresis state."""
    return {
        "version": 1,
        "monitor": monitor.state_dict() if monitor is not None else None,
        "last_step": last_step,
        "alerts": cb.alert_rules.state_dict() if isinstance(cb.alert_rules, AlertRules) else None,
    }


def apply_callback_state(cb: Any, state: Optional[dict], monitor: Any) -> Optional[int]:
    """Restore :func:`callback_state` output into ``monitor`` (``None`` on ranks without one) and
    ``cb.alert_rules``; returns the checkpoint's last snapshotted step (``None`` if it has none)."""
    if not state:
        return None
    if monitor is not None and state.get("monitor"):
        monitor.load_state_dict(state["monitor"])
    if isinstance(cb.alert_rules, AlertRules) and state.get("alerts"):
        cb.alert_rules.load_state_dict(state["alerts"])
    return int(state["last_step"]) if state.get("last_step") is not None else None
