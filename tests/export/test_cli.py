"""Every error case of ``python -m export`` ends with a one-line message and a non-zero exit."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from export.cli import main

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_unknown_model_lists_known_ones(capsys):
    assert main(["resnet9000", "--quiet"]) == 2
    msg = _error(capsys)
    assert "unknown model 'resnet9000'" in msg and "lenet5" in msg and "vgg19_bn" in msg


def test_missing_weights_file(tmp_path, capsys):
    assert (
        main(["lenet5", "--weights", str(tmp_path / "missing.pt"), "--repo", str(tmp_path), "--quiet"]) == 2
    )
    assert "missing.pt does not exist" in _error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_imagenet_weights_not_cached(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["resnet18", "--weights", "imagenet", "--repo", str(tmp_path / "repo"), "--quiet"]) == 2
    msg = _error(capsys)
    assert "not in the local cache" in msg and str(tmp_path / "torch" / "hub" / "checkpoints") in msg


def test_unreadable_calibration_folder(tmp_path, capsys):
    args = ["lenet5", "--int8", "--repo", str(tmp_path / "repo"), "--quiet", "--calib"]
    assert main([*args, str(tmp_path / "nowhere")]) == 2
    assert "calibration folder" in _error(capsys)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "img.png").write_bytes(b"")
    assert main([*args, str(tmp_path / "flat")]) == 2
    assert "no class sub-folders" in _error(capsys)
    (tmp_path / "broken" / "cls").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "broken" / "cls" / f"{i}.png").write_bytes(b"garbage")
    assert main([*args, str(tmp_path / "broken")]) == 2
    assert "cannot read image" in _error(capsys)
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their mode")
def test_calibration_folder_without_permission(tmp_path, capsys):
    locked = tmp_path / "locked"
    (locked / "cls").mkdir(parents=True)
    locked.chmod(0)
    try:
        assert main(["lenet5", "--int8", "--calib", str(locked), "--repo", str(tmp_path), "--quiet"]) == 2
        assert "not readable" in _error(capsys)
    finally:
        locked.chmod(0o755)


def test_existing_version_needs_force(tmp_path, capsys):
    args = ["lenet5", "--repo", str(tmp_path), "--quiet", "--eval-samples", "4"]
    assert main(args) == 0
    first = (tmp_path / "lenet5" / "1" / "manifest.json").read_text()
    capsys.readouterr()
    assert main(args) == 2
    assert "lenet5/1 already exists; pass --force to replace it" in _error(capsys)
    assert main([*args, "--version", "2"]) == 0
    assert main([*args, "--force", "--seed", "3"]) == 0
    assert (tmp_path / "lenet5" / "1" / "manifest.json").read_text() != first
    assert sorted(p.name for p in (tmp_path / "lenet5").iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]


def test_tensorrt_on_where_it_cannot_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    assert main(["lenet5", "--fp16", "--tensorrt", "on", "--repo", str(tmp_path), "--quiet"]) == 2
    assert "TensorRT is not installed" in _error(capsys)
    assert main(["lenet5", "--tensorrt", "on", "--repo", str(tmp_path), "--quiet"]) == 2
    assert "ask for fp16 and/or int8 too" in _error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_bad_numbers(tmp_path, capsys):
    base = ["lenet5", "--repo", str(tmp_path), "--quiet"]
    assert main([*base, "--opset", "17"]) == 2
    assert "--opset must be >= 18" in _error(capsys)
    assert main([*base, "--max-batch-size", "0"]) == 2
    assert "--max-batch-size must be at least 1" in _error(capsys)
    assert main([*base, "--version", "0"]) == 2
    assert "--version must be a positive integer" in _error(capsys)
    assert main([*base, "--int8", "--calib-samples", "0"]) == 2
    assert "--calib-samples must be at least 1" in _error(capsys)


def test_module_entry_point_exit_code_and_summary(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bad = subprocess.run(
        [sys.executable, "-m", "export", "nope"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: unknown model 'nope'") and "Traceback" not in bad.stderr
    good = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "lenet5",
            "--fp16",
            "--repo",
            str(tmp_path / "repo"),
            "--eval-samples",
            "4",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert good.returncode == 0, good.stderr
    assert "lenet5_fp16" in good.stdout and "top-1 agree" in good.stdout
    assert "export ONNX fp32" in good.stderr  # stage progress
    assert (tmp_path / "repo" / "lenet5_fp16" / "1" / "model.onnx").is_file()
