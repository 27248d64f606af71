"""The CI skip rule of tests/conftest.py: under CI=true a skip fails the run, at collection or at run time,
except for tests marked ``gpu`` (they need a CUDA device the CI machine does not have).

Each case runs a throw-away test file in a child pytest, with this repository's conftest.py and the pytest
markers of pyproject.toml, and checks the child's exit status and report.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

CASES = {
    # a module-level importorskip skips at collection time (the module never yields items)
    "module_importorskip": """
        import pytest
        pytest.importorskip("wwmonitor_no_such_module_xyz")

        def test_never_collected():
            pass
    """,
    "module_skip": """
        import pytest
        pytest.skip("keras is not installed", allow_module_level=True)

        def test_never_collected():
            pass
    """,
    "runtime_skip": """
        import pytest

        def test_skips():
            pytest.skip("no data here")
    """,
    # the old rule let any skip whose reason mentioned CUDA through; only the marker counts now
    "cuda_reason_without_marker": """
        import pytest

        @pytest.mark.skipif(True, reason="needs a CUDA device")
        def test_cuda():
            pass
    """,
    "fixture_importorskip": """
        import pytest

        @pytest.fixture
        def dep():
            return pytest.importorskip("wwmonitor_no_such_module_xyz")

        def test_uses(dep):
            pass
    """,
    "gpu_marked_skip": """
        import pytest

        @pytest.mark.gpu
        @pytest.mark.skipif(True, reason="needs a CUDA device")
        def test_cuda():
            pass

        @pytest.mark.gpu
        def test_cuda_runtime():
            pytest.skip("needs a CUDA device")

        def test_cpu():
            pass
    """,
    "xfail_and_pass": """
        import pytest

        @pytest.mark.xfail(reason="known bug", strict=True)
        def test_known_bug():
            assert False

        def test_ok():
            pass
    """,
}


def _run(tmp_path: Path, case: str, ci: bool) -> subprocess.CompletedProcess:
    d = tmp_path / case
    d.mkdir()
    shutil.copy(TESTS / "conftest.py", d / "conftest.py")
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    (d / "pytest.ini").write_text("[pytest]\nmarkers =\n" + "".join(f"    {m}\n" for m in markers))
    (d / f"test_{case}.py").write_text(textwrap.dedent(CASES[case]))
    (d / "test_zz_plain.py").write_text("def test_plain():\n    pass\n")  # one ordinary passing test
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "--strict-markers", str(d)],
        cwd=d,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _out(p: subprocess.CompletedProcess) -> str:
    return p.stdout + p.stderr


def _summary(p: subprocess.CompletedProcess) -> str:
    """The counts of pytest's last line, e.g. '1 failed, 1 passed'."""
    return p.stdout.strip().splitlines()[-1].strip("= ").rsplit(" in ", 1)[0]


@pytest.mark.parametrize(
    "case, summary",
    [
        # a skip at collection time becomes a collection error (as a plain failing import would)
        ("module_importorskip", "1 error"),
        ("module_skip", "1 error"),
        # a skip at run time becomes a failed test (in the test body) or a setup error (skipif marker, fixture)
        ("runtime_skip", "1 failed, 1 passed"),
        ("cuda_reason_without_marker", "1 passed, 1 error"),
        ("fixture_importorskip", "1 passed, 1 error"),
    ],
)
def test_any_skip_fails_under_ci(tmp_path, case, summary):
    p = _run(tmp_path, case, ci=True)
    out = _out(p)
    assert p.returncode in (1, 2), out  # TESTS_FAILED, or INTERRUPTED by the collection error
    assert _summary(p) == summary, out
    assert "skipped under CI=true, which is not allowed" in out, out


@pytest.mark.parametrize("case", ["module_importorskip", "module_skip", "runtime_skip", "fixture_importorskip"])
def test_skips_are_skips_outside_ci(tmp_path, case):
    p = _run(tmp_path, case, ci=False)
    assert p.returncode == 0, _out(p)
    assert _summary(p) == "1 passed, 1 skipped", _out(p)


def test_gpu_marked_skip_passes_under_ci(tmp_path):
    p = _run(tmp_path, "gpu_marked_skip", ci=True)
    assert p.returncode == 0, _out(p)
    assert _summary(p) == "2 passed, 2 skipped", _out(p)


def test_xfail_is_not_a_skip(tmp_path):
    p = _run(tmp_path, "xfail_and_pass", ci=True)
    assert p.returncode == 0, _out(p)
    assert _summary(p) == "2 passed, 1 xfailed", _out(p)


def test_skip_outside_the_conftest_scope_still_fails_the_run(tmp_path):
    """A test outside tests/ (its conftest's per-test hooks do not apply there) skips: the summary backstop
    reports it and sets a failing exit status."""
    d = tmp_path / "root"
    d.mkdir()
    shutil.copy(TESTS / "conftest.py", d / "conftest.py")
    (d / "test_plain.py").write_text("def test_plain():\n    pass\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "test_other.py").write_text("import pytest\n\ndef test_other():\n    pytest.skip('not here')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(d),
            "-c",
            os.devnull,
            str(d),
            str(other),
        ],
        cwd=d,
        env={**env, "CI": "true"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1, _out(p)
    assert "skips not allowed under CI=true" in p.stdout and "test_other.py::test_other: Skipped: not here" in p.stdout


def test_gpu_marker_is_registered():
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("gpu:") for m in markers), markers


def _decorators(fn: ast.FunctionDef) -> list[str]:
    return [ast.unparse(d) for d in fn.decorator_list]


def test_every_cuda_only_test_carries_the_gpu_marker():
    """A test guarded by a skip on torch.cuda.is_available() must be marked gpu (else it fails in CI)."""
    found, unmarked = [], []
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.name.startswith("test"):
                continue
            decs = _decorators(node)
            if any("skipif" in d and "cuda" in d for d in decs):
                found.append(f"{path.name}::{node.name}")
                if "pytest.mark.gpu" not in decs:
                    unmarked.append(f"{path.name}::{node.name}")
    assert found, "expected the CUDA-only tests of test_monitor.py and test_spectral.py"
    assert unmarked == []
