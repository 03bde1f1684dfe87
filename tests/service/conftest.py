"""Fixtures for the server tests: small model repositories and real servers on free local ports."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.repository import add_model, copy_entry, export_torch_program, faulty_onnx
from harness.server import start_server
from models.lenet import DIGIT_LABELS, DIGITS_INPUT
from protos import grpc_service_pb2_grpc as pb_grpc
from service.client import InferenceClient


class Artifacts:
    """What the server tests serve: entries written by the export pipeline, and the hand-made rest."""

    def __init__(self, exported, folder: Path) -> None:
        self.lenet5 = exported["fp32"].model_dir  # trained on digits: the session's export
        self.lenet5_int8 = exported["int8"].model_dir
        self.lenet5_onnx = exported["fp32"].artifact
        self.lenet5_v2 = folder / "v2" / "lenet5" / "2"  # version 2, random weights: different outputs
        self.lenet5_pt2 = folder / "lenet5.pt2"  # the trained checkpoint as a torch.export program
        self.faulty = folder / "faulty.onnx"  # fails on inputs >= 1


@pytest.fixture(scope="session")
def artifacts(lenet5_export, lenet_checkpoint, tmp_path_factory) -> Artifacts:
    from export import export_model

    a = Artifacts(lenet5_export, tmp_path_factory.mktemp("artifacts"))
    export_model("lenet5", weights="random", seed=1, version=2, repo=a.lenet5_v2.parents[1], tensorrt="off")
    export_torch_program("lenet5", a.lenet5_pt2, weights=str(lenet_checkpoint))
    faulty_onnx(a.faulty, DIGITS_INPUT)
    return a


@pytest.fixture(scope="session")
def lenet_copy(artifacts):
    """``lenet_copy(repo, name, **copy_entry_kwargs)``: the exported LeNet-5 under another name and
    batching settings."""

    def copy(repo: Path, name: str, **settings) -> Path:
        return copy_entry(artifacts.lenet5, repo, name, **settings)

    return copy


@pytest.fixture(scope="session")
def model_repo(artifacts, lenet_copy, tmp_path_factory) -> Path:
    """`lenet5` and `lenet5_int8` as exported; variants with other batching settings; a torch program and
    a faulty model written by hand."""
    repo = tmp_path_factory.mktemp("repo")
    copy_entry(artifacts.lenet5, repo)
    copy_entry(artifacts.lenet5_int8, repo)
    # no preferred sizes: batches form as the delay allows (the batching tests count them)
    small = {"max_batch_size": 8, "preferred_batch_sizes": ()}
    lenet_copy(repo, "lenet5_batched", **small, max_queue_delay_microseconds=300_000)
    lenet_copy(repo, "lenet5_nobatch", max_batch_size=8, dynamic_batching=False)
    lenet_copy(repo, "lenet5_tiny_queue", **small, max_queue_delay_microseconds=1_000_000, max_queue_size=2)
    spec = {"spec": DIGITS_INPUT, "labels": DIGIT_LABELS, "max_batch_size": 8}
    add_model(repo, "lenet5_torch", artifacts.lenet5_pt2, fmt="torch_export", **spec)
    add_model(repo, "faulty", artifacts.faulty, source_model="faulty", **spec)
    return repo


@pytest.fixture(scope="session")
def server(model_repo, tmp_path_factory):
    """The shared server over ``model_repo`` (its statistics accumulate: tests compare before/after)."""
    running = start_server(model_repo, tmp_path_factory.mktemp("logs"))
    yield running
    running.terminate()


@pytest.fixture(scope="session")
def client(server) -> InferenceClient:
    return server.client()


@pytest.fixture(scope="session")
def stub(server) -> pb_grpc.GRPCInferenceServiceStub:
    return server.client().stub


@pytest.fixture
def small_repo(lenet_copy, tmp_path) -> Path:
    """A private repository with one model, `lenet5` version 1, batching with a 200 ms delay (so requests are
    in flight for a while)."""
    repo = tmp_path / "small_repo"
    lenet_copy(repo, "lenet5", max_batch_size=8, max_queue_delay_microseconds=200_000)
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
