"""The target, whatever its protocol: describe its model, encode requests for it, open a sender to it.

The gRPC names that callers of this module used before HTTP existed (``connect``, ``describe_model``,
``CHANNEL_OPTIONS``, ``INFER_METHOD``) stay importable from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from loadtest import grpc_target, http_target
from loadtest.grpc_target import CHANNEL_OPTIONS, INFER_METHOD, connect, describe_model
from loadtest.model_spec import InputTensor, ModelSpec, TensorSpec
from loadtest.options import GRPC, HTTP, LoadTestOptions
from loadtest.security import TlsSettings

__all__ = [
    "CHANNEL_OPTIONS",
    "INFER_METHOD",
    "Connection",
    "ModelSpec",
    "Sender",
    "TensorSpec",
    "connect",
    "connection_for",
    "describe_model",
    "describe_target",
    "encoder_for",
    "open_sender",
]

Encoder = Callable[[ModelSpec, InputTensor], object]


class Sender(Protocol):
    async def send(self, payload, timeout_s: float) -> tuple[str, str]:
        """Send one prepared request; (status name, server message), status ``OK`` on success."""


@dataclass(frozen=True)
class Connection:
    """Everything a worker needs to reach the target (plain data: it crosses into worker processes)."""

    protocol: str
    address: str  # gRPC HOST:PORT, or the HTTP base URL
    tls: TlsSettings | None
    headers: tuple[tuple[str, str], ...]
    connect_timeout_s: float
    pool_size: int = 1  # HTTP connections per worker: the most requests it keeps in flight
    infer_path: str = ""  # HTTP: /v2/models/{model}[/versions/{version}]/infer


def describe_target(options: LoadTestOptions) -> ModelSpec:
    describe = http_target.describe if options.protocol == HTTP else grpc_target.describe
    return describe(
        options.address,
        options.model,
        options.model_version,
        options.timeout_s,
        options.connect_timeout_s,
        options.tls_settings(),
        options.headers,
    )


def encoder_for(options: LoadTestOptions) -> Encoder:
    if options.protocol == GRPC:
        return grpc_target.encode_request
    binary = not options.http_json
    return lambda spec, tensor: http_target.encode_request(tensor, binary)


def connection_for(options: LoadTestOptions, spec: ModelSpec, pool_size: int) -> Connection:
    return Connection(
        protocol=options.protocol,
        address=options.address,
        tls=options.tls_settings(),
        headers=options.headers,
        connect_timeout_s=options.connect_timeout_s,
        pool_size=pool_size,
        infer_path=http_target.model_path(spec.name, spec.version) + "/infer",
    )


@contextlib.asynccontextmanager
async def open_sender(connection: Connection) -> AsyncIterator[Sender]:
    """A connected sender (TargetError when the target cannot be reached in time)."""
    c = connection
    if c.protocol == HTTP:
        opened = http_target.open_sender(
            c.address, c.infer_path, c.tls, c.headers, c.connect_timeout_s, c.pool_size
        )
    else:
        opened = grpc_target.open_sender(c.address, c.tls, c.headers, c.connect_timeout_s)
    async with opened as sender:
        yield sender
