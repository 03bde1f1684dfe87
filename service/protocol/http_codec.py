"""KServe v2 HTTP/REST bodies <-> the data plane's plain objects, read and written as Triton's front end does.

An infer request is a JSON object, optionally followed by binary tensor data (Triton's binary tensor data
extension): the ``Inference-Header-Content-Length`` header gives the JSON part's length, each binary input
says how many of the following bytes are its own in its ``binary_data_size`` parameter, in input order.
JSON tensors carry ``data``: the elements in row-major order, as a flat list or nested to the shape
(BYTES elements as strings, not base64, as Triton reads them). Binary inputs travel as raw bytes (views of
the body, not copies), JSON ones as typed values; the data plane checks both against the model.

A response output is binary when its requested output sets ``binary_data``, or, for outputs the request
does not list, when the request sets ``binary_data_output``; otherwise JSON ``data``. Every refusal is an
:class:`InvalidInput` naming the field at fault.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from protos import model_config_pb2 as mc
from protos.wire import BYTES, NUMPY_DTYPES, serialize_bytes
from service.dataplane.types import (
    MAX_SHAPE_DIMS,
    InferRequest,
    InferResponse,
    InputTensor,
    ModelMetadata,
    OutputTensor,
    Parameters,
    RequestedOutput,
    ServerMetadata,
)
from service.errors import InvalidInput, clip
from service.protocol.statistics import statistics_document
from service.serving import RepositoryEntry
from service.telemetry.stats import ModelStats

HEADER_LENGTH = "inference-header-content-length"  # Triton's header, lower-cased as ASGI gives it
BINARY_DATA_SIZE = "binary_data_size"  # input parameter: its bytes follow the JSON header
BINARY_DATA = "binary_data"  # requested-output parameter: answer this output in binary
BINARY_DATA_OUTPUT = "binary_data_output"  # request parameter: the default for outputs not listed
SHARED_MEMORY = "shared_memory_region"
BINARY_EXTENSION = "binary_tensor_data"  # Triton's name for the extension, in server metadata
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"

# More elements than any JSON body could hold (each takes at least one byte): a shape's product is
# compared up to here, no further.
MAX_ELEMENTS = 1 << 48
_INTEGER_TYPES = frozenset(name for name, dtype in NUMPY_DTYPES.items() if dtype.kind in "iu")
_KINDS = {"BOOL": ("b", "booleans")}  # datatype -> (numpy kinds accepted from JSON, what they are)
_KINDS.update({name: ("iu", "integers") for name in _INTEGER_TYPES})
_KINDS.update({name: ("iuf", "numbers") for name in ("FP16", "FP32", "FP64")})


def dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _parameters(value: Any, where: str) -> Parameters:
    """A KServe v2 ``parameters`` object: string, number or boolean values."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object, got {_type_name(value)}")
    for key, item in value.items():
        if not isinstance(item, str | int | float | bool):
            raise InvalidInput(
                f"{where}: parameter {clip(key)} must be a string, number or boolean, got {_type_name(item)}"
            )
    return dict(value)


def _flag(parameters: Parameters, key: str, where: str) -> bool:
    value = parameters.pop(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}: parameter {key!r} must be a boolean, got {clip(value)}")
    return value


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def json_object(body: bytes | memoryview, what: str) -> dict:
    """A JSON object (an empty body: an empty object)."""
    if not len(body):
        return {}
    try:
        document = json.loads(bytes(body))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise InvalidInput(f"{what}: malformed JSON: {e}") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"{what}: expected a JSON object, got {_type_name(document)}")
    return document


# ------------------------------------------------------------------------------- infer requests


@dataclass
class OutputChoice:
    """Which outputs of a response travel as binary data."""

    default: bool = False  # the request's binary_data_output: for the outputs it does not list
    listed: dict[str, bool] = field(default_factory=dict)  # requested output -> its binary_data

    def binary(self, name: str) -> bool:
        return self.listed.get(name, self.default)


