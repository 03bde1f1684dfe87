"""A do-nothing KServe v2 server (gRPC, and HTTP when asked): the protocol's floor for benchmarks and a test
target.

``python -m bench.null_server --port P --model NAME --shape 1,32,32 --classes 10 --max-batch-size 8``

It serves one model that advertises an FP32 ``input`` ``[-1, C, H, W]``, a UINT8 ``pixels``
``[-1, H, W, C]`` and a BYTES ``image`` ``[-1]`` (``--no-inputs``: none, like MLServer serving an ONNX
model) and answers every infer request with zero ``logits`` ``[batch, classes]``, without looking at the
input's values. To be a fair floor for cnnserve it runs on the same frameworks with the same settings
(grpc.aio with ``service.protocol.grpc_server.server_options``; Starlette served by uvicorn in the same event loop
for HTTP) and counts requests the way cnnserve does: plain integers turned into metric families only at
scrape time, so a request pays no metric locks. ``/metrics`` (named like cnnserve's) has
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
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvicorn
from google.protobuf import json_format
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from loadtest.cli import header, number_list, positive
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_config_pb2 as mc
from service.errors import OUTCOMES
from service.protocol.grpc_server import server_options
from service.telemetry.stats import BATCH_BUCKETS, Histogram

UNKNOWN_MODEL = "_unknown"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # cnnserve's default --max-message-bytes
NULL_OUTCOMES = (*OUTCOMES, "permission_denied")
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
}
HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class NullModel:
    name: str
    version: str
    shape: tuple[int, ...]  # C, H, W (no batch dimension)
    classes: int
    max_batch_size: int
    describe_inputs: bool = True  # False: ModelMetadata lists no inputs
    offer_config: bool = True  # False: no Triton ModelConfig (gRPC UNIMPLEMENTED, HTTP 404)

    def inputs(self) -> list[tuple[str, str, list[int]]]:
        if not self.describe_inputs:
            return []
        inputs = [("input", "FP32", [-1, *self.shape]), ("image", "BYTES", [-1])]
        if len(self.shape) == 3:
            c, h, w = self.shape
            inputs.insert(1, ("pixels", "UINT8", [-1, h, w, c]))
        return inputs


class NullError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NullCounts(Collector):
    """The subset of cnnserve's metrics a do-nothing server can report truthfully, kept as plain
    integers (updated on the event loop only) and exposed as metric families at scrape time."""

    def __init__(self, model: NullModel) -> None:
        self.model = model
        self.outcomes = dict.fromkeys(NULL_OUTCOMES, 0)
        self.unknown_model = dict.fromkeys(NULL_OUTCOMES, 0)
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


class NullCore:
    """What both front ends answer, transport-free: the model's description and the admission checks."""

    def __init__(self, model: NullModel, counts: NullCounts, required_header: tuple[str, str] | None) -> None:
        self.model = model
        self.counts = counts
        self.required_header = required_header

    def known(self, name: str, version: str) -> bool:
        return name == self.model.name and version in ("", self.model.version)

    def require_model(self, name: str, version: str) -> None:
        if not self.known(name, version):
            shown = f"{name}" + (f" version {version}" if version else "")
            raise NullError(grpc.StatusCode.NOT_FOUND, f"model '{shown}' is not found")

    def metadata(self) -> dict:
        m = self.model
        return {
            "name": m.name,
            "versions": [m.version],
            "platform": "null",
            "inputs": [{"name": n, "datatype": t, "shape": s} for n, t, s in m.inputs()],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, m.classes]}],
        }

    def config(self) -> dict:
        """Triton's model configuration, in its JSON form."""
        m = self.model
        inputs = (
            [{"name": "input", "data_type": "TYPE_FP32", "dims": list(m.shape)}] if m.describe_inputs else []
        )
        output = {"name": "logits", "data_type": "TYPE_FP32", "dims": [m.classes]}
        return {
            "name": m.name,
            "platform": "null",
            "max_batch_size": m.max_batch_size,
            "input": inputs,
            "output": [output],
        }

    def reject(self, outcome: str, code: grpc.StatusCode, message: str) -> NullError:
        self.counts.outcomes[outcome] += 1
        return NullError(code, message)

    def authorize(self, header_value: str | None) -> None:
        """Inference as Triton's restricted protocols guard it: first, before the request is read."""
        if self.required_header is not None and header_value != self.required_header[1]:
            message = f"inference requires the header '{self.required_header[0]}'"
            raise self.reject("permission_denied", grpc.StatusCode.PERMISSION_DENIED, message)

    def admit(self, name: str, version: str, shapes: list[list[int]]) -> int:
        """Check one infer request; the rows it carries, or NullError (counted by outcome)."""
        if not self.known(name, version):
            self.counts.unknown_model["not_found"] += 1
            self.require_model(name, version)
        if len(shapes) != 1 or not shapes[0]:
            raise self.reject(
                "invalid_argument",
                grpc.StatusCode.INVALID_ARGUMENT,
                "expected exactly one input ('input', 'pixels' or 'image') with a batch dimension",
            )
        rows = shapes[0][0]
        if not 1 <= rows <= self.model.max_batch_size:
            raise self.reject(
                "invalid_argument",
                grpc.StatusCode.INVALID_ARGUMENT,
                f"batch size {rows} is outside 1..max_batch_size={self.model.max_batch_size}",
            )
        self.counts.success(rows)
        return rows


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


