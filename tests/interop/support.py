"""Helpers of the interop tests: skip-or-fail on an unavailable peer, the in-process reference, the
tritonclient probe subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from harness.peers import OnnxModel, PeerUnavailable

PROBE = Path(__file__).with_name("tritonclient_probe.py")
REQUIRED_ENV = "CNNSERVE_PEERS_REQUIRED"  # set (e.g. in CI that installs the peers) to fail, not skip
TOLERANCE = 1e-4


def unavailable(peer: str, error: PeerUnavailable):
    """Skip with the reason (fail instead where the peers are required)."""
    message = f"{peer} peer unavailable: {error.reason}"
    if os.environ.get(REQUIRED_ENV):
        pytest.fail(message)
    pytest.skip(message)


def onnx_model(entry) -> OnnxModel:
    """An exported entry (``export.WrittenEntry``) as the peers serve it: its name, file and max batch."""
    from modelrepo.config import read_config

    config = read_config(entry.model_dir)
    return OnnxModel.from_onnx(entry.artifact, name=entry.name, max_batch_size=config.max_batch_size)


def reference_logits(model: OnnxModel, x: np.ndarray) -> np.ndarray:
    """onnxruntime CPU in this process on the same file."""
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    return session.run([model.output_name], {model.input_name: x})[0]


def assert_logits_match(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    assert np.ptp(want) > 0, "degenerate reference: every logit equal"
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


def run_probe(address: str, folder: Path, x: np.ndarray, models: list[str]) -> dict:
    """tritonclient.grpc against ``address`` in a subprocess (see tritonclient_probe.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "x.npy", x)
    done = subprocess.run(
        [sys.executable, str(PROBE), address, str(folder), *models],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)