def header_length(value: str | None, body_length: int) -> int | None:
    """The JSON header's length from ``Inference-Header-Content-Length`` (None: the body is all JSON)."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise InvalidInput(
            f"header Inference-Header-Content-Length must be an integer, got {clip(value)}"
        ) from None
    if length == 0:
        raise InvalidInput(
            "header Inference-Header-Content-Length is 0 (a raw binary request without a JSON header), "
            "which this server does not take: send the JSON header and give its length"
        )
    if not 0 < length <= body_length:
        raise InvalidInput(
            f"header Inference-Header-Content-Length is {clip(length)} but the request body holds "
            f"{body_length} bytes; it must give the length of the JSON header at the start of the body"
        )
    return length


def shape_elements(shape: list[int], limit: int = MAX_ELEMENTS) -> int | None:
    """The product of ``shape``; None past ``limit`` (a client's dimensions may multiply to any size)."""
    product = 1
    for d in shape:
        product *= d
        if product > limit:
            return None
    return product


def element_count(data: list) -> int:
    """How many elements a flat or nested ``data`` list holds, counted without converting it: walked one
    nesting level at a time, each level's lists checked (their number is the element count divided by
    the innermost length); the innermost level is whatever its first non-empty list starts with."""
    level = [data]
    while True:
        first = next((items for items in level if items), None)
        if first is None or not isinstance(first[0], list):
            return sum(len(items) for items in level)
        inner = []
        for items in level:
            for item in items:
                if not isinstance(item, list):
                    raise ValueError("lists and elements mixed at one nesting level")
                inner.append(item)
        level = inner


def _check_count(data: list, shape: list[int], where: str) -> None:
    """The elements of ``data`` against the declared ``shape``, before anything is converted."""
    expected = shape_elements(shape)
    try:
        got = element_count(data)
    except ValueError:
        raise InvalidInput(
            f"{where}: 'data' must be a flat list of elements, or lists nested evenly to the tensor's shape"
        ) from None
    if got != expected:
        needed = f"more than {MAX_ELEMENTS}" if expected is None else str(expected)
        raise InvalidInput(f"{where}: 'data' holds {got} elements but shape {clip(shape)} has {needed}")


def _json_values(data: Any, datatype: str, shape: list[int], where: str) -> np.ndarray | list[bytes]:
    """JSON ``data`` (a flat or nested list, row-major) as a flat array or list of bytes, counted against
    ``shape`` first."""
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: 'data' must be a list of the elements in row-major order")
    _check_count(data, shape, where)
    if datatype == BYTES:
        try:
            return [item.encode() for item in _flatten_strings(data, where)]
        except UnicodeEncodeError:  # JSON lets a string hold a lone surrogate ("\ud800"); UTF-8 does not
            raise InvalidInput(
                f"{where}: BYTES elements must be valid Unicode text; one holds a lone surrogate"
            ) from None
    kinds = _KINDS.get(datatype)
    if kinds is None:
        raise InvalidInput(
            f"{where}: unknown datatype {clip(datatype)}; one of {', '.join([*NUMPY_DTYPES, BYTES])}"
        )
    if not data:
        return np.empty(0, NUMPY_DTYPES[datatype])
    try:
        array = np.asarray(data)
    except (ValueError, OverflowError):
        raise InvalidInput(
            f"{where}: 'data' must be a flat list of {kinds[1]}, or lists nested evenly to the tensor's shape"
        ) from None
    if array.dtype.kind not in kinds[0]:
        raise InvalidInput(f"{where}: {datatype} elements must be {kinds[1]}")
    return array.ravel()


def _flatten_strings(data: list, where: str) -> list[str]:
    """The strings of a flat or nested list, in row-major order (without recursion: nesting is the
    client's to choose)."""
    out: list[str] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if not isinstance(item, str):
                raise InvalidInput(f"{where}: BYTES elements must be strings, got {_type_name(item)}")
            out.append(item)
        else:
            stack.pop()
    return out


def _input(
    entry: Any, i: int, body: memoryview, offset: int, binary_allowed: bool
) -> tuple[InputTensor, int]:
    """One entry of ``inputs``; its binary data starts at ``offset`` of the body. Returns the tensor and
    where the next input's binary data starts."""
    where = f"inputs[{i}]"
    if not isinstance(entry, dict):
        raise InvalidInput(
            f"{where}: must be an object with name, datatype, shape and data, got {_type_name(entry)}"
        )
    name = entry.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"{where}: 'name' must be a string, got {_type_name(name)}")
    where = f"input {clip(name)}"
    datatype = entry.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidInput(f"{where}: 'datatype' must be a string, got {_type_name(datatype)}")
    shape = entry.get("shape")
    if isinstance(shape, list) and len(shape) > MAX_SHAPE_DIMS:
        raise InvalidInput(f"{where}: 'shape' has {len(shape)} dimensions, more than {MAX_SHAPE_DIMS}")
    if not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise InvalidInput(f"{where}: 'shape' must be a list of non-negative integers, got {clip(shape)}")
    parameters = _parameters(entry.get("parameters"), where)
    if SHARED_MEMORY in parameters:
        raise InvalidInput(
            f"{where}: shared memory ({SHARED_MEMORY!r}) is not supported; send data in the body"
        )
    size = parameters.pop(BINARY_DATA_SIZE, None)
    has_data = "data" in entry
    if has_data == (size is not None):
        given = "both" if has_data else "neither"
        raise InvalidInput(
            f"{where}: set exactly one of 'data' and parameter {BINARY_DATA_SIZE!r}, got {given}"
        )
    raw = values = None
    if size is not None:
        if not binary_allowed:
            raise InvalidInput(
                f"{where}: binary data (parameter {BINARY_DATA_SIZE!r}) needs the header "
                "Inference-Header-Content-Length giving the length of the JSON header"
            )
        if not _count(size):
            raise InvalidInput(
                f"{where}: parameter {BINARY_DATA_SIZE!r} must be a non-negative integer, got {clip(size)}"
            )
        remaining = len(body) - offset
        if size > remaining:
            raise InvalidInput(
                f"{where}: {BINARY_DATA_SIZE} is {clip(size)} but only {remaining} bytes of binary data "
                "remain in the request body"
            )
        raw, offset = body[offset : offset + size], offset + size
    else:
        values = _json_values(entry["data"], datatype, shape, where)
    return InputTensor(name, datatype, shape, raw, values, parameters or None), offset


