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
    return subprocess.run(
        [sys.executable, "-m", "wwmonitor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    p = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(build("small_transformer").state_dict(), p)
    return p


def test_table_json_csv_and_filter(ckpt, tmp_path):
    proc = _cli(
        "analyze",
        str(ckpt),
        "--json",
        str(tmp_path / "r.json"),
        "--csv",
        str(tmp_path / "r.csv"),
        "--layers",
        "layers.0.*",
    )
    assert proc.returncode == 0, proc.stderr
    assert "layers.0.linear1" in proc.stdout and "layers.1." not in proc.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert {r["name"] for r in data["layers"]} == {
        "layers.0.self_attn.q",
        "layers.0.self_attn.k",
        "layers.0.self_attn.v",
        "layers.0.self_attn.out_proj",
        "layers.0.linear1",
        "layers.0.linear2",
    }
    import csv

    from wwmonitor.model import analyze_model

    ref = analyze_model(ckpt, layers=["layers.0.*"], progress=False)
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["name"] for r in rows] == [r["name"] for r in data["layers"]] == [lm.name for lm in ref.layers]
    for lm, row, rec in zip(ref.layers, rows, data["layers"]):  # every digit, in both files
        for col in ("alpha", "log_norm", "stable_rank", "lambda_max"):
            assert float(row[col]) == rec[col] == getattr(lm, col), (lm.name, col)


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
        [
            str(TORCHRUN),
            "--nproc-per-node",
            "2",
            "--master-port",
            "29517",
            "-m",
            "wwmonitor",
            "analyze",
            str(ckpt),
            "--json",
            str(tmp_path / "two.json"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["summary"]["num_layers"] == one["summary"]["num_layers"] == 12
    assert [r["name"] for r in two["layers"]] == [r["name"] for r in one["layers"]]  # same order, no duplicates
    for a, b in zip(one["layers"], two["layers"]):
        assert a == b
    # only rank 0 printed the table (one row per matrix) and the list of skipped entries
    import re

    assert len(re.findall(r"^\s*layers\.0\.linear1\s+Linear\s", proc.stdout, flags=re.M)) == 1
    assert proc.stdout.count("skipped 16 entries not analysed:") == 1
    assert two["skipped"] == one["skipped"] and len(one["skipped"]) == 16


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("wwmonitor analyze: error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_corrupt_files_are_one_line_errors(tmp_path):
    import numpy as np

    (tmp_path / "bad.safetensors").write_bytes(b"definitely not safetensors")
    proc = _cli("analyze", str(tmp_path / "bad.safetensors"), "--no-progress")
    _one_line_error(proc, str(tmp_path / "bad.safetensors"), "not a valid .safetensors file")
    np.savez(tmp_path / "ok.npz", a=np.ones((60, 50)))
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:200])
    proc = _cli("analyze", str(tmp_path / "trunc.npz"), "--no-progress")
    _one_line_error(proc, str(tmp_path / "trunc.npz"), "not a valid .npz archive")
    np.savez(tmp_path / "obj.npz", a=np.ones((60, 50)), meta=np.array([None], dtype=object))
    proc = _cli("analyze", str(tmp_path / "obj.npz"), "--no-progress")
    _one_line_error(proc, str(tmp_path / "obj.npz"), "'meta' is an object array")


def test_unwritable_outputs_are_refused_before_the_analysis(ckpt, tmp_path):
    (tmp_path / "plain").write_text("a regular file")
    good = tmp_path / "good.json"
    for bad in (tmp_path / "plain" / "r.csv", tmp_path / "no" / "such" / "r.csv", tmp_path):
        proc = _cli("analyze", str(ckpt), "--json", str(good), "--csv", str(bad), "--no-progress")
        _one_line_error(proc, str(bad), "--csv")
        assert not good.exists()  # checked before anything was analysed or written
        assert proc.stdout == ""


def test_read_only_output_folder_is_refused(ckpt, tmp_path, monkeypatch, capsys):
    """In process (a read-only folder does not stop root, so os.access is made to answer as for a user)."""
    import wwmonitor.cli.analyze as cli_analyze
    from wwmonitor.cli import main

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(
            cli_analyze.os, "access", lambda p, mode: False if Path(p) == ro and mode & os.W_OK else real(p, mode)
        )
    called = []
    monkeypatch.setattr("wwmonitor.model.analyze_model", lambda *a, **k: called.append(1))
    try:
        assert main(["analyze", str(ckpt), "--json", str(ro / "r.json"), "--no-progress"]) == 2
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"wwmonitor analyze: error: --json {ro / 'r.json'}: cannot create it: folder {ro} is not writable "
        "(permission denied)"
    ]
    assert not called


def test_skipped_entries_are_reported(ckpt, tmp_path):
    proc = _cli("analyze", str(ckpt), "--json", str(tmp_path / "r.json"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "skipped 16 entries not analysed:" in proc.stdout
    assert (
        "  not a matrix (1-D) [16]: layers.0.self_attn.in_proj_bias, layers.0.self_attn.out_proj.bias," in proc.stdout
    )
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["summary"]["num_skipped"] == 16
    assert {"name": "layers.1.norm2.bias", "reason": "not a matrix (1-D)"} in data["skipped"]
    assert len(data["skipped"]) == 16
    # with the table on stdout (--csv -) the skipped entries go to stderr
    proc = _cli("analyze", str(ckpt), "--csv", "-", "--no-progress", "--layers", "layers.0.*")
    assert proc.returncode == 0 and proc.stdout.startswith("name,")
    assert "skipped 8 entries not analysed:" in proc.stderr and "layers.1." not in proc.stderr
