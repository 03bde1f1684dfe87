"""The benchmark runner: registry rules and a quick run of the client section."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from loadtest import bench
from loadtest.bench.__main__ import main as bench_main


def test_sections_register_once():
    sections = bench.load_sections()
    assert {"client", "client-api"} <= set(sections)
    with pytest.raises(ValueError, match="already registered"):
        bench.register_section("client", "again")(sections["client"].run)


def test_quick_client_section_writes_figures_and_plot(tmp_path):
    assert bench_main(["--section", "client", "--quick", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "client.json").read_text())
    assert record["section"] == "client" and record["quick"] is True
    configs = record["figures"]["configs"]
    assert [(c["concurrency"], c["workers"]) for c in configs] == [(1, 1), (1, 2), (8, 1), (8, 2)]
    for config in configs:
        assert config["requests_per_s"] > 0 and config["p50_ms"] <= config["p99_ms"]
        assert config["server_requests_match"] is True
    assert configs[0]["throughput_vs_c1_w1"] == 1.0
    with Image.open(tmp_path / "client.png") as image:
        assert image.format == "PNG"
