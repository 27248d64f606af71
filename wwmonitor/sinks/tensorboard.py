"""TensorBoard sink: per-layer scalars, model summary, ESD images, phase and alert text, HParams.

What is written for a :class:`~wwmonitor.records.SnapshotResult` at
``global_step = result.step`` (``<prefix>`` defaults to ``"ww"``; TensorBoard
puts a tag in the section named by its first ``/`` segment, see
:mod:`wwmonitor.sinks._render`):

* ``<prefix>/<key>`` -- the model-level summary of ``result.summary``
  (``mean_alpha`` = mean of alpha over the layers with a fit, ``num_ok``,
  etc.) in the section ``ww``, which sorts before the per-metric sections;
* ``<prefix>.<metric>/<layer>`` -- one scalar per layer and metric
  (``add_scalar``, not ``add_scalars``, which would create one event file per
  key), one section per metric: ``ww.alpha/fc1``, ``ww.stable_rank/fc1``;
  a ``/`` in a layer name becomes ``.`` (:func:`~wwmonitor.sinks._render.sanitize_tag`);
* ``<prefix>.esd/<layer>`` -- the layer's ESD figure (log-log density,
  power-law fit line, MP density), for the snapshots where the monitor's
  renderer drew one (``Monitor(esd_every_n_epochs=...)``), in a section of
  their own;
* ``<prefix>/phases`` -- a Markdown table of each layer's phase and reason (text);
* ``<prefix>/alerts`` -- the snapshot's alerts (text), when any fired.

When the sink is created:

* once per writer, a custom-scalars layout (the *Custom Scalars* dashboard):
  a category ``<prefix>: all layers`` with one chart per metric that overlays
  every layer of every run (regex ``ww\\.alpha/.*``; the metric's section
  has one card per layer);
* with ``hparams={...}`` (the callbacks pass their ``config``): the HParams
  plugin's experiment (the hyper-parameter names and types, and the
  ``<prefix>/mean_<m>`` metrics) and this run's session with its
  hyper-parameter values.  The HParams table shows, per run, the last value
  of each metric's scalar tag -- the final model summary; :meth:`close`
  ends the session.  TensorBoard keeps the first HParams record of a run:
  in Lightning the callback's comes before ``TensorBoardLogger.log_hyperparams``
  (``on_fit_start`` runs before Lightning logs the module's hyper-parameters,
  which TensorBoard then ignores), so put those into ``config=`` as well.

Writers
-------
Any object with ``add_scalar``/``add_image``/``add_text``/``flush`` works:
Lightning's ``TensorBoardLogger.experiment`` (a ``torch.utils.tensorboard``
``SummaryWriter``), one you own, or a log directory -- then a
``torch.utils.tensorboard.SummaryWriter`` when torch is importable, else
:class:`EventWriter`, which writes event files with the ``tensorboard``
package alone (no TensorFlow, no torch).  The layout and HParams records are
raw summaries: they are written through ``add_summary`` (:class:`EventWriter`)
or the ``SummaryWriter``'s file writer, and left out (with one log line) for
a writer that has neither.

Threads: the sink is called from the monitor's worker thread while user code
may log from the training thread.  ``SummaryWriter.add_*`` only put events on
the ``EventFileWriter``'s internal queue, which is thread-safe, so sharing
Lightning's writer is safe.  :class:`EventWriter` takes a lock per event.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..records import ControlRecord, SnapshotResult
from ..summary import SUMMARY_FIELDS
from ._render import (
    alerts_markdown,
    control_scalars,
    hparam_values,
    image_tag,
    layer_scalars,
    layer_tag,
    metric_section_regex,
    model_tag,
    phase_markdown,
    png_size,
    png_to_rgb,
    resolve_metrics,
    write_each,
)

log = logging.getLogger("wwmonitor")

#: writers that already hold a custom-scalars layout (one per writer: TensorBoard reads a run's first)
_LAYOUT_WRITTEN: "weakref.WeakSet[Any]" = weakref.WeakSet()

__all__ = ["TensorBoardSink", "EventWriter", "open_writer"]


class EventWriter:
    """Minimal TensorBoard event writer built on the ``tensorboard`` package only.

    Implements the subset of ``SummaryWriter`` the sink uses:
    ``add_scalar``, ``add_image`` (HWC uint8), ``add_png``, ``add_text``,
    ``flush``, ``close``, and ``add_summary`` for a ready ``Summary`` proto
    (the custom-scalars layout, HParams).  Text is stored like ``SummaryWriter.add_text``
    (a string tensor with the ``text`` plugin), so TensorBoard's Text tab and
    ``EventAccumulator.Tensors("<tag>/text_summary")`` read it.
    """

    def __init__(self, log_dir: Union[str, os.PathLike], *, filename_suffix: str = "") -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.log_dir = os.fspath(log_dir)
        os.makedirs(self.log_dir, exist_ok=True)
        self._w = EventFileWriter(self.log_dir, filename_suffix=filename_suffix)
        self._lock = threading.Lock()
        self._closed = False

    def _summary_event(self, value: Any, step: int) -> None:
        from tensorboard.compat.proto import summary_pb2

        self.add_summary(summary_pb2.Summary(value=[value]), step)

    def add_summary(self, summary: Any, global_step: int = 0) -> None:
        """Write a ``tensorboard.compat.proto.summary_pb2.Summary`` as one event."""
        from tensorboard.compat.proto import event_pb2

        ev = event_pb2.Event(wall_time=time.time(), step=int(global_step), summary=summary)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"EventWriter for {self.log_dir!r} is closed")
            self._w.add_event(ev)

    def add_scalar(self, tag: str, scalar_value: float, global_step: int = 0) -> None:
        from tensorboard.compat.proto import summary_pb2

        self._summary_event(summary_pb2.Summary.Value(tag=tag, simple_value=float(scalar_value)), global_step)

    def add_png(self, tag: str, png: bytes, height: int, width: int, global_step: int = 0) -> None:
        from tensorboard.compat.proto import summary_pb2

        img = summary_pb2.Summary.Image(height=int(height), width=int(width), colorspace=3, encoded_image_string=png)
        self._summary_event(summary_pb2.Summary.Value(tag=tag, image=img), global_step)

    def add_image(self, tag: str, img_tensor: np.ndarray, global_step: int = 0, dataformats: str = "HWC") -> None:
        if dataformats != "HWC":
            raise ValueError(f"EventWriter.add_image supports dataformats='HWC' only, got {dataformats!r}")
        arr = np.asarray(img_tensor)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
        import io

        import matplotlib.image as mpimg

        buf = io.BytesIO()
        mpimg.imsave(buf, arr, format="png")
        self.add_png(tag, buf.getvalue(), arr.shape[0], arr.shape[1], global_step)

    def add_text(self, tag: str, text_string: str, global_step: int = 0) -> None:
        from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2
        from tensorboard.plugins.text import metadata as text_metadata

        meta = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=text_metadata.PLUGIN_NAME)
        )
        tensor = tensor_pb2.TensorProto(
            dtype="DT_STRING",
            string_val=[text_string.encode("utf-8")],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]),
        )
        self._summary_event(
            summary_pb2.Summary.Value(tag=tag + "/text_summary", metadata=meta, tensor=tensor), global_step
        )

    def flush(self) -> None:
        with self._lock:
            if not self._closed:
                self._w.flush()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._w.close()


def open_writer(log_dir: Union[str, os.PathLike]) -> Any:
    """A writer for ``log_dir``: torch's ``SummaryWriter`` if torch is importable, else :class:`EventWriter`."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # torch missing (e.g. Keras on jax): tensorboard alone
        return EventWriter(log_dir, filename_suffix=f".{socket.gethostname()}.wwmonitor")
    return SummaryWriter(log_dir=os.fspath(log_dir))


