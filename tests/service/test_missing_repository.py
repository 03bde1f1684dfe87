"""A server started on a repository folder that does not exist refuses to start (exit 1, one line
saying why), unless asked to wait for it (--repo-wait): then it serves and loads the folder once it
appears (poll)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from harness.server import ROOT
from service.app import RepositoryMissing, check_repository
from service.settings import load_settings
from tests.service.inprocess import linear_model, run, serving


def test_wait_is_a_setting_of_its_own():
    settings = load_settings(["--model-control-mode", "poll", "--repo-wait"], env={})
    assert settings.repo_wait
    assert load_settings([], env={"SERVE_REPO_WAIT": "1", "SERVE_MODEL_CONTROL_MODE": "explicit"}).repo_wait
    assert not load_settings([], env={}).repo_wait


def test_check_repository(tmp_path):
    check_repository(load_settings(["--repo", str(tmp_path)], env={}))
    missing = ["--repo", str(tmp_path / "missing"), "--model-control-mode", "poll"]
    check_repository(load_settings([*missing, "--repo-wait"], env={}))
    try:
        check_repository(load_settings(missing, env={}))
    except RepositoryMissing as e:
        assert "missing does not exist" in str(e) and "--repo-wait" in str(e)
    else:
        raise AssertionError("a missing repository was accepted")


@pytest.mark.process
def test_a_server_on_a_missing_repository_exits_1_saying_why(tmp_path):
    missing = tmp_path / "not-mounted"
    done = subprocess.run(
        [sys.executable, "-m", "service", "--repo", str(missing), "--host", "127.0.0.1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "ERROR" in line]
    assert len(lines) == 1 and f"{missing} does not exist" in lines[0] and "--repo-wait" in lines[0]


def test_with_repo_wait_the_repository_is_loaded_once_it_appears(tmp_path):
    repo = tmp_path / "late"

    async def main():
        flags = ("--model-control-mode", "poll", "--poll-interval", "0.05", "--repo-wait")
        async with serving(repo, *flags) as s:
            before = s.server.manager.index()
            await asyncio.to_thread(linear_model, repo)
            deadline = time.monotonic() + 60
            while not s.server.health.model_ready("lenet5") and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return before, s.server.health.model_ready("lenet5")

    assert run(main()) == ([], True)
