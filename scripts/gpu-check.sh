#!/usr/bin/env bash
# One command for a GPU machine with CUDA torch and no network, run from the source tree:
#   bash scripts/gpu-check.sh [--dry-run] [--model resnet50] [--out DIR]
# Prints the versions and what is missing first, then (in under 8 minutes on one GPU) exports the model
# (fp32, fp16, int8 where something runs it), serves it on the GPU, checks the served answers against
# PyTorch, and measures in-process and gRPC throughput (FP32 input, UINT8 pixels, JPEG image) with GPU
# utilization; writes gpu-check.{json,png,md} to $OUT when set (else ./gpu-check). --dry-run: the same code
# with tiny sizes on the CPU (CI runs it). Wheels carried to the machine (docs/GPU.md) are taken from
# $WHEELS (default .whl/): each one whose distribution the image lacks, or has below the project's floor
# (bench/gpucheck/wheels.py decides and says why it leaves any out).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WHEELS="${WHEELS:-.whl}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    mapfile -t NEEDED < <("$PYTHON" bench/gpucheck/wheels.py "$WHEELS")
    if ((${#NEEDED[@]})); then
        SITE="${TMPDIR:-/tmp}/cnnserve-wheels"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "${NEEDED[@]}"
        export PYTHONPATH="$SITE:$PYTHONPATH"  # carried wheels before the image's own packages
    fi
fi
exec "$PYTHON" -m bench.gpucheck "$@"
