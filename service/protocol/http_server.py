"""The HTTP/REST front end: KServe v2 REST with Triton's extensions over the data plane, on Starlette served
by uvicorn inside the event loop that runs gRPC and the data plane.

The stack: the data plane and its telemetry live on one event loop, without locks, so the HTTP server must
run in that loop rather than in threads or processes of its own. uvicorn is the ASGI reference server
(Encode; httptools' C parser, flow control, graceful shutdown, TLS) and can be embedded in a running loop;
Starlette (the router FastAPI is built on) adds routing and little else, so a request costs the parse, the
codec (:mod:`.http_codec`) and the data plane, with no validation layer in between.

Routes (Triton's HTTP API): ``GET /v2/health/live|ready``, ``GET /v2``, ``GET /v2/models/stats``, and under
``/v2/models/{model}[/versions/{version}]``: ``GET`` (metadata), ``GET /ready``, ``GET /config``,
``GET /stats``, ``POST /infer``; ``POST /v2/repository/index``,
``POST /v2/repository/models/{m}/load|unload``; ``GET /metrics`` when the metrics port is this port.
Every endpoint goes through :func:`_endpoint`, the one place where restrictions are checked and errors
become ``{"error": "..."}`` with the HTTP status of the gRPC one (:data:`service.errors.HTTP_STATUS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import mmap
import socket
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from protos.wire import BYTES
from service.dataplane.budget import BudgetFull, ByteBudget
from service.dataplane.plane import DataPlane
from service.dataplane.types import InferRequest, InferResponse
from service.errors import (
    HTTP_STATUS,
    Cancelled,
    DeadlineExceeded,
    InvalidInput,
    PayloadTooLarge,
    ServeError,
    clip,
)
from service.protocol import http_codec as codec
from service.protocol.client_noise import quiet_client_noise
from service.protocol.health import HealthState
from service.protocol.http_accept import ProbeFirstAcceptor
from service.protocol.http_headers import BoundedHttpToolsProtocol
from service.protocol.security import Restriction
from service.serving.model_names import check_model_name
from service.sockets import listening_socket
from service.telemetry.stats import HTTP, REQUEST_PROTOCOL

log = logging.getLogger(__name__)

JSON_INLINE_BYTES = 1 << 18  # larger JSON headers are parsed off the event loop (other requests go on)
# Repository index, load and unload take a few parameters: their bodies are small, whatever
# --max-message-bytes allows inference.
CONTROL_BODY_BYTES = 64 * 1024
MESSAGE_LIMIT = "--max-message-bytes"
JSON_LIMIT = "--max-json-bytes"
BODY_TIMEOUT = "--body-timeout"
RESERVATION = "cnnserve.body_reservation"  # ASGI scope key: the request's BodyReservation
CONTROL_LIMIT = "the limit of repository control requests"
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # Content-Encoding -> zlib wbits
MAX_INFLATE_RATIO = 256  # bytes a compressed body may inflate to per byte received...
RATIO_FREE_BYTES = 1 << 20  # ...once past this size (a small body may inflate as far as it likes)
# Inflating runs on the event loop only when both the body and what it may inflate to are this small
# (tens of microseconds); otherwise on a thread (zlib releases the GIL).
INFLATE_INLINE_BYTES = 4096
INFLATE_INLINE_LIMIT = CONTROL_BODY_BYTES
MIN_BODY_RATE = 64 * 1024  # bytes/s a body must keep up, on average, past its first --body-timeout
MAPPED_BODY_BYTES = 1 << 20  # declared bodies from this size are read into a mapping of their length


class UnsupportedEncoding(InvalidInput):
    http_status = 415


class BodyTimeout(DeadlineExceeded):
    """The client stopped sending its request body (408; the connection is dropped)."""

    http_status = 408


class BodyReservation:
    """The bytes one request's body holds, reserved against the server's budget before they are read
    and released when the request ends (:func:`_endpoint`)."""

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.bytes = 0

    def grow_to(self, nbytes: int, what: str) -> None:
        if nbytes > self.bytes:
            self.bytes += self.budget.reserve(nbytes - self.bytes, what)

    def shrink_by(self, nbytes: int) -> None:
        nbytes = min(nbytes, self.bytes)
        self.budget.release(nbytes)
        self.bytes -= nbytes

    def release(self) -> None:
        self.budget.release(self.bytes)
        self.bytes = 0


def error_response(
    code: int, message: str, close: bool = False, headers: dict[str, str] | None = None
) -> Response:
    headers = dict(headers or {})
    if close:
        headers["connection"] = "close"
    return Response(codec.dumps({"error": message}), code, headers or None, media_type=codec.JSON_TYPE)


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    """Starlette's own refusals (no such route: 404, wrong method: 405), in the API's error form."""
    response = error_response(exc.status_code, exc.detail)
    response.headers.update(exc.headers or {})
    return response


def _endpoint(group: str | None) -> Callable:
    """Check the restriction of ``group`` (None: never restricted), then answer; any error becomes the
    API's error response."""

    def decorate(method: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        @functools.wraps(method)
        async def endpoint(self: HttpFrontEnd, request: Request) -> Response:
            try:
                restriction = self.restrictions.get(group) if group else None
                if restriction is not None:
                    restriction.check(request.headers)  # case-insensitive, as Restriction expects
                return await method(self, request)
            except Exception as e:
                return self.error(e)
            finally:
                reservation = request.scope.get(RESERVATION)
                if reservation is not None:
                    reservation.release()

        return endpoint

    return decorate


def _digits(value: str | None) -> str | None:
    """A header's value when it is a decimal count."""
    return value if value is not None and value.isascii() and value.isdigit() else None


def _model(request: Request) -> tuple[str, str]:
    params = request.path_params
    return params["model"], params.get("version", "")


class HttpFrontEnd:
    """The routes over one data plane; with ``registry``, /metrics too (the metrics port is this one)."""

    def __init__(
        self,
        plane: DataPlane,
        health: HealthState,
        *,
        max_body_bytes: int,
        max_json_bytes: int,
        body_timeout: float,
        restrictions: dict[str, Restriction] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.plane = plane
        self.health = health
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = max_json_bytes
        self.body_timeout = body_timeout
        self.budget = plane.budget
        self.restrictions = restrictions or {}
        self.registry = registry

    def app(self) -> Starlette:
        routes = []
        for model in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes.append(Route(f"{model}/infer", self.infer, methods=["POST"]))  # first: the busy one
        routes += [
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/models/stats", self.statistics, methods=["GET"]),  # before {model}, as Triton
        ]
        for model in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [
                Route(model, self.model_metadata, methods=["GET"]),
                Route(f"{model}/ready", self.model_ready, methods=["GET"]),
                Route(f"{model}/config", self.model_config, methods=["GET"]),
                Route(f"{model}/stats", self.statistics, methods=["GET"]),
            ]
        routes += [
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/v2/repository/models/{model}/load", self.load, methods=["POST"]),
            Route("/v2/repository/models/{model}/unload", self.unload, methods=["POST"]),
        ]
        if self.registry is not None:
            routes.append(Route("/metrics", self.metrics, methods=["GET"]))
        return Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})

    def error(self, exc: BaseException) -> Response:
        status, message = self.plane.public_status(exc)
        code = exc.http_status if isinstance(exc, ServeError) else HTTP_STATUS[status]
        retry_after = getattr(exc, "retry_after", None)
        headers = {"retry-after": str(retry_after)} if retry_after is not None else None
        # Refused unread (too large, no room, stalled), or draining: the client should go elsewhere, or
        # come back, on a new connection.
        unread = isinstance(exc, PayloadTooLarge | BudgetFull | BodyTimeout)
        return error_response(code, message, close=unread or code == 503, headers=headers)

    async def body(
        self, request: Request, limit: int | None = None, limit_name: str = MESSAGE_LIMIT
    ) -> bytes:
        """The request body, refused (413) past ``limit`` (default: --max-message-bytes) before it is all
        read: by its Content-Length when it has one, else as the chunks arrive; decompressed (gzip,
        deflate) within the same limit (:func:`inflate`)."""
        limit = self.max_body_bytes if limit is None else limit
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity" and encoding not in ENCODINGS:  # refused before the body is read
            raise UnsupportedEncoding(
                f"header Content-Encoding {clip(encoding)} is not supported; send gzip, deflate or identity"
            )
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
            size = declared if len(declared) <= 18 else f"a {len(declared)}-digit number of"
            raise PayloadTooLarge(
                f"request body of {size} bytes exceeds the server's limit of {limit} bytes ({limit_name})"
            )
        reservation = request.scope[RESERVATION] = BodyReservation(self.budget)
        length = int(declared) if declared.isascii() and declared.isdigit() else None
        if length is not None:
            reservation.grow_to(length, "the request body's")  # before a byte is read
        # A large declared body is read into one anonymous mapping of its length: the pages it holds are
        # the bytes that arrived (the kernel zeroes a page when it is first written, not the loop), and
        # never more than was reserved; chunks held in a list cost the allocator up to a quarter more,
        # and joining them doubled a finished body for a moment. Small and chunked bodies are joined.
        buffer = mmap.mmap(-1, length) if length and length >= MAPPED_BODY_BYTES else None
        chunks, size = [], 0
        stream = request.stream()
        started = time.monotonic()
        try:
            while True:
                # Each chunk within --body-timeout, and the body as a whole at MIN_BODY_RATE once past its
                # first --body-timeout: a byte every few seconds would otherwise hold an admission slot
                # and a reservation forever (Apache's mod_reqtimeout does the same).
                left = started + self.body_timeout + size / MIN_BODY_RATE - time.monotonic()
                try:
                    async with asyncio.timeout(max(0.0, min(self.body_timeout, left))):
                        chunk = await anext(stream)
                except StopAsyncIteration:
                    break
                if chunk:
                    end = size + len(chunk)
                    if end > limit:
                        raise PayloadTooLarge(
                            f"request body exceeds the server's limit of {limit} bytes ({limit_name})"
                        )
                    if buffer is not None:
                        if end > length:  # (httptools stops at Content-Length: a safeguard)
                            raise InvalidInput(f"request body is longer than its Content-Length {length}")
                        buffer[size:end] = chunk
                    else:
                        reservation.grow_to(end, "the request body's")  # chunked: as the chunks arrive
                        chunks.append(chunk)
                    size = end
        except ClientDisconnect:
            await _unmap(buffer)
            raise Cancelled("the client went away before it sent the whole request body") from None
        except TimeoutError:
            await _unmap(buffer)
            raise BodyTimeout(
                f"the request body stalled or crawled: {size} bytes in {time.monotonic() - started:.0f} s "
                f"(each chunk within {self.body_timeout:g} s, {BODY_TIMEOUT}, and {MIN_BODY_RATE} bytes/s "
                "after that)"
            ) from None
        except BaseException:
            await _unmap(buffer)
            raise
        if buffer is not None:
            body = buffer if size == length else buffer[:size]
        else:
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if encoding == "identity":
            return body
        if len(body) <= INFLATE_INLINE_BYTES and limit <= INFLATE_INLINE_LIMIT:
            plain = inflate(body, encoding, limit, limit_name)
        else:
            plain = await asyncio.to_thread(inflate, body, encoding, limit, limit_name)
        reservation.grow_to(len(body) + len(plain), "the request body's compressed and inflated")
        return plain

    # ------------------------------------------------------------------------------ inference

    def check_json_size(self, size: int | str) -> None:
        """Refuse (413) a JSON part of ``size`` bytes (a count, or its digits as a header gives them) past
        --max-json-bytes: parsing it would hold the event loop, and the GIL, longer than a request may."""
        if isinstance(size, str):
            size = f"a {len(size)}-digit number of" if len(size) > 18 else int(size)
        if isinstance(size, str) or size > self.max_json_bytes:
            raise PayloadTooLarge(
                f"the request's JSON is {size} bytes, more than the server's limit of {self.max_json_bytes} "
                f"bytes for JSON ({JSON_LIMIT}); send tensors as binary data (Triton's binary tensor data "
                "extension: header Inference-Header-Content-Length) or over gRPC"
            )

    def check_declared_json_size(self, request: Request) -> None:
        """--max-json-bytes checked before the body is read, from what the headers say: the JSON header's
        length where the binary extension gives it, else an uncompressed body's Content-Length."""
        headers = request.headers
        length = None
        if headers.get("content-encoding", "identity").strip().lower() == "identity":
            length = _digits(headers.get("content-length"))
            if length is not None and (len(length) > 18 or int(length) > self.max_body_bytes):
                return  # past --max-message-bytes: refused as such by body()
        declared = headers.get(codec.HEADER_LENGTH)
        if declared is not None:
            if length is not None and len(length) <= 18:
                codec.header_length(declared, int(length))  # a malformed header: 400, unread
            length = _digits(declared)
        if length is not None:
            self.check_json_size(length)

    @_endpoint("inference")
    async def infer(self, request: Request) -> Response:
        model, version = _model(request)
        self.check_declared_json_size(request)
        body = await self.body(request)
        length = codec.header_length(request.headers.get(codec.HEADER_LENGTH), len(body))
        self.check_json_size(length or len(body))
        if (length or len(body)) > JSON_INLINE_BYTES:
            loop = asyncio.get_running_loop()
            plain, choice = await loop.run_in_executor(
                None, codec.infer_request, model, version, body, length
            )
        else:
            plain, choice = codec.infer_request(model, version, body, length)
        # Binary numeric tensors are views of the body, which the data plane counts again as the request's
        # tensors: the body's reservation gives those bytes back rather than count them twice. (Encoded
        # images are copied out of the body, so their bytes stay counted in both.)
        shared = sum(len(t.raw) for t in plain.inputs if t.raw is not None and t.datatype != BYTES)
        request.scope[RESERVATION].shrink_by(shared)
        REQUEST_PROTOCOL.set(HTTP)  # this task's requests count as HTTP in the metrics
        content, header = codec.infer_response(await self._infer_while_connected(request, plain), choice)
        if header is None:
            return Response(content, media_type=codec.JSON_TYPE)
        return Response(content, media_type=codec.BINARY_TYPE, headers={codec.HEADER_LENGTH: str(header)})

    async def _infer_while_connected(self, request: Request, plain: InferRequest) -> InferResponse:
        """The data plane's answer; a client that disconnects first cancels its request, as a cancelled
        RPC does on gRPC (it leaves the batcher queue and counts as ``cancelled``).

        The watcher starts only once the request has had to wait: most small requests are answered without
        suspending, and for them a task of its own would cost more than the rest of the request."""
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        gone = False
        watcher: asyncio.Task | None = None

        async def watch() -> None:
            nonlocal gone
            # the body is read: the next message is the disconnect (or the end of this response)
            if (await request.receive())["type"] == "http.disconnect":
                gone = True
                task.cancel()

        def start_watching() -> None:
            nonlocal watcher
            watcher = loop.create_task(watch())

        starting = loop.call_soon(start_watching)  # runs only if the data plane suspends
        try:
            return await self.plane.infer(plain)
        except asyncio.CancelledError:
            if not gone:
                raise  # shutdown past the grace period, not the client
            if hasattr(task, "uncancel"):  # Python 3.11+: this task goes on, answering the cancellation
                task.uncancel()
            raise Cancelled("the client disconnected before its answer was ready") from None
        finally:
            starting.cancel()
            if watcher is not None:
                watcher.cancel()

    # -------------------------------------------------------------- health, from HealthState only

    @_endpoint("health")
    async def live(self, request: Request) -> Response:
        return Response(status_code=200 if self.health.live else 400)

    @_endpoint("health")
    async def ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.health.ready else 400)

    @_endpoint("health")
    async def model_ready(self, request: Request) -> Response:
        model, version = _model(request)
        if self.health.model_ready(model, version):
            return Response(status_code=200)
        check_model_name(model)
        numeric = version.isascii() and version.isdigit() and len(version) <= 20
        shown = clip(model) + (f" version {version if numeric else clip(version)}" if version else "")
        return error_response(400, f"model {shown} is not ready")

    # ----------------------------------------------------------------------------- the rest

    @_endpoint("metadata")
    async def server_metadata(self, request: Request) -> Response:
        return _json(codec.server_metadata(self.plane.server_metadata()))

    @_endpoint("metadata")
    async def model_metadata(self, request: Request) -> Response:
        return _json(codec.model_metadata(self.plane.model_metadata(*_model(request))))

    @_endpoint("model-config")
    async def model_config(self, request: Request) -> Response:
        return _json(codec.model_config(self.plane.model_config(*_model(request))))

    @_endpoint("statistics")
    async def statistics(self, request: Request) -> Response:
        params = request.path_params
        stats = self.plane.model_statistics(params.get("model", ""), params.get("version", ""))
        return _json(codec.model_statistics(stats))

    async def control_body(self, request: Request, what: str) -> dict:
        return codec.json_object(await self.body(request, CONTROL_BODY_BYTES, CONTROL_LIMIT), what)

    @_endpoint("model-repository")
    async def repository_index(self, request: Request) -> Response:
        document = await self.control_body(request, "repository index request")
        return _json(codec.repository_index(self.plane.repository_index(codec.index_ready(document))))

    @_endpoint("model-repository")
    async def load(self, request: Request) -> Response:
        return await self._model_control(request, "load", self.plane.load_model)

    @_endpoint("model-repository")
    async def unload(self, request: Request) -> Response:
        return await self._model_control(request, "unload", self.plane.unload_model)

    async def _model_control(self, request: Request, action: str, apply: Callable) -> Response:
        name = request.path_params["model"]
        self.plane.check_model_control(action, name)  # before the body is read
        document = await self.control_body(request, f"model {action} request")
        await apply(name, codec.control_parameters(document, action))
        return Response(status_code=200)

    @_endpoint(None)
    async def metrics(self, request: Request) -> Response:
        text = await asyncio.get_running_loop().run_in_executor(None, generate_latest, self.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)


