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
``run.alert``.  So exactly one thread at a time calls wandb.

Deadline (deferred mode): :meth:`pump` makes those calls on a helper thread
while the training thread waits -- at most ``sink_timeout`` seconds per pump
(the Monitor's ``sink_timeout``; ``None``: no deadline).  A pump that runs
past it is abandoned: the sink is *dropped* (:attr:`dropped` is set, a
warning names the reason), its queued rows and every later one are discarded
and counted in :attr:`rows_dropped`, and training goes on.  While the training
thread waits, it makes no wandb call of its own, so the calls stay serial
unless wandb hangs past the deadline.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..records import ControlRecord, SnapshotResult
from ._render import (
    control_scalars,
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

log = logging.getLogger("wwmonitor")


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
    sink_timeout:
        Seconds one :meth:`pump` may wait for wandb (deferred mode; ``None``:
        no deadline); see "Deadline" above.
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
        sink_timeout: Optional[float] = 60.0,
    ) -> None:
        if run is None or not callable(getattr(run, "log", None)):
            raise TypeError(f"run: expected a wandb Run (wandb.init(...)), got {type(run).__name__}")
        if deliver not in ("direct", "deferred"):
            raise ValueError(f"deliver must be 'direct' or 'deferred', got {deliver!r}")
        if sink_timeout is not None and not sink_timeout > 0:
            raise ValueError(f"sink_timeout must be > 0 or None, got {sink_timeout!r}")
        self.sink_timeout = sink_timeout
        #: why the sink was dropped (a pump ran past ``sink_timeout``); "" while it works
        self.dropped = ""
        #: rows discarded because the sink was dropped
        self.rows_dropped = 0
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
        self._deliver(self._prepare(result))

    def write_control(self, records: Sequence[ControlRecord]) -> None:
        """A controller's assignments as rows ``<prefix>_control/<quantity>/<layer>`` (and ``_factor``) at the
        step they took effect (keyed by ``step_metric``, like the snapshots); direct or queued."""
        for step, scalars in control_scalars(records, self.prefix).items():
            payload: dict[str, Any] = {"step": step, "epoch": None, "scalars": scalars, "columns": [], "rows": []}
            payload.update(images={}, alerts=[])
            self._deliver(payload)

    def _deliver(self, payload: dict[str, Any]) -> None:
        """Log a prepared row now (``direct``), count it as dropped (the sink gave up), or queue it for
        :meth:`pump`."""
        if self.deliver == "direct":
            self._log(payload)
        elif self.dropped:
            self.rows_dropped += 1
        else:
            self._queue.append(payload)

    # ---------------------------------------------------------------- wandb side
    @property
    def pending(self) -> int:
        """Payloads waiting for :meth:`pump` (deferred mode)."""
        return len(self._queue)

    def pump(self) -> int:
        """Log every queued payload (deferred mode); call from the thread that owns the run.

        The wandb calls run on a helper thread; this call waits for them at most
        ``sink_timeout`` seconds, then drops the sink (see "Deadline" above).  An
        error raised by wandb is re-raised here.  Returns how many snapshots were logged.
        """
        if self.dropped:
            self._discard()
            return 0
        if not self._queue:
            return 0
        out: dict[str, Any] = {}
        t = threading.Thread(target=self._drain, args=(out,), name="wwmonitor-wandb-pump", daemon=True)
        t.start()
        t.join(self.sink_timeout)
        if t.is_alive():
            self.dropped = f"a W&B log call did not return within sink_timeout={self.sink_timeout} s"
            log.warning("wwmonitor: %s; the W&B sink is dropped (rows discarded), training continues", self.dropped)
            self._discard()
            return 0
        if "error" in out:
            raise out["error"]
        return int(out.get("logged", 0))

    def _drain(self, out: dict[str, Any]) -> None:
        """Log the queued payloads (helper thread of :meth:`pump`); the count and any error go to ``out``."""
        n = 0
        try:
            with self._lock:
                while self._queue and not self.dropped:
                    payload = self._queue.popleft()
                    if "final" in payload:
                        self._finish(payload["final"])
                    else:
                        self._log(payload)
                        n += 1
        except Exception as e:  # noqa: BLE001 - re-raised by pump() on the calling thread
            out["error"] = e
        out["logged"] = n

    def _discard(self) -> None:
        """Count and drop the queued rows of a dropped sink."""
        while self._queue:
            if "final" not in self._queue.popleft():
                self.rows_dropped += 1

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
            define(f"{self.prefix}_control/*", step_metric=self.step_metric)
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
