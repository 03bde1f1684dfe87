"""service.client: the client class other services use, and `python -m service.client`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from harness.server import ROOT
from modelrepo.preprocess import preprocess_bytes
from models.lenet import DIGITS_INPUT
from service.client import Classification, InferenceServerError, parse_classification

pytestmark = pytest.mark.process


def expected_top(model_repo, images, k):
    session = ort.InferenceSession(
        str(model_repo / "lenet5" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    logits = session.run(None, {"input": np.stack([preprocess_bytes(b, DIGITS_INPUT) for b in images])})[0]
    return [list(np.argsort(-row)[:k]) for row in logits], logits


def test_parse_classification():
    assert parse_classification(b"1.500000:3:tabby:cat") == Classification(1.5, 3, "tabby:cat")
    assert parse_classification("-0.25:7") == Classification(-0.25, 7, "")


def test_classify_batches_within_max_batch_size(client, model_repo, digit_png, tmp_path):
    images = [digit_png(i) for i in range(40)]  # more than max_batch_size 32: two requests
    paths = []
    for i, data in enumerate(images[:3]):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(data)
    results = client.classify("lenet5", [*paths, *images[3:]], top_k=2)
    top, logits = expected_top(model_repo, images, 2)
    assert [[c.index for c in r] for r in results] == [[int(i) for i in t] for t in top]
    assert results[0][0].label == str(top[0][0])
    assert results[0][0].score == pytest.approx(float(logits[0][top[0][0]]), abs=1e-5)


def test_client_errors_carry_the_status(client):
    with pytest.raises(InferenceServerError) as info:
        client.infer("nope", np.zeros((1, 1, 32, 32), np.float32))
    assert info.value.code.name == "NOT_FOUND" and "unknown model 'nope'" in str(info.value)


def cli(server, *args):
    return subprocess.run(
        [sys.executable, "-m", "service.client", "--url", server.address, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_classify(server, model_repo, digit_png, tmp_path):
    images = [digit_png(20), digit_png(21)]
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for p, data in zip(paths, images, strict=True):
        p.write_bytes(data)
    top, _ = expected_top(model_repo, images, 3)
    done = cli(server, "classify", "--model", "lenet5", "--top-k", "3", *map(str, paths))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{paths[0]}: {top[0][0]} (class {top[0][0]}, score ")
    assert len(lines) == 6  # best + 2 more per image
    as_json = json.loads(cli(server, "classify", "--model", "lenet5", "--json", str(paths[1])).stdout)
    assert as_json[0]["image"] == str(paths[1]) and as_json[0]["top"][0]["index"] == top[1][0]


def test_cli_errors(server, tmp_path):
    missing = cli(server, "classify", "--model", "lenet5", str(tmp_path / "none.png"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    (tmp_path / "junk.png").write_bytes(b"junk")
    junk = cli(server, "classify", "--model", "lenet5", str(tmp_path / "junk.png"))
    assert junk.returncode == 1 and "INVALID_ARGUMENT" in junk.stderr and "cannot decode image" in junk.stderr


def test_cli_models(server):
    done = cli(server, "models")
    assert done.returncode == 0
    assert "lenet5\t1\tREADY" in done.stdout