async def _unmap(buffer: mmap.mmap | None) -> None:
    """Give a body's mapping back on a thread: unmapping 64 MiB of written pages takes 15-20 ms, which
    four bodies dropped at once (a --body-timeout) spent on the event loop."""
    if buffer is not None:
        await asyncio.to_thread(buffer.close)


def inflate(body: bytes, encoding: str, limit: int, limit_name: str = MESSAGE_LIMIT) -> bytes:
    """``body`` decompressed (``encoding``: gzip or deflate), refused (413) once it would pass ``limit``
    bytes, or inflate more than :data:`MAX_INFLATE_RATIO` times past :data:`RATIO_FREE_BYTES`: the work a
    compressed body may cause is bounded by its size. zlib stops at the bound (``max_length``), so a bomb
    costs no more than the bound."""
    allowed = min(limit, max(RATIO_FREE_BYTES, MAX_INFLATE_RATIO * len(body)))
    inflater = zlib.decompressobj(ENCODINGS[encoding])
    try:
        plain = inflater.decompress(body, allowed + 1)
    except zlib.error as e:
        raise InvalidInput(f"request body is not valid {encoding} data (Content-Encoding): {e}") from None
    if len(plain) > allowed:
        if allowed == limit:
            raise PayloadTooLarge(
                f"request body decompresses to more than the server's limit of {limit} bytes ({limit_name})"
            )
        raise PayloadTooLarge(
            f"request body decompresses to more than {MAX_INFLATE_RATIO} times its {len(body)} bytes "
            f"(the server's limit past {RATIO_FREE_BYTES} bytes); send it less compressed or uncompressed"
        )
    if not inflater.eof:
        raise InvalidInput(f"request body is truncated {encoding} data (Content-Encoding)")
    return plain


