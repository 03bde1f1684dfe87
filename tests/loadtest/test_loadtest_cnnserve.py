"""python -m loadtest against our own server (python -m service over the session's exported LeNet-5), whose
metrics and ModelStatistics count the same requests independently of the load tester."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtest import cli
from models.datasets import digits_images

pytestmark = pytest.mark.process

FAST = "--window 0.4 --windows 2 --warmup 0.2 --duration 2 --stability 0.5 --quiet"


def run(*parts: str | Path) -> int:
    args: list[str] = []
    for part in parts:
        args += part.split() if isinstance(part, str) else [str(part)]
    return cli.main(args)


def scrape(url: str) -> list:
    """Every sample of the server's /metrics (read here, not through the load tester's scraper)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def counted(samples, name: str, model: str, **labels: str) -> float:
    """Sum of a sample's series for one model (over the labels not given)."""
    return sum(
        s.value
        for s in samples
        if s.name == name and s.labels.get("model") == model and labels.items() <= s.labels.items()
    )


def executions(client, model: str) -> dict[int, int]:
    """The server's ModelStatistics: executed batches per batch size."""
    (stats,) = client.statistics(model).model_stats
    return {b.batch_size: b.compute_infer.count for b in stats.batch_stats}


def test_closed_sweep_counts_match_the_servers_metrics_and_statistics(lenet5_server, tmp_path):
    server, client = lenet5_server, lenet5_server.client()
    metrics_before, batches_before = scrape(server.metrics_url), executions(client, "lenet5")
    rc = run(
        f"--url {server.address} --model lenet5 --concurrency 1,4 --metrics-url {server.metrics_url}",
        FAST, "--json", tmp_path / "r.json",
    )  # fmt: skip
    metrics_after, batches_after = scrape(server.metrics_url), executions(client, "lenet5")
    assert rc == 0
    steps = json.loads((tmp_path / "r.json").read_text())["steps"]
    assert [step["level"] for step in steps] == [1, 4]
    sent = sum(step["totals"]["sent"] for step in steps)
    assert sent == sum(step["totals"]["ok"] for step in steps) > 0
    for step in steps:
        assert step["server"]["requests"] == step["totals"]["sent"]  # the scrape around each step
        outcomes = {k: v for k, v in step["server"]["requests_by_outcome"].items() if v}
        assert outcomes == {"success": step["totals"]["sent"]}
        assert step["server"]["queue_mean_s"] >= 0 and step["server"]["compute_mean_s"] > 0

    # around the whole run, read here without the load tester's help
    assert (
        counted(metrics_after, "cnnserve_requests_total", "lenet5", outcome="success")
        - counted(metrics_before, "cnnserve_requests_total", "lenet5", outcome="success")
        == sent
    )
    rows = counted(metrics_after, "cnnserve_inference_rows_total", "lenet5") - counted(
        metrics_before, "cnnserve_inference_rows_total", "lenet5"
    )
    assert rows == sent  # one row per request

    # the batch-size distribution it reports is the server's own execution count per batch size
    executed = {
        s: n - batches_before.get(s, 0) for s, n in batches_after.items() if n > batches_before.get(s, 0)
    }
    assert sum(size * n for size, n in executed.items()) == sent
    reported: dict[tuple[float, float], int] = {}
    for step in steps:
        for bucket in step["server"]["batch_buckets"]:
            key = (bucket["low"], bucket["high"])
            reported[key] = reported.get(key, 0) + bucket["count"]
    expected = dict.fromkeys(reported, 0)
    for size, n in executed.items():
        (key,) = [(low, high) for low, high in reported if low < size <= high]
        expected[key] += n
    assert reported == expected
    assert sum(step["server"]["batches"] for step in steps) == sum(executed.values())


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    """Twelve 8x8 digits as PNG files (the server upscales them to LeNet-5's 32x32)."""
    folder = tmp_path_factory.mktemp("digits")
    images, labels = digits_images()
    for i in range(12):
        buffer = io.BytesIO()
        images[i].save(buffer, format="PNG")
        (folder / f"{i:02d}_label{labels[i]}.png").write_bytes(buffer.getvalue())
    return folder


def test_image_folder_through_the_image_input(lenet5_server, digit_folder, tmp_path):
    server = lenet5_server
    before = scrape(server.metrics_url)
    rc = run(
        f"--url {server.address} --model lenet5_int8 --batch 3 --concurrency 2",
        f"--metrics-url {server.metrics_url}", FAST, "--images", digit_folder, "--json", tmp_path / "r.json",
    )  # fmt: skip
    after = scrape(server.metrics_url)
    assert rc == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["input"]["name"] == "image" and result["input"]["datatype"] == "BYTES"
    assert result["input"]["rows_per_request"] == 3
    (step,) = result["steps"]
    assert step["totals"]["sent"] == step["totals"]["ok"] == step["server"]["requests"] > 0
    assert step["errors"] == {}  # every PNG decoded and preprocessed by the server
    assert step["images_per_s"] == pytest.approx(3 * step["requests_per_s"])
    rows = counted(after, "cnnserve_inference_rows_total", "lenet5_int8") - counted(
        before, "cnnserve_inference_rows_total", "lenet5_int8"
    )
    assert rows == 3 * step["totals"]["sent"]


def test_open_loop_step(lenet5_server, tmp_path):
    server = lenet5_server
    rc = run(
        f"--url {server.address} --model lenet5_fp16 --rate 100 --metrics-url {server.metrics_url}",
        "--window 1 --windows 2 --warmup 0.2 --duration 2 --stability 0.5 --quiet",
        "--json", tmp_path / "o.json",
    )  # fmt: skip
    assert rc == 0
    (step,) = json.loads((tmp_path / "o.json").read_text())["steps"]
    assert step["mode"] == "open"
    # 200 Poisson arrivals expected over the 2 s measured: a standard deviation of about 7%
    assert step["offered_per_s"] == pytest.approx(100, rel=0.3)
    assert step["requests_per_s"] == pytest.approx(100, rel=0.3)
    assert step["totals"]["sent"] == step["totals"]["ok"] == step["server"]["requests"]
    assert 0 < step["latency"]["p50"] <= step["latency"]["p99"] <= step["latency"]["max"]
