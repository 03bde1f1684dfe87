"""The GPU check without a GPU: its dry run end to end as CI runs it (with the packages the lent GPU
machine lacks made unimportable), the environment survey, and failing fast on a model that cannot load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bench.gpucheck import environment, served
from bench.gpucheck.served import CheckFailed
from harness.repository import copy_entry

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]
# What the lent GPU machine's image lacks (KINDS.md): importing any of them there fails.
ABSENT_ON_GPU_IMAGE = ("starlette", "uvicorn", "tensorrt", "grpc_reflection", "grpc_health")


@pytest.fixture(scope="module")
def gpu_image_env(tmp_path_factory) -> dict[str, str]:
    """An environment whose Python (and every subprocess it starts) cannot import what the GPU image
    lacks, as if it were absent."""
    poison = tmp_path_factory.mktemp("absent")
    for name in ABSENT_ON_GPU_IMAGE:
        (poison / name).mkdir()
        (poison / name / "__init__.py").write_text(
            f"raise ImportError('{name} is absent on the GPU image')\n"
        )
    path = os.pathsep.join([str(poison), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "PYTHON": sys.executable, "WHEELS": str(poison / "none")}


def test_dry_run_exercises_the_whole_check_on_the_cpu(gpu_image_env, tmp_path):
    """The GPU's code path on the CPU: the torch programs served (``--backend torch``), asked in-process for
    a batch above the entries' cap, which is recorded as refused; the record and the server's logs kept
    under $OUT."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--dry-run", "--work", str(tmp_path / "work")],
        env={**gpu_image_env, "OUT": str(tmp_path / "out")},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert record["stages"][-1] == "finished" and "failed" not in record
    assert record["environment"]["missing"] == []
    assert "tensorrt: TensorRT plans (int8 on the GPU)" in record["environment"]["absent"]
    assert list(record["models"]) == ["lenet5", "lenet5_fp16", "lenet5_int8"]
    for name, figures in record["models"].items():
        inprocess, points = figures["inprocess"], figures["inprocess"]["points"]
        assert inprocess["max_batch_size"] == 4 and points["image"][0]["images_per_s"] > 0
        if name.endswith("int8"):  # no torch program: onnxruntime, which takes any batch
            assert figures["served_config"]["served_artifact"] == "model.onnx"
            assert [p["batch"] for p in points["input"]] == [1, 2, 8] and inprocess["refused"] == []
        else:
            assert figures["served_config"]["served_artifact"] == "model.pt2"
            assert inprocess["label"] == "torch" and [p["batch"] for p in points["input"]] == [1, 2]
            assert [(r["kind"], r["batch"]) for r in inprocess["refused"]] == [("input", 8), ("pixels", 8)]
            assert "a batch of 8 rows; this instance takes at most 4" in inprocess["refused"][0]["reason"]
        answers = figures["answers"]
        gated = [answers[k]["passed"] for k in ("input", "pixels", "image")]
        assert gated == ([None] * 3 if name.endswith("int8") else [True] * 3), answers
    lenet5 = record["models"]["lenet5"]
    assert set(lenet5["served"]) == {"input", "pixels", "image"}
    for points in lenet5["served"].values():
        assert [p["concurrency"] for p in points] == [1, 2]
        assert all(p["images_per_s"] > 0 and not p["errors"] for p in points)
    assert set(lenet5["ratios"]) == {"input", "pixels", "image"}
    exported = record["export"]["entries"]
    assert [a["file"] for a in exported["lenet5_fp16"]["artifacts"]] == ["model.onnx", "model.pt2"]
    assert "no torch.export program" in exported["lenet5_int8"]["notes"][0]
    with Image.open(tmp_path / "out" / "gpu-check.png") as image:
        assert image.format == "PNG"
    table = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "| lenet5 | torch | pixels |" in table
    server_log = Path(record["server_log"])
    assert (
        server_log.parent == tmp_path / "out" / "logs" and "loaded lenet5 version 1" in server_log.read_text()
    )
    assert "versions:" in done.stderr and "grpcio" in done.stderr  # versions first


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import torch; assert not torch.cuda.is_available()"]).returncode,
    reason="a CUDA GPU is present: the gpu section would run",
)
def test_the_gpu_bench_section_imports_only_what_it_needs(gpu_image_env, tmp_path):
    """``python -m bench --section gpu`` where Starlette and uvicorn are absent (the lent GPU machine's
    image): the gpu section must not need them, and the listing of every section still works (the
    do-nothing server imports its HTTP stack only when it serves HTTP)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--section", "gpu", "--out", str(tmp_path)],
        env=gpu_image_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gpu: skipped: no CUDA GPU" in " ".join(done.stdout.split())
    listing = subprocess.run(
        [sys.executable, "-m", "bench", "--list"], env=gpu_image_env, cwd=ROOT, capture_output=True, text=True
    )
    listed = " ".join(listing.stdout.split())
    assert listing.returncode == 0 and "client: load tester overhead floor" in listed and "gpu:" in listed


def test_survey_names_what_is_missing_or_too_old(monkeypatch):
    real = environment.installed
    fake = {"grpcio": "1.75.0", "protobuf": None, "tensorrt": None}
    monkeypatch.setattr(environment, "installed", lambda d: fake[d] if d in fake else real(d))
    env = environment.survey(need_cuda=False)
    assert "grpcio 1.75.0 is older than 1.75.1" in env.missing[0]
    assert any(m.startswith("protobuf>=6.31.1 is not installed") for m in env.missing)
    assert "tensorrt: TensorRT plans (int8 on the GPU)" in env.absent
    assert environment._release("2.11.0+cu130") == (2, 11, 0) and environment._release("1.75.1rc1") == (
        1,
        75,
        1,
    )


def test_a_model_the_server_cannot_load_fails_the_check_at_once(lenet5_export, tmp_path):
    repo = tmp_path / "repo"
    copy_entry(lenet5_export["fp32"].model_dir, repo)
    manifest = repo / "lenet5" / "1" / "manifest.json"
    manifest.write_text(manifest.read_text().replace(lenet5_export["fp32"].manifest.sha256, "0" * 64))
    # the server's own reason, not "models not ready after 300s": it failed at once, without the timeout
    with pytest.raises(CheckFailed, match=r"model lenet5 cannot load: .*sha256 of model\.onnx"):
        served.start(repo, tmp_path / "logs", "cpu", ["lenet5"], timeout_s=300)


def test_server_arguments_turn_http_off_where_the_server_has_it():
    from service.settings import Settings

    args = served.server_args("cuda", ["m"], "torch")
    assert args[:6] == ["--device", "cuda", "--backend", "torch", "--load-model", "m"]
    assert ("--http-port" in args) == ("http_port" in Settings.__dataclass_fields__)


def test_dependency_floors_match_the_generated_stubs():
    """pyproject's grpcio and protobuf floors are the versions the checked-in stubs were generated for,
    and the check asks for the same."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    floors = environment.generated_floors()
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"grpcio>={floors['grpcio']}" in dependencies
    assert any(d.startswith(f"protobuf>={floors['protobuf']}") for d in dependencies)
    assert environment.REQUIRED["grpcio"][1] == floors["grpcio"] == "1.75.1"
    assert environment.REQUIRED["protobuf"][1] == floors["protobuf"] == "6.31.1"


