"""The benchmark's parts: the null server, the closed-loop load generator, and the ratio arithmetic."""

from __future__ import annotations

import sys

import numpy as np

from service.bench import Row, ratios
from service.loadgen import infer_payload, run_in_subprocess
from service.testing import free_port, start_process


def test_null_server_answers_correctly_shaped_zeros(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "service.null_server", "--port", str(port), "--classes", "7"]
    null = start_process(cmd, f"127.0.0.1:{port}", "", tmp_path / "null.log", ready_service=None)
    try:
        out = null.client().infer("anything", np.ones((3, 1, 32, 32), np.float32))
    finally:
        null.terminate()
    assert out.shape == (3, 7) and not out.any()


def test_closed_loop_load_against_the_server(server):
    payload = infer_payload("lenet5", np.zeros((2, 1, 32, 32), np.float32))
    result = run_in_subprocess(server.address, payload, concurrency=2, duration=0.5, warmup=0.2)
    assert result.errors == 0 and result.requests > 0
    assert result.total_requests > result.requests  # warm-up requests counted too
    assert result.rows_per_request == 2 and result.rows_per_s == 2 * result.requests_per_s
    assert 0 < result.p50_ms <= result.p99_ms


def row(model, target, c, rows_per_s, p50=1.0, cpu=None, rows=1):
    return Row(model, target, c, rows_per_s, rows_per_s / rows, p50, p50 * 2, cpu_us_per_row=cpu)


def test_ratios():
    figures = ratios([
        row("lenet5", "null server", 1, 1000, p50=0.9, cpu=500),
        row("lenet5", "server (batching)", 1, 800, p50=1.2, cpu=625),
        row("lenet5", "server (no batching)", 1, 400),
        row("resnet18", "server (batching)", 8, 45, cpu=50_000),
        row("resnet18", "server (no batching)", 8, 40),
        row("resnet18", "onnxruntime in-process (batch 8)", 0, 50, cpu=40_000, rows=8),
        row("resnet18", "onnxruntime in-process (batch 1)", 0, 40, cpu=45_000),
    ])  # fmt: skip
    assert figures["lenet5 c=1: requests/s vs floor"] == 0.8
    assert round(figures["lenet5 c=1: p50 minus floor (ms)"], 6) == 0.3
    assert figures["lenet5 c=1: server CPU per request, floor/ours"] == 0.8
    assert figures["lenet5 c=1: batching on/off (rows/s)"] == 2.0
    assert figures["resnet18 c=8: batching on/off (rows/s)"] == 45 / 40
    assert figures["resnet18: best served images/s vs best onnxruntime in-process"] == 0.9
    assert figures["resnet18 c=8: served images/s vs onnxruntime in-process at batch 8"] == 0.9
    assert figures["resnet18 c=8: CPU per image, onnxruntime/server"] == 0.8
