"""Tests for the Triton-compatible protos and their checked-in stubs."""

from __future__ import annotations

import importlib.util
from concurrent import futures

import grpc
import pytest
from google.protobuf import descriptor, text_format

from protos import grpc_service_pb2 as gs
from protos import grpc_service_pb2_grpc as gs_grpc
from protos import model_config_pb2 as mc

# --------------------------------------------------------------- (a) freshness


def test_generated_stubs_are_not_stale():
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed, cannot regenerate stubs")
    from protos import generate

    stale = generate.check()
    assert stale == [], f"stale stubs {stale}; run `python -m protos.generate`"


# ------------------------------------------------------ (b) Triton's numbers

# (message class, field name, Triton's field number). A mismatch here means
# Triton clients would silently send or read the wrong field.
WIRE_FIELDS = [
    (gs.ModelInferRequest, "model_name", 1),
    (gs.ModelInferRequest, "model_version", 2),
    (gs.ModelInferRequest, "id", 3),
    (gs.ModelInferRequest, "parameters", 4),
    (gs.ModelInferRequest, "inputs", 5),
    (gs.ModelInferRequest, "outputs", 6),
    (gs.ModelInferRequest, "raw_input_contents", 7),
    (gs.ModelInferRequest.InferInputTensor, "name", 1),
    (gs.ModelInferRequest.InferInputTensor, "datatype", 2),
    (gs.ModelInferRequest.InferInputTensor, "shape", 3),
    (gs.ModelInferRequest.InferInputTensor, "parameters", 4),
    (gs.ModelInferRequest.InferInputTensor, "contents", 5),
    (gs.ModelInferRequest.InferRequestedOutputTensor, "parameters", 2),
    (gs.ModelInferResponse, "outputs", 5),
    (gs.ModelInferResponse, "raw_output_contents", 6),
    (gs.ModelInferResponse.InferOutputTensor, "contents", 5),
    (gs.ModelStreamInferResponse, "error_message", 1),
    (gs.ModelStreamInferResponse, "infer_response", 2),
    (gs.InferTensorContents, "int_contents", 2),
    (gs.InferTensorContents, "int64_contents", 3),
    (gs.InferTensorContents, "fp32_contents", 6),
    (gs.InferTensorContents, "fp64_contents", 7),
    (gs.InferTensorContents, "bytes_contents", 8),
    (gs.InferParameter, "string_param", 3),
    (gs.InferParameter, "uint64_param", 5),
    (gs.ModelStatistics, "inference_stats", 6),
    (gs.ModelStatistics, "batch_stats", 7),
    (gs.ModelStatistics, "memory_usage", 8),
    (gs.ModelStatistics, "response_stats", 9),
    (gs.InferStatistics, "cache_miss", 8),
    (gs.RepositoryModelLoadRequest, "parameters", 3),
    (gs.ModelConfigResponse, "config", 1),
    (mc.ModelConfig, "name", 1),
    (mc.ModelConfig, "platform", 2),
    (mc.ModelConfig, "max_batch_size", 4),
    (mc.ModelConfig, "input", 5),
    (mc.ModelConfig, "output", 6),
    (mc.ModelConfig, "instance_group", 7),
    (mc.ModelConfig, "dynamic_batching", 11),
    (mc.ModelConfig, "parameters", 14),
    (mc.ModelConfig, "backend", 17),
    (mc.ModelConfig, "model_transaction_policy", 19),
    (mc.ModelConfig, "response_cache", 24),
    (mc.ModelInput, "data_type", 2),
    (mc.ModelInput, "format", 3),
    (mc.ModelInput, "dims", 4),
    (mc.ModelOutput, "dims", 3),
    (mc.ModelOutput, "label_filename", 4),
    (mc.ModelDynamicBatching, "preferred_batch_size", 1),
    (mc.ModelDynamicBatching, "max_queue_delay_microseconds", 2),
    (mc.ModelDynamicBatching, "default_queue_policy", 6),
    (mc.ModelQueuePolicy, "max_queue_size", 4),
    (mc.ModelInstanceGroup, "count", 2),
    (mc.ModelInstanceGroup, "gpus", 3),
    (mc.ModelInstanceGroup, "kind", 4),
    (mc.ModelParameter, "string_value", 1),
]


