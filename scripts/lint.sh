#!/usr/bin/env bash
# Static checks: ruff lint, ruff format check, mypy (config: pyproject.toml [tool.ruff], [tool.mypy]).
# Runs all three and exits non-zero if any of them failed, so one log shows every finding.
# Needs the dev tools from requirements-dev.txt (bash scripts/setup.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
failed=()
.venv/bin/ruff check . || failed+=("ruff check")
.venv/bin/ruff format --check . || failed+=("ruff format --check")
.venv/bin/mypy || failed+=("mypy")
if [ ${#failed[@]} -ne 0 ]; then
  msg=$(printf '%s; ' "${failed[@]}")
  echo "lint: failed: ${msg%; }" >&2
  exit 1
fi
echo "lint: all checks passed"
