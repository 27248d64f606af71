"""The run-folder half of :class:`~wwmonitor.Monitor`: which run it writes, and checkpoint state.

:class:`RunFolderAccess` is a mixin of ``Monitor`` (it uses the monitor's
``_folder``, ``_lock``, ``_dispatcher``, ``_status`` and ``_last_step``): the
run's id, name and folders, and :meth:`~RunFolderAccess.state_dict` /
:meth:`~RunFolderAccess.load_state_dict`, with which a framework checkpoint
continues the same run.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Optional

from ..store import RunStore
from .runfolder import versions

__all__ = ["RunFolderAccess"]


class RunFolderAccess:
    """Run folder properties and checkpoint state of a monitor (mixin; see the module docstring)."""

    _folder: Any
    _lock: Any
    _dispatcher: Any
    _status: Any
    _selection: Any
    _layer_info: list[tuple[str, str, tuple[int, ...]]]
    _last_step: Optional[int]
    model: Any
    config: dict[str, Any]
    options: Any
    analysis_device: str
    settings: Any  # MonitorOptions
    flush: Any  # Monitor.flush

    # ------------------------------------------------------------ run folder
    @property
    def run_id(self) -> str:
        """This run's id (its folder name)."""
        return self._folder.run_id

    @property
    def run_name(self) -> str:
        return self._folder.run_name

    @property
    def run_dir(self) -> Path:
        """This run's own folder, ``root/<run_id>`` (what ``wwmonitor report RUN_DIR`` and
        :func:`wwmonitor.load_run` read)."""
        return self._folder.path

    @property
    def root(self) -> Path:
        """The folder that holds the runs (this run's folder is ``root/<run_id>``)."""
        return self._folder.root

    @property
    def store(self) -> Optional[RunStore]:
        """The run store (``None`` with ``store=False``)."""
        return self._folder.store

    @property
    def coverage(self) -> str:
        """The one-line summary logged at start: matrices monitored, layer types, weights skipped and why."""
        return self._selection.coverage

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """``(weight name, reason)`` for every weight of the model that is not analysed."""
        return list(self._selection.skipped)

    @property
    def resumed(self) -> bool:
        """Whether this monitor continues a run that already existed."""
        return self._folder.resumed

    def _meta(self) -> dict[str, Any]:
        return {
            "versions": versions(),
            "platform": __import__("platform").platform(),
            "monitor": {
                "every_n_epochs": self.settings.every_n_epochs,
                "every_n_steps": self.settings.every_n_steps,
                "analysis_device": self.analysis_device,
                "queue_size": self.settings.queue_size,
                "policy": self.settings.policy,
                "layers": self._selection.names(self._selection.layers),
                "exclude": self._selection.names(self._selection.exclude),
                "options": asdict(self.options),
            },
        }

    @staticmethod
    def _model_class(model: Any) -> Optional[str]:
        return None if model is None else f"{type(model).__module__}.{type(model).__qualname__}"

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue this run: the run folder, id and
        last snapshotted step."""
        return {
            "version": 1,
            "run_root": str(self._folder.root),
            "run_id": self.run_id,
            "run_name": self.run_name,
            "last_step": self._last_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the run recorded in ``state`` (from :meth:`state_dict`): a restored checkpoint.

        If this monitor had started a different, still empty run, that run's
        folder is removed and the monitor switches to the checkpoint's run;
        snapshots with steps at or below the stored ``last_step`` are not taken again.
        """
        rid = str(state["run_id"])
        root = Path(state.get("run_root") or self._folder.root)
        last = state.get("last_step")
        with self._lock:
            if rid != self.run_id or root != self._folder.root:
                self.flush()
                old = self._folder.store
                self._folder.switch(root, rid, state.get("run_name"), self._meta(), self.config)
                if old is not None and self._folder.store is not None:
                    self._dispatcher.replace_sink(old, self._folder.store)
                if self._layer_info:
                    self._folder.record_layers(self._layer_info, self._model_class(self.model))
                self._status.reset_stored(self._folder.stored_steps)
                if self._folder.stored_steps:
                    top = max(self._folder.stored_steps)
                    self._last_step = top if self._last_step is None else max(top, self._last_step)
            if last is not None:
                self._last_step = max(int(last), self._last_step if self._last_step is not None else int(last))
            self._dispatcher.resume_after(self._last_step)
