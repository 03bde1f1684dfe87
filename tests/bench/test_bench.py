"""The benchmark entry point: registry rules, the ratio arithmetic, the null server as a floor, and quick
runs of the client, delay and protocols sections (real servers on free 127.0.0.1 ports)."""

from __future__ import annotations

import json
import math
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

import bench
from bench import null_server
from bench.__main__ import main as bench_main
from bench.gpu import no_gpu_reason
from bench.peers import _verdicts as peer_verdicts
from bench.peers import ratios as peer_ratios
from bench.protocols import protocol_ratios
from bench.report import update_benchmarks_block
from bench.serve import compute_ratios
from bench.serving import median_point
from loadtest.scrape import scrape
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from service.client import InferenceClient, InferenceServerError

pytestmark = pytest.mark.bench

SECTIONS = {
    "client",
    "client-api",
    "export",
    "export-times",
    "serve-compute",
    "batching",
    "gpu",
    "protocols",
    "peers",
    "delay",
    "inputs",
    "health",
    "reload",
    "soak",
    "hostile",
    "image",
}


def test_sections_register_once():
    sections = bench.load_sections()
    assert set(sections) == SECTIONS
    with pytest.raises(ValueError, match="already registered"):
        bench.register_section("client", "again")(sections["client"].run)


def test_peer_ratios_pair_each_round_with_the_peer_beside_it():
    def point(images):
        return {"images_per_s": images, "p50_ms": 1000 / images}

    # the machine halves its speed in round 2: per-round pairs cancel that out
    measured = {
        "cnnserve|lenet5|grpc|1": [point(1100), point(550), point(1100)],
        "triton|lenet5|grpc|1": [point(1000), point(500), point(1100)],
        "do-nothing|lenet5|grpc|1": [point(2200), point(1100), point(2000)],
        "triton|lenet5|http|1": [point(500), point(500), point(500)],  # no cnnserve point to pair with
        "cnnserve|lenet5|http|8": [point(900)],
        "triton|lenet5|http|8": [point(1000)],
        "triton|resnet18|grpc|8": [point(40)],
    }
    ratios = peer_ratios(measured, "images_per_s")
    assert ratios == {
        "lenet5@c1 grpc vs triton": 1.1,
        "lenet5@c1 grpc vs do-nothing": 0.5,
        "lenet5@c8 http vs triton": 0.9,
    }
    verdicts = peer_verdicts(ratios)
    assert verdicts["lenet5 c=1 grpc: ours / triton >= 1.1"] == "1.10: met"
    assert verdicts["lenet5 c=8 http: ours / triton >= 1.1"] == "0.90: NOT met"
    assert verdicts["lenet5 c=1 http: ours / triton >= 1.1"] == "not measured"
    assert verdicts["resnet18 c=8 grpc: ours / triton >= 1.0"] == "not measured"


