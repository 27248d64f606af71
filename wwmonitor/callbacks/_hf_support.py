"""The Hugging Face ``Trainer`` callback's helpers that need only ``TrainingArguments``.

Integration sinks (TensorBoard, W&B, MLflow) are found from
``args.report_to`` -- what the user asked the Trainer to report to -- and
the run's configuration from the arguments; nothing here looks for the
``Trainer`` object (hooks are given ``args``, ``state``, ``control`` and the
model, not the trainer).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from ..distributed import UnsupportedStrategyError
from ..monitor.loggers import mlflow_sink, tensorboard_sink, wandb_sink

__all__ = ["check_strategy", "run_config", "report_to", "integration_sinks", "epoch_index", "tensorboard_dir"]

log = logging.getLogger("wwmonitor")


def epoch_index(epoch: Any) -> int:
    """0-based index of the epoch in progress from ``TrainerState.epoch`` (``1.0`` at the end of the first)."""
    e = float(epoch or 0.0)
    return max(0, math.ceil(round(e, 6)) - 1)


def check_strategy(args: Any) -> None:
    """Refuse FSDP1 and DeepSpeed on every rank, naming them; FSDP2 is monitored (the Monitor's FSDP2 strategy).

    The FSDP version is read from ``args.fsdp_config`` (``version``/``fsdp_version``, transformers' default 2)
    or, for an ``accelerate launch`` FSDP setup, from ``FSDP_VERSION`` (accelerate's default 1).  On CPU,
    accelerate (1.15) never selects FSDP: its plugin is honoured only on GPU-like devices, so a CPU run with
    ``fsdp=...`` trains as DDP and is monitored as DDP."""
    from ..sharding.detect import DEEPSPEED_MESSAGE, FSDP1_MESSAGE

    if getattr(args, "deepspeed", None) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        raise UnsupportedStrategyError(f"WeightWatcherCallback: {DEEPSPEED_MESSAGE}")
    version = None
    if getattr(args, "fsdp", None):
        cfg = getattr(args, "fsdp_config", None) or {}
        version = cfg.get("version", cfg.get("fsdp_version", 2))
    elif os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        version = os.environ.get("FSDP_VERSION", "1")
    if version is not None and int(version) != 2:
        raise UnsupportedStrategyError(
            f"WeightWatcherCallback: {FSDP1_MESSAGE} With the Trainer: fsdp_config={{'version': 2}}."
        )


def run_config(callback_module: str, args: Any, model: Any) -> dict[str, Any]:
    """What the run store records as the run's configuration (reports read it); the user's ``config`` wins."""
    world = int(getattr(args, "world_size", 1))
    base: dict[str, Any] = {
        "callback": callback_module,
        "world_size": world,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
    }
    for key in ("learning_rate", "weight_decay", "seed", "gradient_accumulation_steps"):
        if getattr(args, key, None) is not None:
            base[key] = getattr(args, key)
    per_device = getattr(args, "per_device_train_batch_size", None)
    if per_device:
        base["batch_size"] = int(per_device) * world * int(getattr(args, "gradient_accumulation_steps", 1) or 1)
    return base


def report_to(args: Any) -> list[str]:
    """The reporting integrations the Trainer was asked for (``args.report_to``, resolved by the Trainer)."""
    r = getattr(args, "report_to", None) or []
    if isinstance(r, str):
        r = [] if r == "none" else [r]
    return [str(x) for x in r]


def tensorboard_dir(args: Any, run_id: str) -> str:
    """Where the TensorBoard sink writes: ``$TENSORBOARD_LOGGING_DIR`` (the Trainer's own TensorBoard folder
    when that is set), else ``<output_dir>/runs/wwmonitor-<run_id>`` -- a TensorBoard run next to the
    Trainer's ``runs/<date>_<host>``, so ``tensorboard --logdir <output_dir>/runs`` shows both."""
    env = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if env:
        return os.path.expanduser(env)
    return os.path.join(args.output_dir, "runs", f"wwmonitor-{run_id}")


def integration_sinks(args: Any, run_id: str, metrics: Any, config: dict[str, Any]) -> list[Any]:
    """One sink per reporting integration in ``args.report_to`` (TensorBoard, W&B, MLflow); others get a
    log note; a failure is logged and training goes on."""
    sinks: list[Any] = []
    for kind in report_to(args):
        try:
            sink = _one_sink(kind, args, run_id, metrics, config)
        except Exception as e:  # a broken integration must not stop training
            log.warning("wwmonitor: could not attach to %s: %r", kind, e)
            continue
        if sink is not None:
            sinks.append(sink)
    return sinks


def _one_sink(kind: str, args: Any, run_id: str, metrics: Any, config: dict[str, Any]) -> Any:
    if kind == "tensorboard":
        return tensorboard_sink(tensorboard_dir(args, run_id), metrics, config)
    if kind == "wandb":
        import wandb

        if wandb.run is None:
            log.warning("wwmonitor: W&B reporting is on but there is no active wandb run; not logging to W&B")
            return None
        return wandb_sink(wandb.run, metrics, config)
    if kind == "mlflow":
        try:
            import wwmonitor.sinks.mlflow  # noqa: F401
        except ImportError:
            log.info("wwmonitor: no MLflow sink in this wwmonitor (wwmonitor.sinks.mlflow); not logging to MLflow")
            return None
        import mlflow

        run = mlflow.active_run()
        if run is None:
            log.warning("wwmonitor: MLflow reporting is on but there is no active MLflow run; not logging to MLflow")
            return None
        return mlflow_sink(run.info.run_id, metrics, config)
    log.info(
        "wwmonitor: reporting integration %s is not supported; only the run store gets its results "
        "(supported: tensorboard, wandb, mlflow)",
        kind,
    )
    return None
