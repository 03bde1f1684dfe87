"""Broken repository files beside good ones, on one server in poll mode: every broken model UNAVAILABLE
with its reason (naming no path outside the repository), the good model serving and correct throughout,
the server alive. Then, while it serves: a folder fixed, a broken new version of the good model (the old
one keeps serving), the repository root going missing and coming back, turning empty and filling again.

The server runs where file permissions bind it: as root, behind ``setpriv`` without the capabilities that
let root read any file (tests/service/test_server_hardening.py has the non-UTF-8 config on its own).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.repository import copy_entry, faulty_onnx
from modelrepo.config import read_config, write_config
from models.lenet import DIGITS_INPUT
from tests.reliability.fault_kit import (
    MODEL,
    UNEXPECTED,
    assert_alive_and_correct,
    chmod_tree,
    health_status,
    health_url,
    http_status,
    start_bound_server,
    wait_for,
    without_file_override,
    x,
)

VERSION = "1"


def manifest_of(model_dir: Path) -> dict:
    return json.loads((model_dir / VERSION / "manifest.json").read_text())


def write_manifest(model_dir: Path, manifest: dict) -> None:
    (model_dir / VERSION / "manifest.json").write_text(json.dumps(manifest))


def edit_manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(model_dir: Path) -> None:
        manifest = manifest_of(model_dir)
        change(manifest)
        write_manifest(model_dir, manifest)

    return apply


def replace_artifact(data: bytes) -> Callable[[Path], None]:
    """The artifact replaced by ``data``, the manifest's sha256 updated to match (so the load gets as far as
    the backend)."""

    def apply(model_dir: Path) -> None:
        (model_dir / VERSION / "model.onnx").write_bytes(data)
        manifest = manifest_of(model_dir)
        manifest["sha256"] = hashlib.sha256(data).hexdigest()
        write_manifest(model_dir, manifest)

    return apply


def wrong_classes(model_dir: Path) -> None:
    path = model_dir.parent / "twelve.onnx"
    faulty_onnx(path, DIGITS_INPUT, num_classes=12)  # a valid network with 12 outputs; the config says 10
    replace_artifact(path.read_bytes())(model_dir)
    path.unlink()


def edit_config(change: Callable) -> Callable[[Path], None]:
    def apply(model_dir: Path) -> None:
        config = read_config(model_dir)
        change(config)
        write_config(model_dir, config)

    return apply


def config_text(text: bytes) -> Callable[[Path], None]:
    return lambda model_dir: (model_dir / "config.pbtxt").write_bytes(text)


def chmod(relative: str) -> Callable[[Path], None]:
    return lambda model_dir: os.chmod(model_dir / relative, 0)


# folder name -> (how to break a copy of lenet5, what its RepositoryIndex reason must say)
BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "perm_folder": (chmod("."), "Permission denied"),
    "perm_config": (
        chmod("config.pbtxt"),
        "cannot read perm_config/config.pbtxt: [Errno 13] Permission denied",
    ),
    "perm_version": (chmod(VERSION), "Permission denied"),
    "perm_artifact": (chmod(f"{VERSION}/model.onnx"), "cannot read model.onnx: [Errno 13] Permission denied"),
    "config_bad_encoding": (config_text(b'name: "\xff\xfe"\n'), "config.pbtxt is not UTF-8 text"),
    "config_wrong_type": (config_text(b'max_batch_size: "eight"\n'), "is not a valid ModelConfig"),
    "config_other_name": (
        edit_config(lambda c: setattr(c, "name", "someone_else")),
        "names model 'someone_else'; it must match its folder 'config_other_name'",
    ),
    "labels_escape": (
        edit_config(lambda c: setattr(c.output[0], "label_filename", "../../../etc/passwd")),
        "label_filename '../../../etc/passwd' points outside the model folder",
    ),
    "manifest_not_json": (
        lambda d: (d / VERSION / "manifest.json").write_text("{not json"),
        "manifest.json is not readable JSON",
    ),
    "manifest_not_object": (
        lambda d: (d / VERSION / "manifest.json").write_text("[1, 2]"),
        "manifest.json must hold a JSON object",
    ),
    "manifest_wrong_type": (edit_manifest(lambda m: m.update(sha256=123)), "sha256"),
    "manifest_missing_field": (
        edit_manifest(lambda m: m.pop("artifact")),
        "lacks required field(s): artifact",
    ),
    "manifest_artifact_escape": (
        edit_manifest(lambda m: m.update(artifact="../../lenet5/1/model.onnx")),
        "must be a file name inside the version folder, got '../../lenet5/1/model.onnx'",
    ),
    "artifact_missing": (
        lambda d: (d / VERSION / "model.onnx").unlink(),
        "artifact model.onnx does not exist",
    ),
    "artifact_corrupt": (
        lambda d: (d / VERSION / "model.onnx").write_bytes(b"\0" * 100),
        "the manifest records",
    ),
    "backend_raises": (replace_artifact(b"not an onnx model at all"), "onnxruntime cannot load model.onnx"),
    "warm_up_mismatch": (wrong_classes, "returned shape [1, 12], the config says [1, 10]"),
    "liveness": (lambda d: None, "reserved for a health service"),  # a health service's name
    "no_versions": (lambda d: shutil.rmtree(d / VERSION), "no version folder matches the version policy"),
}


@pytest.fixture
def fault_server(lenet5_dir, tmp_path):
    prefix = without_file_override()
    if prefix is None:
        pytest.skip("running as root where setpriv cannot drop CAP_DAC_OVERRIDE: permissions cannot bind")
    repo = tmp_path / "repo"
    copy_entry(lenet5_dir, repo, MODEL)
    for name, (damage, _) in BROKEN.items():
        damage(copy_entry(lenet5_dir, repo, name))
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    server = start_bound_server(
        repo, log_dir, prefix, "--model-control-mode", "poll", "--poll-interval", "0.3", ready_service=MODEL
    )
    yield server, repo
    server.terminate()
    chmod_tree(repo, 0o755)  # so that pytest can remove it


def index_of(server) -> dict[str, tuple[str, str]]:
    client = server.clients[0] if server.clients else server.client(timeout=30)
    return {m.name: (m.state, m.reason) for m in client.repository_index()}


def test_broken_models_stay_local_and_the_good_one_serves(fault_server, reference, tmp_path):
    server, repo = fault_server
    assert_alive_and_correct(server, reference)
    wait_for(  # the startup loads go on in name order
        lambda: all(index_of(server).get(name, ("", ""))[1] for name in BROKEN),
        60,
        "every broken model to have failed with a reason",
    )
    index = index_of(server)
    wrong = {
        name: index[name]
        for name, (_, fragment) in BROKEN.items()
        if index[name][0] != "UNAVAILABLE" or fragment not in index[name][1]
    }
    assert not wrong, json.dumps(wrong, indent=1)
    assert index[MODEL] == ("READY", "")
    reasons = " ".join(reason for _, reason in index.values())
    assert str(tmp_path) not in reasons and "/etc/" not in reasons.replace("'../../../etc/passwd'", "")
    # strict readiness: a model that should serve does not, so the server is not ready; the good one is
    assert health_status(server.health_address, "") == "NOT_SERVING"
    assert health_status(server.health_address, MODEL) == "SERVING"
    assert http_status(health_url(server, "/v2/health/ready")) == 400
    assert http_status(health_url(server, f"/v2/models/{MODEL}/ready")) == 200
    for name in set(BROKEN) - {"liveness"}:  # (liveness answers for the server)
        assert health_status(server.health_address, name) in ("NOT_SERVING", "NOT_FOUND")
    assert health_status(server.health_address, "liveness") == "SERVING"
    assert UNEXPECTED not in server.log() and "repository poll failed" not in server.log(), server.log()[
        -3000:
    ]
    assert_alive_and_correct(server, reference)

    # fixed on disk: the next poll loads it
    os.chmod(repo / "perm_folder", 0o755)
    wait_for(lambda: index_of(server)["perm_folder"][0] == "READY", 30, "perm_folder to load once readable")
    assert server.clients[0].infer("perm_folder", x()).shape == (1, 10)

    # a broken new version of the good model: the old one keeps serving
    staging = tmp_path / "staging"
    shutil.copytree(repo / MODEL / VERSION, staging)
    (staging / "manifest.json").write_text("{broken")
    shutil.move(staging, repo / MODEL / "2")  # one rename: the version appears whole
    wait_for(
        lambda: "manifest.json is not readable JSON" in server.log(), 30, "the reload of version 2 to fail"
    )
    assert index_of(server)[MODEL] == ("READY", "") and server.clients[0].model_ready(MODEL, VERSION)
    assert_alive_and_correct(server, reference)
    shutil.rmtree(repo / MODEL / "2")

    # the repository root goes missing, then comes back; then it turns empty, then fills again
    parked = tmp_path / "parked"
    repo.rename(parked)
    wait_for(lambda: "is missing while" in server.log(), 30, "a poll to see the missing repository")
    assert_alive_and_correct(server, reference)
    parked.rename(repo)
    models = sorted(p for p in repo.iterdir())
    parked.mkdir()
    for model_dir in models:
        model_dir.rename(parked / model_dir.name)
    wait_for(lambda: "is empty while" in server.log(), 30, "a poll to see the empty repository")
    assert_alive_and_correct(server, reference)
    for model_dir in models:
        (parked / model_dir.name).rename(model_dir)

    # every broken model removed: the server turns ready, the good ones serve
    for name in BROKEN:
        if name != "perm_folder":
            chmod_tree(repo / name, 0o755)
            shutil.rmtree(repo / name)
    wait_for(lambda: health_status(server.health_address, "") == "SERVING", 30, "the server to turn ready")
    assert sorted(name for name, (state, _) in index_of(server).items() if state == "READY") == [
        MODEL,
        "perm_folder",
    ]
    assert UNEXPECTED not in server.log() and "repository poll failed" not in server.log(), server.log()[
        -3000:
    ]
    assert_alive_and_correct(server, reference)
