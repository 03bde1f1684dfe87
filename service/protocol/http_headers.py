"""Header limits on the HTTP port: at most :data:`MAX_HEADER_COUNT` header fields and
:data:`MAX_HEADER_BYTES` bytes of request head (request line and headers), else 431 and the connection
is closed.

uvicorn offers a head limit for h11 only (``h11_max_incomplete_event_size``); with httptools (its
default where installed, and ours) it accepts any number of headers of any size: a million headers
(12 MiB) held the event loop for 350 ms. No hook runs before httptools parses a chunk the socket gave,
so the limits act where they can: the bytes of an unfinished head are counted as they arrive (up to its
blank line: a chunk may carry the body's start too), before they are fed to the parser (httptools would
otherwise gather a huge header value by repeated concatenation), and the header count as the parser
reports each header. What one refused request can still cost is one read of the socket (asyncio reads
at most 256 KiB at a time) parsed into at most :data:`MAX_HEADER_COUNT` + 1 headers."""

from __future__ import annotations

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_COUNT = 100  # as Node.js and Apache's LimitRequestFields
MAX_HEADER_BYTES = 64 * 1024  # request line and headers; nginx's default buffers allow 32 KiB
STATUS_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\n"


class HeaderLimitExceeded(Exception):
    """Raised from a parser callback: httptools stops parsing and reports a callback error."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header limits of this module."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_head = True  # the bytes that arrive belong to a request head not yet complete
        self._tail = b""  # the last bytes of the head seen so far (its end may span two chunks)
        self._header_count = 0
        self._refusal: str | None = None

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the head's bytes counted before they are parsed and our limit answered 431."""
        if self._in_head:
            # the head's part of the chunk: a chunk may hold its end and the body's start
            seen = self._tail + data
            end = seen.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else max(0, end - len(self._tail))
            self._tail = seen[-3:]
            if self._head_bytes > MAX_HEADER_BYTES:
                self.refuse(f"request head past {MAX_HEADER_BYTES} bytes")
                return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal is not None:
                self.refuse(self._refusal)
                return
            message = "Invalid HTTP request received."
            self.logger.warning(message)
            self.send_400_response(message)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > MAX_HEADER_COUNT:
            self._refusal = f"more than {MAX_HEADER_COUNT} header fields"
            raise HeaderLimitExceeded(self._refusal)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._tail = True, 0, b""

    def refuse(self, why: str) -> None:
        message = f"request header fields too large: {why}".encode("ascii")
        self.transport.write(
            b"".join(
                (
                    STATUS_431,
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\n" % len(message),
                    b"connection: close\r\n\r\n",
                    message,
                )
            )
        )
        self.transport.close()
