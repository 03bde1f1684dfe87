"""The server's lifecycle under load: SIGTERM with requests in flight (all answered, exit 0), new versions
rolled in and old ones removed from disk while clients call (no failed request, every answer from the
version it names), load/unload cycles with cancelled calls among them (the other models unaffected, the
end state consistent), and unloading that gives the model's memory back.

tests/service/test_server_lifecycle.py has the plain cases (explicit load and unload once); these put
them under traffic and repeat them. The drain and poll mode's version roll are tested here only (a
repository that goes missing or empty: test_fault_repository.py).
"""

from __future__ import annotations

import random
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from harness.repository import copy_entry, probe_inputs, rewrite_probe
from modelrepo.config import read_config, write_config
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from service.client import InferenceClient, InferenceServerError
from tests.reliability.fault_kit import (
    MODEL,
    Reference,
    assert_alive_and_correct,
    health_status,
    health_url,
    http_status,
    metrics_text,
    rss_bytes,
    wait_for,
    x,
)

OK, NOT_FOUND, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE
CANCELLED = grpc.StatusCode.CANCELLED


class Traffic:
    """Threads that call ``model`` (``version``) until stopped (or ``limit_s`` pass), each answer checked
    against ``expect(version_answered)`` and recorded as (time, status, version answered)."""

    def __init__(
        self, address: str, model: str, threads: int, expect, version: str = "", limit_s: float = 120
    ):
        self.address, self.model, self.version, self.expect = address, model, version, expect
        self.stop = threading.Event()
        self.limit_s = limit_s
        self.records: list[tuple[float, grpc.StatusCode, str]] = []
        self.answers: list[tuple[float, float, str]] = []  # (sent, answered, version) of each OK
        self.wrong: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, seed: int) -> None:
        data = x(2, 100 + seed)
        started = time.monotonic()
        with InferenceClient(self.address, timeout=30) as client:
            while not self.stop.is_set() and time.monotonic() - started < self.limit_s:
                request = pb.ModelInferRequest(model_name=self.model, model_version=self.version)
                request.inputs.add(name="input", datatype="FP32", shape=data.shape)
                request.raw_input_contents.append(data.tobytes())
                sent = time.monotonic()
                try:
                    response = client.infer_request(request, timeout=30)
                except InferenceServerError as e:
                    self.records.append((time.monotonic(), e.code, e.details))
                    continue
                answered = time.monotonic()
                self.answers.append((sent, answered, response.model_version))
                got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 10)
                expected = self.expect(response.model_version)(data)
                if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
                    self.wrong.append(f"version {response.model_version}: {got[0, :3]} vs {expected[0, :3]}")
                self.records.append((time.monotonic(), OK, response.model_version))

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def codes(self) -> set[grpc.StatusCode]:
        return {code for _, code, _ in self.records}

    def versions(self) -> list[str]:
        return [v for _, code, v in self.records if code == OK]

    def sent_after_first(self, version: str) -> set[str]:
        """The versions that answered requests sent after ``version`` first answered one. (Answers are
        recorded after their check, so the order of ``records`` may swap two answers of that moment.)"""
        first = min(answered for _, answered, v in self.answers if v == version)
        return {v for sent, _, v in self.answers if sent > first}


# ------------------------------------------------------------------------------------------ SIGTERM


