#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its dev tools, at the exact versions of
# constraints.txt (refresh them with scripts/lock.sh). Idempotent; safe to re-run.
#   TORCH_SPEC   torch/torchvision to install when the venv has none
#                (default: the releases this project is developed on)
#   VENV         virtual environment folder (default: .venv)
#   SETUP_PEERS  0: do not install the real Triton and MLServer the interop tests run (default: 1;
#                scripts/demo.sh sets 0: only the test suite needs them)
# pip's own output (build-tool notices, warnings about this machine's pip configuration) goes to
# $VENV/setup.log; it is printed only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
fi
LOG="$VENV/setup.log"
: > "$LOG"
pip() {
  if ! "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" >>"$LOG" 2>&1; then
    echo "error: pip $* failed; the last lines of $LOG:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}
# constraints.txt was resolved on one Python (its second line); on another minor version its pins may not
# exist, so there the ranges of pyproject.toml decide, and setup says so.
locked=$(sed -n 's/^# Python \([0-9]*\.[0-9]*\).*/\1/p' constraints.txt)
here=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
lock=(-c constraints.txt)
if [ "$locked" != "$here" ]; then
  echo "   (constraints.txt is for Python $locked, this is $here: installing within pyproject's ranges)"
  lock=()
fi
pip install "${lock[@]}" --upgrade pip
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "==> installing $TORCH_SPEC (a few minutes)"
  # shellcheck disable=SC2086
  pip install "${lock[@]}" $TORCH_SPEC
fi
echo "==> installing the project and its dev tools${lock:+ (constraints.txt)}"
pip install "${lock[@]}" -e ".[dev]"

# promtool, kubectl, Docker and debootstrap are used by the deploy tests; install them where we may (root + apt).
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v kubectl >/dev/null || need+=(kubectl)
# The container image's test builds and runs the Dockerfile with Debian's Docker and a debootstrap base.
if [ "${SETUP_PEERS:-1}" != 0 ]; then
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v debootstrap >/dev/null || need+=(debootstrap)
fi
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "==> apt-get install ${need[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") \
    >>"$LOG" 2>&1 || echo "   (could not install ${need[*]}; the tests that need them will skip)"
fi
# Real Triton and MLServer for tests/interop, each in a cached venv of its own (CNNSERVE_PEERS_CACHE,
# default ~/.cache/cnnserve/peers): about 80 s and 1 GB the first time, nothing after. The tests would
# install them on first use anyway; here the time is paid up front and a failure shows early.
# Never fatal: where the registry cannot be reached, the interop tests skip with the reason.
if [ "${SETUP_PEERS:-1}" != 0 ]; then
  echo "==> installing the peer servers (python -m harness.peers setup)"
  peers=("$VENV/bin/python" -m harness.peers setup)
  if command -v timeout >/dev/null; then peers=(timeout 1200 "${peers[@]}"); fi
  "${peers[@]}" || echo "   (peers not installed; the interop tests will skip with the reason)"
fi
echo "==> ready: $VENV"
