"""The export checks a torch program with the CUDA numerics the server serves it with (TF32 off for fp32,
though cuDNN's default is on), set by one function for both; the flags are global, so they are read
while the program runs (on the CPU here: the flags are the same objects with or without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from export.torch_program import ProgramRunner, export_program
from modelrepo import torch_numerics
from modelrepo.preprocess import InputSpec

SPEC = InputSpec(1, 4, 4, (0.5,), (0.5,), "L")
FLAGS = ("cudnn.allow_tf32", "cuda.matmul.allow_tf32", "cudnn.benchmark")


def read_flags() -> dict[str, bool]:
    return {name: getattr(*torch_numerics._flag_owner(torch, name)) for name in FLAGS}


def set_flags(flags: dict[str, bool]) -> None:
    for name, value in flags.items():
        setattr(*torch_numerics._flag_owner(torch, name), value)


@pytest.fixture
def tf32_on():
    """cuDNN's and cuBLAS's TF32 on, as a process may have them; restored after the test."""
    saved = read_flags()
    set_flags({"cudnn.allow_tf32": True, "cuda.matmul.allow_tf32": True, "cudnn.benchmark": False})
    yield
    set_flags(saved)


@pytest.mark.parametrize(("precision", "tf32"), [("fp32", False), ("fp16", True)])
def test_a_program_is_checked_with_the_serving_numerics(tmp_path, tf32_on, precision, tf32):
    path = tmp_path / "model.pt2"
    export_program(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), SPEC, path, precision=precision)
    runner = ProgramRunner(path, "cpu")
    program, seen = runner.module, []

    def recording(x):
        seen.append(read_flags())
        return program(x)

    runner.module = recording
    out = runner.run(np.zeros((3, 1, 4, 4), np.float32), 2)
    assert out.shape == (3, 3)
    assert seen == [{"cudnn.allow_tf32": tf32, "cuda.matmul.allow_tf32": tf32, "cudnn.benchmark": True}] * 2
    assert read_flags() == {
        "cudnn.allow_tf32": True,
        "cuda.matmul.allow_tf32": True,
        "cudnn.benchmark": False,
    }


def test_the_server_sets_the_same_numerics(tf32_on):
    torch_numerics.configure_cuda(torch, torch.float32)
    assert read_flags() == {
        "cudnn.allow_tf32": False,
        "cuda.matmul.allow_tf32": False,
        "cudnn.benchmark": True,
    }
