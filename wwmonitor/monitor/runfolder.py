"""A run's folder and its store: naming, resuming and the one-writer rule.

Rules (what a user sees):

* ``run_name=None``: a fresh ``run-<UTC time>-<random>`` folder.
* ``run_name="x"`` and no run ``x`` yet: folder ``x``.
* ``run_name="x"``, run ``x`` exists, ``resume=False`` (the default): a new
  run ``x-2`` (``x-3`` ...) is started and a log line says so -- an earlier
  run is never continued or overwritten unless asked.
* ``resume=True`` (or a framework checkpoint being restored, which calls
  :meth:`RunFolder.switch`): run ``x`` is continued; steps it already has are
  not snapshotted again, and its stored configuration is kept, with changed
  keys reported.
* A store has one writer at a time: a second live writer of the same folder
  gets :class:`~wwmonitor.runlock.RunLockedError`.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from ..store import DB_NAME, SCHEMA_VERSION, RunStore

__all__ = ["RunFolder", "safe_run_id", "versions"]

log = logging.getLogger("wwmonitor")


def safe_run_id(name: str) -> str:
    """``name`` reduced to a folder-safe id (``[A-Za-z0-9._-]``); ``ValueError`` if nothing is left."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip(".-")
    if not s:
        raise ValueError(f"run_name {name!r} has no usable characters for a folder name")
    return s


def versions() -> dict[str, str]:
    """Versions of wwmonitor, Python and the numeric/framework packages already imported."""
    from .. import __version__

    out = {"wwmonitor": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("scipy", "torch", "keras", "lightning", "pytorch_lightning", "jax", "tensorflow", "transformers"):
        m = sys.modules.get(mod)
        if m is not None and getattr(m, "__version__", None):
            out[mod] = str(m.__version__)
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class RunFolder:
    """The folder ``root/run_id`` of one run and (unless ``use_store=False``) its open :class:`RunStore`."""

    def __init__(
        self, root: Path, run_name: Optional[str], *, resume: bool, use_store: bool, store: Optional[RunStore] = None
    ) -> None:
        self.root = Path(root)
        self.use_store = use_store or store is not None
        self.store: Optional[RunStore] = None
        self.stored_steps: set[int] = set()
        self.resumed = False
        self._fresh = False
        if store is not None:
            self.root, self.run_id = store.folder.parent, store.folder.name
        else:
            self.run_id = self._pick(run_name, resume)
        self.run_name = run_name or self.run_id

    @property
    def path(self) -> Path:
        return self.root / self.run_id

    def _pick(self, run_name: Optional[str], resume: bool) -> str:
        if run_name is None:
            return f"run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
        rid = safe_run_id(run_name)
        if resume or not self.use_store or not (self.root / rid / DB_NAME).exists():
            return rid
        n = 2
        while (self.root / f"{rid}-{n}" / DB_NAME).exists():
            n += 1
        log.warning(
            "wwmonitor: run %r already exists in %s; starting a new run %r (pass resume=True to continue %r)",
            rid,
            self.root,
            f"{rid}-{n}",
            rid,
        )
        return f"{rid}-{n}"

    def open(self, meta: Mapping[str, Any], config: Mapping[str, Any], store: Optional[RunStore] = None) -> None:
        """Open (or create) the store and record the run's metadata and configuration."""
        if not self.use_store:
            return
        if self.root.exists() and not os.access(self.root, os.W_OK | os.X_OK):
            raise ValueError(f"run_dir {str(self.root)!r} is not writable")
        if store is not None:
            existed = bool(store.stored_steps()) or store.get_meta("created") is not None
        else:
            existed = (self.path / DB_NAME).exists()
            try:
                store = RunStore(self.path)
            except ValueError as e:
                raise ValueError(f"run_dir {str(self.root)!r} is not writable: {e}") from e
        self._fresh, self.resumed = not existed, existed
        self.stored_steps = set(store.stored_steps())
        old_meta = store.get_meta("meta", {}) or {}
        items: dict[str, Any] = {"meta": {**old_meta, **meta}, "run_id": self.run_id, "schema_version": SCHEMA_VERSION}
        if existed:
            items["meta"].setdefault("resumed", []).append(_now())
            old_cfg = store.get_meta("config", None) or {}
            changed = sorted(k for k in config if k in old_cfg and old_cfg[k] != config[k])
            if changed:
                log.warning(
                    "wwmonitor: resuming run %r with changed configuration keys %s; the new values are stored",
                    self.run_id,
                    changed,
                )
            items["config"] = {**old_cfg, **config}
            if self.stored_steps:
                log.info(
                    "wwmonitor: resuming run %r after step %d (%d snapshots stored)",
                    self.run_id,
                    max(self.stored_steps),
                    len(self.stored_steps),
                )
        else:
            items.update({"name": self.run_name, "created": _now(), "config": dict(config)})
        store.set_meta(items)
        self.store = store

    def record_layers(self, layers: list[tuple[str, str, tuple[int, ...]]], model_class: Optional[str]) -> None:
        """Store the monitored matrices ``(name, type, shape)`` and the model class."""
        if self.store is None:
            return
        self.store.set_layers(layers)
        meta = self.store.get_meta("meta", {}) or {}
        meta["layers"] = [{"name": n, "type": t, "shape": list(s)} for n, t, s in layers]
        if model_class:
            meta["model_class"] = model_class
        self.store.set_meta({"meta": meta})

    def switch(
        self, root: Path, run_id: str, run_name: Optional[str], meta: Mapping[str, Any], config: Mapping[str, Any]
    ) -> Optional[RunStore]:
        """Continue run ``root/run_id`` instead (a restored checkpoint). Returns the store it replaces.

        The replaced store is closed; if this monitor had created it and it
        holds no snapshot, its folder is removed (it was only ever a
        placeholder for a run that is being resumed).
        """
        old_store, old_path, fresh = self.store, self.path, self._fresh
        empty = old_store is not None and not old_store.stored_steps()
        self.root, self.run_id, self.run_name = Path(root), run_id, run_name or run_id
        self.store = None
        if self.use_store:
            self.open(meta, config)
        if old_store is not None:
            old_store.close()
            if fresh and empty and old_path != self.path:
                shutil.rmtree(old_path, ignore_errors=True)
        return old_store
