"""Registering a servicer whose requests may not parse: grpc.aio (and grpc's thread server) answer a
request that fails to parse with UNKNOWN and log an error with its traceback for every one, so any
client could flood the log and a malformed request would look like a server fault. Servicers registered
here get such a request as :class:`Unparseable` and answer INVALID_ARGUMENT."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError


class Unparseable:
    """Request bytes that are not the message the method takes."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


Precheck = Callable[[bytes], str | None]  # a message's wire bytes -> why it is refused unparsed, or None


def _parser(message_class, precheck: Precheck | None = None) -> Callable[[bytes], object]:
    name = message_class.DESCRIPTOR.full_name

    def parse(data: bytes):
        if precheck is not None and (refusal := precheck(data)) is not None:
            return Unparseable(refusal)
        try:
            return message_class.FromString(data)
        except DecodeError as e:
            return Unparseable(f"the request's {len(data)} bytes are not a valid {name}: {e}")

    return parse


def add_servicer(
    servicer,
    server,
    service: ServiceDescriptor,
    messages: ModuleType,
    prechecks: Mapping[str, Precheck] | None = None,
) -> None:
    """What the generated ``add_XServicer_to_server`` does, with requests that fail to parse handed to the
    servicer as :class:`Unparseable` (``messages``: the module of the service's generated messages), as
    are requests that ``prechecks`` (input message name -> check of its wire bytes) refuse unparsed."""
    prechecks = prechecks or {}
    handlers = {}
    for method in service.methods:
        if method.client_streaming:
            make = grpc.stream_stream_rpc_method_handler
        elif method.server_streaming:
            make = grpc.unary_stream_rpc_method_handler
        else:
            make = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_parser(
                getattr(messages, method.input_type.name), prechecks.get(method.input_type.name)
            ),
            response_serializer=getattr(messages, method.output_type.name).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    if hasattr(server, "add_registered_method_handlers"):  # grpcio >= 1.63, as the generated code does
        server.add_registered_method_handlers(service.full_name, handlers)
