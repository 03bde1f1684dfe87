"""Model names from clients: checked before any file is looked at, on every path that takes one, and a
load of an unknown name changes nothing (readiness, the manager's and the health state's tables)."""

from __future__ import annotations

import asyncio
import sys
import threading

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from service.errors import InvalidInput, ModelNotFound
from service.serving import ModelManager
from service.serving.model_names import MAX_NAME_BYTES, check_model_name
from service.settings import Settings
from service.telemetry.prometheus import ServerMetrics
from tests.service.inprocess import run, serving

BAD_NAMES = {
    "parent": "..",
    "self": ".",
    "root": "/",
    "nested": "lenet5/1",
    "climbing": "../lenet5",
    "nul": "len\0et5",
    "control character": "lenet\n5",
    "lone surrogate": "\ud800",
    "too long": "m" * (MAX_NAME_BYTES + 1),
    "too many bytes": "é" * (MAX_NAME_BYTES // 2 + 1),  # 128 characters, 256 bytes
    "empty": "",
}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_names_that_cannot_be_a_model_folder_are_refused(name):
    with pytest.raises(InvalidInput) as info:
        check_model_name(name)
    assert len(info.value.message) < 200  # the name is clipped, not echoed whole


@pytest.mark.parametrize("name", ["lenet5", "resnet50_fp16", "a" * MAX_NAME_BYTES, "modèle 2", ".hidden"])
def test_names_of_one_path_component_pass(name):
    assert check_model_name(name) == name


class FileAccess:
    """Paths the interpreter opened or listed while ``recording`` (audit events), in this thread or any
    other (the manager looks at files on worker threads)."""

    EVENTS = frozenset({"open", "os.listdir", "os.scandir", "os.walk", "os.stat"})

    def __init__(self) -> None:
        self.recording = False
        self.paths: list[str] = []
        self._lock = threading.Lock()
        sys.addaudithook(self._hook)  # a hook cannot be removed: it records only while asked to

    def _hook(self, event: str, args: tuple) -> None:
        if self.recording and event in self.EVENTS:
            with self._lock:
                self.paths.append(str(args[0]) if args else "")


@pytest.fixture(scope="module")
def file_access() -> FileAccess:
    return FileAccess()


def explicit_manager(repo) -> ModelManager:
    return ModelManager(Settings(repo=repo, model_control_mode="explicit"), ServerMetrics(gpu=False))


@pytest.mark.parametrize("name", ["..", "/", "m" * 4096, "a/b"])
def test_bad_names_touch_no_file(tmp_path, file_access, name):
    repo = tmp_path / "repo"
    repo.mkdir()
    m = explicit_manager(repo)

    async def main():
        file_access.recording = True
        try:
            for call in (m.load, m.unload):
                with pytest.raises(InvalidInput):
                    await call(name)
            with pytest.raises(InvalidInput):
                m.resolve(name)
        finally:
            file_access.recording = False
        await m.close(timeout=5)

    run(main())
    assert file_access.paths == []


def test_a_load_of_an_unknown_name_changes_nothing(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    m = explicit_manager(repo)

    async def main():
        for name in ("nope", "x" * MAX_NAME_BYTES):
            with pytest.raises(ModelNotFound):
                await m.load(name)
            with pytest.raises(ModelNotFound):
                await m.unload(name)
        await m.close(timeout=5)

    run(main())
    assert m.ready and m.failed() == [] and m.index() == []
    assert (m._records, m._locks) == ({}, {})  # nothing kept of the names


ROUTES = {  # (method, path template) of every HTTP route that takes a model name
    "load": ("POST", "/v2/repository/models/{}/load"),
    "unload": ("POST", "/v2/repository/models/{}/unload"),
    "infer": ("POST", "/v2/models/{}/infer"),
    "metadata": ("GET", "/v2/models/{}"),
    "ready": ("GET", "/v2/models/{}/ready"),
    "config": ("GET", "/v2/models/{}/config"),
    "stats": ("GET", "/v2/models/{}/stats"),
    "version metadata": ("GET", "/v2/models/{}/versions/1"),
}
INFER_BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [0]}]}


