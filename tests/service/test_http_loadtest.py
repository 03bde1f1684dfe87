"""python -m loadtest --protocol http against our HTTP port (binary tensors, plain JSON, images): every
request it sends succeeds, and the server's metrics count exactly those, labelled protocol="http"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest import cli

FAST = "--window 0.3 --windows 2 --warmup 0.1 --duration 1 --stability 0.5 --quiet"


@pytest.mark.parametrize(
    ("model", "options"),
    [("lenet5_int8", ""), ("lenet5_int8", "--http-json --batch 2"), ("lenet5", "--images {images}")],
    ids=["binary", "json", "images"],
)
def test_loadtest_over_http(server, tmp_path, digit_png, model, options):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.png").write_bytes(digit_png(60 + i))

    def counted(protocol: str) -> float:
        return server.metric("cnnserve_requests_total", model=model, protocol=protocol, outcome="success")

    before_http, before_grpc = counted("http"), counted("grpc")
    out = tmp_path / "r.json"
    args = f"--url {server.http_url} --protocol http --model {model} --concurrency 1,4 {FAST}"
    args += " " + options.format(images=images)
    assert cli.main([*args.split(), "--json", str(out)]) == 0
    steps = json.loads(Path(out).read_text())["steps"]
    sent = sum(step["totals"]["sent"] for step in steps)
    assert sent > 0 and sent == sum(step["totals"]["ok"] for step in steps)
    assert counted("http") - before_http == sent
    assert counted("grpc") == before_grpc
