"""Run weightwatcher 0.7.7 in a *subprocess* and bring its results back.

Importing weightwatcher silences every Python warning process-wide and sets
the root logger to INFO, so tests never import it in the pytest process.
Each helper below starts one child Python (this file run as a script), which
imports weightwatcher, does the work and writes JSON / a pickled DataFrame to
a temporary directory that only this helper created.

Helpers (batch as much as you can into one call: a child costs ~2-4 s):

* :func:`ww_fit` / :func:`ww_fit_many` -- ``WeightWatcher().fit_powerlaw``
  (the default ``WWFit`` path, with optional ``fix_fingers``/``xmax``) on
  NumPy eigenvalue arrays; returns dicts with ``alpha, xmin, xmax, D, sigma,
  num_pl_spikes, num_fingers, status, warning, time_s``.
* :func:`ww_analyze` / :func:`ww_analyze_timed` -- ``WeightWatcher(model).analyze(**kwargs)``
  on a torch model, returning its DataFrame (and the wall times of the
  ``analyze`` calls measured inside the child, import excluded).
* :func:`ww_esd` -- ``WeightWatcher.get_ESD`` eigenvalues of one layer.

A model may be given as

* an ``nn.Module`` instance (saved with ``torch.save`` to a temp file, loaded in
  the child with ``weights_only=False`` -- our own file; its class must be
  importable in the child, which gets the parent's ``sys.path``),
* a path to such a file (``.pt``/``.pth`` holding a whole module), or
* a picklable zero-argument callable returning the model (a top-level
  function or a ``functools.partial`` of one; pickled by reference).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

__all__ = ["ww_fit", "ww_fit_many", "ww_analyze", "ww_analyze_timed", "ww_esd", "WWReferenceError"]

ModelSpec = Union[str, Path, Callable[[], Any], Any]

_TIMEOUT = 1200


class WWReferenceError(RuntimeError):
    """The weightwatcher child process failed (its stderr tail is in the message)."""


def _run_child(request: dict[str, Any], workdir: Path, timeout: float = _TIMEOUT) -> dict[str, Any]:
    req = workdir / "request.json"
    req.write_text(json.dumps(request))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")])
    env.setdefault("MPLBACKEND", "Agg")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(req)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    out = workdir / "result.json"
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or "")[-4000:]
        raise WWReferenceError(f"weightwatcher child failed (rc={proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------
# power-law fits
# ---------------------------------------------------------------------------


def ww_fit_many(
    evals_list: Sequence[np.ndarray],
    per_item_kwargs: Optional[Sequence[dict[str, Any]]] = None,
    **fit_kwargs: Any,
) -> list[dict[str, Any]]:
    """``WeightWatcher().fit_powerlaw(evals, plot=False, **kwargs)`` for each array.

    All arrays are fitted in one child process.  ``per_item_kwargs[i]`` (if
    given) is merged over ``fit_kwargs`` for array ``i`` (e.g.
    ``{"fix_fingers": "clip_xmax"}``).  Floats come back exactly (JSON keeps
    ``repr`` precision).  ``time_s`` is the fit's own wall time in the child.
    """
    items = list(evals_list)
    if per_item_kwargs is not None and len(per_item_kwargs) != len(items):
        raise ValueError("ww_fit_many: per_item_kwargs must have one dict per array")
    kw = [{**fit_kwargs, **(per_item_kwargs[i] if per_item_kwargs else {})} for i in range(len(items))]
    with tempfile.TemporaryDirectory(prefix="ww_ref_") as d:
        wd = Path(d)
        arrays = {f"a{i}": np.asarray(e, dtype=np.float64) for i, e in enumerate(items)}
        np.savez(wd / "evals.npz", **arrays)
        res = _run_child({"op": "fit", "n": len(arrays), "kwargs": kw}, wd)
    return res["fits"]


def ww_fit(evals: np.ndarray, **fit_kwargs: Any) -> dict[str, Any]:
    """One :func:`ww_fit_many` call for a single eigenvalue array."""
    return ww_fit_many([evals], **fit_kwargs)[0]


# ---------------------------------------------------------------------------
# model analysis
# ---------------------------------------------------------------------------


def _model_ref(model: ModelSpec, wd: Path) -> dict[str, Any]:
    if isinstance(model, (str, Path)):
        p = Path(model)
        if not p.exists():
            raise FileNotFoundError(f"ww_reference: model file {p} does not exist")
        return {"kind": "torch_file", "path": str(p.resolve())}
    try:
        import torch

        if isinstance(model, torch.nn.Module):
            path = wd / "model.pt"
            torch.save(model, path)
            return {"kind": "torch_file", "path": str(path)}
    except ImportError:  # pragma: no cover - torch is a test dependency
        pass
    if callable(model):
        path = wd / "builder.pkl"
        path.write_bytes(pickle.dumps(model))
        return {"kind": "builder", "path": str(path)}
    raise TypeError(
        "ww_reference: model must be an nn.Module, a path to a torch-saved module or a "
        f"picklable zero-argument callable, got {type(model).__name__}"
    )


def ww_analyze_timed(
    model: ModelSpec,
    *,
    repeats: int = 1,
    num_threads: Optional[int] = None,
    **analyze_kwargs: Any,
) -> tuple["Any", list[float]]:
    """Run ``WeightWatcher(model=m).analyze(plot=False, **analyze_kwargs)`` ``repeats``
    times in a child; return the last DataFrame and the wall time of each call (s).

    ``num_threads`` sets ``torch.set_num_threads`` in the child (``None``: leave it).
    """
    import pandas as pd

    analyze_kwargs.setdefault("plot", False)
    with tempfile.TemporaryDirectory(prefix="ww_ref_") as d:
        wd = Path(d)
        ref = _model_ref(model, wd)
        res = _run_child(
            {
                "op": "analyze",
                "model": ref,
                "kwargs": analyze_kwargs,
                "repeats": int(repeats),
                "num_threads": num_threads,
            },
            wd,
        )
        df = pd.read_pickle(wd / "details.pkl")
    return df, res["times"]


def ww_analyze(model: ModelSpec, **analyze_kwargs: Any) -> "Any":
    """``WeightWatcher(model=m).analyze(plot=False, **analyze_kwargs)`` -> its pandas DataFrame."""
    return ww_analyze_timed(model, **analyze_kwargs)[0]


def ww_esd(model: ModelSpec, layer: Union[int, str]) -> np.ndarray:
    """Eigenvalues weightwatcher computes for one layer (``WeightWatcher.get_ESD``), ascending."""
    with tempfile.TemporaryDirectory(prefix="ww_ref_") as d:
        wd = Path(d)
        ref = _model_ref(model, wd)
        _run_child({"op": "esd", "model": ref, "layer": layer}, wd)
        return np.sort(np.load(wd / "esd.npy"))


# ---------------------------------------------------------------------------
# the child side
# ---------------------------------------------------------------------------


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        return float(v)
    if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if v is None or isinstance(v, str):
        return v
    return str(v)


def _load_model(ref: dict[str, Any]) -> Any:
    if ref["kind"] == "torch_file":
        import torch

        return torch.load(ref["path"], weights_only=False)  # our own temp file / the caller's file
    builder = pickle.loads(Path(ref["path"]).read_bytes())
    return builder()


def _child(request_path: str) -> None:  # pragma: no cover - runs in the subprocess
    import logging
    import time

    req_file = Path(request_path)
    wd = req_file.parent
    req = json.loads(req_file.read_text())
    import weightwatcher as ww

    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    op = req["op"]
    if op == "fit":
        data = np.load(wd / "evals.npz")
        watcher = ww.WeightWatcher()
        fits = []
        keys = [
            "alpha",
            "Lambda",
            "xmin",
            "xmax",
            "D",
            "sigma",
            "num_pl_spikes",
            "num_fingers",
            "raw_alpha",
            "status",
            "warning",
        ]
        import contextlib
        import io

        for i in range(req["n"]):
            ev = data[f"a{i}"]
            buf = io.StringIO()
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(buf):  # the small-n path prints
                out = watcher.fit_powerlaw(ev, plot=False, **req["kwargs"][i])
            dt = time.perf_counter() - t0
            d = {k: _jsonable(v) for k, v in zip(keys, out)}
            d["time_s"] = dt
            d["n"] = int(np.count_nonzero(ev > 1e-5))
            fits.append(d)
        (wd / "result.json").write_text(json.dumps({"fits": fits}))
        return
    if req.get("num_threads"):
        import torch

        torch.set_num_threads(int(req["num_threads"]))
    model = _load_model(req["model"])
    if op == "analyze":
        times = []
        df = None
        for _ in range(max(1, req["repeats"])):
            watcher = ww.WeightWatcher(model=model)
            t0 = time.perf_counter()
            df = watcher.analyze(**req["kwargs"])
            times.append(time.perf_counter() - t0)
        df.to_pickle(wd / "details.pkl")
        (wd / "result.json").write_text(json.dumps({"times": times}))
        return
    if op == "esd":
        watcher = ww.WeightWatcher(model=model)
        ev = watcher.get_ESD(layer=req["layer"])
        np.save(wd / "esd.npy", np.asarray(ev, dtype=np.float64))
        (wd / "result.json").write_text(json.dumps({"ok": True}))
        return
    raise ValueError(f"unknown op {op!r}")


if __name__ == "__main__":  # pragma: no cover
    _child(sys.argv[1])
