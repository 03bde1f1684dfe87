"""A do-nothing KServe v2 gRPC server: the protocol's floor for benchmarks and a test target.

``python -m loadtest.null_server --port P --model NAME --shape 1,32,32 --classes 10 --max-batch-size 8``

It serves one model that advertises an FP32 ``input`` ``[-1, C, H, W]`` and a BYTES ``image`` ``[-1]``
and answers every ModelInfer with a zero ``logits`` ``[batch, classes]`` in ``raw_output_contents``.
Each request runs as its own "batch", so on ``/metrics`` (named like ``service``'s metrics)
``cnnserve_batch_size`` records rows per request, ``cnnserve_queue_duration_seconds`` records 0 (there is
no queue) and ``cnnserve_compute_duration_seconds`` the time spent building the response.

With ``--port 0`` / ``--metrics-port 0`` free ports are picked; the first line on stdout always reads
``null_server grpc=HOST:PORT metrics=http://HOST:PORT/metrics``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_config_pb2 as mc

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNKNOWN_MODEL = "_unknown"


@dataclass(frozen=True)
class NullModel:
    name: str
    version: str
    shape: tuple[int, ...]  # C, H, W (no batch dimension)
    classes: int
    max_batch_size: int


class NullMetrics:
    """The subset of cnnserve's metrics a do-nothing server can report truthfully."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "cnnserve_requests_total",
            "ModelInfer requests by outcome",
            ["model", "version", "outcome"],
            registry=registry,
        )
        self.rows = Counter(
            "cnnserve_inference_rows_total", "rows inferred", ["model", "version"], registry=registry
        )
        self.batch_size = Histogram(
            "cnnserve_batch_size",
            "rows per executed batch",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.queue = Histogram(
            "cnnserve_queue_duration_seconds",
            "time a request waited in the batcher queue",
            ["model", "version"],
            registry=registry,
        )
        self.compute = Histogram(
            "cnnserve_compute_duration_seconds",
            "one batch's backend call",
            ["model", "version", "backend", "precision"],
            registry=registry,
        )


class NullServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model: NullModel, metrics: NullMetrics) -> None:
        self.model = model
        self.metrics = metrics
        self._zeros: dict[int, bytes] = {}

    def _known(self, name: str, version: str) -> bool:
        return name == self.model.name and version in ("", self.model.version)

    async def _require_model(self, name: str, version: str, context: grpc.aio.ServicerContext) -> None:
        if not self._known(name, version):
            shown = f"{name}" + (f" version {version}" if version else "")
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model '{shown}' is not found")

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self._known(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="loadtest-null-server", version="0", extensions=[])

    async def ModelMetadata(self, request, context):
        await self._require_model(request.name, request.version, context)
        m = self.model
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=m.name,
            versions=[m.version],
            platform="null",
            inputs=[
                tensor(name="input", datatype="FP32", shape=[-1, *m.shape]),
                tensor(name="image", datatype="BYTES", shape=[-1]),
            ],
            outputs=[tensor(name="logits", datatype="FP32", shape=[-1, m.classes])],
        )

    async def ModelConfig(self, request, context):
        await self._require_model(request.name, request.version, context)
        m = self.model
        config = mc.ModelConfig(name=m.name, platform="null", max_batch_size=m.max_batch_size)
        config.input.add(name="input", data_type=mc.TYPE_FP32, dims=list(m.shape))
        config.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[m.classes])
        return pb.ModelConfigResponse(config=config)

    async def ModelInfer(self, request, context):
        started = time.perf_counter()
        if not self._known(request.model_name, request.model_version):
            self.metrics.requests.labels(UNKNOWN_MODEL, "", "not_found").inc()
            await self._require_model(request.model_name, request.model_version, context)
        version = self.model.version
        if len(request.inputs) != 1 or not request.inputs[0].shape:
            self.metrics.requests.labels(self.model.name, version, "invalid_argument").inc()
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "expected exactly one input ('input' or 'image') with a batch dimension",
            )
        rows = int(request.inputs[0].shape[0])
        if not 1 <= rows <= self.model.max_batch_size:
            self.metrics.requests.labels(self.model.name, version, "invalid_argument").inc()
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"batch size {rows} is outside 1..max_batch_size={self.model.max_batch_size}",
            )
        zeros = self._zeros.get(rows)
        if zeros is None:
            zeros = self._zeros.setdefault(rows, bytes(4 * rows * self.model.classes))
        response = pb.ModelInferResponse(
            model_name=self.model.name, model_version=version, id=request.id, raw_output_contents=[zeros]
        )
        response.outputs.add(name="logits", datatype="FP32", shape=[rows, self.model.classes])
        self.metrics.requests.labels(self.model.name, version, "success").inc()
        self.metrics.rows.labels(self.model.name, version).inc(rows)
        self.metrics.batch_size.labels(self.model.name, version).observe(rows)
        self.metrics.queue.labels(self.model.name, version).observe(0.0)
        self.metrics.compute.labels(self.model.name, version, "null", "fp32").observe(
            time.perf_counter() - started
        )
        return response


def positive_int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,32,32, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive dimensions, got {text!r}")
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.null_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="gRPC port (0 = pick a free one)")
    parser.add_argument("--metrics-port", type=int, default=0, help="/metrics port (0 = pick a free one)")
    parser.add_argument("--model", default="null")
    parser.add_argument("--model-version", default="1")
    parser.add_argument("--shape", type=positive_int_list, default=(1, 32, 32), help="C,H,W of 'input'")
    parser.add_argument("--classes", type=positive_int, default=10)
    parser.add_argument("--max-batch-size", type=positive_int, default=8)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    registry = CollectorRegistry()
    model = NullModel(args.model, args.model_version, args.shape, args.classes, args.max_batch_size)
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(NullServicer(model, NullMetrics(registry)), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    if port == 0:
        raise SystemExit(f"null_server: cannot listen on {args.host}:{args.port}")
    metrics_server, _ = start_http_server(args.metrics_port, addr=args.host, registry=registry)
    await server.start()
    print(
        f"null_server grpc={args.host}:{port} metrics=http://{args.host}:{metrics_server.server_port}/metrics",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)
    metrics_server.shutdown()


@dataclass(frozen=True)
class NullServerAddress:
    grpc: str  # HOST:PORT
    metrics_url: str


def parse_banner(line: str) -> NullServerAddress:
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    return NullServerAddress(grpc=fields["grpc"], metrics_url=fields["metrics"])


@contextlib.contextmanager
def running(
    model: str = "null",
    shape: tuple[int, ...] = (1, 32, 32),
    classes: int = 10,
    max_batch_size: int = 8,
    python: str = sys.executable,
) -> Iterator[NullServerAddress]:
    """Run the null server in a child process on free 127.0.0.1 ports; stop it on exit."""
    package_parent = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])),
    }
    command = [
        python,
        "-m",
        "loadtest.null_server",
        "--port=0",
        "--metrics-port=0",
        f"--model={model}",
        f"--shape={','.join(map(str, shape))}",
        f"--classes={classes}",
        f"--max-batch-size={max_batch_size}",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        banner = process.stdout.readline()
        if not banner.startswith("null_server "):
            raise RuntimeError(
                f"the null server did not start (exit status {process.wait(5)}); see its stderr"
            )
        yield parse_banner(banner)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