def _outputs(entries: Any, choice: OutputChoice) -> list[RequestedOutput] | None:
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise InvalidInput(f"'outputs' must be a list of requested outputs, got {_type_name(entries)}")
    outputs = []
    for j, entry in enumerate(entries):
        where = f"outputs[{j}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidInput(f"{where}: must be an object with a string 'name'")
        name = entry["name"]
        where = f"output {clip(name)}"
        parameters = _parameters(entry.get("parameters"), where)
        if SHARED_MEMORY in parameters:
            raise InvalidInput(f"{where}: shared memory ({SHARED_MEMORY!r}) is not supported")
        choice.listed[name] = _flag(parameters, BINARY_DATA, where)
        outputs.append(RequestedOutput(name, parameters or None))
    return outputs


def infer_request(
    model: str, version: str, body: bytes, header_length: int | None
) -> tuple[InferRequest, OutputChoice]:
    """The request in ``body`` (its JSON header is the first ``header_length`` bytes, or all of it)."""
    view = memoryview(body)
    end = len(body) if header_length is None else header_length
    document = json_object(view[:end], "inference request")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {_type_name(request_id)}")
    parameters = _parameters(document.get("parameters"), "request")
    choice = OutputChoice(default=_flag(parameters, BINARY_DATA_OUTPUT, "request"))
    entries = document.get("inputs")
    if not isinstance(entries, list):
        raise InvalidInput(f"'inputs' must be a list of input tensors, got {_type_name(entries)}")
    inputs, offset = [], end
    for i, entry in enumerate(entries):
        tensor, offset = _input(entry, i, view, offset, header_length is not None)
        inputs.append(tensor)
    if offset != len(body):
        raise InvalidInput(
            f"the request body holds {len(body) - end} bytes after the JSON header, but the inputs' "
            f"{BINARY_DATA_SIZE} add up to {offset - end}"
        )
    outputs = _outputs(document.get("outputs"), choice)
    request = InferRequest(
        model, version, inputs, id=request_id, outputs=outputs, parameters=parameters or None
    )
    return request, choice


