#!/usr/bin/env bash
# Install wwmonitor as a user would and use it from outside the repository (.ci/run calls this after the tests):
#   1. build the wheel from this checkout (`python -m build --wheel`, isolated build) into a temp folder;
#   2. create a clean venv (`python3 -m venv`), install torch first (pinned, the CPU build from the machine's
#      wheels, as README.md advises), then the wheel with its `all` and `demo` extras (the extras must resolve
#      with that torch: it is pinned again so nothing can swap it);
#   3. from a temp folder, not the repo: the core import without heavy side effects (as tests/test_imports.py),
#      the metadata and LICENSE of the install, the console script, and examples/pytorch_monitor.py.
# Everything lives in one temp folder, removed at exit; pip reuses its own cache if the machine has one.
# Env: PYTHON (the interpreter for the venv, default python3), TORCH_SPEC (default torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
BUILD_PY=.venv/bin/python  # scripts/setup.sh installs `build` there (requirements-dev.txt)
[ -x "$BUILD_PY" ] || BUILD_PY=$PY
start=$SECONDS
tmp=$(mktemp -d "${TMPDIR:-/tmp}/wwmonitor-wheel.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
step() { echo "check_wheel: $* ($((SECONDS - start)) s)"; }

step "building the wheel"
if ! "$BUILD_PY" -m build --wheel --outdir "$tmp/dist" "$REPO" >"$tmp/build.log" 2>&1; then
  cat "$tmp/build.log" >&2
  echo "check_wheel: the wheel build failed" >&2
  exit 1
fi
# say any warning the build printed (byte-compiling is off when PYTHONDONTWRITEBYTECODE is set: not ours)
grep -i -E "warning|deprecat" "$tmp/build.log" | grep -v "byte-compiling is disabled" | sed 's/^/check_wheel: build: /' >&2 || true
wheels=("$tmp"/dist/wwmonitor-*.whl)
whl=${wheels[0]}
[ -f "$whl" ] || { echo "check_wheel: no wheel in $tmp/dist" >&2; exit 1; }

step "installing $(basename "$whl") into a clean venv ($TORCH_SPEC first, then [all,demo])"
"$PY" -m venv "$tmp/venv"
V="$tmp/venv/bin"
"$V/python" -m pip install -q --upgrade pip
"$V/python" -m pip install -q "$TORCH_SPEC"
"$V/python" -m pip install -q "$TORCH_SPEC" "${whl}[all,demo]"
"$V/python" -m pip check

step "using the installed package from outside the repository"
mkdir "$tmp/work"
cd "$tmp/work"
export MPLBACKEND=Agg WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1
"$V/python" - "$tmp/venv" <<'EOF'
import importlib.metadata as md
import json
import sys
from pathlib import Path

import numpy as np

import wwmonitor

venv = Path(sys.argv[1]).resolve()
assert venv in Path(wwmonitor.__file__).resolve().parents, f"not the installed package: {wwmonitor.__file__}"
W = np.random.default_rng(0).standard_normal((300, 120))
m = wwmonitor.analyze_matrix(W, "w")
fit = wwmonitor.fit_powerlaw(wwmonitor.esd(W))
heavy = ["torch", "lightning", "pytorch_lightning", "keras", "tensorboard", "wandb", "tensorflow", "jax",
         "matplotlib", "pandas", "mlflow", "transformers", "sklearn"]
loaded = [h for h in heavy if h in sys.modules]
assert loaded == [], f"`import wwmonitor` + analysis loaded {loaded}"
assert m.phase == "random-like" and np.isfinite(fit.alpha), (m.phase, fit.alpha)
meta = md.metadata("wwmonitor")
assert meta["License-Expression"] == "Apache-2.0", meta["License-Expression"]
lic = [f for f in md.files("wwmonitor") if f.name == "LICENSE"]
assert lic and "Apache License" in lic[0].read_text(), lic
import torch  # noqa: E402  (the pinned build stayed)
print(json.dumps({"wwmonitor": wwmonitor.__version__, "torch": torch.__version__, "phase": m.phase,
                  "alpha": round(float(m.alpha), 3)}))
EOF
"$V/wwmonitor" --version
"$V/python" "$REPO/examples/pytorch_monitor.py" --epochs 1 --out "$tmp/work/example"
step "ok"
