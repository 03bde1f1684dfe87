"""The Dockerfile, read as data (no Docker engine here): stages, user, ports, healthcheck, entrypoint."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harness.ports import free_ports
from harness.server import start_process
from tests.deploy.deploy_contract import ROOT, Stage, parse_dockerfile, server_modules, server_settings

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")

RUNTIME_TARGETS = ("cpu", "gpu")


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def test_stages_and_bases(dockerfile):
    args, stages = dockerfile
    assert {"install", *RUNTIME_TARGETS} <= set(stages), stages.keys()
    assert stages["gpu"].base == "${GPU_BASE_IMAGE}"
    assert stages["cpu"].base == "${CPU_BASE_IMAGE}"
    assert args["GPU_BASE_IMAGE"].startswith(("nvcr.io/nvidia/tensorrt:", "nvcr.io/nvidia/cuda:"))
    assert re.fullmatch(r"python:3\.1[0-9]-slim", args["CPU_BASE_IMAGE"]), args["CPU_BASE_IMAGE"]
    assert stages["install"].base == "${CPU_BASE_IMAGE}"  # the venv's python is the cpu image's


def test_the_classic_builder_can_build_it():
    """Debian's Docker 20.10 has no BuildKit here: no syntax directive, RUN --mount or build contexts."""
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax=", text, re.M | re.I)
    instructions = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("--mount" in line for line in instructions)


@pytest.mark.parametrize("target", RUNTIME_TARGETS)
def test_runtime_runs_as_non_root(dockerfile, target):
    user = dockerfile[1][target].last("USER")
    uid, _, gid = user.partition(":")
    # Numeric, so that Kubernetes can verify runAsNonRoot; the manifests run as the same uid.
    assert uid.isdigit() and int(uid) > 0, f"USER {user!r} must be a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) > 0)