def test_sigterm_with_requests_in_flight_answers_them_all_and_exits_0(
    lenet5_dir, server_factory, tmp_path, reference
):
    """The drain, over both front ends: requests accepted before SIGTERM (gRPC and HTTP) are all answered
    and the server exits 0; while it drains, readiness is off on every health surface (the health port,
    the metrics port, the main ports' own health RPCs and paths, each model's) and liveness on, and new
    requests are refused: gRPC UNAVAILABLE, HTTP 503 with ``Connection: close``. A call that reaches the
    server in the instant its transport closes (after the last accepted request is answered) is
    cancelled by gRPC itself: CANCELLED, which this test allows at that moment only (readiness turned off
    long before: a load balancer has stopped sending)."""
    repo = tmp_path / "repo"
    copy_entry(lenet5_dir, repo, MODEL)
    held, held_http = 24, 3  # requests queued in `slow` (it waits 4 s for company) when SIGTERM arrives
    copy_entry(
        lenet5_dir,
        repo,
        "slow",
        max_batch_size=32,
        preferred_batch_sizes=(),
        max_queue_delay_microseconds=4_000_000,
    )
    server = server_factory(repo, "--grace-period", "20")
    client = server.client(timeout=30)
    inputs = [x(1, seed) for seed in range(held)]
    infer_http = "/v2/models/slow/infer"
    row = {"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": x(1, 99).ravel().tolist()}
    answered: list[float] = []
    with (
        Traffic(server.address, MODEL, 3, lambda _: reference) as traffic,
        ThreadPoolExecutor(held + held_http) as pool,
    ):
        wait_for(lambda: len(traffic.records) > 20, 30, "traffic to flow")
        queued = [pool.submit(client.infer, "slow", data) for data in inputs]
        queued_http = [
            pool.submit(server.http, "POST", infer_http, {"inputs": [row]}) for _ in range(held_http)
        ]
        for future in queued:
            future.add_done_callback(lambda _: answered.append(time.monotonic()))
        gauge = f'cnnserve_inflight_requests{{model="slow",version="1"}} {float(held + held_http)}'
        wait_for(lambda: gauge in metrics_text(server), 30, f"{held + held_http} requests in flight")
        server.proc.send_signal(signal.SIGTERM)
        # draining: readiness off everywhere, liveness on, new requests refused
        wait_for(
            lambda: health_status(server.health_address, "") == "NOT_SERVING", 10, "readiness to turn off"
        )
        for service in ("inference.GRPCInferenceService", "slow"):
            assert health_status(server.health_address, service) == "NOT_SERVING", service
        assert health_status(server.health_address, "liveness") == "SERVING"
        assert http_status(health_url(server, "/v2/health/ready")) == 400
        assert http_status(health_url(server, "/v2/health/live")) == 200
        assert client.live() and not client.ready()  # the gRPC port's own health RPCs
        for path, status in (
            ("/v2/health/ready", 400),
            ("/v2/health/live", 200),
            ("/v2/models/slow/ready", 400),
        ):
            assert server.http("GET", path).status == status, path  # the HTTP port's
        refused = server.http("POST", infer_http, {"inputs": [row]})
        assert refused.status == 503 and "server is shutting down" in refused.json()["error"]
        assert refused.headers["connection"] == "close"  # go elsewhere
        try:
            client.infer("slow", inputs[0])
            raise AssertionError("a request sent while draining was served")
        except InferenceServerError as e:
            assert e.code == UNAVAILABLE and "server is shutting down" in e.details, e
        assert not any(f.done() for f in queued + queued_http), "the queued requests ran before the drain"
        answers = [f.result(timeout=30) for f in queued]
        answers_http = [f.result(timeout=30) for f in queued_http]
        assert server.proc.wait(timeout=30) == 0
    for data, got in zip(inputs, answers, strict=True):
        np.testing.assert_allclose(got, reference(data), rtol=1e-4, atol=1e-5)
    assert [(a.status, a.json()["outputs"][0]["shape"]) for a in answers_http] == [(200, [1, 10])] * held_http
    assert not traffic.wrong and UNAVAILABLE in traffic.codes()
    others = [r for r in traffic.records if r[1] not in (OK, UNAVAILABLE)]
    assert all(code == CANCELLED and t >= min(answered) for t, code, _ in others), others[:5]
    refused = [details for _, code, details in traffic.records if code == UNAVAILABLE]
    assert all("shutting down" in d or "connect" in d.lower() or "closed" in d for d in refused), refused[:3]
    assert "shutting down: draining" in server.log() and "Traceback" not in server.log()


# --------------------------------------------------------------------------------------- version roll


def scaled_version(source: Path, target: Path, factor: float) -> tuple[Path, Reference]:
    """A staged copy of the version folder ``source`` whose last layer's weights and bias are multiplied by
    ``factor`` (other answers, same shapes), its manifest's sha256 updated, next to ``target`` (rename it
    there to publish it); returns the staged folder and its reference."""
    import hashlib
    import json

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source / "model.onnx"))
    last = model.graph.node[-1]
    for name in last.input:
        for i, init in enumerate(model.graph.initializer):
            if init.name == name:
                array = numpy_helper.to_array(init) * np.float32(factor)
                model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
    staging = target.parent / f".staging-{target.name}"
    shutil.copytree(source, staging)
    onnx.save(model, str(staging / "model.onnx"))
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256((staging / "model.onnx").read_bytes()).hexdigest()
    (staging / "manifest.json").write_text(json.dumps(manifest))
    reference = Reference(staging / "model.onnx")
    rewrite_probe(staging, {"model.onnx": reference(probe_inputs(staging))})
    return staging, reference


