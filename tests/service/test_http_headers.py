"""Header limits on the HTTP port: too many header fields, or a request head too large, are answered 431
and the connection closed, before the app sees the request; requests within the limits are served, on
one keep-alive connection too. uvicorn on a loopback port in the test's loop (the parser is the point)."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from service.protocol.http_headers import MAX_HEADER_BYTES, MAX_HEADER_COUNT
from service.protocol.http_server import HttpServer
from tests.service.inprocess import run

WAIT_S = 10


async def live(request) -> Response:
    return Response(status_code=200)


def head(headers: int, value: bytes = b"v") -> bytes:
    fields = b"".join(b"x-h%d: %s\r\n" % (i, value) for i in range(headers))
    return b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n" + fields + b"\r\n"


async def exchange(port: int, *requests: bytes) -> list[bytes]:
    """Each request on one connection, in turn; the status line of each answer (b"" once it closes; a
    reset while a refused request is still being sent adds one more)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    statuses = []
    try:
        for request in requests:
            writer.write(request)
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), WAIT_S)
            statuses.append(status.strip())
            while (line := await asyncio.wait_for(reader.readline(), WAIT_S)) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if status:
                await asyncio.wait_for(reader.readexactly(length), WAIT_S)
    except ConnectionError:
        statuses.append(b"")
    finally:
        writer.close()
    return statuses


def test_header_count_and_head_size_are_limited():
    async def main():
        server = HttpServer(Starlette(routes=[Route("/v2/health/live", live)]), "127.0.0.1", 0)
        server.start()
        try:
            port = server.port
            within = await exchange(port, head(MAX_HEADER_COUNT - 1), head(MAX_HEADER_COUNT - 1))
            too_many = await exchange(port, head(MAX_HEADER_COUNT + 1))
            one_large = await exchange(port, head(1, b"a" * (1 << 20)))
            many_large = await exchange(port, head(10_000, b"b" * 100))
            after = await exchange(port, head(0))
        finally:
            await server.stop(1)
        return within, too_many, one_large, many_large, after

    within, too_many, one_large, many_large, after = run(main())
    assert within == [b"HTTP/1.1 200 OK"] * 2  # the count starts again with each request
    for statuses in (too_many, one_large, many_large):
        assert statuses[0] == b"HTTP/1.1 431 Request Header Fields Too Large", statuses
    assert after == [b"HTTP/1.1 200 OK"]
    assert MAX_HEADER_BYTES < (1 << 20)


def test_a_body_in_the_same_read_as_its_head_does_not_count_as_head():
    async def echo_size(request) -> Response:
        return Response(str(len(await request.body())))

    async def main():
        app = Starlette(routes=[Route("/echo", echo_size, methods=["POST"])])
        server = HttpServer(app, "127.0.0.1", 0)
        server.start()
        body = b"x" * (4 * MAX_HEADER_BYTES)
        request = b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        try:
            return await exchange(server.port, request)
        finally:
            await server.stop(1)

    assert run(main()) == [b"HTTP/1.1 200 OK"]
