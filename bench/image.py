"""The container image: ``python -m bench --section image``.

Builds the ``cpu`` target of the Dockerfile with a Docker daemon of its own (:mod:`harness.image`: the
classic builder, a local Debian base where no registry is reachable), cold (a fresh daemon, nothing cached)
and again with every layer cached; reports the image's size, the time from ``docker run`` to the health
port answering SERVING, and the served figures of one model (resnet18, random weights, gRPC closed loop)
from the container and from ``python -m service`` on the host, rounds alternating, as ratios.
"""

from __future__ import annotations

import json
import statistics
import time

from bench import BenchContext, SectionResult, register_section

MODEL = "resnet18"
CONCURRENCY = 4
ROUNDS = 3
READY_WITHIN_S = 180


@register_section("image", "the cpu image: size, build time cold and cached, start to ready, served vs host")
def run(ctx: BenchContext) -> SectionResult:
    from harness import image

    reason = image.unavailable()
    if reason is not None:
        return SectionResult.skip(reason)
    from bench.serving import Endpoint, closed_loop, cnnserve, repository
    from harness.ports import free_ports
    from service.healthcheck import check

    repo = repository(ctx, [MODEL])
    rounds = 1 if ctx.quick else ROUNDS
    with image.docker_daemon(ctx.work_dir / "docker") as daemon:
        started = time.monotonic()
        base = image.local_base(daemon)
        base_s = time.monotonic() - started
        ctx.console.print(f"image: local base in {base_s:.0f} s; building cold", highlight=False)
        cold_s = image.build(daemon, "cpu", "cnnserve:bench", base)
        ctx.console.print(f"image: built cold in {cold_s:.0f} s; again, every layer cached", highlight=False)
        cached_s = image.build(daemon, "cpu", "cnnserve:bench", base)
        size = json.loads(daemon.docker("image", "inspect", "cnnserve:bench").stdout)[0]["Size"]
        ports = free_ports(4)
        names = ("SERVE_HTTP_PORT", "SERVE_GRPC_PORT", "SERVE_METRICS_PORT", "SERVE_HEALTH_PORT")
        env = dict(zip(names, ports, strict=True))
        command = ["run", "-d", "--name", "cnnserve-bench", "--network", "host", "--read-only"]
        command += ["--tmpfs", "/tmp", "--cap-drop", "ALL", "-v", f"{repo}:/models:ro"]
        command += ["-e", "SERVE_HOST=127.0.0.1", "-e", f"SERVE_LOAD_MODEL={MODEL}"]
        command += ["-e", "SERVE_MODEL_CONTROL_MODE=explicit"]
        for key, value in env.items():
            command += ["-e", f"{key}={value}"]
        started = time.monotonic()
        daemon.docker(*command, "cnnserve:bench")
        health = f"127.0.0.1:{env['SERVE_HEALTH_PORT']}"
        while not check(health, "", timeout=2)[0]:
            if time.monotonic() - started > READY_WITHIN_S:
                raise RuntimeError(f"the container was not ready in {READY_WITHIN_S} s")
            time.sleep(0.2)
        ready_s = time.monotonic() - started
        ctx.console.print(f"image: ready {ready_s:.1f} s after docker run; serving {MODEL}", highlight=False)
        try:
            container = Endpoint(
                "container",
                f"127.0.0.1:{env['SERVE_GRPC_PORT']}",
                MODEL,
                None,
                f"http://127.0.0.1:{env['SERVE_METRICS_PORT']}/metrics",
            )
            with cnnserve(ctx, [MODEL]) as host_server:
                host = host_server.endpoint(MODEL, "host")
                ratios, points = [], {"container": [], "host": []}
                for i in range(rounds):
                    order = (container, host) if i % 2 == 0 else (host, container)
                    measured = {e.label: closed_loop(ctx, e, CONCURRENCY) for e in order}
                    for label, point in measured.items():
                        points[label].append(point)
                    ratios.append(measured["container"]["images_per_s"] / measured["host"]["images_per_s"])
        finally:
            daemon.docker("rm", "-f", "cnnserve-bench")
    ratio = statistics.median(ratios)
    figures = {
        "size_bytes": size,
        "base_seconds": base_s,
        "build_cold_seconds": cold_s,
        "build_cached_seconds": cached_s,
        "run_to_ready_seconds": ready_s,
        "container_vs_host_images_per_s": ratio,
        "per_round_ratios": ratios,
        "points": points,
    }
    columns = ["figure", "value"]
    rows = [
        ["image size", f"{size / 1e6:.0f} MB"],
        ["build, cold (fresh daemon, vfs)", f"{cold_s:.0f} s"],
        ["build, every layer cached", f"{cached_s:.1f} s"],
        ["docker run to ready (health port SERVING)", f"{ready_s:.1f} s"],
        [f"{MODEL} images/s at c={CONCURRENCY}, container / host", f"{ratio:.2f}"],
    ]
    notes = [
        "The local Debian base (debootstrap, cached) stands in for python:3.11-slim where no registry is "
        "reachable; the vfs storage driver copies every layer in full, so builds are slower than with "
        "overlay2. The container runs with --network host, locked down as the manifests run it."
    ]
    return SectionResult(columns=columns, rows=rows, figures=figures, notes=notes)