def _add_summary(writer: Any, summary: Any, step: int = 0) -> bool:
    """Write a raw ``Summary`` proto: :meth:`EventWriter.add_summary`, or the file writer
    of a ``SummaryWriter`` (torch, tensorboardX); ``False`` when the writer offers neither."""
    add = getattr(writer, "add_summary", None)
    if callable(add):
        add(summary, step)
        return True
    get = getattr(writer, "_get_file_writer", None)
    if callable(get):
        get().add_summary(summary, step)
        return True
    return False


def _plugin_summary(tag: str, plugin_name: str, content: bytes, tensor: Any) -> Any:
    from tensorboard.compat.proto import summary_pb2

    meta = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin_name, content=content)
    )
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor)])


def layout_summary(prefix: str, metrics: Sequence[str]) -> Any:
    """The custom-scalars layout: a category ``<prefix>: all layers`` with one multi-line chart per
    metric, every layer of every run (the model means have their own section, ``<prefix>``)."""
    from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.custom_scalar import metadata as cs_metadata

    def chart(title: str, regex: str) -> Any:
        return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex]))

    layers = [chart(f"{prefix}.{m}", metric_section_regex(prefix, m)) for m in metrics]
    layout = layout_pb2.Layout(category=[layout_pb2.Category(title=f"{prefix}: all layers", chart=layers)])
    tensor = tensor_pb2.TensorProto(
        dtype="DT_STRING", string_val=[layout.SerializeToString()], tensor_shape=tensor_shape_pb2.TensorShapeProto()
    )
    return _plugin_summary(cs_metadata.CONFIG_SUMMARY_TAG, cs_metadata.PLUGIN_NAME, b"", tensor)