def _json(document) -> Response:
    return Response(codec.dumps(document), media_type=codec.JSON_TYPE)


# ------------------------------------------------------------------------------------ the server


class EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our event loop, beside grpc.aio: the process's signal handlers stay ours."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()  # set once started: connections accepted elsewhere may be handed in

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.up.set()

    def protocol(self) -> asyncio.Protocol:
        """A connection's protocol, as uvicorn's own listener makes it (for a socket accepted elsewhere)."""
        config = self.config
        return config.http_protocol_class(
            config=config, server_state=self.server_state, app_state=self.lifespan.state
        )


def uvicorn_config(
    app,
    *,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_client_ca: Path | None = None,
) -> uvicorn.Config:
    """uvicorn for an embedded API server: no logging setup of its own, no access log, no lifespan, no
    proxy headers, no websockets; TLS (mutual with ``tls_client_ca``). Unreadable TLS files fail here."""
    config = uvicorn.Config(
        app,
        http=BoundedHttpToolsProtocol,  # header count and size limited (service.protocol.http_headers)
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        proxy_headers=False,
        server_header=False,
        ws="none",
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        ssl_ca_certs=tls_client_ca,
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls_client_ca else ssl.CERT_NONE,
    )
    config.load()
    return config


class HttpServer:
    """An app served by uvicorn on ``host:port`` in the running event loop; bound at construction. With
    ``health`` (and without TLS) connections are accepted on a thread of its own that answers health
    probes itself (:mod:`service.protocol.http_accept`) and hands every other connection to uvicorn."""

    def __init__(self, app, host: str, port: int, health: HealthState | None = None, **tls) -> None:
        quiet_client_noise()
        self.server = EmbeddedUvicorn(uvicorn_config(app, **tls))
        try:
            self.socket = listening_socket(host, port)
        except OSError as e:
            raise OSError(f"cannot bind HTTP to {host}:{port} (port in use?): {e}") from None
        self.port = self.socket.getsockname()[1]
        self._task: asyncio.Task | None = None
        plain = tls.get("tls_cert") is None
        self.acceptor = ProbeFirstAcceptor(self.socket, health, self._hand_over) if health and plain else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._adopting: set[asyncio.Task] = set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.acceptor is None:
            self._task = self._loop.create_task(self.server.serve([self.socket]), name="http")
            return
        self._task = self._loop.create_task(self.server.serve([]), name="http")  # no listener of its own
        self.acceptor.start()

    def _hand_over(self, sock: socket.socket) -> None:
        """On the acceptor's thread: give ``sock`` to uvicorn on the serving loop."""
        self._loop.call_soon_threadsafe(self._adopt, sock)

    def _adopt(self, sock: socket.socket) -> None:
        task = self._loop.create_task(self._connect(sock))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def _connect(self, sock: socket.socket) -> None:
        try:
            if not self.server.up.is_set():  # uvicorn still starting (or failed to: then nothing serves)
                up = asyncio.ensure_future(self.server.up.wait())
                await asyncio.wait({up, self._task}, return_when=asyncio.FIRST_COMPLETED)
                up.cancel()
            if not self.server.up.is_set() or self.server.should_exit:
                sock.close()
                return
            await self._loop.connect_accepted_socket(self.server.protocol, sock)
        except BaseException as e:  # the client went away meanwhile, or the server is stopping
            log.debug("HTTP connection not adopted: %s", e)
            sock.close()
            if isinstance(e, asyncio.CancelledError):
                raise

    async def stop(self, grace: float) -> None:
        """Stop listening, close idle connections, let requests in progress finish for up to ``grace``
        seconds (then cancel them)."""
        if self.acceptor is not None:
            await asyncio.to_thread(self.acceptor.stop)
            for task in list(self._adopting):  # handed over, not yet adopted: closed
                task.cancel()
        if self._task is None:
            self.socket.close()
            return
        self.server.config.timeout_graceful_shutdown = max(grace, 0.1)
        self.server.should_exit = True
        try:
            await self._task
        except (Exception, SystemExit):  # uvicorn exits its startup with SystemExit
            log.exception("the HTTP server failed")
