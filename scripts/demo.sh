#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job: the batch-size sweep demo.
# Extra arguments go to `wwmonitor demo` (see `wwmonitor demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=offline WANDB_SILENT=true MPLBACKEND=Agg
exec .venv/bin/wwmonitor demo "$@"
