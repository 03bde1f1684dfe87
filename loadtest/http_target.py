"""A KServe v2 target over HTTP/REST: reading what its model expects, and sending it requests.

The client is aiohttp's: the well-kept asyncio HTTP client, with connection pooling and keep-alive, so
one event loop per worker holds any number of requests in flight, as grpc.aio does for gRPC.

Requests use Triton's binary tensor data extension by default: a JSON header whose length travels in
``Inference-Header-Content-Length``, then the raw tensor bytes (``binary_data_size`` per input), with
``binary_data_output`` asking for binary outputs back. ``--http-json`` sends plain JSON tensors instead
(``data``: the values, row-major), for servers without the extension (MLServer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from loadtest.errors import TargetError, UsageError
from loadtest.model_spec import InputTensor, ModelSpec, TensorSpec
from loadtest.recorder import OK, clock
from loadtest.security import TlsSettings

HEADER_LENGTH = "Inference-Header-Content-Length"
# HTTP status -> the gRPC status name the gRPC path reports for the same failure. Triton's HTTP front end
# (http_server.cc, HttpCodeFromError) answers INVALID_ARG, UNKNOWN, ALREADY_EXISTS and CANCELLED with
# 400, NOT_FOUND 404, INTERNAL 500, UNSUPPORTED 501, UNAVAILABLE 503, and a restricted API without its
# header 403; the rest follow the usual HTTP meanings (429: rate limited or queue full).
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
RETRY_FIRST_S = 0.05  # connection attempts while the server is not yet listening: first pause, doubled
RETRY_MAX_S = 0.5

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class HttpPayload:
    body: bytes
    header_length: int | None  # the JSON header's length with the binary extension; None: plain JSON


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, "UNKNOWN")


def error_message(status: int, body: bytes) -> str:
    """The server's own message: KServe v2 errors are ``{"error": "..."}``; anything else as text."""
    text = body.decode("utf-8", "replace").strip()
    with contextlib.suppress(ValueError):
        document = json.loads(text)
        if isinstance(document, dict) and isinstance(document.get("error"), str):
            text = document["error"]
    return f"HTTP {status}: {text[:500]}"


def model_path(model: str, version: str) -> str:
    path = f"/v2/models/{urllib.parse.quote(model, safe='')}"
    return path + (f"/versions/{urllib.parse.quote(version, safe='')}" if version else "")


def encode_request(tensor: InputTensor, binary: bool) -> HttpPayload:
    """The POST body of one infer request carrying `tensor`."""
    entry: dict = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype}
    if binary:
        entry["parameters"] = {"binary_data_size": len(tensor.raw)}
        header = json.dumps({"inputs": [entry], "parameters": {"binary_data_output": True}}).encode()
        return HttpPayload(header + tensor.raw, len(header))
    if tensor.values is None:
        raise UsageError(f"--http-json: input {tensor.name!r} ({tensor.datatype}) has no JSON form")
    entry["data"] = tensor.values.ravel().tolist()
    return HttpPayload(json.dumps({"inputs": [entry]}).encode(), None)


def new_session(tls: TlsSettings | None, headers: Headers, pool_size: int) -> aiohttp.ClientSession:
    context: ssl.SSLContext | bool = tls.ssl_context() if tls is not None else False
    connector = aiohttp.TCPConnector(limit=pool_size, ssl=context)
    return aiohttp.ClientSession(connector=connector, headers=dict(headers), raise_for_status=False)


async def wait_ready(
    session: aiohttp.ClientSession, base: str, tls: TlsSettings | None, connect_timeout_s: float
) -> None:
    """GET /v2/health/ready, retrying while nothing listens yet, for up to `connect_timeout_s`."""
    deadline = clock() + connect_timeout_s
    pause = RETRY_FIRST_S
    while True:
        try:
            status, body = await _fetch(session, f"{base}/v2/health/ready", deadline - clock(), tls)
            break
        except aiohttp.ClientSSLError as error:  # a certificate that will not verify: no use retrying
            raise TargetError(f"TLS with the server at {base} failed: {error}") from None
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as error:
            if clock() + pause >= deadline:
                check = "is it running, is that the HTTP port" + (
                    ", and does it accept our TLS?" if tls else "?"
                )
                raise TargetError(
                    f"cannot reach an HTTP server at {base} within {connect_timeout_s:g} s ({check}): "
                    f"{error or type(error).__name__}"
                ) from None
            await asyncio.sleep(pause)
            pause = min(2 * pause, RETRY_MAX_S)
    if status != 200:
        raise TargetError(f"the server at {base} is not ready ({error_message(status, body)})")


