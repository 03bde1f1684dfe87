"""A do-nothing KServe v2 gRPC server: the protocol's floor for benchmarks and a test target.

``python -m bench.null_server --port P --model NAME --shape 1,32,32 --classes 10 --max-batch-size 8``

It serves one model that advertises an FP32 ``input`` ``[-1, C, H, W]`` and a BYTES ``image`` ``[-1]``
and answers every ModelInfer with a zero ``logits`` ``[batch, classes]`` in ``raw_output_contents``,
without looking at the input's values. To be a fair floor for cnnserve it runs on the same framework
with the same settings (grpc.aio, ``service.protocol.grpc_server.server_options``) and counts requests the way
cnnserve does: plain integers turned into metric families only at scrape time, so a request pays no
metric locks. ``/metrics`` (named like cnnserve's) has ``cnnserve_requests_total`` by outcome,
``cnnserve_inference_rows_total`` and ``cnnserve_batch_size`` (each request is its own "batch"); there
is no queue and no compute to time.

With ``--port 0`` / ``--metrics-port 0`` free ports are picked; the first line on stdout always reads
``null_server grpc=HOST:PORT metrics=http://HOST:PORT/metrics``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from loadtest.cli import number_list, positive
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_config_pb2 as mc
from service.errors import OUTCOMES
from service.protocol.grpc_server import server_options
from service.telemetry.stats import BATCH_BUCKETS, Histogram

UNKNOWN_MODEL = "_unknown"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # cnnserve's default --max-message-bytes


@dataclass(frozen=True)
class NullModel:
    name: str
    version: str
    shape: tuple[int, ...]  # C, H, W (no batch dimension)
    classes: int
    max_batch_size: int


class NullCounts(Collector):
    """The subset of cnnserve's metrics a do-nothing server can report truthfully, kept as plain
    integers (updated on the event loop only) and exposed as metric families at scrape time."""

    def __init__(self, model: NullModel) -> None:
        self.model = model
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.unknown_model = dict.fromkeys(OUTCOMES, 0)
        self.rows = 0
        self.batch = Histogram(BATCH_BUCKETS)

    def success(self, rows: int) -> None:
        self.outcomes["success"] += 1
        self.rows += rows
        self.batch.observe(rows)

    def collect(self) -> Iterator:
        labels = [self.model.name, self.model.version]
        requests = CounterMetricFamily(
            "cnnserve_requests", "ModelInfer requests by outcome", labels=["model", "version", "outcome"]
        )
        for outcome, n in self.outcomes.items():
            requests.add_metric([*labels, outcome], n)
        for outcome, n in self.unknown_model.items():
            requests.add_metric([UNKNOWN_MODEL, "", outcome], n)
        rows = CounterMetricFamily("cnnserve_inference_rows", "Rows inferred", labels=["model", "version"])
        rows.add_metric(labels, self.rows)
        batch = HistogramMetricFamily("cnnserve_batch_size", "Rows per request", labels=["model", "version"])
        buckets, total = self.batch.cumulative()
        batch.add_metric(labels, buckets, total)
        yield from (requests, rows, batch)


class NullServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model: NullModel, counts: NullCounts) -> None:
        self.model = model
        self.counts = counts
        self._responses: dict[int, pb.ModelInferResponse] = {}  # rows -> zero logits

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
        model = self.model
        if not self._known(request.model_name, request.model_version):
            self.counts.unknown_model["not_found"] += 1
            await self._require_model(request.model_name, request.model_version, context)
        inputs = request.inputs
        if len(inputs) != 1 or not inputs[0].shape:
            self.counts.outcomes["invalid_argument"] += 1
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "expected exactly one input ('input' or 'image') with a batch dimension",
            )
        rows = inputs[0].shape[0]
        if not 1 <= rows <= model.max_batch_size:
            self.counts.outcomes["invalid_argument"] += 1
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"batch size {rows} is outside 1..max_batch_size={model.max_batch_size}",
            )
        template = self._responses.get(rows)
        if template is None:
            template = pb.ModelInferResponse(
                model_name=model.name,
                model_version=model.version,
                raw_output_contents=[bytes(4 * rows * model.classes)],
            )
            template.outputs.add(name="logits", datatype="FP32", shape=[rows, model.classes])
            self._responses[rows] = template
        response = pb.ModelInferResponse()
        response.CopyFrom(template)  # the cheapest correct answer: a prepared message, copied
        if request.id:
            response.id = request.id
        self.counts.success(rows)
        return response


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.null_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="gRPC port (0 = pick a free one)")
    parser.add_argument("--metrics-port", type=int, default=0, help="/metrics port (0 = pick a free one)")
    parser.add_argument("--model", default="null")
    parser.add_argument("--model-version", default="1")
    shape = number_list(int, "integers like 1,32,32")
    parser.add_argument("--shape", type=shape, default=(1, 32, 32), help="C,H,W of 'input'")
    parser.add_argument("--classes", type=positive(int), default=10)
    parser.add_argument("--max-batch-size", type=positive(int), default=8)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    registry = CollectorRegistry()
    model = NullModel(args.model, args.model_version, args.shape, args.classes, args.max_batch_size)
    counts = NullCounts(model)
    registry.register(counts)
    server = grpc.aio.server(options=server_options(MAX_MESSAGE_BYTES))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(NullServicer(model, counts), server)
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
    pid: int | None = None  # the server process (benchmarks read its CPU time)


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
        "bench.null_server",
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
        yield dataclasses.replace(parse_banner(banner), pid=process.pid)
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