# ------------------------------------------------------------------------------ infer responses


def _raw(output: OutputTensor) -> bytes:
    if output.datatype == BYTES:
        return serialize_bytes(output.data)
    return np.ascontiguousarray(output.data, dtype=NUMPY_DTYPES[output.datatype]).tobytes()


def _json_data(output: OutputTensor) -> list:
    if output.datatype == BYTES:
        return [item.decode("utf-8", "replace") for item in output.data]
    return np.asarray(output.data).ravel().tolist()


def infer_response(response: InferResponse, choice: OutputChoice) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it (None: all JSON)."""
    document: dict[str, Any] = {}
    if response.id:
        document["id"] = response.id
    document["model_name"] = response.model
    document["model_version"] = response.version
    outputs, blobs = [], []
    for output in response.outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        if choice.binary(output.name):
            blob = _raw(output)
            entry["parameters"] = {BINARY_DATA_SIZE: len(blob)}
            if blob:
                blobs.append(blob)
        else:
            entry["data"] = _json_data(output)
        outputs.append(entry)
    document["outputs"] = outputs
    head = dumps(document)
    if not blobs:
        return head, None
    return b"".join((head, *blobs)), len(head)


# -------------------------------------------------------------------------------- the other routes


def server_metadata(meta: ServerMetadata) -> dict:
    return {"name": meta.name, "version": meta.version, "extensions": [*meta.extensions, BINARY_EXTENSION]}


def model_metadata(meta: ModelMetadata) -> dict:
    def tensors(items) -> list[dict]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": tensors(meta.inputs),
        "outputs": tensors(meta.outputs),
    }


_INT64 = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT64,
    }
)


def _int64_as_numbers(message_type, document: dict) -> None:
    """protobuf's JSON writes 64-bit integers as strings; Triton's model config JSON has numbers."""
    for descriptor in message_type.fields:
        value = document.get(descriptor.name)
        if value is None:
            continue
        is_map = descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry
        if is_map:
            value_field = descriptor.message_type.fields_by_name["value"]
            if value_field.cpp_type in _INT64:
                document[descriptor.name] = {k: int(v) for k, v in value.items()}
            elif value_field.message_type is not None:
                for item in value.values():
                    _int64_as_numbers(value_field.message_type, item)
        elif descriptor.cpp_type in _INT64:
            document[descriptor.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif descriptor.message_type is not None:
            for item in value if isinstance(value, list) else [value]:
                _int64_as_numbers(descriptor.message_type, item)


def model_config(config: mc.ModelConfig) -> dict:
    """The JSON form of Triton's ModelConfig as its HTTP front end sends it: proto field names, every
    field (defaults too), enums by name, 64-bit integers as numbers."""
    document = json_format.MessageToDict(
        config, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
    _int64_as_numbers(config.DESCRIPTOR, document)
    return document


def model_statistics(stats: list[tuple[str, str, ModelStats]]) -> dict:
    """Triton's statistics extension over HTTP: ``{"model_stats": [...]}``."""
    return statistics_document(stats)


def repository_index(entries: list[RepositoryEntry]) -> list[dict]:
    return [{"name": e.name, "version": e.version, "state": e.state, "reason": e.reason} for e in entries]


def index_ready(document: Mapping) -> bool:
    """``{"ready": bool}`` of a repository index request (absent: false)."""
    ready = document.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput(f"repository index: 'ready' must be a boolean, got {_type_name(ready)}")
    return ready


def control_parameters(document: Mapping, action: str) -> list[str]:
    """The parameter names of a repository load/unload request (the data plane says which it takes)."""
    return list(_parameters(document.get("parameters"), f"model {action}"))
