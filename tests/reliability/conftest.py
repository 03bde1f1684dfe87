"""Fixtures of the fault suite: the session's exported LeNet-5, its reference answers, and real servers.

The catalogue, image, bomb and mutation cases share one server (each case checks that it is alive and
correct afterwards, so a case that breaks it fails on the spot); the cases that stop, overload or
reconfigure a server start their own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.repository import add_model, copy_entry
from harness.server import start_server
from tests.reliability.fault_kit import MODEL, RGB_MODEL, RGB_SPEC, Reference, linear_onnx


@pytest.fixture(scope="session")
def lenet5_dir(lenet5_export) -> Path:
    """The exported LeNet-5 model folder (trained on digits; config.pbtxt, labels, version 1)."""
    return lenet5_export["fp32"].model_dir


@pytest.fixture(scope="session")
def reference(lenet5_export) -> Reference:
    return Reference(lenet5_export["fp32"].artifact)


@pytest.fixture(scope="session")
def rgb_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rgb") / "rgb.onnx"
    linear_onnx(path, channels=3)
    return path


@pytest.fixture(scope="session")
def rgb_reference(rgb_onnx) -> Reference:
    return Reference(rgb_onnx)


@pytest.fixture(scope="session")
def shared_server(lenet5_dir, rgb_onnx, tmp_path_factory):
    """One server with `lenet5` as exported, `rgb` (RGB images) and default limits, for the cases that
    leave it as it was."""
    repo = tmp_path_factory.mktemp("shared_repo")
    copy_entry(lenet5_dir, repo, MODEL)
    labels = [str(i) for i in range(10)]
    add_model(
        repo, RGB_MODEL, rgb_onnx, spec=RGB_SPEC, labels=labels, source_model=RGB_MODEL, max_batch_size=8
    )
    running = start_server(repo, tmp_path_factory.mktemp("shared_logs"))
    yield running
    running.terminate()
