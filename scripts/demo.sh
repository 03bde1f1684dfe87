#!/usr/bin/env bash
# The main job on the embedded default (CPU, no downloads besides packages): train LeNet-5 on
# scikit-learn's digits, export it as ONNX fp32 + int8 into model_repository/, serve it with
# python -m service, classify the held-out digits through gRPC (accuracy and latency per served
# model), and stop the server with SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_PEERS=0 bash scripts/setup.sh  # the peer servers are for the test suite only
PY="${VENV:-.venv}/bin/python"
"$PY" -m models
"$PY" -m models.train lenet5 --dataset digits --out checkpoints/lenet5_digits.pt
# --force: re-running the demo replaces version 1 instead of stopping at it.
"$PY" -m export lenet5 --weights checkpoints/lenet5_digits.pt --int8 --calib digits \
  --repo model_repository --force
"$PY" -m examples.classify_digits --repo model_repository --models lenet5 lenet5_int8
