#!/usr/bin/env bash
# Run the whole test suite (what CI runs): installs first if needed, lints, then pytest.
#   bash scripts/test.sh                 # everything, end-to-end included
#   bash scripts/test.sh -m "not e2e"    # unit and component tests only (~minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if ! (command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1); then
  export SGLANG_USE_CPU_ENGINE=1
fi
# The lint settings are in pyproject.toml; a finding fails the run before any test.
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
