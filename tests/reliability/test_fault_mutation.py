"""Seeded random mutation of valid serialized ModelInferRequests, sent as raw bytes (half of them edited
byte by byte, half field by field and re-serialized, so that the edits also get past the protobuf parser
to the server's own checks): every answer is a
well-formed response or a clean status, never UNKNOWN or INTERNAL, nothing logged as unexpected, and the
server alive and correct after the batch.

Bytes that no longer parse as a ModelInferRequest are INVALID_ARGUMENT, saying so (grpc.aio left alone
answers them UNKNOWN and logs a traceback for each).
"""

from __future__ import annotations

import collections
import io
import random
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from protos import grpc_service_pb2 as pb
from protos.wire import add_input, output_array
from tests.reliability.fault_kit import (
    MAX_DETAILS,
    MODEL,
    UNEXPECTED,
    RawInfer,
    assert_alive_and_correct,
    x,
)

UNPARSEABLE = "bytes are not a valid inference.ModelInferRequest"
GRPC_TRACEBACK = "raised by servicer method"  # what grpc.aio logs for an exception it handles itself
SEED = 20240611
CASES = 600  # mutated requests, at most
TIME_BOUND_S = 90.0  # and at most this long (about 10 s on two busy cores)
CLEAN = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a mutated `timeout` parameter can be a few microseconds
}


