"""Fixtures for the server tests: small model repositories and real servers on free local ports."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.lenet import DIGIT_LABELS, DIGITS_INPUT
from protos import grpc_service_pb2_grpc as pb_grpc
from service.client import InferenceClient
from service.testing import add_model, export_onnx, export_torch_program, faulty_onnx, start_server


class Artifacts:
    def __init__(self, folder: Path) -> None:
        self.lenet5 = folder / "lenet5.onnx"  # random weights, seed 0
        self.lenet5_v2 = folder / "lenet5_v2.onnx"  # seed 1: different outputs
        self.lenet5_pt2 = folder / "lenet5.pt2"
        self.faulty = folder / "faulty.onnx"  # fails on inputs >= 1


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Artifacts:
    a = Artifacts(tmp_path_factory.mktemp("artifacts"))
    export_onnx("lenet5", a.lenet5, seed=0)
    export_onnx("lenet5", a.lenet5_v2, seed=1)
    export_torch_program("lenet5", a.lenet5_pt2, seed=0)
    faulty_onnx(a.faulty, DIGITS_INPUT)
    return a


def _add_lenet(repo: Path, name: str, artifact: Path, **kwargs) -> Path:
    return add_model(repo, name, artifact, spec=DIGITS_INPUT, labels=DIGIT_LABELS, **kwargs)


@pytest.fixture(scope="session")
def add_lenet():
    """``add_lenet(repo, name, artifact, **add_model_kwargs)``: a LeNet-5 entry (digits spec and labels)."""
    return _add_lenet


@pytest.fixture(scope="session")
def model_repo(artifacts, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    _add_lenet(repo, "lenet5", artifacts.lenet5, max_batch_size=8)
    _add_lenet(
        repo, "lenet5_batched", artifacts.lenet5, max_batch_size=8, max_queue_delay_microseconds=300_000
    )
    _add_lenet(repo, "lenet5_nobatch", artifacts.lenet5, max_batch_size=8, dynamic_batching=False)
    _add_lenet(
        repo,
        "lenet5_tiny_queue",
        artifacts.lenet5,
        max_batch_size=8,
        max_queue_delay_microseconds=1_000_000,
        max_queue_size=2,
    )
    _add_lenet(repo, "lenet5_torch", artifacts.lenet5_pt2, fmt="torch_export", max_batch_size=8)
    _add_lenet(repo, "faulty", artifacts.faulty, max_batch_size=8, source_model="faulty")
    return repo


@pytest.fixture(scope="session")
def server(model_repo, tmp_path_factory):
    """The shared server over ``model_repo`` (its statistics accumulate: tests compare before/after)."""
    running = start_server(model_repo, tmp_path_factory.mktemp("logs"))
    yield running
    running.terminate()


@pytest.fixture
def server_factory(tmp_path):
    """``server_factory(repo, *args, env=None)``: a server of the test's own, terminated at teardown."""
    started = []
    log_dir = tmp_path / "logs"
    log_dir.mkdir()

    def start(repo: Path, *args: str, env: dict[str, str] | None = None):
        running = start_server(repo, log_dir, *args, env=env)
        started.append(running)
        return running

    yield start
    for running in started:
        running.terminate()


@pytest.fixture(scope="session")
def client(server) -> InferenceClient:
    return server.client()


@pytest.fixture(scope="session")
def stub(server) -> pb_grpc.GRPCInferenceServiceStub:
    return server.client().stub


@pytest.fixture
def small_repo(artifacts, tmp_path) -> Path:
    """A private repository with one model, `lenet5` version 1, batching with a 200 ms delay (so requests are
    in flight for a while)."""
    repo = tmp_path / "small_repo"
    _add_lenet(repo, "lenet5", artifacts.lenet5, max_batch_size=8, max_queue_delay_microseconds=200_000)
    return repo


@pytest.fixture
def scratch_repo(model_repo, tmp_path) -> Path:
    """A private copy of the shared repository (for tests that change it)."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repo, repo)
    return repo


def _digit_png(seed: int, size: int = 28) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def digit_png():
    """``digit_png(seed, size=28)``: a random grayscale PNG (the server resizes it to LeNet-5's 32x32)."""
    return _digit_png
