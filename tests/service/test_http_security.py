"""Locking the HTTP port down, with servers of their own: Triton's restricted protocols checked from the
request headers, the body limit (--max-message-bytes) refused before the body is read, and TLS with client
certificates (the same settings as gRPC)."""

from __future__ import annotations

import gzip
import http.client
import json
import ssl

import numpy as np
import pytest

from harness.server import http_request, start_server

pytestmark = pytest.mark.process

INFER = "/v2/models/lenet5/infer"
LIMIT = 8192  # one LeNet-5 row (4096 bytes) fits with its JSON header, two do not
INFER_KEY = {"infer-key": "s3cret"}


def binary_rows(rows: int) -> tuple[bytes, dict[str, str]]:
    x = np.zeros((rows, 1, 32, 32), np.float32)
    header = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape)}]}
    header["inputs"][0]["parameters"] = {"binary_data_size": x.nbytes}
    head = json.dumps(header).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


@pytest.fixture(scope="module")
def one_model_repo(lenet_copy, tmp_path_factory):
    """`lenet5` as exported, batching up to 8 rows."""
    repo = tmp_path_factory.mktemp("repo")
    lenet_copy(repo, "lenet5", max_batch_size=8)
    return repo


@pytest.fixture(scope="module")
def locked(one_model_repo, tmp_path_factory):
    server = start_server(
        one_model_repo,
        tmp_path_factory.mktemp("locked_logs"),
        "--max-message-bytes",
        str(LIMIT),
        "--restricted-protocol",
        "inference:infer-key=s3cret",
        "--restricted-protocol",
        "model-repository,health:admin-key=ops",
    )
    yield server
    server.terminate()


def test_restricted_groups_need_their_header(locked):
    body, headers = binary_rows(1)
    missing = locked.http("POST", INFER, body, headers)
    assert missing.status == 401
    assert missing.json() == {
        "error": "inference calls are restricted: send the header 'infer-key' with its value"
    }
    wrong = locked.http("POST", INFER, body, {**headers, "infer-key": "guess"})
    assert wrong.status == 403
    assert wrong.json() == {
        "error": "inference calls are restricted: the value of header 'infer-key' is not the one required"
    }
    assert locked.http("POST", INFER, body, {**headers, "Infer-Key": "s3cret"}).status == 200  # any case
    assert locked.http("GET", "/v2/models/lenet5").status == 200  # metadata is not restricted
    assert locked.http("POST", "/v2/repository/index").status == 401
    assert locked.http("POST", "/v2/repository/index", headers={"admin-key": "ops"}).status == 200
    assert locked.http("GET", "/v2/health/ready").status == 401
    assert locked.http("GET", "/v2/health/ready", headers={"admin-key": "ops"}).status == 200
    assert locked.http("GET", "/v2/models/lenet5/ready", headers={"admin-key": "nope"}).status == 403


def test_restriction_is_checked_before_the_body_is_read(locked):
    """A request without the header is refused at once, though its body has not arrived."""
    status, _ = _declared_but_not_sent(locked, {"Content-Length": "1000"})
    assert status == 401


def _declared_but_not_sent(server, headers: dict[str, str]) -> tuple[int, dict]:
    """Send request headers and 10 bytes of the body they declare, then wait for the answer (5 s): a server
    that waited for the whole body would time out."""
    connection = http.client.HTTPConnection("127.0.0.1", int(server.http_url.rsplit(":", 1)[1]), timeout=5)
    try:
        connection.putrequest("POST", INFER)
        for key, value in headers.items():
            connection.putheader(key, value)
        connection.endheaders(b"0123456789")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_body_limit(locked):
    body, headers = binary_rows(1)
    assert len(body) <= LIMIT
    assert locked.http("POST", INFER, body, {**headers, **INFER_KEY}).status == 200
    body, headers = binary_rows(2)
    too_large = locked.http("POST", INFER, body, {**headers, **INFER_KEY})
    assert too_large.status == 413
    limit = f"exceeds the server's limit of {LIMIT} bytes (--max-message-bytes)"
    assert too_large.json() == {"error": f"request body of {len(body)} bytes {limit}"}
    assert too_large.headers["connection"] == "close"
    # refused by its Content-Length, before it is read
    status, error = _declared_but_not_sent(locked, {"Content-Length": str(10**9), **INFER_KEY})
    assert status == 413 and "request body of 1000000000 bytes exceeds" in error["error"]


def test_body_limit_without_content_length(locked):
    """A chunked body is counted as it arrives and refused once past the limit."""
    body, headers = binary_rows(4)
    connection = http.client.HTTPConnection("127.0.0.1", int(locked.http_url.rsplit(":", 1)[1]), timeout=10)
    # The whole chunked body goes in one write (after the headers' own): sent chunk by chunk, the later
    # chunks can meet a socket the server has already closed after answering 413 (a broken pipe, not a bug).
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 1024]), body[i : i + 1024]) for i in range(0, len(body), 1024)
    )
    try:
        connection.putrequest("POST", INFER)
        for name, value in {**headers, **INFER_KEY, "Transfer-Encoding": "chunked"}.items():
            connection.putheader(name, value)
        connection.endheaders(chunked + b"0\r\n\r\n")
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read()) == {
            "error": f"request body exceeds the server's limit of {LIMIT} bytes (--max-message-bytes)"
        }
    finally:
        connection.close()


def test_body_limit_applies_to_the_decompressed_body(locked):
    bomb = gzip.compress(bytes(10 * LIMIT))  # 80 kB of zeros in about 100 bytes
    assert len(bomb) < LIMIT
    answer = locked.http("POST", INFER, bomb, {"Content-Encoding": "gzip", **INFER_KEY})
    assert answer.status == 413
    assert (
        answer.json()["error"]
        == f"request body decompresses to more than the server's limit of {LIMIT} bytes (--max-message-bytes)"
    )


@pytest.fixture(scope="module")
def tls_server(one_model_repo, tls_files, tmp_path_factory):
    server = start_server(
        one_model_repo,
        tmp_path_factory.mktemp("tls_logs"),
        "--tls-cert",
        str(tls_files.server_cert),
        "--tls-key",
        str(tls_files.server_key),
        "--tls-client-ca",
        str(tls_files.ca),
    )
    yield server
    server.terminate()


def client_context(tls_files, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls_files.ca))
    context.check_hostname = False  # the certificate names cnnserve.test; the chain is still verified
    if with_certificate:
        context.load_cert_chain(str(tls_files.client_cert), str(tls_files.client_key))
    return context


def test_mutual_tls(tls_server, tls_files):
    assert tls_server.http_url.startswith("https://")
    context = client_context(tls_files, with_certificate=True)
    assert tls_server.http("GET", "/v2/health/ready", context=context).status == 200
    body, headers = binary_rows(2)
    answer = tls_server.http("POST", INFER, body, headers, context=context)
    assert answer.status == 200 and answer.json()["outputs"][0]["shape"] == [2, 10]
    assert "HTTP/REST (KServe v2) on https://" in tls_server.log()
    # without a client certificate the handshake fails; in plaintext nothing is answered
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_server.http("GET", "/v2/health/ready", context=client_context(tls_files, with_certificate=False))
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        http_request(tls_server.http_url.replace("https://", "http://"), "GET", "/v2/health/ready", timeout=5)
