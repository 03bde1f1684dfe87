#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite; CI runs exactly this, every tier. Extra arguments go
# to pytest.
#   --fast   the in-process tier only (no server processes, peers, benchmarks, images or whole-family exports):
#            the loop to run on every change (about 3 minutes once .venv exists)
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
for arg in "$@"; do
  if [ "$arg" = --fast ]; then
    args+=(-m "not process and not peers and not bench and not slow and not image")
  else
    args+=("$arg")
  fi
done
started=$SECONDS
bash scripts/setup.sh
echo "set-up: $((SECONDS - started)) s (the suite's own time, per tier, comes at its end)"
# The full run's exports peak at a few GB under the temp folder; say so before a full disk shows up as
# protobuf DecodeErrors in the middle of the run.
tmp="${TMPDIR:-/tmp}"
free_kb=$(df -Pk "$tmp" | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt $((4 * 1024 * 1024)) ]; then
  echo "warning: only $((free_kb / 1024)) MiB free in $tmp; the full suite writes a few GB of exports there" >&2
fi
exec "${VENV:-.venv}/bin/python" -m pytest "${args[@]}"
