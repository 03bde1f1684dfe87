#!/usr/bin/env bash
# The main job on the embedded default (no GPU, no downloads besides packages).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="${VENV:-.venv}/bin/python"
"$PY" -m models