@pytest.mark.parametrize(
    ("message", "field", "number"),
    WIRE_FIELDS,
    ids=[f"{m.DESCRIPTOR.name}.{f}" for m, f, _ in WIRE_FIELDS],
)
def test_field_numbers_match_triton(message, field, number):
    assert message.DESCRIPTOR.fields_by_name[field].number == number


def test_raw_contents_are_repeated_bytes():
    for message, field in [
        (gs.ModelInferRequest, "raw_input_contents"),
        (gs.ModelInferResponse, "raw_output_contents"),
    ]:
        fd = message.DESCRIPTOR.fields_by_name[field]
        assert fd.type == descriptor.FieldDescriptor.TYPE_BYTES
        # `is_repeated` replaces the deprecated `label` in newer protobufs.
        repeated = getattr(fd, "is_repeated", None)
        if repeated is None:
            repeated = fd.label == descriptor.FieldDescriptor.LABEL_REPEATED
        assert repeated


def test_names_live_in_tritons_package():
    # Full names appear on the wire (gRPC method paths) and in JSON/Any.
    assert gs.DESCRIPTOR.package == "inference"
    assert mc.DESCRIPTOR.package == "inference"
    assert gs.ModelInferRequest.DESCRIPTOR.full_name == "inference.ModelInferRequest"
    assert (
        gs.ModelInferRequest.InferInputTensor.DESCRIPTOR.full_name
        == "inference.ModelInferRequest.InferInputTensor"
    )
    assert mc.ModelConfig.DESCRIPTOR.full_name == "inference.ModelConfig"


def test_enum_values_match_triton():
    assert mc.DataType.Value("TYPE_FP32") == 11
    assert mc.DataType.Value("TYPE_STRING") == 13
    assert mc.DataType.Value("TYPE_BF16") == 14
    assert mc.ModelInstanceGroup.Kind.Value("KIND_GPU") == 1
    assert mc.ModelInstanceGroup.Kind.Value("KIND_CPU") == 2


# ------------------------------------------------------ (c) config.pbtxt

CONFIG_PBTXT = """
name: "resnet50"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 1000 ]
  }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { max_queue_size: 64 }
}
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
parameters {
  key: "x"
  value { string_value: "y" }
}
"""


def test_config_pbtxt_parses_and_round_trips():
    config = text_format.Parse(CONFIG_PBTXT, mc.ModelConfig())

    assert config.name == "resnet50"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    assert list(config.input[0].dims) == [3, 224, 224]
    assert config.input[0].data_type == mc.TYPE_FP32
    assert config.input[0].format == mc.ModelInput.FORMAT_NCHW
    assert config.output[0].name == "logits"
    assert list(config.output[0].dims) == [1000]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [4, 8]
    assert batching.max_queue_delay_microseconds == 100
    assert batching.default_queue_policy.max_queue_size == 64
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert config.parameters["x"].string_value == "y"

    as_text = text_format.MessageToString(config)
    assert text_format.Parse(as_text, mc.ModelConfig()) == config
    as_bytes = config.SerializeToString()
    assert mc.ModelConfig.FromString(as_bytes) == config
    # ModelConfig is also what the ModelConfig RPC returns.
    response = gs.ModelConfigResponse(config=config)
    assert gs.ModelConfigResponse.FromString(response.SerializeToString()) == response


# ------------------------------------------------------------ (d) service

# RPC name -> (client streaming, server streaming)
EXPECTED_RPCS = {
    "ServerLive": (False, False),
    "ServerReady": (False, False),
    "ModelReady": (False, False),
    "ServerMetadata": (False, False),
    "ModelMetadata": (False, False),
    "ModelInfer": (False, False),
    "ModelStreamInfer": (True, True),
    "ModelConfig": (False, False),
    "ModelStatistics": (False, False),
    "RepositoryIndex": (False, False),
    "RepositoryModelLoad": (False, False),
    "RepositoryModelUnload": (False, False),
}


