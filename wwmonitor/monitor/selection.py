"""Which matrices a monitor reads, and reusing that walk between snapshots: :class:`Selection`."""

from __future__ import annotations

import logging
import weakref
from typing import Any, Mapping, Optional

import numpy as np

from ..describe import coverage_summary
from ..frameworks import is_torch_module
from ..layers import MatrixSpec, extract_matrices, select

__all__ = ["Selection", "matrix_specs"]

log = logging.getLogger("wwmonitor")


def _patterns(p: Any) -> Optional[list[Any]]:
    return [p] if isinstance(p, (str, type)) else None if p is None else list(p)


def _split_owner(qualname: str) -> tuple[tuple[str, ...], str]:
    """``"a.b.weight"`` -> ``(("a", "b"), "weight")``: the module path and the parameter's name."""
    *mods, name = qualname.split(".")
    return tuple(mods), name


def _still_owned(model: Any, paths: list[tuple[tuple[str, ...], str, Any]]) -> bool:
    """Whether each cached parameter is still held by the module at its path (a few dict lookups:
    cheaper than walking ``model.parameters()``; a replaced submodule or parameter fails it)."""
    for mods, name, p in paths:
        m = model
        for k in mods:
            m = m._modules.get(k)
            if m is None:
                return False
        if m._parameters.get(name) is not p:
            return False
    return True


def matrix_specs(matrices: Mapping[str, Any]) -> list[MatrixSpec]:
    """``matrices`` (name -> array) as specs; a value that is not an array is an error naming its key."""
    specs = []
    for name, arr in matrices.items():
        if not hasattr(arr, "shape"):
            try:
                arr = np.asarray(arr)
            except Exception as e:  # noqa: BLE001
                raise TypeError(f"matrices[{name!r}]: not an array ({type(arr).__name__}): {e}") from e
            if arr.dtype == object or arr.ndim < 2:
                raise TypeError(
                    f"matrices[{name!r}]: expected a 2-D (or 3-D stacked) numeric array, "
                    f"got {type(matrices[name]).__name__}"
                )
        specs.append(MatrixSpec(str(name), "matrix", arr))
    return specs


class Selection:
    """The ``layers``/``exclude``/``lora`` selection of a monitor, its coverage line and its walk cache."""

    def __init__(self, layers: Any, exclude: Any, lora: str, announce: bool, strategy: Any = None) -> None:
        #: DDP / FSDP2 snapshot strategy (:mod:`.strategies`): it walks the model (FSDP2: the plan's specs)
        self.strategy = strategy
        self.layers, self.exclude = _patterns(layers), _patterns(exclude)
        self.lora = lora
        self.announce = announce
        #: the one-line summary of the first walk (matrices monitored, layer types, weights skipped and why)
        self.coverage = ""
        #: ``(weight name, reason)`` of every weight not analysed (first walk)
        self.skipped: list[tuple[str, str]] = []
        self._cache: Optional[tuple[Any, list[MatrixSpec], list[Any], list[Any], int]] = None
        self._gen = 0

    def extract(self, model: Any, matrices: Optional[Mapping[str, Any]]) -> list[MatrixSpec]:
        """The selected matrices of ``model`` (or of ``matrices``); ``ValueError`` when there are none."""
        skipped: list[tuple[str, str]] = []
        if matrices is not None:
            specs = select(matrix_specs(matrices), layers=self.layers, exclude=self.exclude)
        elif self.strategy is not None:
            specs = self.strategy.extract(
                model, layers=self.layers, exclude=self.exclude, lora=self.lora, skipped=skipped
            )
        else:
            specs = extract_matrices(model, layers=self.layers, exclude=self.exclude, skipped=skipped, lora=self.lora)
        if specs and not self.coverage:  # the first walk: say what is monitored and skipped
            self.coverage = coverage_summary(specs, skipped)
            self.skipped = skipped
            if self.announce:
                log.info(self.coverage)
        if not specs:
            what = "matrices" if matrices is not None else f"model {type(model).__name__}"
            raise ValueError(f"no analysable layers in {what} (layers={self.layers!r}, exclude={self.exclude!r})")
        return specs

    def specs_for(self, model: Any, matrices: Optional[Mapping[str, Any]]) -> tuple[list[MatrixSpec], Any]:
        """Specs for this snapshot, and a cache key when they can be reused.

        For a torch module whose matrices are all views of its parameters the
        walk is done once and reused while the module holds the very same
        parameter objects (a replaced submodule, ``model[0] = nn.Linear(...)``,
        brings new ones) and every one keeps its storage (``data_ptr``:
        ``model.to(...)``, ``.half()`` or a ``param.data = ...`` swap change
        it).  Any change triggers a fresh walk.  Under FSDP2 the specs are the
        plan's (``meta`` views, no storage to compare): never cached here.
        """
        if matrices is not None or not is_torch_module(model) or getattr(self.strategy, "kind", "") == "fsdp2":
            return self.extract(model, matrices), None
        c = self._cache
        if (
            c is not None
            and c[0]() is model
            and _still_owned(model, c[2])
            and all(p.data_ptr() == ptr for p, ptr in c[3])
        ):
            return c[1], c[4]
        specs = self.extract(model, None)
        owners = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        by_storage = {p.untyped_storage().data_ptr(): p for p in model.parameters()}
        backing = []
        for sp in specs:
            t = sp.tensor
            p = by_storage.get(t.untyped_storage().data_ptr()) if hasattr(t, "untyped_storage") else None
            if p is None or id(p) not in owners:  # computed weights (parametrizations ...): walk every time
                self._cache = None
                return specs, None
            backing.append(p)
        uniq = list({id(p): p for p in backing}.values())
        paths = [(*_split_owner(owners[id(p)]), p) for p in uniq]
        self._gen += 1
        self._cache = (weakref.ref(model), specs, paths, [(p, p.data_ptr()) for p in uniq], self._gen)
        return specs, self._gen

    def names(self, patterns: Optional[list[Any]]) -> Optional[list[str]]:
        return None if patterns is None else [str(getattr(p, "__name__", p)) for p in patterns]
