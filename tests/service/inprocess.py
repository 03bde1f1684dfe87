"""The server in the test's own event loop, for tests that need no process boundary.

``serving(repo, *flags)`` composes the server as ``python -m service`` does (:class:`service.app.Server`:
model manager, data plane, health state), loads its startup models and opens no port of its own: the
HTTP front end is driven through httpx's ``ASGITransport``, and with ``grpc=True`` the gRPC front end
runs on an in-process ``grpc.aio`` server on a free loopback port. Everything runs in the loop that
called it (the data plane is bound to one), so a test is ``run(main())`` with ``main`` an async function.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx

from protos import grpc_service_pb2_grpc as pb_grpc
from service.app import Server
from service.protocol.grpc_server import build_server
from service.settings import load_settings

TEST_TIMEOUT_S = 120  # no in-process test runs longer than this


def linear_model(repo: Path, name: str = "lenet5", **batching: Any) -> Path:
    """A model with LeNet-5's inputs and outputs (a linear classifier, written by hand: no training or
    export) as ``repo/name``; it fails on inputs >= 1 (:func:`harness.repository.faulty_onnx`)."""
    from harness.repository import add_model, faulty_onnx
    from models.lenet import DIGIT_LABELS, DIGITS_INPUT

    artifact = repo.parent / f"{name}.onnx"
    faulty_onnx(artifact, DIGITS_INPUT)
    return add_model(repo, name, artifact, spec=DIGITS_INPUT, labels=DIGIT_LABELS, **batching)


def run(main: Coroutine[Any, Any, Any], timeout: float = TEST_TIMEOUT_S) -> Any:
    """``main`` in a fresh event loop, bounded."""
    return asyncio.run(asyncio.wait_for(main, timeout))


@dataclass
class InProcess:
    server: Server
    http: httpx.AsyncClient  # the HTTP front end's ASGI app
    stub: pb_grpc.GRPCInferenceServiceStub | None  # the gRPC front end (grpc=True), grpc.aio


@contextlib.asynccontextmanager
async def serving(repo: Path, *flags: str, grpc_port: bool = False) -> AsyncIterator[InProcess]:
    """The server over ``repo`` with ``flags`` (as ``python -m service`` takes them; the environment is
    ignored), its startup models loaded."""
    settings = load_settings(["--repo", str(repo), "--host", "127.0.0.1", *flags], env={})
    server = Server(settings)
    front_end = aio_server = channel = None
    try:
        await server.load_startup_models()
        stub = None
        if grpc_port:
            aio_server, port = build_server(
                server.plane,
                server.health,
                "127.0.0.1:0",
                max_message_bytes=settings.max_message_bytes,
                restrictions=server.restrictions,
            )
            await aio_server.start()
            channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{port}",
                options=[("grpc.max_send_message_length", settings.max_message_bytes)],
            )
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
        transport = httpx.ASGITransport(app=server.http_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process", timeout=30) as http:
            front_end = InProcess(server, http, stub)
            yield front_end
    finally:
        if channel is not None:
            await channel.close()
        if aio_server is not None:
            await aio_server.stop(None)
        await server.manager.close(timeout=5)
        server.plane.close()
        server.health_server.stop()