def seeds() -> dict[str, bytes]:
    """Valid requests of each input kind, with the optional parts set (id, parameters, outputs)."""
    tensor = pb.ModelInferRequest(model_name=MODEL, model_version="1", id="req-1")
    add_input(tensor, "input", x(2, 1))
    tensor.parameters["timeout"].int64_param = 10_000_000
    tensor.outputs.add(name="logits").parameters["classification"].int64_param = 3

    pixels = pb.ModelInferRequest(model_name=MODEL)
    add_input(pixels, "pixels", np.random.default_rng(2).integers(0, 256, (1, 32, 32, 1), dtype=np.uint8))

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (28, 28), dtype=np.uint8), "L").save(buf, "PNG")
    image = pb.ModelInferRequest(model_name=MODEL, id="img")
    add_input(image, "image", [buf.getvalue()])

    typed = pb.ModelInferRequest(model_name=MODEL)
    typed.inputs.add(name="input", datatype="FP32", shape=[1, 1, 32, 32]).contents.fp32_contents.extend(
        x(1, 4).ravel().tolist()
    )
    return {
        k: m.SerializeToString()
        for k, m in {"tensor": tensor, "pixels": pixels, "image": image, "typed": typed}.items()
    }


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three byte-level edits: flip a bit, set a byte (0x00, 0xff or any), insert or delete a run,
    duplicate a run, truncate."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if not out:
            out.extend(rng.randbytes(4))
        i = rng.randrange(len(out))
        op = rng.randrange(7)
        if op == 0:
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[i] = rng.choice((0x00, 0xFF, rng.randrange(256)))
        elif op == 2:
            out[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            del out[i : i + rng.randint(1, 16)]
        elif op == 4:
            span = out[i : i + rng.randint(1, 32)]
            j = rng.randrange(len(out))
            out[j:j] = span
        elif op == 5:
            del out[i:]
        else:  # a length or varint byte in the message's first bytes (names, shapes, datatypes live there)
            k = rng.randrange(min(len(out), 64))
            out[k] = rng.randrange(256)
    return bytes(out)


DIMS = (-(2**63), -1, 0, 1, 2, 3, 28, 31, 32, 33, 255, 2**31, 2**63 - 1)
DATATYPES = ("FP32", "UINT8", "BYTES", "FP16", "FP64", "INT64", "BOOL", "", "fp32", "FOO")
NAMES = ("input", "pixels", "image", "logits", "", "data", "lenet5", "\x00", "é" * 3, "n" * 300)
PARAMETERS = ("timeout", "classification", "priority", "")


def set_parameter(parameters, rng: random.Random) -> None:
    parameter = parameters[rng.choice(PARAMETERS)]
    field = rng.choice(("int64_param", "uint64_param", "double_param", "bool_param", "string_param", None))
    if field is None:
        parameter.SetInParent()  # present, no value
    else:
        value = {
            "int64_param": rng.choice(DIMS),
            "uint64_param": rng.choice((0, 1, 3, 2**64 - 1)),
            "double_param": rng.choice((0.5, -1.0, float("nan"), float("inf"))),
            "bool_param": rng.choice((True, False)),
            "string_param": rng.choice(("3", "", "x" * 50)),
        }[field]
        setattr(parameter, field, value)


def mutate_fields(data: bytes, rng: random.Random) -> bytes:
    """One to three edits of the request's fields, re-serialized: shapes, datatypes, names, contents,
    parameters, requested outputs (the structure survives, so the edits reach the server's own checks)."""
    request = pb.ModelInferRequest.FromString(data)
    for _ in range(rng.randint(1, 3)):
        tensor = request.inputs[0] if request.inputs else request.inputs.add(name="input", datatype="FP32")
        op = rng.randrange(10)
        if op == 0:
            shape = list(tensor.shape) or [1]
            shape[rng.randrange(len(shape))] = rng.choice(DIMS)
            tensor.ClearField("shape")
            tensor.shape.extend(shape)
        elif op == 1:
            shape = list(tensor.shape)
            shape = shape[:-1] if shape and rng.random() < 0.5 else [*shape, rng.choice((1, 2, 32))]
            tensor.ClearField("shape")
            tensor.shape.extend(shape)
        elif op == 2:
            tensor.datatype = rng.choice(DATATYPES)
        elif op == 3:
            tensor.name = rng.choice(NAMES)
        elif op == 4:
            field = rng.choice(("model_name", "model_version", "id"))
            setattr(request, field, rng.choice((*NAMES, "1", "2", "-1")))
        elif op == 5 and request.raw_input_contents:
            content = request.raw_input_contents[0]
            cut = rng.randrange(len(content) + 1)
            request.raw_input_contents[0] = rng.choice(
                (content[:cut], content + rng.randbytes(rng.randint(1, 64)), rng.randbytes(len(content)))
            )
        elif op == 6:
            if request.raw_input_contents and rng.random() < 0.5:
                del request.raw_input_contents[-1]
            else:
                request.raw_input_contents.append(rng.randbytes(rng.choice((0, 4, 4096))))
        elif op == 7:
            contents, which = tensor.contents, rng.randrange(4)
            if which == 0:
                contents.fp32_contents.extend([rng.choice((0.0, float("nan")))] * rng.choice((1, 1024)))
            elif which == 1:
                contents.uint_contents.extend([rng.choice((0, 255, 256, 2**32 - 1))] * 1024)
            elif which == 2:
                contents.bytes_contents.extend([rng.randbytes(8)] * rng.choice((1, 2, 100)))
            else:
                contents.int64_contents.extend([-1] * 1024)
        elif op == 8:
            set_parameter(request.parameters, rng)
        else:
            if request.outputs and rng.random() < 0.3:
                del request.outputs[-1]
            else:
                output = request.outputs.add(name=rng.choice(("logits", "logits", "probs", "")))
                if rng.random() < 0.7:
                    set_parameter(output.parameters, rng)
    return request.SerializeToString()


@pytest.fixture(scope="module")
def raw_infer(shared_server):
    call = RawInfer(shared_server.address)
    yield call
    call.close()


def test_mutated_requests_get_a_response_or_a_clean_status(raw_infer, shared_server, reference):
    rng = random.Random(SEED)
    bases = seeds()
    for name, data in bases.items():  # the seeds themselves are valid
        code, details, _ = raw_infer(data)
        assert code == grpc.StatusCode.OK, f"seed {name}: {code.name} {details}"
    outcomes: collections.Counter = collections.Counter()
    bad: list[str] = []
    started = time.monotonic()
    sent = 0
    while sent < CASES and time.monotonic() - started < TIME_BOUND_S:
        kind = rng.choice(sorted(bases))
        if rng.random() < 0.5:
            data, kind = mutate(bases[kind], rng), f"{kind}, bytes"
        else:
            data, kind = mutate_fields(bases[kind], rng), f"{kind}, fields"
        sent += 1
        code, details, response = raw_infer(data, timeout=30)
        outcomes[code.name if UNPARSEABLE not in details else "INVALID_ARGUMENT (unparseable)"] += 1
        if code not in CLEAN or len(details) > MAX_DETAILS:
            bad.append(f"case {sent} ({kind}): {code.name}: {details[:200]} <- {data[:80]!r}")
        elif code == grpc.StatusCode.OK:
            message = pb.ModelInferResponse.FromString(response)
            logits = output_array(message, "logits")
            assert logits.ndim == 2 and 1 <= logits.shape[1] <= 10, f"case {sent}: shape {logits.shape}"
    print(f"{sent} mutated requests in {time.monotonic() - started:.1f}s: {dict(outcomes)}")
    assert not bad, "\n".join(bad[:10])
    assert sent >= 100, f"only {sent} cases ran within {TIME_BOUND_S}s"
    # the mutations reached our checks, not only gRPC's parser
    assert outcomes["INVALID_ARGUMENT"] + outcomes["NOT_FOUND"] >= sent // 4, dict(outcomes)
    log = shared_server.log()
    assert UNEXPECTED not in log and GRPC_TRACEBACK not in log, log[-3000:]
    assert_alive_and_correct(shared_server, reference)


def test_bytes_that_do_not_parse_are_invalid_argument_and_log_nothing(raw_infer, shared_server, reference):
    for data in (b"\xff" * 10, b"\n\x7flenet5", seeds()["tensor"][:-7]):
        code, details, _ = raw_infer(data)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {details}"
        assert f"the request's {len(data)} {UNPARSEABLE}" in details, details
    with grpc.insecure_channel(shared_server.address) as channel:  # in a stream, one bad message
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=lambda b: b,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        answers = list(stream(iter([b"\xff" * 10, seeds()["tensor"]]), timeout=30))
    assert sorted(bool(a.error_message) for a in answers) == [False, True]
    assert [UNPARSEABLE in a.error_message for a in answers if a.error_message] == [True]
    log = shared_server.log()
    assert GRPC_TRACEBACK not in log and UNEXPECTED not in log, log[-3000:]
    assert_alive_and_correct(shared_server, reference)


@pytest.mark.parametrize(
    "method",
    [
        "/grpc.health.v1.Health/Check",
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ModelReady",
    ],
)
def test_health_requests_that_do_not_parse_are_invalid_argument_on_both_ports(method, shared_server):
    for address in (shared_server.address, shared_server.health_address):
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary(
                method, request_serializer=lambda b: b, response_deserializer=lambda b: b
            )
            with pytest.raises(grpc.RpcError) as info:
                call(b"\xff" * 10, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (address, info.value.details())
            assert "the request's 10 bytes are not a valid" in info.value.details()
    log = shared_server.log()
    assert GRPC_TRACEBACK not in log and UNEXPECTED not in log, log[-3000:]