def _hparams_summary(tag: str, data: Any) -> Any:
    from tensorboard.plugins.hparams import metadata as hp_metadata

    meta = hp_metadata.create_summary_metadata(data)
    return _plugin_summary(tag, hp_metadata.PLUGIN_NAME, meta.plugin_data.content, hp_metadata.NULL_TENSOR)


def hparams_summaries(prefix: str, hparams: Mapping[str, Union[bool, int, float, str]]) -> list[Any]:
    """HParams experiment (names, types, the ``<prefix>/mean_<m>`` metrics) and session start of one run."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2, summary_v2
    from tensorboard.plugins.hparams import metadata as hp_metadata

    def dtype(v: object) -> int:
        if isinstance(v, bool):
            return api_pb2.DATA_TYPE_BOOL
        return api_pb2.DATA_TYPE_FLOAT64 if isinstance(v, (int, float)) else api_pb2.DATA_TYPE_STRING

    now = time.time()
    experiment = api_pb2.Experiment(
        hparam_infos=[api_pb2.HParamInfo(name=k, type=dtype(v)) for k, v in hparams.items()],
        metric_infos=[
            api_pb2.MetricInfo(name=api_pb2.MetricName(tag=model_tag(prefix, f"mean_{m}")), display_name=f"mean_{m}")
            for m in SUMMARY_FIELDS
        ],
        time_created_secs=now,
    )
    return [
        _hparams_summary(hp_metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
        summary_v2.hparams_pb(dict(hparams), start_time_secs=now),
    ]


def session_end_summary() -> Any:
    """HParams session end (status success: the monitor closed)."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from tensorboard.plugins.hparams import metadata as hp_metadata

    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    return _hparams_summary(hp_metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))


