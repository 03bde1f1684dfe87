"""The hostile section's pure parts: the bodies it sends and how probes are assigned to cases."""

from __future__ import annotations

import json
import zlib

from bench.hostile import binary_infer, gzip_bomb, json_infer_body, worst_probe


def test_the_gzip_bomb_inflates_to_what_it_says():
    bomb = gzip_bomb(8 << 20)
    assert len(bomb) < 64 * 1024
    assert len(zlib.decompress(bomb, 16 + zlib.MAX_WBITS)) == 8 << 20


def test_the_json_body_is_an_infer_request_of_about_its_size():
    body = json_infer_body(1 << 20)
    tensor = json.loads(body)["inputs"][0]
    rows = tensor["shape"][0]
    assert len(tensor["data"]) == rows * 1024 and abs(len(body) - (1 << 20)) < (1 << 20) // 4


def test_binary_requests_give_the_json_header_length():
    body, headers = binary_infer("FP32", [1, 1, 32, 32], bytes(4096), "input")
    length = int(headers["Inference-Header-Content-Length"])
    assert json.loads(body[:length])["inputs"][0]["parameters"] == {"binary_data_size": 4096}
    assert len(body) == length + 4096


def test_probes_count_for_the_case_they_were_sent_in():
    samples = [[1.0, 0.010, "200"], [2.0, 0.300, "200"], [3.5, 0.020, "200"]]
    assert worst_probe(samples, [1.5, 3.0]) == 0.300
    assert worst_probe(samples, [3.0, 4.0]) == 0.020
    assert worst_probe(samples, [5.0, 6.0]) is None
