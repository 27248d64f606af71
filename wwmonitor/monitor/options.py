"""Every option of a monitor, declared once: :class:`MonitorOptions`.

:class:`wwmonitor.Monitor` and every callback (Lightning, Keras, Hugging Face
``Trainer``) take these options as keyword arguments, under the same names,
with the same defaults and meaning; each is validated here, and an error
names the argument.  Framework-free: this module imports no training
framework and no torch.

Vocabulary
----------
``root``
    The folder that holds runs.  A run's own folder is ``root/<run_id>``:
    that is ``Monitor.run_dir`` and what ``wwmonitor report RUN_DIR`` reads.
    (Before 0.5 the constructor argument was called ``run_dir``; that
    spelling still works and warns.)
``flush_timeout``
    Seconds :meth:`Monitor.flush` / :meth:`Monitor.close` (and a callback at
    train end) wait for queued snapshots and results.  (``close_timeout``:
    old name, warns.)
``sink_timeout``
    Seconds one sink call (``write``/``close``) may take before the sink is
    dropped.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional, Sequence, TypedDict, Union

from .._validate import check_interval
from ..analyze import AnalysisOptions
from ..layers import check_lora
from .policy import DEFAULT_POLICY, POLICIES
from .priority import MAX_NICE

#: ``distributed=`` values (:mod:`wwmonitor.monitor.strategies`)
DISTRIBUTED = ("auto", "ddp", "fsdp2", "off")

__all__ = ["MonitorOptions", "MonitorKwargs", "OptionKwargs", "WANDB_STEP_METRIC", "DEPRECATED_NAMES", "split_options"]

#: the W&B step key every entry point logs its rows against (``define_metric(step_metric=...)``)
WANDB_STEP_METRIC = "ww/step"

#: the kinds a ``loggers`` mapping may name (:func:`wwmonitor.monitor.loggers.build_logger_sinks`)
LOGGER_KINDS = ("tensorboard", "wandb", "csv", "mlflow")

#: old argument name -> new one (accepted with a ``DeprecationWarning``)
DEPRECATED_NAMES = {"run_dir": "root", "close_timeout": "flush_timeout"}


@dataclass
class MonitorOptions:
    """The options of one monitor (every field is a keyword of ``Monitor`` and of every callback).

    Parameters
    ----------
    root:
        Folder that holds the runs; this run's store is ``root/<run_id>/run.sqlite``
        and ``root/<run_id>`` is the run folder (``Monitor.run_dir``).  ``None``
        (callbacks only): the framework's default (``Trainer``:
        ``<output_dir>/wwmonitor-runs``; otherwise ``"wwmonitor-runs"``).
    run_name, resume:
        Name (and folder) of the run.  An existing run of that name is
        continued only with ``resume=True``; otherwise ``<name>-2`` (``-3`` ...)
        is started and a log line says so.  Default name:
        ``run-<UTC time>-<random>``.
    every_n_epochs, every_n_steps:
        Snapshot intervals (positive integers or ``None``); the rule is
        :class:`wwmonitor.monitor.schedule.Schedule` (epoch ``e`` ends a due
        epoch when ``(e + 1) % every_n_epochs == 0``; step ``s`` is due when
        ``s > 0`` and ``s % every_n_steps == 0``).
    layers, exclude:
        Names, glob patterns, layer-type names or classes selecting the
        matrices (:func:`wwmonitor.layers.select`).
    alerts, stop_on:
        ``"default"`` (the default rules), ``None``/``False``/``"off"``, a dict of
        :class:`~wwmonitor.alerts.AlertRules` arguments, an ``AlertRules`` or
        any object with ``evaluate(result)``; ``stop_on``: the rule ids whose
        alerts stop training (:func:`wwmonitor.alerts.resolve_alerts`).
    sinks:
        Extra :class:`~wwmonitor.sinks.Sink` objects (after the run store).
    loggers:
        Where the per-layer scalars go besides the run store.  ``True``: the
        framework's own loggers (Lightning ``trainer.loggers``; the
        ``Trainer``'s ``report_to`` integrations; none for a plain ``Monitor``
        or Keras); ``False``: none; a mapping ``{"tensorboard": log_dir,
        "wandb": True | run, "csv": path, "mlflow": run_id}``: those, built by
        wwmonitor (:func:`wwmonitor.monitor.loggers.build_logger_sinks`).
    metrics:
        Scalars per layer written by the logger sinks (``"default"``, ``"all"``
        or a list; checked now).
    queue_size, policy:
        Most snapshots held at once and what to do when that many are held
        (``"latest" | "skip" | "block"``, :mod:`wwmonitor.monitor.policy`).  The
        default ``"latest"`` never makes training wait: when the analysis falls
        behind, the oldest waiting snapshot is replaced by the new one (counted in
        ``stats["coalesced"]``).  ``"block"`` analyses every snapshot and makes
        ``snapshot()`` wait for a free slot instead.
    options:
        :class:`~wwmonitor.analyze.AnalysisOptions`.
    config:
        Run configuration to store (hyper-parameters; reports read it).
    flush_timeout:
        Seconds flush/close (and a callback at train end) wait for queued work.
    sink_timeout:
        Seconds a sink's ``write``/``close`` may take before it is dropped.
    store:
        Write the run store (``True``), none (``False``), or use this
        :class:`~wwmonitor.store.RunStore`.
    analyze_fn:
        Per-matrix analysis ``(W, name, type, scale, options) -> LayerMetrics``.
    history:
        How many recent results ``Monitor.results`` keeps.
    blas_threads:
        NumPy BLAS threads of the analysis, and the analysis thread's own torch
        (OpenMP) threads on the torch routes (``None``: the library defaults).
    analysis_nice:
        How much the monitor's background threads (analysis, dispatcher and
        figures, sinks) raise their OS nice value, so training keeps priority
        (``0``..``19``; ``0``: unchanged; Linux only, elsewhere logged once and
        ignored; :mod:`wwmonitor.monitor.priority`).
    esd_every_n_epochs, esd_layers:
        ESD figure interval in epochs (``0``: never) and the layers drawn.
    analysis_device:
        ``"auto" | "cpu" | "cuda" | "cuda:N" | "torch"``.
    lora:
        ``"effective" | "effective+update" | "all"`` for peft LoRA layers.
    base_model:
        Reference of the delta metrics: ``None``, ``"first"``, a model, a
        ``state_dict`` or a checkpoint path.
    announce:
        Log the one-line coverage summary at start.
    distributed:
        ``"auto" | "ddp" | "fsdp2" | "off"``: how a model trained on several
        ranks is snapshotted (:mod:`wwmonitor.monitor.strategies`).
    carry_unchanged:
        Carry forward the previous result of a torch weight whose values have
        not changed since it was last analysed (same parameter, storage,
        version counter and bit checksum): neither copied nor re-analysed,
        marked ``status="carried"`` (:mod:`wwmonitor.monitor.unchanged`).
        ``False``: every weight is copied and analysed at every snapshot.
    """

    root: Optional[Union[str, os.PathLike]] = "wwmonitor-runs"
    run_name: Optional[str] = None
    resume: bool = False
    every_n_epochs: Optional[int] = 1
    every_n_steps: Optional[int] = None
    layers: Optional[Sequence[Any]] = None
    exclude: Optional[Sequence[Any]] = None
    alerts: Any = "default"
    stop_on: Sequence[str] = ()
    sinks: Sequence[Any] = ()
    loggers: Union[bool, Mapping[str, Any]] = True
    metrics: Union[str, Sequence[str]] = "default"
    queue_size: int = 3
    policy: str = DEFAULT_POLICY
    options: Optional[AnalysisOptions] = None
    config: Mapping[str, Any] = field(default_factory=dict)
    flush_timeout: Optional[float] = 300.0
    sink_timeout: Optional[float] = 60.0
    store: Any = True
    analyze_fn: Any = None
    history: int = 32
    blas_threads: Optional[int] = 1
    analysis_nice: int = 10
    esd_every_n_epochs: int = 5
    esd_layers: Optional[Sequence[str]] = None
    analysis_device: str = "auto"
    lora: str = "effective"
    base_model: Any = None
    announce: bool = True
    distributed: str = "auto"
    carry_unchanged: bool = True

    def __post_init__(self) -> None:
        self.every_n_epochs = check_interval("every_n_epochs", self.every_n_epochs)
        self.every_n_steps = check_interval("every_n_steps", self.every_n_steps)
        self.queue_size = int(check_interval("queue_size", self.queue_size, allow_none=False))  # type: ignore[arg-type]
        self.history = int(check_interval("history", self.history, allow_none=False))  # type: ignore[arg-type]
        if self.blas_threads is not None:
            check_interval("blas_threads", self.blas_threads)
        n = self.analysis_nice
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_NICE:
            raise ValueError(f"analysis_nice must be an integer from 0 to {MAX_NICE}, got {n!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"distributed must be one of {DISTRIBUTED}, got {self.distributed!r}")
        for name in ("flush_timeout", "sink_timeout"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise ValueError(f"{name} must be a number > 0 or None, got {v!r}")
        e = self.esd_every_n_epochs
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise ValueError(f"esd_every_n_epochs must be an integer >= 0, got {e!r}")
        self.esd_every_n_epochs = int(e)
        if self.options is not None and not isinstance(self.options, AnalysisOptions):
            raise TypeError(f"options must be an AnalysisOptions, got {type(self.options).__name__}")
        self._check_outputs()
        self.lora = check_lora(self.lora)
        from ..spectral import check_device

        self.analysis_device = check_device(self.analysis_device, "analysis_device")
        if self.config is None:  # no configuration to store (accepted before the options were unified)
            self.config = {}
        if not isinstance(self.config, Mapping):
            raise TypeError(f"config must be a mapping, got {type(self.config).__name__}")
        self.config = dict(self.config)
        self.resume, self.announce = bool(self.resume), bool(self.announce)
        self.carry_unchanged = bool(self.carry_unchanged)

    def _check_outputs(self) -> None:
        from ..alerts import resolve_alerts
        from ..sinks._render import resolve_metrics

        resolve_metrics(self.metrics)  # an unknown metric name fails now, not in the worker
        resolve_alerts(self.alerts, stop_on=self.stop_on)  # validated (a dict is built once here, then again per use)
        for i, s in enumerate(self.sinks):
            if not (callable(getattr(s, "write", None)) and callable(getattr(s, "close", None))):
                raise TypeError(f"sinks[{i}] ({type(s).__name__}) needs write(result) and close() methods")
        if not isinstance(self.loggers, (bool, Mapping)):
            kind = type(self.loggers).__name__
            raise TypeError(f"loggers must be True, False or a mapping kind -> target, got {kind}")
        if isinstance(self.loggers, Mapping):
            bad = [k for k in self.loggers if k not in LOGGER_KINDS]
            if bad:
                raise ValueError(f"loggers: unknown kind(s) {bad}; known: {list(LOGGER_KINDS)}")

    # ------------------------------------------------------------ building
    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every option name, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_kwargs(
        cls, owner: str, base: Optional["MonitorOptions"] = None, *, depth: int = 0, **kwargs: Any
    ) -> "MonitorOptions":
        """Options from keyword arguments (over ``base`` when given); old names warn
        (``DeprecationWarning``) and map to new ones; an unknown name is a ``TypeError`` naming it and
        ``owner`` (with the closest known name).  ``depth``: how many frames lie between the user's call
        and this one (beyond the first), so that the warning points at the user's line."""
        kw = _renamed(owner, kwargs, 4 + depth)
        return dataclasses.replace(base, **kw) if base is not None else cls(**kw)

    def replace(self, **changes: Any) -> "MonitorOptions":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def resolved_alerts(self) -> Any:
        """The alert rules object of these options (a fresh one from a dict or ``"default"``)."""
        from ..alerts import resolve_alerts

        return resolve_alerts(self.alerts, stop_on=self.stop_on)