class TensorBoardSink:
    """Write snapshot results to TensorBoard (see the module docstring for the tags).

    Parameters
    ----------
    writer:
        A ``SummaryWriter``-like object, or a log directory (a writer is then
        opened with :func:`open_writer` and closed by :meth:`close`).
    prefix:
        Tag stem (default ``"ww"``), without ``/``: sections are
        ``<prefix>``, ``<prefix>.<metric>`` and ``<prefix>.esd``.
    metrics:
        ``"default"`` (alpha, alpha_weighted, D, norms, stable_rank, entropy,
        rank_loss, spike counts, mp_softrank), ``"all"``, or a list of
        :class:`~wwmonitor.metrics.LayerMetrics` field names.
    images:
        Write the ESD figures the result carries (``result.figures``; drawn
        by the monitor's renderer, see ``Monitor(esd_every_n_epochs=...)``).
    close_writer:
        Close the writer in :meth:`close` (default: only if the sink opened it).
    hparams:
        The run's hyper-parameters (the callbacks pass their ``config``):
        written for the HParams dashboard (nested dicts flattened with ``/``,
        see :func:`~wwmonitor.sinks._render.hparam_values`), with the
        ``<prefix>/mean_<m>`` model means as its metrics.  ``None`` or empty:
        no HParams records.
    layout:
        Write the custom-scalars layout (once per writer).
    """

    def __init__(
        self,
        writer: Any,
        *,
        prefix: str = "ww",
        metrics: Union[str, Sequence[str]] = "default",
        images: bool = True,
        close_writer: Optional[bool] = None,
        hparams: Optional[Mapping[str, Any]] = None,
        layout: bool = True,
    ) -> None:
        owned = isinstance(writer, (str, os.PathLike))
        if owned:
            writer = open_writer(writer)
        for meth in ("add_scalar", "add_text", "flush"):
            if not callable(getattr(writer, meth, None)):
                raise TypeError(f"writer: {type(writer).__name__} has no {meth}(); pass a SummaryWriter or a log dir")
        self.writer = writer
        self.prefix = prefix.rstrip("/")
        self.metrics = resolve_metrics(metrics)
        self.wants_figures = bool(images)
        self.close_writer = owned if close_writer is None else bool(close_writer)
        self.hparams = hparam_values(hparams)
        self._session_open = False
        self._closed = False
        if layout:
            self._write_layout()
        if self.hparams:
            self._session_open = self._raw(hparams_summaries(self.prefix, self.hparams), "HParams session")

    def _raw(self, summaries: list[Any], what: str) -> bool:
        """Write raw summaries; a writer that cannot (or fails) loses only them (one log line)."""
        try:
            for summ in summaries:
                if not _add_summary(self.writer, summ):
                    log.info(
                        "wwmonitor: %s not written: %s has no add_summary() or file writer",
                        what,
                        type(self.writer).__name__,
                    )
                    return False
        except Exception as e:  # noqa: BLE001 - optional records must not cost the sink
            log.warning("wwmonitor: %s not written to TensorBoard: %s: %s", what, type(e).__name__, e)
            return False
        return True

    def _write_layout(self) -> None:
        try:
            if self.writer in _LAYOUT_WRITTEN:
                return
            _LAYOUT_WRITTEN.add(self.writer)
        except TypeError:  # not weak-referenceable: write it (TensorBoard keeps a run's first layout)
            pass
        self._raw([layout_summary(self.prefix, self.metrics)], "custom-scalars layout")

    def write(self, result: SnapshotResult) -> None:
        """Log one snapshot (called from the monitor's worker thread)."""
        w, p, step = self.writer, self.prefix, int(result.step)
        for k, v in result.summary.items():
            if v is not None and np.isfinite(v):
                w.add_scalar(model_tag(p, k), float(v), step)
        for lm in result.layers:
            for m, v in layer_scalars(lm, self.metrics).items():
                w.add_scalar(layer_tag(p, m, lm.name), v, step)
        w.add_text(f"{p}/phases", phase_markdown(result), step)
        if result.alerts:
            w.add_text(f"{p}/alerts", alerts_markdown(result), step)
        try:
            if self.wants_figures:
                write_each(result.figures.items(), lambda name, png: self._image(name, png, step), "ESD image(s)")
        finally:
            w.flush()

    def write_control(self, records: Sequence[ControlRecord]) -> None:
        """Log a controller's assignments: ``<prefix>_control/<quantity>/<layer>`` (value) and
        ``<prefix>_control/<quantity>_factor/<layer>`` at the step they took effect."""
        try:
            for step, scalars in control_scalars(records, self.prefix).items():
                for tag, v in scalars.items():
                    self.writer.add_scalar(tag, v, step)
        finally:
            self.writer.flush()

    def _image(self, name: str, png: bytes, step: int) -> None:
        tag = image_tag(self.prefix, name)
        if hasattr(self.writer, "add_png"):
            h, wd = png_size(png)
            self.writer.add_png(tag, png, h, wd, step)
        else:
            self.writer.add_image(tag, png_to_rgb(png), step, dataformats="HWC")

    def close(self) -> None:
        """End the HParams session (if one was started), flush; close the writer only if this sink owns it."""
        if self._closed:
            return
        self._closed = True
        if self._session_open:
            self._raw([session_end_summary()], "HParams session end")
        try:
            self.writer.flush()
        finally:
            if self.close_writer:
                self.writer.close()
