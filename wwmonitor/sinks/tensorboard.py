"""TensorBoard sink: per-layer scalars, model means, ESD images, phase and alert text.

What is written for a :class:`~wwmonitor.records.SnapshotResult` at
``global_step = result.step``:

* ``<prefix>/<metric>/<layer>`` -- one scalar per layer and metric (``add_scalar``,
  not ``add_scalars``, which would create one event file per key);
* ``<prefix>/model/<key>`` -- the model-level means of ``result.summary``
  (``mean_alpha`` = mean of alpha over the layers with a fit, etc.);
* ``<prefix>/esd/<layer>`` -- the layer's ESD figure (log-log density,
  power-law fit line, MP density), for the snapshots where the monitor's
  renderer drew one (``Monitor(esd_every_n_epochs=...)``);
* ``<prefix>/phases`` -- a Markdown table of each layer's phase and reason (text);
* ``<prefix>/alerts`` -- the snapshot's alerts (text), when any fired.

Writers
-------
Any object with ``add_scalar``/``add_image``/``add_text``/``flush`` works:
Lightning's ``TensorBoardLogger.experiment`` (a ``torch.utils.tensorboard``
``SummaryWriter``), one you own, or a log directory -- then a
``torch.utils.tensorboard.SummaryWriter`` when torch is importable, else
:class:`EventWriter`, which writes event files with the ``tensorboard``
package alone (no TensorFlow, no torch).

Threads: the sink is called from the monitor's worker thread while user code
may log from the training thread.  ``SummaryWriter.add_*`` only put events on
the ``EventFileWriter``'s internal queue, which is thread-safe, so sharing
Lightning's writer is safe.  :class:`EventWriter` takes a lock per event.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..records import SnapshotResult
from ._render import (
    alerts_markdown,
    layer_scalars,
    phase_markdown,
    png_size,
    png_to_rgb,
    resolve_metrics,
    sanitize_tag,
    write_each,
)

__all__ = ["TensorBoardSink", "EventWriter", "open_writer"]


class EventWriter:
    """Minimal TensorBoard event writer built on the ``tensorboard`` package only.

    Implements the subset of ``SummaryWriter`` the sink uses:
    ``add_scalar``, ``add_image`` (HWC uint8), ``add_png``, ``add_text``,
    ``flush``, ``close``.  Text is stored like ``SummaryWriter.add_text``
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
        from tensorboard.compat.proto import event_pb2, summary_pb2

        ev = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=[value]))
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


class TensorBoardSink:
    """Write snapshot results to TensorBoard (see the module docstring for the tags).

    Parameters
    ----------
    writer:
        A ``SummaryWriter``-like object, or a log directory (a writer is then
        opened with :func:`open_writer` and closed by :meth:`close`).
    prefix:
        Tag prefix (default ``"ww"``).
    metrics:
        ``"default"`` (alpha, alpha_weighted, D, norms, stable_rank, entropy,
        rank_loss, spike counts, mp_softrank), ``"all"``, or a list of
        :class:`~wwmonitor.metrics.LayerMetrics` field names.
    images:
        Write the ESD figures the result carries (``result.figures``; drawn
        by the monitor's renderer, see ``Monitor(esd_every_n_epochs=...)``).
    close_writer:
        Close the writer in :meth:`close` (default: only if the sink opened it).
    """

    def __init__(
        self,
        writer: Any,
        *,
        prefix: str = "ww",
        metrics: Union[str, Sequence[str]] = "default",
        images: bool = True,
        close_writer: Optional[bool] = None,
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

    def write(self, result: SnapshotResult) -> None:
        """Log one snapshot (called from the monitor's worker thread)."""
        w, p, step = self.writer, self.prefix, int(result.step)
        for lm in result.layers:
            tag = sanitize_tag(lm.name)
            for m, v in layer_scalars(lm, self.metrics).items():
                w.add_scalar(f"{p}/{m}/{tag}", v, step)
        for k, v in result.summary.items():
            if v is not None and np.isfinite(v):
                w.add_scalar(f"{p}/model/{k}", float(v), step)
        w.add_text(f"{p}/phases", phase_markdown(result), step)
        if result.alerts:
            w.add_text(f"{p}/alerts", alerts_markdown(result), step)
        try:
            if self.wants_figures:
                write_each(result.figures.items(), lambda name, png: self._image(name, png, step), "ESD image(s)")
        finally:
            w.flush()

    def _image(self, name: str, png: bytes, step: int) -> None:
        tag = f"{self.prefix}/esd/{sanitize_tag(name)}"
        if hasattr(self.writer, "add_png"):
            h, wd = png_size(png)
            self.writer.add_png(tag, png, h, wd, step)
        else:
            self.writer.add_image(tag, png_to_rgb(png), step, dataformats="HWC")

    def close(self) -> None:
        """Flush; close the writer only if this sink owns it."""
        try:
            self.writer.flush()
        finally:
            if self.close_writer:
                self.writer.close()
