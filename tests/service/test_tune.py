"""``--tune`` re-fits a model's batching at warm-up on the instance that serves it, up to the model's limit
kept in its manifest: a cap the export fitted on another device (a CPU's, served on a GPU) can rise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.repository import add_model, export_torch_program
from models.lenet import DIGIT_LABELS, DIGITS_INPUT
from service.serving.loader import load_versions
from service.serving.served import close_backends
from service.settings import Settings
from service.telemetry.prometheus import ServerMetrics

EXPORTED_CAP, LIMIT = 2, 8


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    path = tmp_path_factory.mktemp("program") / "lenet5.pt2"
    export_torch_program("lenet5", path)
    return path


def served(repo, program, record: dict | None, **settings):
    """lenet5's torch program exported with max_batch_size 2 and ``record`` as its batching record."""
    version_dir = add_model(
        repo, "lenet5", program, fmt="torch_export", spec=DIGITS_INPUT, labels=DIGIT_LABELS,
        max_batch_size=EXPORTED_CAP,
    )  # fmt: skip
    manifest = version_dir / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "batching": record}))
    versions = load_versions(
        Settings(repo=repo, device="cpu", **settings), ServerMetrics(gpu=False), "lenet5", {}, 1
    )
    return versions[1]


FITTED_ON_A_CPU = {"limit": LIMIT, "latency_budget_ms": 1000.0, "device": "cpu", "curve": [[1, 1e-3]]}


def test_tune_raises_the_cap_to_the_recorded_limit(program, tmp_path):
    version = served(tmp_path, program, FITTED_ON_A_CPU, tune=True)
    try:
        assert version.config.max_batch_size == LIMIT and version.io.max_batch_size == LIMIT
        assert "max_batch_size 8" in version.config.parameters["batching_tuned"].string_value
        rows = np.zeros((LIMIT, *DIGITS_INPUT.shape), np.float32)
        assert version.backends[0].run(rows).shape == (LIMIT, len(DIGIT_LABELS))
    finally:
        close_backends(version.backends)


@pytest.mark.parametrize(("record", "tune"), [(FITTED_ON_A_CPU, False), (None, True)])
def test_without_tune_or_a_recorded_limit_the_exported_cap_stays(program, tmp_path, record, tune):
    version = served(tmp_path, program, record, tune=tune)
    try:
        assert version.config.max_batch_size == EXPORTED_CAP
    finally:
        close_backends(version.backends)