def test_server_cpu_counts_the_processes_a_server_starts(tmp_path):
    """Triton runs a Python model in a stub process of its own: its CPU is the server's too."""
    import subprocess
    import sys
    import time

    from bench.serving import process_cpu_seconds

    done = tmp_path / "burnt"
    child = (
        "import time, pathlib\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.4: pass\n"
        f"pathlib.Path({str(done)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    parent = (
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", parent], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done.exists()
        own = Path(f"/proc/{process.pid}/stat").read_text().rpartition(")")[2].split()
        own_seconds = (int(own[11]) + int(own[12])) / os.sysconf("SC_CLK_TCK")
        assert own_seconds < 0.3
        assert process_cpu_seconds(process.pid) >= own_seconds + 0.35
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the parent and the child it started
        process.wait()
    assert process_cpu_seconds(None) is None


def git_commit(ref: str) -> str | None:
    """The commit ``ref`` names in this checkout; None where there is none (or no git checkout)."""
    import subprocess

    from harness.server import ROOT

    found = subprocess.run(["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


def test_compare_measures_an_earlier_commit_against_this_checkout(tmp_path):
    """``python -m bench.compare`` over HTTP, one short round against HEAD: both servers answer every
    request and every point carries its rate and the server's CPU."""
    from bench.compare import main as compare_main

    if git_commit("HEAD") is None:
        pytest.skip("bench.compare needs a git checkout (it extracts the earlier server with git archive)")
    out = tmp_path / "points.json"
    argv = ["--ref", "HEAD", "--rounds", "1", "--concurrency", "1", "--protocol", "http", "--quick"]
    assert compare_main([*argv, "--work", str(tmp_path), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["protocol"] == "http"
    assert set(report["points"]) == {"before|lenet5|1", "after|lenet5|1"}
    for [point] in report["points"].values():
        assert point["requests_per_s"] > 0 and point["errors"] == 0
        assert point["server_cpu_us_per_request"] > 0


def test_compare_extracts_each_commit_into_a_folder_of_its_own(tmp_path):
    """Two refs, two trees: a second comparison against another commit must not reuse the first one's."""
    from bench.compare import extract

    if git_commit("HEAD~1") is None:
        pytest.skip("needs a git checkout with at least two commits")
    head, head_description = extract("HEAD", tmp_path)
    parent, _ = extract("HEAD~1", tmp_path)
    assert head.name == f"baseline-{git_commit('HEAD')[:12]}"
    assert parent.name == f"baseline-{git_commit('HEAD~1')[:12]}"
    assert (head / "service" / "__main__.py").is_file() and (parent / "service" / "__main__.py").is_file()
    short = head_description.split()[0]
    assert git_commit("HEAD").startswith(short)
    assert extract("HEAD", tmp_path)[0] == head  # extracted once
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial-")]


def test_benchmarks_block_is_replaced_in_place(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro\n")
    assert update_benchmarks_block(
        "peers", ["a", "b"], [["1", "2"]], ["a note"], command="cmd", quick=False, path=path
    )
    first = path.read_text()
    assert "<!-- bench:peers:begin -->" in first and "| 1 | 2 |" in first and "- a note" in first
    update_benchmarks_block("peers", ["a", "b"], [["3", "4"]], [], command="cmd", quick=False, path=path)
    second = path.read_text()
    assert (
        second.count("<!-- bench:peers:begin -->") == 1
        and "| 3 | 4 |" in second
        and "| 1 | 2 |" not in second
    )
    assert second.startswith("# Benchmarks\n\nintro\n")
    assert not update_benchmarks_block("peers", ["a"], [["9"]], [], command="cmd", quick=True, path=path)
    assert path.read_text() == second  # smoke runs publish nothing


def test_protocol_ratios_pair_http_with_grpc_round_by_round():
    def point(rps, p50, cpu):
        return {"requests_per_s": rps, "p50_ms": p50, "server_cpu_us_per_request": cpu}

    # the machine halves its speed in round 2: HTTP/gRPC stays 0.8 in every round
    measured = {
        "m/grpc@1": [point(1000, 1.0, 400), point(500, 2.0, 800), point(1000, 1.0, None)],
        "m/http@1": [point(800, 1.2, 500), point(400, 2.4, 1000), point(800, 1.3, 450)],
    }
    ratios = protocol_ratios(measured, "m", 1)
    assert ratios["requests_per_s_http_over_grpc"] == pytest.approx(0.8)
    assert ratios["requests_per_s_http_over_grpc_by_round"] == [0.8, 0.8, 0.8]
    assert ratios["p50_http_over_grpc"] == pytest.approx(1.2)
    assert ratios["p50_http_minus_grpc_ms"] == pytest.approx(0.3)
    assert ratios["server_cpu_http_over_grpc"] == pytest.approx(1.25)  # rounds without a figure left out


def test_compute_ratios_compare_like_with_like_round_by_round():
    def ips(*values):
        return [{"images_per_s": v} for v in values]

    served = {1: ips(40.0, 20.0), 8: ips(45.0, 22.5)}
    inprocess = {
        "server options, batch 1": ips(44.0, 22.0),
        "server options, batch 8": ips(50.0, 25.0),
        "onnxruntime defaults, batch 8": ips(48.0, 30.0),
    }
    ratios = compute_ratios(served, inprocess)
    assert ratios["c1_vs_inprocess_batch1"] == pytest.approx(40 / 44)
    assert ratios["c8_vs_inprocess_batch8"] == 0.9
    assert ratios["best_served_vs_best_inprocess"] == pytest.approx((0.9 + 0.75) / 2)  # median of 2 rounds


def test_median_point_over_rounds():
    rounds = [
        {"requests_per_s": r, "images_per_s": r, "p50_ms": p, "errors": e, "stable": s, "batches": b}
        for r, p, e, s, b in ((100, 1.0, 0, True, {"1": 5}), (300, 3.0, 1, False, {"1": 1, "2": 2}),
                              (200, 2.0, 0, True, {}))
    ]  # fmt: skip
    point = median_point(rounds)
    assert point["requests_per_s"] == 200 and point["p50_ms"] == 2.0
    assert point["errors"] == 1 and point["stable"] is False
    assert point["batches"] == {"1": 6, "2": 2}
    assert point["requests_per_s_by_round"] == [100, 300, 200]


def test_null_server_answers_correctly_shaped_zeros_and_counts_them():
    with (
        null_server.running(model="m", shape=(1, 8, 8), classes=7, max_batch_size=4) as address,
        InferenceClient(address.grpc) as client,
    ):
        out = client.infer("m", np.ones((3, 1, 8, 8), np.float32))
        with pytest.raises(InferenceServerError) as error:
            client.infer("m", np.ones((5, 1, 8, 8), np.float32))
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(InferenceServerError) as error:
            client.infer("other", np.ones((1, 1, 8, 8), np.float32))
        assert error.value.code == grpc.StatusCode.NOT_FOUND
        metrics = scrape(address.metrics_url)
    assert out.shape == (3, 7) and not out.any()
    count = {
        dict(labels)["outcome"]: v
        for (name, labels), v in metrics.items()
        if name == "cnnserve_requests_total" and dict(labels)["model"] in ("m", "_unknown") and v
    }
    assert count == {"success": 1, "invalid_argument": 1, "not_found": 1}
    assert metrics[("cnnserve_batch_size_sum", frozenset({("model", "m"), ("version", "1")}))] == 3


def http_call(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one plain urllib request; error statuses are answers too."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def infer_body(rows: int, binary: bool) -> tuple[bytes, dict]:
    data = np.ones((rows, 1, 8, 8), np.float32)
    tensor = {"name": "input", "shape": list(data.shape), "datatype": "FP32"}
    if not binary:
        return json.dumps({"inputs": [{**tensor, "data": data.ravel().tolist()}]}).encode(), {}
    tensor["parameters"] = {"binary_data_size": data.nbytes}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return header + data.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def test_null_server_http_front_end_answers_like_triton():
    with null_server.running(model="m", shape=(1, 8, 8), classes=7, max_batch_size=4, http=True) as address:
        base = f"{address.http}/v2/models/m"
        status, _, body = http_call(base)
        assert status == 200
        inputs = {t["name"]: (t["datatype"], t["shape"]) for t in json.loads(body)["inputs"]}
        assert inputs == {
            "input": ("FP32", [-1, 1, 8, 8]),
            "pixels": ("UINT8", [-1, 8, 8, 1]),
            "image": ("BYTES", [-1]),
        }
        assert json.loads(http_call(f"{base}/versions/1/config")[2])["max_batch_size"] == 4
        assert http_call(f"{address.http}/v2/health/ready")[0] == http_call(f"{base}/ready")[0] == 200

        status, headers, body = http_call(f"{base}/infer", *infer_body(3, binary=True))
        length = int(headers["inference-header-content-length"])
        output = json.loads(body[:length])["outputs"][0]
        assert status == 200 and output["shape"] == [3, 7] and output["parameters"]["binary_data_size"] == 84
        assert not np.frombuffer(body[length:], np.float32).any() and len(body) - length == 84

        status, _, body = http_call(f"{base}/infer", *infer_body(2, binary=False))
        output = json.loads(body)["outputs"][0]
        assert status == 200 and output["shape"] == [2, 7] and output["data"] == [0.0] * 14

        status, _, body = http_call(f"{base}/infer", *infer_body(5, binary=False))
        assert status == 400 and "outside 1..max_batch_size 4" in json.loads(body)["error"]
        status, _, body = http_call(f"{address.http}/v2/models/other/infer", *infer_body(1, binary=False))
        assert status == 404 and json.loads(body)["error"] == "unknown model 'other'; loaded models: m"
        assert http_call(f"{base}/infer", b"{not json")[0] == 400
        metrics = scrape(address.metrics_url)
    count = {
        dict(labels)["outcome"]: v
        for (name, labels), v in metrics.items()
        if name == "cnnserve_requests_total" and dict(labels)["model"] in ("m", "_unknown") and v
    }
    # (the unparseable body is refused by the codec before any model is named: counted by no model, as on
    # the real server)
    assert count == {"success": 2, "invalid_argument": 1, "not_found": 1}


def test_null_server_mimics_mlserver_and_restricts_inference():
    with null_server.running(
        model="m",
        shape=(1, 8, 8),
        http=True,
        describe_inputs=False,
        offer_config=False,
        require_header=("x-key", "v"),
    ) as address:
        base = f"{address.http}/v2/models/m"
        assert json.loads(http_call(base)[2])["inputs"] == []
        assert http_call(f"{base}/config")[0] == 404
        with grpc.insecure_channel(address.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert list(stub.ModelMetadata(pb.ModelMetadataRequest(name="m")).inputs) == []
            with pytest.raises(grpc.RpcError) as error:
                stub.ModelConfig(pb.ModelConfigRequest(name="m"))
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
            request = pb.ModelInferRequest(model_name="m", raw_input_contents=[bytes(256)])
            request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 8, 8])
            with pytest.raises(grpc.RpcError) as error:
                stub.ModelInfer(request)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED  # no header: as the server answers
            assert stub.ModelInfer(request, metadata=[("x-key", "v")]).outputs[0].shape == [1, 10]
        body, headers = infer_body(1, binary=False)
        assert http_call(f"{base}/infer", body, headers)[0] == 401
        assert http_call(f"{base}/infer", body, {**headers, "X-Key": "v"})[0] == 200


def test_quick_client_section_writes_figures_and_plot(tmp_path):
    assert bench_main(["--section", "client", "--quick", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "client.json").read_text())
    assert record["section"] == "client" and record["quick"] is True
    assert record["reproduce"] == "python -m bench --section client --quick"
    assert len(record["load_average_before"]) == 3
    configs = record["figures"]["configs"]
    assert [(c["concurrency"], c["workers"]) for c in configs] == [(1, 1), (1, 2), (8, 1), (8, 2)]
    for config in configs:
        assert config["requests_per_s"] > 0 and config["p50_ms"] <= config["p99_ms"]
        assert config["server_requests_match"] is True
    for config in configs:  # each against the c=1 w=1 baseline of the same run
        expected = config["requests_per_s"] / configs[0]["requests_per_s"]
        assert config["throughput_vs_c1_w1"] == pytest.approx(expected)
    with Image.open(tmp_path / "client.png") as image:
        assert image.format == "PNG"


def test_quick_delay_section_measures_every_delay(tmp_path):
    """lenet5 copies with queue delays 0..2000 us on one server, each driven at concurrency 1."""
    assert bench_main(["--section", "delay", "--quick", "--out", str(tmp_path / "out"),
                       "--work", str(tmp_path / "work")]) == 0  # fmt: skip
    figures = json.loads((tmp_path / "out" / "delay.json").read_text())["figures"]
    assert set(figures["points"]) == {"0", "200", "500", "2000"}
    assert set(figures["excess_us"]) == set(figures["points"])
    assert all(math.isfinite(v) for v in figures["excess_us"].values())
    with Image.open(tmp_path / "out" / "delay.png") as image:
        assert image.format == "PNG"


def test_quick_protocols_section_measures_grpc_and_http(tmp_path):
    """One cnnserve, lenet5 over gRPC and over HTTP (binary tensors) in the same round."""
    assert bench_main(["--section", "protocols", "--quick", "--out", str(tmp_path / "out"),
                       "--work", str(tmp_path / "work")]) == 0  # fmt: skip
    figures = json.loads((tmp_path / "out" / "protocols.json").read_text())["figures"]
    lenet5 = figures["models"]["lenet5"]
    for key in ("grpc@1", "http@1", "grpc@8", "http@8"):
        point = lenet5["points"][key]
        assert point["requests_per_s"] > 0 and point["errors"] == 0 and point["server_cpu_us_per_request"] > 0
    ratio = lenet5["points"]["http@8"]["requests_per_s"] / lenet5["points"]["grpc@8"]["requests_per_s"]
    assert lenet5["ratios"]["8"]["requests_per_s_http_over_grpc"] == pytest.approx(ratio)
    with Image.open(tmp_path / "out" / "protocols.png") as image:
        assert image.format == "PNG"


@pytest.mark.skipif(no_gpu_reason() is None, reason="a CUDA GPU is present: the section would run")
def test_gpu_section_skips_without_a_gpu_and_keeps_earlier_figures(tmp_path, capsys):
    (tmp_path / "gpu.json").write_text("{}")
    assert bench_main(["--section", "gpu", "--out", str(tmp_path)]) == 0
    assert "skipped" in capsys.readouterr().out
    assert (tmp_path / "gpu.json").read_text() == "{}"


def test_torch_export_repository_serves_through_the_closed_loop(tmp_path):
    """What the gpu section serves where onnxruntime has no CUDA provider: the benchmark repository as
    torch.export programs, run here by the torch backend on CPU instead of CUDA."""
    from rich.console import Console

    from bench.serving import NOBATCH, closed_loop, cnnserve, repository

    ctx = bench.BenchContext(out_dir=tmp_path / "out", quick=True, console=Console(), work_dir=tmp_path)
    with pytest.raises(ValueError, match="onnx or torch_export"):
        repository(ctx, ["lenet5"], "tensorrt_plan")
    with cnnserve(ctx, ["lenet5"], "--device", "cpu", fmt="torch_export") as server:
        for name in ("lenet5", f"lenet5{NOBATCH}"):
            manifest = json.loads((server.repo / name / "1" / "manifest.json").read_text())
            assert manifest["format"] == "torch_export" and (server.repo / name / "1" / "model.pt2").is_file()
        point = closed_loop(ctx, server.endpoint("lenet5"), 2)  # quick windows
        backends = {
            dict(labels).get("backend")
            for (name, labels), _ in scrape(server.metrics_url).items()
            if dict(labels).get("model") == "lenet5"
        }
    assert server.repo == tmp_path / "repo-torch_export"
    assert point["requests_per_s"] > 0 and point["errors"] == 0
    assert "torch" in backends


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shape", "1,x,32"], "argument --shape: expected comma-separated integers like 1,32,32"),
        (["--shape", "1,0,32"], "argument --shape: values must be positive"),
        (["--classes", "0"], "argument --classes: must be positive"),
        (["--max-batch-size", "two"], "argument --max-batch-size: expected a number"),
        (["--require-header", "novalue"], "argument --require-header: expected KEY=VALUE"),
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert and --tls-key"),
    ],
)
def test_null_server_rejects_bad_arguments_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        null_server.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
