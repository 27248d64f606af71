"""Packaging: `wwmonitor demo` without its extra says what to install; the sdist carries LICENSE and the tests.

The wheel itself is checked by scripts/check_wheel.sh (built, installed in a clean venv, used from outside the
repository), which .ci/run calls after the tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _stub_package(dirpath: Path, name: str) -> None:
    """A package ``name`` under ``dirpath`` whose import fails, as if it were not installed."""
    pkg = dirpath / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"raise ImportError('No module named {name!r} (test stub)')\n")


@pytest.mark.parametrize("module, dist", [("sklearn", "scikit-learn"), ("lightning", "lightning")])
def test_demo_without_its_extra_names_the_extra(tmp_path, module, dist):
    _stub_package(tmp_path / "stubs", module)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "stubs"), str(ROOT)]))
    out = tmp_path / "demo-out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wwmonitor",
            "demo",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-sizes",
            "4",
            "--seeds",
            "0",
            "--workers",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    assert 'pip install "wwmonitor[demo]"' in lines[0] and dist in lines[0] and module in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not out.exists()  # refused before anything was written


@pytest.mark.slow
def test_sdist_has_license_and_the_test_helpers(tmp_path):
    """`python -m build --sdist` (isolated, as a user builds it) ships LICENSE and what its tests need."""
    pytest.importorskip("build")  # requirements-dev.txt pins it; under CI=true a skip fails the run
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # no build-tool deprecation notice (file names such as wwmonitor/_deprecated.py are not notices)
    notices = [
        ln for ln in (proc.stdout + proc.stderr).lower().splitlines() if "deprecat" in ln and "_deprecated.py" not in ln
    ]
    assert not notices, proc.stdout + proc.stderr
    (sdist,) = tmp_path.glob("wwmonitor-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        pkg_info = (
            tar.extractfile(
                next(m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"))
            )
            .read()
            .decode()
        )
    expected = {"LICENSE", "pyproject.toml", "README.md", "tests/conftest.py", "wwmonitor/py.typed"}
    expected |= {f"tests/{p.name}" for p in (ROOT / "tests").glob("*.py")}  # helper modules and test files
    expected |= {f"examples/{p.name}" for p in (ROOT / "examples").glob("*.py")}  # run by tests/test_demo.py
    expected |= {"benchmarks/__init__.py", "benchmarks/overreg_panel.py"}  # imported by tests/test_overreg.py
    assert expected <= names, sorted(expected - names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert "License-Expression: Apache-2.0" in pkg_info and "License-File: LICENSE" in pkg_info, pkg_info[:800]
    assert "Classifier: License ::" not in pkg_info
    assert "Provides-Extra: demo" in pkg_info
