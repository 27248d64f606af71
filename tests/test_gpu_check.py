"""``benchmarks/gpu_check.py`` exits cleanly (status 0, "no CUDA device") where there is no CUDA device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_no_cuda_device_is_a_clean_exit():
    # hiding every device makes this hold on a GPU machine too; nothing heavy may run
    p = _run(env={"CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("no CUDA device: ") and "Traceback" not in p.stderr
    assert "pytest" not in p.stdout and "## " not in p.stdout


def test_dry_run_lists_the_checks_and_exits_0():
    p = _run("--dry-run", "--skip-350m")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "pytest -m gpu -q" in p.stdout and "7B-shaped set: 32 x 7 matrices" in p.stdout
    assert "350M" not in p.stdout and "## " not in p.stdout  # listed, not run
    assert p.stdout.startswith(("no CUDA device: ", "device: "))
