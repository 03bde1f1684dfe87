"""``python -m bench.compare --ref REV``: this checkout's server against the server of an earlier commit, on
the same model files and config, with the same client, in alternating rounds: requests/s, p50 and the
server's CPU per request (from /proc). Before/after figures of a performance change.

The earlier server is extracted with ``git archive REV`` into the work folder and started from there (its
own packages first on the path); both serve one repository written by this checkout's ``python -m export``
(older servers read it: manifests are backward compatible), so only the serving code differs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from bench import BenchContext
from bench.serving import Endpoint, closed_loop, exported_repository, median_point, window_settings
from harness.ports import free_ports
from harness.server import ROOT, ServerProcess, start_process, start_server


def extract(ref: str, work: Path) -> tuple[Path, str]:
    """The tree of ``ref`` in a folder of ``work`` named by its commit (extracted once per commit); returns
    the folder and the commit's short hash and subject."""
    commit, _, description = (
        subprocess.run(
            ["git", "log", "-1", "--format=%H %h %s", ref],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .partition(" ")
    )
    folder = work / f"baseline-{commit[:12]}"
    if not folder.is_dir():
        work.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
        partial = Path(tempfile.mkdtemp(dir=work, prefix=".partial-"))
        try:
            with tempfile.TemporaryFile() as f:
                f.write(archive)
                f.seek(0)
                with tarfile.open(fileobj=f) as tar:
                    tar.extractall(partial, filter="data")
            partial.rename(folder)  # whole or not at all: an interrupted run leaves no half tree behind
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return folder, description


@contextlib.contextmanager
def baseline_server(tree: Path, repo: Path, logs: Path, http: bool = False) -> Iterator[ServerProcess]:
    """The earlier commit's ``python -m service`` on free ports (ready when its gRPC health says so); its
    HTTP port only where asked for (older servers have none)."""
    grpc_port, metrics_port, http_port = free_ports(3)
    cmd = [sys.executable, "-m", "service", "--repo", str(repo), "--host", "127.0.0.1"]
    cmd += ["--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
    if http:
        cmd += ["--http-port", str(http_port)]
    server = start_process(
        cmd,
        f"127.0.0.1:{grpc_port}",
        f"http://127.0.0.1:{metrics_port}/metrics",
        logs / f"baseline-{grpc_port}.log",
        http_url=f"http://127.0.0.1:{http_port}" if http else None,
        env={"PYTHONPATH": str(tree)},
        cwd=tree,
    )
    try:
        yield server
    finally:
        server.terminate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--ref", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--models", default="lenet5", help="comma-separated registry names")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated concurrencies")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-compare")
    parser.add_argument("--json", type=Path, help="write every point here")
    parser.add_argument("--quick", action="store_true", help="short windows: a smoke run, not figures")
    args = parser.parse_args(argv)
    console = Console()
    ctx = BenchContext(out_dir=args.work, quick=args.quick, console=console, work_dir=args.work)
    models = [m for m in args.models.split(",") if m]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    tree, described = extract(args.ref, args.work)
    repo = exported_repository(ctx, models, "repo")
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    measured: dict[str, list[dict]] = {}
    http = args.protocol == "http"
    with (
        baseline_server(tree, repo, logs, http=http) as before,
        start_server_ctx(repo, logs) as after,
    ):
        servers = {"before": before, "after": after}
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for model in models:
                timing = window_settings(ctx, 0.02 if model != "lenet5" else 0.001)
                for c in concurrencies:
                    for label in order:
                        server = servers[label]
                        url = server.http_url if http else server.address
                        endpoint = Endpoint(label, url, model, server.proc.pid, None)
                        measured.setdefault(f"{label}|{model}|{c}", []).append(
                            closed_loop(ctx, endpoint, c, protocol=args.protocol, **timing)
                        )
    _report(console, described, measured, models, concurrencies, args.json, args.protocol)
    return 0


@contextlib.contextmanager
def start_server_ctx(repo: Path, logs: Path) -> Iterator[ServerProcess]:
    server = start_server(repo, logs)
    try:
        yield server
    finally:
        server.terminate()


def _report(console, described, measured, models, concurrencies, json_path, protocol) -> None:
    console.print(f"before: {described}; after: this checkout; over {protocol}", highlight=False)
    for model in models:
        for c in concurrencies:
            before, after = measured[f"before|{model}|{c}"], measured[f"after|{model}|{c}"]
            b, a = median_point(before), median_point(after)
            ratio = statistics.median(
                x["requests_per_s"] / y["requests_per_s"] for x, y in zip(after, before, strict=True)
            )
            console.print(
                f"{model} c={c}: req/s {b['requests_per_s']:.0f} -> {a['requests_per_s']:.0f} "
                f"(x{ratio:.2f}), "
                f"p50 {b['p50_ms']:.2f} -> {a['p50_ms']:.2f} ms, server CPU/request "
                f"{b['server_cpu_us_per_request'] or 0:.0f} -> {a['server_cpu_us_per_request'] or 0:.0f} µs",
                highlight=False,
            )
    if json_path is not None:
        json_path.write_text(
            json.dumps({"before": described, "protocol": protocol, "points": measured}, indent=2) + "\n"
        )


if __name__ == "__main__":
    sys.exit(main())
