"""`wwmonitor analyze` on the command line, single process and under torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from model_zoo import build  # noqa: E402

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wwmonitor", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    p = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(build("small_transformer").state_dict(), p)
    return p


def test_table_json_csv_and_filter(ckpt, tmp_path):
    proc = _cli("analyze", str(ckpt), "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"),
                "--layers", "layers.0.*")
    assert proc.returncode == 0, proc.stderr
    assert "layers.0.linear1" in proc.stdout and "layers.1." not in proc.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert {r["name"] for r in data["layers"]} == {
        "layers.0.self_attn.q", "layers.0.self_attn.k", "layers.0.self_attn.v",
        "layers.0.self_attn.out_proj", "layers.0.linear1", "layers.0.linear2"}
    assert (tmp_path / "r.csv").read_text().startswith("name,")


def test_errors_are_clear(tmp_path):
    (tmp_path / "x.onnx").write_text("x")
    proc = _cli("analyze", str(tmp_path / "x.onnx"))
    assert proc.returncode == 2 and "unknown weight file format" in proc.stderr
    proc = _cli("analyze", str(tmp_path / "missing.pt"))
    assert proc.returncode == 2 and "no such file" in proc.stderr


@pytest.mark.slow
def test_torchrun_two_ranks_equals_single_process(ckpt, tmp_path):
    single = _cli("analyze", str(ckpt), "--json", str(tmp_path / "one.json"))
    assert single.returncode == 0, single.stderr
    proc = subprocess.run(
        [str(TORCHRUN), "--nproc-per-node", "2", "--master-port", "29517", "-m", "wwmonitor", "analyze", str(ckpt),
         "--json", str(tmp_path / "two.json"), "--no-progress"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["summary"]["num_layers"] == one["summary"]["num_layers"] == 12
    assert [r["name"] for r in two["layers"]] == [r["name"] for r in one["layers"]]  # same order, no duplicates
    for a, b in zip(one["layers"], two["layers"]):
        assert a == b
    # only rank 0 printed the table
    assert proc.stdout.count("layers.0.linear1") == 1
