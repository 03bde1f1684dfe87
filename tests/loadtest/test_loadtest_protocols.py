"""python -m loadtest over HTTP and gRPC, with TLS, mutual TLS, a required header, and inputs the server
does not describe: against the null server started on free 127.0.0.1 ports, its metrics as the referee."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from bench import null_server
from loadtest import cli
from loadtest.scrape import scrape

pytestmark = pytest.mark.process

FAST = "--window 0.3 --windows 2 --warmup 0.1 --duration 0.9 --stability 0.5 --quiet"
SERVER = {"model": "null", "shape": (1, 8, 8), "classes": 10, "max_batch_size": 8}
PROTOCOLS = ("grpc", "http")


def run(*parts: str | Path) -> int:
    """cli.main on the arguments: strings are split on spaces, paths passed whole."""
    args: list[str] = []
    for part in parts:
        args += part.split() if isinstance(part, str) else [str(part)]
    return cli.main(args)


def exit_status(*parts: str | Path) -> int:
    """cli.main's status, whether it returns it or exits with it (as it does when the target fails)."""
    try:
        return run(*parts)
    except SystemExit as exited:
        return exited.code


def run_json(tmp_path: Path, *parts: str | Path) -> tuple[int, dict]:
    out = tmp_path / "r.json"
    out.unlink(missing_ok=True)
    rc = run(*parts, "--json", out)
    return rc, json.loads(out.read_text())


def url(address: null_server.NullServerAddress, protocol: str) -> str:
    return f"--url {address.http if protocol == 'http' else address.grpc} --protocol {protocol}"


def outcomes(metrics_url: str) -> dict[str, float]:
    """The null server's requests by outcome, summed over models."""
    counted: dict[str, float] = {}
    for (name, labels), value in scrape(metrics_url).items():
        if name == "cnnserve_requests_total":
            outcome = dict(labels)["outcome"]
            counted[outcome] = counted.get(outcome, 0) + value
    return counted


@pytest.fixture(scope="module")
def server():
    with null_server.running(**SERVER, http=True) as address:
        yield address


@pytest.fixture(scope="module")
def undescribed():
    """Like MLServer serving an ONNX model: metadata lists no inputs, and there is no model config."""
    with null_server.running(**SERVER, http=True, describe_inputs=False, offer_config=False) as address:
        yield address


@pytest.fixture(scope="module")
def guarded():
    with null_server.running(**SERVER, http=True, require_header=("x-api-key", "s3cret")) as address:
        yield address


@pytest.fixture(scope="module")
def tls_server(tls_files):
    with null_server.running(
        **SERVER, http=True, tls_cert=tls_files.server_cert, tls_key=tls_files.server_key
    ) as a:
        yield a


@pytest.fixture(scope="module")
def mtls_server(tls_files):
    files = {
        "tls_cert": tls_files.server_cert,
        "tls_key": tls_files.server_key,
        "tls_client_ca": tls_files.ca,
    }
    with null_server.running(**SERVER, http=True, **files) as address:
        yield address


@pytest.mark.parametrize("wire", ["", "--http-json"])
def test_http_closed_loop_counts_match_the_server(server, tmp_path, wire):
    before = outcomes(server.metrics_url).get("success", 0)
    rc, result = run_json(
        tmp_path,
        url(server, "http"),
        wire,
        f"--model null --concurrency 2 --batch 3 --metrics-url {server.metrics_url}",
        FAST,
    )
    assert rc == 0
    assert result["options"]["protocol"] == "http" and result["options"]["http_json"] == bool(wire)
    assert result["model"]["max_batch_size"] == 8  # from Triton's config route
    assert result["input"]["shape"] == [3, 1, 8, 8]
    step = result["steps"][0]
    assert step["errors"] == {} and step["totals"]["sent"] == step["totals"]["ok"] > 0
    assert outcomes(server.metrics_url)["success"] - before == step["totals"]["sent"]
    assert step["server"]["batch_mean"] == pytest.approx(3.0)


