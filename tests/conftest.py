"""Session fixtures every test package shares: LeNet-5 trained on digits once, exported once.

The export is the real pipeline (``export.export_model``): the server, load-test, deploy and demo tests
serve its artifacts, manifests and config.pbtxt as ``python -m export`` writes them. Tests only read
this repository; a test that changes one copies it first (``harness.repository.copy_entry``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.server import start_server
from harness.tls import TlsFiles, make_tls_files

if TYPE_CHECKING:
    from export import ExportResult


# Fixtures that start `python -m service` (or another server process): a test that uses one is in the
# process tier, wherever it lives.
PROCESS_FIXTURES = frozenset({"lenet5_server", "server", "server_factory", "shared_server", "stub", "client"})


# A test's tier: the first of these markers it has (README, "Tests"), else in-process.
TIERS = ("image", "peers", "bench", "slow", "process")
_tier_of: dict[str, str] = {}  # node id -> tier
_tier_time: dict[str, list[float]] = {}  # tier -> [tests, seconds of set-up, call and tear-down]


def pytest_collection_modifyitems(items):
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)
        markers = {m.name for m in item.iter_markers()}
        _tier_of[item.nodeid] = next((t for t in TIERS if t in markers), "in-process")


def pytest_runtest_logreport(report):
    """Adds each phase's time to its test's tier (a session fixture's set-up counts where first used)."""
    times = _tier_time.setdefault(_tier_of.get(report.nodeid, "in-process"), [0, 0.0])
    times[0] += report.when == "setup"
    times[1] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _tier_time:
        return
    terminalreporter.write_sep("-", "time per tier")
    for tier in ("in-process", *reversed(TIERS)):
        if tier in _tier_time:
            count, seconds = _tier_time[tier]
            terminalreporter.write_line(f"{tier:<11} {count:5d} tests {seconds:8.1f} s")


@pytest.fixture(scope="session")
def lenet_checkpoint(tmp_path_factory):
    """LeNet-5 trained on digits with the default recipe (about 10 s on two cores)."""
    from models.train import train  # torch: imported only by the tests that need it

    path = tmp_path_factory.mktemp("checkpoints") / "lenet5_digits.pt"
    train("lenet5", out=path, progress=False)
    return path


@pytest.fixture(scope="session")
def lenet5_export(lenet_checkpoint, tmp_path_factory) -> ExportResult:
    """``python -m export lenet5 --weights CHECKPOINT --fp16 --int8 --calib digits --tensorrt off`` into a
    session repository: ``lenet5``, ``lenet5_fp16``, ``lenet5_int8`` (about 5 s)."""
    from export import export_model

    return export_model(
        "lenet5",
        weights=str(lenet_checkpoint),
        fp16=True,
        int8=True,
        calib="digits",
        repo=tmp_path_factory.mktemp("lenet5_repo"),
        tensorrt="off",
    )


@pytest.fixture(scope="session")
def lenet5_server(lenet5_export, tmp_path_factory):
    """``python -m service`` over the exported repository, on free 127.0.0.1 ports, for the whole session."""
    running = start_server(lenet5_export.repo, tmp_path_factory.mktemp("lenet5_server_logs"))
    yield running
    running.terminate()


@pytest.fixture
def server_factory(tmp_path):
    """``server_factory(repo, *args, env=None, ready_service="")``: a server of the test's own, terminated at
    teardown (``ready_service="liveness"`` for one that starts unready)."""
    started = []
    log_dir = tmp_path / "logs"
    log_dir.mkdir()

    def start(repo: Path, *args: str, env: dict[str, str] | None = None, ready_service: str = ""):
        running = start_server(repo, log_dir, *args, env=env, ready_service=ready_service)
        started.append(running)
        return running

    yield start
    for running in started:
        running.terminate()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> TlsFiles:
    """A CA, a server certificate for harness.tls.SERVER_NAME and a client certificate, valid for a day."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is needed to make test certificates")
    return make_tls_files(tmp_path_factory.mktemp("tls"))
