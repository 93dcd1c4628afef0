#!/usr/bin/env bash
# Run the fault tests (one SeaweedFS behind a fault proxy, and a SeaweedFS cluster) and write
# what each saw to docs/fault-matrix.md: requests sent, completed, errors, wrong answers,
# good objects deleted, server restarts. About 10 minutes on 2 cores.
#   bash scripts/fault_matrix.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OBJECTCACHE_FAULT_MATRIX="$PWD/docs/fault-matrix.md"
export OBJECTCACHE_FAULT_MATRIX_COMMAND="bash scripts/fault_matrix.sh"
exec bash scripts/test.sh -q tests/e2e/test_e2e_faults.py tests/e2e/test_e2e_cluster.py "$@"
