"""MLflow sink: per-layer metrics with steps, ESD images and layer tables as artifacts, alerts as tags.

What is written to the run for a :class:`~wwmonitor.records.SnapshotResult`
(``<prefix>`` defaults to ``"ww"``; every metric carries ``step = result.step``
and the snapshot's time as its timestamp).  The metric keys are the
TensorBoard and W&B sinks' tags (:mod:`wwmonitor.sinks._render`): MLflow's
UI, too, puts a metric in the chart section named by its first ``/`` segment.

* metrics ``<prefix>.<metric>/<layer>`` -- one value per layer and metric,
  one section per metric, e.g. ``ww.alpha/encoder.layer.0.attention.self.query``;
* metrics ``<prefix>/<key>`` -- the model-level summary of
  ``result.summary`` (``ww/mean_alpha``, ...), and ``<prefix>/epoch``, in the
  section ``ww``; all metrics of a snapshot go in ``MlflowClient.log_batch``
  calls of at most 1000 metrics (MLflow's batch limit);
* artifact ``wwmonitor/esd/step_<step>/<layer>.png`` -- the ESD figure the
  result carries (``result.figures``, drawn by the monitor's renderer every
  ``esd_every_n_epochs``), the PNG bytes as they are; a failing image loses
  only itself;
* artifact ``wwmonitor/layers/step_<step>.json`` -- the layer table
  ``{"step", "epoch", "columns", "data"}``, one row per layer
  (step, epoch, layer, type, phase, status, reason and the metrics; a metric
  that could not be computed is ``null``);
* tag ``<prefix>/alert/<rule>/<layer>`` = ``"step <step> [<severity>] <message>"``
  per alert (``<layer>`` is ``__model__`` for model-level alerts; a later
  alert of the same rule and layer overwrites the tag, so tags show the
  latest), and artifact ``wwmonitor/alerts/step_<step>.json`` -- the full
  list of the snapshot's alerts, when any fired;
* params ``<prefix>/<key>`` -- the ``params=`` mapping (the callbacks pass
  their ``config``), flattened (``{"opt": {"lr": 0.1}}`` -> ``ww/opt/lr``),
  values as strings cut to 6000 characters; logged once, at the first
  snapshot (or at :meth:`close` if none came).  MLflow params are
  immutable: a key already logged with another value is reported, the
  other params are still logged.

Keys: MLflow accepts ASCII letters, digits, ``_ - . /`` and spaces in metric,
param and tag keys, at most 250 characters, and no key that a path
normalisation would change (``a//b``, ``./a``, ``a/../b``).  A layer name
first goes through :func:`~wwmonitor.sinks._render.sanitize_tag` like in the
other sinks (``/`` -> ``.``, spaces and ``:`` -> ``_``); then
:func:`mlflow_key` turns every other character MLflow rejects into ``_``,
drops empty and ``.`` path segments, turns ``..`` into ``__`` and cuts a key
longer than 250 characters, ending it with a hash of the full key.

The run: a run id, an ``mlflow.ActiveRun``/``Run`` (its ``info.run_id``), or
``None`` for the active run (``mlflow.start_run()``).  The sink never ends
the run: it belongs to the caller (or to Lightning's ``MLFlowLogger``).

Threads: the sink is called from the dispatcher's thread for this sink while
the training thread may log through the same ``MlflowClient`` (Lightning's
``MLFlowLogger.experiment``).  The client is a thin facade over its store
(SQLAlchemy engines and HTTP sessions, both safe to share between threads),
and the sink keeps no state that the training thread touches.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from ..records import MODEL_LAYER, ControlRecord, SnapshotResult
from ._render import (
    control_scalars,
    layer_scalars,
    layer_tag,
    model_tag,
    resolve_metrics,
    sanitize_tag,
    write_each,
)

__all__ = ["MLflowSink", "mlflow_key", "flatten_params"]

#: MLflow's limits (``mlflow.utils.validation``), the same in every MLflow 2.x/3.x
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_KEY_LENGTH = 250
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000

_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-./]")


def mlflow_key(*parts: str) -> str:
    """A metric / param / tag key MLflow accepts, made of ``parts`` joined by ``/`` (see the module docstring)."""
    raw = "/".join(str(p) for p in parts)
    segs = ["__" if s == ".." else s for s in _BAD_CHARS.sub("_", raw).split("/") if s not in ("", ".")]
    key = "/".join(segs) or "_"
    if len(key) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(raw.encode("utf-8")).hexdigest()[:10]
        key = key[: MAX_KEY_LENGTH - len(digest) - 1].rstrip("/") + "-" + digest
    return key


def flatten_params(params: Mapping[str, Any], sep: str = "/") -> dict[str, str]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a/b": "1", "c": "[1, 2]"}`` (values as strings, cut to MLflow's
    limit)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(f"{prefix}{sep}{k}" if prefix else str(k), v)
            return
        if isinstance(value, (list, tuple, dict)):
            try:
                text = json.dumps(value, default=str)
            except (TypeError, ValueError):
                text = str(value)
        else:
            text = str(value)
        out[prefix] = text[:MAX_PARAM_VAL_LENGTH]

    for k, v in params.items():
        walk(str(k), v)
    return out


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _run_id_of(run: Any) -> Optional[str]:
    if run is None or isinstance(run, str):
        return run
    info = getattr(run, "info", None)
    rid = getattr(info, "run_id", None)
    if not isinstance(rid, str):
        raise TypeError(f"run_id: expected a run id, an mlflow ActiveRun/Run or None, got {type(run).__name__}")
    return rid


class MLflowSink:
    """Log snapshot results to an MLflow run (see the module docstring for the layout).

    Parameters
    ----------
    run_id:
        The run: its id, an ``mlflow.ActiveRun`` / ``Run``, or ``None`` for
        the active run (``mlflow.start_run()``; an error if there is none).
    client:
        An ``mlflow.MlflowClient`` (e.g. Lightning's ``MLFlowLogger.experiment``);
        default: ``MlflowClient(tracking_uri)``.
    tracking_uri:
        Tracking URI of the default client (``None``: MLflow's current one);
        only without ``client``.
    prefix, metrics, images:
        As in :class:`~wwmonitor.sinks.tensorboard.TensorBoardSink`: key
        prefix, the per-layer metrics (``"default"``, ``"all"`` or
        :class:`~wwmonitor.metrics.LayerMetrics` field names), and whether to
        log the ESD figures.
    params:
        Run configuration logged once as params ``<prefix>/<key>`` (nested
        mappings flattened with ``/``).
    """

    #: folder of the run's artifacts that the sink writes
    artifact_root = "wwmonitor"

    def __init__(
        self,
        run_id: Any = None,
        *,
        client: Any = None,
        tracking_uri: Optional[str] = None,
        prefix: str = "ww",
        metrics: Union[str, Sequence[str]] = "default",
        images: bool = True,
        params: Optional[Mapping[str, Any]] = None,
    ) -> None:
        if client is not None and tracking_uri is not None:
            raise ValueError("pass client or tracking_uri, not both (tracking_uri is for the sink's own client)")
        if params is not None and not isinstance(params, Mapping):
            raise TypeError(f"params: expected a mapping, got {type(params).__name__}")
        rid = _run_id_of(run_id)
        if rid is None:
            import mlflow

            active = mlflow.active_run()
            if active is None:
                raise ValueError("MLflowSink: no run given and no active run; pass run_id= or call mlflow.start_run()")
            rid = active.info.run_id
        if client is None:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=tracking_uri)
        for meth in ("log_batch", "log_artifact", "log_dict"):
            if not callable(getattr(client, meth, None)):
                raise TypeError(f"client: {type(client).__name__} has no {meth}(); pass an mlflow.MlflowClient")
        self.client = client
        self.run_id: str = rid
        self.prefix = prefix.strip("/")
        self.metrics = resolve_metrics(metrics)
        self.wants_figures = bool(images)
        self._params = flatten_params(params) if params else {}
        self._params_pending = bool(self._params)
        self.metrics_logged = 0
        self.images_logged = 0

    # ------------------------------------------------------------------ write
    def write(self, result: SnapshotResult) -> None:
        """Log one snapshot (called from the dispatcher's thread for this sink).

        Params, metrics, the layer table, alerts and images are written
        independently: a part that fails loses only itself (an image only
        itself) and one ``RuntimeError`` names what was lost.
        """
        parts: list[tuple[str, Callable[[], None]]] = []
        if self._params_pending:
            parts.append(("params", self._log_params))
        parts.append(("metrics", lambda: self._log_metrics(result)))
        parts.append(("layer table", lambda: self._log_table(result)))
        if result.alerts:
            parts.append(("alerts", lambda: self._log_alerts(result)))
        if self.wants_figures and result.figures:
            parts.append(("ESD images", lambda: self._log_images(result)))
        write_each(parts, lambda _name, fn: fn(), f"part(s) of snapshot step {result.step}")

    def _log_metrics(self, result: SnapshotResult) -> None:
        from mlflow.entities import Metric

        p, step = self.prefix, int(result.step)
        ts = int((result.time if result.time else time.time()) * 1000)
        values: dict[str, float] = {}
        for lm in result.layers:
            for m, v in layer_scalars(lm, self.metrics).items():
                values[mlflow_key(layer_tag(p, m, lm.name))] = v
        for k, v in result.summary.items():
            if v is not None and not isinstance(v, bool) and math.isfinite(float(v)):
                values[mlflow_key(model_tag(p, k))] = float(v)
        if result.epoch is not None:
            values[mlflow_key(p, "epoch")] = float(result.epoch)
        batch = [Metric(key=k, value=v, timestamp=ts, step=step) for k, v in values.items()]
        for chunk in _chunks(batch, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)
            self.metrics_logged += len(chunk)

    def write_control(self, records: Sequence[ControlRecord]) -> None:
        """Log a controller's assignments as metrics ``<prefix>_control/<quantity>/<layer>`` (and ``_factor``)
        at the step they took effect."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [
            Metric(key=mlflow_key(tag), value=v, timestamp=ts, step=step)
            for step, scalars in control_scalars(records, self.prefix).items()
            for tag, v in scalars.items()
        ]
        for chunk in _chunks(batch, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)
            self.metrics_logged += len(chunk)

    def _log_table(self, result: SnapshotResult) -> None:
        columns = ["step", "epoch", "layer", "type", "phase", "status", "reason", *self.metrics]
        data: list[list[Any]] = []
        for lm in result.layers:
            vals = layer_scalars(lm, self.metrics)
            data.append(
                [
                    int(result.step),
                    result.epoch,
                    lm.name,
                    lm.type,
                    lm.phase or "",
                    lm.status,
                    lm.phase_reason or lm.message or "",
                ]
                + [vals.get(m) for m in self.metrics]
            )
        table = {"step": int(result.step), "epoch": result.epoch, "columns": columns, "data": data}
        self.client.log_dict(self.run_id, table, f"{self.artifact_root}/layers/step_{int(result.step)}.json")

    def _log_alerts(self, result: SnapshotResult) -> None:
        from mlflow.entities import RunTag

        step = int(result.step)
        tags: dict[str, str] = {}
        for a in result.alerts:
            key = mlflow_key(self.prefix, "alert", a.rule, sanitize_tag(a.layer or MODEL_LAYER))
            tags[key] = f"step {step} [{a.severity}] {a.message}"[:MAX_TAG_VAL_LENGTH]
        for chunk in _chunks([RunTag(k, v) for k, v in tags.items()], MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=chunk)
        rows = [
            {
                "step": a.step,
                "epoch": a.epoch,
                "rule": a.rule,
                "severity": a.severity,
                "layer": a.layer,
                "message": a.message,
                "value": a.value,
                "stop_training": a.stop_training,
            }
            for a in result.alerts
        ]
        self.client.log_dict(self.run_id, rows, f"{self.artifact_root}/alerts/step_{step}.json")

    def _log_images(self, result: SnapshotResult) -> None:
        folder = f"{self.artifact_root}/esd/step_{int(result.step)}"
        with tempfile.TemporaryDirectory(prefix="wwmonitor-mlflow-") as tmp:

            def image(name: str, png: bytes) -> None:
                sub, base = os.path.split(mlflow_key(sanitize_tag(name)))  # a "/" left in it: sub-folders
                path = os.path.join(tempfile.mkdtemp(dir=tmp), base + ".png")  # log_artifact keeps the file name
                with open(path, "wb") as f:
                    f.write(png)
                self.client.log_artifact(self.run_id, path, f"{folder}/{sub}" if sub else folder)
                self.images_logged += 1

            write_each(result.figures.items(), image, "ESD image(s)")

    def _log_params(self) -> None:
        from mlflow.entities import Param

        self._params_pending = False  # once: a conflicting value is reported, not retried every snapshot
        params = {mlflow_key(self.prefix, k): v for k, v in self._params.items()}
        items = [Param(k, v) for k, v in params.items()]
        try:
            for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
                self.client.log_batch(self.run_id, params=chunk)
        except Exception:
            # e.g. a key logged before with another value (params are immutable): one at a time,
            # so only the conflicting ones are lost (re-logging an equal value is accepted)
            write_each(params.items(), lambda k, v: self.client.log_param(self.run_id, k, v), "param(s)")

    # ------------------------------------------------------------------ close
    def close(self) -> None:
        """Log the params if no snapshot came; the run itself stays open (it belongs to the caller)."""
        if self._params_pending:
            self._log_params()