class _ServerThatBreaks:
    """Started (its log written under the logs folder it was given); its first client call raises."""

    def __init__(self, logs: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / "server-1.log"
        self.log_path.write_text("the server's log\n")
        self.terminated = False

    def client(self):
        raise RuntimeError("the client broke")

    def terminate(self) -> None:
        self.terminated = True

    def log(self) -> str:
        return self.log_path.read_text()


def test_any_error_is_recorded_with_the_steps_done_and_the_logs_kept(tmp_path, monkeypatch):
    """Not only CheckFailed: an error of any kind stops the check with exit status 1, the record written
    (steps done, the error, its traceback) and the server's log under $OUT, outside the work folder that
    is deleted."""
    import bench.gpucheck as gpucheck
    from bench.gpucheck.__main__ import main

    servers = []

    def start(repo, logs, device, models, timeout_s, backend):
        servers.append(_ServerThatBreaks(logs))
        return servers[-1]

    monkeypatch.setattr(gpucheck, "export", lambda plan, repo, weights, notes: {"seconds": 0, "entries": {}})
    monkeypatch.setattr(served, "start", start)
    out = tmp_path / "out"
    assert main(["--dry-run", "--out", str(out)]) == 1
    record = json.loads((out / "gpu-check.json").read_text())
    assert record["stages"] == ["survey", "export", "failed"]
    assert record["failed"] == "RuntimeError: the client broke"
    assert 'raise RuntimeError("the client broke")' in record["traceback"]
    assert record["environment"]["versions"]["python"] and record["plan"]["backend"] == "torch"
    assert servers[0].terminated and record["server_log"] == str(out / "logs" / "server-1.log")
    assert (out / "logs" / "server-1.log").read_text() == "the server's log\n"
