"""KServe v2 gRPC messages <-> the data plane's plain objects.

The inference path is written for speed: tensors keep their raw bytes (the data plane views them without
copying), and an FP32 response is a copy of a prepared message (model, version, output metadata) plus
the logits' bytes, which costs half of building it field by field.
"""

from __future__ import annotations

import time

import numpy as np
from google.protobuf import json_format

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from protos.wire import BYTES, CONTENTS_FIELDS, NUMPY_DTYPES, serialize_bytes
from service.dataplane.types import (
    MAX_SHAPE_DIMS,
    InferRequest,
    InferResponse,
    InputTensor,
    ModelMetadata,
    Parameters,
    RequestedOutput,
    ServerMetadata,
)
from service.errors import InvalidInput, clip
from service.protocol.statistics import statistics_document
from service.serving import RepositoryEntry
from service.telemetry.stats import ModelStats

FP32 = NUMPY_DTYPES["FP32"]
_TEMPLATES_MAX = 4096  # prepared responses: (model, version, output, shape) -> message
_templates: dict[tuple, pb.ModelInferResponse] = {}


def parameters(entries) -> Parameters:
    """A protobuf map of InferParameter as plain values (None where no value is set)."""
    out: Parameters = {}
    for key, param in entries.items():
        which = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, which) if which else None
    return out


def _typed_contents(tensor: pb.ModelInferRequest.InferInputTensor):
    field = CONTENTS_FIELDS.get(tensor.datatype)
    if field is None:
        raise InvalidInput(
            f"input {clip(tensor.name)}: datatype {clip(tensor.datatype)} cannot travel as typed contents; "
            "send raw_input_contents"
        )
    return getattr(tensor.contents, field)


def infer_request(message: pb.ModelInferRequest, time_remaining: float | None) -> InferRequest:
    """``time_remaining``: seconds left of the call's deadline (gRPC's), None without one."""
    tensors = message.inputs
    raws = message.raw_input_contents
    raw_count = len(raws)
    if raw_count and raw_count != len(tensors):
        raise InvalidInput(f"raw_input_contents has {raw_count} entries for {len(tensors)} inputs")
    inputs = []
    for i, tensor in enumerate(tensors):
        if len(tensor.shape) > MAX_SHAPE_DIMS:  # before the shape is copied
            dims = len(tensor.shape)
            raise InvalidInput(
                f"input {clip(tensor.name)}: shape has {dims} dimensions, more than {MAX_SHAPE_DIMS}"
            )
        values = _typed_contents(tensor) if tensor.HasField("contents") else None
        params = parameters(tensor.parameters) if tensor.parameters else None
        raw = raws[i] if raw_count else None
        inputs.append(InputTensor(tensor.name, tensor.datatype, tensor.shape[:], raw, values, params))
    outputs = None
    if message.outputs:
        outputs = [
            RequestedOutput(o.name, parameters(o.parameters) if o.parameters else None)
            for o in message.outputs
        ]
    return InferRequest(
        message.model_name,
        message.model_version,
        inputs,
        id=message.id,
        outputs=outputs,
        parameters=parameters(message.parameters) if message.parameters else None,
        deadline=None if time_remaining is None else time.monotonic() + time_remaining,
    )


def _fp32_response(response: InferResponse) -> pb.ModelInferResponse:
    output = response.outputs[0]
    key = (response.model, response.version, output.name, output.shape)
    template = _templates.get(key)
    if template is None:
        if len(_templates) >= _TEMPLATES_MAX:
            _templates.clear()
        template = pb.ModelInferResponse(model_name=response.model, model_version=response.version)
        template.outputs.add(name=output.name, datatype="FP32", shape=output.shape)
        _templates[key] = template
    message = pb.ModelInferResponse()
    message.CopyFrom(template)
    if response.id:
        message.id = response.id
    data = output.data
    if data.dtype != FP32 or not data.flags.c_contiguous:
        data = np.ascontiguousarray(data, dtype=FP32)
    message.raw_output_contents.append(data.tobytes())
    return message


def infer_response(response: InferResponse) -> pb.ModelInferResponse:
    outputs = response.outputs
    if len(outputs) == 1 and outputs[0].datatype == "FP32":
        return _fp32_response(response)
    message = pb.ModelInferResponse(model_name=response.model, model_version=response.version, id=response.id)
    for output in outputs:
        message.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        if output.datatype == BYTES:
            message.raw_output_contents.append(serialize_bytes(output.data))
        else:
            dtype = NUMPY_DTYPES[output.datatype]
            message.raw_output_contents.append(np.ascontiguousarray(output.data, dtype=dtype).tobytes())
    return message


# ------------------------------------------------------------------------------- the other messages


def server_metadata(meta: ServerMetadata) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)


def model_metadata(meta: ModelMetadata) -> pb.ModelMetadataResponse:
    response = pb.ModelMetadataResponse(name=meta.name, versions=meta.versions, platform=meta.platform)
    for tensor in meta.inputs:
        response.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    for tensor in meta.outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    return response


def model_config(config: mc.ModelConfig) -> pb.ModelConfigResponse:
    return pb.ModelConfigResponse(config=config)


def model_statistics(stats: list[tuple[str, str, ModelStats]]) -> pb.ModelStatisticsResponse:
    """Triton's statistics message: the HTTP front end's document (service.protocol.statistics), field for
    field."""
    return json_format.ParseDict(statistics_document(stats), pb.ModelStatisticsResponse())


def repository_index(entries: list[RepositoryEntry]) -> pb.RepositoryIndexResponse:
    response = pb.RepositoryIndexResponse()
    for entry in entries:
        response.models.add(name=entry.name, version=entry.version, state=entry.state, reason=entry.reason)
    return response