@pytest.mark.parametrize("target", RUNTIME_TARGETS)
def test_runtime_entrypoint_and_healthcheck(dockerfile, target):
    stage = dockerfile[1][target]
    server_module, healthcheck_module = server_modules()
    assert json.loads(stage.last("ENTRYPOINT")) == ["python", "-m", server_module]
    assert not stage.all("CMD"), "settings come from SERVE_* variables, not arguments"

    healthcheck = stage.last("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert command, f"HEALTHCHECK without CMD: {healthcheck!r}"
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", healthcheck_module]
    address = argv[argv.index("--address") + 1]
    # Shell form, so the address follows SERVE_HEALTH_PORT (answered apart from inference) when changed.
    assert address == "127.0.0.1:${SERVE_HEALTH_PORT}"
    assert "--start-period=" in options


@pytest.mark.parametrize("target", RUNTIME_TARGETS)
def test_runtime_settings_and_ports(dockerfile, target):
    stage = dockerfile[1][target]
    settings = server_settings()
    env = stage.env()
    serve_vars = {key: value for key, value in env.items() if key.startswith("SERVE_")}
    unknown = set(serve_vars) - set(settings)
    assert not unknown, f"ENV sets variables the server does not read: {sorted(unknown)}"
    assert serve_vars["SERVE_HOST"] == "0.0.0.0"
    assert serve_vars["SERVE_REPO"] == "/models"
    assert serve_vars["SERVE_DEVICE"] == {"cpu": "cpu", "gpu": "cuda"}[target]
    assert serve_vars["SERVE_DEVICE"] in settings["SERVE_DEVICE"].choices

    ports = {int(port) for args in stage.all("EXPOSE") for port in args.split()}
    http = int(serve_vars.get("SERVE_HTTP_PORT", settings["SERVE_HTTP_PORT"].default))
    grpc = int(serve_vars.get("SERVE_GRPC_PORT", settings["SERVE_GRPC_PORT"].default))
    metrics = int(serve_vars.get("SERVE_METRICS_PORT", settings["SERVE_METRICS_PORT"].default))
    health = int(serve_vars.get("SERVE_HEALTH_PORT", settings["SERVE_HEALTH_PORT"].default))
    assert ports == {http, grpc, metrics, health}
    assert http == int(settings["SERVE_HTTP_PORT"].default)
    assert grpc == int(settings["SERVE_GRPC_PORT"].default)
    assert metrics == int(settings["SERVE_METRICS_PORT"].default)

    assert any("mkdir -p /models" in run for run in stage.all("RUN")), "the mount point of the repository"


def test_cpu_image_installs_the_server_without_torch(dockerfile):
    runs = dockerfile[1]["install"].all("RUN") + dockerfile[1]["cpu"].all("RUN")
    assert not any("torch" in run for run in runs), "the CPU image serves ONNX; torch is the export extra's"
    assert any(run.rstrip().endswith("/wheels/cnnserve-*.whl") for run in runs), "no extras in the CPU image"
    assert any("-c /tmp/wheels/constraints.txt" in run for run in runs), "the tested versions"
    copies = dockerfile[1]["cpu"].all("COPY")
    assert copies == ["--from=install /opt/cnnserve /opt/cnnserve"], "the venv, and nothing of the build"
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(d.startswith(("torch", "torchvision", "onnxscript", "matplotlib")) for d in dependencies)


def test_gpu_image_installs_cuda_torch_and_the_gpu_extra(dockerfile):
    runs = dockerfile[1]["gpu"].all("RUN")
    torch_run = next(i for i, run in enumerate(runs) if "torch" in run and "--index-url" in run)
    assert '--index-url "${TORCH_INDEX_URL}"' in runs[torch_run]
    assert "download.pytorch.org/whl/cu12" in " ".join(dockerfile[1]["gpu"].all("ARG"))
    project_run = next(i for i, run in enumerate(runs) if "cnnserve-*.whl)[gpu]" in run)
    assert torch_run < project_run
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "gpu" in extras


def test_install_stage_builds_the_wheel_from_pyproject(dockerfile):
    runs = dockerfile[1]["install"].all("RUN")
    assert any("pip wheel --no-deps --wheel-dir /tmp/wheels /src" in run for run in runs)
    assert "--from=install /tmp/wheels /tmp/wheels" in dockerfile[1]["gpu"].all("COPY")


def test_entrypoint_modules_exist():
    server_module, healthcheck_module = server_modules()
    assert importlib.util.find_spec(server_module) is not None, server_module
    assert importlib.util.find_spec(f"{server_module}.__main__") is not None, "no __main__ for `python -m`"
    assert importlib.util.find_spec(healthcheck_module) is not None


def test_cpu_image_entrypoint_and_healthcheck_run(dockerfile, lenet5_export, tmp_path):
    """The cpu stage's ENTRYPOINT with its ENV (repository, loopback and free ports swapped in for this
    sandbox) serves, HTTP too; its HEALTHCHECK command, run by a shell as Docker does, passes; SIGTERM
    exits 0."""
    stage = dockerfile[1]["cpu"]
    grpc_port, metrics_port, health_port, http_port = free_ports(4)
    env = {
        **stage.env(),
        "SERVE_REPO": str(lenet5_export.repo),
        "SERVE_HOST": "127.0.0.1",
        "SERVE_GRPC_PORT": str(grpc_port),
        "SERVE_METRICS_PORT": str(metrics_port),
        "SERVE_HEALTH_PORT": str(health_port),
        "SERVE_HTTP_PORT": str(http_port),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        # `python` on PATH is this interpreter, as it is the image's
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    entrypoint = json.loads(stage.last("ENTRYPOINT"))
    assert entrypoint[0] == "python"
    server = start_process(
        [sys.executable, *entrypoint[1:]],
        f"127.0.0.1:{grpc_port}",
        f"http://127.0.0.1:{metrics_port}/metrics",
        tmp_path / "server.log",
        env=env,
        http_url=f"http://127.0.0.1:{http_port}",
    )
    try:
        assert server.http("GET", "/v2/health/ready").status == 200  # SERVE_HTTP_PORT from the ENV
        command = stage.last("HEALTHCHECK").partition(" CMD ")[2]
        check = subprocess.run(
            ["sh", "-c", command],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"127.0.0.1:{health_port} (server): SERVING" in check.stdout
        assert "onnxruntime on cpu" in server.log()  # SERVE_DEVICE=cpu from the ENV
    finally:
        assert server.terminate() == 0, server.log()


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore patterns drop a path (a pattern naming a folder drops what is inside)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_sources_and_drops_the_rest():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", project["project"]["readme"]]
    for include in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = include.rstrip("*")
        if (ROOT / package).is_dir():
            needed.append(f"{package}/__init__.py")
    for path in needed:
        assert not _ignored(path, patterns), f".dockerignore drops {path}, which `pip wheel .` needs"
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        "model_repository/lenet5/config.pbtxt",
        "models/__pycache__/x.pyc",
        ".pytest_cache/v",
        "tests/deploy/test_dockerfile.py",
    ]:
        assert _ignored(path, patterns), f".dockerignore should drop {path}"


def test_the_images_the_build_tags_are_the_ones_the_manifests_run():
    """The Dockerfile's build commands tag what the overlays and the KServe InferenceService deploy, up to
    the registry (tests/deploy/test_image.py builds the cpu tag and checks the image itself)."""
    import yaml

    from tests.deploy.deploy_contract import DEPLOY, image_tag, without_registry

    builds = dict(re.findall(r"docker build --target (\w+) -t (\S+) \.", (ROOT / "Dockerfile").read_text()))
    assert builds == {target: image_tag(target) for target in RUNTIME_TARGETS}
    service = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    containers = service["spec"]["predictor"]["containers"]
    assert [without_registry(c["image"]) for c in containers] == [image_tag("gpu")]
