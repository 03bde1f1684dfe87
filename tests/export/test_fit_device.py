"""Batching is fitted on the device and runtime that serve the entry: where the export host has CUDA
(simulated here: the program runs on the CPU while the export asks for "cuda"), the torch program is
timed on it; elsewhere onnxruntime on the CPU, and the record says so and keeps the model's limit for
the serving host's ``--tune``."""

from __future__ import annotations

from export import export_model, pipeline
from export.torch_program import ProgramRunner

LIMIT = 4


def export_lenet5(repo):
    return export_model(
        "lenet5", weights="random", repo=repo, tensorrt="off", max_batch_size=LIMIT, eval_samples=8
    )["fp32"].manifest.batching


def test_on_a_cpu_host_onnxruntime_is_timed_and_the_record_says_so(tmp_path):
    record = export_lenet5(tmp_path)
    assert (record["device"], record["runtime"]) == ("cpu", "onnxruntime CPUExecutionProvider")
    assert record["limit"] == LIMIT and [b for b, _ in record["curve"]] == [1, 2, 4]


def test_on_a_cuda_host_the_torch_program_is_timed_there(tmp_path, monkeypatch):
    asked, timed = [], []

    class OnTheCpu(ProgramRunner):
        def __init__(self, path, device):
            asked.append(device)
            super().__init__(path, "cpu")

        def __call__(self, x):
            timed.append(len(x))
            return super().__call__(x)

    monkeypatch.setattr(pipeline, "validation_device", lambda: "cuda")
    monkeypatch.setattr(pipeline, "ProgramRunner", OnTheCpu)
    record = export_lenet5(tmp_path)
    assert asked == ["cuda", "cuda"]  # the program's check, then the batching's timing
    assert record["device"] == "cuda" and record["runtime"].startswith("torch")
    assert record["limit"] == LIMIT and {1, 2, 4} <= set(timed)