def test_http_routes_answer_400_for_bad_names_and_404_for_unknown_ones(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    quoted = {"parent": "%2E%2E", "nul": "a%00b", "too long": "m" * 300, "control": "a%01b"}

    async def main():
        answers = {}
        async with serving(repo, "--model-control-mode", "explicit") as s:
            for route, (method, template) in ROUTES.items():
                body = INFER_BODY if route == "infer" else None
                for what, name in [*quoted.items(), ("unknown", "nope")]:
                    answer = await s.http.request(method, template.format(name), json=body)
                    answers[route, what] = answer.status_code, answer.json()["error"]
            ready = (await s.http.get("/v2/health/ready")).status_code
        return answers, ready

    answers, ready = run(main())
    for (route, what), (status, message) in answers.items():
        if what == "unknown":
            expected = 400 if route == "ready" else 404  # Triton: a model that is not ready is 400
            assert status == expected, (route, message)
            assert "'nope'" in message, route
        else:
            assert status == 400, (route, what, message)
            assert len(message) < 200, (route, what)
            if route != "ready":
                assert "model name" in message, (route, what, message)
    assert ready == 200  # the typos took nothing out of service


def test_grpc_rpcs_answer_invalid_argument_for_bad_names_and_not_found_for_unknown_ones(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    calls = {
        "load": lambda stub, n: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=n)),
        "unload": lambda stub, n: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=n)),
        "infer": lambda stub, n: stub.ModelInfer(pb.ModelInferRequest(model_name=n)),
        "metadata": lambda stub, n: stub.ModelMetadata(pb.ModelMetadataRequest(name=n)),
        "ready": lambda stub, n: stub.ModelReady(pb.ModelReadyRequest(name=n)),
        "config": lambda stub, n: stub.ModelConfig(pb.ModelConfigRequest(name=n)),
        "stats": lambda stub, n: stub.ModelStatistics(pb.ModelStatisticsRequest(name=n)),
    }

    async def code_of(call) -> grpc.StatusCode:
        try:
            await call
        except grpc.aio.AioRpcError as e:
            assert len(e.details()) < 200
            return e.code()
        return grpc.StatusCode.OK

    async def main():
        codes = {}
        async with serving(repo, "--model-control-mode", "explicit", grpc_port=True) as s:
            names = {"root": "/", "parent": "..", "long": "m" * 70_000, "unknown": "nope"}
            for rpc, call in calls.items():
                for what, name in names.items():
                    codes[rpc, what] = await code_of(call(s.stub, name))
            ready = (await s.stub.ServerReady(pb.ServerReadyRequest())).ready
        return codes, ready

    codes, ready = run(main())
    for (rpc, what), code in codes.items():
        if what != "unknown":
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (rpc, what)
        elif rpc == "ready":
            assert code == grpc.StatusCode.OK, rpc  # ready: false
        else:
            assert code == grpc.StatusCode.NOT_FOUND, (rpc, code)
    assert ready


def test_a_known_model_that_fails_to_load_still_makes_the_server_unready(tmp_path):
    """Triton's rule, kept: unready until the model is fixed or unloaded."""
    repo = tmp_path / "repo"
    (repo / "broken").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text("this is not a model config")

    async def main():
        async with serving(repo, "--model-control-mode", "explicit") as s:
            load = await s.http.post("/v2/repository/models/broken/load")
            unready = (await s.http.get("/v2/health/ready")).status_code
            await s.http.post("/v2/repository/models/broken/unload")
            ready = (await s.http.get("/v2/health/ready")).status_code
        return load.status_code, unready, ready

    assert run(main()) == (500, 400, 200)


def test_unknown_startup_models_keep_the_server_unready(tmp_path):
    """Names the operator asks for (--load-model) should serve: unknown ones are failures, not typos."""
    repo = tmp_path / "repo"
    repo.mkdir()

    async def main():
        async with serving(repo, "--model-control-mode", "explicit", "--load-model", "nope") as s:
            return s.server.health.ready, s.server.manager.failed()

    assert run(main()) == (False, ["nope"])


def test_loads_of_unknown_names_in_parallel_leave_no_lock_behind(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    m = explicit_manager(repo)

    async def main():
        results = await asyncio.gather(*(m.load(f"typo{i}") for i in range(50)), return_exceptions=True)
        await m.close(timeout=5)
        return results

    assert all(isinstance(r, ModelNotFound) for r in run(main()))
    assert m._locks == {} and m.ready
