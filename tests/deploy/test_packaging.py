"""The wheel's dependency split: the server alone serves ONNX models with none of the extras installed."""

from __future__ import annotations

import numpy as np
import pytest

from harness.server import ROOT, start_server

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")

# What the export, loadtest and dev extras bring; the server must not need any of it.
EXTRA_MODULES = ("torch", "torchvision", "onnxscript", "sklearn", "matplotlib", "rich", "tqdm", "onnx")


def test_extras_split_the_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    for heavy in ("torch", "torchvision", "onnxscript", "matplotlib", "scikit-learn"):
        assert heavy not in base, f"{heavy} belongs in an extra, not the server's dependencies"
    assert any(d.startswith("torch") for d in extras["export"])
    assert any(d.startswith("matplotlib") for d in extras["loadtest"])


def test_server_serves_onnx_without_the_extras(lenet5_export, tmp_path):
    """A sitecustomize that makes every extra's module unimportable, as in the CPU image."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in EXTRA_MODULES)
    )
    server = start_server(lenet5_export.repo, tmp_path, env={"PYTHONPATH": f"{blocker}:{ROOT}"})
    try:
        x = np.random.default_rng(0).normal(size=(2, 1, 32, 32)).astype(np.float32)
        with server.client() as client:
            assert client.infer("lenet5", x).shape == (2, 10)
            assert client.infer("lenet5_int8", x).shape == (2, 10)
    finally:
        assert server.terminate() == 0
    assert "No module named" not in server.log()
