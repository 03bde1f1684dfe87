"""The real ``tritonserver`` on a repository written by ``python -m export``.

Issue, word for word: "A test starts the real `tritonserver` on a repository written by `python -m export`
(fp32, fp16, int8 entries of two models) and checks that Triton parses every config.pbtxt and
manifest-bearing version folder without a configuration error (it then stops at its missing onnxruntime
backend, which the wheel lacks: assert on that exact reason)."

Triton reads each model folder when it polls the repository: it parses config.pbtxt, checks that the
folder is named as the model, validates the config (with ``--disable-auto-complete-config``, inputs and
outputs too, as written) and lists the numeric version folders; errors there read "Poll failed for model
directory ...". Only a model that passes all that goes on to load, where Triton looks for the backend
library and, without the ONNX Runtime backend, reports the reason asserted here. A control repository
with broken copies shows that the same checks catch configuration errors.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from harness.peers import PeerUnavailable, triton
from service.client import InferenceClient
from tests.interop.support import unavailable

pytestmark = pytest.mark.peers

# Triton 2.51 (core src/backend_model.cc, TritonModel::GetBackendRuntimeLibraryName), an INVALID_ARG status
MISSING_BACKEND = (
    "unable to find backend library for backend 'onnxruntime', "
    "try specifying runtime on the model configuration."
)
MISSING_BACKEND_REASON = f"Invalid argument: {MISSING_BACKEND}"
# Error lines of this machine that are not about models: no GPU, and the summary of the failed loads.
ENVIRONMENT_ERRORS = ("CudaDriverHelper has not been initialized", "Internal: failed to load all models")
# What Triton logs about a repository it cannot parse (model_repository_manager.cc, model_lifecycle.cc).
CONFIG_PROBLEMS = (
    "Poll failed for model directory",
    "failed to read text proto",
    "Error parsing text-format",
    "ignore version directory",
    "at least one version must be available",
    "unexpected directory name",
    "failed to poll",
)
LOG_LINE = re.compile(r"^([EWI])\d{4} [\d:.]+ +\d+ (\S+)\] (.*)$")


def version_folders(model_dir: Path) -> list[str]:
    return sorted((p.name for p in model_dir.iterdir() if p.is_dir()), key=lambda v: (len(v), v))


def repository_problems(log: str, index: list, expected: dict[str, list[str]]) -> list[str]:
    """Everything that is not "parsed, then stopped at the missing onnxruntime backend" for the models
    ``expected`` (name -> version folders): config errors in the log, unexpected error lines, and index
    entries that are missing, extra or failed for another reason."""
    problems = [f"log: {line}" for line in log.splitlines() if any(p in line for p in CONFIG_PROBLEMS)]
    for line in log.splitlines():
        match = LOG_LINE.match(line)
        expected_error = MISSING_BACKEND in line or any(e in line for e in ENVIRONMENT_ERRORS)
        if match and match[1] == "E" and not expected_error and f"log: {line}" not in problems:
            problems.append(f"unexpected error: {line}")
    listed = {(m.name, m.version) for m in index}
    for name, versions in expected.items():
        for version in versions:
            if (name, version) not in listed:
                problems.append(f"{name} version {version} is not in the repository index")
            failure = f"failed to load '{name}' version {version}: {MISSING_BACKEND_REASON}"
            if failure not in log:
                problems.append(f"{name} version {version}: no {failure!r} in the log")
    for m in index:
        if m.name not in expected or m.version not in expected[m.name]:
            problems.append(f"unexpected index entry {m.name} version {m.version}")
        elif (m.state, m.reason) != ("UNAVAILABLE", MISSING_BACKEND_REASON):
            problems.append(f"{m.name} version {m.version}: {m.state} {m.reason!r}")
    return problems


def run_triton(install, repo: Path, log_path: Path) -> tuple[str, list]:
    """Triton on ``repo`` until it has tried every model (it listens only after that); its log and index."""
    try:
        server = triton.start(install, repo, log_path=log_path, wait="live", exit_on_error=False)
    except PeerUnavailable as e:
        unavailable("triton", e)
    with server, InferenceClient(server.grpc_address, timeout=30) as client:
        assert not client.ready()  # strict readiness: models failed to load
        index = client.repository_index()
    return server.log(), index


@pytest.fixture(scope="module")
def exported_repo(lenet5_export, tmp_path_factory) -> Path:
    """lenet5 (the session's export) and resnet18 (random weights, 8 calibration images, about 20 s),
    each as fp32, fp16 and int8 entries, in one repository as python -m export wrote them."""
    from export import export_model

    repo = tmp_path_factory.mktemp("exported_repo")
    for entry in lenet5_export.entries:
        shutil.copytree(entry.model_dir, repo / entry.model_dir.name)  # byte for byte
    resnet = export_model(
        "resnet18",
        weights="random",
        fp16=True,
        int8=True,
        calib="random",
        calib_samples=8,
        eval_samples=8,
        repo=repo,
        tensorrt="off",
    )
    assert (
        {e.precision for e in resnet.entries}
        == {e.precision for e in lenet5_export.entries}
        == {
            "fp32",
            "fp16",
            "int8",
        }
    )
    return repo


def test_triton_parses_every_exported_entry(triton_install, exported_repo, tmp_path):
    expected = {d.name: version_folders(d) for d in sorted(exported_repo.iterdir())}
    assert sorted(expected) == [
        "lenet5",
        "lenet5_fp16",
        "lenet5_int8",
        "resnet18",
        "resnet18_fp16",
        "resnet18_int8",
    ]
    for name, versions in expected.items():
        assert versions == ["1"], name
        assert (exported_repo / name / "config.pbtxt").is_file()
        assert (exported_repo / name / "1" / "manifest.json").is_file()  # manifest-bearing version folders
        assert 'platform: "onnxruntime_onnx"' in (exported_repo / name / "config.pbtxt").read_text()
    log, index = run_triton(triton_install, exported_repo, tmp_path / "triton.log")
    assert "strict_model_config              | 1" in log  # --disable-auto-complete-config took effect
    assert repository_problems(log, index, expected) == []


def test_control_repository_config_errors_are_caught(triton_install, lenet5_export, tmp_path):
    """Broken copies of the lenet5 entry: each breakage is reported, and only the intact copy stops at the
    missing backend."""
    source = lenet5_export["fp32"].model_dir
    repo = tmp_path / "control"
    edits = {
        "intact": lambda text: text,
        "bad_syntax": lambda text: text + "\nnot_a_field: 1\n",
        "bad_dims": lambda text: re.sub(r"dims: 32\b", "dims: -7", text, count=1),
        # a preferred size over max_batch_size (the fitted config may have no preferred size of its own)
        "bad_batching": lambda text: text.replace(
            "dynamic_batching {", "dynamic_batching {\n  preferred_batch_size: 64", 1
        ),
    }
    for name, edit in edits.items():
        shutil.copytree(source, repo / name)
        config = repo / name / "config.pbtxt"
        text = config.read_text().replace('name: "lenet5"', f'name: "{name}"')
        assert edit(text) != text or name == "intact", name
        config.write_text(edit(text))
    shutil.copytree(source, repo / "bad_version")
    config = repo / "bad_version" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "lenet5"', 'name: "bad_version"'))
    (repo / "bad_version" / "1").rename(repo / "bad_version" / "v1")

    log, index = run_triton(triton_install, repo, tmp_path / "triton.log")
    assert [(m.name, m.state, m.reason) for m in index if m.name == "intact"] == [
        ("intact", "UNAVAILABLE", MISSING_BACKEND_REASON)
    ]
    assert f"failed to load 'intact' version 1: {MISSING_BACKEND_REASON}" in log
    for broken in ("bad_syntax", "bad_dims", "bad_batching", "bad_version"):
        problems = repository_problems(log, index, {broken: ["1"]})
        assert any(p.startswith("log: ") and f"'{broken}'" in p for p in problems), (broken, problems)
        assert f"{broken} version 1 is not in the repository index" in problems