def test_http_open_loop_with_two_worker_processes(server, tmp_path):
    before = outcomes(server.metrics_url).get("success", 0)
    rc, result = run_json(tmp_path, url(server, "http"), "--model null --rate 200 --workers 2", FAST)
    assert rc == 0
    step = result["steps"][0]
    assert step["workers"] == 2 and step["errors"] == {}
    assert outcomes(server.metrics_url)["success"] - before == step["totals"]["sent"] == step["totals"]["ok"]
    assert step["offered_per_s"] == pytest.approx(200, rel=0.4)


def test_http_sends_images_and_uint8_pixels(server, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(images / f"{i}.png")
    rc, result = run_json(tmp_path, url(server, "http"), "--model null --batch 2", FAST, "--images", images)
    assert rc == 0 and result["input"]["datatype"] == "BYTES" and result["input"]["shape"] == [2]
    assert result["steps"][0]["errors"] == {} and result["steps"][0]["requests"] > 0
    rc, result = run_json(tmp_path, url(server, "http"), "--model null --input pixels", FAST)
    assert rc == 0 and result["steps"][0]["errors"] == {}
    assert (result["input"]["datatype"], result["input"]["shape"]) == ("UINT8", [1, 8, 8, 1])


def test_http_unknown_model_is_a_usage_error_with_the_servers_message(server, capsys):
    with pytest.raises(SystemExit) as exited:
        run(url(server, "http"), "--model nope", FAST)
    assert exited.value.code == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shape_and_datatype_describe_an_input_the_server_does_not(undescribed, tmp_path, protocol):
    rc, result = run_json(
        tmp_path,
        url(undescribed, protocol),
        "--model null --batch 4 --shape input:1,8,8 --datatype input:FP32",
        f"--metrics-url {undescribed.metrics_url}",
        FAST,
    )
    assert rc == 0
    assert result["model"]["inputs"] == [] and result["model"]["max_batch_size"] is None
    assert result["input"]["shape"] == [4, 1, 8, 8]  # the batch dimension prepended to --shape
    step = result["steps"][0]
    assert step["errors"] == {} and step["server"]["batch_mean"] == pytest.approx(4.0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_errors_are_counted_by_the_same_status_names(undescribed, tmp_path, protocol):
    # Without a model config the client cannot know the null server's max_batch_size 8: the server refuses.
    rc, result = run_json(
        tmp_path,
        url(undescribed, protocol),
        "--model null --batch 9 --shape input:1,8,8 --datatype input:FP32",
        FAST,
    )
    assert rc == 1
    step = result["steps"][0]
    assert list(step["errors"]) == ["INVALID_ARGUMENT"] and step["totals"]["ok"] == 0
    assert "batch of 9 rows is outside 1..max_batch_size 8" in step["error_samples"]["INVALID_ARGUMENT"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_required_header(guarded, tmp_path, protocol):
    rc, missing = run_json(tmp_path, url(guarded, protocol), "--model null --concurrency 1", FAST)
    assert rc == 1
    step = missing["steps"][0]  # (refused by the front end, before the data plane counts a request)
    assert list(step["errors"]) == ["UNAUTHENTICATED"] and step["totals"]["ok"] == 0
    assert "x-api-key" in step["error_samples"]["UNAUTHENTICATED"]
    rc, wrong = run_json(
        tmp_path, url(guarded, protocol), "--model null --concurrency 1 --header X-Api-Key=guess", FAST
    )
    assert rc == 1 and list(wrong["steps"][0]["errors"]) == ["PERMISSION_DENIED"]
    rc, present = run_json(
        tmp_path, url(guarded, protocol), "--model null --concurrency 1 --header X-Api-Key=s3cret", FAST
    )
    assert rc == 0 and present["steps"][0]["errors"] == {} and present["steps"][0]["totals"]["ok"] > 0
    assert present["options"]["headers"] == ["X-Api-Key"]  # the value, maybe a secret, is not written out


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tls_verifies_the_server(tls_server, tls_files, tmp_path, protocol, capsys):
    trust = f"--tls-ca {tls_files.ca} --connect-timeout 1"
    rc, result = run_json(
        tmp_path, url(tls_server, protocol), trust, "--tls-server-name cnnserve.test --model null", FAST
    )
    assert rc == 0 and result["steps"][0]["errors"] == {} and result["steps"][0]["totals"]["ok"] > 0
    # The certificate names cnnserve.test, not 127.0.0.1: without the override, verification must fail.
    assert exit_status(url(tls_server, protocol), trust, "--model null", FAST) == 1
    expected = "certificate verify failed" if protocol == "http" else "does it accept our TLS?"
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mutual_tls(mtls_server, tls_files, tmp_path, protocol, capsys):
    trust = f"--tls-ca {tls_files.ca} --tls-server-name cnnserve.test --connect-timeout 1 --model null"
    identity = f"--tls-cert {tls_files.client_cert} --tls-key {tls_files.client_key}"
    rc, result = run_json(tmp_path, url(mtls_server, protocol), trust, identity, FAST)
    assert rc == 0 and result["steps"][0]["errors"] == {} and result["steps"][0]["totals"]["ok"] > 0
    assert exit_status(url(mtls_server, protocol), trust, FAST) == 1  # no client certificate: refused
    assert "cannot reach" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fixture", "extra", "message"),
    [
        (
            "server",
            "--shape input:3,8,8",
            "metadata fixes dimension 0 (without the batch dimension) of 'input' to 1",
        ),
        ("server", "--shape input:8,8", "expected 3 dimensions (without the batch dimension), got 2"),
        ("server", "--input extra --shape extra:4", "has no such input"),
        ("undescribed", "", "has no numeric input to randomize"),
        ("undescribed", "--shape input:1,8,8", "give --datatype input:..."),
    ],
)
def test_input_descriptions_the_server_contradicts_exit_2(request, fixture, extra, message, capsys):
    address = request.getfixturevalue(fixture)
    with pytest.raises(SystemExit) as exited:
        run(url(address, "http"), "--model null", extra, FAST)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


BAD_ARGUMENTS = [
    (["--shape", "input"], "argument --shape: expected NAME:d1,d2,..."),
    (["--shape", "input:1,x"], "argument --shape: expected NAME:d1,d2,..."),
    (["--shape", "input:0,3"], "with positive dimensions"),
    (["--shape", "input:-1,3"], "with positive dimensions"),
    (["--shape", ":3"], "with positive dimensions"),
    (["--shape", "a:1", "--shape", "a:2"], "--shape a: given twice"),
    (["--datatype", "input:FLOAT"], "unknown datatype; expected one of BOOL, UINT8"),
    (["--datatype", "input:BYTES"], "BYTES inputs take encoded files; use --images DIR"),
    (["--datatype", "input"], "unknown datatype"),
    (["--images", "x", "--shape", "input:1"], "leave them out with --images"),
    (["--header", "novalue"], "argument --header: expected KEY=VALUE"),
    (["--header", "bad/key=1"], "is not a valid header name"),
    (["--header", "content-type=x"], "set by the client itself"),
    (["--protocol", "smtp"], "argument --protocol: invalid choice"),
    (["--http-json"], "--http-json needs --protocol http"),
    (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-ca", "/no/such/ca.pem"], "--tls-ca /no/such/ca.pem: no such file"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2(extra, message, capsys):
    with pytest.raises(SystemExit) as exited:
        run("--url 127.0.0.1:1 --model m", *extra)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("--url 127.0.0.1:1 --protocol http --http-json --images .", "--http-json cannot carry image files"),
        ("--url ftp://h:1 --protocol http", "--url: expected http(s)://HOST:PORT"),
        ("--url http://h:1/v2 --protocol http", "--url: expected http(s)://HOST:PORT"),
        ("--url http://h:99999 --protocol http", "--url: expected http(s)://HOST:PORT"),
        ("--url http://h:1 --protocol http --tls", "TLS was asked for (--tls*); use an https:// URL"),
        ("--url http://h:1", "got 'http://h:1'; for KServe v2 over HTTP add --protocol http"),
    ],
)
def test_bad_urls_exit_2(target, message, capsys):
    with pytest.raises(SystemExit) as exited:
        run(target, "--model m")
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
