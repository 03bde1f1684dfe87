"""The HTTP port's repository control endpoints and request bodies: mode, restriction and name checked
before a body is read, small bodies only, compressed bodies inflated within bounds, and malformed
requests logged at most once a while. In-process, except the last (uvicorn's own parser, on a loopback
port in the test's loop)."""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import zlib

import pytest

from service.errors import InvalidInput, PayloadTooLarge
from service.protocol.client_noise import UVICORN_LOGGER, ClientNoiseFilter
from service.protocol.http_server import (
    CONTROL_BODY_BYTES,
    MAX_INFLATE_RATIO,
    RATIO_FREE_BYTES,
    HttpServer,
    inflate,
)
from tests.service.inprocess import linear_model, run, serving

GARBAGE = os.urandom(1 << 20)  # a megabyte that is neither gzip nor JSON


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    linear_model(repo)
    return repo


def test_load_and_unload_check_the_mode_and_the_name_before_the_body(repo):
    gzip_garbage = {"Content-Encoding": "gzip"}

    async def main():
        answers = {}
        async with serving(repo) as s:  # --model-control-mode none
            for action in ("load", "unload"):
                answer = await s.http.post(
                    f"/v2/repository/models/lenet5/{action}", content=GARBAGE, headers=gzip_garbage
                )
                answers[action] = answer.status_code, answer.json()["error"]
        async with serving(repo, "--model-control-mode", "explicit") as s:
            answer = await s.http.post(
                "/v2/repository/models/%2E%2E/load", content=GARBAGE, headers=gzip_garbage
            )
            answers["name"] = answer.status_code, answer.json()["error"]
        async with serving(
            repo, "--model-control-mode", "explicit", "--restricted-protocol", "model-repository:admin-key=k"
        ) as s:
            answer = await s.http.post(
                "/v2/repository/models/lenet5/load", content=GARBAGE, headers=gzip_garbage
            )
            answers["restricted"] = answer.status_code, answer.json()["error"]
        return answers

    answers = run(main())
    for action in ("load", "unload"):
        status, message = answers[action]
        assert (
            status == 400 and f"cannot {action} models" in message and "--model-control-mode none" in message
        )
    assert answers["name"][0] == 400 and "model name '..'" in answers["name"][1]
    assert answers["restricted"][0] == 401


def test_control_endpoints_take_small_bodies_only(repo):
    big = b'{"parameters": {"x": "' + b"y" * CONTROL_BODY_BYTES + b'"}}'
    inflating = gzip.compress(b" " * (CONTROL_BODY_BYTES + 1) + b"{}")
    limit = (
        f"exceeds the server's limit of {CONTROL_BODY_BYTES} bytes (the limit of repository control requests)"
    )

    async def main():
        answers = {}
        async with serving(repo, "--model-control-mode", "explicit") as s:
            for path in (
                "/v2/repository/index",
                "/v2/repository/models/lenet5/load",
                "/v2/repository/models/lenet5/unload",
            ):
                answer = await s.http.post(path, content=big)
                answers[path] = answer.status_code, answer.json()["error"]
            answer = await s.http.post(
                "/v2/repository/index", content=inflating, headers={"Content-Encoding": "gzip"}
            )
            answers["inflating"] = answer.status_code, answer.json()["error"]
            small = await s.http.post(
                "/v2/repository/index",
                content=gzip.compress(b'{"ready": true}'),
                headers={"Content-Encoding": "gzip"},
            )
            answers["small"] = small.status_code, small.json()
        return answers

    answers = run(main())
    assert answers.pop("small") == (200, [])
    status, message = answers.pop("inflating")
    assert (
        status == 413
        and f"decompresses to more than the server's limit of {CONTROL_BODY_BYTES} bytes" in message
    )
    for path, (status, message) in answers.items():
        assert status == 413 and message == f"request body of {len(big)} bytes {limit}", path


def test_inflate_bounds_the_size_and_the_ratio():
    assert inflate(gzip.compress(b"{}"), "gzip", 1024) == b"{}"
    assert inflate(zlib.compress(b"x" * 5000), "deflate", 5000) == b"x" * 5000
    with pytest.raises(PayloadTooLarge, match="more than the server's limit of 4999 bytes"):
        inflate(zlib.compress(b"x" * 5000), "deflate", 4999)
    bomb = gzip.compress(bytes(64 << 20))  # 64 MiB of zeros in about 64 KB: 1000 times
    with pytest.raises(PayloadTooLarge, match=f"more than {MAX_INFLATE_RATIO} times its {len(bomb)} bytes"):
        inflate(bomb, "gzip", 1 << 30)
    assert len(inflate(gzip.compress(bytes(RATIO_FREE_BYTES)), "gzip", 1 << 30)) == RATIO_FREE_BYTES
    with pytest.raises(InvalidInput, match="truncated gzip"):
        inflate(gzip.compress(b"{}" * 100)[:-12], "gzip", 1024)
    with pytest.raises(InvalidInput, match="not valid deflate data"):
        inflate(b"not deflate", "deflate", 1024)


def test_client_noise_filter_lets_one_line_through_per_interval():
    now = [0.0]
    noise = ClientNoiseFilter(interval=60, clock=lambda: now[0])

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, message, None, None)

    assert noise.filter(record("Invalid HTTP request received."))
    assert not any(noise.filter(record("Invalid HTTP request received.")) for _ in range(5))
    assert noise.filter(record("Started server process"))  # not a client's doing: always through
    now[0] = 61.0
    passed = record("Unsupported upgrade request.")
    assert noise.filter(passed)
    assert passed.getMessage() == "Unsupported upgrade request. (5 more client errors left out of the log)"


def test_malformed_requests_on_the_http_port_log_one_line(repo, caplog):
    async def garbage_request(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        answer = await reader.read()  # uvicorn answers 400 and closes
        writer.close()
        await writer.wait_closed()
        return answer

    async def main():
        async with serving(repo) as s:
            http = HttpServer(s.server.http_app(), "127.0.0.1", 0)
            http.start()
            try:
                return [await garbage_request(http.port) for _ in range(20)]
            finally:
                await http.stop(1.0)

    uvicorn_log = logging.getLogger(UVICORN_LOGGER)
    for earlier in [f for f in uvicorn_log.filters if isinstance(f, ClientNoiseFilter)]:
        uvicorn_log.removeFilter(earlier)  # the server installs a fresh one, with no line let through yet
    with caplog.at_level(logging.WARNING, logger=UVICORN_LOGGER):
        answers = run(main())
    assert all(a.startswith(b"HTTP/1.1 400") for a in answers)
    lines = [
        r for r in caplog.records if r.name == UVICORN_LOGGER and "Invalid HTTP request" in r.getMessage()
    ]
    assert len(lines) == 1