def test_service_has_exactly_the_expected_rpcs():
    service = gs.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    actual = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert actual == EXPECTED_RPCS


def test_rpc_message_types():
    methods = gs.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    for name in EXPECTED_RPCS:
        method = methods[name]
        request = "ModelInferRequest" if name == "ModelStreamInfer" else f"{name}Request"
        response = f"{name}Response"
        assert method.input_type.full_name == f"inference.{request}"
        assert method.output_type.full_name == f"inference.{response}"


def test_grpc_stub_round_trip_over_loopback():
    """The generated servicer/stub pair talks to itself on 127.0.0.1."""

    class Servicer(gs_grpc.GRPCInferenceServiceServicer):
        def ServerLive(self, request, context):
            return gs.ServerLiveResponse(live=True)

        def ModelInfer(self, request, context):
            return gs.ModelInferResponse(
                model_name=request.model_name,
                id=request.id,
                raw_output_contents=list(request.raw_input_contents),
            )

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    gs_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gs_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(gs.ServerLiveRequest(), timeout=10).live
            reply = stub.ModelInfer(
                gs.ModelInferRequest(model_name="m", id="42", raw_input_contents=[b"\x00\x01"]),
                timeout=10,
            )
            assert (reply.model_name, reply.id) == ("m", "42")
            assert list(reply.raw_output_contents) == [b"\x00\x01"]
            with pytest.raises(grpc.RpcError) as err:
                stub.ServerReady(gs.ServerReadyRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=None)


# ------------------------------------ cross-check against Triton's own client


def _tritonclient_file_protos() -> dict:
    """Triton's FileDescriptorProtos, read from tritonclient's generated code.

    tritonclient's modules define the same `inference.*` symbols as ours, so
    importing them here would clash in the default descriptor pool; instead
    the serialized descriptor literal is read out of the source with `ast`.
    """
    import ast
    from pathlib import Path

    from google.protobuf import descriptor_pb2

    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tritonclient is not installed")
    grpc_dir = Path(next(iter(spec.submodule_search_locations))) / "grpc"
    found = {}
    for module in ("service_pb2.py", "model_config_pb2.py"):
        tree = ast.parse((grpc_dir / module).read_text("utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
                data = ast.literal_eval(node.args[0])
                fdp = descriptor_pb2.FileDescriptorProto.FromString(data)
                found[fdp.name] = fdp
    return found


def _shape(file_proto) -> dict:
    """Flatten a FileDescriptorProto into comparable wire-relevant facts."""
    out = {}

    def message(m, prefix):
        name = prefix + m.name
        out[f"message {name}"] = sorted(
            (
                f.name,
                f.number,
                f.type,
                f.label,
                f.type_name,
                m.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else "",
            )
            for f in m.field
        )
        for nested in m.nested_type:
            message(nested, name + ".")
        for e in m.enum_type:
            enum(e, name + ".")

    def enum(e, prefix):
        out[f"enum {prefix}{e.name}"] = sorted((v.name, v.number) for v in e.value)

    for m in file_proto.message_type:
        message(m, "")
    for e in file_proto.enum_type:
        enum(e, "")
    for s in file_proto.service:
        for r in s.method:
            out[f"rpc {s.name}.{r.name}"] = (
                r.input_type,
                r.output_type,
                r.client_streaming,
                r.server_streaming,
            )
    return out


@pytest.mark.parametrize(
    ("ours", "triton_file"),
    [(gs, "grpc_service.proto"), (mc, "model_config.proto")],
    ids=["grpc_service", "model_config"],
)
def test_matches_tritonclient_descriptors(ours, triton_file):
    from google.protobuf import descriptor_pb2

    theirs = _shape(_tritonclient_file_protos()[triton_file])
    file_proto = descriptor_pb2.FileDescriptorProto()
    ours.DESCRIPTOR.CopyToProto(file_proto)
    mine = _shape(file_proto)
    # Everything we define must be exactly Triton's; we may omit things.
    assert {k: v for k, v in theirs.items() if k in mine} == mine
