"""The peer harness without a peer: the venv cache (completion marker, lock, unreachable registry), the
config and settings it writes, the model description read from an ONNX file."""

from __future__ import annotations

import threading
import time

import pytest
from google.protobuf import text_format

from harness.peers import OnnxModel, PeerUnavailable, mlserver, triton
from harness.peers.install import MARKER, BasePython, VenvSpec, ensure_venv
from protos import model_config_pb2 as mc

pytestmark = pytest.mark.peers


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNSERVE_PEERS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_half_built_venv_is_rebuilt_once_for_concurrent_callers(cache):
    # "pip" is already in a fresh venv: pip answers without the network
    spec = VenvSpec("harness-test", ("pip",), BasePython.find())
    spec.path.mkdir(parents=True)
    (spec.path / "leftover").write_text("an interrupted build")
    assert spec.installed() is None  # no marker: not installed
    builds, records = [], []

    def post_install(s: VenvSpec) -> dict:
        builds.append(s.key)
        time.sleep(0.5)  # hold the lock while the other caller arrives
        return {"checked": True}

    threads = [
        threading.Thread(target=lambda: records.append(ensure_venv(spec, post_install=post_install)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert builds == [spec.key]
    assert sorted(r["built_now"] for r in records) == [False, True]
    assert all(r["checked"] and r["requirements"] == ["pip"] for r in records)
    assert not (spec.path / "leftover").exists() and (spec.path / MARKER).is_file()
    assert spec.path.parent == cache and spec.key.startswith("harness-test-py")
    assert ensure_venv(spec)["built_now"] is False


def test_unreachable_registry_fails_fast(cache, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # no configured mirrors or wheel folders
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    spec = VenvSpec("harness-test", (mlserver.MLSERVER,), BasePython.find())
    started = time.monotonic()
    with pytest.raises(PeerUnavailable, match="installing harness-test") as error:
        ensure_venv(spec)
    assert time.monotonic() - started < 120
    assert mlserver.MLSERVER in error.value.reason
    assert spec.installed() is None  # the half-built venv does not count


def test_onnx_model_reads_names_and_shapes(lenet5_export):
    model = OnnxModel.from_onnx(lenet5_export["fp32"].artifact, max_batch_size=16)
    assert (model.name, model.input_name, model.output_name) == ("lenet5", "input", "logits")
    assert (model.dims, model.classes, model.max_batch_size) == ((1, 32, 32), 10, 16)
    with pytest.raises(ValueError, match="max_batch_size"):
        OnnxModel("m", model.path, (1, 32, 32), 10, max_batch_size=0)


def test_python_model_config_is_a_triton_model_config(tmp_path):
    model = OnnxModel("digits", tmp_path / "model.onnx", (1, 28, 28), 10, max_batch_size=16)
    text = triton.python_model_config(
        model, site_packages=tmp_path, preferred_batch_sizes=(4, 16), max_queue_delay_us=100, instances=2
    )
    config = text_format.Parse(text, mc.ModelConfig())  # our copy of Triton's schema
    assert (config.name, config.backend, config.max_batch_size) == ("digits", "python", 16)
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input", mc.TYPE_FP32, [1, 28, 28])
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [10])]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, mc.ModelInstanceGroup.KIND_CPU)]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["site_packages"] == str(tmp_path) and int(params["intra_op_threads"]) >= 1
    with pytest.raises(ValueError, match="preferred batch sizes"):
        triton.python_model_config(model, site_packages=tmp_path, preferred_batch_sizes=(32,))


def test_mlserver_settings(tmp_path):
    model = OnnxModel("digits", tmp_path / "model.onnx", (1, 28, 28), 10)
    settings = mlserver.model_settings(model, declare_inputs=False)
    assert "inputs" not in settings and "max_batch_size" not in settings  # adaptive batching off
    declared = mlserver.model_settings(model, adaptive_batch_size=4, adaptive_batch_time_s=0.01)
    assert declared["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert (declared["max_batch_size"], declared["max_batch_time"]) == (4, 0.01)
    with pytest.raises(ValueError, match="adaptive batching"):
        mlserver.model_settings(model, adaptive_batch_size=4)
    server = mlserver.server_settings(tmp_path, http=1, grpc=2, metrics=None)
    assert server["parallel_workers"] == 0 and server["metrics_endpoint"] is None
    assert server["host"] == "127.0.0.1"
