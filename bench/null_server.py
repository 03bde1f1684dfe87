"""A do-nothing KServe v2 server (gRPC, and HTTP when asked): the protocol's floor for benchmarks and a test
target.

``python -m bench.null_server --port P --model NAME --shape 1,32,32 --classes 10 --max-batch-size 8``

It is our own front ends (``service.protocol``: the gRPC servicer, the HTTP app with its admission and
acceptor, the metrics port) over a data plane that does nothing (:mod:`bench.null_plane`): one model that
advertises an FP32 ``input`` ``[-1, C, H, W]``, a UINT8 ``pixels`` ``[-1, H, W, C]`` and a BYTES
``image`` ``[-1]`` (``--no-inputs``: none, like MLServer serving an ONNX model; ``--no-config``: no
Triton model configuration, UNIMPLEMENTED) and answers every infer request with zero ``logits``
``[batch, classes]`` without looking at the input's values. So the floor includes our codecs and
telemetry: a benchmark against it measures what the model and the batcher add. ``/metrics`` has
cnnserve's series (``cnnserve_requests_total`` by outcome, ``cnnserve_inference_rows_total``,
``cnnserve_batch_size``: each request its own "batch").

``--tls-cert``/``--tls-key`` put both front ends on TLS (``--tls-client-ca``: mutual TLS);
``--require-header KEY=VALUE`` restricts inference as ``--restricted-protocol inference:KEY=VALUE``
does on the real server (UNAUTHENTICATED / HTTP 401 without the header, PERMISSION_DENIED / 403 with
another value).

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

from bench.null_plane import NullModel, NullPlane
from loadtest.cli import header, number_list, positive
from protos.wire import MAX_MESSAGE_BYTES
from service.eventloop import run
from service.protocol.grpc_server import build_server
from service.protocol.health import HealthState, heartbeat, http_probe
from service.protocol.http_admission import Admission
from service.protocol.security import grpc_server_credentials, parse_restrictions
from service.settings import Settings
from service.telemetry.endpoint import serve_endpoint
from service.telemetry.prometheus import ServerMetrics


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


async def serve(args: argparse.Namespace) -> None:
    from service.protocol.http_server import HttpFrontEnd, HttpServer

    metrics = ServerMetrics(gpu=False)
    model = NullModel(
        args.model,
        args.model_version,
        args.shape,
        args.classes,
        args.max_batch_size,
        describe_inputs=not args.no_inputs,
        offer_config=not args.no_config,
    )
    plane = NullPlane(model, metrics)
    health = HealthState()
    health.set_model(model.name, (model.version,))
    health.set_ready(True)
    beating = asyncio.create_task(heartbeat(health))
    restrictions = {}
    if args.require_header is not None:
        restrictions = parse_restrictions(["inference:{}={}".format(*args.require_header)])
    credentials = None
    if args.tls_cert is not None:
        credentials = grpc_server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
    server, port = build_server(
        plane,
        health,
        f"{args.host}:{args.port}",
        max_message_bytes=MAX_MESSAGE_BYTES,
        credentials=credentials,
        restrictions=restrictions,
    )
    await server.start()
    probe = http_probe(health)
    endpoint, metrics_port = serve_endpoint(metrics.registry, probe, args.host, args.metrics_port)
    banner = f"null_server grpc={args.host}:{port} metrics=http://{args.host}:{metrics_port}/metrics"
    http = None
    if args.http_port is not None:
        defaults = Settings(repo=Path("."))
        app = HttpFrontEnd(
            plane,
            health,
            max_body_bytes=MAX_MESSAGE_BYTES,
            max_json_bytes=defaults.max_json_bytes,
            body_timeout=defaults.body_timeout,
            restrictions=restrictions,
        ).app()
        app = Admission(app, health, defaults.max_active_http_requests)
        tls = {"tls_cert": args.tls_cert, "tls_key": args.tls_key, "tls_client_ca": args.tls_client_ca}
        http = HttpServer(app, args.host, args.http_port, health=health, **tls)
        http.start()
        scheme = "https" if args.tls_cert else "http"
        banner += f" http={scheme}://{args.host}:{http.port}"
    print(banner, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    if http is not None:
        await http.stop(1.0)
    await server.stop(grace=1.0)
    endpoint.shutdown()
    beating.cancel()


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
