"""python -m examples.classify_digits (the end of scripts/demo.sh) on the session's exported LeNet-5."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from examples.classify_digits import main
from harness.server import ROOT

pytestmark = pytest.mark.process


def test_demo_classifies_the_heldout_digits_and_stops_cleanly(lenet5_export, tmp_path):
    out = tmp_path / "demo.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.classify_digits",
            "--repo",
            str(lenet5_export.repo),
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["server_exit_code"] == 0
    runs = {(r["model"], r["input"]): r for r in result["runs"]}
    assert set(runs) == {(m, i) for m in ("lenet5", "lenet5_int8") for i in ("image", "input")}
    for (model, kind), run in runs.items():
        assert run["images"] == 360  # the held-out split
        assert run["correct"] / run["images"] > 0.97, (model, kind)
        # PNG is lossless and the server preprocesses with the manifest's spec: export's own accuracy
        assert abs(run["correct"] / 360 - run["recorded_accuracy"]) <= 1 / 360, (model, kind)
        assert run["server_requests"] == 360  # one image per request, counted by the server too
        assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["p90"] <= run["latency_ms"]["p99"]
        assert run["images_per_s"] > 0 and run["server_batch_mean"] >= 1
    for model in ("lenet5", "lenet5_int8"):
        assert abs(runs[(model, "image")]["correct"] - runs[(model, "input")]["correct"]) <= 1
    lines = done.stdout.splitlines()
    assert any(line.startswith("lenet5_int8    image     360") for line in lines), done.stdout
    assert "==> server stopped (SIGTERM): exit 0" in lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "lenet5", "resnet9000"], "resnet9000 holds no version folder"),
        (["--batch", "0"], "--batch and --concurrency must be >= 1"),
    ],
)
def test_demo_bad_arguments_exit_2(lenet5_export, args, message, capsys):
    try:
        code = main(["--repo", str(lenet5_export.repo), *args])
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_demo_needs_a_repository(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--repo", str(tmp_path / "none")])
    assert exited.value.code == 2
    assert "no such directory (scripts/demo.sh builds model_repository)" in capsys.readouterr().err


def test_demo_refuses_a_model_that_does_not_classify_digits(lenet5_export, tmp_path, capsys):
    from harness.repository import copy_entry
    from modelrepo.manifest import Manifest

    version_dir = copy_entry(lenet5_export["fp32"].model_dir, tmp_path, "cifar_net") / "1"
    manifest = Manifest.read(version_dir)
    manifest.labels = [f"class_{i}" for i in range(100)]
    manifest.write(version_dir)
    assert main(["--repo", str(tmp_path), "--models", "cifar_net"]) == 2
    assert "cifar_net has 100 classes; the demo classifies digits (10 classes)" in capsys.readouterr().err
