"""Weights & Biases sink: scalars keyed by the trainer's step, ESD images, a per-layer table, alerts, config.

W&B puts a key in the panel section named by its first ``/`` segment; the
keys are the TensorBoard sink's (see :mod:`wwmonitor.sinks._render`).  For
each :class:`~wwmonitor.records.SnapshotResult` one ``run.log`` row is
written holding

* ``<prefix>/<key>`` -- the model-level summary (``ww/mean_alpha``, ...),
  section ``ww``, which sorts before the per-metric sections;
* ``<prefix>.<metric>/<layer>`` -- one section per metric
  (``ww.alpha/fc1``); a ``/`` in a layer name becomes ``.``;
* ``step_metric`` (default ``"trainer/global_step"``, Lightning's step key)
  set to ``result.step`` and ``<prefix>/epoch``,
* ``<prefix>.esd/<layer>`` -- ``wandb.Image`` of the ESD figure
  (:func:`wwmonitor.report.figures.plot_esd`) every ``esd_every_n_epochs``,
  in a section of its own,
* ``<prefix>/layers`` -- a ``wandb.Table`` with one row per layer
  (step, epoch, layer, phase, status and the metrics),

and every alert becomes ``run.alert(title, text, level)`` (recorded in the
run file in offline mode).  The step is *logged as a key* and declared with
``define_metric(f"{prefix}/*")`` and ``define_metric(f"{prefix}.*")``
(``step_metric=step_metric``); ``log(step=)`` is never used, because wandb
silently drops rows whose ``step`` is lower than an earlier one, and analysed
snapshots arrive after the trainer moved on.

With ``hparams={...}`` (the callbacks pass their ``config``) the run's
config is updated (``run.config.update(..., allow_val_change=True)``) before
the first row; at :meth:`close` the last snapshot's model summary goes to
``run.summary`` (``ww/mean_alpha``, ...), so the runs table of a sweep can
be sorted and filtered by it.

Threads (wandb's client is not thread-safe)
-------------------------------------------
``deliver="direct"``: ``write`` calls wandb itself -- correct when the
monitor's worker thread is the only thread using the run (plain PyTorch with
no other wandb logging).  ``deliver="deferred"`` (what the callbacks use,
since Lightning/Keras log from the training thread): ``write`` only prepares
plain data (numbers, RGB arrays) and queues it; :meth:`pump`, called by the
callback on the training thread at its hooks and after the monitor closed,
creates the ``wandb.Image``/``Table`` objects and calls ``run.log`` /
``run.alert``.  So exactly one thread ever calls wandb.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..records import SnapshotResult
from ._render import (
    image_tag,
    layer_scalars,
    layer_tag,
    model_tag,
    plain_config,
    png_to_rgb,
    resolve_metrics,
    write_each,
)

__all__ = ["WandbSink"]

_LEVELS = {"info": "INFO", "warning": "WARN", "error": "ERROR"}


class WandbSink:
    """Log snapshot results to a wandb run (see the module docstring).

    Parameters
    ----------
    run:
        A ``wandb`` Run (``wandb.init(...)``, ``WandbLogger.experiment``).
    step_metric:
        Key holding the trainer's step (``"trainer/global_step"`` matches
        Lightning's charts; the Keras callback uses ``"ww/step"``).
    prefix, metrics, images:
        As in :class:`~wwmonitor.sinks.tensorboard.TensorBoardSink`.
    table:
        Log the per-layer ``wandb.Table`` with every snapshot.
    alerts:
        Send alerts with ``run.alert``.
    deliver:
        ``"direct"`` or ``"deferred"`` (see "Threads" above).
    hparams:
        The run's hyper-parameters, merged into ``run.config`` (nesting kept,
        values made JSON-friendly by :func:`~wwmonitor.sinks._render.plain_config`).
    """

    def __init__(
        self,
        run: Any,
        *,
        step_metric: str = "trainer/global_step",
        prefix: str = "ww",
        metrics: Union[str, Sequence[str]] = "default",
        images: bool = True,
        table: bool = True,
        alerts: bool = True,
        deliver: str = "direct",
        hparams: Optional[Mapping[str, Any]] = None,
    ) -> None:
        if run is None or not callable(getattr(run, "log", None)):
            raise TypeError(f"run: expected a wandb Run (wandb.init(...)), got {type(run).__name__}")
        if deliver not in ("direct", "deferred"):
            raise ValueError(f"deliver must be 'direct' or 'deferred', got {deliver!r}")
        self.run = run
        self.step_metric = step_metric
        self.prefix = prefix.rstrip("/")
        self.metrics = resolve_metrics(metrics)
        self.wants_figures = bool(images)
        self.table = bool(table)
        self.send_alerts = bool(alerts)
        self.deliver = deliver
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()  # serialises pump() callers (one thread in practice)
        self._defined = False
        self.hparams = plain_config(hparams)
        self._final: Optional[tuple[int, dict[str, float]]] = None  # (step, model summary) of the last result
        self._closed = False
        self.rows_logged = 0
        self.alerts_sent = 0

    # ---------------------------------------------------------------- worker side
    def _prepare(self, result: SnapshotResult) -> dict[str, Any]:
        """Plain-data payload of one snapshot (no wandb objects: safe off the main thread)."""
        p = self.prefix
        scalars: dict[str, float] = {}
        rows: list[list[Any]] = []
        cols = ["step", "epoch", "layer", "type", "phase", "status", *self.metrics]
        model: dict[str, float] = {}
        for k, v in result.summary.items():
            if v is not None and np.isfinite(v):
                model[model_tag(p, k)] = float(v)
        scalars.update(model)
        for lm in result.layers:
            vals = layer_scalars(lm, self.metrics)
            for m, v in vals.items():
                scalars[layer_tag(p, m, lm.name)] = v
            rows.append(
                [int(result.step), result.epoch, lm.name, lm.type, lm.phase or "", lm.status]
                + [vals.get(m) for m in self.metrics]
            )
        if self._final is None or int(result.step) >= self._final[0]:
            self._final = (int(result.step), model)
        images: dict[str, tuple[bytes, str]] = {}
        if self.wants_figures:
            for name, png in result.figures.items():
                images[image_tag(p, name)] = (png, f"{name} step {result.step}")
        alerts = [
            ((f"wwmonitor {a.rule}" + (f" {a.layer}" if a.layer else ""))[:63], a.message, a.severity)
            for a in result.alerts
        ]
        return {
            "step": int(result.step),
            "epoch": result.epoch,
            "scalars": scalars,
            "columns": cols,
            "rows": rows,
            "images": images,
            "alerts": alerts,
        }

    def write(self, result: SnapshotResult) -> None:
        """Prepare one snapshot; log it now (``direct``) or queue it for :meth:`pump`."""
        payload = self._prepare(result)
        if self.deliver == "direct":
            self._log(payload)
        else:
            self._queue.append(payload)

    # ---------------------------------------------------------------- wandb side
    @property
    def pending(self) -> int:
        """Payloads waiting for :meth:`pump` (deferred mode)."""
        return len(self._queue)

    def pump(self) -> int:
        """Log every queued payload (deferred mode); call from the thread that owns the run.

        Returns how many snapshots were logged.
        """
        n = 0
        with self._lock:
            while self._queue:
                payload = self._queue.popleft()
                if "final" in payload:
                    self._finish(payload["final"])
                else:
                    self._log(payload)
                    n += 1
        return n

    def _define(self) -> None:
        """First call into wandb (on the thread that owns the run): step metric, sections' globs, config."""
        if self._defined:
            return
        self._defined = True
        define = getattr(self.run, "define_metric", None)
        if callable(define):
            define(self.step_metric)
            define(f"{self.prefix}/*", step_metric=self.step_metric)
            define(f"{self.prefix}.*", step_metric=self.step_metric)
        if self.hparams:
            self.run.config.update(self.hparams, allow_val_change=True)

    def _finish(self, summary: dict[str, float]) -> None:
        """Config (if no row came) and the final model summary into ``run.summary``."""
        self._define()
        for k, v in summary.items():
            self.run.summary[k] = v

    def _log(self, payload: dict[str, Any]) -> None:
        import wandb

        self._define()
        row: dict[str, Any] = dict(payload["scalars"])
        row[self.step_metric] = payload["step"]
        if payload["epoch"] is not None:
            row[f"{self.prefix}/epoch"] = payload["epoch"]

        def image(key: str, item: tuple[bytes, str]) -> None:
            png, caption = item
            row[key] = wandb.Image(png_to_rgb(png), caption=caption)

        try:  # a failing image loses only itself: the scalars, table and alerts are still logged
            write_each(payload["images"].items(), image, "ESD image(s)")
        finally:
            if self.table and payload["rows"]:
                row[f"{self.prefix}/layers"] = wandb.Table(columns=payload["columns"], data=payload["rows"])
            self.run.log(row)
            self.rows_logged += 1
            self._send_alerts(payload["alerts"], wandb)

    def _send_alerts(self, alerts: list[tuple[str, str, str]], wandb: Any) -> None:
        if self.send_alerts:
            for title, text, severity in alerts:
                level = getattr(wandb.AlertLevel, _LEVELS.get(severity, "WARN"))
                self.run.alert(title=title, text=text, level=level, wait_duration=0)
                self.alerts_sent += 1

    def close(self) -> None:
        """Write the config (if not yet) and the last snapshot's model summary to ``run.summary``:
        now (``direct``) or at the next :meth:`pump` (``deferred``, like the queued rows).

        The run itself is owned by the caller (``wandb.finish()``/the logger).
        """
        if self._closed:
            return
        self._closed = True
        final = dict(self._final[1]) if self._final is not None else {}
        if self.deliver == "direct":
            self._finish(final)
        else:
            self._queue.append({"final": final})
