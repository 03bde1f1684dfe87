"""The wheel's dependency split: the server alone serves ONNX models with none of the extras installed."""

from __future__ import annotations

import numpy as np
import pytest

from harness.server import ROOT, start_server

pytestmark = pytest.mark.process

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


def test_constraints_pin_every_dependency_within_its_range():
    """constraints.txt (scripts/lock.sh) pins what setup, CI and the image install: every dependency of the
    server and of the dev extra, at a version pyproject's range allows. A dependency added without a
    refresh of the lock fails here, not on a fresh machine next month."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version.strip()
    wanted = [*project["dependencies"], *extras["export"], *extras["loadtest"], *extras["dev"]]
    for spec in wanted:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        if name in ("cnnserve", "torch", "torchvision"):  # the extras themselves; TORCH_SPEC picks torch
            continue
        assert name in pins, f"{name} is not in constraints.txt: run bash scripts/lock.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {requirement.specifier}"
        )
    assert not {"torch", "torchvision"} & set(pins), "torch comes from TORCH_SPEC, per host"


def _blocking(folder, modules) -> dict[str, str]:
    """The environment of a server that cannot import ``modules`` (a sitecustomize that blocks them)."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    )
    return {"PYTHONPATH": f"{folder}:{ROOT}"}


def test_server_serves_onnx_without_the_extras(lenet5_export, tmp_path):
    """Every extra's module unimportable, as in the CPU image."""
    server = start_server(lenet5_export.repo, tmp_path, env=_blocking(tmp_path / "block", EXTRA_MODULES))
    try:
        x = np.random.default_rng(0).normal(size=(2, 1, 32, 32)).astype(np.float32)
        with server.client() as client:
            assert client.infer("lenet5", x).shape == (2, 10)
            assert client.infer("lenet5_int8", x).shape == (2, 10)
    finally:
        assert server.terminate() == 0
    assert "No module named" not in server.log()


def test_server_serves_with_http_off_where_its_stack_is_missing(lenet5_export, tmp_path):
    """The GPU machine's image has no starlette, uvicorn, grpcio-health-checking or grpcio-reflection:
    with --http-port 0 the server needs none of them (reflection is then off)."""
    missing = ("starlette", "uvicorn", "grpc_health", "grpc_reflection")
    env = _blocking(tmp_path / "block", missing)
    server = start_server(lenet5_export.repo, tmp_path, "--http-port", "0", env=env)
    try:
        x = np.zeros((1, 1, 32, 32), dtype=np.float32)
        with server.client() as client:
            assert client.infer("lenet5", x).shape == (1, 10)
    finally:
        assert server.terminate() == 0
    assert "server reflection is off: grpcio-reflection is not installed" in server.log()
