"""Shared helpers of the logging sinks: which scalars to log, tag names, image decoding, phase tables.

Sinks only write: ESD figures arrive already drawn, as PNG bytes in
``SnapshotResult.figures`` (the monitor's renderer stage draws each once);
here they are only decoded for writers that want pixel arrays.

Tag layout (TensorBoard and W&B, ``prefix`` defaults to ``"ww"``)
-----------------------------------------------------------------
Both tools put a tag in the section named by its first ``/`` segment, so the
section is chosen by everything before the first ``/``:

* ``<prefix>/<key>`` (:func:`model_tag`) -- the model-level summary
  (``ww/mean_alpha``, ``ww/num_ok``, ...) in the section ``ww``.  A name
  sorts before every longer name it begins with, so ``ww`` comes before the
  ``ww.<metric>`` sections in TensorBoard (natural sort of tags) and W&B
  (alphabetical sections);
* ``<prefix>.<metric>/<layer>`` (:func:`layer_tag`) -- one section per
  metric (``ww.alpha``, ``ww.stable_rank``, ...) holding one card per layer;
* ``<prefix>.esd/<layer>`` (:func:`image_tag`) -- the ESD images in a section
  of their own.

The layer part goes through :func:`sanitize_tag`, the one rule both sinks
use: ``/`` becomes ``.``, so a Keras ``block1/dense`` stays inside its
metric's section (``ww.alpha/block1.dense``).
"""

from __future__ import annotations

import io
import math
import re
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, TypeVar, Union

import numpy as np

from ..metrics import CARRIED, METRIC_NAMES, LayerMetrics
from ..records import ControlRecord, SnapshotResult

__all__ = [
    "DEFAULT_SCALARS",
    "resolve_metrics",
    "layer_scalars",
    "png_to_rgb",
    "png_size",
    "write_each",
    "phase_markdown",
    "alerts_markdown",
    "sanitize_tag",
    "model_tag",
    "layer_tag",
    "image_tag",
    "metric_section_regex",
    "control_scalars",
    "hparam_values",
    "plain_config",
]

#: metrics logged per layer by default (``metrics="all"`` logs every numeric field)
DEFAULT_SCALARS: tuple[str, ...] = (
    "alpha",
    "alpha_weighted",
    "D",
    "log_norm",
    "log_spectral_norm",
    "log_alpha_norm",
    "stable_rank",
    "entropy",
    "rank_loss",
    "num_pl_spikes",
    "mp_softrank",
    "num_spikes",
    "detX_num",
    "ERG_gap",
    "delta_rel_norm",
)


def resolve_metrics(metrics: Union[str, Sequence[str], None]) -> tuple[str, ...]:
    """``"default"``/``None`` -> :data:`DEFAULT_SCALARS`, ``"all"`` -> every numeric metric, else the names given
    (checked)."""
    if metrics is None or metrics == "default":
        return DEFAULT_SCALARS
    if metrics == "all":
        return METRIC_NAMES
    if isinstance(metrics, str):
        metrics = [metrics]
    names = tuple(metrics)
    bad = [m for m in names if m not in METRIC_NAMES]
    if bad:
        raise ValueError(f"metrics: unknown metric name(s) {bad}; known: {list(METRIC_NAMES)}")
    return names


def layer_scalars(lm: LayerMetrics, metrics: Iterable[str]) -> dict[str, float]:
    """The finite values among ``metrics`` of one layer (``None``/NaN are left out, never logged as 0)."""
    out: dict[str, float] = {}
    for m in metrics:
        v = getattr(lm, m, None)
        if v is None or isinstance(v, bool):
            continue
        fv = float(v)
        if math.isfinite(fv):
            out[m] = fv
    return out


def sanitize_tag(name: str) -> str:
    """A layer name as one segment of a TensorBoard / W&B key.

    ``/`` becomes ``.`` (a Keras ``block1/dense`` would otherwise open
    sections of its own), spaces and ``:`` become ``_``; leading and
    trailing ``/`` are dropped.

    >>> sanitize_tag("block1/dense"), sanitize_tag("enc.fc1"), sanitize_tag("dense 1:0")
    ('block1.dense', 'enc.fc1', 'dense_1_0')
    """
    return name.strip("/").replace("/", ".").replace(" ", "_").replace(":", "_")


def model_tag(prefix: str, key: str) -> str:
    """Tag of a model-level summary value: ``ww/mean_alpha`` (section ``ww``, sorted first)."""
    return f"{prefix}/{key}"


def layer_tag(prefix: str, metric: str, layer: str) -> str:
    """Tag of one layer's metric: ``ww.alpha/enc.fc1`` (one section per metric)."""
    return f"{prefix}.{metric}/{sanitize_tag(layer)}"


def image_tag(prefix: str, layer: str) -> str:
    """Tag of one layer's ESD image: ``ww.esd/enc.fc1`` (the images' own section)."""
    return f"{prefix}.esd/{sanitize_tag(layer)}"