def test_versions_rolled_in_and_old_ones_removed_under_load(lenet5_dir, server_factory, tmp_path, reference):
    repo = tmp_path / "repo"
    model_dir = copy_entry(lenet5_dir, repo, MODEL)
    config = read_config(model_dir)
    config.version_policy.latest.num_versions = 2  # the newest two serve: v1 stays until removed
    write_config(model_dir, config)
    staged = {
        v: scaled_version(model_dir / "1", model_dir / str(v), factor) for v, factor in ((2, 2.0), (3, 3.0))
    }
    references = {"1": reference, **{str(v): ref for v, (_, ref) in staged.items()}}
    server = server_factory(repo, "--model-control-mode", "poll", "--poll-interval", "0.3")

    def expect(version: str):
        return references[version]

    with (
        Traffic(server.address, MODEL, 4, expect) as latest,
        Traffic(server.address, MODEL, 2, expect, version="1") as pinned,
    ):
        wait_for(lambda: len(latest.records) > 20, 30, "traffic to flow")
        staged[2][0].rename(model_dir / "2")  # one rename: the version appears whole
        wait_for(lambda: latest.versions()[-5:] == ["2"] * 5, 30, "version 2 to take the traffic")
        removed_at = time.monotonic()
        (model_dir / "1").rename(tmp_path / "old-1")  # the old version leaves the repository
        wait_for(lambda: pinned.codes() >= {NOT_FOUND}, 30, "version 1 to be unloaded")
        staged[3][0].rename(model_dir / "3")
        wait_for(lambda: latest.versions()[-5:] == ["3"] * 5, 30, "version 3 to take the traffic")
        shutil.rmtree(model_dir / "2")
        wait_for(lambda: "unloaded lenet5 version 2" in server.log(), 30, "version 2 to be unloaded")
        count = len(latest.records)
        wait_for(lambda: len(latest.records) > count + 20, 30, "traffic after the last change")
    assert latest.codes() == {OK}, [r for r in latest.records if r[1] != OK][:3]
    assert not latest.wrong and not pinned.wrong, (latest.wrong + pinned.wrong)[:3]
    first = {v: min(answered for _, answered, version in latest.answers if version == v) for v in "123"}
    assert first["1"] < first["2"] < first["3"]
    assert "1" not in latest.sent_after_first("2"), "version 1 answered after version 2 took over"
    assert latest.sent_after_first("3") == {"3"}, "an older version answered after version 3 took over"
    # pinned to version 1: answered by it until it was removed, then NOT_FOUND, never anything else
    assert pinned.codes() == {OK, NOT_FOUND}
    first_missing = min(t for t, code, _ in pinned.records if code == NOT_FOUND)
    assert first_missing > removed_at
    # (an answer is recorded after its check, so compare when the OK ones were sent)
    assert all(sent < first_missing for sent, _, _ in pinned.answers), "version 1 answered after it was gone"
    client = server.client()
    assert [(m.name, m.version, m.state) for m in client.repository_index()] == [(MODEL, "3", "READY")]
    # a model whose folder leaves the repository (another model still on disk) is unloaded
    copy_entry(lenet5_dir, repo, "other")
    wait_for(lambda: client.model_ready("other"), 30, "the other model to load")
    shutil.rmtree(model_dir)
    wait_for(lambda: not client.model_ready(MODEL), 30, f"{MODEL} to be unloaded")
    assert f"model {MODEL} left the repository: unloading" in server.log()
    assert "Traceback" not in server.log()


# ------------------------------------------------------------------------------------ load / unload


