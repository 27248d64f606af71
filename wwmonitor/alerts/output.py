"""How a fired alert is shown: exactly one output per alert (a log record, or a Python warning)."""

from __future__ import annotations

import logging
import warnings

from ..records import Alert

__all__ = ["WeightWatcherAlert", "emit", "LEVELS"]

log = logging.getLogger("wwmonitor.alerts")

#: log level of each severity
LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class WeightWatcherAlert(UserWarning):
    """Warning category of alerts with ``AlertRules(warn=True)`` (filter with ``warnings.filterwarnings``)."""


def emit(alert: Alert, *, warn: bool, log_alerts: bool) -> None:
    """Show ``alert`` once.

    ``warn`` and severity ``warning``/``error``: a :class:`WeightWatcherAlert`
    warning attributed to ``wwmonitor:0`` (not to a line of wwmonitor's code, so
    no source line is printed; filter it by category or ``module="wwmonitor"``).
    Otherwise, if ``log_alerts``: a record on the ``wwmonitor.alerts`` logger at
    the severity's level.  If the warnings filter turns the warning into an
    exception, the alert is logged instead (it never escapes into training).
    """
    level = LEVELS.get(alert.severity, logging.ERROR)
    text = f"{alert.severity.upper()} {alert.rule}: {alert.message}"
    if warn and alert.severity != "info":
        try:
            warnings.warn_explicit(text, WeightWatcherAlert, filename="wwmonitor", lineno=0, module="wwmonitor")
            return
        except Exception:  # noqa: BLE001 - e.g. warnings.simplefilter("error"): fall back to the log record
            pass
    elif not log_alerts:
        return
    log.log(level, "[wwmonitor] %s", text)
