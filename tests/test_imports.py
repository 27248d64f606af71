"""The core imports with numpy and scipy only; integrations load lazily."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import subprocess
import sys

import numpy as np
import pytest

CODE = r"""
import json, sys
import numpy as np
import wwmonitor
W = np.random.default_rng(0).standard_normal((300, 120))
m = wwmonitor.analyze_matrix(W, "w")
fit = wwmonitor.fit_powerlaw(wwmonitor.esd(W))
heavy = ["torch", "lightning", "pytorch_lightning", "keras", "tensorboard", "wandb", "tensorflow", "jax", "matplotlib",
         "pandas"]
print(json.dumps({"phase": m.phase, "alpha": m.alpha, "loaded": [h for h in heavy if h in sys.modules]}))
"""


def test_core_needs_only_numpy_and_scipy():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    # the same analysis as in this process, where the heavy libraries may be loaded
    import wwmonitor

    m = wwmonitor.analyze_matrix(np.random.default_rng(0).standard_normal((300, 120)), "w")
    assert m.phase == "random-like"
    assert out["phase"] == m.phase and out["alpha"] == pytest.approx(m.alpha, rel=1e-12)


def test_public_api_names_resolve():
    """Every public name is the object of the module that defines it (the lazy export table is right)."""
    import wwmonitor

    assert set(wwmonitor.__all__) == set(wwmonitor._LAZY) | {"__version__"}
    for name, module in wwmonitor._LAZY.items():
        assert getattr(wwmonitor, name) is getattr(importlib.import_module(module), name), name
    assert wwmonitor.__version__ == importlib.metadata.version("wwmonitor")
