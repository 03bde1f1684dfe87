"""docs/DEPLOY.md uses the Dockerfile's targets, the overlays' images and paths that exist."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.deploy_contract import DEPLOY, ROOT, parse_dockerfile


@pytest.fixture(scope="module")
def deploy_section() -> str:
    readme = (ROOT / "docs" / "DEPLOY.md").read_text()
    match = re.search(r"^## Deploy$(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert match, "docs/DEPLOY.md has no '## Deploy' section"
    return match.group(1)


def test_docker_build_commands_match_the_dockerfile(deploy_section):
    _, stages = parse_dockerfile((ROOT / "Dockerfile").read_text())
    builds = re.findall(r"docker build --target (\S+) -t (\S+) \.", deploy_section)
    assert {target for target, _ in builds} == {"cpu", "gpu"}
    for target, image in builds:
        assert target in stages, f"README builds --target {target}, which the Dockerfile lacks"
        # The tag the README builds is the one the overlay deploys.
        overlay = yaml.safe_load((DEPLOY / "overlays" / target / "kustomization.yaml").read_text())
        (entry,) = overlay["images"]
        assert image == f"{entry['newName']}:{entry['newTag']}", (target, image)
    for name in re.findall(r"--build-context (\S+?)=", deploy_section):
        assert name in stages, f"--build-context {name} replaces no stage"
    for arg in re.findall(r"--build-arg (\w+)=", deploy_section):
        assert f"ARG {arg}=" in (ROOT / "Dockerfile").read_text(), arg


def test_kubectl_apply_paths_are_kustomizations(deploy_section):
    paths = re.findall(r"kubectl apply -k ([\w./-]+)", deploy_section)
    assert "deploy/overlays/gpu" in paths
    for path in paths:
        assert (ROOT / path / "kustomization.yaml").is_file(), path


def test_mentioned_files_exist(deploy_section):
    for path in re.findall(r"`(deploy/[\w./-]+)", deploy_section):
        assert (ROOT / path.rstrip(".")).exists(), path
