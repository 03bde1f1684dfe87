"""The HTTP/REST routes besides inference, against the shared server: health, server and model metadata,
Triton's model configuration JSON, statistics and the repository index, each compared with what the gRPC
port answers; and the settings that turn the port on and off."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from protos import model_config_pb2 as mc
from service.settings import Settings, SettingsError, load_settings


def test_health_routes(server):
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/lenet5/ready",
        "/v2/models/lenet5/versions/1/ready",
    ):
        answer = server.http("GET", path)
        assert (answer.status, answer.body) == (200, b""), path
    for path, shown in (
        ("/v2/models/ghost/ready", "'ghost'"),
        ("/v2/models/lenet5/versions/9/ready", "'lenet5' version 9"),
    ):
        answer = server.http("GET", path)
        assert answer.status == 400, path
        assert answer.json() == {"error": f"model {shown} is not ready"}


def test_server_metadata(server, client):
    document = server.http("GET", "/v2").json()
    grpc_meta = client.server_metadata()
    assert (
        (document["name"], document["version"])
        == (grpc_meta.name, grpc_meta.version)
        == ("cnnserve", grpc_meta.version)
    )
    # the HTTP port adds Triton's binary tensor data extension to the data plane's
    assert document["extensions"] == [*grpc_meta.extensions, "binary_tensor_data"]
    assert {"classification", "model_repository", "statistics"} <= set(document["extensions"])


@pytest.mark.parametrize("path", ["/v2/models/lenet5", "/v2/models/lenet5/versions/1"])
def test_model_metadata(server, client, path):
    document = server.http("GET", path).json()
    assert document == {
        "name": "lenet5",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [-1, 1, 32, 32]},
            {"name": "pixels", "datatype": "UINT8", "shape": [-1, 32, 32, 1]},
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    grpc_meta = client.model_metadata("lenet5")
    assert [(t.name, list(t.shape)) for t in grpc_meta.inputs] == [
        (t["name"], t["shape"]) for t in document["inputs"]
    ]


def test_model_config_is_tritons_json_form(server, client):
    document = server.http("GET", "/v2/models/lenet5_batched/config").json()
    # proto field names, enums by name, 64-bit integers as numbers, defaults written out
    assert document["name"] == "lenet5_batched" and document["max_batch_size"] == 8
    first = document["input"][0]
    assert (first["name"], first["data_type"], first["format"], first["dims"]) == (
        "input",
        "TYPE_FP32",
        "FORMAT_NCHW",
        [1, 32, 32],
    )
    assert first["is_shape_tensor"] is False and first["optional"] is False
    assert [i["name"] for i in document["input"]] == ["input", "pixels", "image"]
    image = document["input"][2]
    assert (image["data_type"], image["dims"], image["reshape"], image["optional"]) == (
        "TYPE_STRING",
        [1],
        {"shape": []},
        True,
    )
    assert document["output"][0]["label_filename"] == "labels.txt"
    assert document["dynamic_batching"]["max_queue_delay_microseconds"] == 300_000
    # nothing lost: it parses back into the configuration the gRPC port sends
    parsed = json_format.ParseDict(document, mc.ModelConfig())
    assert parsed == client.model_config("lenet5_batched")
    same_version = server.http("GET", "/v2/models/lenet5_batched/versions/1/config").json()
    assert same_version == document


def test_statistics_routes(server, client):
    everything = server.http("GET", "/v2/models/stats").json()["model_stats"]
    grpc_all = client.statistics().model_stats
    assert sorted((m["name"], m["version"]) for m in everything) == sorted(
        (m.name, m.version) for m in grpc_all
    )
    (one,) = server.http("GET", "/v2/models/lenet5_nobatch/stats").json()["model_stats"]
    (versioned,) = server.http("GET", "/v2/models/lenet5_nobatch/versions/1/stats").json()["model_stats"]
    (grpc_one,) = client.statistics("lenet5_nobatch").model_stats
    for document in (one, versioned):
        assert (document["name"], document["version"]) == ("lenet5_nobatch", "1")
        assert document["inference_count"] == grpc_one.inference_count  # numbers, not strings
        assert document["execution_count"] == grpc_one.execution_count
        keys = {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output"}
        assert set(document["inference_stats"]) == {*keys, "cache_hit", "cache_miss"}
        assert document["inference_stats"]["success"]["count"] == grpc_one.inference_stats.success.count
        assert [b["batch_size"] for b in document["batch_stats"]] == [
            b.batch_size for b in grpc_one.batch_stats
        ]
    missing = server.http("GET", "/v2/models/ghost/stats")
    assert missing.status == 404 and "unknown model 'ghost'" in missing.json()["error"]


def test_repository_index(server, client):
    everything = server.http("POST", "/v2/repository/index")
    assert everything.status == 200
    index = everything.json()
    assert isinstance(index, list)
    assert index == [
        {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
        for m in client.repository_index()
    ]
    assert {"name": "lenet5", "version": "1", "state": "READY", "reason": ""} in index
    ready = server.http("POST", "/v2/repository/index", {"ready": True}).json()
    assert ready == [m for m in index if m["state"] == "READY"]
    wrong = server.http("POST", "/v2/repository/index", {"ready": "yes"})
    assert wrong.status == 400 and wrong.json() == {
        "error": "repository index: 'ready' must be a boolean, got a string"
    }


def test_model_control_outside_explicit_mode_is_refused(server):
    for action in ("load", "unload"):
        answer = server.http("POST", f"/v2/repository/models/lenet5/{action}")
        assert answer.status == 400, action
        assert (
            f"cannot {action} models: the server runs with --model-control-mode none"
            in answer.json()["error"]
        )


def test_unknown_routes_and_methods(server):
    for path in ("/", "/v2/nothing", "/v2/models/lenet5/versions/1/explain", "/v2/repository/models/lenet5"):
        answer = server.http("GET", path)
        assert (answer.status, answer.json()) == (404, {"error": "Not Found"}), path
    wrong = server.http("GET", "/v2/models/lenet5/infer")
    assert (wrong.status, wrong.json(), wrong.headers["allow"]) == (
        405,
        {"error": "Method Not Allowed"},
        "POST",
    )
    assert server.http("POST", "/v2/health/live").status == 405


def test_http_port_settings():
    assert Settings().http_port == 8000
    assert load_settings([], env={"SERVE_HTTP_PORT": "0"}).http_port == 0  # off
    assert load_settings(["--http-port", "9000"], env={"SERVE_HTTP_PORT": "0"}).http_port == 9000
    with pytest.raises(
        SettingsError, match=r"--http-port / SERVE_HTTP_PORT must be a port number 0\.\.65535"
    ):
        load_settings(["--http-port", "65536"], env={})


def test_http_port_off(model_repo, server_factory):
    server = server_factory(model_repo, "--http-port", "0", "--model-control-mode", "explicit")
    assert server.http_url is None
    assert "HTTP/REST" not in server.log()
    assert server.client().live()
