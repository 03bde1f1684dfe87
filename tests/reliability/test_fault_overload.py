"""Overload with health answered throughout: many clients against a deliberately slow model with a small
queue, so the server sheds (RESOURCE_EXHAUSTED) most of what it gets, while another process probes health
the kubelet's way (a fresh connection per probe): the health port's grpc.health.v1 Check and the metrics
port's /v2/health/ready must answer within 100 ms (p99 over the window), and the main port's Check is
measured for the record.

On a real node the load comes from other machines and the kubelet has CPU reserved for it; here all three
share two cores, so the load generator runs at a lower priority and the prober at a higher one where the
OS allows (bench.health.LOAD_NICE, PROBER_NICE). The server itself runs at the default priority: its own
work (answering and refusing thousands of requests a second) is what the probes must get through.
``python -m bench --section health`` measures the same with resnet18.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.health import BOUND_S, HEALTH_PORT, HTTP_READY, LOAD_NICE, MAIN_PORT, niced, start_prober
from harness.repository import copy_entry
from harness.server import ROOT
from tests.reliability.fault_kit import MODEL, assert_alive_and_correct, requests_total, wait_for

SLOW = "slow"  # LeNet-5 that waits up to 100 ms for a batch of 8 it can never form: its queue holds 4
CLIENTS, WORKERS = 128, 2
LOAD_S = 26  # the load generator's measured seconds (after 1 s of warm-up)
PROBE_S, PROBE_PERIOD_S = 15.0, 0.05  # about 300 probes of each kind, all while the server sheds


def start_load(address: str, out) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadtest",
            "--url",
            address,
            "--model",
            SLOW,
            "--workers",
            str(WORKERS),
            "--concurrency",
            str(CLIENTS),
            "--warmup",
            "1",
            "--window",
            "1",
            "--windows",
            str(LOAD_S),
            "--duration",
            str(LOAD_S),
            "--timeout",
            "10",
            "--quiet",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        preexec_fn=niced(LOAD_NICE),
    )


def test_health_answers_within_100ms_while_the_server_sheds(lenet5_dir, servers, tmp_path, reference):
    repo = tmp_path / "repo"
    copy_entry(lenet5_dir, repo, MODEL)
    copy_entry(
        lenet5_dir,
        repo,
        SLOW,
        max_batch_size=8,
        preferred_batch_sizes=(),
        max_queue_delay_microseconds=100_000,
        max_queue_size=4,
    )
    server = servers(repo, "--max-inflight", "32")
    load = start_load(server.address, tmp_path / "load.json")
    try:
        wait_for(lambda: requests_total(server, "resource_exhausted") > 0, 30, "the server to start shedding")
        shed_before = requests_total(server, "resource_exhausted")
        prober = start_prober(
            server.health_address,
            server.metrics_url,
            server.address,
            PROBE_S,
            PROBE_PERIOD_S,
            tmp_path / "probes.json",
        )
        assert prober.wait(timeout=PROBE_S + 60) == 0
        shed_during = requests_total(server, "resource_exhausted") - shed_before
        still_loading = load.poll() is None
        assert load.wait(timeout=LOAD_S + 60) == 0
    finally:
        if load.poll() is None:
            load.kill()
    summary = json.loads((tmp_path / "probes.json").read_text())["summary"]
    steps = json.loads((tmp_path / "load.json").read_text())["steps"]
    errors = steps[0]["errors"]
    figures = {
        label: {k: round(v, 1) if isinstance(v, float) else v for k, v in s.items()}
        for label, s in summary.items()
    }
    context = (
        f"\nprobes: {json.dumps(figures, indent=1)}\nload: {steps[0]['requests_per_s']:.0f} answered/s, "
        f"errors {errors}, {shed_during:.0f} refused during the probes; load average {os.getloadavg()}"
    )
    print(context)
    assert still_loading, "the load ended before the probes did" + context
    assert shed_during > 1000, "the server was not shedding throughout the probes" + context
    assert set(errors) == {"RESOURCE_EXHAUSTED"}, (
        "overload must be answered RESOURCE_EXHAUSTED only" + context
    )
    for label in (HEALTH_PORT, HTTP_READY, MAIN_PORT):
        assert set(summary[label]["outcomes"]) <= {"SERVING", "200"}, (
            f"{label} was not always ready" + context
        )
    for label in (HEALTH_PORT, HTTP_READY):
        p99 = summary[label]["p99_ms"]
        assert p99 <= BOUND_S * 1e3, (
            f"{label}: p99 {p99:.1f} ms over {summary[label]['probes']} probes exceeds the issue's "
            f"{BOUND_S * 1e3:.0f} ms bound while the server sheds; on a shared 2-core machine check the load "
            "average, then python -m bench --section health" + context
        )
    client = server.client(timeout=30)
    assert client.ready()
    assert client.statistics(SLOW).model_stats[0].inference_stats.success.count > 0  # it served, too
    assert_alive_and_correct(server, reference)