async def http_error(request: Request, error: NullError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=HTTP_STATUS[error.code])


class NullHttp:
    """The KServe v2 REST routes over the same core; infer replies are prepared once per batch size."""

    def __init__(self, core: NullCore) -> None:
        self.core = core
        self._replies: dict[tuple[int, bool], Response] = {}

    def app(self) -> Starlette:
        routes = [
            Route("/v2/health/live", self.ok),
            Route("/v2/health/ready", self.ok),
            Route("/v2", self.server),
        ]
        for model in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [
                Route(model, self.metadata),
                Route(f"{model}/ready", self.ready),
                Route(f"{model}/infer", self.infer, methods=["POST"]),
            ]
            if self.core.model.offer_config:
                routes.append(Route(f"{model}/config", self.config))
        return Starlette(routes=routes, exception_handlers={NullError: http_error})

    def _model(self, request: Request) -> tuple[str, str]:
        return request.path_params["model"], request.path_params.get("version", "")

    async def ok(self, request: Request) -> Response:
        return Response(status_code=200)

    async def server(self, request: Request) -> Response:
        return JSONResponse(
            {"name": "loadtest-null-server", "version": "0", "extensions": ["binary_tensor_data"]}
        )

    async def metadata(self, request: Request) -> Response:
        self.core.require_model(*self._model(request))
        return JSONResponse(self.core.metadata())

    async def ready(self, request: Request) -> Response:
        self.core.require_model(*self._model(request))
        return Response(status_code=200)

    async def config(self, request: Request) -> Response:
        self.core.require_model(*self._model(request))
        return JSONResponse(self.core.config())

    async def infer(self, request: Request) -> Response:
        required = self.core.required_header
        self.core.authorize(request.headers.get(required[0]) if required else None)
        body = await request.body()
        try:
            length = request.headers.get(HEADER_LENGTH)
            document = json.loads(body[: int(length)] if length is not None else body)
            shapes = [list(tensor["shape"]) for tensor in document["inputs"]]
            binary = bool(document.get("parameters", {}).get("binary_data_output")) or any(
                output.get("parameters", {}).get("binary_data") for output in document.get("outputs", ())
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            message = "malformed inference request JSON"
            raise self.core.reject("invalid_argument", grpc.StatusCode.INVALID_ARGUMENT, message) from None
        rows = self.core.admit(*self._model(request), shapes)
        if "id" in document:
            return self._reply(rows, binary, str(document["id"]))
        if (rows, binary) not in self._replies:
            self._replies[rows, binary] = self._reply(rows, binary)
        return self._replies[rows, binary]

    def _reply(self, rows: int, binary: bool, request_id: str | None = None) -> Response:
        m = self.core.model
        output = {"name": "logits", "datatype": "FP32", "shape": [rows, m.classes]}
        document = {"model_name": m.name, "model_version": m.version, "outputs": [output]}
        if request_id is not None:
            document["id"] = request_id
        if not binary:
            output["data"] = [0.0] * (rows * m.classes)
            return Response(json.dumps(document).encode(), media_type="application/json")
        output["parameters"] = {"binary_data_size": 4 * rows * m.classes}
        head = json.dumps(document).encode()
        return Response(
            head + bytes(4 * rows * m.classes),
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(len(head))},
        )


class EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our event loop, beside grpc.aio: the process's signal handlers stay ours."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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


def http_server(core: NullCore, args: argparse.Namespace) -> tuple[EmbeddedUvicorn, socket.socket]:
    config = uvicorn.Config(
        NullHttp(core).app(),
        log_level="warning",
        access_log=False,
        lifespan="off",
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
        ssl_ca_certs=args.tls_client_ca,
        ssl_cert_reqs=ssl.CERT_REQUIRED if args.tls_client_ca else ssl.CERT_NONE,
    )
    config.load()  # unreadable TLS files fail here, before the banner
    return EmbeddedUvicorn(config), listening_socket(args.host, args.http_port)


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound and listening before the banner (a client that connects early waits in the backlog).
    Made from getaddrinfo's answer, not socket.create_server: asyncio turns Nagle off only on sockets
    whose proto says TCP, and create_server's say 0, which costs every response a delayed ACK (40 ms)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(socket.SOMAXCONN)
    return sock


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
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
