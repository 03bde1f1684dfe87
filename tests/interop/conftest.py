"""Fixtures of the interop tests: each peer installed once per session (25-40 s each the first time on
this machine, then cached under $CNNSERVE_PEERS_CACHE), the session's LeNet-5 ONNX as the peers serve it.

A peer that cannot be installed or started skips its tests with the reason; with CNNSERVE_PEERS_REQUIRED
set (a CI that must exercise the peers) they fail instead."""

from __future__ import annotations

import pytest

from harness.peers import OnnxModel, PeerUnavailable, mlserver, triton
from tests.interop.support import onnx_model, unavailable


@pytest.fixture(scope="session")
def triton_install() -> triton.TritonInstall:
    try:
        return triton.ensure()
    except PeerUnavailable as e:
        unavailable("triton", e)


@pytest.fixture(scope="session")
def mlserver_install() -> mlserver.MLServerInstall:
    try:
        return mlserver.ensure()
    except PeerUnavailable as e:
        unavailable("mlserver", e)


@pytest.fixture(scope="session")
def lenet5_onnx(lenet5_export) -> OnnxModel:
    """``lenet5/1/model.onnx`` of the session repository (python -m export), as the peers serve it."""
    return onnx_model(lenet5_export["fp32"])
