"""End-to-end tests of python -m loadtest against the null server, started on free 127.0.0.1 ports."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bench import null_server
from loadtest import cli
from loadtest.scrape import scrape

pytestmark = pytest.mark.process

# Short windows keep every run to a few seconds; the tolerance is loose because the CI machine is shared.
FAST = "--window 0.4 --windows 2 --warmup 0.2 --duration 2 --stability 0.5 --quiet"


@pytest.fixture(scope="module")
def server():
    with null_server.running(model="null", shape=(1, 8, 8), classes=10, max_batch_size=8) as address:
        yield address


def server_requests(metrics_url: str) -> float:
    snapshot = scrape(metrics_url)
    return sum(v for (name, labels), v in snapshot.items() if name == "cnnserve_requests_total")


def run(*parts: str | Path) -> int:
    """cli.main on the arguments: strings are split on spaces, paths passed whole."""
    args: list[str] = []
    for part in parts:
        args += part.split() if isinstance(part, str) else [str(part)]
    return cli.main(args)


@pytest.fixture(scope="module")
def closed_sweep(server, tmp_path_factory):
    """One closed-loop sweep writing every output; several tests inspect it."""
    out = tmp_path_factory.mktemp("closed")
    before = server_requests(server.metrics_url)
    rc = run(
        f"--url {server.grpc} --model null --concurrency 1,2 --metrics-url {server.metrics_url} {FAST}",
        "--json", out / "r.json", "--csv", out / "r.csv", "--plot", out / "r.png",
    )  # fmt: skip
    after = server_requests(server.metrics_url)
    return rc, out, after - before


def test_closed_sweep_counts_match_the_server(closed_sweep):
    rc, out, server_delta = closed_sweep
    assert rc == 0
    steps = json.loads((out / "r.json").read_text())["steps"]
    assert [step["level"] for step in steps] == [1, 2]
    for step in steps:
        totals = step["totals"]
        assert totals["sent"] == totals["ok"] > 0
        assert step["server"]["requests"] == totals["sent"]  # the scrape around each step
        assert step["requests"] > 0 and step["requests"] <= totals["ok"]
        latency = step["latency"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"] <= latency["max"]
        assert step["requests_per_s"] == pytest.approx(step["requests"] / step["measured_s"])
        assert step["server"]["batch_mean"] == pytest.approx(1.0)
    assert server_delta == sum(step["totals"]["sent"] for step in steps)  # and around the whole run


def test_outputs_are_well_formed(closed_sweep):
    _, out, _ = closed_sweep
    result = json.loads((out / "r.json").read_text())
    assert result["model"]["max_batch_size"] == 8
    assert result["input"] == {
        "name": "input",
        "datatype": "FP32",
        "shape": [1, 1, 8, 8],
        "rows_per_request": 1,
        "source": "random FP32",
    }
    with (out / "r.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["level"].split(".")[0]) for row in rows] == [1, 2]
    for row, step in zip(rows, result["steps"], strict=True):
        assert float(row["p99_ms"]) == pytest.approx(step["latency"]["p99"] * 1e3)
        assert int(row["server_requests"]) == step["server"]["requests"]
    with Image.open(out / "r.png") as image:
        assert image.format == "PNG" and image.width > 500 and image.height > 200


def test_open_loop_reaches_the_target_rate(server, tmp_path):
    rc = run(
        f"--url {server.grpc} --model null --rate 150 --quiet",
        "--window 1 --windows 2 --warmup 0.2 --duration 2 --stability 0.5 --json",
        tmp_path / "o.json",
    )
    assert rc == 0
    step = json.loads((tmp_path / "o.json").read_text())["steps"][0]
    assert step["mode"] == "open"
    # 300 Poisson arrivals expected over the 2 s measured: a standard deviation of about 6%.
    assert step["offered_per_s"] == pytest.approx(150, rel=0.3)
    assert step["requests_per_s"] == pytest.approx(150, rel=0.3)
    assert set(step["lateness"]) == {"threshold_s", "late_fraction", "p99_s", "max_s"}
    assert 0 <= step["lateness"]["late_fraction"] <= 1
    assert step["fell_behind"] in (True, False)


def test_open_loop_reports_falling_behind(server, tmp_path):
    # One request in flight at a time cannot keep 10000/s (a 0.1 ms round trip): requests go out late and the
    # lag is in the latency. (At 3000/s a fast, idle machine could keep up: 0.33 ms round trips.)
    rc = run(
        f"--url {server.grpc} --model null --rate 10000 --max-inflight 1 --quiet",
        "--window 0.1 --windows 2 --warmup 0.1 --duration 0.2 --json",
        tmp_path / "o.json",
    )
    assert rc == 0
    step = json.loads((tmp_path / "o.json").read_text())["steps"][0]
    assert step["fell_behind"] is True
    assert step["lateness"]["late_fraction"] > 0.5
    assert step["lateness"]["max_s"] > 0.05
    assert step["latency"]["max"] >= step["lateness"]["max_s"]
    assert step["requests_per_s"] < 0.8 * step["offered_per_s"]


def test_image_folder_input(server, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(images / f"{i}.png")
    (images / "notes.txt").write_text("not an image, skipped")
    rc = run(
        f"--url {server.grpc} --model null --batch 2 --concurrency 1 --metrics-url {server.metrics_url}",
        FAST, "--images", images, "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert rc == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["input"]["name"] == "image" and result["input"]["datatype"] == "BYTES"
    assert result["input"]["shape"] == [2]
    step = result["steps"][0]
    assert step["images_per_s"] == pytest.approx(2 * step["requests_per_s"])
    batches = {(b["low"], b["high"]): b["count"] for b in step["server"]["batch_buckets"]}
    assert batches[(1.0, 2.0)] == step["server"]["requests"] == step["totals"]["sent"]


def test_workers_merge_exactly(server, tmp_path):
    rc = run(
        f"--url {server.grpc} --model null --concurrency 4 --workers 2 --metrics-url {server.metrics_url}",
        FAST,
        "--json",
        tmp_path / "r.json",
    )
    assert rc == 0
    step = json.loads((tmp_path / "r.json").read_text())["steps"][0]
    assert step["workers"] == 2
    assert step["server"]["requests"] == step["totals"]["sent"] == step["totals"]["ok"]
    measured = step["window_summaries"][-step["measured_windows"] :]
    assert step["requests"] == sum(w["requests"] for w in measured)


BAD_ARGUMENTS = [
    (["--concurrency", "1", "--rate", "5"], "not allowed with argument"),
    (["--concurrency", "0"], "values must be positive"),
    (["--concurrency", "1,x"], "expected comma-separated integers"),
    (["--rate", "-5"], "values must be positive"),
    (["--batch", "0"], "must be positive"),
    (["--window", "2", "--duration", "1"], "--duration 1 s is shorter than --windows 3"),
    (["--plot", "out.jpg"], "expected a .png file name"),
    (["--json", "/no/such/folder/r.json"], "folder /no/such/folder does not exist"),
    (["--metrics-url", "localhost:8002"], "--metrics-url: expected http://"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2(extra, message, capsys):
    with pytest.raises(SystemExit) as exited:
        run("--url 127.0.0.1:1 --model m", *extra)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "nope"], "--model 'nope': the server at"),
        (["--model", "nope"], "unknown model 'nope'"),  # the server's own NOT_FOUND message
        (["--model", "null", "--batch", "9"], "--batch 9 exceeds model 'null''s max_batch_size 8"),
        (["--model", "null", "--input", "nope"], "--input nope: model 'null' has no such input"),
        (["--model", "null", "--images", "/no/such/dir"], "--images /no/such/dir: no such directory"),
    ],
)
def test_arguments_the_server_rejects_exit_2(server, extra, message, capsys):
    with pytest.raises(SystemExit) as exited:
        run(f"--url {server.grpc}", *extra, FAST)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_fails_fast():
    completed = subprocess.run(
        [sys.executable, "-m", "loadtest", "--url", f"127.0.0.1:{closed_port()}", "--model", "m"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert completed.returncode == 1  # (within the run's 60 s bound: the default --connect-timeout is 3 s)
    assert "cannot reach a gRPC server at 127.0.0.1:" in completed.stderr


def test_bad_arguments_exit_2_from_the_command_line():
    completed = subprocess.run(
        [sys.executable, "-m", "loadtest", "--url=127.0.0.1:1", "--model=m", "--concurrency=2", "--rate=1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert completed.returncode == 2
    assert "argument --rate: not allowed with argument --concurrency" in completed.stderr