def control_scalars(records: Iterable[ControlRecord], prefix: str) -> dict[int, dict[str, float]]:
    """A controller's assignments as scalars by step: ``<prefix>_control/<quantity>/<layer>`` -> the value
    the update used (base × factor) and ``<prefix>_control/<quantity>_factor/<layer>`` -> the factor."""
    out: dict[int, dict[str, float]] = {}
    for r in records:
        row = out.setdefault(int(r.step), {})
        layer = sanitize_tag(r.layer)
        if math.isfinite(float(r.value)):
            row[f"{prefix}_control/{r.quantity}/{layer}"] = float(r.value)
        row[f"{prefix}_control/{r.quantity}_factor/{layer}"] = float(r.factor)
    return out


def metric_section_regex(prefix: str, metric: str) -> str:
    """Regex matching every layer tag of ``metric`` (``ww\\.alpha/.*``), as TensorBoard's custom scalars use it."""
    return re.escape(f"{prefix}.{metric}/") + ".*"


def _hparam_value(v: Any) -> Union[bool, int, float, str]:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    return str(v)


def hparam_values(config: Optional[Mapping[str, Any]]) -> dict[str, Union[bool, int, float, str]]:
    """A run config as TensorBoard HParams values: nested dicts flattened with ``/``,
    bool/int/float/str kept, everything else (``None``, lists, objects, NaN) as its ``str``.

    >>> hparam_values({"lr": 0.1, "opt": {"name": "sgd", "betas": (0.9, 0.99)}, "seed": None})
    {'lr': 0.1, 'opt/name': 'sgd', 'opt/betas': '(0.9, 0.99)', 'seed': 'None'}
    """
    out: dict[str, Union[bool, int, float, str]] = {}

    def walk(d: Mapping[Any, Any], stem: str) -> None:
        for k, v in d.items():
            key = f"{stem}{k}"
            if isinstance(v, Mapping) and v:
                walk(v, key + "/")
            else:
                out[key] = _hparam_value(v)

    walk(config or {}, "")
    return out


def plain_config(config: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """A run config with JSON-friendly leaves for W&B's ``run.config`` (nesting kept;
    numpy scalars as Python numbers, lists of plain values kept, other objects as ``str``)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, np.generic):
            v = v.item()
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return str(v)

    return {str(k): plain(v) for k, v in (config or {}).items()}


def png_size(png: bytes) -> tuple[int, int]:
    """``(height, width)`` of a PNG from its IHDR header (no decoding)."""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG image")
    return int.from_bytes(png[20:24], "big"), int.from_bytes(png[16:20], "big")


_Item = TypeVar("_Item")


def write_each(items: Iterable[tuple[str, _Item]], write: Callable[[str, _Item], None], what: str) -> None:
    """Call ``write(key, item)`` for every item; a failing item loses only itself.

    After all items, raises one ``RuntimeError`` naming the keys that failed
    (so the dispatcher counts and reports it) -- the other items are written.
    """
    failed: list[str] = []
    first: Optional[BaseException] = None
    for key, item in items:
        try:
            write(key, item)
        except Exception as e:  # noqa: BLE001 - collected and raised once below
            failed.append(key)
            first = first or e
    if failed:
        raise RuntimeError(
            f"{len(failed)} {what} not written ({', '.join(failed[:5])}"
            f"{', ...' if len(failed) > 5 else ''}): {type(first).__name__}: {first}"
        )


def png_to_rgb(png: bytes) -> np.ndarray:
    """Decode PNG bytes to an ``(H, W, 3)`` uint8 array (matplotlib's reader)."""
    import matplotlib.image as mpimg

    arr = mpimg.imread(io.BytesIO(png), format="png")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return arr[..., :3]


def phase_markdown(result: SnapshotResult) -> str:
    """Markdown table ``layer | phase | alpha | reason`` of one snapshot (a carried layer: its reason
    starts with ``carried, unchanged since step N``)."""
    rows = ["| layer | phase | alpha | reason |", "|---|---|---|---|"]
    for lm in result.layers:
        a = f"{lm.alpha:.2f}" if lm.alpha is not None else "-"
        reason = (lm.phase_reason or lm.message or lm.status).replace("|", "/")
        if lm.status == CARRIED:
            reason = f"carried, {lm.message.split(';')[0]}: {reason}"
        rows.append(f"| {lm.name} | {lm.phase or lm.status} | {a} | {reason} |")
    return "\n".join(rows)


def alerts_markdown(result: SnapshotResult) -> str:
    """Markdown list of the snapshot's alerts (empty string when there are none)."""
    return "\n".join(
        f"- **{a.severity.upper()}** `{a.rule}`" + (f" ({a.layer})" if a.layer else "") + f": {a.message}"
        for a in result.alerts
    )
