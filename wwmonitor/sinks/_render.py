"""Shared helpers of the logging sinks: which scalars to log, image decoding, phase tables.

Sinks only write: ESD figures arrive already drawn, as PNG bytes in
``SnapshotResult.figures`` (the monitor's renderer stage draws each once);
here they are only decoded for writers that want pixel arrays.
"""
from __future__ import annotations

import io
import math
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from ..metrics import METRIC_NAMES, LayerMetrics
from ..records import SnapshotResult

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
)


def resolve_metrics(metrics: Union[str, Sequence[str], None]) -> tuple[str, ...]:
    """``"default"``/``None`` -> :data:`DEFAULT_SCALARS`, ``"all"`` -> every numeric metric, else the names given (checked)."""
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
    """Layer name usable inside a TensorBoard / W&B key (spaces and ``:`` replaced)."""
    return name.replace(" ", "_").replace(":", "_")


def png_size(png: bytes) -> tuple[int, int]:
    """``(height, width)`` of a PNG from its IHDR header (no decoding)."""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG image")
    return int.from_bytes(png[20:24], "big"), int.from_bytes(png[16:20], "big")


def write_each(items: Iterable[tuple[str, object]], write: "Callable[[str, object], None]", what: str) -> None:
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
        raise RuntimeError(f"{len(failed)} {what} not written ({', '.join(failed[:5])}"
                           f"{', ...' if len(failed) > 5 else ''}): {type(first).__name__}: {first}")


def png_to_rgb(png: bytes) -> np.ndarray:
    """Decode PNG bytes to an ``(H, W, 3)`` uint8 array (matplotlib's reader)."""
    import matplotlib.image as mpimg

    arr = mpimg.imread(io.BytesIO(png), format="png")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return arr[..., :3]


def phase_markdown(result: SnapshotResult) -> str:
    """Markdown table ``layer | phase | alpha | reason`` of one snapshot."""
    rows = ["| layer | phase | alpha | reason |", "|---|---|---|---|"]
    for lm in result.layers:
        a = f"{lm.alpha:.2f}" if lm.alpha is not None else "-"
        reason = (lm.phase_reason or lm.message or lm.status).replace("|", "/")
        rows.append(f"| {lm.name} | {lm.phase or lm.status} | {a} | {reason} |")
    return "\n".join(rows)


def alerts_markdown(result: SnapshotResult) -> str:
    """Markdown list of the snapshot's alerts (empty string when there are none)."""
    return "\n".join(
        f"- **{a.severity.upper()}** `{a.rule}`" + (f" ({a.layer})" if a.layer else "") + f": {a.message}"
        for a in result.alerts
    )
