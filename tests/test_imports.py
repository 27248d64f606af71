"""The core imports with numpy and scipy only; integrations load lazily."""
from __future__ import annotations

import json
import subprocess
import sys

CODE = r"""
import json, sys
import numpy as np
import wwmonitor
W = np.random.default_rng(0).standard_normal((300, 120))
m = wwmonitor.analyze_matrix(W, "w")
fit = wwmonitor.fit_powerlaw(wwmonitor.esd(W))
heavy = ["torch", "lightning", "pytorch_lightning", "keras", "tensorboard", "wandb", "tensorflow", "jax", "matplotlib", "pandas"]
print(json.dumps({"phase": m.phase, "alpha": m.alpha, "loaded": [h for h in heavy if h in sys.modules]}))
"""


def test_core_needs_only_numpy_and_scipy():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["phase"] == "random-like" and out["alpha"] > 0


def test_public_api_names_resolve():
    import wwmonitor

    for name in wwmonitor.__all__:
        assert getattr(wwmonitor, name) is not None, name
