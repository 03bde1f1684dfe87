"""Health under overload, measured as a kubelet would: ``python -m bench --section health``.

One overload run: resnet18 with a small queue and ``--max-inflight``, driven past what it can serve by
``python -m loadtest --workers`` processes (so that the server sheds: RESOURCE_EXHAUSTED), while another
process probes, each probe on a fresh connection with a 1 s timeout as the kubelet's probes are:

- the health port: ``grpc.health.v1`` Check (the kubelet's gRPC probe),
- the metrics port's ``GET /v2/health/ready`` (an HTTP probe),
- for the record, the main gRPC port's Check, which shares the event loop with inference.

The prober is also this module's command line (``python -m bench.health probe ...``), used by the
reliability tests' overload case. It measures from its own process, never the server's.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

HEALTH_PORT, HTTP_READY, MAIN_PORT = (
    "health port (gRPC Check)",
    "HTTP /v2/health/ready",
    "main port (gRPC Check)",
)
PROBE_TIMEOUT_S = 1.0  # the kubelet's default timeoutSeconds
BOUND_S = 0.100  # the bound on a probe's answer, at any load the server is shedding
PROBER_NICE = -10  # the kubelet is a node daemon with reserved CPU, not a peer of the pod's load
LOAD_NICE = 10  # real clients run on other machines; here they share the cores, and yield to the server


@dataclass(frozen=True)
class Target:
    label: str
    kind: str  # "grpc" or "http"
    where: str  # gRPC HOST:PORT, or an http:// URL


def probe_once(target: Target, timeout: float = PROBE_TIMEOUT_S) -> tuple[float, str]:
    """One probe on a fresh connection: (seconds until answered, outcome). The outcome is the serving
    status ("SERVING", "NOT_SERVING"; HTTP: "200", "400") or what went wrong ("timeout", "error: ...")."""
    started = time.perf_counter()
    if target.kind == "grpc":
        import grpc

        from protos import health_pb2, health_pb2_grpc

        channel = grpc.insecure_channel(target.where, options=[("grpc.enable_retries", 0)])
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
            outcome = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        except grpc.RpcError as e:
            code = e.code()
            outcome = "timeout" if code == grpc.StatusCode.DEADLINE_EXCEEDED else f"error: {code.name}"
        finally:
            channel.close()
        return time.perf_counter() - started, outcome
    url = urllib.parse.urlsplit(target.where)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        connection.request("GET", url.path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        outcome = str(response.status)
    except TimeoutError:
        outcome = "timeout"
    except OSError as e:
        outcome = f"error: {type(e).__name__}"
    finally:
        connection.close()
    return time.perf_counter() - started, outcome


def probe_run(targets: list[Target], duration_s: float, period_s: float) -> dict[str, list[list]]:
    """Probe every target in turn, one round every ``period_s`` seconds, for ``duration_s`` seconds.
    Returns per target the list of [seconds since start, latency seconds, outcome]."""
    samples: dict[str, list[list]] = {t.label: [] for t in targets}
    for target in targets:  # not measured: the first probe pays for imports and name resolution
        probe_once(target)
    start = time.monotonic()
    next_round = start
    while (now := time.monotonic()) - start < duration_s:
        if now < next_round:
            time.sleep(next_round - now)  # the probe period itself, not a synchronisation
        next_round += period_s
        for target in targets:
            latency, outcome = probe_once(target)
            samples[target.label].append([round(time.monotonic() - start, 3), latency, outcome])
    return samples


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: list[list], bound_s: float = BOUND_S) -> dict:
    """Latency percentiles of one target's probes (timeouts count as the probe timeout), and outcomes."""
    latencies = [latency for _, latency, _ in samples]
    outcomes: dict[str, int] = {}
    for _, _, outcome in samples:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return {
        "probes": len(samples),
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p90_ms": percentile(latencies, 90) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "max_ms": max(latencies, default=math.nan) * 1e3,
        "over_bound": sum(1 for x in latencies if x > bound_s),
        "outcomes": outcomes,
    }


def niced(delta: int):
    """A ``preexec_fn`` that changes the child's niceness by ``delta`` (where the OS allows it)."""

    def change() -> None:
        with contextlib.suppress(OSError):  # raising priority needs CAP_SYS_NICE: the default then
            os.nice(delta)

    return change


def start_prober(
    health_address: str,
    metrics_url: str,
    main_address: str,
    duration_s: float,
    period_s: float,
    out: Path,
    nice: int = PROBER_NICE,
) -> subprocess.Popen:
    """``python -m bench.health probe`` in a process of its own (as a kubelet is), writing ``out``."""
    base = metrics_url.removesuffix("/metrics")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.health",
            "probe",
            "--health",
            health_address,
            "--http",
            f"{base}/v2/health/ready",
            "--main",
            main_address,
            "--duration",
            str(duration_s),
            "--period",
            str(period_s),
            "--json",
            str(out),
        ],
        cwd=Path(__file__).resolve().parents[1],
        preexec_fn=niced(nice),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.health", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    probe = commands.add_parser("probe", help="probe health endpoints, write latencies as JSON")
    probe.add_argument("--health", required=True, help="the health port, HOST:PORT")
    probe.add_argument("--http", required=True, help="URL of an HTTP health path")
    probe.add_argument("--main", help="the main gRPC port, HOST:PORT (for the record)")
    probe.add_argument("--duration", type=float, default=30.0, help="seconds")
    probe.add_argument("--period", type=float, default=0.1, help="seconds between rounds of probes")
    probe.add_argument("--json", type=Path, required=True, help="write the samples and summaries here")
    args = parser.parse_args(argv)
    targets = [Target(HEALTH_PORT, "grpc", args.health), Target(HTTP_READY, "http", args.http)]
    if args.main:
        targets.append(Target(MAIN_PORT, "grpc", args.main))
    samples = probe_run(targets, args.duration, args.period)
    summary = {label: summarize(s) for label, s in samples.items()}
    args.json.write_text(json.dumps({"summary": summary, "samples": samples}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
