"""Logger sinks built the same way for every entry point.

:func:`build_logger_sinks` turns a ``loggers={kind: target}`` mapping into
sinks; the framework callbacks discover their framework's loggers and build
theirs with the same helpers (:func:`tensorboard_sink`, :func:`wandb_sink`,
:func:`csv_sink`, :func:`mlflow_sink`), so the keys written (TensorBoard
tags ``ww/...``, the W&B step key :data:`~wwmonitor.monitor.options.WANDB_STEP_METRIC`)
are the same whichever entry point trained the model.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

from .options import LOGGER_KINDS, WANDB_STEP_METRIC

__all__ = ["LOGGER_KINDS", "build_logger_sinks", "tensorboard_sink", "wandb_sink", "csv_sink", "mlflow_sink"]

Metrics = Union[str, Sequence[str]]


def tensorboard_sink(target: Any, metrics: Metrics, hparams: Mapping[str, Any], *, shared: bool = False) -> Any:
    """A TensorBoard sink writing to ``target`` (a log dir, or a framework's ``SummaryWriter`` when ``shared``:
    then the writer is left open for its owner)."""
    from ..sinks.tensorboard import TensorBoardSink

    kw: dict[str, Any] = {"close_writer": False} if shared else {}
    return TensorBoardSink(target, metrics=metrics, hparams=dict(hparams), **kw)


def wandb_sink(run: Any, metrics: Metrics, hparams: Mapping[str, Any], deliver: str = "deferred") -> Any:
    """A W&B sink for ``run`` (``True``: the active ``wandb.run``, else ``wandb.init()``), rows keyed by
    :data:`WANDB_STEP_METRIC`; ``deliver="deferred"`` (callbacks): logged from the training thread by
    ``pump``; ``"direct"`` (a plain ``Monitor``): logged by the sink's own thread."""
    from ..sinks.wandb import WandbSink

    if run is True:
        import wandb

        run = wandb.run if wandb.run is not None else wandb.init()
    return WandbSink(run, step_metric=WANDB_STEP_METRIC, metrics=metrics, deliver=deliver, hparams=dict(hparams))


def csv_sink(path: Any, metrics: Metrics = "all") -> Any:
    """A CSV sink (long format) at ``path`` (a ``.csv`` file or a folder)."""
    from ..sinks.csv import CSVSink

    return CSVSink(path, metrics=metrics)


def mlflow_sink(run_id: Any, metrics: Metrics, params: Mapping[str, Any], client: Optional[Any] = None) -> Any:
    """An MLflow sink for ``run_id`` (``None``/``True``: the active MLflow run)."""
    from ..sinks.mlflow import MLflowSink

    return MLflowSink(None if run_id is True else run_id, client=client, metrics=metrics, params=dict(params))


def build_logger_sinks(
    loggers: Mapping[str, Any], metrics: Metrics, hparams: Mapping[str, Any], *, deliver: str = "direct"
) -> list[Any]:
    """Sinks for ``{"tensorboard": log_dir, "wandb": True | run, "csv": path, "mlflow": run_id}``.

    ``deliver``: how the W&B sink logs (``"direct"``: its own thread, for a plain ``Monitor``, where
    no other thread uses the run; ``"deferred"``: the callbacks' training thread, :meth:`pump`).

    A ``None`` or ``False`` target is skipped.  An error building one is raised
    with the kind named (a misconfigured logger should fail at train start,
    not drop results silently).
    """
    out: list[Any] = []
    for kind, target in loggers.items():
        if target is None or target is False:
            continue
        try:
            if kind == "tensorboard":
                out.append(tensorboard_sink(target, metrics, hparams))
            elif kind == "wandb":
                out.append(wandb_sink(target, metrics, hparams, deliver))
            elif kind == "csv":
                out.append(csv_sink(target))
            elif kind == "mlflow":
                out.append(mlflow_sink(target, metrics, hparams))
            else:
                raise ValueError(f"unknown kind; known: {list(LOGGER_KINDS)}")
        except (ValueError, TypeError) as e:
            raise type(e)(f"loggers[{kind!r}]: {e}") from e
    return out
