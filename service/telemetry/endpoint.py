"""The metrics port, on a thread and event loop of its own: Prometheus ``/metrics``, and for HTTP probes
``/v2/health/live``, ``/v2/health/ready`` and ``/v2/models/{name}/ready`` (200 true, 400 false, as
Triton's HTTP front end answers), read from the health state without touching the serving loop.

An idle connection costs a few kilobytes here, not a thread, and each request must arrive whole within
:data:`REQUEST_DEADLINE_S` of its first byte being awaited (not per read: a client trickling a byte at a
time is cut off at the deadline all the same), so slow clients cannot hold the port: at most
:data:`MAX_CONNECTIONS` at once, each for at most the deadline. HTTP/1.1 is parsed by h11 (the parser
uvicorn's pure-Python protocol uses); scrapes are built on a small thread pool, so a probe never waits
behind one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import threading
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import h11
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from service.sockets import listening_socket

HealthProbe = Callable[[str], bool | None]  # path -> answer (None: not a health path)

MAX_CONNECTIONS = 1024  # past this many open connections, a new one is closed at once
REQUEST_DEADLINE_S = 10.0  # to receive a whole request (from awaiting it), and to send an answer
MAX_HEAD_BYTES = 16 * 1024  # request line and headers; these endpoints take no body
SCRAPE_THREADS = 2


class MetricsEndpoint:
    """The port's server: bound at construction (so a busy port fails in the caller), served on a
    daemon thread until :meth:`shutdown`."""

    def __init__(self, registry: CollectorRegistry, probe: HealthProbe, host: str, port: int) -> None:
        self.registry = registry
        self.probe = probe
        self._socket = listening_socket(host, port)
        self.server_port = self._socket.getsockname()[1]
        self._open = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, name="metrics-endpoint", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise OSError(f"the metrics port could not start: {self._failure}") from self._failure

    # ---------------------------------------------------------------- lifecycle

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        pool = ThreadPoolExecutor(SCRAPE_THREADS, thread_name_prefix="metrics-scrape")
        self._loop.set_default_executor(pool)
        with contextlib.suppress(Exception):  # a failure to start is reported by the constructor
            self._loop.run_until_complete(self._serve())
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            server = await asyncio.start_server(self._connection, sock=self._socket, limit=MAX_HEAD_BYTES)
        except BaseException as e:
            self._failure = e
            raise
        finally:
            self._started.set()
        async with server:
            await self._stop.wait()
            server.close()
            for writer in list(self._writers):  # the open connections go too (wait_closed does not wait)
                writer.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    def shutdown(self) -> None:
        """Stop listening, drop open connections and end the thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    @property
    def open_connections(self) -> int:
        return self._open

    def server_close(self) -> None:
        self._socket.close()

    # ---------------------------------------------------------------- requests

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._open += 1
        self._writers.add(writer)
        try:
            await self._serve_connection(reader, writer)
            writer.close()
        except (ConnectionError, asyncio.TimeoutError, h11.ProtocolError, asyncio.CancelledError):
            # a client that went away, sent or read too slowly, or sent something else than HTTP: dropped
            # at once, unsent bytes and all (close() would wait for a client that does not read)
            writer.transport.abort()
        finally:
            self._open -= 1
            self._writers.discard(writer)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        while True:
            try:
                request = await asyncio.wait_for(_next_request(conn, reader), REQUEST_DEADLINE_S)
            except h11.RemoteProtocolError as e:  # not HTTP, or too large: say so (400, 431), then close
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    refusal = h11.Response(
                        status_code=e.error_status_hint,
                        headers=[("content-length", "0"), ("connection", "close")],
                    )
                    writer.write(conn.send(refusal) + conn.send(h11.EndOfMessage()))
                    await asyncio.wait_for(writer.drain(), REQUEST_DEADLINE_S)
                return
            if request is None:
                return
            status, headers, body = await self._answer(request)
            if request.method == b"HEAD":
                body = b""
            headers = [*headers, ("content-length", str(len(body) if request.method != b"HEAD" else 0))]
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
            if body:
                writer.write(conn.send(h11.Data(data=body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await asyncio.wait_for(writer.drain(), REQUEST_DEADLINE_S)  # a client that does not read
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _answer(self, request: h11.Request) -> tuple[int, list[tuple[str, str]], bytes]:
        if request.method not in (b"GET", b"HEAD"):
            return 405, [("allow", "GET, HEAD")], b""
        target = request.target.decode("latin-1")
        path = urllib.parse.unquote(urllib.parse.urlsplit(target).path)
        answer = self.probe(path)
        if answer is not None:
            return (200 if answer else 400), [], b""
        if path != "/metrics":
            return 404, [("content-type", "text/plain")], b"not found: the metrics port serves /metrics\n"
        accept = _header(request, b"accept")
        encoding = _header(request, b"accept-encoding")
        body, content_type = await asyncio.get_running_loop().run_in_executor(None, self._scrape, accept)
        headers = [("content-type", content_type)]
        if gzip_accepted(encoding):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("content-encoding", "gzip"))
        return 200, headers, body

    def _scrape(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


async def _next_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    """The next whole request on the connection (its body, if any, read and ignored within the head's
    limit); None when the client closed."""
    request = None
    received = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            received += len(data)
            if received > MAX_HEAD_BYTES:
                raise h11.RemoteProtocolError("request too large for the metrics port", 431)
            conn.receive_data(data)  # b"": the client closed (ConnectionClosed next, or an error mid-request)
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None


def _header(request: h11.Request, name: bytes) -> str:
    return ", ".join(v.decode("latin-1") for k, v in request.headers if k == name)


def serve_endpoint(
    registry: CollectorRegistry, probe: HealthProbe, host: str, port: int
) -> tuple[MetricsEndpoint, int]:
    """Serve on a thread of its own; returns the server (``shutdown()`` stops it) and the bound port."""
    endpoint = MetricsEndpoint(registry, probe, host, port)
    return endpoint, endpoint.server_port
