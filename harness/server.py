"""A server subprocess (``python -m service`` or any KServe v2 server) on free local ports, for tests,
benchmarks and the demo. Servers start in the source checkout, as ``python -m service``."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.ports import free_port, free_ports

__all__ = ["ROOT", "ServerProcess", "free_port", "start_process", "start_server"]

ROOT = Path(__file__).resolve().parents[1]  # the repository root: servers start here
PORT_ATTEMPTS = 3


@dataclass
class ServerProcess:
    """A ``python -m service`` (or any KServe v2 server) subprocess on local ports."""

    proc: subprocess.Popen
    address: str
    metrics_url: str
    log_path: Path
    clients: list = field(default_factory=list)
    health_address: str | None = None  # cnnserve's health port
    http_url: str | None = None  # cnnserve's HTTP/REST port: http(s)://HOST:PORT

    def client(self, **kwargs):
        from service.client import InferenceClient

        c = InferenceClient(self.address, **kwargs)
        self.clients.append(c)
        return c

    def log(self) -> str:
        return self.log_path.read_text()

    def http(
        self,
        method: str,
        path: str,
        body: bytes | dict | None = None,
        headers: dict[str, str] | None = None,
        *,
        context: ssl.SSLContext | None = None,
        timeout: float = 30,
    ) -> HttpAnswer:
        """One request to the HTTP port on a connection of its own (a dict body is sent as JSON)."""
        return http_request(self.http_url, method, path, body, headers, context=context, timeout=timeout)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` on the metrics port whose labels include ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, wait (kill after ``timeout`` s); returns the exit code."""
        for c in self.clients:
            c.close()
        self.clients.clear()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self):
        return json.loads(self.body)


def http_request(
    base_url: str,
    method: str,
    path: str,
    body: bytes | dict | None = None,
    headers: dict[str, str] | None = None,
    *,
    context: ssl.SSLContext | None = None,
    timeout: float = 30,
) -> HttpAnswer:
    """``method path`` against ``base_url`` (http(s)://HOST:PORT) with the standard library's client;
    errors are answers too (status and body), not exceptions."""
    url = urllib.parse.urlsplit(base_url)
    if url.scheme == "https":
        connection = http.client.HTTPSConnection(url.hostname, url.port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return HttpAnswer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def start_process(
    cmd: list[str],
    address: str,
    metrics_url: str,
    log_path: Path,
    *,
    ready_service: str | None = "",
    ready_timeout: float = 120,
    env: dict[str, str] | None = None,
    health_address: str | None = None,
    cwd: Path | None = None,
    http_url: str | None = None,
) -> ServerProcess:
    """Start ``cmd`` and wait until gRPC health ``ready_service`` is SERVING (None: until ServerReady), asked
    on ``health_address`` (default: ``address``)."""
    from service.healthcheck import check

    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd or ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    server = ServerProcess(
        proc, address, metrics_url, log_path, health_address=health_address, http_url=http_url
    )
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{server.log()}")
        if ready_service is not None:
            ready, _ = check(health_address or address, ready_service, timeout=1.0)
        else:
            ready = _server_ready(address)
        # The health port opens before the gRPC port binds: "up" means both take connections.
        if ready and _accepts(address) and proc.poll() is None:  # (another process may hold the port)
            return server
        time.sleep(0.2)
    server.terminate()
    raise RuntimeError(f"{' '.join(cmd)} not ready after {ready_timeout}s:\n{server.log()}")


def _accepts(address: str) -> bool:
    """Whether ``host:port`` takes a TCP connection (whatever it speaks: TLS or not)."""
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
        return True
    except OSError:
        return False


def _server_ready(address: str) -> bool:
    import grpc

    from protos import grpc_service_pb2 as pb
    from protos import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            return (
                pb_grpc.GRPCInferenceServiceStub(channel)
                .ServerReady(pb.ServerReadyRequest(), timeout=1)
                .ready
            )
        except grpc.RpcError:
            return False


def start_server(
    repo: Path,
    log_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready_timeout: float = 120,
    ready_service: str = "",
    prefix: Sequence[str] = (),
) -> ServerProcess:
    """``[PREFIX] python -m service --repo REPO ARGS`` on free 127.0.0.1 ports, once health
    ``ready_service`` ("": the server is ready; "liveness": it is up) is SERVING on its health port. The
    HTTP port is a free one too, unless ARGS give ``--http-port`` (0: off); each other port likewise unless
    ARGS give it (``--grpc-port``, ``--metrics-port``, ``--health-port``)."""
    for attempt in range(PORT_ATTEMPTS):
        grpc_port, metrics_port, health_port, http_port = free_ports(4)
        grpc_port = int(_flag_value(args, "--grpc-port") or grpc_port)
        http_port = int(_flag_value(args, "--http-port") or http_port)
        metrics_port = int(_flag_value(args, "--metrics-port") or metrics_port)
        health_port = int(_flag_value(args, "--health-port") or health_port)
        cmd = [
            *prefix,
            sys.executable,
            "-m",
            "service",
            "--repo",
            str(repo),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(grpc_port),
            "--metrics-port",
            str(metrics_port),
            "--health-port",
            str(health_port),
            "--http-port",
            str(http_port),
            *args,
        ]
        scheme = "https" if "--tls-cert" in args else "http"
        try:
            return start_process(
                cmd,
                f"127.0.0.1:{grpc_port}",
                f"http://127.0.0.1:{metrics_port}/metrics",
                Path(log_dir) / f"server-{grpc_port}.log",
                env=env,
                ready_timeout=ready_timeout,
                ready_service=ready_service,
                health_address=f"127.0.0.1:{health_port}",
                http_url=f"{scheme}://127.0.0.1:{http_port}" if http_port else None,
            )
        except RuntimeError as e:
            # Another process took a port between its pick and the server's bind: pick again.
            if "(port in use?)" not in str(e) or attempt == PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _flag_value(args: tuple[str, ...], flag: str) -> str | None:
    """The value ARGS give ``flag`` (``--flag V`` or ``--flag=V``; the last one wins, as argparse's)."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value
