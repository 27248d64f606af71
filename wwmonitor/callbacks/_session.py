"""The framework-free core every callback drives: :class:`CallbackSession`.

A callback (Lightning, Keras, Hugging Face ``Trainer``) only translates its
framework's hooks into these calls; everything else is decided here, once:

* **options**: :class:`~wwmonitor.monitor.options.MonitorOptions` (every
  ``Monitor`` option, same names and meaning), built from the callback's
  keyword arguments;
* **schedule**: :class:`~wwmonitor.monitor.schedule.Schedule` -- the same
  rule as a plain ``Monitor`` (step 0 is never on the step interval; a step
  already snapshotted is skipped);
* **opening or resuming** the monitor (:meth:`CallbackSession.open`): a
  :class:`~wwmonitor.Monitor` on every rank -- under DDP/FSDP2 its snapshot
  strategy analyses this rank's share and rank 0 alone files results (store,
  alerts, sinks; :mod:`wwmonitor.callbacks._sharding`) -- the run of a
  restored checkpoint continued;
* **state** saved in and restored from checkpoints (:meth:`state_dict`,
  :meth:`load_state_dict`; JSON-able);
* the **stop decision**'s local half (:meth:`stop_requested`; the framework
  makes it collective) and its one log line;
* **sinks**: logger sinks found by the framework (:meth:`add_sinks`) and W&B
  rows delivered from the training thread (:meth:`pump`);
* **closing** (:meth:`finish`, :meth:`close`).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Sequence

from ..monitor.options import MonitorOptions
from ..monitor.schedule import Schedule
from ._sharding import monitor_distributed

__all__ = ["CallbackSession", "STATE_VERSION"]

log = logging.getLogger("wwmonitor")

#: version of the checkpoint state a callback saves
STATE_VERSION = 1


class CallbackSession:
    """One callback's monitoring across fits (see the module docstring).

    Parameters
    ----------
    owner:
        The callback's name, for messages (``"WeightWatcherCallback (Keras)"``).
    every_n_epochs, every_n_steps:
        The intervals (at least one must be set: a callback decides when to snapshot).
    options:
        The other :class:`MonitorOptions` keyword arguments (old names warn).
    """

    def __init__(
        self, owner: str, every_n_epochs: Optional[int], every_n_steps: Optional[int], options: Mapping[str, Any]
    ) -> None:
        self.owner = owner
        self.opts = MonitorOptions.from_kwargs(  # depth 1: the callback's __init__ -> here
            owner, every_n_epochs=every_n_epochs, every_n_steps=every_n_steps, depth=1, **dict(options)
        )
        self.schedule = Schedule(self.opts.every_n_epochs, self.opts.every_n_steps)
        if self.schedule.never:
            raise ValueError(f"{owner}: every_n_epochs and every_n_steps are both None: it would never snapshot")
        #: the alert rules (kept across fits: their hysteresis state goes into checkpoints)
        self.alert_rules = self.opts.resolved_alerts()
        self.monitor: Any = None  # this rank's monitor (rank 0: store, alerts, sinks); kept, closed, after a fit
        self.errors = 0  # snapshots that raised (logged; training continues)
        self.rank, self.world = 0, 1
        self.last_step: Optional[int] = None
        self.stopped_by_alert = False
        #: the logger sinks found in the framework (rank 0)
        self.sinks: list[Any] = []
        self._pending: Optional[dict[str, Any]] = None

    def configure(self, **changes: Any) -> None:
        """Change options (validated) before the next :meth:`open`; interval changes are refused."""
        bad = {"every_n_epochs", "every_n_steps"} & set(changes)
        if bad:
            raise ValueError(f"{self.owner}: the intervals are fixed at construction ({sorted(bad)})")
        self.opts = MonitorOptions.from_kwargs(self.owner, self.opts, **changes)
        if {"alerts", "stop_on"} & set(changes):
            self.alert_rules = self.opts.resolved_alerts()

    # ------------------------------------------------------------ opening
    def open(
        self,
        model: Any,
        *,
        rank: int = 0,
        world: int = 1,
        root: Any = None,
        sinks: Sequence[Any] = (),
        config: Optional[Mapping[str, Any]] = None,
        restored: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Start monitoring ``model`` for one fit (every rank calls it).

        ``root`` overrides the option when the option is ``None`` (the
        framework's default folder); ``sinks`` are the framework's logger
        sinks; ``config`` the framework's hyper-parameters (the user's
        ``config`` option wins); ``restored`` a checkpoint's state
        (:meth:`state_dict`), else the state given to :meth:`load_state_dict`.
        """
        self.close()  # a second fit with the same callback starts cleanly
        self.last_step, self.stopped_by_alert, self.sinks = None, False, list(sinks)
        self.rank, self.world = int(rank), int(world)
        state = dict(restored) if restored else self._pending
        self._pending = None
        run_root = self.opts.root if self.opts.root is not None else (root or "wwmonitor-runs")
        try:  # every rank: under DDP / FSDP2 the Monitor's strategy analyses this rank's share
            self.monitor = self._open_monitor(model, run_root, config, state)
        except ValueError as e:
            raise ValueError(f"{self.owner}: {e}") from e
        given = [id(s) for s in self.opts.sinks] + [id(self.monitor.store)]
        self.sinks = [s for s in self.monitor.sinks if id(s) not in given]  # framework's and `loggers` sinks
        self._apply(state)

    def _open_monitor(
        self, model: Any, root: Any, config: Optional[Mapping[str, Any]], state: Optional[Mapping[str, Any]]
    ) -> Any:
        from ..monitor import Monitor

        run = (state or {}).get("monitor") or {}
        kw: dict[str, Any] = {"root": root, "run_name": self.opts.run_name, "resume": self.opts.resume}
        if run.get("run_id"):  # a restored checkpoint: continue its run
            kw = {"root": run.get("run_root") or root, "run_name": run["run_id"], "resume": True}
        settings = self.opts.replace(
            every_n_epochs=None,  # the session decides when; the monitor takes every call
            every_n_steps=None,
            alerts=self.alert_rules,
            stop_on=(),
            sinks=[*self.opts.sinks, *self.sinks, *self._mapped_sinks(config)],
            loggers=False,  # built here, W&B delivered from the training thread (pump)
            config={**(config or {}), **self.opts.config},
            distributed=monitor_distributed(model, self.world, self.opts.distributed),
            **kw,
        )
        return Monitor(model, settings=settings)

    def _mapped_sinks(self, config: Optional[Mapping[str, Any]]) -> list[Any]:
        """The sinks of a ``loggers={kind: target}`` mapping (W&B deferred: pumped on the training thread)."""
        from ..monitor.loggers import build_logger_sinks

        if not isinstance(self.opts.loggers, Mapping):
            return []
        hparams = {**(config or {}), **self.opts.config}
        return build_logger_sinks(self.opts.loggers, self.opts.metrics, hparams, deliver="deferred")

    def add_sinks(self, sinks: Sequence[Any]) -> None:
        """Attach logger sinks found after :meth:`open` (rank 0; a failure is logged, training goes on)."""
        for sink in sinks:
            if self.monitor is None:
                return
            try:
                self.monitor.add_sink(sink)
            except Exception as e:  # a closed monitor: reported, training continues
                log.warning("wwmonitor: could not add the %s sink: %r", type(sink).__name__, e)
                continue
            self.sinks.append(sink)

    # ------------------------------------------------------------ schedule
    def on_step(self, step: int, epoch: int, model: Any = None) -> bool:
        """A step ended (``step``: optimizer steps done): snapshot when it is due. Returns whether it was."""
        due = self.schedule.step_due(step)
        if due:
            self.snapshot(step, epoch, epoch_end=False, model=model)
        return due

    def on_epoch_end(self, epoch: int, step: int, model: Any = None) -> bool:
        """Epoch ``epoch`` (0-based) ended at ``step``: snapshot when it is due. Returns whether it was."""
        due = self.schedule.epoch_due(epoch)
        if due:
            self.snapshot(step, epoch, epoch_end=True, model=model)
        return due

    def snapshot(self, step: int, epoch: Optional[int], *, epoch_end: bool, model: Any = None) -> None:
        """Snapshot ``step`` unless it was already taken (resume, or a step snapshot at an epoch's last step)."""
        if self.last_step is not None and step <= self.last_step:
            return
        self.last_step = step
        if self.monitor is None:
            return
        kw: dict[str, Any] = {"step": step, "epoch": epoch, "epoch_end": epoch_end}
        if model is not None:
            kw["model"] = model
        try:  # every rank (a collective under FSDP2); a failure is reported and training goes on
            self.monitor.snapshot(**kw)
        except Exception as e:
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning(
                    "wwmonitor: snapshot at step %s failed (%s: %s); training continues (%d failure(s))",
                    step,
                    type(e).__name__,
                    e,
                    self.errors,
                )

    # ------------------------------------------------------------ stop decision
    def stop_requested(self) -> bool:
        """This rank's half of the stop decision: an alert in ``stop_on`` fired (rank 0 only knows)."""
        return bool(self.monitor is not None and self.monitor.should_stop)

    def note_stop(self, where: str) -> bool:
        """Record that training stops on an alert; logs one line (rank 0) the first time. Returns whether
        this was the first time."""
        if self.stopped_by_alert:
            return False
        self.stopped_by_alert = True
        if self.rank == 0:
            a = self.monitor.stop_alert if self.monitor is not None else None
            why = f" ({a.rule}: {a.message})" if a is not None else ""
            log.warning("wwmonitor: stopping training %s on an alert%s", where, why)
        return True

    # ------------------------------------------------------------ W&B rows
    def pump(self) -> None:
        """Deliver the rows deferred W&B sinks queued (training thread); a failure is logged, never raised."""
        every = [*self.opts.sinks, *self.sinks]
        for s in {id(s): s for s in every}.values():
            if callable(getattr(s, "pump", None)):
                try:
                    s.pump()
                except Exception as e:
                    log.warning("wwmonitor: W&B logging failed: %r", e)

    # ------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """The monitor's run, the last snapshotted step and the alert rules' state (JSON-able)."""
        rules = self.alert_rules
        return {
            "version": STATE_VERSION,
            "monitor": self.monitor.state_dict() if self.monitor is not None else None,
            "last_step": self.last_step,
            "alerts": rules.state_dict() if callable(getattr(rules, "state_dict", None)) else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output now (monitor open) or at the next :meth:`open`."""
        if self.monitor is None:
            self._pending = dict(state)
        else:
            self._apply(state)

    def _apply(self, state: Optional[Mapping[str, Any]]) -> None:
        if not state:
            return
        if self.monitor is not None and state.get("monitor"):
            self.monitor.load_state_dict(state["monitor"])
        rules = self.alert_rules
        if state.get("alerts") and callable(getattr(rules, "load_state_dict", None)):
            rules.load_state_dict(state["alerts"])
        if state.get("last_step") is not None:
            self.last_step = int(state["last_step"])

    # ------------------------------------------------------------ closing
    def finish(self) -> None:
        """Train end (every rank): wait for the analysis (under DDP / FSDP2 the last gathers), deliver W&B rows."""
        if self.monitor is not None:
            self.monitor.flush(self.opts.flush_timeout)
        self.pump()

    def close(self, timeout: Optional[float] = None) -> None:
        """Close the monitor (idempotent); it stays readable (results, run_dir)."""
        if self.monitor is not None:
            try:
                self.monitor.close(timeout)
            except Exception as e:
                log.warning("wwmonitor: closing the monitor failed: %r", e)
        self.pump()
