#!/usr/bin/env bash
# The main job on the embedded default (no GPU, no downloads besides packages):
# train LeNet-5 on scikit-learn's digits, export it as ONNX fp32 + int8 into model_repository/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="${VENV:-.venv}/bin/python"
"$PY" -m models
"$PY" -m models.train lenet5 --dataset digits --out checkpoints/lenet5_digits.pt
# --force: re-running the demo replaces version 1 instead of stopping at it.
"$PY" -m export lenet5 --weights checkpoints/lenet5_digits.pt --int8 --calib digits \
  --repo model_repository --force