class OptionKwargs(TypedDict, total=False):
    """The keyword arguments of :class:`MonitorOptions` but ``root`` (``Monitor`` takes it positionally),
    for ``**kwargs`` annotations (``Unpack``).  With :class:`MonitorKwargs`, kept equal to the
    dataclass's fields by ``tests/test_callback_options.py``.
    """

    run_name: Optional[str]
    resume: bool
    every_n_epochs: Optional[int]
    every_n_steps: Optional[int]
    layers: Optional[Sequence[Any]]
    exclude: Optional[Sequence[Any]]
    alerts: Any
    stop_on: Sequence[str]
    sinks: Sequence[Any]
    loggers: Union[bool, Mapping[str, Any]]
    metrics: Union[str, Sequence[str]]
    queue_size: int
    policy: str
    options: Optional[AnalysisOptions]
    config: Mapping[str, Any]
    flush_timeout: Optional[float]
    sink_timeout: Optional[float]
    store: Any
    analyze_fn: Any
    history: int
    blas_threads: Optional[int]
    analysis_nice: int
    esd_every_n_epochs: int
    esd_layers: Optional[Sequence[str]]
    analysis_device: str
    lora: str
    base_model: Any
    announce: bool
    distributed: str
    carry_unchanged: bool
    run_dir: Optional[Union[str, os.PathLike]]  # deprecated: root
    close_timeout: Optional[float]  # deprecated: flush_timeout


class MonitorKwargs(OptionKwargs, total=False):
    """Every keyword argument of :class:`MonitorOptions` (``Unpack``)."""

    root: Optional[Union[str, os.PathLike]]


def _renamed(owner: str, kwargs: dict[str, Any], stacklevel: int = 4) -> dict[str, Any]:
    """``kwargs`` with deprecated names mapped (and warned about); unknown names refused."""
    out = dict(kwargs)
    for old, new in DEPRECATED_NAMES.items():
        if old in out:
            if new in out:
                raise TypeError(f"{owner}: pass {new}= only ({old}= is its old name)")
            warnings.warn(
                f"{owner}: {old}= is deprecated; use {new}= (same meaning)", DeprecationWarning, stacklevel=stacklevel
            )
            out[new] = out.pop(old)
    known = MonitorOptions.names()
    for k in out:
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise TypeError(f"{owner}: unknown option {k!r}{hint}; options: {', '.join(known)}")
    return out


def split_options(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``kwargs`` split into (monitor options, the rest)."""
    known = set(MonitorOptions.names()) | set(DEPRECATED_NAMES)
    return {k: v for k, v in kwargs.items() if k in known}, {k: v for k, v in kwargs.items() if k not in known}
