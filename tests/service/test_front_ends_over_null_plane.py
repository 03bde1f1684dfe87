"""The front ends over the do-nothing data plane (bench.null_plane), in-process: the codecs, restrictions and
error mapping of both protocols, with no model behind them (the fake of the in-process tier)."""

from __future__ import annotations

import json

import grpc
import httpx
import numpy as np

from bench.null_plane import NullModel, NullPlane
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos.wire import add_input
from service.protocol.grpc_server import build_server
from service.protocol.health import HealthState
from service.protocol.http_admission import Admission
from service.protocol.http_server import HttpFrontEnd
from service.protocol.security import parse_restrictions
from service.telemetry.prometheus import ServerMetrics
from tests.service.inprocess import run

MODEL = NullModel("null", "1", (1, 8, 8), classes=3, max_batch_size=4)


def front_ends(**restricted):
    plane = NullPlane(MODEL, ServerMetrics(gpu=False))
    health = HealthState()
    health.set_model(MODEL.name, (MODEL.version,))
    health.set_ready(True)
    restrictions = parse_restrictions([f"{g}:{v}" for g, v in restricted.items()])
    app = HttpFrontEnd(
        plane,
        health,
        max_body_bytes=1 << 20,
        max_json_bytes=1 << 20,
        body_timeout=5,
        restrictions=restrictions,
    ).app()
    return plane, health, restrictions, Admission(app, health, 8)


def binary_body(rows: int) -> tuple[bytes, dict[str, str]]:
    data = np.zeros((rows, 1, 8, 8), np.float32).tobytes()
    tensor = {
        "name": "input",
        "datatype": "FP32",
        "shape": [rows, 1, 8, 8],
        "parameters": {"binary_data_size": len(data)},
    }
    head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


def test_http_over_the_null_plane():
    async def main():
        plane, _, _, app = front_ends()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://null") as http:
            body, headers = binary_body(2)
            binary = await http.post("/v2/models/null/infer", content=body, headers=headers)
            plain = await http.post(
                "/v2/models/null/infer",
                json={
                    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0] * 64}]
                },
            )
            too_many, _ = binary_body(5)
            refused = await http.post("/v2/models/null/infer", content=too_many, headers=binary_body(5)[1])
            unknown = await http.post("/v2/models/other/infer", json={"inputs": []})
            metadata = await http.get("/v2/models/null")
            return binary, plain, refused, unknown, metadata, plane.telemetry.rows

    binary, plain, refused, unknown, metadata, rows = run(main())
    assert binary.status_code == 200 and binary.content.endswith(bytes(4 * 2 * 3))  # zero logits, binary
    assert plain.json()["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [1, 3], "data": [0.0] * 3}
    ]
    assert refused.status_code == 400 and "1..max_batch_size 4" in refused.json()["error"]
    assert unknown.status_code == 404 and "unknown model 'other'" in unknown.json()["error"]
    assert [i["name"] for i in metadata.json()["inputs"]] == ["input", "pixels", "image"]
    assert rows == 3


def test_grpc_over_the_null_plane_with_a_restriction():
    async def main():
        plane, health, restrictions, _ = front_ends(inference="x-key=v")
        server, port = build_server(
            plane, health, "127.0.0.1:0", max_message_bytes=1 << 20, restrictions=restrictions
        )
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                request = pb.ModelInferRequest(model_name="null")
                add_input(request, "input", np.zeros((2, 1, 8, 8), np.float32))
                codes = []
                for metadata in ((), (("x-key", "no"),)):
                    try:
                        await stub.ModelInfer(request, metadata=metadata)
                    except grpc.aio.AioRpcError as e:
                        codes.append(e.code())
                answer = await stub.ModelInfer(request, metadata=(("x-key", "v"),))
                config = await stub.ModelConfig(pb.ModelConfigRequest(name="null"))
                ready = await stub.ModelReady(pb.ModelReadyRequest(name="null"))
                return codes, answer, config, ready
        finally:
            await server.stop(None)

    codes, answer, config, ready = run(main())
    assert codes == [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED]
    assert list(answer.outputs[0].shape) == [2, 3] and answer.raw_output_contents[0] == bytes(4 * 2 * 3)
    assert config.config.max_batch_size == 4 and ready.ready
