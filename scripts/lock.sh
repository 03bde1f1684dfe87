#!/usr/bin/env bash
# Refresh constraints.txt: the exact versions of everything `pip install -e '.[dev]'` brings, resolved anew
# within pyproject.toml's ranges in a throw-away virtual environment. scripts/setup.sh, CI and the Docker
# build install with `-c constraints.txt`, so a fresh machine next month installs what the suite passed
# with. After a refresh, run `bash scripts/test.sh` and commit constraints.txt only if it passes.
#   TORCH_SPEC  torch/torchvision of the environment (default: setup.sh's); torch, torchvision and their
#               CUDA libraries are left out of the file: TORCH_SPEC chooses them, per host
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "==> resolving .[dev] afresh in $work/venv"
"$PY" -m venv "$work/venv"
pip() { "$work/venv/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
pip install --upgrade pip
# shellcheck disable=SC2086
pip install $TORCH_SPEC
pip install ".[dev]"
{
  echo "# Exact versions the test suite passed with (scripts/lock.sh wrote this; refresh: bash scripts/lock.sh)."
  echo "# Python $("$work/venv/bin/python" -c 'import platform; print(platform.python_version())'); torch, torchvision and CUDA libraries come from TORCH_SPEC."
  "$work/venv/bin/python" -m pip freeze --all --exclude-editable --disable-pip-version-check \
    | grep -v -i -E '^(cnnserve|torch|torchvision|triton)==|^(nvidia|cuda)-' | LC_ALL=C sort -f
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "==> constraints.txt: $(grep -c '==' constraints.txt) pinned packages; now run: bash scripts/test.sh"
