"""A do-nothing KServe v2 server (gRPC, and HTTP when asked): the protocol's floor for benchmarks and a test
target.

``python -m bench.null_server --port P --model NAME --shape 1,32,32 --classes 10 --max-batch-size 8``

It serves one model that advertises an FP32 ``input`` ``[-1, C, H, W]``, a UINT8 ``pixels``
``[-1, H, W, C]`` and a BYTES ``image`` ``[-1]`` (``--no-inputs``: none, like MLServer serving an ONNX
model) and answers every infer request with zero ``logits`` ``[batch, classes]``, without looking at the
input's values. To be a fair floor for cnnserve it runs on the same frameworks with the same settings
(grpc.aio with ``service.protocol.grpc_server.server_options``; Starlette served by uvicorn in the same
event loop for HTTP) and counts requests the way cnnserve does: plain integers turned into metric families
only at scrape time, so a request pays no metric locks. ``/metrics`` (named like cnnserve's) has
``cnnserve_requests_total`` by outcome, ``cnnserve_inference_rows_total`` and ``cnnserve_batch_size``
(each request is its own "batch"); there is no queue and no compute to time.

HTTP (``--http-port``) answers the KServe v2 REST routes: health, model metadata, ready, Triton's model
config, and infer with JSON tensors or Triton's binary tensor extension. ``--tls-cert``/``--tls-key``
put both front ends on TLS (``--tls-client-ca``: mutual TLS); ``--require-header KEY=VALUE`` restricts
inference as Triton's restricted protocols do (PERMISSION_DENIED, HTTP 403, without the header).

With ``--port 0`` / ``--metrics-port 0`` / ``--http-port 0`` free ports are picked; the first line on
stdout always reads ``null_server grpc=HOST:PORT metrics=http://HOST:PORT/metrics`` (then
``http=http(s)://HOST:PORT`` when HTTP is on).
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
from google.protobuf import json_format
from prometheus_client import CollectorRegistry, start_http_server

from bench.null_core import NullCore, NullCounts, NullError, NullModel
from bench.null_http import http_server
from loadtest.cli import header, number_list, positive
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_config_pb2 as mc
from protos.wire import MAX_MESSAGE_BYTES
from service.eventloop import run
from service.protocol.grpc_server import server_options


class NullServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: NullCore) -> None:
        self.core = core
        self._responses: dict[int, pb.ModelInferResponse] = {}  # rows -> zero logits

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.core.known(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="loadtest-null-server", version="0", extensions=[])

    async def ModelMetadata(self, request, context):
        try:
            self.core.require_model(request.name, request.version)
        except NullError as error:
            await context.abort(error.code, error.message)
        return pb.ModelMetadataResponse(**self.core.metadata())

    async def ModelConfig(self, request, context):
        m = self.core.model
        if not m.offer_config:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server has no model configuration")
        try:
            self.core.require_model(request.name, request.version)
        except NullError as error:
            await context.abort(error.code, error.message)
        return pb.ModelConfigResponse(config=json_format.ParseDict(self.core.config(), mc.ModelConfig()))

    async def ModelInfer(self, request, context):
        required = self.core.required_header
        header_value = dict(context.invocation_metadata()).get(required[0].lower()) if required else None
        shapes = [list(t.shape) for t in request.inputs]
        try:
            self.core.authorize(header_value)
            rows = self.core.admit(request.model_name, request.model_version, shapes)
        except NullError as error:
            await context.abort(error.code, error.message)
        template = self._responses.get(rows)
        if template is None:
            model = self.core.model
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
        return response


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.null_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="gRPC port (0 = pick a free one)")
    parser.add_argument("--metrics-port", type=int, default=0, help="/metrics port (0 = pick a free one)")
    parser.add_argument(
        "--http-port", type=int, help="KServe v2 HTTP port (0 = pick a free one; default: off)"
    )
    parser.add_argument("--model", default="null")
    parser.add_argument("--model-version", default="1")
    shape = number_list(int, "integers like 1,32,32")
    parser.add_argument("--shape", type=shape, default=(1, 32, 32), help="C,H,W of 'input'")
    parser.add_argument("--classes", type=positive(int), default=10)
    parser.add_argument("--max-batch-size", type=positive(int), default=8)
    parser.add_argument(
        "--no-inputs", action="store_true", help="ModelMetadata lists no inputs (like MLServer)"
    )
    parser.add_argument("--no-config", action="store_true", help="no Triton ModelConfig (like MLServer)")
    parser.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    parser.add_argument(
        "--tls-client-ca", type=Path, help="mutual TLS: require client certificates of this CA"
    )
    parser.add_argument(
        "--require-header", type=header, metavar="KEY=VALUE", help="inference needs this header"
    )
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    return args


def grpc_server(core: NullCore, args: argparse.Namespace) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=server_options(MAX_MESSAGE_BYTES))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(NullServicer(core), server)
    address = f"{args.host}:{args.port}"
    if args.tls_cert is None:
        port = server.add_insecure_port(address)
    else:
        client_ca = args.tls_client_ca.read_bytes() if args.tls_client_ca else None
        credentials = grpc.ssl_server_credentials(
            [(args.tls_key.read_bytes(), args.tls_cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise SystemExit(f"null_server: cannot listen on {address}")
    return server, port


async def serve(args: argparse.Namespace) -> None:
    registry = CollectorRegistry()
    model = NullModel(
        args.model,
        args.model_version,
        args.shape,
        args.classes,
        args.max_batch_size,
        describe_inputs=not args.no_inputs,
        offer_config=not args.no_config,
    )
    counts = NullCounts(model)
    registry.register(counts)
    core = NullCore(model, counts, args.require_header)
    server, port = grpc_server(core, args)
    http, http_socket = http_server(core, args) if args.http_port is not None else (None, None)
    metrics_server, _ = start_http_server(args.metrics_port, addr=args.host, registry=registry)
    await server.start()
    banner = (
        f"null_server grpc={args.host}:{port} metrics=http://{args.host}:{metrics_server.server_port}/metrics"
    )
    http_task = None
    if http is not None:
        http_task = asyncio.create_task(http.serve(sockets=[http_socket]))
        scheme = "https" if args.tls_cert else "http"
        banner += f" http={scheme}://{args.host}:{http_socket.getsockname()[1]}"
    print(banner, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    if http_task is not None:
        http.should_exit = True
        await http_task
    await server.stop(grace=1.0)
    metrics_server.shutdown()


@dataclass(frozen=True)
class NullServerAddress:
    grpc: str  # HOST:PORT
    metrics_url: str
    pid: int | None = None  # the server process (benchmarks read its CPU time)
    http: str | None = None  # http(s)://HOST:PORT when HTTP is on


def parse_banner(line: str) -> NullServerAddress:
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    return NullServerAddress(grpc=fields["grpc"], metrics_url=fields["metrics"], http=fields.get("http"))


@contextlib.contextmanager
def running(
    model: str = "null",
    shape: tuple[int, ...] = (1, 32, 32),
    classes: int = 10,
    max_batch_size: int = 8,
    python: str = sys.executable,
    http: bool = False,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_client_ca: Path | None = None,
    require_header: tuple[str, str] | None = None,
    describe_inputs: bool = True,
    offer_config: bool = True,
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
    flags = {"--http-port=0": http, "--no-inputs": not describe_inputs, "--no-config": not offer_config}
    command += [flag for flag, wanted in flags.items() if wanted]
    files = {"--tls-cert": tls_cert, "--tls-key": tls_key, "--tls-client-ca": tls_client_ca}
    command += [f"{flag}={path}" for flag, path in files.items() if path is not None]
    if require_header is not None:
        command.append(f"--require-header={require_header[0]}={require_header[1]}")
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
    run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
