#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite; CI runs exactly this, every tier. Extra arguments go
# to pytest.
#   --fast   the in-process tier only (no server processes, peers, benchmarks or whole-family exports):
#            the loop to run on every change (about 3 minutes once .venv exists)
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
for arg in "$@"; do
  if [ "$arg" = --fast ]; then
    args+=(-m "not process and not peers and not bench and not slow")
  else
    args+=("$arg")
  fi
done
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/python" -m pytest "${args[@]}"
