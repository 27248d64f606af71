#!/usr/bin/env bash
# Install wwmonitor as a user would and use it from outside the repository (.ci/run calls this after the tests):
#   1. build the wheel from this checkout (`python -m build --wheel`, isolated build) into a temp folder;
#   2. create a clean venv (`python3 -m venv`), install torch first (pinned, the CPU build from the machine's
#      wheels, as README.md advises), then the wheel with its `all` and `demo` extras (the extras must resolve
#      with that torch: it is pinned again so nothing can swap it);
#   3. from a temp folder, not the repo: the core import without heavy side effects (as tests/test_imports.py),
#      the metadata and LICENSE of the install, the console script, and examples/pytorch_monitor.py.
# Everything lives in one temp folder (see `base` below), removed at exit; pip reuses its own cache if the machine has one.
# Env: PYTHON (the interpreter for the venv, default python3), TORCH_SPEC (default torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
BUILD_PY=.venv/bin/python  # scripts/setup.sh installs `build` there (requirements-dev.txt)
[ -x "$BUILD_PY" ] || BUILD_PY=$PY
start=$SECONDS
# the venv (~2 GB, tens of thousands of files) goes to memory (/dev/shm) when it has room: writing and removing
# it there takes seconds, on a disk mounted with discard minutes; TMPDIR, when set, decides instead
base=${TMPDIR:-/tmp}
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ] \
   && [ "$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')" -gt $((6 * 1024 * 1024)) ] 2>/dev/null; then
  base=/dev/shm
fi
tmp=$(mktemp -d "$base/wwmonitor-wheel.XXXXXX")
trap 'rm -rf "$tmp"; echo "check_wheel: removed the temp venv ($((SECONDS - start)) s in all)"' EXIT
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
# pip's exit status is kept (pipefail); the filter drops only this machine's pip-config noise about local index
# folders that do not hold a package; --no-compile: no .pyc for the ~1 GB installed here just to run it once
pip_() { "$V/python" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
pip_ install -q --no-compile --upgrade pip
pip_ install -q --no-compile "$TORCH_SPEC"
pip_ install -q --no-compile "$TORCH_SPEC" "${whl}[all,demo]"
pip_ check

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
dists = ["torch", "lightning", "pytorch-lightning", "keras", "tensorboard", "wandb", "mlflow", "transformers",
         "accelerate", "scikit-learn"]
print(json.dumps({"wwmonitor": wwmonitor.__version__, "phase": m.phase, "alpha": round(float(m.alpha), 3),
                  "installed": {d: md.version(d) for d in dists}}))
EOF
"$V/wwmonitor" --version
"$V/python" "$REPO/examples/pytorch_monitor.py" --epochs 1 --out "$tmp/work/example"
step "ok"
