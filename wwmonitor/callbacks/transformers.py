"""Hugging Face ``transformers.Trainer`` callback.

Example::

    from transformers import Trainer, TrainingArguments
    from wwmonitor.callbacks.transformers import WeightWatcherCallback

    args = TrainingArguments("out", num_train_epochs=3, report_to=["tensorboard", "wandb"])
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[WeightWatcherCallback(every_n_steps=500)])
    trainer.train()                       # run store in out/wwmonitor-runs/<run>/run.sqlite

Per-layer learning rates / weight decays from the spectra (TempBalance,
AlphaDecay; docs/controllers.md): :class:`WWControlCallback` (from
:mod:`._hf_control`), given the controller and this callback.

Hooks used (and why)
--------------------
Every hook gets ``(args, state, control)`` and, as keyword arguments, the
model, optimizer and data loaders (``CallbackHandler.call_event``); the
callback uses nothing else -- it never looks for the ``Trainer`` object.

``on_train_begin``   refuse FSDP1/DeepSpeed (every rank), open the session's
                     monitor; when ``trainer.train(resume_from_checkpoint=...)``
                     restored a ``TrainerState`` (``global_step > 0``), read
                     this callback's state from its ``stateful_callbacks`` and
                     continue that run.
``on_step_begin``    attach the logger sinks once, for ``args.report_to`` (every
                     integration has set up its run by then).
``on_step_end``      snapshot when the step is due (``state.global_step``; once
                     per optimizer step, also with gradient accumulation);
                     deliver W&B rows; the stop decision.
``on_epoch_end``     snapshot when the epoch is due; deliver W&B rows; the
                     stop decision (collective under DDP).
``on_train_end``     the final DDP gather, wait for the analysis, close.

Both snapshot hooks run before the Trainer saves a checkpoint at that step,
so a checkpoint's state includes the snapshot of its own step.

Checkpoints
-----------
The callback is an ``ExportableState``: ``state()`` goes into the
checkpoint's ``trainer_state.json`` (``stateful_callbacks``) -- the monitor's
run folder and id, the last snapshotted step and the alert rules'
hysteresis state, all JSON.  On resume the callback reads it back itself, so
``restore_callback_states_from_checkpoint`` need not be set.  When it is
set, the Trainer replaces this callback by a new one built from
``state()["args"]``: the callback's JSON-able options (the replacement
continues the same run; options that cannot be written as JSON -- objects
such as an ``AlertRules`` or a model -- take their defaults there, and the
replacement logs which).

Distributed
-----------
Under DDP (``torchrun`` / ``accelerate launch``) and FSDP2 every rank builds a
Monitor (the shared :class:`wwmonitor.callbacks._session.CallbackSession`):
matrix ``i`` is analysed on rank ``i mod world_size``, rank 0 alone writes.
FSDP1 and DeepSpeed are refused at train begin, by name.  FSDP2 under the
Trainer has not run here: on CPU accelerate 1.15 ignores the FSDP plugin (it
selects FSDP only for GPU-like devices) and trains as DDP, which is what is
monitored.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

from transformers.trainer_callback import TrainerCallback

try:  # transformers >= 4.41: callback state saved in checkpoints
    from transformers.trainer_callback import ExportableState
except ImportError:  # pragma: no cover - older transformers: no callback state in checkpoints

    class ExportableState:  # type: ignore[no-redef]
        pass


from ..distributed import broadcast_object
from ._hf_support import check_strategy, epoch_index, integration_sinks, run_config
from ._options import SessionAttributes
from ._session import STATE_VERSION, CallbackSession

__all__ = ["WeightWatcherCallback", "WWControlCallback"]

log = logging.getLogger("wwmonitor")

_RUN_SUBDIR = "wwmonitor-runs"


def _json_able(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


class WeightWatcherCallback(SessionAttributes, TrainerCallback, ExportableState):
    """Monitor weight spectra during ``Trainer.train`` (see the module docstring for the hooks).

    Parameters
    ----------
    every_n_epochs:
        Snapshot at the end of every n-th epoch (``None``: never at epoch end).
    every_n_steps:
        Also snapshot every n optimizer steps (``state.global_step``; step 0 never).
    state_key:
        Identifies this callback's state in checkpoints (default: class name
        plus run name and intervals; give distinct keys to two instances).
    **options:
        Every :class:`wwmonitor.Monitor` option, same names and meaning
        (:class:`~wwmonitor.monitor.options.MonitorOptions`).  ``root``
        defaults to ``<TrainingArguments.output_dir>/wwmonitor-runs``;
        ``loggers=True`` (default) writes to the integrations in
        ``report_to`` (TensorBoard, W&B, MLflow); ``stop_on`` sets
        ``control.should_training_stop``; ``lora``/``base_model`` work as in
        ``Monitor`` (a peft model's LoRA layers are read as the weight they
        compute with).  ``trainer.train(resume_from_checkpoint=...)``
        continues the run of that checkpoint; a fresh ``train`` with a used
        ``run_name`` starts ``<run_name>-2`` (and says so) unless ``resume=True``.
    """

    def __init__(
        self,
        every_n_epochs: Optional[int] = 1,
        every_n_steps: Optional[int] = None,
        *,
        state_key: Optional[str] = None,
        _not_restored: Optional[list[str]] = None,
        **options: Any,
    ) -> None:
        options.setdefault("root", None)  # <output_dir>/wwmonitor-runs, decided at train begin
        self.session = CallbackSession("WeightWatcherCallback (Trainer)", every_n_epochs, every_n_steps, options)
        self._state_key = state_key
        given = {"every_n_epochs": every_n_epochs, "every_n_steps": every_n_steps, "state_key": state_key, **options}
        #: the constructor's options the Trainer can re-create this callback from (``state()["args"]``)
        self._args = {k: v for k, v in given.items() if _json_able(v)}
        self._args["_not_restored"] = sorted(k for k in given if k not in self._args)
        if _not_restored:
            log.warning(
                "wwmonitor: the Trainer re-created WeightWatcherCallback from its checkpoint "
                "(restore_callback_states_from_checkpoint); options %s are not JSON and take their defaults",
                _not_restored,
            )
        self._sinks_attached = True
        #: the configuration recorded with the run (TrainingArguments' hyper-parameters, then ``config``)
        self.run_config: dict[str, Any] = {}

    # ------------------------------------------------------------ checkpoint state
    @property
    def state_key(self) -> str:
        if self._state_key:
            return self._state_key
        return (
            f"{type(self).__qualname__}{{run_name={self.settings.run_name!r}, every_n_epochs={self.every_n_epochs}, "
            f"every_n_steps={self.every_n_steps}}}"
        )

    def state_dict(self) -> dict[str, Any]:
        """The monitor's run, the last snapshotted step and the alert state (JSON-able)."""
        return {"key": self.state_key, **self.session.state_dict()}

    def state(self) -> dict[str, Any]:
        """``ExportableState``: what the Trainer stores in ``trainer_state.json`` at each checkpoint."""
        return {"args": dict(self._args), "attributes": {}, "wwmonitor": self.state_dict()}

    def _stored_state(self, state: Any) -> Optional[dict[str, Any]]:
        """This callback's entry in a restored ``TrainerState.stateful_callbacks`` (the last saved one)."""
        found = []
        for entry in (getattr(state, "stateful_callbacks", None) or {}).values():
            for d in entry if isinstance(entry, list) else [entry]:
                ww = d.get("wwmonitor") if isinstance(d, dict) else None
                if isinstance(ww, dict) and ww.get("version") == STATE_VERSION:
                    found.append(ww)
        mine = [d for d in found if d.get("key") == self.state_key]
        if mine:
            return mine[-1]
        keys = {d.get("key") for d in found}
        if len(keys) == 1 and not self._state_key:
            # one wwmonitor callback in the checkpoint, under another default key (e.g. every_n_steps changed)
            log.info("wwmonitor: continuing the run of the checkpoint's callback %s", next(iter(keys)))
            return found[-1]
        if found:
            log.warning(
                "wwmonitor: the checkpoint holds wwmonitor state under %s but none under this callback's "
                "key %r; starting a new run",
                sorted(map(str, keys)),
                self.state_key,
            )
        return None

    # ------------------------------------------------------------ Trainer hooks
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        check_strategy(args)  # on every rank, before anything runs
        if model is None:
            raise ValueError("WeightWatcherCallback: the Trainer passed no model to on_train_begin")
        rank, world = int(getattr(args, "process_index", 0)), int(getattr(args, "world_size", 1))
        # absolute: the checkpoint's state names it, and a resume may run from elsewhere
        root = os.path.abspath(os.path.join(args.output_dir, _RUN_SUBDIR))
        stored = self._stored_state(state) if int(state.global_step) > 0 else None  # resumed from a checkpoint
        self.run_config = {**run_config(type(self).__module__, args, model), **self.settings.config}
        self.session.open(model, rank=rank, world=world, root=root, config=self.run_config, restored=stored)
        self._sinks_attached = not (self.settings.loggers is True and rank == 0)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._attach_sinks(args)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        due = self.session.on_step(int(state.global_step), epoch_index(state.epoch), model=model)
        self.session.pump()
        if due or self.session.world == 1:  # under DDP only where every rank decides together
            self._stop_decision(state, control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._attach_sinks(args)
        self.session.on_epoch_end(epoch_index(state.epoch), int(state.global_step), model=model)
        self.session.pump()
        self._stop_decision(state, control)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._attach_sinks(args)  # (a train that ran no step)
        self.session.finish()
        self.session.close()

    # ------------------------------------------------------------ internals
    def _attach_sinks(self, args: Any) -> None:
        """Rank 0, once per train: a sink for each reporting integration in ``args.report_to``."""
        if self._sinks_attached:
            return
        self._sinks_attached = True
        mon = self.session.monitor
        if mon is not None:
            self.session.add_sinks(integration_sinks(args, mon.run_id, self.settings.metrics, self.run_config))

    def _stop_decision(self, state: Any, control: Any) -> None:
        local = self.session.stop_requested()
        world = self.session.world
        decision = bool(broadcast_object(local, src=0)) if world > 1 else local  # collective under DDP
        if decision:
            control.should_training_stop = True
            self.session.note_stop(f"at step {int(state.global_step)} (epoch {float(state.epoch or 0.0):.2f})")

    def close(self, timeout: Optional[float] = None) -> None:
        """Close the monitor now (idempotent).  ``train()`` closes it at its end; call this after a
        ``train()`` that raised, to release the run (its lock) before the interpreter exits."""
        self.session.close(timeout)


from ._hf_control import WWControlCallback  # noqa: E402  (it refers back to WeightWatcherCallback)