def test_load_unload_cycles_with_cancelled_calls_leave_a_consistent_state(
    lenet5_dir, server_factory, tmp_path, reference
):
    repo = tmp_path / "repo"
    copy_entry(lenet5_dir, repo, MODEL)
    copy_entry(lenet5_dir, repo, "cycled")
    server = server_factory(repo, "--model-control-mode", "explicit", "--load-model", MODEL)
    client = server.client(timeout=60)
    rng = random.Random(7)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def call(op: str, timeout: float) -> grpc.StatusCode:
            try:
                if op == "load":
                    stub.RepositoryModelLoad(
                        pb.RepositoryModelLoadRequest(model_name="cycled"), timeout=timeout
                    )
                else:
                    stub.RepositoryModelUnload(
                        pb.RepositoryModelUnloadRequest(model_name="cycled"), timeout=timeout
                    )
            except grpc.RpcError as e:
                return e.code()
            return OK

        with (
            Traffic(server.address, MODEL, 2, lambda _: reference) as steady,
            Traffic(server.address, "cycled", 2, lambda _: reference) as cycled,
        ):
            outcomes = []
            for _ in range(24):  # whole cycles and calls cancelled half-way (their change still completes)
                op = rng.choice(("load", "unload"))
                timeout = rng.choice((60, 60, 0.005, 0.05))
                outcomes.append((op, timeout, call(op, timeout)))
            # every change has completed once a fresh load answers (changes to a model run in order)
            assert call("load", 60) == OK
            assert client.model_ready("cycled")
            assert call("unload", 60) == OK
            assert call("load", 60) == OK
    assert {code for _, t, code in outcomes if t == 60} == {OK}, outcomes
    assert {code for _, t, code in outcomes if t < 1} <= {OK, grpc.StatusCode.DEADLINE_EXCEEDED}, outcomes
    assert steady.codes() == {OK} and not steady.wrong and len(steady.records) > 50
    assert cycled.codes() <= {OK, NOT_FOUND} and OK in cycled.codes() and not cycled.wrong, cycled.codes()
    states = {(m.name, m.version, m.state) for m in client.repository_index()}
    assert states == {(MODEL, "1", "READY"), ("cycled", "1", "READY")}
    assert health_status(server.health_address, "cycled") == "SERVING" and client.ready()
    np.testing.assert_allclose(client.infer("cycled", x(2, 5)), reference(x(2, 5)), rtol=1e-4, atol=1e-5)
    assert "Traceback" not in server.log()
    assert_alive_and_correct(server, reference)


def deep_onnx(path: Path, layers: int = 64) -> None:
    """A LeNet-shaped classifier ([N, 1, 32, 32] -> [N, 10]) of ``layers`` 512x512 linear layers: 1 MB of
    weights each, like the many mid-sized tensors of a real CNN (a single huge tensor would be mapped
    and unmapped on its own, and show nothing of how the allocator keeps the rest)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.05, (1024, 512)).astype(np.float32), "w0")]
    nodes = [helper.make_node("Flatten", ["input"], ["h0"], axis=1)]
    nodes.append(helper.make_node("MatMul", ["h0", "w0"], ["m0"]))
    for i in range(1, layers):
        weights.append(numpy_helper.from_array(rng.normal(0, 0.05, (512, 512)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Relu", [f"m{i - 1}"], [f"h{i}"]))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]))
    weights.append(numpy_helper.from_array(rng.normal(0, 0.05, (512, 10)).astype(np.float32), "out"))
    nodes.append(helper.make_node("MatMul", [f"m{layers - 1}", "out"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "deep",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_unloading_gives_the_memory_back(server_factory, tmp_path):
    """Six unload/load cycles of a model holding 64 MB of weights in 1 MB tensors. What an unload frees
    must go back to the OS, not stay in the allocator's arenas, where the next loads do not reuse all of
    it and RSS creeps up by a part of a model per cycle (resnet18: from 180 to 700 MB over 50 cycles,
    BENCHMARKS.md). The tolerance: the lowest RSS after the last three unloads may exceed the RSS after
    the first by at most a quarter of what one load adds; a leak or retention raises every reading, a
    passing allocation only one (readings after an unload vary by about one load here)."""
    from harness.repository import add_model
    from models.lenet import DIGIT_LABELS, DIGITS_INPUT

    artifact = tmp_path / "deep.onnx"
    deep_onnx(artifact)
    repo = tmp_path / "repo"
    add_model(
        repo, "fat", artifact, spec=DIGITS_INPUT, labels=DIGIT_LABELS, source_model="fat", max_batch_size=8
    )
    server = server_factory(repo, "--model-control-mode", "explicit", "--load-model", "fat")
    client = server.client(timeout=60)
    pid = server.proc.pid
    loaded, unloaded = [], []
    for _ in range(6):
        assert client.infer("fat", x(4)).shape == (4, 10)
        loaded.append(rss_bytes(pid))
        client.unload("fat")
        unloaded.append(rss_bytes(pid))
        client.load("fat")
    footprint = np.median(np.array(loaded) - np.array(unloaded))
    mb = [round(v / 2**20) for v in unloaded]
    assert footprint > 48 * 2**20, (
        f"one load adds only {footprint / 2**20:.0f} MB: the test cannot see a leak"
    )
    growth = min(unloaded[-3:]) - unloaded[0]
    print(f"RSS after each unload (MB): {mb}; one load adds {footprint / 2**20:.0f} MB")
    assert growth < footprint / 4, (
        f"RSS after each unload (MB): {mb}, one load adds {footprint / 2**20:.0f} MB: "
        f"the memory of unloaded versions stays with the server"
    )
    assert client.infer("fat", x(2)).shape == (2, 10)