async def _fetch(session, url: str, timeout_s: float, tls: TlsSettings | None) -> tuple[int, bytes]:
    timeout = aiohttp.ClientTimeout(total=max(0.01, timeout_s))
    server_name = tls.server_name if tls else None
    async with session.get(url, timeout=timeout, server_hostname=server_name) as response:
        return response.status, await response.read()


async def _get(session, url: str, timeout_s: float, tls: TlsSettings | None) -> tuple[int, bytes]:
    try:
        return await _fetch(session, url, timeout_s, tls)
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        raise TargetError(f"GET {url} failed: {error or type(error).__name__}") from None


def _json_object(url: str, body: bytes) -> dict:
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise TargetError(f"GET {url} answered 200 with a body that is not a JSON object")
    return document


def _tensor_specs(url: str, document: dict, key: str) -> tuple[TensorSpec, ...]:
    try:
        return tuple(
            TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))
            for t in document.get(key) or ()
        )
    except (KeyError, TypeError, ValueError) as error:
        raise TargetError(f"GET {url}: malformed {key!r} in the model metadata ({error!r})") from None


async def describe_async(
    base: str,
    model: str,
    version: str,
    timeout_s: float,
    connect_timeout_s: float,
    tls: TlsSettings | None,
    headers: Headers,
) -> ModelSpec:
    async with new_session(tls, headers, pool_size=1) as session:
        await wait_ready(session, base, tls, connect_timeout_s)
        url = base + model_path(model, version)
        status, body = await _get(session, url, timeout_s, tls)
        if status == 404:
            raise UsageError(
                f"--model {model!r}: the server at {base} answered: {error_message(status, body)}"
            )
        if status != 200:
            raise TargetError(f"GET {url} failed: {error_message(status, body)}")
        metadata = _json_object(url, body)
        status, body = await _get(session, f"{url}/ready", timeout_s, tls)
        if status != 200:
            raise TargetError(
                f"model {model!r} (version {version or 'latest'}) is not ready on {base}: "
                f"{error_message(status, body)}"
            )
        status, body = await _get(session, f"{url}/config", timeout_s, tls)
    # Triton's model configuration; other servers have none (404) or one without max_batch_size.
    max_batch_size = _json_object(f"{url}/config", body).get("max_batch_size") if status == 200 else None
    return ModelSpec(
        name=str(metadata.get("name") or model),
        version=version,
        platform=str(metadata.get("platform", "")),
        inputs=_tensor_specs(url, metadata, "inputs"),
        outputs=_tensor_specs(url, metadata, "outputs"),
        max_batch_size=int(max_batch_size) if isinstance(max_batch_size, int) else None,
    )


def describe(
    base: str,
    model: str,
    version: str,
    timeout_s: float,
    connect_timeout_s: float,
    tls: TlsSettings | None,
    headers: Headers,
) -> ModelSpec:
    return asyncio.run(describe_async(base, model, version, timeout_s, connect_timeout_s, tls, headers))


class HttpSender:
    """POSTs prepared infer bodies on one aiohttp session; answers (gRPC status name, server message)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, server_name: str | None) -> None:
        self._session = session
        self._url = url
        self._server_name = server_name
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def send(self, payload: HttpPayload, timeout_s: float) -> tuple[str, str]:
        timeout = self._timeouts.get(timeout_s) or self._timeouts.setdefault(
            timeout_s, aiohttp.ClientTimeout(total=timeout_s)
        )
        if payload.header_length is None:
            headers = {"Content-Type": "application/json"}
        else:
            headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(payload.header_length)}
        try:
            async with self._session.post(
                self._url,
                data=payload.body,
                headers=headers,
                timeout=timeout,
                server_hostname=self._server_name,
            ) as response:
                body = await response.read()
        except asyncio.TimeoutError:
            return "DEADLINE_EXCEEDED", f"no answer within {timeout_s:g} s"
        except aiohttp.ClientConnectionError as error:  # refused, reset, TLS failures: as gRPC reports them
            return "UNAVAILABLE", str(error) or type(error).__name__
        except aiohttp.ClientError as error:  # a malformed answer
            return "INTERNAL", str(error) or type(error).__name__
        if response.status == 200:
            return OK, ""
        return status_name(response.status), error_message(response.status, body)


@contextlib.asynccontextmanager
async def open_sender(
    base: str,
    infer_path: str,
    tls: TlsSettings | None,
    headers: Headers,
    connect_timeout_s: float,
    pool_size: int,
) -> AsyncIterator[HttpSender]:
    async with new_session(tls, headers, pool_size) as session:
        await wait_ready(session, base, tls, connect_timeout_s)
        yield HttpSender(session, base + infer_path, tls.server_name if tls else None)
