"""Every RPC of the real server (a subprocess on a free port); outputs equal to the artifacts run directly."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from modelrepo.preprocess import normalize_pixels, preprocess_bytes
from models.lenet import DIGITS_INPUT
from protos import grpc_service_pb2 as pb
from protos import health_pb2, health_pb2_grpc
from protos import model_config_pb2 as mc
from protos.wire import add_input, output_array, serialize_bytes


def direct(model_repo, name: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        str(model_repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(["logits"], {"input": x})[0]


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 1, 32, 32)).astype(np.float32)


def test_health_rpcs(client, stub):
    assert client.live() and client.ready()
    assert client.model_ready("lenet5")
    assert client.model_ready("lenet5", "1")
    assert not client.model_ready("lenet5", "2")
    assert not client.model_ready("no_such_model")


def test_grpc_health_service_names(server):
    health = health_pb2_grpc.HealthStub(server.client().channel)

    def status(service):
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", "inference.GRPCInferenceService", "liveness", "lenet5", "lenet5_torch"):
        assert status(service) == serving, service


def test_reflection_lists_the_services(server):
    database = ProtoReflectionDescriptorDatabase(server.client().channel)
    services = set(database.get_services())
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
    method = database.FindFileContainingSymbol("inference.GRPCInferenceService")
    assert method.name == "protos/grpc_service.proto"


def test_server_metadata(client):
    meta = client.server_metadata()
    assert meta.name == "cnnserve"
    assert meta.version
    assert {"classification", "model_repository", "statistics", "model_configuration"} <= set(meta.extensions)


def test_model_metadata_advertises_the_three_inputs(client):
    meta = client.model_metadata("lenet5")
    assert (meta.name, list(meta.versions), meta.platform) == ("lenet5", ["1"], "onnxruntime_onnx")
    inputs = {t.name: (t.datatype, list(t.shape)) for t in meta.inputs}
    assert inputs == {
        "input": ("FP32", [-1, 1, 32, 32]),
        "pixels": ("UINT8", [-1, 32, 32, 1]),
        "image": ("BYTES", [-1]),
    }
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("logits", "FP32", [-1, 10])]
    assert client.model_metadata("lenet5_torch").platform == "pytorch"


def test_model_config(client):
    config = client.model_config("lenet5_batched")
    assert config.name == "lenet5_batched" and config.max_batch_size == 8
    assert config.dynamic_batching.max_queue_delay_microseconds == 300_000
    assert [i.name for i in config.input] == ["input", "pixels", "image"]
    pixels, image = config.input[1], config.input[2]
    assert pixels.data_type == mc.TYPE_UINT8 and pixels.optional and list(pixels.dims) == [32, 32, 1]
    assert pixels.format == mc.ModelInput.FORMAT_NHWC
    assert image.data_type == mc.TYPE_STRING and image.optional and list(image.dims) == [1]
    assert config.output[0].label_filename == "labels.txt"


def test_model_infer_equals_onnxruntime(client, model_repo):
    x = batch(5)
    logits = client.infer("lenet5", x)
    assert logits.shape == (5, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, direct(model_repo, "lenet5", x), rtol=1e-5, atol=1e-6)


def test_pixels_are_normalized_by_the_server_as_the_manifest_says(client, model_repo):
    pixels = np.random.default_rng(7).integers(0, 256, (3, 32, 32, 1), dtype=np.uint8)
    expected = direct(model_repo, "lenet5", normalize_pixels(pixels, DIGITS_INPUT))
    np.testing.assert_allclose(client.infer_pixels("lenet5", pixels), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(client.infer_pixels("lenet5_int8", pixels).argmax(1), expected.argmax(1))


def test_typed_contents_are_accepted(stub, model_repo):
    x = batch(2, seed=3)
    request = pb.ModelInferRequest(model_name="lenet5", id="typed-1")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    response = stub.ModelInfer(request, timeout=30)
    assert (response.model_name, response.model_version, response.id) == ("lenet5", "1", "typed-1")
    np.testing.assert_allclose(
        output_array(response, "logits"), direct(model_repo, "lenet5", x), rtol=1e-5, atol=1e-6
    )


def test_image_input_is_preprocessed_with_the_manifest_spec(stub, model_repo, digit_png):
    images = [digit_png(1), digit_png(2, size=40)]
    request = pb.ModelInferRequest(model_name="lenet5")
    add_input(request, "image", images)
    logits = output_array(stub.ModelInfer(request, timeout=30), "logits")
    expected = direct(model_repo, "lenet5", np.stack([preprocess_bytes(b, DIGITS_INPUT) for b in images]))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    # [N, 1] is accepted too, and so are typed bytes contents
    request = pb.ModelInferRequest(model_name="lenet5")
    request.inputs.add(name="image", datatype="BYTES", shape=[2, 1]).contents.bytes_contents.extend(images)
    np.testing.assert_allclose(
        output_array(stub.ModelInfer(request, timeout=30), "logits"), expected, rtol=1e-5, atol=1e-6
    )


def test_classification_extension(stub, model_repo):
    x = batch(3, seed=4)
    request = pb.ModelInferRequest(model_name="lenet5")
    add_input(request, "input", x)
    request.outputs.add(name="logits").parameters["classification"].int64_param = 3
    response = stub.ModelInfer(request, timeout=30)
    out = response.outputs[0]
    assert (out.name, out.datatype, list(out.shape)) == ("logits", "BYTES", [3, 3])
    table = output_array(response, "logits")
    logits = direct(model_repo, "lenet5", x)
    for row, entries in zip(logits, table, strict=True):
        top = np.argsort(-row)[:3]
        parsed = [e.decode().split(":") for e in entries]
        assert [int(p[1]) for p in parsed] == top.tolist()
        assert [p[2] for p in parsed] == [str(i) for i in top]  # labels.txt of LeNet-5: "0".."9"
        np.testing.assert_allclose([float(p[0]) for p in parsed], row[top], atol=1e-5)
    request.outputs[0].parameters["classification"].int64_param = 50  # clamped to the 10 classes, as Triton
    assert list(stub.ModelInfer(request, timeout=30).outputs[0].shape) == [3, 10]


def test_torch_backend_matches_the_onnx_artifact(client, model_repo):
    x = batch(4, seed=5)
    np.testing.assert_allclose(
        client.infer("lenet5_torch", x), direct(model_repo, "lenet5", x), rtol=1e-4, atol=1e-5
    )


def test_model_stream_infer(stub, model_repo, digit_png):
    x = batch(1, seed=6)

    def requests():
        for i in range(4):
            r = pb.ModelInferRequest(model_name="lenet5", id=f"s{i}")
            add_input(r, "input", x)
            yield r
        bad = pb.ModelInferRequest(model_name="lenet5", id="bad")
        bad.inputs.add(name="image", datatype="BYTES", shape=[1])
        bad.raw_input_contents.append(serialize_bytes([b"not an image"]))
        yield bad
        yield pb.ModelInferRequest(model_name="missing", id="missing")

    responses = list(stub.ModelStreamInfer(requests(), timeout=60))
    by_id = {r.infer_response.id: r for r in responses}
    assert set(by_id) == {"s0", "s1", "s2", "s3", "bad", "missing"}
    expected = direct(model_repo, "lenet5", x)
    for i in range(4):
        assert by_id[f"s{i}"].error_message == ""
        np.testing.assert_allclose(
            output_array(by_id[f"s{i}"].infer_response, "logits"), expected, rtol=1e-5, atol=1e-6
        )
    assert "input 'image' element 0: cannot decode image" in by_id["bad"].error_message
    assert "unknown model 'missing'" in by_id["missing"].error_message


def test_model_statistics(client):
    before = {s.name: s for s in client.statistics().model_stats}
    assert {"lenet5", "lenet5_torch", "faulty"} <= set(before)
    client.infer("lenet5_nobatch", batch(3))
    after = client.statistics("lenet5_nobatch").model_stats
    assert len(after) == 1
    stats, old = after[0], before["lenet5_nobatch"]
    assert stats.version == "1"
    assert stats.inference_count == old.inference_count + 3  # rows
    assert stats.execution_count == old.execution_count + 1  # batches
    assert stats.inference_stats.success.count == old.inference_stats.success.count + 1
    assert stats.inference_stats.success.ns > old.inference_stats.success.ns
    assert stats.inference_stats.compute_infer.count == old.inference_stats.compute_infer.count + 1
    assert stats.inference_stats.queue.count == old.inference_stats.queue.count + 1
    assert stats.last_inference > 0
    sizes = {b.batch_size: b.compute_infer.count for b in stats.batch_stats}
    assert sizes.get(3, 0) >= 1
    assert client.statistics("lenet5_nobatch", "1").model_stats[0].name == "lenet5_nobatch"


def test_repository_index(client):
    index = {(m.name, m.version): (m.state, m.reason) for m in client.repository_index()}
    for name in ("lenet5", "lenet5_batched", "lenet5_torch", "faulty"):
        assert index[(name, "1")] == ("READY", "")
    assert all(m.state == "READY" for m in client.repository_index(ready_only=True))


def test_load_and_unload_need_explicit_mode(stub):
    for call, request in (
        (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="lenet5")),
        (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="lenet5")),
    ):
        with pytest.raises(Exception) as info:
            call(request, timeout=10)
        assert info.value.code().name == "FAILED_PRECONDITION"
        assert "--model-control-mode none; use explicit" in info.value.details()
